//! The built-in STUN/TURN relay (UDP), for calls that cannot connect browser to browser.
//!
//! The protocol engine is webrtc-rs's `turn` crate. It has no peer filter, no quotas and no
//! flood control, and it is in bug-fix-only maintenance, so everything dialtone promises is
//! enforced here, around it, and the crate stays replaceable:
//! - [`guard`] wraps the listening socket: it reads every datagram before the crate does,
//!   answers what the crate must not see (malformed or unknown requests, bad credentials,
//!   denied peers, quotas, floods) and passes the rest on;
//! - `stun` reads and answers the STUN messages the guard handles itself;
//! - `addresses` picks the address browsers relay through and makes each allocation's relay
//!   socket (`socket`), wrapped so that it sends only where the [`policy`] allows and counts
//!   what it relays;
//! - [`Credentials`] checks the `<expiry>:<name>` / HMAC-SHA1 scheme the `[turn]` table mints
//!   for coturn, so the same page code works with either.

mod addresses;
mod credentials;
pub mod guard;
pub mod policy;
mod socket;
mod stun;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{info, warn};
use turn::allocation::AllocationInfo;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};

use crate::config::{IceServer, IceUrl, Secret, TurnServerConfig, Urls};
use policy::Peers;

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
    /// Binds the UDP socket and starts the crate's server behind the guard.
    pub async fn start(
        config: &TurnServerConfig,
        machine: &[IpAddr],
    ) -> Result<TurnRelay, StartError> {
        let (external, how) = external_ip(config, machine)?;
        let listen = listen_address(config.listen, external, machine);
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|reason| StartError::Bind {
                addr: listen,
                reason,
            })?;
        let local = socket.local_addr().map_err(|reason| StartError::Bind {
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
        .map_err(|err| StartError::Start(err.to_string()))?;
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

    pub(super) fn state(max_per_user: usize) -> State {
        State {
            credentials: Credentials::new(b"north-wind", "dialtone", 600),
            peers: Peers::RelayOnly,
            own: vec!["10.0.0.1".parse().unwrap()],
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
    fn a_generated_secret_is_32_random_bytes() {
        let (one, two) = (generated_secret(), generated_secret());
        assert_eq!((one.len(), two.len()), (32, 32));
        assert_ne!(one, two);
    }
}
