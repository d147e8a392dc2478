//! One WebSocket from upgrade to close: a reader loop here, a writer task draining a bounded
//! queue, a heartbeat, and the server's shutdown notice.
//!
//! The reader handles one message at a time, so a sender's messages reach their receiver in
//! the order sent. Every exit path (close, error, timeout, slow reader, shutdown) drops the
//! registry [`Connection`], which logs the user out and tells their partner, unless the
//! grace period holds the user for a reconnect (`after_end`). What each message does is in
//! `messages`.

mod messages;

use messages::{This, handle};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_tungstenite::tungstenite::Message;
use hyper_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use hyper_tungstenite::tungstenite::protocol::CloseFrame;
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use hyper_tungstenite::{HyperWebsocket, HyperWebsocketStream};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use super::Signaling;
use super::grace::{self, Claim, Handoff, Held};
use super::protocol::{CloseReason, ServerMessage, same_name};
use super::queue;
use super::registry::{Connection, Outbox, Queued};
use crate::config::Limits;
use crate::limits::{Flood, Permit, TokenBucket, Verdict};
use crate::turn::TurnRelay;

/// Frames waiting for one client. A browser's burst of ICE candidates is a few dozen; a queue
/// this deep that is still full means the client stopped reading.
const QUEUE_FRAMES: usize = 256;
/// Frames the writer task feeds are gathered up to this many bytes before they are written,
/// so a burst goes out in one system call (one TLS record) rather than one per frame; the
/// flush after each burst writes the rest. The buffer keeps its largest burst's capacity,
/// and an idle socket has seen none. (0 made every frame its own write: bench/RESULTS.md.)
// (A literal: a mutated `8 * 1024` would only change how much a burst gathers, which no test
// can see; bench/run measures it.)
pub(crate) const WRITE_BUFFER: usize = 8192;
/// How long a closing socket gets to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A user left for good: their allocations on the built-in relay go too.
fn forget_allocations(relay: Option<TurnRelay>, name: Option<String>) {
    if let (Some(relay), Some(name)) = (relay, name) {
        tokio::spawn(async move { relay.forget(&name).await });
    }
}

/// Why a session ended, which decides the Close frame it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed (with this code, if it sent one), or the connection dropped.
    Gone(Option<u16>),
    /// The TCP connection ended without TLS's close_notify: cut (a process that died, a
    /// network that dropped, or someone truncating the stream), not closed.
    Truncated,
    /// Nothing heard for two ping intervals.
    Silent,
    /// Our queue to the client filled up.
    SlowReader,
    TooBig,
    BadUtf8,
    /// It kept sending over its rate.
    Flooding,
    /// It never logged in.
    NoLogin,
    /// Another instance took its name while Redis was away.
    NameLost,
    /// A login with this user's token took the session to another socket.
    TakenOver,
    ServerShutdown,
}

impl End {
    fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::Gone(_) | End::Truncated | End::SlowReader => return None,
            End::Silent => (CloseCode::Away, "no heartbeat"),
            End::TooBig => (CloseCode::Size, "message too big"),
            End::BadUtf8 => (CloseCode::Invalid, "text frames must be UTF-8"),
            End::Flooding => (CloseCode::Policy, "too many messages"),
            End::NoLogin => (CloseCode::Policy, "log in first"),
            End::NameLost => (CloseCode::Policy, "your name was taken over: log in again"),
            End::TakenOver => (
                CloseCode::from(4001),
                "logged in again on another connection",
            ),
            End::ServerShutdown => (CloseCode::Away, "server restarting"),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }

    /// Whether the user is held for a grace period: the connection went without the user
    /// meaning it to. A Close 1000 is a page leaving on purpose; a protocol offence, or a
    /// name that is no longer theirs, is not a reason to hold anything.
    fn keeps_grace(self) -> bool {
        match self {
            End::Gone(code) => code != Some(1000),
            End::Truncated | End::Silent | End::SlowReader | End::ServerShutdown => true,
            End::TooBig
            | End::BadUtf8
            | End::Flooding
            | End::NoLogin
            | End::NameLost
            | End::TakenOver => false,
        }
    }

    /// The close code for the metrics: the one sent, or the client's.
    fn code(self) -> Option<u16> {
        match self {
            End::Gone(code) => code,
            other => other.close_frame().map(|frame| frame.code.into()),
        }
    }
}

/// How a session ended, in the words of the log.
impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Gone(None) => f.write_str("the connection closed without a WebSocket close"),
            End::Gone(Some(code)) => write!(f, "the client closed the WebSocket (code {code})"),
            End::Truncated => {
                f.write_str("the connection was cut: it ended without TLS close_notify (truncated)")
            }
            End::Silent => f.write_str("nothing heard for two ping intervals"),
            End::SlowReader => f.write_str("the client stopped reading and its queue filled up"),
            End::TooBig => f.write_str("a message over max_message_bytes"),
            End::BadUtf8 => f.write_str("a text frame that is not UTF-8"),
            End::Flooding => f.write_str("too many messages"),
            End::NoLogin => f.write_str("no login within login_timeout_secs"),
            End::NameLost => f.write_str("another instance took its name while Redis was away"),
            End::TakenOver => f.write_str("logged in again on another connection"),
            End::ServerShutdown => f.write_str("the server is shutting down"),
        }
    }
}

/// One connection's allowance: messages per second with a burst, and logins per minute.
struct Allowance {
    messages: TokenBucket,
    flood: Flood,
    logins: TokenBucket,
}

impl Allowance {
    fn new(limits: &Limits, now: Instant) -> Allowance {
        let now = now.into_std();
        Allowance {
            messages: TokenBucket::new(
                limits.message_burst.get(),
                f64::from(limits.messages_per_second.get()),
                now,
            ),
            flood: Flood::new(limits.message_burst.get(), now),
            logins: TokenBucket::new(
                limits.logins_per_minute.get(),
                f64::from(limits.logins_per_minute.get()) / 60.0,
                now,
            ),
        }
    }
}

/// What a logged-in socket holds besides its registry membership.
#[derive(Default)]
struct Standing {
    /// Where a login with this user's token asks for the session.
    claim: Option<Claim>,
    /// A request to resume a call: with whom, and until when it waits.
    resume: Option<(Arc<str>, Instant)>,
    /// The call this socket started or answered, for the log line when it ends here.
    call: Option<CallSince>,
}

/// When this side's part in a call began: its offer (the caller) or its answer (the callee).
/// The other side's moment is on its own socket, perhaps on another instance.
struct CallSince {
    with: Arc<str>,
    since: Instant,
    answered: bool,
}

impl Standing {
    /// The log fields for a call with `with` that ends now: how long it lasted, as this side
    /// saw it.
    fn end_call(&mut self, with: &str) -> String {
        match self.call.take() {
            Some(call) if same_name(&call.with, with) => {
                let secs = call.since.elapsed().as_secs();
                let from = if call.answered { "answer" } else { "offer" };
                format!("{secs} s since the {from}")
            }
            _ => "unknown".to_owned(),
        }
    }
}

/// When the session's one timer next wakes: the next Ping, giving up on a silent client, or
/// the end of a wait (for a login, for a resume) that is running, whichever comes first.
fn next_wake(next_ping: Instant, silent_at: Instant, waits: [Option<Instant>; 2]) -> Instant {
    waits
        .into_iter()
        .flatten()
        .fold(next_ping.min(silent_at), Instant::min)
}

/// Serves one upgraded socket until it ends. `permit` holds the connection's place in the
/// admission counts until then.
pub async fn serve(
    websocket: HyperWebsocket,
    shared: Arc<Signaling>,
    client: IpAddr,
    permit: Permit,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = match websocket.await {
        Ok(socket) => socket,
        Err(err) => {
            debug!(%client, "websocket upgrade failed: {err}");
            return;
        }
    };
    let settings = &shared.settings;
    let metrics = &shared.metrics;
    let (sink, mut stream) = socket.split();
    let (tx, rx) = queue::channel(QUEUE_FRAMES);
    let outbox = Outbox::new(tx);
    let mut conn = shared.registry.connect(outbox.clone());
    let mut writer = tokio::spawn(write_frames(sink, rx));
    debug!(%client, "websocket open");

    // One timer serves the heartbeat: it wakes for the next Ping, or sooner when the client
    // has been silent long enough to be given up (two intervals after it was last heard,
    // exactly, not whenever the next Ping happens to be due), or when a wait for a resume
    // ends, or when the time to log in is up. (Each timer is ~100 bytes of every session,
    // idle or not.)
    let period = settings.ping_interval;
    let mut last_heard = Instant::now();
    let mut next_ping = last_heard + period;
    let login_by = last_heard + settings.limits.login_timeout();
    // The first Ping is due before any silence can be (one interval against two).
    let mut heartbeat = Box::pin(tokio::time::sleep_until(next_ping.min(login_by)));
    let mut allowance = Allowance::new(&settings.limits, Instant::now());
    let mut standing = Standing::default();
    let mut handoff: Option<Handoff> = None;

    // A socket upgraded during the drain closes at once: the change it would wait for has
    // already happened.
    let end = if *shutdown.borrow_and_update() {
        End::ServerShutdown
    } else {
        loop {
            tokio::select! {
                frame = stream.next() => {
                    let message = match frame {
                        None => break End::Gone(None),
                        Some(Err(err)) => break end_for(&err),
                        Some(Ok(message)) => message,
                    };
                    last_heard = Instant::now();
                    if matches!(message, Message::Text(_) | Message::Binary(_))
                        && !allowance.messages.take(last_heard.into_std())
                    {
                        match allowance.flood.over_rate(last_heard.into_std()) {
                            Verdict::Abuse => break End::Flooding,
                            Verdict::Drop => continue,
                            Verdict::Reply => {
                                metrics.error("rate-limited");
                                let reply = ServerMessage::error(
                                    "rate-limited",
                                    "too many messages: this one was dropped; slow down",
                                );
                                if !outbox.deliver(Message::text(reply)) {
                                    break End::SlowReader;
                                }
                                continue;
                            }
                        }
                    }
                    let reply = match message {
                        // Boxed: inline, this future would grow every session's own future by
                        // ~300 bytes, idle or not; one allocation per message costs less.
                        Message::Text(text) => {
                            let this = This { client, outbox: &outbox };
                            Box::pin(handle(&mut conn, &mut standing, &text, &shared, &mut allowance, this)).await
                        }
                        Message::Binary(_) => {
                            metrics.error("binary-frame");
                            Some(ServerMessage::error(
                                "binary-frame",
                                "send JSON in text frames; binary frames are not part of the protocol",
                            ))
                        }
                        Message::Close(frame) => break End::Gone(frame.map(|f| f.code.into())),
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
                    };
                    if let Some(reply) = reply
                        && !outbox.deliver(Message::text(reply))
                    {
                        break End::SlowReader;
                    }
                    // A request to resume that now waits: the timer wakes for it too.
                    if let Some((_, at)) = &standing.resume
                        && *at < heartbeat.deadline()
                    {
                        heartbeat.as_mut().reset(*at);
                    }
                }
                () = &mut heartbeat => {
                    let now = Instant::now();
                    let silent_at = last_heard + 2 * period;
                    let login_wait = conn.name().is_none().then_some(login_by);
                    if login_wait.is_some_and(|by| now >= by) {
                        break End::NoLogin;
                    }
                    if now >= silent_at {
                        break End::Silent;
                    }
                    if now >= next_ping {
                        if !outbox.deliver(Message::Ping(Default::default())) {
                            break End::SlowReader;
                        }
                        next_ping = now + period;
                    }
                    if let Some((to, _)) = standing.resume.take_if(|(_, at)| now >= *at)
                        && conn.resume_lapsed(&to).await
                    {
                        let close = ServerMessage::Close { username: &to, reason: CloseReason::Disconnected };
                        if !outbox.deliver(Message::text(close.to_json())) {
                            break End::SlowReader;
                        }
                    }
                    let resume_at = standing.resume.as_ref().map(|(_, at)| *at);
                    heartbeat.as_mut().reset(next_wake(next_ping, silent_at, [login_wait, resume_at]));
                }
                request = grace::next_handoff(&mut standing.claim) => {
                    handoff = Some(request);
                    break End::TakenOver;
                }
                () = outbox.bell().notified() => {
                    break if conn.evicted() { End::NameLost } else { End::SlowReader };
                }
                // The value only ever turns true (or the sender goes, at the very end).
                _ = shutdown.changed() => break End::ServerShutdown,
            }
        }
    };

    let name = conn.name().map(str::to_owned);
    let parked = after_end(end, handoff, conn, &mut standing, &shared, client);
    metrics.closed(end.code());
    match (end, &name) {
        // The grace line said it already: one line per event.
        _ if parked => {}
        (End::Gone(Some(1000)), Some(_)) => info!(%client, user = name.as_deref(), "logged out"),
        (End::Gone(_) | End::Truncated, None) => debug!(%client, "websocket closed: {end}"),
        _ => info!(%client, user = name.as_deref(), "websocket closed: {end}"),
    }
    if end == End::SlowReader {
        // Its writer is stuck on a client that does not read; there is nothing left to flush.
        writer.abort();
        return;
    }
    let closing = end
        .close_frame()
        .map(|frame| outbox.deliver(Message::Close(Some(frame))));
    drop(outbox);
    let finish = async {
        // A socket dropped for silence is presumed dead: no reply will come.
        if closing == Some(true) && end != End::Silent {
            // Complete the close handshake: read until the client's Close. Dropping the socket
            // with its reply unread makes the kernel send a reset, and the client can lose our
            // Close frame (browsers then report 1006 instead of our code).
            while let Some(Ok(frame)) = stream.next().await {
                if let Message::Close(_) = frame {
                    break;
                }
            }
        }
        if let Ok(Some(sink)) = (&mut writer).await {
            // Boxed: inline, the reunited socket would grow every session's future, idle or
            // not, by the size of a WebSocket (~600 bytes, measured with bench/run).
            Box::pin(goodbye(sink, stream)).await;
        }
    };
    if tokio::time::timeout(CLOSE_GRACE, finish).await.is_err() {
        writer.abort();
    }
    drop(permit);
}

/// What becomes of the user once their socket ended: handed to the socket that took the
/// session over, held for `resume_grace` (a connection that was lost, not closed, with a
/// place to park it), or logged out, which ends their call and tells the partner. Returns
/// whether the user was held, which the log line that says so has told.
fn after_end(
    end: End,
    handoff: Option<Handoff>,
    conn: Connection,
    standing: &mut Standing,
    shared: &Signaling,
    client: IpAddr,
) -> bool {
    let settings = &shared.settings;
    let name = conn.name().map(str::to_owned);
    let in_call = name.as_deref().and_then(|me| shared.registry.call_of(me));
    let sessions = &shared.sessions;
    let held = Held {
        conn,
        queue: None,
        resume: standing.resume.take(),
    };
    match (handoff, standing.claim.take()) {
        (Some(handoff), claim) => {
            // The new socket carries on with the session; if it gave up waiting, it ends here.
            if let Err(held) = handoff.send(held) {
                if let Some(claim) = &claim {
                    sessions.forget(claim);
                }
                drop(held);
                forget_allocations(shared.turn.clone(), name.clone());
            }
        }
        (None, Some(claim))
            if end.keeps_grace()
                && !settings.resume_grace.is_zero()
                && sessions.may_park(settings.limits.max_connections.get()) =>
        {
            let grace = settings.resume_grace.as_secs();
            info!(%client, user = name.as_deref(), with = in_call.as_ref().map(|(with, _)| with.as_str()), "websocket closed: {end}; holding the name and any call for {grace} s");
            let relay = shared.turn.clone();
            let who = name.clone();
            sessions.park(held, claim, settings.resume_grace, move || {
                forget_allocations(relay, who);
            });
            return true;
        }
        (None, claim) => {
            if let Some(claim) = &claim {
                sessions.forget(claim);
            }
            drop(held);
            forget_allocations(shared.turn.clone(), name.clone());
            if let Some((with, _)) = &in_call {
                let duration = standing.end_call(with);
                let reason = if end == End::Gone(Some(1000)) {
                    "left"
                } else {
                    "connection lost"
                };
                info!(%client, user = name.as_deref(), with = with.as_str(), reason, duration, "call ended");
            }
        }
    }
    false
}

fn end_for(err: &WsError) -> End {
    match err {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => End::TooBig,
        WsError::Utf8(_) => End::BadUtf8,
        // rustls's word for a TCP end without close_notify.
        WsError::Io(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => End::Truncated,
        _ => End::Gone(None),
    }
}

type Sink = futures_util::stream::SplitSink<HyperWebsocketStream, Message>;

/// Ends the connection under the WebSocket: TLS close_notify before the TCP FIN (RFC 8446
/// §6.1), without which the client cannot tell our goodbye from someone cutting the
/// connection.
async fn goodbye(sink: Sink, stream: futures_util::stream::SplitStream<HyperWebsocketStream>) {
    if let Ok(mut socket) = sink.reunite(stream) {
        let _ = socket.get_mut().shutdown().await;
    }
}

/// Owns the socket's write half. Frames already queued are written together before one flush,
/// so a burst of candidates costs one write, not one per frame. Gives the half back after a
/// clean close, for the TLS goodbye.
async fn write_frames(mut sink: Sink, mut rx: queue::Receiver<Queued>) -> Option<Sink> {
    'outer: while let Some(frame) = rx.recv().await {
        let mut closing = matches!(*frame, Message::Close(_));
        sink.feed(*frame).await.ok()?;
        while !closing && let Some(frame) = rx.try_recv() {
            closing = matches!(*frame, Message::Close(_));
            sink.feed(*frame).await.ok()?;
        }
        sink.flush().await.ok()?;
        if closing {
            break 'outer;
        }
    }
    sink.close().await.ok()?;
    Some(sink)
}
