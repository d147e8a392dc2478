//! One semantic suite for both registry engines: the same scenarios run against the in-memory
//! engine and against two Redis-backed instances sharing a real `redis-server`, with the
//! users spread over the two instances. Whatever one server promises, the cluster promises.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::redis::Redis;
use dialtone::config::Config;
use dialtone::metrics::Metrics;
use dialtone::signaling::protocol::LoginFailure;
use dialtone::signaling::queue;
use dialtone::signaling::registry::cluster::Cluster;
use dialtone::signaling::registry::{
    CallState, Connection, Outbox, Queued, Registry, Relay, RelayError, Sent, Tokens,
};
use serde_json::json;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(5);

/// Two places to log in: the same registry twice (memory), or two instances (Redis).
struct Engines {
    sides: [Registry; 2],
    _redis: Option<Redis>,
}

struct User {
    conn: Connection,
    rx: queue::Receiver<Queued>,
    side: usize,
}

async fn memory() -> Option<Engines> {
    let registry = Registry::new();
    Some(Engines {
        sides: [registry.clone(), registry],
        _redis: None,
    })
}

async fn redis() -> Option<Engines> {
    let redis = Redis::start()?;
    let instance = |id: &str| {
        let text = format!(
            "[cluster]\nredis_url = {:?}\ninstance_id = {id:?}\nheartbeat_ms = 200\nlease_ms = 1000\n",
            redis.url()
        );
        Config::parse(&text, Path::new("test.toml"))
            .unwrap()
            .cluster
    };
    let a = Cluster::start(&instance("a"), Duration::ZERO, &Metrics::new())
        .await
        .unwrap();
    let b = Cluster::start(&instance("b"), Duration::ZERO, &Metrics::new())
        .await
        .unwrap();
    assert!(a.is_up() && b.is_up(), "both instances are up");
    Some(Engines {
        sides: [Registry::Cluster(a), Registry::Cluster(b)],
        _redis: Some(redis),
    })
}

/// Runs a scenario against both engines.
macro_rules! both_engines {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn memory() {
                super::$scenario(super::memory().await.unwrap()).await;
            }
            #[tokio::test]
            async fn redis() {
                if let Some(engines) = super::redis().await {
                    super::$scenario(engines).await;
                }
            }
        }
    )*};
}

both_engines!(
    a_name_is_unique_everywhere_and_freed_on_drop,
    a_call_from_ringing_to_hang_up,
    a_dropped_socket_ends_the_call_for_the_partner,
    two_callers_cannot_both_ring_one_callee,
    crossed_offers_make_one_call,
    a_senders_messages_arrive_in_order,
    a_name_is_one_user_whatever_its_case,
    the_presence_list_is_sorted_bounded_and_marks_busy,
    only_a_new_call_and_the_answer_to_its_ringing_begin_something,
);

impl Engines {
    fn socket(&self, side: usize) -> User {
        let (tx, rx) = queue::channel(1024);
        User {
            conn: self.sides[side].connect(Outbox::new(tx)),
            rx,
            side,
        }
    }

    async fn user(&self, side: usize, name: &str) -> User {
        let mut user = self.socket(side);
        user.conn
            .login(name, NO_TOKEN, |_| format!("welcome {name}"))
            .await
            .unwrap();
        assert_eq!(user.next().await, format!("welcome {name}"));
        user
    }

    fn call_of(&self, user: &User, name: &str) -> Option<(String, CallState)> {
        self.sides[user.side].call_of(name)
    }

    /// Ringing and active calls in the whole service.
    fn calls(&self) -> (usize, usize) {
        let (a, b) = (self.sides[0].calls(), self.sides[1].calls());
        match &self.sides[0] {
            Registry::Memory(_) => a,
            Registry::Cluster(_) => (a.0 + b.0, a.1 + b.1),
        }
    }
}

impl User {
    async fn next(&mut self) -> String {
        let frame = tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("a frame within the patience")
            .expect("the queue is open");
        match *frame {
            Message::Text(text) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    async fn json(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.next().await).unwrap()
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(300), self.rx.recv()).await;
        assert!(got.is_err(), "expected nothing, got {got:?}");
    }

    async fn offer(&self, to: &str, text: &str) -> Result<Arc<str>, RelayError> {
        self.sent_offer(to, text).await.map(|sent| sent.to)
    }

    async fn relay(
        &self,
        kind: Relay,
        to: Option<&str>,
        text: &str,
    ) -> Result<Arc<str>, RelayError> {
        self.sent(kind, to, text).await.map(|sent| sent.to)
    }

    async fn sent_offer(&self, to: &str, text: &str) -> Result<Sent, RelayError> {
        self.conn.offer(to, text.to_owned()).await
    }

    async fn sent(&self, kind: Relay, to: Option<&str>, text: &str) -> Result<Sent, RelayError> {
        self.conn.relay(kind, to, text.to_owned()).await
    }
}

/// A login that presents no reconnect token (tests/grace.rs covers tokens).
const NO_TOKEN: Tokens = Tokens {
    presented: None,
    new: "0000",
    take_back_only: false,
};

/// Retries a login until the name is free (a release is one round trip in a cluster).
async fn login_when_free(user: &mut User, name: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match user.conn.login(name, NO_TOKEN, |_| "welcome".into()).await {
            Ok(_) => break,
            Err(LoginFailure::NameTaken) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{name} was not freed: {other:?}"),
        }
    }
    assert_eq!(user.next().await, "welcome");
}

async fn a_name_is_unique_everywhere_and_freed_on_drop(engines: Engines) {
    let alice = engines.user(0, "alice").await;
    for side in [0, 1] {
        let mut other = engines.socket(side);
        assert_eq!(
            other.conn.login("alice", NO_TOKEN, |_| "x".into()).await,
            Err(LoginFailure::NameTaken),
            "side {side}"
        );
        other.quiet().await;
    }
    assert_eq!(engines.sides[0].users(), 1);
    drop(alice);
    let mut again = engines.socket(1);
    login_when_free(&mut again, "alice").await;
    assert_eq!(
        again.conn.login("alice2", NO_TOKEN, |_| "x".into()).await,
        Err(LoginFailure::AlreadyLoggedIn)
    );
    assert_eq!(engines.sides[1].users(), 1);
    drop(again);
    let mut third = engines.socket(0);
    login_when_free(&mut third, "alice").await;
}

async fn a_name_is_one_user_whatever_its_case(engines: Engines) {
    let bob = engines.user(0, "Bob").await;
    let strasse = engines.user(1, "Straße").await;
    let emile = engines.user(0, "\u{e9}mile").await;
    // Full case folding (ß is ss) and NFC (é is e + U+0301), on both sides.
    for (side, name) in [
        (0, "bob"),
        (1, "BOB"),
        (1, "STRASSE"),
        (0, "strasse"),
        (1, "E\u{301}MILE"),
    ] {
        let mut other = engines.socket(side);
        assert_eq!(
            other.conn.login(name, NO_TOKEN, |_| "x".into()).await,
            Err(LoginFailure::NameTaken),
            "{name} on side {side}"
        );
    }
    let mut alice = engines.user(1, "alice").await;
    // Calling "BOB" reaches Bob, who is named as he typed it.
    assert_eq!(alice.offer("BOB", "offer").await.as_deref(), Ok("Bob"));
    let mut bob = bob;
    assert_eq!(bob.next().await, "offer");
    assert_eq!(
        engines.call_of(&alice, "alice"),
        Some(("Bob".into(), CallState::Calling))
    );
    bob.relay(Relay::Answer, Some("ALICE"), "answer")
        .await
        .unwrap();
    assert_eq!(alice.next().await, "answer");
    alice
        .relay(Relay::Candidate, Some("bob"), "cand")
        .await
        .unwrap();
    assert_eq!(bob.next().await, "cand");
    assert_eq!(alice.offer("bOb", "re-offer").await.as_deref(), Ok("Bob"));
    assert_eq!(bob.next().await, "re-offer");
    assert_eq!(bob.offer("Alice", "re").await.as_deref(), Ok("alice"));
    assert_eq!(alice.next().await, "re");
    let mut carol = engines.user(0, "carol").await;
    assert_eq!(
        carol.offer("BOB", "x").await,
        Err(RelayError::Busy("Bob".into()))
    );
    assert_eq!(bob.offer("BOB", "x").await, Err(RelayError::SelfCall));
    assert_eq!(
        carol.relay(Relay::Close, Some("BOB"), "x").await,
        Err(RelayError::NotInCallWith("BOB".into()))
    );
    carol.quiet().await;
    // Bob's socket goes: alice is told, with his name as he typed it.
    drop(bob);
    let gone = alice.json().await;
    assert_eq!(gone["type"], "close");
    assert_eq!(gone["username"], "Bob");
    let mut again = engines.socket(1);
    login_when_free(&mut again, "bob").await;
    drop((strasse, emile));
}

async fn the_presence_list_is_sorted_bounded_and_marks_busy(engines: Engines) {
    let mut users = Vec::new();
    for (side, name) in [
        (0, "dora"),
        (1, "Carol"),
        (0, "bob"),
        (1, "Alice"),
        (0, "eve"),
    ] {
        users.push(engines.user(side, name).await);
    }
    users[2].offer("alice", "offer").await.unwrap();
    assert_eq!(users[3].next().await, "offer");
    // Each instance stores its own list when it reads the others'.
    engines.sides[1]
        .online(3)
        .await
        .expect("the backplane is up");
    let online = engines.sides[0]
        .online(3)
        .await
        .expect("the backplane is up");
    let listed: Vec<(&str, bool)> = online.users.iter().map(|(n, b)| (&**n, *b)).collect();
    assert_eq!(listed, [("Alice", true), ("bob", true), ("Carol", false)]);
    assert_eq!(online.total, 5);
    // Exactly at the limit, and beyond it: everyone.
    for limit in [5, 6] {
        let online = engines.sides[0].online(limit).await.unwrap();
        assert_eq!((online.users.len(), online.total), (5, 5), "limit {limit}");
    }
    // Only those who can read it get a broadcast.
    let frame = Message::text("list");
    engines.sides[0].broadcast(&frame);
    if let Registry::Cluster(_) = &engines.sides[1] {
        engines.sides[1].broadcast(&frame);
    }
    for user in &mut users {
        assert_eq!(user.next().await, "list");
        user.quiet().await;
    }
}

async fn a_call_from_ringing_to_hang_up(engines: Engines) {
    let mut alice = engines.user(0, "alice").await;
    let mut bob = engines.user(1, "bob").await;
    let mut carol = engines.user(0, "carol").await;

    assert_eq!(
        bob.relay(Relay::Candidate, None, "c").await,
        Err(RelayError::NoCall)
    );
    assert_eq!(alice.offer("bob", "offer").await.as_deref(), Ok("bob"));
    assert_eq!(bob.next().await, "offer");
    assert_eq!(
        engines.call_of(&alice, "alice"),
        Some(("bob".into(), CallState::Calling))
    );
    assert_eq!(
        engines.call_of(&bob, "bob"),
        Some(("alice".into(), CallState::Ringing))
    );
    assert_eq!(
        carol.offer("bob", "x").await,
        Err(RelayError::Busy("bob".into()))
    );
    assert_eq!(
        carol.relay(Relay::Candidate, Some("bob"), "x").await,
        Err(RelayError::NotInCallWith("bob".into()))
    );
    assert_eq!(
        alice.offer("carol", "x").await,
        Err(RelayError::AlreadyInCall("bob".into()))
    );
    assert_eq!(engines.calls(), (1, 0));

    bob.relay(Relay::Answer, None, "answer").await.unwrap();
    assert_eq!(alice.next().await, "answer");
    assert_eq!(engines.calls(), (0, 1));
    assert_eq!(
        engines.call_of(&alice, "alice"),
        Some(("bob".into(), CallState::Active))
    );
    assert_eq!(
        engines.call_of(&bob, "bob"),
        Some(("alice".into(), CallState::Active))
    );
    // Nobody in a call reaches into another, in any relayed type.
    for kind in [
        Relay::Answer,
        Relay::Candidate,
        Relay::Decline,
        Relay::Close,
    ] {
        assert_eq!(
            alice.relay(kind, Some("carol"), "x").await,
            Err(RelayError::NotInCallWith("carol".into())),
            "{kind:?}"
        );
    }
    carol.quiet().await;
    bob.quiet().await;
    assert_eq!(engines.calls(), (0, 1), "the call is untouched");
    // Renegotiation between partners, both ways; candidates without a name go to the partner.
    bob.offer("alice", "re-offer").await.unwrap();
    assert_eq!(alice.next().await, "re-offer");
    alice.relay(Relay::Candidate, None, "cand").await.unwrap();
    assert_eq!(bob.next().await, "cand");
    alice.relay(Relay::Close, Some("bob"), "bye").await.unwrap();
    assert_eq!(bob.next().await, "bye");
    assert_eq!(engines.calls(), (0, 0));
    assert_eq!(engines.call_of(&bob, "bob"), None);
    assert_eq!(alice.offer("alice", "x").await, Err(RelayError::SelfCall));
    assert_eq!(
        alice.offer("zed", "x").await,
        Err(RelayError::UnknownUser("zed".into()))
    );
    // Declined: both are free again.
    carol.offer("bob", "offer 2").await.unwrap();
    assert_eq!(bob.next().await, "offer 2");
    bob.relay(Relay::Decline, None, "no").await.unwrap();
    assert_eq!(carol.next().await, "no");
    alice.offer("bob", "offer 3").await.unwrap();
    assert_eq!(bob.next().await, "offer 3");
    let unlogged = engines.socket(1);
    assert_eq!(
        unlogged.offer("bob", "x").await,
        Err(RelayError::NotLoggedIn)
    );
}

async fn a_dropped_socket_ends_the_call_for_the_partner(engines: Engines) {
    let alice = engines.user(0, "alice").await;
    let mut bob = engines.user(1, "bob").await;
    let mut carol = engines.user(0, "carol").await;
    alice.offer("bob", "offer").await.unwrap();
    bob.next().await;
    bob.relay(Relay::Answer, None, "answer").await.unwrap();
    drop(alice);
    assert_eq!(
        bob.json().await,
        json!({"type": "close", "username": "alice", "reason": "disconnected"})
    );
    assert_eq!(engines.call_of(&bob, "bob"), None);
    assert_eq!(
        bob.relay(Relay::Candidate, None, "late").await,
        Err(RelayError::NoCall)
    );
    // bob is free for a new call; dropping the callee tells the caller as well.
    carol.offer("bob", "offer").await.unwrap();
    bob.next().await;
    drop(bob);
    assert_eq!(carol.json().await["username"], "bob");
    assert_eq!(engines.calls(), (0, 0));
}

async fn two_callers_cannot_both_ring_one_callee(engines: Engines) {
    let alice = engines.user(0, "alice").await;
    let bob = engines.user(1, "bob").await;
    let mut carol = engines.user(0, "carol").await;
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            alice.offer("carol", "from alice"),
            bob.offer("carol", "from bob")
        );
        let won = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "exactly one offer rings carol: {a:?} {b:?}");
        let lost = if a.is_ok() { &b } else { &a };
        assert_eq!(*lost, Err(RelayError::Busy("carol".into())));
        let rung = carol.next().await;
        assert_eq!(rung, if a.is_ok() { "from alice" } else { "from bob" });
        carol.quiet().await;
        carol.relay(Relay::Decline, None, "no").await.unwrap();
        // Wait until the decline reached the caller, so the next round starts clean.
        let caller = if a.is_ok() { &alice } else { &bob };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while engines
            .call_of(caller, if a.is_ok() { "alice" } else { "bob" })
            .is_some()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the decline arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn crossed_offers_make_one_call(engines: Engines) {
    let mut alice = engines.user(0, "alice").await;
    let mut bob = engines.user(1, "bob").await;
    // Many rounds: the two offers race each other, and each one's reply races the other's
    // message, differently each time.
    for round in 0..30 {
        let (a, b) = tokio::join!(
            alice.offer("bob", "from alice"),
            bob.offer("alice", "from bob")
        );
        // Whichever went first started the call; the other was sent within it (glare is the
        // browsers' to resolve). Never two calls, never a refusal, nothing lost.
        assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} {b:?}");
        assert_eq!(alice.next().await, "from bob", "round {round}");
        assert_eq!(bob.next().await, "from alice", "round {round}");
        let states = (
            engines.call_of(&alice, "alice").map(|c| c.1),
            engines.call_of(&bob, "bob").map(|c| c.1),
        );
        assert!(
            matches!(
                states,
                (Some(CallState::Calling), Some(CallState::Ringing))
                    | (Some(CallState::Ringing), Some(CallState::Calling))
            ),
            "round {round}: one call, one caller: {states:?}"
        );
        assert_eq!(engines.calls(), (1, 0), "round {round}");
        alice.relay(Relay::Close, None, "bye").await.unwrap();
        assert_eq!(bob.next().await, "bye", "round {round}");
        // bob's side of the call is over before the next round starts.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while engines.call_of(&bob, "bob").is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: bob still in a call"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn a_senders_messages_arrive_in_order(engines: Engines) {
    let mut alice = engines.user(0, "alice").await;
    let mut bob = engines.user(1, "bob").await;
    alice.offer("bob", "offer").await.unwrap();
    // Candidates and renegotiations change nothing shared; an answer or a hang-up does. The
    // two kinds travel differently in a cluster, and must still arrive in the order sent.
    for i in 0..200 {
        alice
            .relay(Relay::Candidate, None, &format!("c{i}"))
            .await
            .unwrap();
    }
    bob.relay(Relay::Answer, None, "answer").await.unwrap();
    alice.offer("bob", "re-offer").await.unwrap();
    alice.relay(Relay::Candidate, None, "last").await.unwrap();
    alice.relay(Relay::Close, None, "bye").await.unwrap();
    assert_eq!(bob.next().await, "offer");
    for i in 0..200 {
        assert_eq!(bob.next().await, format!("c{i}"));
    }
    for expected in ["re-offer", "last", "bye"] {
        assert_eq!(bob.next().await, expected);
    }
    assert_eq!(alice.next().await, "answer");
    assert!(!bob.rx.bell().notified_now(), "no queue filled up");
}

/// What sessions log calls by: the offer that starts a call and the answer that takes it
/// from ringing to active say so; renegotiations, candidates and hang-ups do not.
async fn only_a_new_call_and_the_answer_to_its_ringing_begin_something(engines: Engines) {
    let mut alice = engines.user(0, "alice").await;
    let mut bob = engines.user(1, "Bob").await;
    let began = |to: &str, began: bool| {
        Ok(Sent {
            to: Arc::from(to),
            began,
        })
    };
    assert_eq!(alice.sent_offer("bob", "offer").await, began("Bob", true));
    assert_eq!(bob.next().await, "offer");
    assert_eq!(
        bob.sent(Relay::Candidate, None, "c").await,
        began("alice", false)
    );
    assert_eq!(
        bob.sent(Relay::Answer, None, "answer").await,
        began("alice", true)
    );
    assert_eq!(
        alice.sent_offer("BOB", "re-offer").await,
        began("Bob", false)
    );
    assert_eq!(
        bob.sent(Relay::Answer, None, "re-answer").await,
        began("alice", false)
    );
    assert_eq!(
        alice.sent(Relay::Close, None, "bye").await,
        began("Bob", false)
    );
    for expected in ["c", "answer", "re-answer"] {
        assert_eq!(alice.next().await, expected);
    }
    for expected in ["re-offer", "bye"] {
        assert_eq!(bob.next().await, expected);
    }
    // After the hang-up, a new offer begins a new call, and a decline ends it unbegun.
    assert_eq!(bob.sent_offer("alice", "again").await, began("alice", true));
    assert_eq!(
        alice.sent(Relay::Decline, None, "no").await,
        began("Bob", false)
    );
}

trait NotifiedNow {
    fn notified_now(&self) -> bool;
}

impl NotifiedNow for Notify {
    fn notified_now(&self) -> bool {
        use futures_util::FutureExt;
        self.notified().now_or_never().is_some()
    }
}
