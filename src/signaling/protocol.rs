//! The wire format: JSON text frames tagged by `"type"`, compatible with the tutorial's client.
//!
//! The client names the other side in `otherUsername`; the server names the sender in
//! `username`, always from its own records. SDP and ICE payloads are relayed as the exact bytes
//! the client sent ([`RawValue`]), never parsed into a tree and printed again.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::IceServer;

/// Longest user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// A message from a browser, checked and typed. Borrows from the frame it was parsed from.
#[derive(Debug, Clone)]
pub enum ClientMessage<'a> {
    /// `username` may be left out only when `accessToken` names the user.
    Login {
        username: Option<Cow<'a, str>>,
        /// The reconnect token of an earlier login under this name, to take it back.
        token: Option<Cow<'a, str>>,
        /// The site password (`[access] mode = "password"`).
        password: Option<Cow<'a, str>>,
        /// A signed JWT (`[access] mode = "token"`).
        access_token: Option<Cow<'a, str>>,
    },
    Offer {
        offer: &'a RawValue,
        to: Cow<'a, str>,
    },
    /// After a login on a server that forgot everyone (it restarted): "I was in a call with
    /// `to`". The call is restored when both sides have asked for each other.
    Resume {
        to: Cow<'a, str>,
    },
    Answer {
        answer: &'a RawValue,
        to: Option<Cow<'a, str>>,
    },
    Candidate {
        candidate: &'a RawValue,
        to: Option<Cow<'a, str>>,
    },
    Decline {
        to: Option<Cow<'a, str>>,
    },
    /// `close`, or the tutorial's other name for it, `leave`; `reason` says whether the person
    /// hung up (the default) or the browsers could not connect.
    Close {
        to: Option<Cow<'a, str>>,
        reason: CloseReason,
    },
    /// My microphone (`audio`) and camera (`video`) are on or off: the other side says so
    /// over my picture. More reliable than the track events a browser may or may not fire.
    Media {
        audio: bool,
        video: bool,
        to: Option<Cow<'a, str>>,
    },
}

/// Every field any client message may carry. Fields a message does not define are ignored,
/// whatever their type, so clients can add fields (a client-sent `username` on an offer is
/// never read). Parsing into this flat struct first lets payloads stay raw, which serde's
/// internally tagged enums cannot do.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    username: Option<&'a RawValue>,
    #[serde(rename = "otherUsername", borrow)]
    other_username: Option<&'a RawValue>,
    #[serde(borrow)]
    offer: Option<&'a RawValue>,
    #[serde(borrow)]
    answer: Option<&'a RawValue>,
    #[serde(borrow)]
    candidate: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    password: Option<&'a RawValue>,
    #[serde(rename = "accessToken", borrow)]
    access_token: Option<&'a RawValue>,
    #[serde(borrow)]
    audio: Option<&'a RawValue>,
    #[serde(borrow)]
    video: Option<&'a RawValue>,
    #[serde(borrow)]
    reason: Option<&'a RawValue>,
}

/// Why a message was refused. Each is answered with an `error` and the socket stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("Command not found: {0}")]
    UnknownType(String),
    #[error("{0}")]
    BadMessage(String),
}

impl ProtocolError {
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::InvalidJson(_) => "invalid-json",
            ProtocolError::UnknownType(_) => "unknown-type",
            ProtocolError::BadMessage(_) => "bad-message",
        }
    }
}

impl<'a> ClientMessage<'a> {
    pub fn parse(text: &'a str) -> Result<ClientMessage<'a>, ProtocolError> {
        if !text.trim_start().starts_with('{') {
            return Err(ProtocolError::InvalidJson(
                "a message must be a JSON object such as {\"type\":\"login\",\"username\":\"alice\"}"
                    .into(),
            ));
        }
        let envelope: Envelope<'a> = serde_json::from_str(text).map_err(|err| {
            // Keep serde's position; drop its Rust type names.
            ProtocolError::InvalidJson(err.to_string())
        })?;
        let kind = match envelope.kind {
            None => {
                return Err(bad(
                    "every message needs a \"type\", e.g. \"login\" or \"offer\"",
                ));
            }
            Some(raw) => string(raw).ok_or_else(|| bad("\"type\" must be a string"))?,
        };
        let to = || optional_name(envelope.other_username);
        Ok(match &*kind {
            "login" => {
                let access_token = optional_string(envelope.access_token, "accessToken")?;
                let username = match envelope.username {
                    None if access_token.is_some() => None,
                    raw => Some(
                        raw.and_then(string)
                            .ok_or_else(|| bad("login needs \"username\", a string"))?,
                    ),
                };
                ClientMessage::Login {
                    username,
                    token: optional_string(envelope.token, "token")?,
                    password: optional_string(envelope.password, "password")?,
                    access_token,
                }
            }
            "resume" => ClientMessage::Resume {
                to: to()?.ok_or_else(|| {
                    bad("resume needs \"otherUsername\": the user whose call to resume")
                })?,
            },
            "offer" => ClientMessage::Offer {
                offer: object(envelope.offer, "offer")?,
                to: to()?.ok_or_else(|| {
                    bad("offer needs \"otherUsername\": the name of the user to call")
                })?,
            },
            "answer" => ClientMessage::Answer {
                answer: object(envelope.answer, "answer")?,
                to: to()?,
            },
            "candidate" => ClientMessage::Candidate {
                candidate: object(envelope.candidate, "candidate")?,
                to: to()?,
            },
            "decline" => ClientMessage::Decline { to: to()? },
            "close" | "leave" => ClientMessage::Close {
                to: to()?,
                reason: close_reason(envelope.reason)?,
            },
            "media" => ClientMessage::Media {
                audio: boolean(envelope.audio, "audio")?,
                video: boolean(envelope.video, "video")?,
                to: to()?,
            },
            other => return Err(ProtocolError::UnknownType(other.chars().take(64).collect())),
        })
    }
}

fn bad(message: &str) -> ProtocolError {
    ProtocolError::BadMessage(message.to_owned())
}

/// A JSON string's value: borrowed when it has no escapes, as browsers send names.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw.get())
            .ok()
            .map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// An optional string field; present with another type, it is refused.
fn optional_string<'a>(
    raw: Option<&'a RawValue>,
    field: &str,
) -> Result<Option<Cow<'a, str>>, ProtocolError> {
    match raw {
        None => Ok(None),
        Some(raw) => string(raw)
            .map(Some)
            .ok_or_else(|| bad(&format!("\"{field}\" must be a string"))),
    }
}

/// `"otherUsername": null` arrives here as `None`: serde maps a JSON null to `None` for an
/// `Option` field, raw or not.
fn optional_name(raw: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, ProtocolError> {
    match raw {
        None => Ok(None),
        Some(raw) => string(raw)
            .map(Some)
            .ok_or_else(|| bad("\"otherUsername\" must be a string")),
    }
}

fn boolean(raw: Option<&RawValue>, field: &str) -> Result<bool, ProtocolError> {
    match raw.map(RawValue::get) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(bad(&format!("media needs \"{field}\": true or false"))),
    }
}

/// A page may say why it ends a call: it hung up, or the browsers could not connect. The
/// server adds `disconnected` itself; a page cannot claim it.
fn close_reason(raw: Option<&RawValue>) -> Result<CloseReason, ProtocolError> {
    let Some(raw) = raw else {
        return Ok(CloseReason::HungUp);
    };
    match string(raw).as_deref() {
        Some("hung-up") => Ok(CloseReason::HungUp),
        Some("failed") => Ok(CloseReason::Failed),
        _ => Err(bad(
            "\"reason\" on close must be \"hung-up\" or \"failed\" (or left out)",
        )),
    }
}

fn object<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<&'a RawValue, ProtocolError> {
    match raw {
        Some(raw) if raw.get().starts_with('{') => Ok(raw),
        Some(_) => Err(bad(&format!("\"{field}\" must be a JSON object"))),
        None => Err(bad(&format!("{field} needs \"{field}\", a JSON object"))),
    }
}

/// Checks a name against dialtone's rule: 1 to 32 characters, no control characters, no
/// whitespace at either end, and no `"` or `\` (which would need escaping on the wire).
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    let count = name.chars().count();
    if count == 0 {
        return Err("the name is empty: choose 1 to 32 characters");
    }
    if count > MAX_NAME_CHARS {
        return Err("the name is too long: use at most 32 characters");
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err("the name starts or ends with a space: remove it");
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err("the name has a control character, a quote or a backslash: remove it");
    }
    Ok(())
}

/// The form a name is compared in: Unicode case-folded and NFC-normalised, so "Bob", "BOB"
/// and "bob" are one user (phone keyboards capitalise the first letter), and a precomposed
/// "é" is the same as "e" plus a combining accent. Names are shown as their owners typed
/// them; only uniqueness and lookups use this. Borrowed for the usual lower-case ASCII name.
pub fn name_key(name: &str) -> Cow<'_, str> {
    use unicode_normalization::UnicodeNormalization;
    if name.is_ascii() {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Cow::Owned(name.to_ascii_lowercase());
        }
        return Cow::Borrowed(name);
    }
    let composed: String = name.nfc().collect();
    Cow::Owned(caseless::default_case_fold_str(&composed).nfc().collect())
}

/// Whether two names are the same user (see [`name_key`]).
pub fn same_name(a: &str, b: &str) -> bool {
    a == b || name_key(a) == name_key(b)
}

/// Why a login reply was negative, in a field the page can branch on. Serialized through
/// [`LoginFailure::as_str`], the one place its wire names are spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    NameTaken,
    InvalidName,
    AlreadyLoggedIn,
    RateLimited,
    /// The shared backplane (Redis) cannot be reached: nobody can be logged in safely.
    Unavailable,
    /// `[access]` asks for a password or token and none came.
    AuthRequired,
    /// The password or token was wrong, expired or not for this name.
    AuthFailed,
}

impl LoginFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::NameTaken => "name-taken",
            LoginFailure::InvalidName => "invalid-name",
            LoginFailure::AlreadyLoggedIn => "already-logged-in",
            LoginFailure::RateLimited => "rate-limited",
            LoginFailure::Unavailable => "unavailable",
            LoginFailure::AuthRequired => "auth-required",
            LoginFailure::AuthFailed => "auth-failed",
        }
    }
}

impl Serialize for LoginFailure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a call ended, added to `close` so the page can say "hung up", "connection lost" or
/// "the connection failed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseReason {
    /// The other person ended the call.
    HungUp,
    /// The other person's connection to dialtone was lost, and they did not come back.
    Disconnected,
    /// The two browsers could not connect (or lost each other, and a restart did not help).
    Failed,
}

impl CloseReason {
    /// For the log line that says how a call ended.
    pub fn as_words(self) -> &'static str {
        match self {
            CloseReason::HungUp => "hung up",
            CloseReason::Disconnected => "disconnected",
            CloseReason::Failed => "connection failed",
        }
    }
}

/// A message to a browser. `username` is always the sender as the server knows it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage<'a> {
    Login {
        success: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        username: Option<&'a str>,
        #[serde(rename = "iceServers", skip_serializing_if = "Option::is_none")]
        ice_servers: Option<&'a [IceServer]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<LoginFailure>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
        /// A new secret for taking this name back after a dropped connection. It rotates at
        /// every login.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        /// Present (true) when the token took back a session the server still held.
        #[serde(skip_serializing_if = "Option::is_none")]
        resumed: Option<bool>,
        /// With `resumed`: the user the held session is in a call with, if any.
        #[serde(rename = "otherUsername", skip_serializing_if = "Option::is_none")]
        other_username: Option<&'a str>,
    },
    Offer {
        offer: &'a RawValue,
        username: &'a str,
    },
    Answer {
        answer: &'a RawValue,
        username: &'a str,
    },
    Candidate {
        candidate: &'a RawValue,
        username: &'a str,
    },
    Decline {
        username: &'a str,
    },
    Close {
        username: &'a str,
        reason: CloseReason,
    },
    /// Both sides asked to resume their call with each other: it is active again.
    Resume {
        username: &'a str,
    },
    /// The partner's microphone and camera are on or off.
    Media {
        audio: bool,
        video: bool,
        username: &'a str,
    },
    /// The callee, named in `username`, is in or being rung for another call.
    Busy {
        username: &'a str,
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
    /// The presence list (`[presence] enabled`): who is online, the recipient included, in
    /// name order, at most [`ONLINE_LIMIT`] of them; `total` counts everyone.
    Online {
        users: &'a [OnlineUser<'a>],
        total: usize,
    },
}

/// Most names in one presence list.
pub const ONLINE_LIMIT: usize = 200;

/// One entry of the presence list.
#[derive(Debug, Serialize)]
pub struct OnlineUser<'a> {
    pub username: &'a str,
    /// In a call, or ringing for one.
    pub busy: bool,
}

impl ServerMessage<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every field is a string, bool, enum or valid
        // raw JSON, and every map key is a string.
        serde_json::to_string(self).expect("server messages always serialize")
    }

    pub fn error(code: &str, message: &str) -> String {
        ServerMessage::Error { code, message }.to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_case_folded_and_composed() {
        assert!(matches!(name_key("bob"), Cow::Borrowed("bob")));
        assert_eq!(name_key("Bob"), "bob");
        // Full folding, which lower-casing is not: ß is ss, final sigma is sigma.
        assert_eq!(name_key("Straße"), name_key("STRASSE"));
        assert_eq!(name_key("ΟΔΥΣΣΕΥΣ"), name_key("οδυσσευς"));
        assert_eq!(name_key("Οδυσσευς"), name_key("οδυσσευσ"));
        // Composed and decomposed accents.
        assert_eq!(name_key("\u{c9}mile"), name_key("e\u{301}mile"));
        assert!(same_name("ÉMILE", "e\u{301}mile"));
        assert!(!same_name("bob", "bobby"));
        assert!(!same_name("émile", "emile"));
    }

    fn raw(json: &str) -> &RawValue {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn parses_the_tutorial_client_messages() {
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"login","username":"alice"}"#),
            Ok(ClientMessage::Login { username: Some(username), token: None, password: None, access_token: None }) if username == "alice"
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"login","accessToken":"a.b.c"}"#),
            Ok(ClientMessage::Login { username: None, access_token: Some(t), .. }) if t == "a.b.c"
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"login","username":"al","password":"pw"}"#),
            Ok(ClientMessage::Login { password: Some(p), .. }) if p == "pw"
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"login","username":"alice","token":"s3cret"}"#),
            Ok(ClientMessage::Login { token: Some(token), .. }) if token == "s3cret"
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"resume","otherUsername":"bob"}"#),
            Ok(ClientMessage::Resume { to }) if to == "bob"
        ));
        let offer =
            r#"{"type":"offer","offer":{"type":"offer","sdp":"v=0\r\n"},"otherUsername":"bob"}"#;
        match ClientMessage::parse(offer).unwrap() {
            ClientMessage::Offer { offer, to } => {
                assert_eq!(offer.get(), r#"{"type":"offer","sdp":"v=0\r\n"}"#);
                assert_eq!(to, "bob");
            }
            other => panic!("{other:?}"),
        }
        match ClientMessage::parse(r#"{"type":"login","username":"\u00f1and\u00fa"}"#).unwrap() {
            ClientMessage::Login { username, .. } => assert_eq!(username.as_deref(), Some("ñandú")),
            other => panic!("{other:?}"),
        }
        // The seed's client sends answers and candidates without otherUsername.
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"answer","answer":{"sdp":"x"}}"#),
            Ok(ClientMessage::Answer { to: None, .. })
        ));
        assert!(matches!(
            ClientMessage::parse(
                r#"{"type":"candidate","candidate":{"candidate":"c"},"otherUsername":null}"#
            ),
            Ok(ClientMessage::Candidate { to: None, .. })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"leave"}"#),
            Ok(ClientMessage::Close {
                to: None,
                reason: CloseReason::HungUp
            })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"decline","otherUsername":"alice"}"#),
            Ok(ClientMessage::Decline { to: Some(to) }) if to == "alice"
        ));
    }

    #[test]
    fn ignores_fields_a_message_does_not_define_whatever_their_type() {
        let text = r#"{"type":"offer","username":42,"extra":[1,{"a":null}],"offer":{},"otherUsername":"bob"}"#;
        assert!(matches!(
            ClientMessage::parse(text),
            Ok(ClientMessage::Offer { to, .. }) if to == "bob"
        ));
    }

    #[test]
    fn refuses_malformed_messages_with_a_code() {
        let code = |text: &str| ClientMessage::parse(text).unwrap_err().code();
        assert_eq!(code("not json"), "invalid-json");
        assert_eq!(code(r#"{"type":"login""#), "invalid-json");
        assert_eq!(code("[1,2]"), "invalid-json");
        assert_eq!(code("42"), "invalid-json");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown-type");
        assert_eq!(code(r#"{"username":"x"}"#), "bad-message");
        assert_eq!(code(r#"{"type":7}"#), "bad-message");
        assert_eq!(code(r#"{"type":{"a":1}}"#), "bad-message");
        assert_eq!(code(r#"{"type":"login"}"#), "bad-message");
        assert_eq!(code(r#"{"type":"login","username":["a"]}"#), "bad-message");
        assert_eq!(code(r#"{"type":"offer","offer":{}}"#), "bad-message");
        assert_eq!(
            code(r#"{"type":"offer","offer":"sdp","otherUsername":"b"}"#),
            "bad-message"
        );
        assert_eq!(
            code(r#"{"type":"offer","offer":{},"otherUsername":5}"#),
            "bad-message"
        );
        assert_eq!(code(r#"{"type":"candidate"}"#), "bad-message");
        assert_eq!(
            code(r#"{"type":"login","username":"a","token":7}"#),
            "bad-message"
        );
        assert_eq!(code(r#"{"type":"resume"}"#), "bad-message");
        // Only an access token lets the name be left out; credentials must be strings.
        assert_eq!(code(r#"{"type":"login","password":"pw"}"#), "bad-message");
        assert_eq!(
            code(r#"{"type":"login","username":"a","password":1}"#),
            "bad-message"
        );
        assert_eq!(
            code(r#"{"type":"login","accessToken":null}"#),
            "bad-message"
        );
        assert_eq!(
            code(r#"{"type":"login","accessToken":"t","username":5}"#),
            "bad-message"
        );
        // Nesting is skipped without recursion: no stack overflow, whatever the depth (the
        // message size limit bounds it). A deep array where an object belongs is refused.
        let nest = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep = format!(
            r#"{{"type":"offer","offer":{},"otherUsername":"b"}}"#,
            nest(100_000)
        );
        assert_eq!(code(&deep), "bad-message");
        let ignored = format!(r#"{{"type":"leave","x":{}}}"#, nest(100_000));
        assert!(matches!(
            ClientMessage::parse(&ignored),
            Ok(ClientMessage::Close {
                to: None,
                reason: CloseReason::HungUp
            })
        ));
        assert_eq!(
            ClientMessage::parse(r#"{"type":"dance"}"#)
                .unwrap_err()
                .to_string(),
            "Command not found: dance"
        );
    }

    #[test]
    fn name_rule() {
        // Lengths are in characters: 32 two- or three-byte characters are a valid name.
        let (wide, wider) = ("ñ".repeat(32), "李".repeat(32));
        for good in [
            "alice",
            "Bob Smith",
            "ñandú",
            "a",
            &"x".repeat(32),
            "李雷",
            &wide,
            &wider,
        ] {
            assert_eq!(validate_name(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            " alice",
            "alice ",
            "a\nb",
            "a\u{7}",
            &"x".repeat(33),
            &"ñ".repeat(33),
            "a\"b",
            "a\\b",
            "\t",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_messages_have_the_tutorial_shapes() {
        let json =
            |m: ServerMessage| serde_json::from_str::<serde_json::Value>(&m.to_json()).unwrap();
        assert_eq!(
            json(ServerMessage::Offer {
                offer: raw(r#"{"sdp":"x"}"#),
                username: "alice"
            }),
            serde_json::json!({"type":"offer","offer":{"sdp":"x"},"username":"alice"})
        );
        assert_eq!(
            json(ServerMessage::Busy { username: "bob" }),
            serde_json::json!({"type":"busy","username":"bob"})
        );
        assert_eq!(
            json(ServerMessage::Close {
                username: "bob",
                reason: CloseReason::HungUp
            }),
            serde_json::json!({"type":"close","username":"bob","reason":"hung-up"})
        );
        assert_eq!(
            json(ServerMessage::Login {
                success: false,
                username: None,
                ice_servers: None,
                code: Some(LoginFailure::NameTaken),
                message: Some("taken"),
                token: None,
                resumed: None,
                other_username: None,
            }),
            serde_json::json!({"type":"login","success":false,"code":"name-taken","message":"taken"})
        );
    }
}
