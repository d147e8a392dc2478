//! The in-memory engine: one process, every user and call in one map.
//!
//! All of it is one map behind one lock, so a user and their call can never disagree. The lock
//! is a `std::sync::Mutex`: it is only ever held for a few map operations and a non-blocking
//! `try_send`, never across an `.await`, so an async mutex would only add cost. Nothing here
//! waits, so the engine seam's async methods complete on their first poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hyper_tungstenite::tungstenite::Message;

use super::{CallState, Outbox, Relay, RelayError};
use crate::signaling::protocol::{CloseReason, LoginFailure, ServerMessage};

#[derive(Debug)]
struct Call {
    with: Arc<str>,
    state: CallState,
}

#[derive(Debug)]
struct User {
    outbox: Outbox,
    call: Option<Call>,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<Arc<str>, User>,
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
            name: None,
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

    /// The call state of `name`, for tests and diagnostics.
    pub fn call_of(&self, name: &str) -> Option<(String, CallState)> {
        let state = self.lock();
        let call = state.users.get(name)?.call.as_ref()?;
        Some((call.with.to_string(), call.state))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in the few lines below that take it;
        // the map stays consistent between statements, so carrying on is safe.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One socket's membership in the registry.
#[derive(Debug)]
pub struct Connection {
    registry: Registry,
    outbox: Outbox,
    name: Option<Arc<str>>,
}

impl Connection {
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Claims `name`. `welcome` is queued under the same lock, so the login reply reaches the
    /// client before anything another user sends to the new name.
    pub fn login(&mut self, name: &str, welcome: Message) -> Result<(), LoginFailure> {
        if self.name.is_some() {
            return Err(LoginFailure::AlreadyLoggedIn);
        }
        let mut state = self.registry.lock();
        if state.users.contains_key(name) {
            return Err(LoginFailure::NameTaken);
        }
        let name: Arc<str> = Arc::from(name);
        state.users.insert(
            name.clone(),
            User {
                outbox: self.outbox.clone(),
                call: None,
            },
        );
        self.outbox.deliver(welcome);
        self.name = Some(name);
        Ok(())
    }

    /// Sends an offer to `to`: starts a call, or renegotiates the current one with `to`.
    pub fn offer(&self, to: &str, frame: Message) -> Result<Arc<str>, RelayError> {
        let me = self.name.as_ref().ok_or(RelayError::NotLoggedIn)?;
        if **me == *to {
            return Err(RelayError::SelfCall);
        }
        let mut state = self.registry.lock();
        let (callee, callee_busy) = match state.users.get_key_value(to) {
            Some((name, user)) => (name.clone(), user.call.is_some()),
            None => return Err(RelayError::UnknownUser(to.to_owned())),
        };
        let my_call = current_call(&state, me)?;
        match my_call {
            Some(call) if call.with == callee => {}
            Some(call) => return Err(RelayError::AlreadyInCall(call.with.clone())),
            None if callee_busy => return Err(RelayError::Busy(callee)),
            None => {
                set_call(&mut state, me, &callee, CallState::Calling);
                set_call(&mut state, &callee, me, CallState::Ringing);
            }
        }
        deliver(&state, &callee, frame);
        Ok(callee)
    }

    /// Relays an answer, candidate, decline or close to the current partner. `to`, when the
    /// client names someone, must be that partner: nobody can reach into another call.
    pub fn relay(
        &self,
        kind: Relay,
        to: Option<&str>,
        frame: Message,
    ) -> Result<Arc<str>, RelayError> {
        let me = self.name.as_ref().ok_or(RelayError::NotLoggedIn)?;
        let mut state = self.registry.lock();
        let my_call = current_call(&state, me)?;
        let partner = match (my_call, to) {
            (None, None) => return Err(RelayError::NoCall),
            (None, Some(to)) => return Err(RelayError::NotInCallWith(to.to_owned())),
            (Some(call), Some(to)) if *call.with != *to => {
                return Err(RelayError::NotInCallWith(to.to_owned()));
            }
            (Some(call), _) => call.with.clone(),
        };
        match kind {
            Relay::Answer => {
                set_call(&mut state, me, &partner, CallState::Active);
                set_call(&mut state, &partner, me, CallState::Active);
            }
            Relay::Decline | Relay::Close => {
                end_call(&mut state, me);
                end_call(&mut state, &partner);
            }
            Relay::Candidate => {}
        }
        deliver(&state, &partner, frame);
        Ok(partner)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(me) = self.name.take() else { return };
        let mut state = self.registry.lock();
        let Some(user) = state.users.remove(&me) else {
            return;
        };
        if let Some(call) = user.call
            && let Some(partner) = state.users.get_mut(&call.with)
        {
            partner.call = None;
            let frame = ServerMessage::Close {
                username: &me,
                reason: CloseReason::Disconnected,
            }
            .to_json();
            partner.outbox.deliver(Message::text(frame));
        }
    }
}

// Both sides of a call are always in the map while they are partners (a user leaves it only
// in `Connection::drop`, which clears the partner's side too), so the lookups below always
// find them; they are lookups rather than indexing so that no bug here can panic.

fn current_call<'s>(state: &'s State, me: &str) -> Result<Option<&'s Call>, RelayError> {
    let user = state.users.get(me).ok_or(RelayError::NotLoggedIn)?;
    Ok(user.call.as_ref())
}

fn deliver(state: &State, to: &str, frame: Message) {
    if let Some(user) = state.users.get(to) {
        user.outbox.deliver(frame);
    }
}

fn set_call(state: &mut State, who: &Arc<str>, with: &Arc<str>, call_state: CallState) {
    if let Some(user) = state.users.get_mut(who) {
        user.call = Some(Call {
            with: with.clone(),
            state: call_state,
        });
    }
}

fn end_call(state: &mut State, who: &Arc<str>) {
    if let Some(user) = state.users.get_mut(who) {
        user.call = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::Queued;
    use super::*;
    use tokio::sync::{Notify, mpsc};

    fn socket(registry: &Registry) -> (Connection, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(8);
        (
            registry.connect(Outbox::new(tx, Arc::new(Notify::new()))),
            rx,
        )
    }

    fn text(rx: &mut mpsc::Receiver<Queued>) -> String {
        match rx.try_recv().map(|frame| *frame) {
            Ok(Message::Text(text)) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    fn logged_in(registry: &Registry, name: &str) -> (Connection, mpsc::Receiver<Queued>) {
        let (mut conn, mut rx) = socket(registry);
        conn.login(name, Message::text("welcome")).unwrap();
        assert_eq!(text(&mut rx), "welcome");
        (conn, rx)
    }

    #[test]
    fn a_name_is_held_by_one_socket_and_freed_on_drop() {
        let registry = Registry::new();
        let (alice, _rx) = logged_in(&registry, "alice");
        let (mut other, _rx2) = socket(&registry);
        assert_eq!(
            other.login("alice", Message::text("")),
            Err(LoginFailure::NameTaken)
        );
        assert_eq!(registry.users(), 1);
        drop(alice);
        assert_eq!(other.login("alice", Message::text("")), Ok(()));
        assert_eq!(
            other.login("alice2", Message::text("")),
            Err(LoginFailure::AlreadyLoggedIn)
        );
        drop(other);
        assert_eq!(registry.users(), 0);
    }

    #[test]
    fn call_lifecycle() {
        let registry = Registry::new();
        let (alice, mut alice_rx) = logged_in(&registry, "alice");
        let (bob, mut bob_rx) = logged_in(&registry, "bob");
        let (carol, mut carol_rx) = logged_in(&registry, "carol");

        assert_eq!(
            bob.relay(Relay::Candidate, None, Message::text("c")),
            Err(RelayError::NoCall)
        );
        alice.offer("bob", Message::text("offer")).unwrap();
        assert_eq!(text(&mut bob_rx), "offer");
        assert_eq!(
            registry.call_of("alice"),
            Some(("bob".into(), CallState::Calling))
        );
        assert_eq!(
            registry.call_of("bob"),
            Some(("alice".into(), CallState::Ringing))
        );
        assert_eq!(
            carol.offer("bob", Message::text("x")),
            Err(RelayError::Busy("bob".into()))
        );
        assert_eq!(
            carol.relay(Relay::Candidate, Some("bob"), Message::text("x")),
            Err(RelayError::NotInCallWith("bob".into()))
        );
        assert_eq!(
            alice.offer("carol", Message::text("x")),
            Err(RelayError::AlreadyInCall("bob".into()))
        );
        assert_eq!(registry.calls(), (1, 0));
        bob.relay(Relay::Answer, None, Message::text("answer"))
            .unwrap();
        assert_eq!(registry.calls(), (0, 1));
        assert_eq!(text(&mut alice_rx), "answer");
        assert_eq!(
            registry.call_of("alice"),
            Some(("bob".into(), CallState::Active))
        );
        // Nobody in a call can reach into another: every relay named to a non-partner is
        // refused, and neither the named user nor the partner receives anything.
        for kind in [
            Relay::Answer,
            Relay::Candidate,
            Relay::Decline,
            Relay::Close,
        ] {
            assert_eq!(
                alice.relay(kind, Some("carol"), Message::text("x")),
                Err(RelayError::NotInCallWith("carol".into())),
                "{kind:?}"
            );
        }
        assert!(carol_rx.try_recv().is_err(), "carol received nothing");
        assert!(bob_rx.try_recv().is_err(), "bob received nothing");
        assert_eq!(registry.calls(), (0, 1), "the call is untouched");
        // Renegotiation between partners goes through.
        bob.offer("alice", Message::text("re-offer")).unwrap();
        assert_eq!(text(&mut alice_rx), "re-offer");
        alice
            .relay(Relay::Close, Some("bob"), Message::text("bye"))
            .unwrap();
        assert_eq!(text(&mut bob_rx), "bye");
        assert_eq!(registry.calls(), (0, 0));
        assert_eq!(
            alice.offer("alice", Message::text("x")),
            Err(RelayError::SelfCall)
        );
        assert_eq!(
            alice.offer("zed", Message::text("x")),
            Err(RelayError::UnknownUser("zed".into()))
        );
    }

    #[test]
    fn dropping_a_socket_mid_call_tells_the_partner() {
        let registry = Registry::new();
        let (alice, _alice_rx) = logged_in(&registry, "alice");
        let (bob, mut bob_rx) = logged_in(&registry, "bob");
        alice.offer("bob", Message::text("offer")).unwrap();
        text(&mut bob_rx);
        drop(alice);
        let close: serde_json::Value = serde_json::from_str(&text(&mut bob_rx)).unwrap();
        assert_eq!(
            close,
            serde_json::json!({"type":"close","username":"alice","reason":"disconnected"})
        );
        assert_eq!(registry.call_of("bob"), None);
        drop(bob);
        assert_eq!(registry.users(), 0);
    }

    #[test]
    fn a_full_queue_rings_the_bell_instead_of_growing() {
        let (tx, _rx) = mpsc::channel(1);
        let bell = Arc::new(Notify::new());
        let outbox = Outbox::new(tx, bell.clone());
        assert!(outbox.deliver(Message::text("1")));
        assert!(!outbox.deliver(Message::text("2")));
        // The stored permit makes `notified()` complete at once.
        let rang = tokio_test_notified(&bell);
        assert!(rang);
    }

    fn tokio_test_notified(bell: &Notify) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(100), bell.notified())
                .await
                .is_ok()
        })
    }
}
