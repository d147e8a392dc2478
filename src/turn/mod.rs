//! The built-in STUN/TURN relay, for calls that cannot connect browser to browser: over UDP,
//! and over TCP and TLS (`stream`) for networks that let only those through.
//!
//! The protocol engine is webrtc-rs's `turn` crate. It has no peer filter, no quotas and no
//! flood control, and it is in bug-fix-only maintenance, so everything dialtone promises is
//! enforced here, around it, and the crate stays replaceable:
//! - [`guard`] reads every message before the crate does, whatever the transport, answers
//!   what the crate must not see (malformed or unknown requests, bad credentials, denied
//!   peers, quotas, floods) and passes the rest on;
//! - [`stream`] frames TCP and TLS connections into the messages the crate reads, one engine
//!   per transport, each connection's allocations ending with it;
//! - `stun` reads and answers the STUN messages the guard handles itself;
//! - `addresses` picks the address browsers relay through and makes each allocation's relay
//!   socket (`socket`), wrapped so that it sends only where the [`policy`] allows and counts
//!   what it relays;
//! - [`Credentials`] checks the `<expiry>:<name>` / HMAC-SHA1 scheme the `[turn]` table mints
//!   for coturn, so the same page code works with either.

mod addresses;
mod channels;
mod credentials;
pub mod guard;
pub mod policy;
mod socket;
pub mod stream;
mod stun;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{info, warn};
use turn::allocation::AllocationInfo;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};

pub use crate::config::Transport;
use crate::config::{IceServer, IceUrl, Limits, Secret, TurnServerConfig, Urls};
use policy::Peers;
use stream::Streams;

use addresses::{Ports, listen_address, own_addresses};
pub use addresses::{external_ip, unreachable_external_ip};
use credentials::Auth;
pub use credentials::Credentials;
pub(crate) use credentials::{key_for, user_of};

/// Why the relay could not start, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "[turn_server] external_ip must be set: {0}. It is the address browsers relay through \
         (the public one behind NAT or in a container)"
    )]
    ExternalIp(String),
    #[error(
        "[turn_server] cannot listen on {transport} {addr}: {reason} (set [turn_server] listen, \
         or leave {transport} out of [turn_server] transports)"
    )]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        reason: std::io::Error,
    },
    #[error("the TURN relay did not start: {0}")]
    Start(String),
}

/// The running relay: a cheap handle.
#[derive(Clone)]
pub struct TurnRelay {
    inner: Arc<Inner>,
}

struct Inner {
    /// The crate's server for UDP, when UDP is served.
    server: Option<Server>,
    /// The engines for TCP and TLS connections, when served.
    tcp: Option<Arc<Streams>>,
    tls: Option<Arc<Streams>>,
    state: Arc<State>,
    /// What the login reply lists of the relay's own port: `stun:` and `turn:` (UDP, TCP)
    /// at the external address.
    urls: Vec<IceUrl>,
    /// The page's port, once the server serves it (see [`TurnRelay::on_web_port`]).
    web: std::sync::OnceLock<WebPort>,
    external: IpAddr,
    local: SocketAddr,
}

impl std::fmt::Debug for TurnRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRelay")
            .field("listen", &self.inner.local)
            .finish_non_exhaustive()
    }
}

/// The page's port, where the relay also takes TCP and TLS connections.
struct WebPort {
    port: u16,
    certificates: Option<crate::tls::Certificates>,
    behind_proxy: bool,
}

/// What the guard, the relay sockets and the credential check share.
pub(crate) struct State {
    pub(crate) credentials: Credentials,
    pub(crate) peers: Peers,
    /// dialtone's own relay addresses: the external one, and the one relay sockets bind to.
    pub(crate) own: Vec<IpAddr>,
    pub(crate) max_allocations: usize,
    pub(crate) max_per_user: usize,
    allocations: Mutex<Allocations>,
    /// One set per transport, in [`Transport::index`] order.
    counters: [Counters; 3],
    /// The allocations' relay sockets, by port, for the shortcut (`channels.rs`).
    pub(crate) relays: Mutex<HashMap<u16, std::sync::Weak<socket::RelaySocket>>>,
}

/// One client as the crate's allocations know it (its 5-tuple): its address, the address it
/// reached (the UDP listener's, or a stream's local end), and over what. A UDP client and a
/// TCP one may have the same address; they are different clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) transport: Transport,
}

/// Open allocations, by the client they belong to, and how many each user has.
#[derive(Default)]
pub(crate) struct Allocations {
    /// Allocate requests passed to the crate and not yet answered: client → TURN username.
    pub(crate) pending: HashMap<Client, String>,
    /// Client → TURN username of its allocation.
    pub(crate) open: HashMap<Client, String>,
    /// User name (the part after the expiry) → allocations open.
    pub(crate) per_user: HashMap<String, usize>,
}

/// What `/metrics` shows of the relay.
#[derive(Debug, Default)]
pub struct Counters {
    pub packets_relayed: AtomicU64,
    pub bytes_relayed: AtomicU64,
    /// ChannelData relayed by dialtone's own data path (`channels.rs`), both ways.
    pub channel_packets: AtomicU64,
    pub auth_failures: AtomicU64,
    pub peers_denied: AtomicU64,
    /// Datagrams dropped unanswered: malformed, or over the request rate.
    pub dropped: AtomicU64,
}

/// The relay's figures at one moment, for `/metrics`: one set per transport it serves.
#[derive(Debug, Clone, Default)]
pub struct RelaySnapshot {
    pub transports: Vec<(Transport, RelayFigures)>,
}

/// One transport's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayFigures {
    pub allocations: usize,
    pub packets_relayed: u64,
    pub bytes_relayed: u64,
    pub channel_packets: u64,
    pub auth_failures: u64,
    pub peers_denied: u64,
    pub dropped: u64,
}

impl State {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Allocations> {
        crate::sync::lock(&self.allocations)
    }

    pub(crate) fn counters(&self, transport: Transport) -> &Counters {
        &self.counters[transport.index()]
    }

    /// Whether `client` has an open allocation made with `username`: such a client may go
    /// on refreshing it after the credential expires.
    pub(crate) fn has_open(&self, client: Client, username: &str) -> bool {
        self.lock()
            .open
            .get(&client)
            .is_some_and(|open| open == username)
    }

    /// The crate answered an Allocate for `client` with success.
    pub(crate) fn opened(&self, client: Client) {
        let mut allocations = self.lock();
        if let Some(username) = allocations.pending.remove(&client) {
            let user = user_of(&username).to_owned();
            *allocations.per_user.entry(user).or_default() += 1;
            tracing::debug!(client = %client.addr, transport = client.transport.label(), "TURN allocation opened");
            allocations.open.insert(client, username);
        }
    }

    /// The crate closed `client`'s allocation (expired, refreshed to 0, or deleted).
    pub(crate) fn closed(&self, client: Client) {
        let mut allocations = self.lock();
        allocations.pending.remove(&client);
        if let Some(username) = allocations.open.remove(&client) {
            tracing::debug!(client = %client.addr, transport = client.transport.label(), "TURN allocation closed");
            let user = user_of(&username);
            if let Some(count) = allocations.per_user.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    allocations.per_user.remove(user);
                }
            }
        }
    }

    fn figures(&self, transport: Transport) -> RelayFigures {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = self.counters(transport);
        RelayFigures {
            allocations: self
                .lock()
                .open
                .keys()
                .filter(|client| client.transport == transport)
                .count(),
            packets_relayed: load(&counters.packets_relayed),
            bytes_relayed: load(&counters.bytes_relayed),
            channel_packets: load(&counters.channel_packets),
            auth_failures: load(&counters.auth_failures),
            peers_denied: load(&counters.peers_denied),
            dropped: load(&counters.dropped),
        }
    }
}

/// A random number from the OS's generator (ring's), for port choice and nonces.
pub(crate) fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // The system RNG failing is not something to serve on: fall back to the clock's bits.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
    }
    u32::from_le_bytes(bytes)
}

/// A secret for the credentials when none is configured: 32 random bytes, never shown.
fn generated_secret() -> Vec<u8> {
    (0..8).flat_map(|_| rand_u32().to_le_bytes()).collect()
}

impl TurnRelay {
    /// Binds the relay's port (UDP, and TCP next to it, as `transports` says) and starts the
    /// crate's engines behind the guard. TLS comes in on the page's port: see
    /// [`TurnRelay::serve_stream`].
    pub async fn start(
        config: &TurnServerConfig,
        limits: &Limits,
        machine: &[IpAddr],
    ) -> Result<TurnRelay, StartError> {
        let (external, how) = external_ip(config, machine)?;
        let listen = listen_address(config.listen, external, machine);
        let transports = &config.transports;
        let (udp, tcp, local) = bind(
            listen,
            transports.has(Transport::Udp),
            transports.has(Transport::Tcp),
        )
        .await?;
        let secret = match &config.secret {
            Some(Secret(secret)) => secret.as_bytes().to_vec(),
            None => generated_secret(),
        };
        let own = own_addresses(external, local.ip());
        let state = Arc::new(State {
            credentials: Credentials::new(&secret, &config.realm, config.credential_ttl_secs.get()),
            peers: config.peers,
            own,
            max_allocations: config.max_allocations.get(),
            max_per_user: config.max_allocations_per_user.get(),
            allocations: Mutex::default(),
            counters: Default::default(),
            relays: Mutex::default(),
        });
        let rates: Arc<guard::Rates> = Arc::default();
        let ports = |transport| {
            Box::new(Ports {
                bind: local.ip(),
                external,
                range: config.relay_ports,
                state: Arc::clone(&state),
                transport,
            })
        };
        let server = match udp {
            None => None,
            Some(socket) => {
                let gate = guard::Gate::new(Arc::clone(&state), Transport::Udp, Arc::clone(&rates));
                let guard = guard::Guard::new(socket, gate).map_err(|reason| StartError::Bind {
                    transport: "UDP",
                    addr: listen,
                    reason,
                })?;
                let server = Server::new(ServerConfig {
                    conn_configs: vec![ConnConfig {
                        conn: Arc::new(guard),
                        relay_addr_generator: ports(Transport::Udp),
                    }],
                    realm: config.realm.clone(),
                    auth_handler: Arc::new(Auth {
                        state: Arc::clone(&state),
                        local,
                        transport: Transport::Udp,
                    }),
                    channel_bind_timeout: std::time::Duration::ZERO,
                    alloc_close_notify: Some(track_closes(&state, Transport::Udp)),
                })
                .await
                .map_err(|err| StartError::Start(err.to_string()))?;
                Some(server)
            }
        };
        let streams = |transport| {
            transports.has(transport).then(|| {
                Arc::new(Streams::new(
                    transport,
                    Arc::clone(&state),
                    Arc::clone(&rates),
                    ports(transport),
                    track_closes(&state, transport),
                    limits,
                ))
            })
        };
        let (tcp_streams, tls_streams) = (streams(Transport::Tcp), streams(Transport::Tls));
        if let (Some(listener), Some(engine)) = (tcp, &tcp_streams) {
            tokio::spawn(stream::accept(listener, Arc::clone(engine)));
        }
        let port = local.port();
        let at = SocketAddr::new(external, port);
        let mut urls = Vec::new();
        if transports.has(Transport::Udp) {
            urls.push(IceUrl(format!("stun:{at}")));
            urls.push(IceUrl(format!("turn:{at}?transport=udp")));
        }
        if transports.has(Transport::Tcp) {
            urls.push(IceUrl(format!("turn:{at}?transport=tcp")));
        }
        let on_port = named([Transport::Udp, Transport::Tcp], |t| transports.has(t));
        info!(
            "TURN relay on {} {local}{}, relaying through {external} ({how}), relay ports \
             {}-{}, peers \"{}\"",
            if on_port.is_empty() {
                "no port of its own:".to_owned()
            } else {
                on_port
            },
            if transports.has(Transport::Tls) {
                ", TLS on the page's port"
            } else {
                ""
            },
            config.relay_ports.min,
            config.relay_ports.max,
            config.peers.label()
        );
        if let Some(why) = unreachable_external_ip(external) {
            warn!("{why}");
        }
        if config.secret.is_none() {
            info!(
                "TURN credentials use a secret generated at start: set [turn_server] secret to \
                 share one between instances"
            );
        }
        Ok(TurnRelay {
            inner: Arc::new(Inner {
                server,
                tcp: tcp_streams,
                tls: tls_streams,
                state,
                urls,
                web: std::sync::OnceLock::new(),
                external,
                local,
            }),
        })
    }

    /// The address the relay listens on (UDP, and TCP at the same one).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Where it takes which transport, for the banner: "UDP and TCP on 203.0.113.7:3478;
    /// TLS and TCP on the page's port" (TLS only when the page is served over TLS).
    pub fn describe(&self, page_tls: bool, behind_proxy: bool) -> String {
        let on_port = named([Transport::Udp, Transport::Tcp], |t| self.serves(t));
        let on_web = named([Transport::Tls, Transport::Tcp], |t| {
            self.serves(t) && (page_tls || t != Transport::Tls)
        });
        let mut parts = Vec::new();
        if !on_port.is_empty() {
            parts.push(format!(
                "{} on {}",
                on_port,
                SocketAddr::new(self.inner.external, self.inner.local.port())
            ));
        }
        if !on_web.is_empty() {
            parts.push(if behind_proxy {
                format!(
                    "{} on the page's port, but not through the proxy in front",
                    on_web
                )
            } else {
                format!("{on_web} on the page's port")
            });
        }
        parts.join("; ")
    }

    /// Whether the relay serves `transport`.
    pub fn serves(&self, transport: Transport) -> bool {
        match transport {
            Transport::Udp => self.inner.server.is_some(),
            Transport::Tcp => self.inner.tcp.is_some(),
            Transport::Tls => self.inner.tls.is_some(),
        }
    }

    /// The page's server tells what it serves on `port`, so that logins also list the relay
    /// there (see [`TurnRelay::web_urls`]).
    pub fn on_web_port(
        &self,
        port: u16,
        certificates: Option<crate::tls::Certificates>,
        behind_proxy: bool,
    ) {
        let _ = self.inner.web.set(WebPort {
            port,
            certificates,
            behind_proxy,
        });
    }

    /// What a login lists of the page's port, decided with the certificate served now (ACME's
    /// arrives after start, and SIGHUP may change it): `turns:NAME:PORT` when browsers trust
    /// it for a host name, else `turn:IP:PORT?transport=tcp` (plain TCP, told apart from
    /// HTTP on the same port). A browser refuses `turns:` with a certificate it does not
    /// trust, such as the self-signed one. Nothing behind a proxy: TURN does not pass through
    /// an HTTP proxy.
    fn web_urls(&self) -> Option<IceUrl> {
        let web = self.inner.web.get()?;
        if web.behind_proxy {
            return None;
        }
        let served = web.certificates.as_ref().and_then(|c| c.served());
        let trusted_name = served
            .filter(|served| !served.self_signed)
            .and_then(|served| {
                served
                    .names
                    .into_iter()
                    .find(|name| name.parse::<IpAddr>().is_err() && !name.starts_with('*'))
            });
        match trusted_name {
            Some(name) if self.serves(Transport::Tls) => {
                Some(IceUrl(format!("turns:{name}:{}?transport=tcp", web.port)))
            }
            _ if self.serves(Transport::Tcp) => Some(IceUrl(format!(
                "turn:{}?transport=tcp",
                SocketAddr::new(self.inner.external, web.port)
            ))),
            _ => None,
        }
    }

    /// A TCP or TLS connection whose first message is STUN, from the page's port (or the
    /// relay's own, for TCP); `read` holds what was read of it already.
    pub async fn serve_stream<S>(
        &self,
        transport: Transport,
        io: S,
        peer: SocketAddr,
        local: SocketAddr,
        read: bytes::BytesMut,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let engine = match transport {
            Transport::Tcp => &self.inner.tcp,
            Transport::Tls => &self.inner.tls,
            Transport::Udp => &None,
        };
        if let Some(engine) = engine {
            Arc::clone(engine).serve(io, peer, local, read).await;
        }
    }

    /// The ICE server for one login: this relay's URLs with a credential minted for `name`.
    pub fn ice_server_for(&self, name: &str, now: SystemTime) -> IceServer {
        let (username, credential) = self.inner.state.credentials.mint(name, now);
        let mut urls = self.inner.urls.clone();
        urls.extend(self.web_urls());
        IceServer {
            urls: Urls::Many(urls),
            username: Some(username),
            credential: Some(credential),
        }
    }

    /// The credential scheme, for tests that need a credential minted at another time.
    pub fn credentials(&self) -> &Credentials {
        &self.inner.state.credentials
    }

    /// Removes every allocation `name` has: they logged out, or their grace ran out.
    pub async fn forget(&self, name: &str) {
        let usernames: Vec<String> = {
            let allocations = self.inner.state.lock();
            let mut usernames: Vec<String> = allocations
                .open
                .values()
                .chain(allocations.pending.values())
                .filter(|username| user_of(username) == name)
                .cloned()
                .collect();
            usernames.sort();
            usernames.dedup();
            usernames
        };
        for username in usernames {
            for engine in [&self.inner.tcp, &self.inner.tls].into_iter().flatten() {
                engine.forget(&username).await;
            }
            let Some(server) = &self.inner.server else {
                continue;
            };
            if let Err(err) = server.delete_allocations_by_username(username).await {
                warn!("TURN relay: could not remove {name}'s allocations: {err}");
            }
        }
    }

    pub fn snapshot(&self) -> RelaySnapshot {
        RelaySnapshot {
            transports: Transport::ALL
                .into_iter()
                .filter(|t| self.serves(*t))
                .map(|t| (t, self.inner.state.figures(t)))
                .collect(),
        }
    }
}

/// "UDP and TCP": those of `transports` that `keep` keeps, as the banner and log name them.
fn named(transports: [Transport; 2], keep: impl Fn(Transport) -> bool) -> String {
    let kept: Vec<String> = transports
        .into_iter()
        .filter(|t| keep(*t))
        .map(|t| t.label().to_uppercase())
        .collect();
    kept.join(" and ")
}

/// The channel the crate tells closed allocations on, one per transport, and the task that
/// forgets them: a UDP client and a TCP one may have the same address and local end, so
/// which channel it came on says which client it was.
fn track_closes(state: &Arc<State>, transport: Transport) -> mpsc::Sender<AllocationInfo> {
    // Each close is one small message; the queue only needs to absorb a burst of them.
    let (closes, mut closed) = mpsc::channel::<AllocationInfo>(1024);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        while let Some(info) = closed.recv().await {
            state.closed(Client {
                addr: info.five_tuple.src_addr,
                local: info.five_tuple.dst_addr,
                transport,
            });
        }
    });
    closes
}

/// The relay's UDP socket and TCP listener, on the same address. With port 0 (tests), UDP
/// picks the port and TCP takes the same one; when that is taken for TCP, another is tried.
async fn bind(
    listen: SocketAddr,
    udp: bool,
    tcp: bool,
) -> Result<(Option<UdpSocket>, Option<TcpListener>, SocketAddr), StartError> {
    let failed = |transport: &'static str| {
        move |reason| StartError::Bind {
            transport,
            addr: listen,
            reason,
        }
    };
    let mut tries = if listen.port() == 0 { 10 } else { 1 };
    loop {
        tries -= 1;
        let socket = match udp {
            true => Some(UdpSocket::bind(listen).await.map_err(failed("UDP"))?),
            false => None,
        };
        let at = match &socket {
            Some(socket) => socket.local_addr().map_err(failed("UDP"))?,
            None => listen,
        };
        if !tcp {
            return Ok((socket, None, at));
        }
        match TcpListener::bind(at).await {
            Ok(listener) => {
                let at = listener.local_addr().map_err(failed("TCP"))?;
                return Ok((socket, Some(listener), at));
            }
            Err(err) if tries > 0 && socket.is_some() && listen.port() == 0 => {
                tracing::debug!("TCP port {at} taken ({err}); trying another");
            }
            Err(err) => return Err(failed("TCP")(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn state(max_per_user: usize) -> State {
        State {
            credentials: Credentials::new(b"north-wind", "dialtone", 600),
            peers: Peers::RelayOnly,
            own: vec!["10.0.0.1".parse().unwrap()],
            max_allocations: 10,
            max_per_user,
            allocations: Mutex::default(),
            counters: Default::default(),
            relays: Mutex::default(),
        }
    }

    pub(super) fn udp(addr: &str) -> Client {
        Client {
            addr: addr.parse().unwrap(),
            local: "10.0.0.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    #[test]
    fn an_expired_credential_keeps_only_the_allocation_it_made() {
        let state = state(5);
        let now = SystemTime::now();
        let (username, _) = state
            .credentials
            .mint("alice", now - std::time::Duration::from_secs(3600));
        let client = udp("10.9.9.9:5000");
        let other = udp("10.9.9.9:5001");
        // Expired, and nothing open: refused for a new allocation.
        assert!(key_for(&state, &username, "dialtone", client, now).is_none());
        // Made while it was valid, the allocation refreshes with it afterwards…
        state.lock().pending.insert(client, username.clone());
        state.opened(client);
        assert!(key_for(&state, &username, "dialtone", client, now).is_some());
        // …from that client only, and only until the allocation closes.
        assert!(key_for(&state, &username, "dialtone", other, now).is_none());
        state.closed(client);
        assert!(key_for(&state, &username, "dialtone", client, now).is_none());
        // Another realm never.
        let (fresh, _) = state.credentials.mint("alice", now);
        assert!(key_for(&state, &fresh, "dialtone", other, now).is_some());
        assert!(key_for(&state, &fresh, "elsewhere", other, now).is_none());
    }

    #[test]
    fn allocations_are_counted_per_user_until_they_close() {
        let state = state(5);
        let a = udp("10.9.9.9:5000");
        let b = udp("10.9.9.9:5001");
        for client in [a, b] {
            state.lock().pending.insert(client, "99:alice".into());
            state.opened(client);
        }
        // An answer for a client with nothing pending changes nothing.
        state.opened(udp("10.9.9.9:5002"));
        assert_eq!(state.lock().per_user.get("alice"), Some(&2));
        assert_eq!(state.figures(Transport::Udp).allocations, 2);
        assert_eq!(state.figures(Transport::Tcp).allocations, 0);
        state.closed(a);
        state.closed(a);
        assert_eq!(state.lock().per_user.get("alice"), Some(&1));
        state.closed(b);
        assert!(state.lock().per_user.is_empty());
        assert_eq!(state.figures(Transport::Udp).allocations, 0);
    }

    #[test]
    fn a_credential_opens_allocations_through_its_expiry_second() {
        let state = state(5);
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000);
        let client = udp("10.9.9.9:5000");
        // coturn's rule too: refused once the clock is past the expiry, not at it.
        assert!(key_for(&state, "2000000:alice", "dialtone", client, now).is_some());
        assert!(key_for(&state, "1999999:alice", "dialtone", client, now).is_none());
    }

    #[test]
    fn a_generated_secret_is_32_random_bytes() {
        let (one, two) = (generated_secret(), generated_secret());
        assert_eq!((one.len(), two.len()), (32, 32));
        assert_ne!(one, two);
    }
}
