//! Who is logged in, and who is in a call with whom: the seam between sessions and the engine
//! that keeps that state.
//!
//! Two engines sit behind it, chosen at start-up:
//! - [`memory`]: one process, one map behind one lock (the default, and the fastest);
//! - [`cluster`]: several instances as one service, with the shared state in Redis.
//!
//! Sessions see only [`Registry::connect`] and the [`Connection`] it returns, so both engines
//! keep the same rules: a name is unique, the busy rule holds, only partners exchange answer,
//! candidate, decline and close, and a dropped socket tells its partner. One semantic suite
//! (`tests/engines.rs`) runs against both.

pub mod cluster;
mod local;
pub mod memory;

pub use super::queue::{Outbox, Queued};

use std::sync::Arc;

use hyper_tungstenite::tungstenite::Message;
use tokio::sync::Notify;

use super::protocol::{LoginFailure, ServerMessage};
use super::queue;

/// Where a call stands, seen from one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// I sent an offer; the other side is ringing.
    Calling,
    /// The other side's offer is ringing here.
    Ringing,
    /// An answer went through.
    Active,
    /// After a restart that lost every call: I asked to resume my call with the other side,
    /// who has not asked for me yet. Others calling me get `busy`; my own messages are not
    /// relayed until the other side asks too.
    Resuming,
}

impl CallState {
    /// Its name in Redis records and scripts (`lua/`).
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Calling => "calling",
            CallState::Ringing => "ringing",
            CallState::Active => "active",
            CallState::Resuming => "resuming",
        }
    }

    /// The state [`CallState::as_str`] names; `None` for anything else.
    pub fn parse(name: &str) -> Option<CallState> {
        [
            CallState::Calling,
            CallState::Ringing,
            CallState::Active,
            CallState::Resuming,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }
}

/// Where a relayed message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The receiver, named as they typed their name.
    pub to: Arc<str>,
    /// It began something: an offer that started a call (not one that renegotiates it), or
    /// an answer to a ringing call (not to a renegotiation). Sessions log calls by it.
    pub began: bool,
}

/// A login's reconnect tokens, as digests (see `signaling::grace`): the one the client
/// presented, if any, and the new one it is given.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    pub presented: Option<&'a str>,
    pub new: &'a str,
    /// The presented token is the login's only credential (`[access]` is on and no valid
    /// password or access token came): it may take a held session back, never claim a free
    /// name. Without a session to take, the login fails with `AuthFailed`.
    pub take_back_only: bool,
}

/// How a login went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoggedIn {
    /// A name nobody held.
    Fresh,
    /// The presented token took over a session held on another instance, with its call
    /// (the partner's name, if in one).
    TakenOver(Option<Arc<str>>),
}

/// What a `resume` request led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// Both sides asked for each other: the call is active again (with the user named as
    /// they typed their name), and the other side was told.
    Paired(Arc<str>),
    /// The other side has not asked yet; the request waits for them (bounded by the caller).
    Waiting,
}

/// Who is online, for the presence list: the first users by [`name_key`] up to a limit,
/// each with whether they are in (or ringing for) a call, and how many are online in all.
///
/// [`name_key`]: crate::signaling::protocol::name_key
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Online {
    pub users: Vec<(Arc<str>, bool)>,
    pub total: usize,
}

/// Relayed message kinds that travel only between partners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    Answer,
    Candidate,
    Decline,
    Close,
    /// The sender's microphone or camera went on or off.
    Media,
}

impl Relay {
    /// The message's `type` on the wire (and in the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Relay::Answer => "answer",
            Relay::Candidate => "candidate",
            Relay::Decline => "decline",
            Relay::Close => "close",
            Relay::Media => "media",
        }
    }

    /// Whether it changes the call (an answer makes it active, a decline or close ends it);
    /// candidates and media notices only pass along it.
    pub fn changes_call(self) -> bool {
        !matches!(self, Relay::Candidate | Relay::Media)
    }
}

/// Why a message was not relayed; answered to its sender, whose socket stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("log in first: send {{\"type\":\"login\",\"username\":…}}")]
    NotLoggedIn,
    #[error("no user named {0} is logged in")]
    UnknownUser(String),
    #[error("you cannot call yourself")]
    SelfCall,
    #[error("{0} is busy")]
    Busy(Arc<str>),
    #[error("you are already in a call with {0}: hang up first")]
    AlreadyInCall(Arc<str>),
    #[error("you are not in a call")]
    NoCall,
    #[error("you are not in a call with {0}")]
    NotInCallWith(String),
    #[error("the service is reconnecting to its backplane: try again in a moment")]
    Unavailable,
}

impl RelayError {
    pub fn code(&self) -> &'static str {
        match self {
            RelayError::NotLoggedIn => "not-logged-in",
            RelayError::UnknownUser(_) => "unknown-user",
            RelayError::SelfCall => "self-call",
            RelayError::Busy(_) => "busy",
            RelayError::AlreadyInCall(_) => "already-in-call",
            RelayError::NoCall | RelayError::NotInCallWith(_) => "not-in-call",
            RelayError::Unavailable => "unavailable",
        }
    }

    /// The frame that tells the sender: `busy` has its own message type, the rest are errors.
    pub fn reply(&self) -> String {
        match self {
            RelayError::Busy(name) => ServerMessage::Busy { username: name }.to_json(),
            other => ServerMessage::error(other.code(), &other.to_string()),
        }
    }
}

/// The engine in use. Cloning it is one reference count.
#[derive(Debug, Clone)]
pub enum Registry {
    Memory(memory::Registry),
    Cluster(cluster::Cluster),
}

impl Default for Registry {
    fn default() -> Self {
        Registry::Memory(memory::Registry::new())
    }
}

impl Registry {
    /// The in-memory engine.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers an open socket. Dropping the returned [`Connection`] logs it out, ends its
    /// call and frees its name, on every exit path.
    pub fn connect(&self, outbox: Outbox) -> Connection {
        match self {
            Registry::Memory(registry) => Connection::Memory(registry.connect(outbox)),
            Registry::Cluster(cluster) => Connection::Cluster(Box::new(cluster.connect(outbox))),
        }
    }

    /// Users logged in here (on this instance).
    pub fn users(&self) -> usize {
        match self {
            Registry::Memory(registry) => registry.users(),
            Registry::Cluster(cluster) => cluster.users(),
        }
    }

    /// Calls that are ringing, and that are active. In a cluster each call is counted by the
    /// instance of its caller, so the instances' figures add up to the service's.
    pub fn calls(&self) -> (usize, usize) {
        match self {
            Registry::Memory(registry) => registry.calls(),
            Registry::Cluster(cluster) => cluster.calls(),
        }
    }

    /// The call state of `name` (a user of this instance): the partner and where the call
    /// stands, for the session's last log line and for tests.
    pub fn call_of(&self, name: &str) -> Option<(String, CallState)> {
        match self {
            Registry::Memory(registry) => registry.call_of(name),
            Registry::Cluster(cluster) => cluster.call_of(name),
        }
    }

    /// Rung when a user of this instance logs in or out, or (in memory) a call starts or
    /// ends: the presence list may have changed.
    pub fn changes(&self) -> Arc<Notify> {
        match self {
            Registry::Memory(registry) => registry.changes(),
            Registry::Cluster(cluster) => cluster.changes(),
        }
    }

    /// How often the presence list is read even when nothing rang [`Registry::changes`]:
    /// other instances' users come and go, and busy changes, without a ring here.
    pub fn presence_poll(&self) -> std::time::Duration {
        match self {
            Registry::Memory(_) => std::time::Duration::from_secs(30),
            Registry::Cluster(cluster) => cluster.heartbeat(),
        }
    }

    /// Who is online in the whole service (see [`Online`]). `None` when that cannot be known
    /// now (the backplane is away).
    pub async fn online(&self, limit: usize) -> Option<Online> {
        match self {
            Registry::Memory(registry) => Some(registry.online(limit)),
            Registry::Cluster(cluster) => Box::pin(cluster.online(limit)).await,
        }
    }

    /// Queues `frame` for every logged-in socket of this instance, except users in grace
    /// (whose queue holds only what their partner sends) and logins not yet answered.
    pub fn broadcast(&self, frame: &Message) {
        match self {
            Registry::Memory(registry) => registry.broadcast(frame),
            Registry::Cluster(cluster) => cluster.broadcast(frame),
        }
    }

    /// `None` without a backplane; otherwise whether it is usable now.
    pub fn backplane_up(&self) -> Option<bool> {
        match self {
            Registry::Memory(_) => None,
            Registry::Cluster(cluster) => Some(cluster.is_up()),
        }
    }

    /// At shutdown, after the sessions closed: frees this instance's names in the backplane
    /// and tells remote partners. Nothing to do in memory.
    pub async fn leave(&self) {
        if let Registry::Cluster(cluster) = self {
            cluster.leave().await;
        }
    }
}

/// One socket's membership in the registry.
#[derive(Debug)]
pub enum Connection {
    Memory(memory::Connection),
    /// Boxed, so the memory engine's sessions do not carry the bigger variant.
    Cluster(Box<cluster::Connection>),
}

impl Connection {
    pub fn name(&self) -> Option<&str> {
        match self {
            Connection::Memory(conn) => conn.name(),
            Connection::Cluster(conn) => conn.name(),
        }
    }

    /// Claims `name`, or, across instances, takes over the session the presented token
    /// belongs to. `welcome` (built from how it went) reaches the client before anything
    /// another user sends to the name.
    pub async fn login(
        &mut self,
        name: &str,
        tokens: Tokens<'_>,
        welcome: impl FnOnce(&LoggedIn) -> String,
    ) -> Result<LoggedIn, LoginFailure> {
        match self {
            // One process: a token is checked by the session layer, which holds them all.
            Connection::Memory(_) if tokens.take_back_only => Err(LoginFailure::AuthFailed),
            Connection::Memory(conn) => conn
                .login(name, Message::text(welcome(&LoggedIn::Fresh)))
                .map(|()| LoggedIn::Fresh),
            // Boxed so the memory engine's sessions do not carry the Redis future's size.
            Connection::Cluster(conn) => Box::pin(conn.login(name, tokens, welcome)).await,
        }
    }

    /// Records the digest of the user's new token where other instances can check it (after
    /// a takeover on this instance). Nothing to do in memory.
    pub async fn set_token(&self, digest: &str) {
        if let Connection::Cluster(conn) = self {
            Box::pin(conn.set_token(digest)).await;
        }
    }

    /// Sends an offer to `to`: starts a call, or renegotiates the current one with `to`.
    pub async fn offer(&self, to: &str, frame: String) -> Result<Sent, RelayError> {
        match self {
            Connection::Memory(conn) => conn.offer(to, Message::text(frame)),
            Connection::Cluster(conn) => Box::pin(conn.offer(to, frame)).await,
        }
    }

    /// Relays an answer, candidate, decline or close to the current partner. `to`, when the
    /// client names someone, must be that partner: nobody can reach into another call.
    pub async fn relay(
        &self,
        kind: Relay,
        to: Option<&str>,
        frame: String,
    ) -> Result<Sent, RelayError> {
        match self {
            Connection::Memory(conn) => conn.relay(kind, to, Message::text(frame)),
            Connection::Cluster(conn) => Box::pin(conn.relay(kind, to, frame)).await,
        }
    }

    /// Asks to resume my call with `to` after a restart (see [`Resumed`]); `frame` tells `to`
    /// when both have asked.
    pub async fn resume(&self, to: &str, frame: String) -> Result<Resumed, RelayError> {
        match self {
            Connection::Memory(conn) => conn.resume(to, Message::text(frame)),
            Connection::Cluster(conn) => Box::pin(conn.resume(to, frame)).await,
        }
    }

    /// The bounded wait for `to` to resume ran out: drops the request. False when it was no
    /// longer pending.
    pub async fn resume_lapsed(&self, to: &str) -> bool {
        match self {
            Connection::Memory(conn) => conn.resume_lapsed(to),
            Connection::Cluster(conn) => Box::pin(conn.resume_lapsed(to)).await,
        }
    }

    /// Moves this user to another socket's queue, on this instance: `welcome` (built from the
    /// current partner's name) first, then what `held` kept, then everything new. `away`:
    /// the queue holds messages for a user in grace (no socket reads it now).
    pub fn rebind(
        &mut self,
        outbox: Outbox,
        held: Option<&mut queue::Receiver<Queued>>,
        away: bool,
        welcome: impl FnOnce(Option<&str>) -> Option<String>,
    ) {
        let welcome = |with: Option<&str>| welcome(with).map(Message::text);
        match self {
            Connection::Memory(conn) => conn.rebind(outbox, held, away, welcome),
            Connection::Cluster(conn) => conn.rebind(outbox, held, away, welcome),
        }
    }

    /// Whether the engine took this socket's name away (the session then ends).
    pub fn evicted(&self) -> bool {
        match self {
            Connection::Memory(_) => false,
            Connection::Cluster(conn) => conn.evicted(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_states_read_back_from_their_names_and_nothing_else_does() {
        let states = [
            CallState::Calling,
            CallState::Ringing,
            CallState::Active,
            CallState::Resuming,
        ];
        for state in states {
            assert_eq!(CallState::parse(state.as_str()), Some(state));
        }
        let names: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
        assert_eq!(
            names,
            ["calling", "ringing", "active", "resuming"],
            "the Lua scripts' words"
        );
        for other in ["", "Active", "idle", "calling "] {
            assert_eq!(CallState::parse(other), None, "{other:?}");
        }
    }
}
