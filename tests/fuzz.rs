//! Property tests, bounded in count so they run in every test run: the parser and the call
//! state machine, each checked against an independent statement of the rules (what each
//! message must parse to; who must receive which frame), not only for not panicking.

use std::collections::HashMap;

use dialtone::signaling::protocol::{ClientMessage, CloseReason, LoginFailure, ProtocolError};
// The in-memory engine's synchronous API: the model checks every step at once. The same rules
// run against the Redis engine in tests/engines.rs.
use dialtone::signaling::queue;
use dialtone::signaling::registry::memory::{Connection, Registry};
use dialtone::signaling::registry::{CallState, Outbox, Queued, Relay, RelayError, Sent};
use futures_util::FutureExt;
use hyper_tungstenite::tungstenite::Message;
use proptest::prelude::*;
use serde_json::Value;

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
            Just("\"resume\""),
            Just("\"media\""),
            Just("\"alice\""),
            Just("\"failed\""),
            Just("\"hung-up\""),
        ]
        .prop_map(str::to_owned),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let key = prop_oneof![
        Just("type"),
        Just("username"),
        Just("token"),
        Just("otherUsername"),
        Just("offer"),
        Just("answer"),
        Just("candidate"),
        Just("audio"),
        Just("video"),
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

/// What the parser must make of a message, worked out independently of it: with
/// `serde_json::Value` and the README's protocol rules.
#[derive(Debug, PartialEq)]
enum Expected {
    Refused(&'static str),
    /// username, reconnect token, password, access token.
    Login(
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    Resume(String),
    Offer(Value, String),
    Answer(Value, Option<String>),
    Candidate(Value, Option<String>),
    Decline(Option<String>),
    Close(Option<String>, &'static str),
    Media(bool, bool, Option<String>),
}

/// The fields a message may define; a second copy of one of them makes the message ambiguous.
const KNOWN: [&str; 12] = [
    "type",
    "token",
    "password",
    "accessToken",
    "username",
    "otherUsername",
    "offer",
    "answer",
    "candidate",
    "audio",
    "video",
    "reason",
];

fn expected(text: &str, duplicate_known_key: bool) -> Expected {
    use Expected::*;
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(text) else {
        return Refused("invalid-json");
    };
    if duplicate_known_key {
        return Refused("invalid-json");
    }
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => return Refused("bad-message"),
    };
    let to = match fields.get("otherUsername") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => Ok(Some(name.clone())),
        Some(_) => Err(()),
    };
    let object = |field: &str| match fields.get(field) {
        Some(value @ Value::Object(_)) => Some(value.clone()),
        _ => None,
    };
    let bad = Refused("bad-message");
    match kind {
        "login" => {
            let optional = |field: &str| match fields.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(value)) => Ok(Some(value.clone())),
                Some(_) => Err(()),
            };
            let (Ok(token), Ok(password), Ok(access_token)) = (
                optional("token"),
                optional("password"),
                optional("accessToken"),
            ) else {
                return bad;
            };
            // The name may be left out only when an access token names the user.
            match (fields.get("username"), &access_token) {
                (Some(Value::String(name)), _) => {
                    Login(Some(name.clone()), token, password, access_token)
                }
                (None | Some(Value::Null), Some(_)) => Login(None, token, password, access_token),
                _ => bad,
            }
        }
        "resume" => match to {
            Ok(Some(to)) => Resume(to),
            _ => bad,
        },
        "offer" => match (object("offer"), to) {
            (Some(offer), Ok(Some(to))) => Offer(offer, to),
            _ => bad,
        },
        "answer" => match (object("answer"), to) {
            (Some(answer), Ok(to)) => Answer(answer, to),
            _ => bad,
        },
        "candidate" => match (object("candidate"), to) {
            (Some(candidate), Ok(to)) => Candidate(candidate, to),
            _ => bad,
        },
        "decline" => to.map(Decline).unwrap_or(bad),
        "close" | "leave" => {
            // Left out or null: hung up; a page may say the connection failed instead.
            let reason = match fields.get("reason") {
                None | Some(Value::Null) => Some("hung-up"),
                Some(Value::String(reason)) if reason == "hung-up" => Some("hung-up"),
                Some(Value::String(reason)) if reason == "failed" => Some("failed"),
                Some(_) => None,
            };
            match (to, reason) {
                (Ok(to), Some(reason)) => Close(to, reason),
                _ => bad,
            }
        }
        "media" => match (fields.get("audio"), fields.get("video"), to) {
            (Some(Value::Bool(audio)), Some(Value::Bool(video)), Ok(to)) => {
                Media(*audio, *video, to)
            }
            _ => bad,
        },
        _ => Refused("unknown-type"),
    }
}

/// What the parser made of it, in the same terms.
fn actual(text: &str) -> Expected {
    use Expected::*;
    let tree =
        |raw: &serde_json::value::RawValue| serde_json::from_str::<Value>(raw.get()).unwrap();
    let name = |to: Option<std::borrow::Cow<'_, str>>| to.map(|to| to.into_owned());
    match ClientMessage::parse(text) {
        Err(err) => {
            assert!(!err.to_string().is_empty(), "{err:?} has no message");
            if let ProtocolError::UnknownType(kind) = &err {
                assert_eq!(err.to_string(), format!("Command not found: {kind}"));
                assert!(kind.chars().count() <= 64);
            }
            Refused(err.code())
        }
        Ok(ClientMessage::Login {
            username,
            token,
            password,
            access_token,
        }) => Login(
            name(username),
            name(token),
            name(password),
            name(access_token),
        ),
        Ok(ClientMessage::Resume { to }) => Resume(to.into_owned()),
        Ok(ClientMessage::Offer { offer, to }) => Offer(tree(offer), to.into_owned()),
        Ok(ClientMessage::Answer { answer, to }) => Answer(tree(answer), name(to)),
        Ok(ClientMessage::Candidate { candidate, to }) => Candidate(tree(candidate), name(to)),
        Ok(ClientMessage::Decline { to }) => Decline(name(to)),
        Ok(ClientMessage::Close { to, reason }) => Close(
            name(to),
            match reason {
                CloseReason::HungUp => "hung-up",
                CloseReason::Failed => "failed",
                CloseReason::Disconnected => "disconnected",
            },
        ),
        Ok(ClientMessage::Media { audio, video, to }) => Media(audio, video, name(to)),
    }
}

/// A top-level message as a list of fields, so the test knows which keys repeat.
fn message() -> impl Strategy<Value = (String, bool)> {
    let key = prop_oneof![
        3 => Just("type"),
        1 => Just("username"),
        1 => Just("token"),
        1 => Just("password"),
        1 => Just("accessToken"),
        2 => Just("otherUsername"),
        1 => Just("offer"),
        1 => Just("answer"),
        1 => Just("candidate"),
        1 => Just("audio"),
        1 => Just("video"),
        1 => Just("reason"),
        1 => Just("sdp"),
        1 => Just("x"),
    ];
    prop::collection::vec((key, json_value(3)), 0..6).prop_map(|fields| {
        let duplicate = KNOWN
            .iter()
            .any(|known| fields.iter().filter(|(k, _)| k == known).count() > 1);
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        (format!("{{{}}}", fields.join(",")), duplicate)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_refused_as_invalid_json_or_parsed_as_the_rules_say(text in "\\PC{0,200}") {
        prop_assert_eq!(actual(&text), expected(&text, false), "{}", text);
    }

    #[test]
    fn protocol_shaped_messages_are_parsed_as_the_rules_say((text, duplicate) in message()) {
        prop_assert_eq!(actual(&text), expected(&text, duplicate), "{}", text);
    }

    #[test]
    fn any_protocol_shaped_json_is_answered_without_panicking(text in json_value(4)) {
        let _ = actual(&text);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Connect,
    Login(usize, usize),
    Offer(usize, usize),
    Relay(usize, u8, Option<usize>),
    Drop(usize),
    /// The socket's writer task empties its queue.
    Drain(usize),
}

const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];
/// Tiny queues, so that full queues (and their bell) come up in most runs.
const QUEUE: usize = 2;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Connect),
        2 => (0..6usize, 0..4usize).prop_map(|(c, n)| Op::Login(c, n)),
        3 => (0..6usize, 0..4usize).prop_map(|(c, n)| Op::Offer(c, n)),
        4 => (0..6usize, 0..5u8, prop::option::of(0..4usize))
            .prop_map(|(c, k, n)| Op::Relay(c, k, n)),
        1 => (0..6usize).prop_map(Op::Drop),
        3 => (0..6usize).prop_map(Op::Drain),
    ]
}

struct Socket {
    conn: Connection,
    rx: queue::Receiver<Queued>,
}

/// The registry as the README describes it, written without looking at how it does it: who
/// is logged in on which socket, who is calling whom, and what each socket's queue holds.
#[derive(Default)]
struct Model {
    users: HashMap<&'static str, usize>,
    names: Vec<Option<&'static str>>,
    calls: HashMap<&'static str, (&'static str, CallState)>,
    queues: Vec<Vec<String>>,
    rung: Vec<bool>,
}

impl Model {
    fn deliver(&mut self, to: usize, frame: String) {
        if self.queues[to].len() < QUEUE {
            self.queues[to].push(frame);
        } else {
            self.rung[to] = true;
        }
    }

    fn deliver_to(&mut self, name: &str, frame: String) {
        let socket = self.users[name];
        self.deliver(socket, frame);
    }

    fn login(&mut self, c: usize, name: &'static str) -> Result<(), LoginFailure> {
        if self.names[c].is_some() {
            return Err(LoginFailure::AlreadyLoggedIn);
        }
        if self.users.contains_key(name) {
            return Err(LoginFailure::NameTaken);
        }
        self.users.insert(name, c);
        self.names[c] = Some(name);
        self.deliver(c, format!("welcome {c}"));
        Ok(())
    }

    fn offer(&mut self, c: usize, to: &'static str, frame: &str) -> Result<Sent, RelayError> {
        let me = self.names[c].ok_or(RelayError::NotLoggedIn)?;
        if me == to {
            return Err(RelayError::SelfCall);
        }
        if !self.users.contains_key(to) {
            return Err(RelayError::UnknownUser(to.into()));
        }
        let began = match self.calls.get(me) {
            Some((with, _)) if *with == to => false,
            Some((with, _)) => return Err(RelayError::AlreadyInCall((*with).into())),
            None if self.calls.contains_key(to) => return Err(RelayError::Busy(to.into())),
            None => {
                self.calls.insert(me, (to, CallState::Calling));
                self.calls.insert(to, (me, CallState::Ringing));
                true
            }
        };
        self.deliver_to(to, frame.to_owned());
        Ok(Sent {
            to: to.into(),
            began,
        })
    }

    fn relay(
        &mut self,
        c: usize,
        kind: Relay,
        to: Option<&'static str>,
        frame: &str,
    ) -> Result<Sent, RelayError> {
        let me = self.names[c].ok_or(RelayError::NotLoggedIn)?;
        let ringing = self
            .calls
            .get(me)
            .is_some_and(|(_, state)| *state == CallState::Ringing);
        let partner = match (self.calls.get(me), to) {
            (None, None) => return Err(RelayError::NoCall),
            (Some((with, _)), Some(to)) if *with != to => {
                return Err(RelayError::NotInCallWith(to.into()));
            }
            (None, Some(to)) => return Err(RelayError::NotInCallWith(to.into())),
            (Some((with, _)), _) => *with,
        };
        match kind {
            Relay::Answer => {
                self.calls.insert(me, (partner, CallState::Active));
                self.calls.insert(partner, (me, CallState::Active));
            }
            Relay::Decline | Relay::Close => {
                self.calls.remove(me);
                self.calls.remove(partner);
            }
            Relay::Candidate | Relay::Media => {}
        }
        self.deliver_to(partner, frame.to_owned());
        Ok(Sent {
            to: partner.into(),
            began: kind == Relay::Answer && ringing,
        })
    }

    fn drop_socket(&mut self, c: usize) {
        self.queues[c].clear();
        self.rung[c] = false;
        let Some(me) = self.names[c].take() else {
            return;
        };
        self.users.remove(me);
        if let Some((partner, _)) = self.calls.remove(me) {
            self.calls.remove(partner);
            let close = format!(r#"{{"type":"close","username":"{me}","reason":"disconnected"}}"#);
            self.deliver_to(partner, close);
        }
    }
}

/// Empties a socket's queue as its writer would; checks it held exactly what the model says,
/// and that the bell rang exactly when a frame did not fit.
fn drain(c: usize, socket: &mut Socket, model: &mut Model) -> Result<(), TestCaseError> {
    let mut got = Vec::new();
    while let Some(frame) = socket.rx.try_recv() {
        match *frame {
            Message::Text(text) => got.push(text.to_string()),
            other => prop_assert!(false, "socket {} got a non-text frame {:?}", c, other),
        }
    }
    let frames = std::mem::take(&mut model.queues[c]);
    prop_assert_eq!(&got, &frames, "socket {} received the wrong frames", c);
    let rung = socket.rx.bell().notified().now_or_never().is_some();
    prop_assert_eq!(
        rung,
        std::mem::take(&mut model.rung[c]),
        "socket {}'s bell",
        c
    );
    Ok(())
}

/// The registry agrees with the model on every user and call.
fn check_state(registry: &Registry, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(registry.users(), model.users.len());
    for name in NAMES {
        let wanted = model
            .calls
            .get(name)
            .map(|(with, state)| (with.to_string(), *state));
        prop_assert_eq!(registry.call_of(name), wanted, "{}'s call", name);
    }
    let ringing = model
        .calls
        .values()
        .filter(|(_, s)| *s == CallState::Calling)
        .count();
    let active = model
        .calls
        .values()
        .filter(|(_, s)| *s == CallState::Active)
        .count()
        / 2;
    prop_assert_eq!(registry.calls(), (ringing, active));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_registry_delivers_what_the_rules_say_to_whom_they_say(
        ops in prop::collection::vec(op(), 1..80)
    ) {
        let registry = Registry::new();
        let mut model = Model::default();
        let mut sockets: Vec<Option<Socket>> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            let frame = format!("frame {step}");
            match op {
                Op::Connect => {
                    let (tx, rx) = queue::channel(QUEUE);
                    let conn = registry.connect(Outbox::new(tx));
                    sockets.push(Some(Socket { conn, rx }));
                    model.names.push(None);
                    model.queues.push(Vec::new());
                    model.rung.push(false);
                }
                Op::Login(c, n) => {
                    if let Some(Some(socket)) = sockets.get_mut(c) {
                        let got = socket.conn.login(NAMES[n], Message::text(format!("welcome {c}")));
                        prop_assert_eq!(got, model.login(c, NAMES[n]));
                    }
                }
                Op::Offer(c, n) => {
                    if let Some(Some(socket)) = sockets.get(c) {
                        let got = socket.conn.offer(NAMES[n], Message::text(frame.clone()));
                        prop_assert_eq!(got, model.offer(c, NAMES[n], &frame));
                    }
                }
                Op::Relay(c, kind, to) => {
                    if let Some(Some(socket)) = sockets.get(c) {
                        let kind = [Relay::Answer, Relay::Candidate, Relay::Decline, Relay::Close, Relay::Media]
                            [usize::from(kind)];
                        let to = to.map(|n| NAMES[n]);
                        let got = socket.conn.relay(kind, to, Message::text(frame.clone()));
                        prop_assert_eq!(got, model.relay(c, kind, to, &frame));
                    }
                }
                Op::Drop(c) => {
                    if let Some(socket) = sockets.get_mut(c)
                        && socket.take().is_some()
                    {
                        model.drop_socket(c);
                    }
                }
                Op::Drain(c) => {
                    if let Some(Some(socket)) = sockets.get_mut(c) {
                        drain(c, socket, &mut model)?;
                    }
                }
            }
            check_state(&registry, &model)?;
        }
        for (c, socket) in sockets.iter_mut().enumerate() {
            if let Some(socket) = socket {
                drain(c, socket, &mut model)?;
            }
        }
        sockets.clear();
        prop_assert_eq!(registry.users(), 0);
        prop_assert_eq!(registry.calls(), (0, 0));
    }
}
