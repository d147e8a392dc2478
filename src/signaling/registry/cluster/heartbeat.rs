//! The heartbeat: this instance's lease, the probe that proves its channel is heard, the
//! calls whose other side vanished, the re-claim after Redis lost our records, and the
//! reaping of instances whose lease lapsed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::envelope::Envelope;
use super::{Down, Inner, number};

/// Names re-claimed per script call after Redis lost them.
const RECLAIM_BATCH: usize = 256;

impl Inner {
    /// The heartbeat: lease, probe, vanished partners, re-claim, reaping. Runs every
    /// `heartbeat` until the engine leaves.
    pub(super) async fn beat(self: Arc<Self>) {
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
    pub(super) async fn beat_once(&self) -> Result<bool, Down> {
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
                    member.seat.tell_gone(peer);
                }
            }
        }
        let heard = self.probe().await?;
        let (claimed, dirty) = {
            let local = self.lock();
            let claimed = local
                .members
                .values()
                .filter(|m| !m.seat.is_claiming())
                .count();
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
    pub(super) async fn probe(&self) -> Result<bool, Down> {
        let seq = self.probes_sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut redis = self.redis.clone();
        let started = Instant::now();
        let mut publish = redis::cmd("PUBLISH");
        publish
            .arg(&self.channel)
            .arg(Envelope::probe(seq).encode());
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
    pub(super) async fn reconcile(&self) -> Result<(), Down> {
        let (claimed, below, overwrite) = {
            let mut local = self.lock();
            let overwrite = std::mem::take(&mut local.dirty);
            let claimed: Vec<_> = local
                .members
                .iter()
                .filter(|(_, m)| m.seat.is_present())
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
                    member.seat.evict();
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

    pub(super) async fn reap(&self) {
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
}
