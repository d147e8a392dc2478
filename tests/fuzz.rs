//! No panic reachable from the network: property tests, bounded in count so they run in
//! every test run, over message parsing and over the call state machine.

use std::sync::Arc;

use dialtone::signaling::protocol::ClientMessage;
use dialtone::signaling::registry::{CallState, Connection, Outbox, Queued, Registry, Relay};
use hyper_tungstenite::tungstenite::Message;
use proptest::prelude::*;
use tokio::sync::{Notify, mpsc};

/// JSON-ish text built from the protocol's own words, so the parser's deeper paths are
/// reached far more often than by random bytes.
fn json_value(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:?}")),
        "[a-z\\\\\"\\u{0}-\\u{1f}ñ]{0,12}".prop_map(|s| format!("{s:?}")),
        prop_oneof![
            Just("\"login\""),
            Just("\"offer\""),
            Just("\"answer\""),
            Just("\"candidate\""),
            Just("\"decline\""),
            Just("\"close\""),
            Just("\"leave\""),
            Just("\"alice\""),
        ]
        .prop_map(str::to_owned),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let key = prop_oneof![
        Just("type"),
        Just("username"),
        Just("otherUsername"),
        Just("offer"),
        Just("answer"),
        Just("candidate"),
        Just("sdp"),
        Just("x"),
    ];
    prop_oneof![
        2 => leaf,
        1 => prop::collection::vec(json_value(depth - 1), 0..4)
            .prop_map(|items| format!("[{}]", items.join(","))),
        2 => prop::collection::vec((key, json_value(depth - 1)), 0..6).prop_map(|fields| {
            let fields: Vec<String> =
                fields.into_iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", fields.join(","))
        }),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsing_never_panics_on_any_text(text in "\\PC{0,200}") {
        let _ = ClientMessage::parse(&text);
    }

    #[test]
    fn parsing_never_panics_on_protocol_shaped_json(text in json_value(4)) {
        let _ = ClientMessage::parse(&text);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Connect,
    Login(usize, usize),
    Offer(usize, usize),
    Relay(usize, u8, Option<usize>),
    Drop(usize),
}

const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Connect),
        2 => (0..6usize, 0..4usize).prop_map(|(c, n)| Op::Login(c, n)),
        3 => (0..6usize, 0..4usize).prop_map(|(c, n)| Op::Offer(c, n)),
        4 => (0..6usize, 0..4u8, prop::option::of(0..4usize))
            .prop_map(|(c, k, n)| Op::Relay(c, k, n)),
        1 => (0..6usize).prop_map(Op::Drop),
    ]
}

/// Partners point at each other, and only at users who are logged in.
fn check_invariants(registry: &Registry) -> Result<(), TestCaseError> {
    let mut in_calls = 0;
    for name in NAMES {
        if let Some((with, state)) = registry.call_of(name) {
            in_calls += 1;
            let back = registry.call_of(&with);
            prop_assert!(
                back.is_some(),
                "{name} is in a call with {with}, who is not"
            );
            let (back_with, back_state) = back.unwrap();
            prop_assert_eq!(&back_with, name);
            let consistent = matches!(
                (state, back_state),
                (CallState::Calling, CallState::Ringing)
                    | (CallState::Ringing, CallState::Calling)
                    | (CallState::Active, CallState::Active)
            );
            prop_assert!(consistent, "{name}: {state:?}, {with}: {back_state:?}");
        }
    }
    let (ringing, active) = registry.calls();
    prop_assert_eq!(in_calls, 2 * (ringing + active));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_call_state_machine_stays_consistent(ops in prop::collection::vec(op(), 1..80)) {
        let registry = Registry::new();
        // Tiny queues, so full queues (and their bell) are exercised too.
        let mut sockets: Vec<Option<(Connection, mpsc::Receiver<Queued>)>> = Vec::new();
        let connect = |registry: &Registry| {
            let (tx, rx) = mpsc::channel(2);
            Some((registry.connect(Outbox::new(tx, Arc::new(Notify::new()))), rx))
        };
        for op in ops {
            match op {
                Op::Connect => sockets.push(connect(&registry)),
                Op::Login(c, n) => {
                    if let Some(Some((conn, _))) = sockets.get_mut(c) {
                        let _ = conn.login(NAMES[n], Message::text("welcome"));
                    }
                }
                Op::Offer(c, n) => {
                    if let Some(Some((conn, _))) = sockets.get(c) {
                        let _ = conn.offer(NAMES[n], Message::text("offer"));
                    }
                }
                Op::Relay(c, kind, to) => {
                    if let Some(Some((conn, _))) = sockets.get(c) {
                        let kind = [Relay::Answer, Relay::Candidate, Relay::Decline, Relay::Close]
                            [usize::from(kind)];
                        let _ = conn.relay(kind, to.map(|n| NAMES[n]), Message::text("x"));
                    }
                }
                Op::Drop(c) => {
                    if let Some(socket) = sockets.get_mut(c) {
                        socket.take();
                    }
                }
            }
            // Drain the queues now and then, as writer tasks would.
            for (_, rx) in sockets.iter_mut().flatten() {
                while rx.try_recv().is_ok() {}
            }
            check_invariants(&registry)?;
        }
        sockets.clear();
        prop_assert_eq!(registry.users(), 0);
        prop_assert_eq!(registry.calls(), (0, 0));
    }
}
