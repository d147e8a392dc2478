//! The in-memory engine: one process, every user and call in one map.
//!
//! All of it is one map behind one lock, so a user and their call can never disagree. The lock
//! is a `std::sync::Mutex`: it is only ever held for a few map operations and a non-blocking
//! `try_send`, never across an `.await`, so an async mutex would only add cost. Nothing here
//! waits, so the engine seam's async methods complete on their first poll.
//!
//! Users are keyed by [`name_key`] (case-folded), and keep the name as they typed it for
//! every frame that names them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hyper_tungstenite::tungstenite::Message;
use tokio::sync::Notify;

use super::local::{self, Seat};
use super::{CallState, Online, Outbox, Queued, Relay, RelayError, Resumed, Sent};
use crate::signaling::protocol::{LoginFailure, name_key};
use crate::signaling::queue;

#[derive(Debug)]
struct Call {
    /// The other side's key.
    with: Arc<str>,
    /// The other side's name as shown.
    shown: Arc<str>,
    state: CallState,
}

#[derive(Debug)]
struct User {
    /// As its owner typed it.
    name: Arc<str>,
    seat: Seat,
    call: Option<Call>,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<Arc<str>, User>,
    /// Rung when someone logs in or out, or a call starts or ends (the presence list).
    changes: Arc<Notify>,
}

/// The handle every session and the HTTP layer share; cloning it is one reference count.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    state: Arc<Mutex<State>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers an open socket. Dropping the returned [`Connection`] logs it out, ends its
    /// call and frees its name, on every exit path.
    pub fn connect(&self, outbox: Outbox) -> Connection {
        Connection {
            registry: self.clone(),
            outbox,
            me: None,
        }
    }

    /// Logged-in users.
    pub fn users(&self) -> usize {
        self.lock().users.len()
    }

    /// Calls (pairs of users) that are ringing, and that are active.
    pub fn calls(&self) -> (usize, usize) {
        let state = self.lock();
        let count = |wanted: CallState| {
            state
                .users
                .values()
                .filter(|user| user.call.as_ref().is_some_and(|c| c.state == wanted))
                .count()
        };
        // A ringing call has one Calling side; an active one, two Active sides.
        (count(CallState::Calling), count(CallState::Active) / 2)
    }

    /// Rung when the presence list may have changed.
    pub fn changes(&self) -> Arc<Notify> {
        self.lock().changes.clone()
    }

    /// The first `limit` users by key, busy marked, and how many there are.
    pub fn online(&self, limit: usize) -> Online {
        // Copied under the lock (reference counts), sorted outside it.
        let mut users: Vec<(Arc<str>, Arc<str>, bool)> = self
            .lock()
            .users
            .iter()
            .map(|(key, user)| (key.clone(), user.name.clone(), user.call.is_some()))
            .collect();
        let total = users.len();
        if total > limit {
            users.select_nth_unstable_by(limit, |a, b| a.0.cmp(&b.0));
            users.truncate(limit);
        }
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Online {
            users: users
                .into_iter()
                .map(|(_, name, busy)| (name, busy))
                .collect(),
            total,
        }
    }

    /// Queues `frame` for every user who is here to read it (not those in grace).
    pub fn broadcast(&self, frame: &Message) {
        let state = self.lock();
        local::broadcast(state.users.values().map(|user| &user.seat), frame);
    }

    /// The call state of `name`, for tests and diagnostics.
    pub fn call_of(&self, name: &str) -> Option<(String, CallState)> {
        let state = self.lock();
        let call = state.users.get(&*name_key(name))?.call.as_ref()?;
        Some((call.shown.to_string(), call.state))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
}

/// A user: its key and its name as shown.
#[derive(Debug, Clone)]
struct Who {
    key: Arc<str>,
    name: Arc<str>,
}

/// One socket's membership in the registry.
#[derive(Debug)]
pub struct Connection {
    registry: Registry,
    outbox: Outbox,
    me: Option<Who>,
}

impl Connection {
    pub fn name(&self) -> Option<&str> {
        self.me.as_ref().map(|me| &*me.name)
    }

    fn me(&self) -> Result<&Who, RelayError> {
        self.me.as_ref().ok_or(RelayError::NotLoggedIn)
    }

    /// Claims `name`. `welcome` is queued under the same lock, so the login reply reaches the
    /// client before anything another user sends to the new name.
    pub fn login(&mut self, name: &str, welcome: Message) -> Result<(), LoginFailure> {
        if self.me.is_some() {
            return Err(LoginFailure::AlreadyLoggedIn);
        }
        let key: Arc<str> = Arc::from(name_key(name));
        let mut state = self.registry.lock();
        if state.users.contains_key(&key) {
            return Err(LoginFailure::NameTaken);
        }
        let name: Arc<str> = Arc::from(name);
        state.users.insert(
            key.clone(),
            User {
                name: name.clone(),
                seat: Seat::new(self.outbox.clone()),
                call: None,
            },
        );
        state.changes.notify_one();
        self.outbox.deliver(welcome);
        self.me = Some(Who { key, name });
        Ok(())
    }

    /// Sends an offer to `to`: starts a call, or renegotiates the current one with `to`.
    pub fn offer(&self, to: &str, frame: Message) -> Result<Sent, RelayError> {
        let me = self.me()?;
        let to_key = name_key(to);
        if *me.key == *to_key {
            return Err(RelayError::SelfCall);
        }
        let mut state = self.registry.lock();
        let (callee, callee_busy) = match state.users.get_key_value(&*to_key) {
            // Waiting to resume a call with me is no reason to be busy for me.
            Some((key, user)) => (
                Who {
                    key: key.clone(),
                    name: user.name.clone(),
                },
                user.call.as_ref().is_some_and(|call| {
                    !(call.state == CallState::Resuming && call.with == me.key)
                }),
            ),
            None => return Err(RelayError::UnknownUser(to.to_owned())),
        };
        let my_call = current_call(&state, &me.key)?;
        let began = match my_call {
            Some(call) if call.with == callee.key => false,
            Some(call) => return Err(RelayError::AlreadyInCall(call.shown.clone())),
            None if callee_busy => return Err(RelayError::Busy(callee.name)),
            None => {
                set_call(&mut state, me, &callee, CallState::Calling);
                set_call(&mut state, &callee, me, CallState::Ringing);
                true
            }
        };
        deliver(&mut state, &callee.key, frame);
        Ok(Sent {
            to: callee.name,
            began,
        })
    }

    /// Relays an answer, candidate, decline or close to the current partner. `to`, when the
    /// client names someone, must be that partner: nobody can reach into another call.
    pub fn relay(&self, kind: Relay, to: Option<&str>, frame: Message) -> Result<Sent, RelayError> {
        let me = self.me()?;
        let mut state = self.registry.lock();
        if matches!(kind, Relay::Decline | Relay::Close)
            && let Some(user) = state.users.get_mut(&me.key)
            && user
                .call
                .as_ref()
                .is_some_and(|call| call.state == CallState::Resuming)
        {
            // Hanging up while waiting for the other side to resume: stop waiting.
            user.call = None;
            state.changes.notify_one();
        }
        let my_call = current_call(&state, &me.key)?;
        let ringing = my_call.is_some_and(|call| call.state == CallState::Ringing);
        let partner = match (my_call, to) {
            (None, None) => return Err(RelayError::NoCall),
            (None, Some(to)) => return Err(RelayError::NotInCallWith(to.to_owned())),
            (Some(call), Some(to)) if *call.with != *name_key(to) => {
                return Err(RelayError::NotInCallWith(to.to_owned()));
            }
            (Some(call), _) => Who {
                key: call.with.clone(),
                name: call.shown.clone(),
            },
        };
        match kind {
            Relay::Answer => {
                set_call(&mut state, me, &partner, CallState::Active);
                set_call(&mut state, &partner, me, CallState::Active);
            }
            Relay::Decline | Relay::Close => {
                end_call(&mut state, &me.key);
                end_call(&mut state, &partner.key);
            }
            Relay::Candidate | Relay::Media => {}
        }
        deliver(&mut state, &partner.key, frame);
        Ok(Sent {
            to: partner.name,
            began: kind == Relay::Answer && ringing,
        })
    }

    /// Asks to resume my call with `to` after a restart. The call is active again once both
    /// sides have asked for each other; `frame` then tells `to`. A request naming someone who
    /// never asks for me pairs with nobody and reaches nobody.
    pub fn resume(&self, to: &str, frame: Message) -> Result<Resumed, RelayError> {
        let me = self.me()?;
        let to_key = name_key(to);
        if *me.key == *to_key {
            return Err(RelayError::SelfCall);
        }
        let mut state = self.registry.lock();
        match current_call(&state, &me.key)? {
            Some(call) if *call.with == *to_key && call.state == CallState::Active => {
                return Ok(Resumed::Paired(call.shown.clone()));
            }
            Some(call) => return Err(RelayError::AlreadyInCall(call.shown.clone())),
            None => {}
        }
        let asked_for_me = state.users.get_key_value(&*to_key).and_then(|(key, user)| {
            let call = user.call.as_ref()?;
            (call.state == CallState::Resuming && call.with == me.key).then(|| Who {
                key: key.clone(),
                name: user.name.clone(),
            })
        });
        match asked_for_me {
            Some(partner) => {
                set_call(&mut state, me, &partner, CallState::Active);
                set_call(&mut state, &partner, me, CallState::Active);
                deliver(&mut state, &partner.key, frame);
                Ok(Resumed::Paired(partner.name))
            }
            None => {
                // The other side may not be back yet: it is named as asked for.
                let to = Who {
                    key: Arc::from(to_key),
                    name: Arc::from(to),
                };
                set_call(&mut state, me, &to, CallState::Resuming);
                Ok(Resumed::Waiting)
            }
        }
    }

    /// The wait for `to` to resume ran out: drops the request. False when it was no longer
    /// pending (paired, replaced, or gone).
    pub fn resume_lapsed(&self, to: &str) -> bool {
        let Some(me) = self.me.as_ref() else {
            return false;
        };
        let to = name_key(to);
        let mut state = self.registry.lock();
        let Some(user) = state.users.get_mut(&me.key) else {
            return false;
        };
        let pending = user
            .call
            .as_ref()
            .is_some_and(|call| call.state == CallState::Resuming && *call.with == *to);
        if pending {
            user.call = None;
            state.changes.notify_one();
        }
        pending
    }

    /// Moves this logged-in user to another socket (a reconnect that proved itself with its
    /// token, or the holding queue of a socket that dropped). Under one lock: `welcome` (built
    /// from the partner's name, if in a call) is queued first, then whatever `held` kept, and
    /// only then can anyone else's message reach the new socket, so nothing is reordered.
    pub fn rebind(
        &mut self,
        outbox: Outbox,
        held: Option<&mut queue::Receiver<Queued>>,
        away: bool,
        welcome: impl FnOnce(Option<&str>) -> Option<Message>,
    ) {
        let Some(me) = self.me.clone() else {
            self.outbox = outbox;
            return;
        };
        let mut state = self.registry.lock();
        if let Some(user) = state.users.get_mut(&me.key) {
            let welcome = welcome(user.call.as_ref().map(|call| &*call.shown));
            user.seat.rebind(outbox.clone(), held, away, welcome);
        }
        self.outbox = outbox;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(me) = self.me.take() else { return };
        let mut state = self.registry.lock();
        let Some(user) = state.users.remove(&me.key) else {
            return;
        };
        state.changes.notify_one();
        if let Some(call) = user.call
            && call.state != CallState::Resuming
            && let Some(partner) = state.users.get_mut(&call.with)
            && partner
                .call
                .as_ref()
                .is_some_and(|theirs| theirs.with == me.key)
        {
            partner.call = None;
            partner.seat.tell_gone(&me.name);
        }
    }
}

// Both sides of a call are always in the map while they are partners (a user leaves it only
// in `Connection::drop`, which clears the partner's side too), so the lookups below always
// find them; they are lookups rather than indexing so that no bug here can panic.

fn current_call<'s>(state: &'s State, me: &str) -> Result<Option<&'s Call>, RelayError> {
    let user = state.users.get(me).ok_or(RelayError::NotLoggedIn)?;
    // A request to resume is not a call yet: nothing of mine is relayed on it, and a new
    // call of mine replaces it.
    Ok(user
        .call
        .as_ref()
        .filter(|call| call.state != CallState::Resuming))
}

fn deliver(state: &mut State, to: &str, frame: Message) {
    if let Some(user) = state.users.get_mut(to) {
        user.seat.push(frame);
    }
}

fn set_call(state: &mut State, who: &Who, with: &Who, call_state: CallState) {
    state.changes.notify_one();
    if let Some(user) = state.users.get_mut(&who.key) {
        user.call = Some(Call {
            with: with.key.clone(),
            shown: with.name.clone(),
            state: call_state,
        });
    }
}

fn end_call(state: &mut State, who: &Arc<str>) {
    state.changes.notify_one();
    if let Some(user) = state.users.get_mut(who) {
        user.call = None;
    }
}

// Tested through the engine seam: tests/engines.rs (the same scenarios for both engines) and
// tests/fuzz.rs (a model of who receives what).
