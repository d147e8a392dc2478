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

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use hyper_tungstenite::tungstenite::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, FromRedisValue, IntoConnectionInfo, Script, ScriptInvocation};
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{CallState, LoggedIn, Outbox, Queued, Relay, RelayError, Resumed, Tokens};
use crate::config::ClusterConfig;
use crate::metrics::{Backplane, Metrics};
use crate::signaling::protocol::{LoginFailure, name_key, same_name};
use crate::signaling::queue;
use crate::sync::lock;

/// Most commands in flight on the shared connection; beyond it a command fails at once
/// instead of queueing in memory.
const MAX_IN_FLIGHT: usize = 4096;
/// Names re-claimed per script call after Redis lost them.
const RECLAIM_BATCH: usize = 256;
/// Messages waiting to be published, for all sockets together; a sender waits (at most the
/// command timeout) when it is full.
const PUBLISH_QUEUE: usize = 4096;
/// Most messages sent in one round trip.
const PUBLISH_BATCH: usize = 256;

/// How long an instance's presence list outlives its writes: instances write it at most a
/// couple of seconds apart (see `signaling::presence`), and it is read only while the
/// instance's lease holds, so a dead instance's list is never shown.
const PRESENCE_KEPT: Duration = Duration::from_secs(30);

const COMMON: &str = include_str!("lua/common.lua");

/// Every operation the metrics name.
const OPS: [&str; 15] = [
    "claim",
    "offer",
    "relay",
    "resume",
    "token",
    "publish",
    "release",
    "heartbeat",
    "probe",
    "reconcile",
    "prune",
    "reap",
    "leave",
    "subscribe",
    "presence",
];

struct Scripts {
    claim: Script,
    offer: Script,
    relay: Script,
    resume: Script,
    release: Script,
    token: Script,
    heartbeat: Script,
    reap: Script,
    prune: Script,
    presence: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{COMMON}\n{body}"));
        Scripts {
            claim: script(include_str!("lua/claim.lua")),
            offer: script(include_str!("lua/offer.lua")),
            relay: script(include_str!("lua/relay.lua")),
            resume: script(include_str!("lua/resume.lua")),
            release: script(include_str!("lua/release.lua")),
            token: script(include_str!("lua/token.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            reap: script(include_str!("lua/reap.lua")),
            prune: script(include_str!("lua/prune.lua")),
            presence: script(include_str!("lua/presence.lua")),
        }
    }
}

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
    client: redis::Client,
    redis: ConnectionManager,
    scripts: Scripts,
    local: Mutex<Local>,
    heartbeat: Duration,
    lease: Duration,
    timeout: Duration,
    metrics: Backplane,
    /// The round-trip histogram and error counter of each operation, looked up once: the
    /// label lookup would otherwise cost a hash and a lock on every relayed message.
    ops: HashMap<&'static str, (prometheus::Histogram, prometheus::IntCounter)>,
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

#[derive(Default)]
struct Local {
    members: HashMap<Arc<str>, Member>,
    /// Calls changed here while Redis was away; written back when it returns.
    dirty: bool,
}

struct Member {
    sid: u64,
    outbox: Outbox,
    call: Option<Call>,
    /// The version of the Redis record this copy reflects (see `lua/common.lua`).
    ver: u64,
    /// `Some` while the claim is in flight: frames that arrive before the login reply wait
    /// here, so the reply is always the first thing the client reads.
    held: Option<Vec<String>>,
    /// Another instance holds the name now; the session is told to end.
    evicted: bool,
    /// In grace: its queue holds messages until the user comes back. Messages sent straight
    /// from a copy (see [`Inner::direct`]) go through Redis instead, which knows whether the
    /// user came back on another instance meanwhile.
    away: bool,
}

#[derive(Debug, Clone)]
struct Call {
    with: Arc<str>,
    state: CallState,
    /// The partner's instance, `None` when it is this one, and its session there.
    at: Option<Arc<str>>,
    sid: u64,
}

impl Member {
    /// Takes a change from Redis (a script's reply or a message) if it is newer than what
    /// this copy has. Returns whether it was.
    fn update(&mut self, ver: u64, call: Option<Call>) -> bool {
        if ver <= self.ver {
            return false;
        }
        self.ver = ver;
        self.call = call;
        true
    }

    /// The partner this copy names, if it is `with` (a request to resume names nobody yet).
    fn partner_is(&self, with: &str) -> bool {
        self.call
            .as_ref()
            .is_some_and(|call| *call.with == *with && call.state != CallState::Resuming)
    }
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
        let url = config
            .redis_url
            .as_ref()
            .context("no Redis URL: set [cluster] redis_url or REDIS_URL")?;
        let mut info = url
            .as_str()
            .into_connection_info()
            .with_context(|| format!("the Redis URL {url:?} cannot be used"))?;
        if config.tls_insecure
            && let ConnectionAddr::TcpTls {
                host,
                port,
                tls_params,
                ..
            } = info.addr().clone()
        {
            info = info.set_addr(ConnectionAddr::TcpTls {
                host,
                port,
                insecure: true,
                tls_params,
            });
        }
        // Every relayed message is a small write: Nagle's algorithm (on by default in
        // redis-rs) would hold each one back until the previous write is acknowledged.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let info = info.set_tcp_settings(tcp);
        let client = redis::Client::open(info).context("cannot set up the Redis client")?;
        let timeout = config.timeout();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            // Each command is under `timeout` already (Inner::run); one timer is enough.
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1))
            .set_concurrency_limit(MAX_IN_FLIGHT);
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .context("cannot set up the Redis connection")?;
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
                ops: OPS
                    .iter()
                    .map(|&op| {
                        let round_trips = backplane.round_trips.with_label_values(&[op]);
                        (op, (round_trips, backplane.errors.with_label_values(&[op])))
                    })
                    .collect(),
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
            "cluster mode: Redis at {}, keys under {:?}",
            url.redacted(),
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
        // Wait for the first heartbeat with a live subscription, a few heartbeats at most.
        let ready = async {
            while !inner.is_up() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let patience = 3 * (timeout + inner.heartbeat);
        if tokio::time::timeout(patience, ready).await.is_err() {
            error!(
                "the backplane (Redis at {}) is unavailable ({}): logins are refused until \
                 it answers; check redis_url / REDIS_URL, the password, and for rediss:// \
                 tls_insecure",
                url.redacted(),
                lock(&inner.last_error)
            );
        }
        Ok(cluster)
    }

    pub fn connect(&self, outbox: Outbox) -> Connection {
        Connection {
            cluster: self.clone(),
            outbox,
            sid: self.inner.next_sid.fetch_add(1, Ordering::Relaxed),
            name: None,
            pending: Arc::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.inner.is_up()
    }

    pub fn users(&self) -> usize {
        let local = self.inner.lock();
        local.members.values().filter(|m| m.held.is_none()).count()
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

    /// The presence list of the whole cluster: this instance's users, and the lists the
    /// others stored (each at most `limit` names; read and written in one script). A user
    /// who just moved between instances is listed once.
    ///
    /// An instance's list is its total, then one line per user: `1` (busy) or `0`, and the
    /// name. Names have no control characters, so lines cannot break inside one.
    pub async fn online(&self, limit: usize) -> Option<super::Online> {
        // Copied under the lock, sorted outside it.
        let users: Vec<(Arc<str>, bool)> = {
            let local = self.inner.lock();
            local
                .members
                .iter()
                .filter(|(_, m)| m.held.is_none() && !m.evicted)
                .map(|(name, m)| (name.clone(), m.call.is_some()))
                .collect()
        };
        let mine = (users.len(), first_by_key(users, limit));
        let mut list = mine.0.to_string();
        for (name, busy) in &mine.1 {
            list.push('\n');
            list.push(if *busy { '1' } else { '0' });
            list.push_str(name);
        }
        if !self.inner.is_up() {
            return None;
        }
        let inner = &self.inner;
        let others: Vec<String> = inner
            .run(
                "presence",
                inner
                    .invoke(&inner.scripts.presence)
                    .arg((inner.lease + PRESENCE_KEPT).as_millis() as u64)
                    .arg(&list),
            )
            .await
            .ok()?;
        let (mut total, mut users) = mine;
        for other in &others {
            let mut lines = other.lines();
            total += lines.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            users.extend(lines.filter_map(|line| {
                let name = line.get(1..).filter(|name| !name.is_empty())?;
                Some((Arc::from(name), line.starts_with('1')))
            }));
        }
        // A user who just moved between instances may be in two lists: listed once, and
        // busy if either list says so.
        let mut keyed: Vec<(String, Arc<str>, bool)> = users
            .into_iter()
            .map(|(name, busy)| (name_key(&name).into_owned(), name, busy))
            .collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)));
        let before = keyed.len();
        keyed.dedup_by(|later, first| later.0 == first.0);
        total = total.saturating_sub(before - keyed.len());
        keyed.truncate(limit);
        Some(super::Online {
            users: keyed
                .into_iter()
                .map(|(_, name, busy)| (name, busy))
                .collect(),
            total,
        })
    }

    /// Queues `frame` for every user of this instance who can read it now.
    pub fn broadcast(&self, frame: &Message) {
        let local = self.inner.lock();
        let readers = local
            .members
            .values()
            .filter(|m| m.held.is_none() && !m.evicted && !m.away);
        for member in readers {
            member.outbox.deliver(frame.clone());
        }
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

/// The call a side has after a relayed message of `kind` between it and `with` (at `at`,
/// session `sid`): active after an answer, none after a decline or close.
fn after(kind: Relay, with: &str, at: Option<Arc<str>>, sid: u64) -> Option<Call> {
    (kind == Relay::Answer).then(|| Call {
        with: Arc::from(with),
        state: CallState::Active,
        at,
        sid,
    })
}

/// The first `limit` users by [`name_key`], in that order.
fn first_by_key(users: Vec<(Arc<str>, bool)>, limit: usize) -> Vec<(Arc<str>, bool)> {
    let mut keyed: Vec<(String, (Arc<str>, bool))> = users
        .into_iter()
        .map(|user| (name_key(&user.0).into_owned(), user))
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    keyed.truncate(limit);
    keyed.into_iter().map(|(_, user)| user).collect()
}

fn number(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Local> {
        lock(&self.local)
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A call of `script` with the two arguments every script starts with.
    fn invoke<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.prefix).arg(&self.id);
        invocation
    }

    /// One script call under the timeout, measured. A failure marks the backplane down.
    async fn run<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &mut ScriptInvocation<'_>,
    ) -> Result<T, Down> {
        let mut redis = self.redis.clone();
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut redis)).await;
        self.measured(op, started, outcome)
    }

    fn measured<T>(
        &self,
        op: &'static str,
        started: Instant,
        outcome: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, Down> {
        let metrics = self.ops.get(op);
        match outcome {
            Ok(Ok(value)) => {
                if let Some((round_trips, _)) = metrics {
                    round_trips.observe(started.elapsed().as_secs_f64());
                }
                Ok(value)
            }
            Ok(Err(err)) => {
                self.failed(op);
                self.lost(&format!("{op}: {err}"));
                Err(Down)
            }
            Err(_) => {
                self.failed(op);
                self.lost(&format!("{op}: no reply within {:?}", self.timeout));
                Err(Down)
            }
        }
    }

    fn failed(&self, op: &'static str) {
        if let Some((_, errors)) = self.ops.get(op) {
            errors.inc();
        }
    }

    fn lost(&self, why: &str) {
        why.clone_into(&mut lock(&self.last_error));
        if self.up.swap(false, Ordering::Relaxed) {
            self.metrics.up.set(0);
            warn!(
                instance = %self.id,
                "backplane lost ({why}): logins and new calls are refused until Redis answers; \
                 calls between users of this instance go on"
            );
        } else {
            debug!("backplane still down: {why}");
        }
    }

    /// Claims names (with the call each is in, for a re-claim). Returns the names another
    /// live instance holds.
    async fn claim(
        &self,
        names: &[(Arc<str>, u64, Option<Call>, u64)],
        overwrite_calls: bool,
        token: &str,
    ) -> Result<Vec<String>, Down> {
        let mut invocation = self.invoke(&self.scripts.claim);
        invocation
            .arg(self.lease.as_millis() as u64)
            .arg(if overwrite_calls { "1" } else { "0" })
            .arg(self.hold_ms)
            .arg(token);
        for (name, sid, call, ver) in names {
            let (peer, state) = match call {
                Some(call) => (&*call.with, state_name(call.state)),
                None => ("", ""),
            };
            invocation
                .arg(&**name)
                .arg(&*name_key(name))
                .arg(sid)
                .arg(peer)
                .arg(state)
                .arg(ver);
        }
        self.run("claim", &mut invocation).await
    }

    async fn release(&self, name: &str, sid: u64) {
        if !self.is_up() {
            // Nothing is sent to a Redis that is away; the heartbeat frees the name once it
            // is back (no socket here holds it).
            return;
        }
        let released: Result<i64, Down> = self
            .run(
                "release",
                self.invoke(&self.scripts.release).arg(name).arg(sid),
            )
            .await;
        if released.is_err() {
            // The heartbeat notices the name Redis still holds for us, and frees it.
            debug!(user = name, "release deferred: the backplane is down");
        }
    }

    /// After a script made `me` (session `my_sid`, here) and `partner` partners: sets this
    /// instance's copies to what the script returned (`mine`, when my side changed, and
    /// `theirs`, when the partner is here too: version and state each), then delivers
    /// `frame` to a partner here, or counts it as published (the script sent it).
    fn partnered(
        &self,
        me: &Arc<str>,
        my_sid: u64,
        mine: Option<(u64, CallState)>,
        partner: &Partner<'_>,
        theirs: (u64, CallState),
        frame: String,
    ) {
        let here = partner.instance == self.id;
        let mut local = self.lock();
        if let Some((ver, state)) = mine
            && let Some(member) = local.members.get_mut(me)
        {
            member.update(
                ver,
                Some(Call {
                    with: Arc::from(partner.name),
                    state,
                    at: (!here).then(|| Arc::from(partner.instance)),
                    sid: partner.sid,
                }),
            );
        }
        if !here {
            self.metrics.published.inc();
            return;
        }
        if let Some(member) = local.members.get_mut(partner.name)
            && member.sid == partner.sid
        {
            let (ver, state) = theirs;
            member.update(
                ver,
                Some(Call {
                    with: me.clone(),
                    state,
                    at: None,
                    sid: my_sid,
                }),
            );
        }
        Inner::deliver_local(&mut local, partner.name, partner.sid, frame);
    }

    /// Delivers to a socket of this instance, if it is still the session the record named.
    fn deliver_local(local: &mut Local, to: &str, sid: u64, frame: String) {
        if let Some(member) = local.members.get_mut(to)
            && member.sid == sid
        {
            push(member, frame);
        }
    }

    /// What arrived on this instance's channel: one envelope, or a batch of them.
    fn receive(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let Some(mut rest) = text.strip_prefix("batch\n") else {
            return self.receive_one(text);
        };
        while let Some((len, after)) = rest.split_once('\n') {
            let Some(envelope) = len.parse::<usize>().ok().and_then(|len| after.get(..len)) else {
                return;
            };
            self.receive_one(envelope);
            rest = &after[envelope.len()..];
        }
    }

    /// One envelope from another instance (see `lua/common.lua` for its fields).
    fn receive_one(&self, text: &str) {
        let mut parts = text.splitn(8, '\n');
        let mut field = || parts.next().unwrap_or_default();
        let (kind, to, sid, from, from_at, from_sid, ver, frame) = (
            field(),
            field(),
            number(field()),
            field(),
            field(),
            number(field()),
            number(field()),
            field(),
        );
        if kind == "probe" {
            self.probes_heard.fetch_max(sid, Ordering::Relaxed);
            return;
        }
        self.metrics.received.inc();
        let mut local = self.lock();
        let Some(member) = local.members.get_mut(to).filter(|m| m.sid == sid) else {
            return;
        };
        let from_at = Some(Arc::from(from_at));
        let frame = match kind {
            // Sent straight from the sender's instance (see `Inner::direct`), checked there
            // against its copy of the call: this side checks against its own too, so only
            // partners reach each other. (Everything else comes from a script, which checked
            // in Redis.)
            "direct-offer" | "direct-candidate" => {
                if !member.partner_is(from) {
                    return;
                }
                frame.to_owned()
            }
            "candidate" | "media" => frame.to_owned(),
            "offer" => {
                member.update(
                    ver,
                    Some(Call {
                        with: Arc::from(from),
                        state: CallState::Ringing,
                        at: from_at,
                        sid: from_sid,
                    }),
                );
                frame.to_owned()
            }
            "gone" => {
                if !member.update(ver, None) {
                    return;
                }
                super::disconnected(from)
            }
            "taken" => {
                // A login elsewhere presented this user's token: the socket here (live or
                // in grace) goes without a word to anyone; the record is not ours to free.
                member.evicted = true;
                member.outbox.evict();
                return;
            }
            "moved" => {
                // The partner now lives on `from_at`: reach them there.
                if let Some(call) = member.call.clone().filter(|c| *c.with == *from) {
                    member.update(
                        ver,
                        Some(Call {
                            at: from_at,
                            sid: from_sid,
                            ..call
                        }),
                    );
                }
                return;
            }
            "hold" => {
                // The partner's instance went: wait for them to resume (no word to the page;
                // the heartbeat ends the wait).
                member.update(
                    ver,
                    Some(Call {
                        with: Arc::from(from),
                        state: CallState::Resuming,
                        at: None,
                        sid: 0,
                    }),
                );
                return;
            }
            "resume" => {
                member.update(
                    ver,
                    Some(Call {
                        with: Arc::from(from),
                        state: CallState::Active,
                        at: from_at,
                        sid: from_sid,
                    }),
                );
                frame.to_owned()
            }
            other => {
                let kind = match other {
                    "answer" => Relay::Answer,
                    "decline" => Relay::Decline,
                    "close" => Relay::Close,
                    _ => return,
                };
                member.update(ver, after(kind, from, from_at, from_sid));
                frame.to_owned()
            }
        };
        push(member, frame);
    }

    /// Reads this instance's channel for as long as the engine runs, resubscribing when the
    /// connection ends or the heartbeat finds it deaf.
    async fn listen(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.subscribe().await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    // Probes sent before now could not be heard: count from here.
                    self.probes_heard
                        .store(self.probes_sent.load(Ordering::Relaxed), Ordering::Relaxed);
                    self.subscribed.store(true, Ordering::Relaxed);
                    debug!(channel = %self.channel, "subscribed");
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => self.receive(message.get_payload_bytes()),
                                None => break,
                            },
                            () = self.resubscribe.notified() => break,
                        }
                    }
                    self.subscribed.store(false, Ordering::Relaxed);
                    self.lost("the subscription ended");
                }
                Err(err) => {
                    self.failed("subscribe");
                    self.lost(&format!("subscribe: {err}"));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn subscribe(&self) -> anyhow::Result<redis::aio::PubSub> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        Ok(tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| anyhow::anyhow!("no reply within {:?}", self.timeout))??)
    }

    /// The heartbeat: lease, probe, vanished partners, re-claim, reaping. Runs every
    /// `heartbeat` until the engine leaves.
    async fn beat(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // No reaping right after this instance itself was cut off: the others' leases may
        // have lapsed for the same reason, and they renew them within a lease.
        let mut reap_after = Instant::now();
        loop {
            ticks.tick().await;
            let was_up = self.is_up();
            let Ok(healthy) = self.beat_once().await else {
                continue;
            };
            if !healthy {
                self.lost("this instance's channel is not heard");
            } else if !was_up {
                reap_after = Instant::now() + self.lease;
                self.up.store(true, Ordering::Relaxed);
                self.metrics.up.set(1);
                info!(instance = %self.id, "backplane up: Redis answers and this instance's channel is heard");
            }
            if healthy && Instant::now() >= reap_after {
                self.reap().await;
            }
        }
    }

    /// One heartbeat. `Ok(true)` when the backplane is usable.
    async fn beat_once(&self) -> Result<bool, Down> {
        let reply: Vec<String> = self
            .run(
                "heartbeat",
                self.invoke(&self.scripts.heartbeat)
                    .arg(self.lease.as_millis() as u64),
            )
            .await?;
        let had_lease = reply.first().is_some_and(|v| v == "1");
        let held: usize = reply.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        {
            let mut local = self.lock();
            for ended in reply.get(2..).unwrap_or_default().chunks_exact(3) {
                let (name, peer, ver) = (&ended[0], &ended[1], number(&ended[2]));
                if let Some(member) = local.members.get_mut(name.as_str())
                    && member
                        .call
                        .as_ref()
                        .is_some_and(|call| *call.with == **peer)
                    && member.update(ver, None)
                {
                    push(member, super::disconnected(peer));
                }
            }
        }
        let heard = self.probe().await?;
        let (claimed, dirty) = {
            let local = self.lock();
            let claimed = local.members.values().filter(|m| m.held.is_none()).count();
            (claimed, local.dirty)
        };
        if !had_lease || held != claimed || dirty || self.reclaim.swap(false, Ordering::Relaxed) {
            if !had_lease && claimed > 0 {
                info!(instance = %self.id, "Redis had no lease for this instance: re-claiming its {claimed} user(s)");
            }
            self.reconcile().await?;
        }
        Ok(heard)
    }

    /// Publishes a probe on this instance's own channel. Returns whether the subscription is
    /// alive: Redis counts a subscriber, and the last probes came back.
    async fn probe(&self) -> Result<bool, Down> {
        let seq = self.probes_sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut redis = self.redis.clone();
        let started = Instant::now();
        let mut publish = redis::cmd("PUBLISH");
        publish
            .arg(&self.channel)
            .arg(format!("probe\n\n{seq}\n\n"));
        let publish = publish.query_async::<i64>(&mut redis);
        let receivers = self.measured(
            "probe",
            started,
            tokio::time::timeout(self.timeout, publish).await,
        )?;
        let heard = self.probes_heard.load(Ordering::Relaxed);
        let subscribed = self.subscribed.load(Ordering::Relaxed);
        if subscribed && (receivers == 0 || heard + 2 < seq) {
            warn!(
                channel = %self.channel,
                "the subscription is deaf (Redis counts {receivers} subscriber(s), probe {heard} \
                 of {seq} heard): subscribing again"
            );
            self.resubscribe.notify_one();
            return Ok(false);
        }
        Ok(subscribed)
    }

    /// Makes Redis agree with this instance's sockets: claims the names it lost (a restart,
    /// a lapsed lease), frees the names it holds for sockets that are gone, and ends the
    /// sessions whose name another instance took meanwhile.
    async fn reconcile(&self) -> Result<(), Down> {
        let (claimed, below, overwrite) = {
            let mut local = self.lock();
            let overwrite = std::mem::take(&mut local.dirty);
            let claimed: Vec<_> = local
                .members
                .iter()
                .filter(|(_, m)| m.held.is_none() && !m.evicted)
                .map(|(name, m)| (name.clone(), m.sid, m.call.clone(), m.ver))
                .collect();
            (claimed, self.next_sid.load(Ordering::Relaxed), overwrite)
        };
        for batch in claimed.chunks(RECLAIM_BATCH) {
            let refused = match self.claim(batch, overwrite, "").await {
                Ok(refused) => refused,
                Err(Down) => {
                    self.lock().dirty |= overwrite;
                    return Err(Down);
                }
            };
            let mut local = self.lock();
            for name in refused {
                let sid = batch
                    .iter()
                    .find(|(n, ..)| **n == *name)
                    .map(|(_, sid, ..)| *sid);
                if let Some(member) = local.members.get_mut(name.as_str())
                    && Some(member.sid) == sid
                {
                    warn!(user = %name, "another instance took this name while Redis was away: closing the socket");
                    member.evicted = true;
                    member.outbox.evict();
                }
            }
        }
        let mut redis = self.redis.clone();
        let started = Instant::now();
        let mut members = redis::cmd("SMEMBERS");
        members.arg(format!("{}inst:{}:users", self.prefix, self.id));
        let members = members.query_async::<Vec<String>>(&mut redis);
        let held = self.measured(
            "reconcile",
            started,
            tokio::time::timeout(self.timeout, members).await,
        )?;
        let stale: Vec<String> = {
            let local = self.lock();
            held.into_iter()
                .filter(|name| !local.members.contains_key(name.as_str()))
                .collect()
        };
        if !stale.is_empty() {
            let mut invocation = self.invoke(&self.scripts.prune);
            invocation.arg(below).arg(&stale);
            let freed: i64 = self.run("prune", &mut invocation).await?;
            debug!("freed {freed} name(s) left behind by releases that failed");
        }
        Ok(())
    }

    async fn reap(&self) {
        let reply: Result<Vec<i64>, Down> = self
            .run(
                "reap",
                self.invoke(&self.scripts.reap)
                    .arg("reap")
                    .arg(self.hold_ms),
            )
            .await;
        if let Ok([reaped, live]) = reply
            .as_deref()
            .map(|r| <[i64; 2]>::try_from(r).unwrap_or([0, 0]))
        {
            self.metrics.instances.set(live);
            if reaped > 0 {
                info!(
                    instance = %self.id,
                    "{reaped} instance(s) stopped renewing their lease: their users are logged \
                     out and their partners told"
                );
            }
        }
    }

    /// Relays an answer, decline or close between two sockets of this instance while Redis is
    /// away. Only the partner the local copies agree on can be reached; the change is written
    /// to Redis when it is back.
    fn fallback(
        &self,
        me: &str,
        sid: u64,
        kind: Relay,
        to: Option<&str>,
        frame: String,
    ) -> Result<Arc<str>, RelayError> {
        let mut local = self.lock();
        let call = local
            .members
            .get(me)
            .filter(|m| m.sid == sid)
            .and_then(|m| m.call.clone())
            .filter(|call| call.state != CallState::Resuming)
            .filter(|call| call.at.is_none() && to.is_none_or(|to| same_name(&call.with, to)))
            .ok_or(RelayError::Unavailable)?;
        let partner = local
            .members
            .get_mut(&call.with)
            .filter(|p| p.sid == call.sid && p.partner_is(me))
            .ok_or(RelayError::Unavailable)?;
        push(partner, frame);
        if !kind.changes_call() {
            return Ok(call.with);
        }
        let ver = partner.ver + 1;
        partner.update(ver, after(kind, me, None, sid));
        if let Some(mine) = local.members.get_mut(me) {
            let ver = mine.ver + 1;
            mine.update(ver, after(kind, &call.with, None, call.sid));
        }
        local.dirty = true;
        Ok(call.with)
    }

    /// Sends a message that changes nothing in Redis (a candidate, a renegotiating offer)
    /// straight to the partner this instance's copy names: into its queue when it is here,
    /// else one PUBLISH to its instance, which checks the partnership against its own copy.
    /// `Err(frame)` when the copy names no such partner: the caller asks Redis.
    async fn direct(
        &self,
        me: &str,
        sid: u64,
        pending: &Arc<Pending>,
        kind: &str,
        to: Option<&str>,
        frame: String,
    ) -> Result<Result<Arc<str>, RelayError>, String> {
        let (with, instance, their_sid) = {
            let mut local = self.lock();
            let Some(call) = local
                .members
                .get(me)
                .filter(|m| m.sid == sid)
                .and_then(|m| m.call.as_ref())
                .filter(|call| call.state != CallState::Resuming)
                .filter(|call| to.is_none_or(|to| same_name(&call.with, to)))
                .map(|call| (call.with.clone(), call.at.clone(), call.sid))
            else {
                return Err(frame);
            };
            match call {
                (with, None, their_sid) => {
                    let Some(partner) = local
                        .members
                        .get_mut(&with)
                        .filter(|p| p.sid == their_sid && p.partner_is(me) && !p.away)
                    else {
                        return Err(frame);
                    };
                    push(partner, frame);
                    return Ok(Ok(with));
                }
                (with, Some(instance), their_sid) => (with, instance, their_sid),
            }
        };
        if !self.is_up() {
            return Ok(Err(RelayError::Unavailable));
        }
        let envelope = format!(
            "{kind}\n{with}\n{their_sid}\n{me}\n{}\n{sid}\n0\n{frame}",
            self.id
        );
        pending.count.fetch_add(1, Ordering::Relaxed);
        let outgoing = Outgoing {
            instance,
            envelope,
            pending: pending.clone(),
        };
        match tokio::time::timeout(self.timeout, self.outgoing.send(outgoing)).await {
            Ok(Ok(())) => {
                self.metrics.published.inc();
                Ok(Ok(with))
            }
            _ => {
                pending.settle(1);
                Ok(Err(RelayError::Unavailable))
            }
        }
    }

    /// Sends the queued messages, many per round trip: all those waiting go in one
    /// pipeline, with one PUBLISH per instance carrying every message for it.
    async fn publish(self: Arc<Self>, mut queue: mpsc::Receiver<Outgoing>) {
        let mut batch = Vec::new();
        while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            let mut per_instance: Vec<(Arc<str>, Vec<String>)> = Vec::new();
            for outgoing in &mut batch {
                let envelope = std::mem::take(&mut outgoing.envelope);
                match per_instance
                    .iter_mut()
                    .find(|(instance, _)| *instance == outgoing.instance)
                {
                    Some((_, envelopes)) => envelopes.push(envelope),
                    None => per_instance.push((outgoing.instance.clone(), vec![envelope])),
                }
            }
            let mut pipeline = redis::pipe();
            for (instance, envelopes) in &per_instance {
                let channel = format!("{}ch:{instance}", self.prefix);
                pipeline
                    .cmd("PUBLISH")
                    .arg(channel)
                    .arg(batched(envelopes))
                    .ignore();
            }
            let mut redis = self.redis.clone();
            let started = Instant::now();
            let sent = pipeline.query_async::<()>(&mut redis);
            // A failure marks the backplane down; the messages are lost, as pub/sub may lose
            // them anyway (the heartbeat ends calls whose partner vanished).
            let _ = self.measured(
                "publish",
                started,
                tokio::time::timeout(self.timeout, sent).await,
            );
            for outgoing in batch.drain(..) {
                outgoing.pending.settle(1);
            }
        }
    }
}

/// One PUBLISH payload: a single envelope as it is, several as `batch` and then each
/// envelope after its length in bytes (an envelope's frame may hold newlines).
fn batched(envelopes: &[String]) -> String {
    if let [one] = envelopes {
        return one.clone();
    }
    let mut payload = String::from("batch\n");
    for envelope in envelopes {
        payload.push_str(&envelope.len().to_string());
        payload.push('\n');
        payload.push_str(envelope);
    }
    payload
}

/// A message on its way to another instance's channel.
struct Outgoing {
    instance: Arc<str>,
    envelope: String,
    pending: Arc<Pending>,
}

/// The other side of a call as a script's reply names it: its name, instance and session.
struct Partner<'a> {
    name: &'a str,
    instance: &'a str,
    sid: u64,
}

/// One socket's messages still in the publish queue. A script the socket runs next waits
/// for them to be sent first: they share one connection to Redis, so Redis then sees them
/// in the order the client sent them.
#[derive(Default)]
struct Pending {
    count: AtomicU64,
    sent: Notify,
}

impl Pending {
    fn settle(&self, n: u64) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.sent.notify_waiters();
        }
    }

    /// Waits until nothing of this socket's is queued, at most `limit`.
    async fn drained(&self, limit: Duration) -> Result<(), RelayError> {
        let deadline = Instant::now() + limit;
        loop {
            let sent = self.sent.notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            tokio::time::timeout_at(deadline, sent)
                .await
                .map_err(|_| RelayError::Unavailable)?;
        }
    }
}

fn push(member: &mut Member, frame: String) {
    match &mut member.held {
        Some(held) => held.push(frame),
        None => {
            member.outbox.deliver(Message::text(frame));
        }
    }
}

fn state_name(state: CallState) -> &'static str {
    match state {
        CallState::Calling => "calling",
        CallState::Ringing => "ringing",
        CallState::Active => "active",
        CallState::Resuming => "resuming",
    }
}

/// One socket's membership, through Redis.
pub struct Connection {
    cluster: Cluster,
    outbox: Outbox,
    sid: u64,
    name: Option<Arc<str>>,
    pending: Arc<Pending>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("sid", &self.sid)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn evicted(&self) -> bool {
        let Some(name) = &self.name else { return false };
        let local = self.cluster.inner.lock();
        local
            .members
            .get(name)
            .is_none_or(|m| m.sid != self.sid || m.evicted)
    }

    pub async fn login(
        &mut self,
        name: &str,
        tokens: Tokens<'_>,
        welcome: impl FnOnce(&LoggedIn) -> String,
    ) -> Result<LoggedIn, LoginFailure> {
        if self.name.is_some() {
            return Err(LoginFailure::AlreadyLoggedIn);
        }
        let inner = &self.cluster.inner;
        if !inner.is_up() {
            return Err(LoginFailure::Unavailable);
        }
        let name: Arc<str> = Arc::from(name);
        {
            let mut local = inner.lock();
            if local.members.contains_key(&name) {
                return Err(LoginFailure::NameTaken);
            }
            local.members.insert(
                name.clone(),
                Member {
                    sid: self.sid,
                    outbox: self.outbox.clone(),
                    call: None,
                    ver: 0,
                    held: Some(Vec::new()),
                    evicted: false,
                    away: false,
                },
            );
        }
        if let Some(presented) = tokens.presented {
            match self.take_over(&name, presented, tokens.new).await {
                Ok(Some(taken)) => {
                    let mut local = inner.lock();
                    if let Some(member) = local
                        .members
                        .get_mut(&name)
                        .filter(|member| member.sid == self.sid)
                    {
                        member
                            .outbox
                            .deliver(Message::text(welcome(&LoggedIn::TakenOver(taken.clone()))));
                        for frame in member.held.take().unwrap_or_default() {
                            member.outbox.deliver(Message::text(frame));
                        }
                    }
                    self.name = Some(name);
                    inner.changes.notify_one();
                    return Ok(LoggedIn::TakenOver(taken));
                }
                // Nobody holds the name, or the token is not its current one: an ordinary
                // claim, which then succeeds or says the name is taken.
                Ok(None) => {}
                Err(Down) => {
                    lock(&inner.local).members.remove(&name);
                    return Err(LoginFailure::Unavailable);
                }
            }
        }
        let claimed = inner
            .claim(&[(name.clone(), self.sid, None, 0)], false, tokens.new)
            .await;
        let mut local = inner.lock();
        let ours = local
            .members
            .get_mut(&name)
            .filter(|member| member.sid == self.sid);
        match (claimed, ours) {
            (Ok(refused), Some(member)) if refused.is_empty() => {
                member
                    .outbox
                    .deliver(Message::text(welcome(&LoggedIn::Fresh)));
                for frame in member.held.take().unwrap_or_default() {
                    member.outbox.deliver(Message::text(frame));
                }
                self.name = Some(name);
                inner.changes.notify_one();
                Ok(LoggedIn::Fresh)
            }
            (claimed, ours) => {
                if ours.is_some() {
                    local.members.remove(&name);
                }
                // A claim that went through but whose reply came too late leaves a record
                // that the heartbeat frees (no socket here holds it).
                match claimed {
                    Ok(_) => Err(LoginFailure::NameTaken),
                    Err(Down) => Err(LoginFailure::Unavailable),
                }
            }
        }
    }

    pub async fn offer(&self, to: &str, frame: String) -> Result<Arc<str>, RelayError> {
        let me = self.name.as_ref().ok_or(RelayError::NotLoggedIn)?;
        if same_name(me, to) {
            return Err(RelayError::SelfCall);
        }
        let inner = &self.cluster.inner;
        // Renegotiating with the current partner changes nothing in Redis.
        let frame = match inner
            .direct(me, self.sid, &self.pending, "direct-offer", Some(to), frame)
            .await
        {
            Ok(sent) => return sent,
            Err(frame) => frame,
        };
        if !inner.is_up() {
            return Err(RelayError::Unavailable);
        }
        self.pending.drained(inner.timeout).await?;
        let reply: Vec<String> = inner
            .run(
                "offer",
                inner
                    .invoke(&inner.scripts.offer)
                    .arg(&**me)
                    .arg(self.sid)
                    .arg(to)
                    .arg(&frame)
                    .arg(&*name_key(to)),
            )
            .await
            .map_err(|Down| RelayError::Unavailable)?;
        match reply.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["ok", instance, their_sid, new, my_ver, their_ver, to] => {
                // A renegotiation ('0') leaves my copy as it is.
                let mine = (new == "1").then(|| (number(my_ver), CallState::Calling));
                let theirs = (number(their_ver), CallState::Ringing);
                let partner = Partner {
                    name: to,
                    instance,
                    sid: number(their_sid),
                };
                inner.partnered(me, self.sid, mine, &partner, theirs, frame);
                Ok(Arc::from(to))
            }
            ["unknown"] => Err(RelayError::UnknownUser(to.to_owned())),
            ["busy", callee] => Err(RelayError::Busy(Arc::from(callee))),
            ["in-call", with] => Err(RelayError::AlreadyInCall(Arc::from(with))),
            _ => {
                // "stale": Redis lost this session's record; the heartbeat re-claims it.
                inner.reclaim.store(true, Ordering::Relaxed);
                Err(RelayError::Unavailable)
            }
        }
    }

    pub async fn relay(
        &self,
        kind: Relay,
        to: Option<&str>,
        frame: String,
    ) -> Result<Arc<str>, RelayError> {
        let me = self.name.as_ref().ok_or(RelayError::NotLoggedIn)?;
        let inner = &self.cluster.inner;
        let frame = if !kind.changes_call() {
            match inner
                .direct(me, self.sid, &self.pending, "direct-candidate", to, frame)
                .await
            {
                Ok(sent) => return sent,
                Err(frame) => frame,
            }
        } else {
            frame
        };
        if !inner.is_up() {
            return inner.fallback(me, self.sid, kind, to, frame);
        }
        self.pending.drained(inner.timeout).await?;
        let reply: Vec<String> = match inner
            .run(
                "relay",
                inner
                    .invoke(&inner.scripts.relay)
                    .arg(&**me)
                    .arg(self.sid)
                    .arg(kind.as_str())
                    .arg(to.unwrap_or(""))
                    .arg(&frame)
                    .arg(&*name_key(to.unwrap_or(""))),
            )
            .await
        {
            Ok(reply) => reply,
            Err(Down) => return inner.fallback(me, self.sid, kind, to, frame),
        };
        let refusal = || match to {
            None => RelayError::NoCall,
            Some(to) => RelayError::NotInCallWith(to.to_owned()),
        };
        match reply.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["ok", partner, instance, their_sid, my_ver, their_ver] => {
                let partner: Arc<str> = Arc::from(partner);
                let here = instance == inner.id;
                let their_sid = number(their_sid);
                let mut local = inner.lock();
                if let Some(mine) = local.members.get_mut(me)
                    && kind.changes_call()
                {
                    let at = (!here).then(|| Arc::from(instance));
                    mine.update(number(my_ver), after(kind, &partner, at, their_sid));
                }
                if here {
                    if let Some(theirs) = local.members.get_mut(&partner)
                        && theirs.sid == their_sid
                        && kind.changes_call()
                    {
                        theirs.update(number(their_ver), after(kind, me, None, self.sid));
                    }
                    Inner::deliver_local(&mut local, &partner, their_sid, frame);
                } else {
                    inner.metrics.published.inc();
                }
                Ok(partner)
            }
            ["gone", partner, my_ver] => {
                // The partner's side ended without word reaching here: say so now.
                let mut local = inner.lock();
                if let Some(mine) = local.members.get_mut(me)
                    && mine.partner_is(partner)
                    && mine.update(number(my_ver), None)
                {
                    push(mine, super::disconnected(partner));
                }
                Err(refusal())
            }
            ["no-call"] | ["not-in-call"] => Err(refusal()),
            _ => {
                inner.reclaim.store(true, Ordering::Relaxed);
                Err(RelayError::Unavailable)
            }
        }
    }
}

impl Connection {
    /// Moves this user to another socket of this instance. Redis is not involved: the record
    /// names the instance and the session, and both stay the same.
    pub fn rebind(
        &mut self,
        outbox: Outbox,
        held: Option<&mut queue::Receiver<Queued>>,
        away: bool,
        welcome: impl FnOnce(Option<&str>) -> Option<Message>,
    ) {
        if let Some(name) = &self.name {
            let mut local = self.cluster.inner.lock();
            if let Some(member) = local
                .members
                .get_mut(name)
                .filter(|member| member.sid == self.sid)
            {
                if let Some(frame) = welcome(member.call.as_ref().map(|call| &*call.with)) {
                    outbox.deliver(frame);
                }
                if let Some(held) = held {
                    outbox.take_from(held);
                }
                member.outbox = outbox.clone();
                member.away = away;
            }
        }
        self.outbox = outbox;
    }

    /// TOKEN 'take' (`lua/token.lua`): moves the session the token belongs to here, with its
    /// call, and sets this copy from it. `Some(partner)` when it did.
    async fn take_over(
        &self,
        name: &Arc<str>,
        presented: &str,
        new: &str,
    ) -> Result<Option<Option<Arc<str>>>, Down> {
        let inner = &self.cluster.inner;
        let reply: Vec<String> = inner
            .run(
                "token",
                inner
                    .invoke(&inner.scripts.token)
                    .arg(&**name)
                    .arg(self.sid)
                    .arg(new)
                    .arg("take")
                    .arg(presented),
            )
            .await?;
        let ["taken", peer, state, peer_inst, peer_sid, my_ver, their_ver] =
            reply.iter().map(String::as_str).collect::<Vec<_>>()[..]
        else {
            return Ok(None);
        };
        let state = match state {
            "calling" => Some(CallState::Calling),
            "ringing" => Some(CallState::Ringing),
            "active" => Some(CallState::Active),
            "resuming" => Some(CallState::Resuming),
            _ => None,
        };
        let here = peer_inst == inner.id;
        let peer_sid = number(peer_sid);
        let mut local = inner.lock();
        let call = match (peer, state) {
            ("", _) | (_, None) => None,
            (peer, Some(state)) => Some(Call {
                with: Arc::from(peer),
                state,
                at: (!here && !peer_inst.is_empty()).then(|| Arc::from(peer_inst)),
                sid: peer_sid,
            }),
        };
        let partner = call.as_ref().map(|call| call.with.clone());
        if let Some(mine) = local.members.get_mut(name) {
            mine.update(number(my_ver), call);
        }
        if here
            && let Some(peer) = &partner
            && let Some(theirs) = local.members.get_mut(peer)
            && theirs.sid == peer_sid
            && let Some(their_call) = theirs.call.clone()
        {
            theirs.update(
                number(their_ver),
                Some(Call {
                    at: None,
                    sid: self.sid,
                    ..their_call
                }),
            );
        }
        info!(user = %name, "took its session over from another instance with its token");
        Ok(Some(partner))
    }

    /// TOKEN 'set': the new token's digest, after a takeover on this instance.
    pub async fn set_token(&self, digest: &str) {
        let (Some(name), inner) = (&self.name, &self.cluster.inner) else {
            return;
        };
        if !inner.is_up() {
            return;
        }
        let _: Result<Vec<String>, Down> = inner
            .run(
                "token",
                inner
                    .invoke(&inner.scripts.token)
                    .arg(&**name)
                    .arg(self.sid)
                    .arg(digest)
                    .arg("set"),
            )
            .await;
    }

    /// One RESUME script (`lua/resume.lua`) in `mode` 'ask' or 'lapse'.
    async fn run_resume(&self, to: &str, frame: &str, mode: &str) -> Result<Vec<String>, Down> {
        let inner = &self.cluster.inner;
        let me = self.name.as_deref().unwrap_or_default();
        inner
            .run(
                "resume",
                inner
                    .invoke(&inner.scripts.resume)
                    .arg(me)
                    .arg(self.sid)
                    .arg(to)
                    .arg(frame)
                    .arg(mode)
                    .arg(&*name_key(to)),
            )
            .await
    }

    pub async fn resume(&self, to: &str, frame: String) -> Result<Resumed, RelayError> {
        let me = self.name.as_ref().ok_or(RelayError::NotLoggedIn)?;
        if same_name(me, to) {
            return Err(RelayError::SelfCall);
        }
        let inner = &self.cluster.inner;
        if !inner.is_up() {
            return Err(RelayError::Unavailable);
        }
        self.pending.drained(inner.timeout).await?;
        let reply = self
            .run_resume(to, &frame, "ask")
            .await
            .map_err(|Down| RelayError::Unavailable)?;
        match reply.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["paired", instance, their_sid, my_ver, their_ver, to] => {
                let mine = Some((number(my_ver), CallState::Active));
                let theirs = (number(their_ver), CallState::Active);
                let partner = Partner {
                    name: to,
                    instance,
                    sid: number(their_sid),
                };
                inner.partnered(me, self.sid, mine, &partner, theirs, frame);
                Ok(Resumed::Paired(Arc::from(to)))
            }
            ["active", with] => Ok(Resumed::Paired(Arc::from(with))),
            ["waiting", my_ver, to] => {
                let mut local = inner.lock();
                if let Some(mine) = local.members.get_mut(me) {
                    // Nobody to reach yet: the copy names the user but no instance.
                    let call = Call {
                        with: Arc::from(to),
                        state: CallState::Resuming,
                        at: None,
                        sid: 0,
                    };
                    mine.update(number(my_ver), Some(call));
                }
                Ok(Resumed::Waiting)
            }
            ["in-call", with] => Err(RelayError::AlreadyInCall(Arc::from(with))),
            _ => {
                inner.reclaim.store(true, Ordering::Relaxed);
                Err(RelayError::Unavailable)
            }
        }
    }

    pub async fn resume_lapsed(&self, to: &str) -> bool {
        let Some(me) = self.name.as_ref() else {
            return false;
        };
        let inner = &self.cluster.inner;
        let pending = |local: &Local| {
            local.members.get(me).is_some_and(|m| {
                m.call
                    .as_ref()
                    .is_some_and(|c| c.state == CallState::Resuming && same_name(&c.with, to))
            })
        };
        if !pending(&inner.lock()) {
            return false;
        }
        let reply = if inner.is_up() {
            self.run_resume(to, "", "lapse").await.ok()
        } else {
            None
        };
        let mut local = inner.lock();
        match reply.as_deref() {
            Some([lapsed, ver]) if lapsed == "lapsed" => {
                if let Some(mine) = local.members.get_mut(me) {
                    mine.update(number(ver), None);
                }
                true
            }
            Some(_) => false,
            // Redis is away: end it in the copy, and write that back when Redis returns.
            None => {
                let lapsed = pending(&local);
                if let Some(mine) = local.members.get_mut(me)
                    && lapsed
                {
                    let ver = mine.ver + 1;
                    mine.update(ver, None);
                    local.dirty = true;
                }
                lapsed
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        let inner = self.cluster.inner.clone();
        {
            let mut local = inner.lock();
            let Some(member) = local.members.remove(&name) else {
                return;
            };
            if member.sid != self.sid {
                // Not ours (cannot happen: names are unique here); put it back.
                local.members.insert(name, member);
                return;
            }
            if member.evicted {
                return;
            }
            if let Some(call) = member.call
                && call.state != CallState::Resuming
                && call.at.is_none()
                && let Some(partner) = local.members.get_mut(&call.with)
                && partner.partner_is(&name)
            {
                // Redis clears the partner's record too (RELEASE), one version on.
                let ver = partner.ver + 1;
                partner.update(ver, None);
                push(partner, super::disconnected(&name));
            }
        }
        inner.changes.notify_one();
        let sid = self.sid;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { inner.release(&name, sid).await });
        }
    }
}
