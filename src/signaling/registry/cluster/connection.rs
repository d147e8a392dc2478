//! One socket's membership, through Redis: the per-socket half of the engine seam.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper_tungstenite::tungstenite::Message;
use tracing::info;

use super::super::local::Seat;
use super::super::{CallState, LoggedIn, Outbox, Queued, Relay, RelayError, Resumed, Sent, Tokens};
use super::copy::{Call, Local, Member, after};
use super::pubsub::Pending;
use super::{Cluster, Down, Partner, number};
use crate::signaling::protocol::{LoginFailure, name_key, same_name};
use crate::signaling::queue;

/// One socket's membership, through Redis.
pub struct Connection {
    cluster: Cluster,
    outbox: Outbox,
    sid: u64,
    name: Option<Arc<str>>,
    pending: Arc<Pending>,
}

impl Connection {
    pub(super) fn new(cluster: Cluster, outbox: Outbox, sid: u64) -> Connection {
        Connection {
            cluster,
            outbox,
            sid,
            name: None,
            pending: Arc::default(),
        }
    }
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
            .is_none_or(|m| m.sid != self.sid || m.seat.is_evicted())
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
        if tokens.take_back_only && tokens.presented.is_none() {
            return Err(LoginFailure::AuthFailed);
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
                    seat: Seat::claiming(self.outbox.clone()),
                    call: None,
                    ver: 0,
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
                        let taken = LoggedIn::TakenOver(taken.clone());
                        member.seat.seated(Message::text(welcome(&taken)));
                    }
                    self.name = Some(name);
                    inner.changes.notify_one();
                    return Ok(LoggedIn::TakenOver(taken));
                }
                // The token was all this login had: without a session to take, no name.
                Ok(None) if tokens.take_back_only => {
                    inner.lock().members.remove(&name);
                    return Err(LoginFailure::AuthFailed);
                }
                // Nobody holds the name, or the token is not its current one: an ordinary
                // claim, which then succeeds or says the name is taken.
                Ok(None) => {}
                Err(Down) => {
                    inner.lock().members.remove(&name);
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
                member.seat.seated(Message::text(welcome(&LoggedIn::Fresh)));
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

    pub async fn offer(&self, to: &str, frame: String) -> Result<Sent, RelayError> {
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
            Ok(sent) => return sent.map(|to| Sent { to, began: false }),
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
                Ok(Sent {
                    to: Arc::from(to),
                    began: new == "1",
                })
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
    ) -> Result<Sent, RelayError> {
        // An answer begins the call when it answers a ringing one, as this copy has it.
        let ringing = self.name.as_ref().is_some_and(|me| {
            let local = self.cluster.inner.lock();
            let call = local.members.get(me).and_then(|m| m.call.as_ref());
            call.is_some_and(|call| call.state == CallState::Ringing)
        });
        let to = self.relay_to(kind, to, frame).await?;
        Ok(Sent {
            to,
            began: kind == Relay::Answer && ringing,
        })
    }

    async fn relay_to(
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
                    super::Inner::deliver_local(&mut local, &partner, their_sid, frame);
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
                    mine.seat.tell_gone(partner);
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
                let welcome = welcome(member.call.as_ref().map(|call| &*call.with));
                member.seat.rebind(outbox.clone(), held, away, welcome);
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
        let state = CallState::parse(state);
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
            if member.seat.is_evicted() {
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
                partner.seat.tell_gone(&name);
            }
        }
        inner.changes.notify_one();
        let sid = self.sid;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { inner.release(&name, sid).await });
        }
    }
}
