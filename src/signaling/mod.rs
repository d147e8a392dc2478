//! The signaling relay: users log in by name and exchange offers, answers and ICE candidates.
//!
//! - [`Signaling::start`]: the composition root: it reads the config and starts the parts
//!   (access control, the engine, the built-in TURN relay, presence) that every session
//!   shares.
//! - [`protocol`]: the JSON messages, one enum per direction.
//! - [`registry`]: who is logged in and who is calling whom: the engine seam, in memory or
//!   on Redis.
//! - [`session`]: one task per WebSocket.
//! - [`queue`]: each socket's bounded frame queue, and the [`queue::Outbox`] engines deliver to.
//! - [`grace`]: dropped users held for a while, and the tokens that take them back.
//! - [`presence`]: who's online, when the operator turns it on.

pub mod grace;
pub mod presence;
pub mod protocol;
pub mod queue;
pub mod registry;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::access::Access;
use crate::config::{Config, IceServer, Limits, TurnConfig};
use crate::metrics::Metrics;
use crate::turn::TurnRelay;
use grace::Sessions;
use presence::Presence;
use registry::Registry;
use registry::cluster::Cluster;

/// What all sessions share: the engine, the settings, the metrics, the users in grace,
/// presence, the TURN relay and the access rules.
#[derive(Debug)]
pub struct Signaling {
    /// Who may log in (`[access]`).
    pub access: Access,
    pub registry: Registry,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Reconnect tokens, and the users held in grace.
    pub sessions: Arc<Sessions>,
    /// Who's online, when `[presence] enabled`.
    pub presence: Option<Arc<Presence>>,
    /// The built-in TURN relay, when `[turn_server] enabled`.
    pub turn: Option<TurnRelay>,
}

/// What every session needs from the configuration.
#[derive(Debug)]
pub struct Settings {
    pub ping_interval: Duration,
    pub max_message_bytes: usize,
    pub ice_servers: Vec<IceServer>,
    pub turn: Option<TurnConfig>,
    pub limits: Limits,
    /// How long a dropped user's name and call are held (0: not at all), and how long a
    /// request to resume a call waits for the other side.
    pub resume_grace: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            ping_interval: config.websocket.ping_interval(),
            max_message_bytes: config.websocket.max_message_bytes.0,
            ice_servers: config.ice_servers.clone(),
            turn: config.turn.clone(),
            limits: config.limits.clone(),
            resume_grace: config.websocket.resume_grace(),
        }
    }

    /// tungstenite's settings. Its read buffer is allocated up front for every socket (the
    /// default 128 KiB would cost 1.3 GB for 10,000 idle users), and it is also the most
    /// one read asks for. Over TLS the reads come out of rustls's own buffer, with no system
    /// call, so 512 bytes costs nothing; on plain TCP each read is a system call. 1 KiB there
    /// holds four candidates a read and saves 1 KB per idle connection against 2 KiB, for
    /// ~6 % more CPU per message at the maximum rate (measured with bench/run, see bench/README.md).
    /// Frames and messages are capped at the configured maximum.
    pub fn websocket_config(&self, over_tls: bool) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(if over_tls { 512 } else { 1024 })
            .write_buffer_size(session::WRITE_BUFFER)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }

    /// The `iceServers` for one login, with TURN credentials minted for `name`.
    fn ice_servers_for(&self, name: &str, now: SystemTime) -> Vec<IceServer> {
        let mut servers = self.ice_servers.clone();
        if let Some(turn) = &self.turn {
            let (username, credential) = turn_credentials(turn, name, now);
            servers.push(IceServer {
                urls: turn.urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }
}

impl Signaling {
    /// Starts what the config asks for: the access rules (keys read, the JWKS fetched), the
    /// Redis engine when `[cluster]` names a Redis
    /// (connected and subscribed before this returns), memory otherwise; the built-in TURN
    /// relay with `[turn_server] enabled`; presence with `[presence] enabled`.
    pub async fn start(config: &Config, metrics: Metrics) -> anyhow::Result<Arc<Signaling>> {
        let access = Access::start(&config.access).await?;
        let registry = match &config.cluster.redis_url {
            None => Registry::new(),
            Some(_) => Registry::Cluster(
                Cluster::start(&config.cluster, config.websocket.resume_grace(), &metrics).await?,
            ),
        };
        let relay = if config.turn_server.enabled {
            Some(
                TurnRelay::start(
                    &config.turn_server,
                    &config.limits,
                    &crate::net::lan_addresses(),
                )
                .await?,
            )
        } else {
            None
        };
        Ok(Signaling::with(config, registry, metrics, relay, access))
    }

    /// The parts already made; presence starts here when the config asks for it.
    pub fn with(
        config: &Config,
        registry: Registry,
        metrics: Metrics,
        relay: Option<TurnRelay>,
        access: Access,
    ) -> Arc<Signaling> {
        let presence = config
            .presence
            .enabled
            .then(|| Presence::start(registry.clone()));
        Arc::new(Signaling {
            access,
            registry,
            settings: Settings::from_config(config),
            metrics,
            sessions: Arc::default(),
            presence,
            turn: relay,
        })
    }
}

/// coturn's TURN REST scheme (`--use-auth-secret`): the username is `expiry:name`, the
/// password is base64(HMAC-SHA1(secret, username)).
pub fn turn_credentials(turn: &TurnConfig, name: &str, now: SystemTime) -> (String, String) {
    // The built-in relay checks the same scheme: one implementation mints for both.
    crate::turn::Credentials::new(turn.secret.0.as_bytes(), "", turn.ttl.get()).mint(name, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IceUrl, Secret, Urls};
    use std::num::NonZeroU64;

    #[test]
    fn turn_credentials_match_an_independent_vector() {
        // Computed with Python, independently of this code:
        // python3 -c "import hmac,hashlib,base64; u=b'1700086400:alice';
        //   print(base64.b64encode(hmac.new(b'north-wind', u, hashlib.sha1).digest()).decode())"
        // -> 2cdv8ItP/4kX53j3SEoTDhjFpeM=
        let turn = TurnConfig {
            urls: Urls::One(IceUrl("turn:turn.example:3478".into())),
            secret: Secret("north-wind".into()),
            ttl: NonZeroU64::new(86_400).unwrap(),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (username, credential) = turn_credentials(&turn, "alice", now);
        assert_eq!(username, "1700086400:alice");
        assert_eq!(credential, "2cdv8ItP/4kX53j3SEoTDhjFpeM=");
    }
}
