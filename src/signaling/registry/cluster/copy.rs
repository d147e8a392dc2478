//! This instance's copy of its own users' records: what it carries while Redis is away, and
//! what lets candidates and renegotiating offers skip Redis. Each member holds its
//! [`Seat`], through which everything for the user is delivered.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use hyper_tungstenite::tungstenite::Message;

use super::super::local::Seat;
use super::super::{CallState, Relay, RelayError};
use super::envelope::Envelope;
use super::pubsub::{Outgoing, Pending};
use super::{Inner, Partner};
use crate::signaling::protocol::same_name;
use crate::sync::lock;

#[derive(Default)]
pub(super) struct Local {
    pub(super) members: HashMap<Arc<str>, Member>,
    /// Calls changed here while Redis was away; written back when it returns.
    pub(super) dirty: bool,
}

pub(super) struct Member {
    pub(super) sid: u64,
    /// The user's socket. While the claim is in flight it holds frames back, so the login
    /// reply is the first thing the client reads. In grace (away) its queue holds messages
    /// until the user comes back; messages sent straight from a copy (see [`Inner::direct`])
    /// go through Redis instead, which knows whether the user came back on another
    /// instance meanwhile.
    pub(super) seat: Seat,
    pub(super) call: Option<Call>,
    /// The version of the Redis record this copy reflects (see `lua/common.lua`).
    pub(super) ver: u64,
}

#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) with: Arc<str>,
    pub(super) state: CallState,
    /// The partner's instance, `None` when it is this one, and its session there.
    pub(super) at: Option<Arc<str>>,
    pub(super) sid: u64,
}

impl Member {
    /// Takes a change from Redis (a script's reply or a message) if it is newer than what
    /// this copy has. Returns whether it was.
    pub(super) fn update(&mut self, ver: u64, call: Option<Call>) -> bool {
        if ver <= self.ver {
            return false;
        }
        self.ver = ver;
        self.call = call;
        true
    }

    /// The partner this copy names, if it is `with` (a request to resume names nobody yet).
    pub(super) fn partner_is(&self, with: &str) -> bool {
        self.call
            .as_ref()
            .is_some_and(|call| *call.with == *with && call.state != CallState::Resuming)
    }
}

/// The call a side has after a relayed message of `kind` between it and `with` (at `at`,
/// session `sid`): active after an answer, none after a decline or close.
pub(super) fn after(kind: Relay, with: &str, at: Option<Arc<str>>, sid: u64) -> Option<Call> {
    (kind == Relay::Answer).then(|| Call {
        with: Arc::from(with),
        state: CallState::Active,
        at,
        sid,
    })
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, Local> {
        lock(&self.local)
    }

    /// After a script made `me` (session `my_sid`, here) and `partner` partners: sets this
    /// instance's copies to what the script returned (`mine`, when my side changed, and
    /// `theirs`, when the partner is here too: version and state each), then delivers
    /// `frame` to a partner here, or counts it as published (the script sent it).
    pub(super) fn partnered(
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
    pub(super) fn deliver_local(local: &mut Local, to: &str, sid: u64, frame: String) {
        if let Some(member) = local.members.get_mut(to)
            && member.sid == sid
        {
            member.seat.push(Message::text(frame));
        }
    }

    /// Relays an answer, decline or close between two sockets of this instance while Redis is
    /// away. Only the partner the local copies agree on can be reached; the change is written
    /// to Redis when it is back.
    pub(super) fn fallback(
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
        partner.seat.push(Message::text(frame));
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
    pub(super) async fn direct(
        &self,
        me: &str,
        sid: u64,
        pending: &Arc<Pending>,
        kind: &str,
        to: Option<&str>,
        frame: String,
    ) -> Result<Result<Arc<str>, RelayError>, String> {
        let (with, instance, their_sid) =
            {
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
                        let Some(partner) = local.members.get_mut(&with).filter(|p| {
                            p.sid == their_sid && p.partner_is(me) && !p.seat.is_away()
                        }) else {
                            return Err(frame);
                        };
                        partner.seat.push(Message::text(frame));
                        return Ok(Ok(with));
                    }
                    (with, Some(instance), their_sid) => (with, instance, their_sid),
                }
            };
        if !self.is_up() {
            return Ok(Err(RelayError::Unavailable));
        }
        let envelope = Envelope {
            kind,
            to: &with,
            sid: their_sid,
            from: me,
            from_at: &self.id,
            from_sid: sid,
            ver: 0,
            frame: &frame,
        }
        .encode();
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
}
