//! The built-in STUN/TURN relay (UDP), for calls that cannot connect browser to browser.
//!
//! The protocol engine is webrtc-rs's `turn` crate. It has no peer filter, no quotas and no
//! flood control, and it is in bug-fix-only maintenance, so everything dialtone promises is
//! enforced here, around it, and the crate stays replaceable:
//! - [`guard`] wraps the listening socket: it reads every datagram before the crate does,
//!   answers what the crate must not see (malformed or unknown requests, bad credentials,
//!   denied peers, quotas, floods) and passes the rest on;
//! - [`Ports`] makes each allocation's relay socket, wrapped so that it sends only where the
//!   policy allows and counts what it relays;
//! - [`Credentials`] checks the `<expiry>:<name>` / HMAC-SHA1 scheme the `[turn]` table mints
//!   for coturn, so the same page code works with either.

pub mod guard;
pub mod policy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{info, warn};
use turn::allocation::AllocationInfo;
use turn::auth::AuthHandler;
use turn::relay::RelayAddressGenerator;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;

use crate::config::{IceServer, IceUrl, PortRange, Secret, TurnServerConfig, Urls};
use policy::Peers;

/// Why the relay could not start, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(
        "[turn_server] external_ip must be set: {0}. It is the address browsers relay through \
         (the public one behind NAT or in a container)"
    )]
    ExternalIp(String),
    #[error("[turn_server] cannot listen on UDP {addr}: {reason} (set [turn_server] listen)")]
    Bind {
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
    server: Server,
    state: Arc<State>,
    /// What the login reply lists: `stun:` and `turn:` at the external address.
    urls: Urls,
    local: SocketAddr,
}

impl std::fmt::Debug for TurnRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRelay")
            .field("listen", &self.inner.local)
            .finish_non_exhaustive()
    }
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
    pub(crate) counters: Counters,
}

/// Open allocations, by the client address they belong to (the crate's 5-tuple, on the one
/// listening socket), and how many each user has.
#[derive(Default)]
pub(crate) struct Allocations {
    /// Allocate requests passed to the crate and not yet answered: client → TURN username.
    pub(crate) pending: HashMap<SocketAddr, String>,
    /// Client → TURN username of its allocation.
    pub(crate) open: HashMap<SocketAddr, String>,
    /// User name (the part after the expiry) → allocations open.
    pub(crate) per_user: HashMap<String, usize>,
}

/// What `/metrics` shows of the relay.
#[derive(Debug, Default)]
pub struct Counters {
    pub packets_relayed: AtomicU64,
    pub bytes_relayed: AtomicU64,
    pub auth_failures: AtomicU64,
    pub peers_denied: AtomicU64,
    /// Datagrams dropped unanswered: malformed, or over the request rate.
    pub dropped: AtomicU64,
}

/// The relay's figures at one moment, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelaySnapshot {
    pub allocations: usize,
    pub packets_relayed: u64,
    pub bytes_relayed: u64,
    pub auth_failures: u64,
    pub peers_denied: u64,
    pub dropped: u64,
}

impl State {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Allocations> {
        crate::sync::lock(&self.allocations)
    }

    /// Whether `client` has an open allocation made with `username`: such a client may go
    /// on refreshing it after the credential expires.
    pub(crate) fn has_open(&self, client: SocketAddr, username: &str) -> bool {
        self.lock()
            .open
            .get(&client)
            .is_some_and(|open| open == username)
    }

    /// The crate answered an Allocate for `client` with success.
    pub(crate) fn opened(&self, client: SocketAddr) {
        let mut allocations = self.lock();
        if let Some(username) = allocations.pending.remove(&client) {
            let user = user_of(&username).to_owned();
            *allocations.per_user.entry(user).or_default() += 1;
            tracing::debug!(%client, "TURN allocation opened");
            allocations.open.insert(client, username);
        }
    }

    /// The crate closed `client`'s allocation (expired, refreshed to 0, or deleted).
    fn closed(&self, client: SocketAddr) {
        let mut allocations = self.lock();
        if let Some(username) = allocations.open.remove(&client) {
            tracing::debug!(%client, "TURN allocation closed");
            let user = user_of(&username);
            if let Some(count) = allocations.per_user.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    allocations.per_user.remove(user);
                }
            }
        }
    }

    fn snapshot(&self) -> RelaySnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RelaySnapshot {
            allocations: self.lock().open.len(),
            packets_relayed: load(&self.counters.packets_relayed),
            bytes_relayed: load(&self.counters.bytes_relayed),
            auth_failures: load(&self.counters.auth_failures),
            peers_denied: load(&self.counters.peers_denied),
            dropped: load(&self.counters.dropped),
        }
    }
}

/// The user name in a TURN username `<expiry>:<name>`.
pub(crate) fn user_of(username: &str) -> &str {
    username.split_once(':').map_or(username, |(_, name)| name)
}

/// The `<expiry>:<name>` / HMAC-SHA1 scheme (coturn's `--use-auth-secret`).
pub struct Credentials {
    secret: Vec<u8>,
    pub realm: String,
    ttl_secs: u64,
}

impl Credentials {
    pub fn new(secret: &[u8], realm: &str, ttl_secs: u64) -> Credentials {
        Credentials {
            secret: secret.to_vec(),
            realm: realm.to_owned(),
            ttl_secs,
        }
    }

    /// A username and password for `name`, valid for new allocations for the TTL.
    pub fn mint(&self, name: &str, now: SystemTime) -> (String, String) {
        let expiry = unix(now).saturating_add(self.ttl_secs);
        let username = format!("{expiry}:{name}");
        let password = self.password(&username);
        (username, password)
    }

    pub fn password(&self, username: &str) -> String {
        use base64::Engine;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.secret);
        let tag = ring::hmac::sign(&key, username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }

    /// When `username` stops opening allocations, or `None` when it is not `<expiry>:<name>`.
    pub fn expiry(username: &str) -> Option<u64> {
        let (expiry, name) = username.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        expiry.parse().ok()
    }
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The crate's credential callback: the long-term key for a username, or an error. The guard
/// has already checked the message's integrity with the same rule, so this only decides for
/// requests it let through.
struct Auth {
    state: Arc<State>,
}

impl AuthHandler for Auth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        key_for(&self.state, username, realm, src_addr, SystemTime::now())
            .ok_or_else(|| turn::Error::Other(format!("refused credential {username:?}")))
    }
}

/// The long-term key (MD5 of `username:realm:password`) when `username` may be used from
/// `client` now: unexpired, or the one its open allocation was made with (a call in progress
/// is never cut because its credential expired).
pub(crate) fn key_for(
    state: &State,
    username: &str,
    realm: &str,
    client: SocketAddr,
    now: SystemTime,
) -> Option<Vec<u8>> {
    let credentials = &state.credentials;
    if realm != credentials.realm {
        return None;
    }
    let expiry = Credentials::expiry(username)?;
    if expiry < unix(now) && !state.has_open(client, username) {
        return None;
    }
    let password = credentials.password(username);
    Some(turn::auth::generate_auth_key(
        username,
        &credentials.realm,
        &password,
    ))
}

/// Makes each allocation's relay socket: a free port in `relay_ports` on the listen address,
/// announced at the external address.
struct Ports {
    bind: IpAddr,
    external: IpAddr,
    range: PortRange,
    state: Arc<State>,
}

#[async_trait]
impl RelayAddressGenerator for Ports {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.external.is_ipv4() {
            return Err(turn::Error::Other(
                "only the external address's family is relayed".into(),
            ));
        }
        let PortRange { min, max } = self.range;
        let span = u32::from(max - min) + 1;
        let tries: Vec<u16> = if requested_port != 0 {
            if !(min..=max).contains(&requested_port) {
                return Err(turn::Error::Other("requested port out of range".into()));
            }
            vec![requested_port]
        } else {
            (0..16).map(|_| min + (rand_u32() % span) as u16).collect()
        };
        for port in tries {
            if let Ok(socket) = UdpSocket::bind(SocketAddr::new(self.bind, port)).await {
                let relay = SocketAddr::new(self.external, port);
                let conn = guard::RelaySocket::new(socket, Arc::clone(&self.state));
                return Ok((Arc::new(conn), relay));
            }
        }
        Err(turn::Error::Other("no free relay port".into()))
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

/// The address browsers are told to relay through, and how it was decided: the setting, the
/// listen address, or the machine's only usable address (a public one over private ones).
pub fn external_ip(
    config: &TurnServerConfig,
    machine: &[IpAddr],
) -> Result<(IpAddr, String), RelayError> {
    if let Some(ip) = config.external_ip {
        return Ok((ip, "[turn_server] external_ip".into()));
    }
    let listen = config.listen.ip();
    if !listen.is_unspecified() {
        return Ok((listen, "the [turn_server] listen address".into()));
    }
    let usable: Vec<IpAddr> = machine
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv4() == listen.is_ipv4())
        .filter(|ip| policy::check(Peers::Public, *ip, &[]).is_ok())
        .collect();
    let (public, private): (Vec<IpAddr>, Vec<IpAddr>) = usable
        .iter()
        .partition(|ip| policy::check(Peers::Lan, **ip, &[]).is_err());
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (public.as_slice(), private.as_slice()) {
        ([one], _) => Ok((*one, "this machine's only public address".into())),
        ([], [one]) => Ok((
            *one,
            "this machine's only address, a private one: browsers outside this network \
             reach it only if it is the address they see (behind NAT, set external_ip)"
                .into(),
        )),
        ([], []) => Err(RelayError::ExternalIp(
            "this machine has no address but loopback".into(),
        )),
        ([], several) => Err(RelayError::ExternalIp(format!(
            "this machine has several addresses ({}) and no public one",
            list(several)
        ))),
        (several, _) => Err(RelayError::ExternalIp(format!(
            "this machine has several public addresses ({})",
            list(several)
        ))),
    }
}

/// Why browsers cannot relay through `external`, when that is plain from the address alone:
/// loopback (only this machine reaches it) or a range reserved for documentation (an
/// address copied from an example).
pub fn unreachable_external_ip(external: IpAddr) -> Option<String> {
    if external.is_loopback() {
        return Some(format!(
            "the TURN relay tells browsers to relay through {external}, a loopback address: \
             only browsers on this machine can reach it there; set [turn_server] external_ip \
             (or listen) to an address the other devices reach"
        ));
    }
    let documentation = match external {
        IpAddr::V4(v4) => matches!(
            v4.octets(),
            [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]
        ),
        IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0x0db8],
    };
    documentation.then(|| {
        format!(
            "the TURN relay tells browsers to relay through {external}, an address reserved \
             for documentation and examples (RFC 5737, RFC 3849) that no browser can reach: \
             set [turn_server] external_ip to this machine's public address"
        )
    })
}

/// Where the relay's socket binds. A socket on the wildcard answers from whichever address
/// the route picks: on a machine with several, that is not always the one the client sent
/// to, and the client drops the answer. So a wildcard listen address becomes the external
/// address when that is this machine's own; an address that is set is kept as it is.
fn listen_address(listen: SocketAddr, external: IpAddr, machine: &[IpAddr]) -> SocketAddr {
    if listen.ip().is_unspecified() && machine.contains(&external) {
        SocketAddr::new(external, listen.port())
    } else {
        listen
    }
}

/// dialtone's own relay addresses, where `relay-only` lets it send: the external one, and
/// the one relay sockets bind to when that is another (behind NAT, the private one).
fn own_addresses(external: IpAddr, local: IpAddr) -> Vec<IpAddr> {
    let mut own = vec![external];
    if !local.is_unspecified() && local != external {
        own.push(local);
    }
    own
}

/// A secret for the credentials when none is configured: 32 random bytes, never shown.
fn generated_secret() -> Vec<u8> {
    (0..8).flat_map(|_| rand_u32().to_le_bytes()).collect()
}

impl TurnRelay {
    /// Binds the UDP socket and starts the crate's server behind the guard.
    pub async fn start(
        config: &TurnServerConfig,
        machine: &[IpAddr],
    ) -> Result<TurnRelay, RelayError> {
        let (external, how) = external_ip(config, machine)?;
        let listen = listen_address(config.listen, external, machine);
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|reason| RelayError::Bind {
                addr: listen,
                reason,
            })?;
        let local = socket.local_addr().map_err(|reason| RelayError::Bind {
            addr: listen,
            reason,
        })?;
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
            counters: Counters::default(),
        });
        // Each close is one small message; the queue only needs to absorb a burst of them.
        let (closes, mut closed) = mpsc::channel::<AllocationInfo>(1024);
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(guard::Guard::new(socket, Arc::clone(&state))),
                relay_addr_generator: Box::new(Ports {
                    bind: local.ip(),
                    external,
                    range: config.relay_ports,
                    state: Arc::clone(&state),
                }),
            }],
            realm: config.realm.clone(),
            auth_handler: Arc::new(Auth {
                state: Arc::clone(&state),
            }),
            channel_bind_timeout: std::time::Duration::ZERO,
            alloc_close_notify: Some(closes),
        })
        .await
        .map_err(|err| RelayError::Start(err.to_string()))?;
        let tracked = Arc::clone(&state);
        tokio::spawn(async move {
            while let Some(info) = closed.recv().await {
                tracked.closed(info.five_tuple.src_addr);
            }
        });
        let port = local.port();
        let urls = Urls::Many(vec![
            IceUrl(format!("stun:{}", SocketAddr::new(external, port))),
            IceUrl(format!(
                "turn:{}?transport=udp",
                SocketAddr::new(external, port)
            )),
        ]);
        info!(
            "TURN relay on UDP {local}, relaying through {external} ({how}), relay ports {}-{}, \
             peers \"{}\"",
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
                state,
                urls,
                local,
            }),
        })
    }

    /// The UDP address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The ICE server for one login: this relay's URLs with a credential minted for `name`.
    pub fn ice_server_for(&self, name: &str, now: SystemTime) -> IceServer {
        let (username, credential) = self.inner.state.credentials.mint(name, now);
        IceServer {
            urls: self.inner.urls.clone(),
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
            if let Err(err) = self
                .inner
                .server
                .delete_allocations_by_username(username)
                .await
            {
                warn!("TURN relay: could not remove {name}'s allocations: {err}");
            }
        }
    }

    pub fn snapshot(&self) -> RelaySnapshot {
        self.inner.state.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> TurnServerConfig {
        let config: crate::config::Config = toml::from_str(text).unwrap();
        config.turn_server
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn external_ip_is_the_setting_then_the_listen_address_then_the_only_usable_one() {
        let set = config("[turn_server]\nexternal_ip = \"203.0.113.9\"\n");
        let (ip, how) = external_ip(&set, &ips(&["10.0.0.2"])).unwrap();
        assert_eq!(
            (ip.to_string(), how.as_str()),
            ("203.0.113.9".into(), "[turn_server] external_ip")
        );

        let listen = config("[turn_server]\nlisten = \"10.1.2.3:3478\"\n");
        let (ip, how) = external_ip(&listen, &ips(&["10.0.0.2"])).unwrap();
        assert_eq!(ip.to_string(), "10.1.2.3");
        assert!(how.contains("listen"), "{how}");

        let wildcard = config("[turn_server]\n");
        // One public address wins over private ones; link-local and IPv6 don't count for an
        // IPv4 listen address.
        let (ip, how) = external_ip(
            &wildcard,
            &ips(&["10.0.0.2", "81.2.69.160", "169.254.1.1", "2a00::1"]),
        )
        .unwrap();
        assert_eq!(ip.to_string(), "81.2.69.160");
        assert!(how.contains("public"), "{how}");
        let (ip, how) = external_ip(&wildcard, &ips(&["192.168.1.5", "fe80::1"])).unwrap();
        assert_eq!(ip.to_string(), "192.168.1.5");
        assert!(how.contains("set external_ip"), "{how}");
    }

    #[test]
    fn external_ip_refuses_to_guess() {
        let wildcard = config("[turn_server]\n");
        let several = external_ip(&wildcard, &ips(&["192.168.1.5", "10.0.0.2"]))
            .unwrap_err()
            .to_string();
        assert!(several.contains("192.168.1.5, 10.0.0.2"), "{several}");
        assert!(several.contains("external_ip must be set"), "{several}");
        let none = external_ip(&wildcard, &ips(&["fe80::1"]))
            .unwrap_err()
            .to_string();
        assert!(none.contains("no address but loopback"), "{none}");
        let two_public = external_ip(&wildcard, &ips(&["81.2.69.160", "81.2.69.161"]))
            .unwrap_err()
            .to_string();
        assert!(two_public.contains("several public"), "{two_public}");
    }

    pub(super) fn state(max_per_user: usize) -> State {
        State {
            credentials: Credentials::new(b"north-wind", "dialtone", 600),
            peers: Peers::RelayOnly,
            own: ips(&["10.0.0.1"]),
            max_allocations: 10,
            max_per_user,
            allocations: Mutex::default(),
            counters: Counters::default(),
        }
    }

    #[test]
    fn an_expired_credential_keeps_only_the_allocation_it_made() {
        let state = state(5);
        let now = SystemTime::now();
        let (username, _) = state
            .credentials
            .mint("alice", now - std::time::Duration::from_secs(3600));
        let client: SocketAddr = "10.9.9.9:5000".parse().unwrap();
        let other: SocketAddr = "10.9.9.9:5001".parse().unwrap();
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
        let a: SocketAddr = "10.9.9.9:5000".parse().unwrap();
        let b: SocketAddr = "10.9.9.9:5001".parse().unwrap();
        for client in [a, b] {
            state.lock().pending.insert(client, "99:alice".into());
            state.opened(client);
        }
        // An answer for a client with nothing pending changes nothing.
        state.opened("10.9.9.9:5002".parse().unwrap());
        assert_eq!(state.lock().per_user.get("alice"), Some(&2));
        assert_eq!(state.snapshot().allocations, 2);
        state.closed(a);
        state.closed(a);
        assert_eq!(state.lock().per_user.get("alice"), Some(&1));
        state.closed(b);
        assert!(state.lock().per_user.is_empty());
        assert_eq!(state.snapshot().allocations, 0);
    }

    #[test]
    fn a_credential_opens_allocations_through_its_expiry_second() {
        let state = state(5);
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000);
        let client: SocketAddr = "10.9.9.9:5000".parse().unwrap();
        // coturn's rule too: refused once the clock is past the expiry, not at it.
        assert!(key_for(&state, "2000000:alice", "dialtone", client, now).is_some());
        assert!(key_for(&state, "1999999:alice", "dialtone", client, now).is_none());
    }

    #[test]
    fn an_external_address_nobody_can_reach_is_named_with_the_reason() {
        for (ip, says) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("192.0.2.2", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.255", "documentation"),
            ("2001:db8::5", "documentation"),
        ] {
            let why = unreachable_external_ip(ip.parse().unwrap())
                .unwrap_or_else(|| panic!("{ip} passed"));
            assert!(why.contains(says) && why.contains(ip), "{ip}: {why}");
            assert!(why.contains("external_ip"), "{why}");
        }
        for ip in [
            "10.0.0.5",
            "192.0.3.1",
            "203.0.114.1",
            "8.8.8.8",
            "2001:db9::1",
            "fd00::2",
        ] {
            assert_eq!(unreachable_external_ip(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn the_relay_binds_the_external_address_only_for_a_wildcard_listen() {
        let machine = ips(&["10.0.0.2", "192.168.1.5"]);
        let wildcard: SocketAddr = "0.0.0.0:3478".parse().unwrap();
        let own: IpAddr = "10.0.0.2".parse().unwrap();
        let nat: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            listen_address(wildcard, own, &machine),
            "10.0.0.2:3478".parse().unwrap()
        );
        // Behind NAT the external address is not this machine's: the wildcard stays.
        assert_eq!(listen_address(wildcard, nat, &machine), wildcard);
        // A listen address that is set is never moved, even to one of the machine's own.
        let set: SocketAddr = "192.168.1.5:3478".parse().unwrap();
        assert_eq!(listen_address(set, own, &machine), set);
    }

    #[test]
    fn own_addresses_are_the_external_one_and_a_different_bound_one() {
        let [public, private, wildcard] = [
            ips(&["203.0.113.9"])[0],
            ips(&["10.0.0.2"])[0],
            ips(&["0.0.0.0"])[0],
        ];
        assert_eq!(own_addresses(public, private), vec![public, private]);
        assert_eq!(own_addresses(private, private), vec![private]);
        assert_eq!(own_addresses(public, wildcard), vec![public]);
    }

    #[test]
    fn a_generated_secret_is_32_random_bytes() {
        let (one, two) = (generated_secret(), generated_secret());
        assert_eq!((one.len(), two.len()), (32, 32));
        assert_ne!(one, two);
    }

    #[tokio::test]
    async fn a_one_port_range_allocates_that_port() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ports = Ports {
            bind: ips(&["127.0.0.1"])[0],
            external: ips(&["10.0.0.1"])[0],
            range: PortRange {
                min: port,
                max: port,
            },
            state: Arc::new(state(5)),
        };
        let (conn, relayed) = ports.allocate_conn(true, 0).await.unwrap();
        assert_eq!(relayed, SocketAddr::new(ips(&["10.0.0.1"])[0], port));
        assert_eq!(conn.local_addr().unwrap().port(), port);
        // Taken now: a second allocation finds no free port, and says so.
        let err = ports.allocate_conn(true, 0).await.err().unwrap();
        assert!(err.to_string().contains("no free relay port"), "{err}");
        // The other family is not relayed.
        assert!(ports.allocate_conn(false, 0).await.is_err());
    }

    #[test]
    fn credentials_are_coturns_rest_scheme() {
        let credentials = Credentials::new(b"north-wind", "dialtone", 600);
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let (username, password) = credentials.mint("alice", now);
        assert_eq!(username, "1000600:alice");
        // base64(HMAC-SHA1("north-wind", "1000600:alice")), computed independently with
        // `printf %s 1000600:alice | openssl dgst -sha1 -hmac north-wind -binary | base64`.
        assert_eq!(password, "HVE/rVrHrgPDcpe61KKBP3dCkXs=");
        assert_eq!(Credentials::expiry(&username), Some(1_000_600));
        assert_eq!(Credentials::expiry("alice"), None);
        assert_eq!(Credentials::expiry("12:"), None);
        assert_eq!(Credentials::expiry("soon:alice"), None);
    }
}
