//! The Redis transport: the connection, the scripts, and one call of either under the
//! timeout, measured. A failure marks the backplane down (see [`Inner::lost`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, FromRedisValue, IntoConnectionInfo, Script, ScriptInvocation};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::copy::Call;
use super::{Down, Inner};
use crate::config::ClusterConfig;
use crate::metrics::Backplane;
use crate::signaling::protocol::name_key;
use crate::sync::lock;

/// Most commands in flight on the shared connection; beyond it a command fails at once
/// instead of queueing in memory.
const MAX_IN_FLIGHT: usize = 4096;

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

pub(super) struct Scripts {
    pub(super) claim: Script,
    pub(super) offer: Script,
    pub(super) relay: Script,
    pub(super) resume: Script,
    pub(super) release: Script,
    pub(super) token: Script,
    pub(super) heartbeat: Script,
    pub(super) reap: Script,
    pub(super) prune: Script,
    pub(super) presence: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
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

/// The round-trip histogram and error counter of each operation, looked up once: the label
/// lookup would otherwise cost a hash and a lock on every relayed message.
pub(super) type Ops = HashMap<&'static str, (prometheus::Histogram, prometheus::IntCounter)>;

pub(super) fn ops(backplane: &Backplane) -> Ops {
    OPS.iter()
        .map(|&op| {
            let round_trips = backplane.round_trips.with_label_values(&[op]);
            (op, (round_trips, backplane.errors.with_label_values(&[op])))
        })
        .collect()
}

/// The client (for subscriptions) and the shared connection (for everything else) to the
/// Redis `config` names. Nothing is connected yet: the first command connects.
pub(super) fn open(config: &ClusterConfig) -> anyhow::Result<(redis::Client, ConnectionManager)> {
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
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout()))
        // Each command is under the timeout already (Inner::run); one timer is enough.
        .set_response_timeout(None)
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1))
        .set_concurrency_limit(MAX_IN_FLIGHT);
    let redis = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
        .context("cannot set up the Redis connection")?;
    Ok((client, redis))
}

impl Inner {
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A call of `script` with the two arguments every script starts with.
    pub(super) fn invoke<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.prefix).arg(&self.id);
        invocation
    }

    /// One script call under the timeout, measured. A failure marks the backplane down.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &mut ScriptInvocation<'_>,
    ) -> Result<T, Down> {
        let mut redis = self.redis.clone();
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut redis)).await;
        self.measured(op, started, outcome)
    }

    pub(super) fn measured<T>(
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

    pub(super) fn failed(&self, op: &'static str) {
        if let Some((_, errors)) = self.ops.get(op) {
            errors.inc();
        }
    }

    pub(super) fn lost(&self, why: &str) {
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
    pub(super) async fn claim(
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
                Some(call) => (&*call.with, call.state.as_str()),
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

    pub(super) async fn release(&self, name: &str, sid: u64) {
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
}
