//! Routing one HTTP request: WebSocket upgrades to the signaling relay (after the origin
//! check and admission), `/healthz`, `/metrics`, `/access`, `/qr.svg` and the page's files;
//! and the security headers every response carries.
//!
//! - [`files`]: the page, built in or from `public_dir`;
//! - [`headers`]: the security headers and what a request says about its origin;
//! - [`response`]: the body type and the small responses;
//! - [`qr`]: the QR code of the page's address.

pub mod files;
pub mod headers;
pub mod qr;
pub mod response;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::watch;
use tracing::{debug, warn};

pub use files::{AppError, Files, public_root};
use headers::{authority, content_security_policy, forwarded_proto, security_headers};
pub use response::Body;
use response::{not_found, redirect_to_https, text, uncached};

use crate::config::{Config, Origin, Secret};
use crate::limits::{Admission, Refusal, Sometimes};
use crate::metrics::{Metrics, Snapshot};
use crate::signaling::registry::Registry;
use crate::signaling::session;
use crate::signaling::{Settings, Signaling};
use crate::turn::TurnRelay;

/// What one accepted connection tells the router about itself.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// The application: everything a request needs, behind one cheap-to-clone handle.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Signaling>,
    admission: Arc<Admission>,
    files: Files,
    behind_proxy: bool,
    /// Whether dialtone terminates TLS itself (`tls.mode` other than "off").
    own_tls: bool,
    allowed_origins: Vec<Origin>,
    /// The CSP `frame-ancestors` value: `'none'`, or the origins allowed to frame the page.
    frame_ancestors: String,
    metrics_enabled: bool,
    metrics_token: Option<Secret>,
    /// Log lines an attacker could repeat at will: at most one a second each.
    refused_origin_log: Sometimes,
    forwarded_log: Sometimes,
    /// The settings file, for log lines that say what to change.
    config_file: String,
    /// The certificate being served, once the server has started with TLS.
    certificates: std::sync::OnceLock<crate::tls::Certificates>,
    /// The addresses the server listens on, once it has started (for `/qr.svg`).
    listening: std::sync::OnceLock<Vec<SocketAddr>>,
    /// Flipped to `true` at shutdown; every session holds a receiver, so the sender also
    /// tells when the last session has ended.
    shutdown: watch::Sender<bool>,
}

impl App {
    /// The application and the signaling parts the config asks for (see
    /// [`Signaling::start`]).
    pub async fn start(config: &Config) -> anyhow::Result<App> {
        let signaling = Signaling::start(config, Metrics::new()).await?;
        Ok(App::with(config, signaling)?)
    }

    /// The application around signaling parts already started.
    pub fn with(config: &Config, signaling: Arc<Signaling>) -> Result<App, AppError> {
        let files = Files::from_config(config)?;
        let limits = &config.limits;
        Ok(App {
            inner: Arc::new(Inner {
                shared: signaling,
                admission: Admission::new(
                    limits.max_connections.get(),
                    limits.max_connections_per_ip.get(),
                ),
                files,
                behind_proxy: config.behind_proxy,
                own_tls: config.tls.mode != crate::config::TlsMode::Off,
                allowed_origins: config.allowed_origins.clone(),
                frame_ancestors: if config.frame_ancestors.is_empty() {
                    "'none'".to_owned()
                } else {
                    let origins: Vec<&str> =
                        config.frame_ancestors.iter().map(Origin::as_str).collect();
                    origins.join(" ")
                },
                metrics_enabled: config.metrics.enabled,
                metrics_token: config.metrics.token.clone(),
                refused_origin_log: Sometimes::new(),
                forwarded_log: Sometimes::new(),
                config_file: config.file_name(),
                certificates: std::sync::OnceLock::new(),
                listening: std::sync::OnceLock::new(),
                shutdown: watch::Sender::new(false),
            }),
        })
    }

    /// The built-in TURN relay, when it runs.
    pub fn turn_relay(&self) -> Option<&TurnRelay> {
        self.inner.shared.turn.as_ref()
    }

    /// Whether requests come through a proxy of the operator's (`behind_proxy`).
    pub fn behind_proxy(&self) -> bool {
        self.inner.behind_proxy
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.shared.registry
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.shared.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.inner.admission.open()
    }

    /// Client addresses holding at least one WebSocket.
    pub fn addresses(&self) -> usize {
        self.inner.admission.addresses()
    }

    /// Tells every open WebSocket to close with 1001 "server restarting".
    pub fn close_sessions(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Completes when every WebSocket session has ended.
    pub async fn sessions_closed(&self) {
        self.inner.shutdown.closed().await;
    }

    /// Plain HTTP that reached the TLS port (someone typed `http://`, or no scheme): the
    /// same URL on `https://`.
    pub fn redirect_to_tls<B>(&self, req: &Request<B>) -> Response<Body> {
        let mut response = redirect_to_https(req);
        security_headers(
            response.headers_mut(),
            content_security_policy(req, false, &self.inner.frame_ancestors),
            false,
        );
        response
    }

    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        self.notice_forwarding(&req, conn);
        let https = self.is_https(&req, conn);
        let csp = content_security_policy(&req, https, &self.inner.frame_ancestors);
        let mut response = self.route(req, conn, https).await;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            security_headers(response.headers_mut(), csp, https);
        }
        response
    }

    async fn route(&self, req: Request<Incoming>, conn: ConnInfo, https: bool) -> Response<Body> {
        let client = self.client_ip(&req, conn.peer);
        let path = req.uri().path();
        if hyper_tungstenite::is_upgrade_request(&req) {
            return match path {
                "/" | "/ws" => self.upgrade(req, client, https, conn.tls),
                _ => not_found(),
            };
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/healthz" => return self.health(),
            "/access" => return self.access_page(),
            "/metrics" if self.inner.metrics_enabled => return self.metrics_page(&req),
            "/qr.svg" => {
                return qr::share_qr(&req, https, self.inner.listening.get().map(Vec::as_slice));
            }
            _ => {}
        }
        if self.inner.behind_proxy && forwarded_proto(&req) == Some("http") {
            return redirect_to_https(&req);
        }
        self.inner.files.serve(req).await
    }

    /// A proxy in front that dialtone was not told about: every user then counts as the
    /// proxy's address for the per-address limits, and http:// pages are not redirected.
    fn notice_forwarding<B>(&self, req: &Request<B>, conn: ConnInfo) {
        if self.inner.behind_proxy || conn.tls {
            return;
        }
        let forwarded = ["x-forwarded-for", "x-forwarded-proto", "forwarded"]
            .iter()
            .find(|name| req.headers().contains_key(**name));
        if let Some(header) = forwarded
            && self.inner.forwarded_log.now()
        {
            warn!(
                peer = %conn.peer,
                "requests come through a proxy ({header} is set) but behind_proxy is false: \
                 every user counts as the proxy's address {} for the per-address limits; set \
                 behind_proxy = true in {} if that proxy is yours",
                conn.peer.ip(),
                self.inner.config_file
            );
        }
    }

    /// Whether the browser sees this page over https: our own TLS, or behind a proxy that
    /// says so.
    fn is_https<B>(&self, req: &Request<B>, conn: ConnInfo) -> bool {
        conn.tls || (self.inner.behind_proxy && forwarded_proto(req) == Some("https"))
    }

    /// Cross-site WebSocket hijacking: a page on another site could open our socket with the
    /// visitor's browser. Browsers always send `Origin`; a request without one is not from a
    /// page (command-line clients, bots) and is let through.
    fn origin_allowed<B>(&self, req: &Request<B>, https: bool) -> bool {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.to_ascii_lowercase();
        self.accepted_origins(req, https).contains(&origin)
    }

    /// The origins whose pages may open the socket: `allowed_origins` when set, otherwise the
    /// page's own, from the Host the browser asked for. With TLS off, dialtone expects a
    /// TLS-terminating proxy in front (the documented setup), so the same host under
    /// `https://` counts as the page's own too, whether or not `behind_proxy` is set: only
    /// the forwarded addresses need that trust, not the origin.
    fn accepted_origins<B>(&self, req: &Request<B>, https: bool) -> Vec<String> {
        if !self.inner.allowed_origins.is_empty() {
            return self
                .inner
                .allowed_origins
                .iter()
                .map(|o| o.as_str().to_owned())
                .collect();
        }
        let Some(host) = authority(req) else {
            return Vec::new();
        };
        let host = host.as_str();
        let mut own = vec![Origin::normalise(
            if https { "https" } else { "http" },
            host,
        )];
        if !self.inner.own_tls && !https {
            own.push(Origin::normalise("https", host));
        }
        own
    }

    /// The client's address: the peer, or behind a proxy the last hop it recorded in
    /// `X-Forwarded-For` (earlier entries are whatever the client chose to send).
    fn client_ip(&self, req: &Request<Incoming>, peer: SocketAddr) -> IpAddr {
        if !self.inner.behind_proxy {
            return peer.ip();
        }
        req.headers()
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok())
            .unwrap_or(peer.ip())
    }

    /// `https`: what the browser sees (perhaps through a proxy); `tls`: our own TLS.
    fn upgrade(
        &self,
        mut req: Request<Incoming>,
        client: IpAddr,
        https: bool,
        tls: bool,
    ) -> Response<Body> {
        let metrics = self.metrics();
        if !self.origin_allowed(&req, https) {
            metrics.refused("forbidden-origin");
            let origin = req.headers().get(header::ORIGIN);
            // Usually a proxy that rewrites Host, or a page served from another address: say
            // what came and what to change (at most once a second: anyone can send these).
            if self.inner.refused_origin_log.now() {
                let accepted = self.accepted_origins(&req, https);
                let came = origin.map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned());
                warn!(
                    %client,
                    "websocket refused: its page's origin {:?} is not one of {accepted:?}; if \
                     that page is yours, add it to allowed_origins in {} (behind a proxy, or \
                     have the proxy pass the browser's Host header on)",
                    came.unwrap_or_default(),
                    self.inner.config_file
                );
            } else {
                debug!(%client, ?origin, "websocket from a foreign origin refused");
            }
            return text(
                StatusCode::FORBIDDEN,
                "this origin may not open the signaling socket (see allowed_origins)\n",
            );
        }
        let permit = match self.inner.admission.admit(client) {
            Ok(permit) => permit,
            Err(refusal) => {
                // Counted in /metrics; a log line each would flood the log in an attack.
                metrics.refused(refusal.label());
                debug!(%client, "websocket refused: {}", refusal.label());
                let (status, body) = match refusal {
                    Refusal::Full => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server full: try again later\n",
                    ),
                    Refusal::TooManyFromAddress => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many connections from your address: close some first\n",
                    ),
                };
                let mut response = text(status, body);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                return response;
            }
        };
        let config = self.settings().websocket_config(tls);
        match hyper_tungstenite::upgrade(&mut req, Some(config)) {
            Ok((response, websocket)) => {
                tokio::spawn(session::serve(
                    websocket,
                    self.inner.shared.clone(),
                    client,
                    permit,
                    self.inner.shutdown.subscribe(),
                ));
                response.map(|body| body.map_err(|never| match never {}).boxed_unsync())
            }
            Err(err) => {
                metrics.refused("bad-upgrade");
                debug!(%client, "bad websocket upgrade: {err}");
                text(
                    StatusCode::BAD_REQUEST,
                    &format!("bad websocket upgrade: {err}\n"),
                )
            }
        }
    }

    /// With `[metrics] token`, only `Authorization: Bearer <token>` may read the figures.
    fn metrics_page<B>(&self, req: &Request<B>) -> Response<Body> {
        if let Some(token) = &self.inner.metrics_token {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim);
            let matches = presented
                .is_some_and(|presented| same_secret(presented.as_bytes(), token.0.as_bytes()));
            if !matches {
                let mut response = text(
                    StatusCode::UNAUTHORIZED,
                    "send Authorization: Bearer <the [metrics] token>\n",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"dialtone metrics\""),
                );
                return response;
            }
        }
        let registry = self.registry();
        let (calls_ringing, calls_active) = registry.calls();
        let body = self.metrics().render(Snapshot {
            connections: self.connections(),
            users: registry.users(),
            users_in_grace: self.inner.shared.sessions.parked(),
            calls_ringing,
            calls_active,
            relay: self.inner.shared.turn.as_ref().map(TurnRelay::snapshot),
            certificate_expiry: self.served().map(|served| served.not_after),
        });
        uncached(&body, Metrics::content_type())
    }

    /// What the page needs before its first login: which credential to ask for, and (token
    /// mode) which claim of its token holds the name. Nothing secret.
    fn access_page(&self) -> Response<Body> {
        let access = &self.inner.shared.access;
        let mut body = serde_json::json!({ "mode": access.mode().as_str() });
        if access.mode() == crate::config::AccessMode::Token {
            body["nameClaim"] = access.name_claim().into();
        }
        uncached(&body.to_string(), "application/json")
    }

    /// The access rules.
    pub fn access(&self) -> &crate::access::Access {
        &self.inner.shared.access
    }

    /// Tells `/qr.svg` which addresses the server listens on (set once, by
    /// [`crate::server::serve`]).
    pub fn listening_on(&self, addresses: Vec<SocketAddr>) {
        let _ = self.inner.listening.set(addresses);
    }

    /// Tells `/healthz` and `/metrics` which certificate the server serves (set once, by
    /// [`crate::server::serve`]).
    pub fn serving(&self, certificates: crate::tls::Certificates) {
        let _ = self.inner.certificates.set(certificates);
    }

    fn served(&self) -> Option<crate::tls::Served> {
        self.inner.certificates.get()?.served()
    }

    /// 503 while the backplane is unavailable, so a load balancer sends new users elsewhere.
    fn health(&self) -> Response<Body> {
        let mut body = serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "users": self.registry().users(),
            "connections": self.connections(),
        });
        if let Some(served) = self.served() {
            body["certificate"] = serde_json::json!({
                "names": served.names,
                "issuer": served.issuer,
                "selfSigned": served.self_signed,
                "sha256": served.fingerprint,
                "notAfter": served.expires(),
                "notAfterUnix": served.not_after,
            });
        }
        let backplane = self.registry().backplane_up();
        if let Some(up) = backplane {
            body["backplane"] = if up { "ok" } else { "unavailable" }.into();
            if !up {
                body["status"] = "unavailable".into();
            }
        }
        let mut response = uncached(&body.to_string(), "application/json");
        if backplane == Some(false) {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell how
/// much of a guessed token was right (only whether its length was).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}
