//! What one socket's messages do: login, offer, answer, candidate, decline, close, media and
//! resume, each turned into a call on the engine seam and a reply for the sender.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{debug, info};

use super::{Allowance, CallSince, Standing};
use crate::access::{Code as AccessCode, Credentials};
use crate::config::{AccessMode, IceServer};
use crate::metrics::Metrics;
use crate::signaling::Signaling;
use crate::signaling::grace;
use crate::signaling::protocol::{ClientMessage, LoginFailure, ServerMessage, validate_name};
use crate::signaling::registry::{
    Connection, LoggedIn, Outbox, Relay, RelayError, Resumed, Sent, Tokens,
};

/// The socket a message came on: its client's address and its queue.
#[derive(Clone, Copy)]
pub(super) struct This<'a> {
    pub(super) client: IpAddr,
    pub(super) outbox: &'a Outbox,
}

/// Handles one text message; returns the reply for the sender, if any. With the memory
/// engine nothing in here waits; with Redis each step is one round trip under a timeout.
pub(super) async fn handle(
    conn: &mut Connection,
    standing: &mut Standing,
    text: &str,
    shared: &Signaling,
    allowance: &mut Allowance,
    this: This<'_>,
) -> Option<String> {
    let metrics = &shared.metrics;
    let message = match ClientMessage::parse(text) {
        Ok(message) => message,
        Err(err) => {
            metrics.error(err.code());
            return Some(ServerMessage::error(err.code(), &err.to_string()));
        }
    };
    match message {
        ClientMessage::Login {
            username,
            token,
            password,
            access_token,
        } => {
            let offered = Credentials {
                username: username.as_deref(),
                password: password.as_deref(),
                access_token: access_token.as_deref(),
            };
            login(
                conn,
                standing,
                offered,
                token.as_deref(),
                shared,
                allowance,
                this,
            )
            .await
        }
        ClientMessage::Resume { to } => {
            let result = match conn.name() {
                None => Err(RelayError::NotLoggedIn),
                Some(me) => {
                    let frame = ServerMessage::Resume { username: me }.to_json();
                    conn.resume(&to, frame).await
                }
            };
            match result {
                Ok(Resumed::Paired(with)) => {
                    standing.resume = None;
                    metrics.relayed("resume");
                    info!(user = conn.name(), with = &*with, "call resumed");
                    Some(ServerMessage::Resume { username: &with }.to_json())
                }
                Ok(Resumed::Waiting) => {
                    let until = Instant::now() + shared.settings.resume_grace;
                    standing.resume = Some((Arc::from(&*to), until));
                    None
                }
                Err(err) => relayed(conn, metrics, "resume", Err(err)),
            }
        }
        ClientMessage::Offer { offer, to } => {
            let frame = |me: &str| {
                ServerMessage::Offer {
                    offer,
                    username: me,
                }
                .to_json()
            };
            let result = match conn.name() {
                None => Err(RelayError::NotLoggedIn),
                Some(me) => conn.offer(&to, frame(me)).await,
            };
            // A new offer within a call renegotiates it; only the first one starts a call.
            if let Ok(Sent {
                to: callee,
                began: true,
            }) = &result
            {
                info!(client = %this.client, caller = conn.name(), callee = &**callee, "call started");
                standing.call = Some(CallSince {
                    with: callee.clone(),
                    since: Instant::now(),
                    answered: false,
                });
            }
            relayed(conn, metrics, "offer", result)
        }
        ClientMessage::Answer { answer, to } => {
            let frame = |me: &str| {
                ServerMessage::Answer {
                    answer,
                    username: me,
                }
                .to_json()
            };
            let result = relay_to(conn, Relay::Answer, to.as_deref(), frame).await;
            if let Ok(Sent {
                to: caller,
                began: true,
            }) = &result
            {
                info!(client = %this.client, caller = &**caller, callee = conn.name(), "call answered");
                standing.call = Some(CallSince {
                    with: caller.clone(),
                    since: Instant::now(),
                    answered: true,
                });
            }
            relayed(conn, metrics, Relay::Answer.as_str(), result)
        }
        ClientMessage::Candidate { candidate, to } => {
            let frame = |me: &str| {
                ServerMessage::Candidate {
                    candidate,
                    username: me,
                }
                .to_json()
            };
            relay(conn, metrics, Relay::Candidate, to.as_deref(), frame).await
        }
        ClientMessage::Decline { to } => {
            let frame = |me: &str| ServerMessage::Decline { username: me }.to_json();
            let result = relay_to(conn, Relay::Decline, to.as_deref(), frame).await;
            if let Ok(Sent { to: caller, .. }) = &result {
                standing.call = None;
                info!(client = %this.client, user = conn.name(), with = &**caller, reason = "declined", "call ended");
            }
            relayed(conn, metrics, Relay::Decline.as_str(), result)
        }
        ClientMessage::Close { to, reason } => {
            let frame = |me: &str| {
                ServerMessage::Close {
                    username: me,
                    reason,
                }
                .to_json()
            };
            let result = relay_to(conn, Relay::Close, to.as_deref(), frame).await;
            if let Ok(Sent { to: with, .. }) = &result {
                let duration = standing.end_call(with);
                info!(client = %this.client, user = conn.name(), with = &**with, reason = reason.as_words(), duration, "call ended");
            }
            relayed(conn, metrics, Relay::Close.as_str(), result)
        }
        ClientMessage::Media { audio, video, to } => {
            let frame = |me: &str| {
                ServerMessage::Media {
                    audio,
                    video,
                    username: me,
                }
                .to_json()
            };
            relay(conn, metrics, Relay::Media, to.as_deref(), frame).await
        }
    }
}

/// Relays an answer, candidate, decline or close; `frame` builds it from the sender's name as
/// the registry knows it.
async fn relay(
    conn: &Connection,
    metrics: &Metrics,
    kind: Relay,
    to: Option<&str>,
    frame: impl FnOnce(&str) -> String,
) -> Option<String> {
    let result = relay_to(conn, kind, to, frame).await;
    relayed(conn, metrics, kind.as_str(), result)
}

/// [`relay`] without the reply: to whom it went, or why not.
async fn relay_to(
    conn: &Connection,
    kind: Relay,
    to: Option<&str>,
    frame: impl FnOnce(&str) -> String,
) -> Result<Sent, RelayError> {
    match conn.name() {
        None => Err(RelayError::NotLoggedIn),
        Some(me) => conn.relay(kind, to, frame(me)).await,
    }
}

/// Turns a relay's outcome into the metrics, the log, and the reply for the sender.
fn relayed(
    conn: &Connection,
    metrics: &Metrics,
    kind: &str,
    result: Result<Sent, RelayError>,
) -> Option<String> {
    match result {
        Ok(Sent { to, .. }) => {
            metrics.relayed(kind);
            debug!(from = conn.name(), to = &*to, "{kind} relayed");
            None
        }
        Err(err) => {
            metrics.error(err.code());
            debug!(from = conn.name(), "{kind} refused: {err}");
            Some(err.reply())
        }
    }
}

/// A login: the rate and name checks; then a reconnect token takes back a session held here
/// (or, with `[access]` on, held on another instance) without a new credential check; else
/// `[access]` decides, and the name is claimed.
async fn login(
    conn: &mut Connection,
    standing: &mut Standing,
    offered: Credentials<'_>,
    token: Option<&str>,
    shared: &Signaling,
    allowance: &mut Allowance,
    this: This<'_>,
) -> Option<String> {
    let client = this.client;
    let asked = offered.username.unwrap_or_default();
    let refuse = |code: LoginFailure, message: &str| {
        shared.metrics.error(code.as_str());
        info!(%client, user = shown(asked), code = code.as_str(), "login refused");
        Some(
            ServerMessage::Login {
                success: false,
                username: None,
                ice_servers: None,
                code: Some(code),
                message: Some(message),
                token: None,
                resumed: None,
                other_username: None,
            }
            .to_json(),
        )
    };
    if !allowance.logins.take(std::time::Instant::now()) {
        return refuse(
            LoginFailure::RateLimited,
            "too many login attempts on this connection: wait a minute",
        );
    }
    if let Some(current) = conn.name() {
        let message = format!("this connection is already logged in as {current}");
        return refuse(LoginFailure::AlreadyLoggedIn, &message);
    }
    match offered.username {
        Some(name) => {
            if let Err(why) = validate_name(name) {
                return refuse(LoginFailure::InvalidName, why);
            }
        }
        // Only a token carries a name; anywhere else the name must be typed.
        None if shared.access.mode() != AccessMode::Token => {
            return refuse(
                LoginFailure::InvalidName,
                "login needs \"username\": this server does not take names from tokens",
            );
        }
        None => {}
    }
    let new_token = grace::new_token();
    let new_digest = grace::digest_hex(&new_token);
    let presented = token.map(grace::digest_hex);
    let restricted = shared.access.mode() != AccessMode::Open;
    // The token of the user's last login takes the session back from whoever holds it here:
    // the parked task of a dropped socket, or a socket that still looks open.
    if let (Some(name), Some(token)) = (offered.username, token)
        && let Some(mut held) = shared.sessions.take(name, token).await
    {
        let ice_servers = ice_servers(shared, name);
        let welcome = welcome(name, &ice_servers, &new_token);
        standing.claim = Some(shared.sessions.register(name, &new_token));
        standing.resume = held.resume.take();
        held.conn
            .rebind(this.outbox.clone(), held.queue.as_mut(), false, |with| {
                Some(welcome(true, with))
            });
        // The fresh membership this socket started with was never logged in: dropping it
        // changes nothing.
        *conn = held.conn;
        conn.set_token(&new_digest).await;
        info!(%client, user = name, "came back with its token");
        send_presence(shared, this.outbox);
        return None;
    }
    // With [access] on, a token for a session held on another instance also needs no new
    // check (the access token may have expired since): try that before checking anything.
    if restricted && let (Some(name), Some(presented)) = (offered.username, presented.as_deref()) {
        let tokens = Tokens {
            presented: Some(presented),
            new: &new_digest,
            take_back_only: true,
        };
        match claim(conn, standing, name, tokens, &new_token, shared, this).await {
            Ok(()) => return None,
            Err(LoginFailure::Unavailable) => {
                return refuse_for(LoginFailure::Unavailable, name, &refuse);
            }
            // Nothing to take back (or the name is in use here): the credential decides.
            Err(_) => {}
        }
    }
    // Boxed: a token check may fetch the JWKS (a TLS client's future), and every session's
    // task would otherwise carry that future's size for its whole life.
    let name = match Box::pin(shared.access.admit(offered, client)).await {
        Ok(name) => name,
        Err(denied) => {
            shared.metrics.auth_failed(denied.reason.as_str());
            debug!(%client, reason = denied.reason.as_str(), "access denied");
            let code = match denied.code {
                AccessCode::Required => LoginFailure::AuthRequired,
                AccessCode::Failed => LoginFailure::AuthFailed,
            };
            return refuse(code, &denied.message);
        }
    };
    // With several instances the token may belong to a session held on another one.
    let tokens = Tokens {
        presented: presented.as_deref(),
        new: &new_digest,
        take_back_only: false,
    };
    match claim(conn, standing, &name, tokens, &new_token, shared, this).await {
        Ok(()) => None,
        Err(failure) => refuse_for(failure, &name, &refuse),
    }
}

/// The sentence for a refused claim.
fn refuse_for(
    failure: LoginFailure,
    name: &str,
    refuse: &impl Fn(LoginFailure, &str) -> Option<String>,
) -> Option<String> {
    match failure {
        LoginFailure::NameTaken => refuse(
            LoginFailure::NameTaken,
            &format!("the name {name} is taken: choose another"),
        ),
        LoginFailure::Unavailable => refuse(
            LoginFailure::Unavailable,
            "the service cannot reach its backplane right now: try again in a moment",
        ),
        other => refuse(other, "login refused"),
    }
}

/// Claims `name` on the engine (or takes a session back on another instance) and welcomes
/// the socket.
async fn claim(
    conn: &mut Connection,
    standing: &mut Standing,
    name: &str,
    tokens: Tokens<'_>,
    new_token: &str,
    shared: &Signaling,
    this: This<'_>,
) -> Result<(), LoginFailure> {
    let client = this.client;
    let ice_servers = ice_servers(shared, name);
    let welcome = welcome(name, &ice_servers, new_token);
    let welcome = |how: &LoggedIn| match how {
        LoggedIn::Fresh => welcome(false, None),
        LoggedIn::TakenOver(with) => welcome(true, with.as_deref()),
    };
    let how = conn.login(name, tokens, welcome).await?;
    standing.claim = Some(shared.sessions.register(name, new_token));
    send_presence(shared, this.outbox);
    match how {
        LoggedIn::Fresh => info!(%client, user = name, "logged in"),
        LoggedIn::TakenOver(_) => {
            info!(%client, user = name, "came back with its token from another instance")
        }
    }
    Ok(())
}

/// The `iceServers` of a login: the configured ones with TURN credentials minted for `name`,
/// and the built-in relay's.
fn ice_servers(shared: &Signaling, name: &str) -> Vec<IceServer> {
    let now = SystemTime::now();
    let mut ice_servers = shared.settings.ice_servers_for(name, now);
    if let Some(relay) = &shared.turn {
        ice_servers.push(relay.ice_server_for(name, now));
    }
    ice_servers
}

/// The successful login reply, given whether a session was taken back and its call.
fn welcome<'a>(
    name: &'a str,
    ice_servers: &'a [IceServer],
    new_token: &'a str,
) -> impl Fn(bool, Option<&str>) -> String + 'a {
    move |resumed, with| {
        ServerMessage::Login {
            success: true,
            username: Some(name),
            ice_servers: Some(ice_servers),
            code: None,
            message: None,
            token: Some(new_token),
            resumed: resumed.then_some(true),
            other_username: with,
        }
        .to_json()
    }
}

/// A page that just logged in gets the presence list at once (after the login reply), not at
/// the next change.
fn send_presence(shared: &Signaling, outbox: &Outbox) {
    if let Some(frame) = shared.presence.as_ref().and_then(|p| p.current()) {
        outbox.deliver(frame);
    }
}

/// A refused name as a log shows it: cut short, since it can be anything. It is logged as a
/// field, never with `%`, so the log writer escapes control characters in it (a name cannot
/// forge a log line).
fn shown(name: &str) -> String {
    let mut cut: String = name.chars().take(40).collect();
    if cut.len() < name.len() {
        cut.push('…');
    }
    cut
}
