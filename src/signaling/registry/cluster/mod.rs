//! The Redis engine: several dialtone instances as one service.
//!
//! Redis holds who is logged in where, and who is in a call with whom; every check and change
//! of that state is one Lua script (`lua/`), run with EVALSHA (and loaded again by redis-rs
//! when a restarted Redis answers NOSCRIPT), so no check and set are ever two round trips.
//! Each instance keeps, for its own sockets only, a copy of their records: it carries calls
//! between two users of this instance while Redis is away, and is written back when Redis
//! comes back empty.
//!
//! Messages for a user on another instance go to that instance's pub/sub channel, which one
//! task there reads in order and pushes into the sockets' bounded queues. A message that
//! changes a call (an offer, answer, decline, close) is PUBLISHed by its script. A candidate
//! or a renegotiating offer changes nothing shared: it goes from this instance's copy of the
//! call straight into a publish queue that sends many per round trip, and the receiving
//! instance checks the partnership against its own copy. A socket's next script waits for its
//! queued messages, so the partner sees everything in the order sent. Records carry a
//! version, so a reply and a message that race each other cannot leave a copy behind.
//! Pub/sub is at most once: the heartbeat, which renews this instance's lease, also
//! ends any call whose other side has vanished, so a partner always learns that a call ended.
//! An instance that dies stops renewing its lease; when it lapses any survivor frees its
//! names and tells their partners. There is no leader.
//!
//! Every Redis command has a timeout. While Redis cannot be reached the engine refuses at
//! once what needs it (login, a new call), sends nothing to Redis but the heartbeat, so no
//! commands pile up, and carries on the calls between two users of this instance.

//!
//! The rooms: `redis` (the connection and the scripts), `copy` (this instance's copy of
//! its users' records), `envelope` (what instances send each other), `pubsub` (this
//! instance's channel and the publish queue), `heartbeat` (lease, probes, re-claim,
//! reaping), `presence` (who is online in the whole cluster) and `connection` (one
//! socket's membership). Delivery into sockets is `super::local`'s, shared with the memory
//! engine.

mod connection;
mod copy;
mod envelope;
mod heartbeat;
mod presence;
mod pubsub;
mod redis;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use hyper_tungstenite::tungstenite::Message;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

use super::super::queue::Outbox;
use super::CallState;
use super::local;
use crate::config::ClusterConfig;
use crate::metrics::{Backplane, Metrics};
use crate::sync::lock;
pub use connection::Connection;
use copy::Local;
use pubsub::{Outgoing, PUBLISH_QUEUE};
use redis::{Ops, Scripts};

/// How long a start waits for Redis before it says that it is waiting.
const QUIET_START: Duration = Duration::from_millis(500);

/// The handle sessions and the HTTP layer share; cloning it is one reference count.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.inner.id)
            .finish_non_exhaustive()
    }
}

struct Inner {
    id: String,
    prefix: String,
    channel: String,
    client: ::redis::Client,
    redis: ConnectionManager,
    scripts: Scripts,
    local: Mutex<Local>,
    heartbeat: Duration,
    lease: Duration,
    timeout: Duration,
    metrics: Backplane,
    ops: Ops,
    /// The publish queue (see [`Inner::publish`]).
    outgoing: mpsc::Sender<Outgoing>,
    /// Usable: the last heartbeat went through and the subscription hears its probes.
    up: AtomicBool,
    subscribed: AtomicBool,
    probes_sent: AtomicU64,
    probes_heard: AtomicU64,
    resubscribe: Notify,
    /// Set when a script found a record of ours missing: the heartbeat re-claims at once.
    reclaim: AtomicBool,
    /// Milliseconds the partner of a user whose instance vanished waits for a resume
    /// (`[websocket] resume_grace_secs`); 0 tells the partner at once.
    hold_ms: u64,
    next_sid: AtomicU64,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Why the backplane last failed, for the log.
    last_error: Mutex<String>,
    /// Rung when a user here logs in or out (see [`super::Registry::changes`]).
    changes: Arc<Notify>,
}

/// What a Redis command's failure leaves the caller with: the engine is (now) unavailable.
struct Down;

impl Cluster {
    /// Connects to Redis, subscribes to this instance's channel and takes the lease before
    /// returning, so no socket is accepted before messages for it can arrive. If Redis cannot
    /// be reached, the instance starts anyway, unavailable, and keeps trying.
    pub async fn start(
        config: &ClusterConfig,
        resume_grace: Duration,
        metrics: &Metrics,
    ) -> anyhow::Result<Cluster> {
        let (client, redis) = redis::open(config)?;
        let url = redacted_url(config);
        let timeout = config.timeout();
        let id = instance_id(config);
        let prefix = config.key_prefix.clone();
        let backplane = metrics.backplane();
        let (outgoing, queue) = mpsc::channel(PUBLISH_QUEUE);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                channel: format!("{prefix}ch:{id}"),
                id,
                prefix,
                client,
                redis,
                scripts: Scripts::new(),
                local: Mutex::new(Local::default()),
                heartbeat: config.heartbeat(),
                lease: config.lease(),
                timeout,
                outgoing,
                ops: redis::ops(&backplane),
                metrics: backplane,
                up: AtomicBool::new(false),
                subscribed: AtomicBool::new(false),
                probes_sent: AtomicU64::new(0),
                probes_heard: AtomicU64::new(0),
                resubscribe: Notify::new(),
                reclaim: AtomicBool::new(false),
                hold_ms: u64::try_from(resume_grace.as_millis()).unwrap_or(u64::MAX),
                next_sid: AtomicU64::new(first_session_id()),
                tasks: Mutex::new(Vec::new()),
                last_error: Mutex::new(String::new()),
                changes: Arc::default(),
            }),
        };
        info!(
            instance = %cluster.inner.id,
            "cluster mode: Redis at {url}, keys under {:?}",
            cluster.inner.prefix
        );
        let inner = &cluster.inner;
        let subscriber = tokio::spawn(inner.clone().listen());
        let heartbeat = tokio::spawn(inner.clone().beat());
        let publisher = tokio::spawn(inner.clone().publish(queue));
        lock(&inner.tasks).extend([
            subscriber.abort_handle(),
            heartbeat.abort_handle(),
            publisher.abort_handle(),
        ]);
        {
            // Wait for the first heartbeat with a live subscription, a few heartbeats at most.
            let ready = async {
                while !inner.is_up() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::pin!(ready);
            let patience = 3 * (timeout + inner.heartbeat);
            let quiet = QUIET_START.min(patience);
            if tokio::time::timeout(quiet, &mut ready).await.is_err() {
                // Say so now rather than after the whole wait: a Redis that is not there yet
                // would otherwise look like a server that hangs.
                let so_far = lock(&inner.last_error).clone();
                let so_far = if so_far.is_empty() {
                    String::new()
                } else {
                    format!("; so far: {so_far}")
                };
                info!(
                    "waiting for Redis at {url} to answer (at most {} s more) before serving{so_far}",
                    (patience - quiet).as_secs_f64().ceil()
                );
                if tokio::time::timeout(patience - quiet, ready).await.is_err() {
                    error!(
                        "the backplane (Redis at {url}) is unavailable ({}): logins are refused \
                         until it answers; check redis_url / REDIS_URL, the password, and for \
                         rediss:// tls_insecure",
                        lock(&inner.last_error)
                    );
                }
            }
        }
        Ok(cluster)
    }

    pub fn connect(&self, outbox: Outbox) -> Connection {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::Relaxed);
        Connection::new(self.clone(), outbox, sid)
    }

    pub fn is_up(&self) -> bool {
        self.inner.is_up()
    }

    pub fn users(&self) -> usize {
        let local = self.inner.lock();
        local
            .members
            .values()
            .filter(|m| !m.seat.is_claiming())
            .count()
    }

    /// A ringing call is counted by its caller's instance, an active one by the instance of
    /// the partner whose name sorts first: each call once in the whole cluster.
    pub fn calls(&self) -> (usize, usize) {
        let local = self.inner.lock();
        let calls = local
            .members
            .iter()
            .filter_map(|(name, m)| Some((name, m.call.as_ref()?)));
        let (mut ringing, mut active) = (0, 0);
        for (name, call) in calls {
            match call.state {
                CallState::Calling => ringing += 1,
                CallState::Active if **name < *call.with => active += 1,
                _ => {}
            }
        }
        (ringing, active)
    }

    pub fn changes(&self) -> Arc<Notify> {
        self.inner.changes.clone()
    }

    pub fn heartbeat(&self) -> Duration {
        self.inner.heartbeat
    }

    /// Queues `frame` for every user of this instance who can read it now.
    pub fn broadcast(&self, frame: &Message) {
        let local = self.inner.lock();
        local::broadcast(local.members.values().map(|m| &m.seat), frame);
    }

    pub fn call_of(&self, name: &str) -> Option<(String, CallState)> {
        let local = self.inner.lock();
        let call = local.members.get(name)?.call.as_ref()?;
        Some((call.with.to_string(), call.state))
    }

    /// Stops the heartbeat and frees every name of this instance in Redis, telling remote
    /// partners. Called at shutdown once the sessions have closed.
    pub async fn leave(&self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        let inner = &self.inner;
        let done: Result<Vec<i64>, Down> = inner
            .run(
                "leave",
                inner
                    .invoke(&inner.scripts.reap)
                    .arg("leave")
                    .arg(inner.hold_ms),
            )
            .await;
        match done {
            Ok(_) => info!(instance = %inner.id, "left the cluster: names released"),
            Err(Down) => warn!(
                instance = %inner.id,
                "could not leave the cluster cleanly: the other instances free this \
                 instance's names when its lease lapses"
            ),
        }
        inner.up.store(false, Ordering::Relaxed);
    }
}

/// The Redis URL without its password, for the log.
fn redacted_url(config: &ClusterConfig) -> String {
    config
        .redis_url
        .as_ref()
        .map_or_else(String::new, |url| url.redacted())
}

/// `DYNO` on Heroku (web.1, web.2, …), else the host name, and a random suffix either way:
/// a restarted dyno keeps its `DYNO` while its predecessor may still be draining, and the
/// two must not be taken for one instance (the old one's leaving would free the new one's
/// names).
fn instance_id(config: &ClusterConfig) -> String {
    if let Some(id) = &config.instance_id {
        return id.as_str().to_owned();
    }
    let name = std::env::var("DYNO")
        .ok()
        .filter(|dyno| !dyno.is_empty())
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let mut suffix = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix);
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}-{suffix}")
}

/// Session ids start from the clock, so a process that restarts under a configured
/// `instance_id` never reuses an id its predecessor left in Redis, and its ids are newer
/// (unless its predecessor took over 4,096 sockets per millisecond it ran): milliseconds
/// since 2026 shifted left 12 bits, which stays under 2^53, where Lua's numbers are exact,
/// for 68 years.
fn first_session_id() -> u64 {
    const EPOCH_2026_MS: u64 = 1_767_225_600_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    (now.saturating_sub(EPOCH_2026_MS) << 12) | 1
}

fn number(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

/// The other side of a call as a script's reply names it: its name, instance and session.
struct Partner<'a> {
    name: &'a str,
    instance: &'a str,
    sid: u64,
}
