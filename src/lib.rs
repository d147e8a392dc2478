//! dialtone: WebRTC video calls between two people, served by one small binary.
//!
//! It serves the call page from `public/` over HTTPS and relays signaling messages (login,
//! offer, answer, candidate, decline, close) between users known by name over a WebSocket on
//! the same port. The media itself flows browser to browser; dialtone only introduces them.
//!
//! Layout (one module per concern; docs/layout.md has the same as a tree):
//! - [`config`]: `config.toml`'s tables and the `PORT` override; [`config::values`] holds
//!   the validated value types.
//! - [`access`]: who may log in (`[access]`): the site password, invite links and tokens.
//! - [`client`]: one HTTPS request to another server (the JWKS, the ACME CA).
//! - [`net`]: this machine's addresses, for the certificate, the banner and the TURN relay.
//! - [`tls`]: PEM files, a self-signed certificate made with rcgen for LAN use, or one from
//!   an ACME CA ([`tls::acme`]).
//! - [`server`]: the accept loop, TLS handshakes, HTTP/1.1 and HTTP/2, graceful shutdown.
//! - [`http`]: routing: WebSocket upgrades (origin check, admission), `/healthz`,
//!   `/metrics`, `/qr.svg`, the page's files, the security headers.
//! - [`limits`]: connections per address, token buckets for message and login rates.
//! - [`metrics`]: the Prometheus counters and gauges.
//! - [`qr`]: QR codes of the page's address, for the banner and `/qr.svg`.
//! - [`signaling`]: the signaling relay: [`signaling::Signaling::start`] (the composition
//!   root), the protocol, the registry engines (memory, Redis), the sessions.
//! - [`turn`]: the built-in STUN/TURN relay (UDP), around webrtc-rs's `turn` crate.
//! - [`sync`]: the one poison-tolerant lock helper.
//!
//! `main.rs` is a thin wrapper: it parses the command line, loads the config, binds, and
//! calls [`server::run`], which tests call directly on port 0.

pub mod access;
pub mod client;
pub mod config;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod qr;
pub mod server;
pub mod signaling;
pub mod sync;
pub mod tls;
pub mod turn;
