//! Messages between instances: this instance's channel, read by one task in order, and the
//! publish queue that sends many messages per round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use hyper_tungstenite::tungstenite::Message;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::debug;

use super::super::local::disconnected;
use super::super::{CallState, Relay, RelayError};
use super::Inner;
use super::copy::{Call, after};
use super::envelope::{self, Envelope};

/// Messages waiting to be published, for all sockets together; a sender waits (at most the
/// command timeout) when it is full.
pub(super) const PUBLISH_QUEUE: usize = 4096;
/// Most messages sent in one round trip.
const PUBLISH_BATCH: usize = 256;

impl Inner {
    /// What arrived on this instance's channel: one envelope, or a batch of them.
    pub(super) fn receive(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        for envelope in envelope::unbatch(text) {
            self.receive_one(Envelope::decode(envelope));
        }
    }

    /// One envelope from another instance (see `lua/common.lua` for its fields).
    fn receive_one(&self, envelope: Envelope<'_>) {
        let Envelope {
            kind,
            to,
            sid,
            from,
            from_at,
            from_sid,
            ver,
            frame,
        } = envelope;
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
                disconnected(from)
            }
            "taken" => {
                // A login elsewhere presented this user's token: the socket here (live or
                // in grace) goes without a word to anyone; the record is not ours to free.
                member.seat.evict();
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
        member.seat.push(Message::text(frame));
    }

    /// Reads this instance's channel for as long as the engine runs, resubscribing when the
    /// connection ends or the heartbeat finds it deaf.
    pub(super) async fn listen(self: Arc<Self>) {
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

    pub(super) async fn subscribe(&self) -> anyhow::Result<redis::aio::PubSub> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        Ok(tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| anyhow::anyhow!("no reply within {:?}", self.timeout))??)
    }

    /// Sends the queued messages, many per round trip: all those waiting go in one
    /// pipeline, with one PUBLISH per instance carrying every message for it.
    pub(super) async fn publish(self: Arc<Self>, mut queue: mpsc::Receiver<Outgoing>) {
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
                    .arg(envelope::batch(envelopes))
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

/// A message on its way to another instance's channel.
pub(super) struct Outgoing {
    pub(super) instance: Arc<str>,
    pub(super) envelope: String,
    pub(super) pending: Arc<Pending>,
}

/// One socket's messages still in the publish queue. A script the socket runs next waits
/// for them to be sent first: they share one connection to Redis, so Redis then sees them
/// in the order the client sent them.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) count: AtomicU64,
    pub(super) sent: Notify,
}

impl Pending {
    pub(super) fn settle(&self, n: u64) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.sent.notify_waiters();
        }
    }

    /// Waits until nothing of this socket's is queued, at most `limit`.
    pub(super) async fn drained(&self, limit: Duration) -> Result<(), RelayError> {
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
