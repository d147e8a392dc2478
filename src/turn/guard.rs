//! What the `turn` crate must not see. A [`Gate`] reads every message a client sends before
//! the crate does, over any transport: what it must not see is answered or dropped here.
//! [`Guard`] is the relay's UDP socket as the crate sees it, with a gate in front; the
//! streams (TCP, TLS) have one gate per transport (`stream.rs`). (Each allocation's own
//! socket is `socket.rs`'s.) The guard also feeds the data path's shortcut over UDP
//! (`channels.rs`): it sees which relayed address each Allocate got and which channels the
//! crate bound, and relays a client's ChannelData on those itself.
//!
//! Why the guard answers the first, unauthenticated request itself: the crate keeps every
//! nonce it hands out in a map that is pruned only when a client comes back with that nonce
//! after its hour, so a flood of spoofed requests would grow it without end. The crate does
//! not tie a nonce to a client, only to its map, so the guard lets one request through now
//! and then, keeps the nonce the crate answers with, and challenges everyone else with that
//! same nonce. The map then grows by a couple of nonces an hour, and by the "stale nonce"
//! answers given to clients that already hold a valid credential.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS, AttrType,
};
use stun::error_code::{
    CODE_ALLOC_QUOTA_REACHED, CODE_BAD_REQUEST, CODE_FORBIDDEN, CODE_INSUFFICIENT_CAPACITY,
    CODE_UNAUTHORIZED, CODE_UNKNOWN_ATTRIBUTE, ErrorCodeAttribute,
};
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_INDICATION, CLASS_REQUEST, Getter, METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND, Message,
};
use stun::textattrs::TextAttribute;
use stun::uattrs::UnknownAttributes;
use tokio::net::UdpSocket;
use tracing::warn;
use webrtc_util::Conn;

use super::channels::{Out, Shortcuts, channel_data};
use super::policy::{self, Denied};
use super::stun::{answer, decode, unknown_attributes, xor_address};
use super::{Client, Counters, State, Transport, key_for, user_of};
use crate::limits::{Sometimes, TokenBucket};

/// Requests one address may send: enough for many browsers behind one NAT (a call costs a
/// few dozen), far below what would let one address keep the relay busy.
const REQUESTS_PER_SECOND: f64 = 100.0;
const REQUEST_BURST: u32 = 200;
/// Addresses whose request rate is tracked; past this, they are all forgotten at once.
const TRACKED_ADDRESSES: usize = 10_000;
/// How long the guard hands out one nonce of the crate's: half the crate's hour, so a client
/// that got it late still has half an hour before the crate calls it stale.
const NONCE_REUSE: Duration = Duration::from_secs(30 * 60);
/// While the guard has no nonce of the crate's, how often it lets a request fetch one.
const NONCE_FETCH_INTERVAL: Duration = Duration::from_secs(1);

/// What the guard does with one datagram from a client.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Hand it to the crate.
    Pass,
    /// Say nothing: malformed, over the rate, or a denied Send indication.
    Drop,
    /// Send this answer back and keep it from the crate.
    Answer(Vec<u8>),
    /// A request over the client address's rate: dropped over UDP (the client retransmits
    /// later); over a stream, where nothing is retransmitted, it waits for the rate instead
    /// (and the connection's reading with it). Counted as dropped by the caller.
    OverRate,
}

/// The request rate of each client address, shared by every transport's gate: a client
/// does not get a second allowance by opening a TCP connection next to its UDP one.
pub(crate) type Rates = Mutex<HashMap<IpAddr, TokenBucket>>;

/// The checks in front of one transport's crate engine. The nonce is per engine: each one
/// keeps a map of the nonces it handed out, and knows only those.
pub struct Gate {
    state: Arc<State>,
    transport: Transport,
    rates: Arc<Rates>,
    nonce: Mutex<Nonce>,
    error_log: Sometimes,
}

/// The listening UDP socket, as the crate's server reads and writes it.
pub struct Guard {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    gate: Gate,
    /// The data path's shortcut (`channels.rs`).
    shortcuts: Shortcuts,
}

/// The crate's nonce the guard challenges with, and when it last let a request fetch one.
#[derive(Default)]
struct Nonce {
    current: Option<(String, Instant)>,
    fetched: Option<Instant>,
}

impl Guard {
    pub(crate) fn new(socket: UdpSocket, gate: Gate) -> std::io::Result<Guard> {
        Ok(Guard {
            local: socket.local_addr()?,
            socket: Arc::new(socket),
            shortcuts: Shortcuts::new(Arc::clone(&gate.state)),
            gate,
        })
    }

    fn client(&self, addr: SocketAddr) -> Client {
        Client {
            addr,
            local: self.local,
            transport: Transport::Udp,
        }
    }
}

impl Gate {
    pub(crate) fn new(state: Arc<State>, transport: Transport, rates: Arc<Rates>) -> Gate {
        Gate {
            state,
            transport,
            rates,
            nonce: Mutex::default(),
            error_log: Sometimes::new(),
        }
    }

    fn counters(&self) -> &Counters {
        self.state.counters(self.transport)
    }

    /// The 401 challenge: the crate's current nonce and the realm, answered here; or, when
    /// there is no fresh nonce, this request goes to the crate (at most once a second) so
    /// that its answer brings one, and the others wait for it.
    fn challenge(&self, message: &Message, now: Instant) -> Verdict {
        let mut nonce = crate::sync::lock(&self.nonce);
        match &nonce.current {
            Some((text, since)) if now.saturating_duration_since(*since) < NONCE_REUSE => {
                let text = text.clone();
                drop(nonce);
                answer(
                    message,
                    CODE_UNAUTHORIZED,
                    None,
                    vec![
                        Box::new(TextAttribute::new(ATTR_NONCE, text)),
                        Box::new(TextAttribute::new(
                            ATTR_REALM,
                            self.state.credentials.realm.clone(),
                        )),
                    ],
                )
            }
            _ if nonce
                .fetched
                .is_none_or(|at| now.saturating_duration_since(at) >= NONCE_FETCH_INTERVAL) =>
            {
                nonce.fetched = Some(now);
                Verdict::Pass
            }
            _ => Verdict::Drop,
        }
    }

    /// Whether the gate has a nonce to challenge with that is not yet due for renewal.
    pub(crate) fn has_fresh_nonce(&self, now: Instant) -> bool {
        crate::sync::lock(&self.nonce)
            .current
            .as_ref()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) < NONCE_REUSE)
    }

    /// A nonce put in the engine's map by its owner (the stream engines, which own their
    /// map): challenges use it from now on, so none has to be fetched. Over a stream a
    /// request is never retransmitted, so one dropped while a fetch is under way would
    /// leave its client waiting for good.
    pub(crate) fn use_nonce(&self, text: String, now: Instant) {
        crate::sync::lock(&self.nonce).current = Some((text, now));
    }

    /// Keeps the nonce of a 401 the crate sends.
    fn learn_nonce(&self, response: &[u8]) {
        let Some(message) = decode(response) else {
            return;
        };
        let mut code = ErrorCodeAttribute::default();
        if code.get_from(&message).is_err() || code.code != CODE_UNAUTHORIZED {
            return;
        }
        if let Ok(text) = TextAttribute::get_from_as(&message, ATTR_NONCE) {
            let mut nonce = crate::sync::lock(&self.nonce);
            nonce.current = Some((text.text, Instant::now()));
        }
    }

    /// Whether `client` is within its request rate.
    fn within_rate(&self, client: IpAddr, now: Instant) -> bool {
        let mut rates = crate::sync::lock(&self.rates);
        if rates.len() >= TRACKED_ADDRESSES && !rates.contains_key(&client) {
            // Forgetting an address only gives it a fresh burst.
            rates.clear();
        }
        rates
            .entry(client)
            .or_insert_with(|| TokenBucket::new(REQUEST_BURST, REQUESTS_PER_SECOND, now))
            .take(now)
    }

    /// Decides what happens to `data` from `client`.
    pub(crate) fn judge(&self, data: &[u8], client: Client, now: SystemTime) -> Verdict {
        let counters = self.counters();
        let drop = || {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            Verdict::Drop
        };
        // ChannelData (first two bits 01) is the data path: the crate relays it only on a
        // channel this guard let the client bind.
        if data.first().is_some_and(|b| b & 0xC0 == 0x40) {
            return Verdict::Pass;
        }
        let Some(message) = decode(data) else {
            return drop();
        };
        let class = message.typ.class;
        let method = message.typ.method;
        if class == CLASS_INDICATION {
            if method != METHOD_SEND {
                return drop();
            }
            // A Send to a denied peer has no permission in the crate anyway; this is the
            // second wall, and it keeps such datagrams from costing a lookup there.
            return match self.first_denied_peer(&message) {
                None => Verdict::Pass,
                Some(_) => {
                    counters.peers_denied.fetch_add(1, Ordering::Relaxed);
                    Verdict::Drop
                }
            };
        }
        if class != CLASS_REQUEST {
            return drop();
        }
        if !self.within_rate(client.addr.ip(), Instant::now()) {
            return Verdict::OverRate;
        }
        if method == METHOD_BINDING {
            // STUN: answered without credentials, so the relay is also the STUN server.
            return Verdict::Pass;
        }
        if ![
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ]
        .contains(&method)
        {
            return answer(&message, CODE_BAD_REQUEST, None, Vec::new());
        }
        let unknown = unknown_attributes(&message);
        if !unknown.is_empty() {
            return answer(
                &message,
                CODE_UNKNOWN_ATTRIBUTE,
                None,
                vec![Box::new(UnknownAttributes(unknown))],
            );
        }
        let challenge = || self.challenge(&message, Instant::now());
        if !message.contains(ATTR_MESSAGE_INTEGRITY) {
            return challenge();
        }
        let text = |attr: AttrType| {
            TextAttribute::get_from_as(&message, attr)
                .ok()
                .map(|t| t.text)
        };
        let (Some(username), Some(realm), Some(_nonce)) =
            (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE))
        else {
            return answer(&message, CODE_BAD_REQUEST, None, Vec::new());
        };
        let key = key_for(&self.state, &username, &realm, client, now);
        let verified = key.filter(|key| {
            MessageIntegrity(key.clone())
                .check(&mut message.clone())
                .is_ok()
        });
        let Some(key) = verified else {
            counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            return challenge();
        };
        match method {
            METHOD_ALLOCATE => self.admit_allocation(&message, client, &username, &key),
            METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND => {
                match self.first_denied_peer(&message) {
                    None => Verdict::Pass,
                    Some((peer, why)) => {
                        counters.peers_denied.fetch_add(1, Ordering::Relaxed);
                        if self.error_log.now() {
                            warn!(
                                client = %client.addr,
                                transport = self.transport.label(),
                                user = user_of(&username),
                                %peer,
                                "TURN relay: peer refused ({})",
                                match why {
                                    Denied::Never => "never relayed to",
                                    Denied::Policy => "not allowed by [turn_server] peers",
                                }
                            );
                        }
                        answer(&message, CODE_FORBIDDEN, Some(&key), Vec::new())
                    }
                }
            }
            _ => Verdict::Pass,
        }
    }

    /// An authenticated Allocate: within the quotas, it goes to the crate and is remembered
    /// as pending until the crate's answer passes [`Guard::send_to`].
    fn admit_allocation(
        &self,
        message: &Message,
        client: Client,
        username: &str,
        key: &[u8],
    ) -> Verdict {
        let mut allocations = self.state.lock();
        if allocations.open.contains_key(&client) {
            // The crate answers 437 (allocation mismatch) or repeats its success.
            return Verdict::Pass;
        }
        let user = user_of(username);
        let pending_for_user = allocations
            .pending
            .iter()
            .filter(|(addr, name)| **addr != client && user_of(name) == user)
            .count();
        let users = allocations.per_user.get(user).copied().unwrap_or(0) + pending_for_user;
        let code = if users >= self.state.max_per_user {
            Some(CODE_ALLOC_QUOTA_REACHED)
        } else if allocations.open.len() + allocations.pending.len() >= self.state.max_allocations {
            Some(CODE_INSUFFICIENT_CAPACITY)
        } else {
            None
        };
        if let Some(code) = code {
            drop(allocations);
            if self.error_log.now() {
                warn!(
                    client = %client.addr,
                    transport = self.transport.label(),
                    user,
                    "TURN relay: allocation refused ({})",
                    code.0
                );
            }
            return answer(message, code, Some(key), Vec::new());
        }
        allocations.pending.insert(client, username.to_owned());
        Verdict::Pass
    }

    /// What the crate sends to `client`, seen on its way out: an Allocate answer settles the
    /// pending allocation, and a 401 brings the nonce to challenge with.
    pub(crate) fn sent(&self, buf: &[u8], client: Client) {
        match buf.get(..2) {
            // Allocate success response.
            Some([0x01, 0x03]) => self.state.opened(client),
            // Allocate error response: perhaps the 401 that brings a nonce.
            Some([0x01, 0x13]) => {
                self.state.lock().pending.remove(&client);
                self.learn_nonce(buf);
            }
            // Another error response (class bits 0b11): a 401 to a Refresh, a permission…
            Some([first, second]) if first & 0x01 == 0x01 && second & 0x10 == 0x10 => {
                self.learn_nonce(buf);
            }
            _ => {}
        }
    }

    /// The first XOR-PEER-ADDRESS in `message` the policy denies (all of them are checked: a
    /// request may carry several). A malformed one counts as denied.
    fn first_denied_peer(&self, message: &Message) -> Option<(String, Denied)> {
        for attr in &message.attributes.0 {
            if attr.typ != ATTR_XOR_PEER_ADDRESS {
                continue;
            }
            let Some(peer) = xor_address(&attr.value, &message.transaction_id.0) else {
                return Some(("(malformed)".into(), Denied::Never));
            };
            if let Err(why) = policy::check(self.state.peers, peer.ip(), &self.state.own) {
                return Some((peer.to_string(), why));
            }
        }
        None
    }
}

#[async_trait]
impl Conn for Guard {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "the listening socket is not connected".into(),
        ))
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("use recv_from".into()))
    }

    /// The next datagram the crate may see; answers and drops the rest on the way.
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, client) = match self.socket.recv_from(buf).await {
                Ok(received) => received,
                Err(err) => {
                    // An error on an unconnected UDP socket is transient (an ICMP report, a
                    // full buffer): the crate would stop serving for good if it saw one.
                    if self.gate.error_log.now() {
                        warn!("TURN relay: receive error: {err}");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // ChannelData on a channel the crate bound: relayed from here (`channels.rs`).
            if let Some((number, data)) = channel_data(&buf[..n])
                && let Some((relay, peer)) = self.shortcuts.route(self.client(client), number)
            {
                // As in the crate, a failed send (a denied peer: counted) drops the datagram.
                relay.relay_on_channel(data, peer).await;
                continue;
            }
            match self
                .gate
                .judge(&buf[..n], self.client(client), SystemTime::now())
            {
                Verdict::Pass => {
                    self.shortcuts.requested(&buf[..n], self.client(client));
                    return Ok((n, client));
                }
                Verdict::Drop => {}
                Verdict::OverRate => {
                    self.gate.counters().dropped.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Answer(bytes) => {
                    let _ = self.socket.send_to(&bytes, client).await;
                }
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("use send_to".into()))
    }

    /// What the crate sends to clients; an Allocate answer settles the pending allocation.
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.gate.sent(buf, self.client(target));
        let out = || Out::Datagram(Arc::clone(&self.socket));
        self.shortcuts.answered(buf, self.client(target), out);
        Ok(self.socket.send_to(buf, target).await?)
    }

    /// Asked by the crate for every datagram it relays: known, not asked of the system.
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The crate calls this when any one allocation closes: the shared socket stays open
    /// (it closes when the server drops it).
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::stun::MAGIC_COOKIE;
    use stun::error_code::ErrorCode;
    use stun::message::MessageType;

    async fn guard() -> Gate {
        guard_with(10, 5).await
    }

    async fn guard_with(max_allocations: usize, max_per_user: usize) -> Gate {
        // The relay module's test state: relay-only, its own address 10.0.0.1.
        let mut state = super::super::tests::state(max_per_user);
        state.max_allocations = max_allocations;
        Gate::new(Arc::new(state), Transport::Udp, Arc::default())
    }

    fn udp(addr: SocketAddr) -> Client {
        Client {
            addr,
            local: "10.0.0.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn allocate() -> Message {
        let mut message = Message::new();
        message
            .build(&[
                Box::new(stun::agent::TransactionId::new()),
                Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            ])
            .unwrap();
        message
    }

    /// The nonce in a 401 the guard answers itself, or what it does instead.
    fn challenged_with(verdict: Verdict) -> Result<String, Verdict> {
        match verdict {
            Verdict::Answer(bytes) => {
                let message = decode(&bytes).unwrap();
                Ok(TextAttribute::get_from_as(&message, ATTR_NONCE)
                    .unwrap()
                    .text)
            }
            other => Err(other),
        }
    }

    #[tokio::test]
    async fn the_crates_nonce_is_reused_for_half_an_hour_then_fetched_at_most_once_a_second() {
        let guard = guard().await;
        let start = Instant::now();
        let request = allocate();
        // No nonce yet: one request goes to the crate to fetch one, the next waits.
        assert_eq!(guard.challenge(&request, start), Verdict::Pass);
        assert_eq!(guard.challenge(&request, start), Verdict::Drop);
        guard.nonce.lock().unwrap().current = Some(("abc".into(), start));
        let second = Duration::from_secs(1);
        assert_eq!(
            challenged_with(guard.challenge(&request, start)),
            Ok("abc".into())
        );
        // Still handed out after 29 minutes: half the crate's hour, not seconds.
        assert_eq!(
            challenged_with(guard.challenge(&request, start + 29 * 60 * second)),
            Ok("abc".into())
        );
        assert_eq!(
            challenged_with(guard.challenge(&request, start + NONCE_REUSE - second)),
            Ok("abc".into())
        );
        // At half an hour it is stale: a request fetches a fresh one, once a second.
        let stale = start + NONCE_REUSE;
        assert_eq!(guard.challenge(&request, stale), Verdict::Pass);
        assert_eq!(guard.challenge(&request, stale + second / 2), Verdict::Drop);
        assert_eq!(guard.challenge(&request, stale + second), Verdict::Pass);
    }

    #[tokio::test]
    async fn a_nonce_put_in_by_a_stream_engine_is_used_at_once_and_renewed_at_half_an_hour() {
        let gate = guard().await;
        let start = Instant::now();
        let second = Duration::from_secs(1);
        assert!(!gate.has_fresh_nonce(start));
        gate.use_nonce("mine".into(), start);
        // Challenged with it at once: nothing goes to the crate to fetch one.
        assert_eq!(
            challenged_with(gate.challenge(&allocate(), start)),
            Ok("mine".into())
        );
        assert!(gate.has_fresh_nonce(start));
        assert!(gate.has_fresh_nonce(start + NONCE_REUSE - second));
        assert!(!gate.has_fresh_nonce(start + NONCE_REUSE));
        assert!(!gate.has_fresh_nonce(start + NONCE_REUSE + second));
    }

    #[tokio::test]
    async fn only_a_401_teaches_the_guard_a_nonce() {
        let guard = guard().await;
        let request = allocate();
        let with_nonce = |code: ErrorCode| match answer(
            &request,
            code,
            None,
            vec![Box::new(TextAttribute::new(
                ATTR_NONCE,
                format!("n{}", code.0),
            ))],
        ) {
            Verdict::Answer(bytes) => bytes,
            other => panic!("{other:?}"),
        };
        // A 438 (stale nonce) carries the crate's nonce too, but it answers one client.
        guard.learn_nonce(&with_nonce(ErrorCode(438)));
        assert!(guard.nonce.lock().unwrap().current.is_none());
        guard.learn_nonce(&with_nonce(CODE_UNAUTHORIZED));
        assert_eq!(
            guard
                .nonce
                .lock()
                .unwrap()
                .current
                .as_ref()
                .map(|(n, _)| n.as_str()),
            Some("n401")
        );
    }

    #[tokio::test]
    async fn a_new_address_does_not_refill_the_others_buckets() {
        let guard = guard().await;
        let now = Instant::now();
        let (busy, other) = ("10.9.9.1".parse().unwrap(), "10.9.9.2".parse().unwrap());
        let granted = (0..REQUEST_BURST * 2)
            .filter(|_| guard.within_rate(busy, now))
            .count();
        assert_eq!(granted, REQUEST_BURST as usize);
        assert!(guard.within_rate(other, now));
        assert!(
            !guard.within_rate(busy, now),
            "a newcomer gave the busy address a fresh burst"
        );
    }

    #[tokio::test]
    async fn allocations_waiting_for_the_crate_count_against_both_quotas() {
        let guard = guard_with(3, 2).await;
        let request = allocate();
        let client = |n: u8| udp(SocketAddr::from(([10, 9, 9, n], 5000)));
        let admit = |n: u8, username: &str| -> Option<u16> {
            match guard.admit_allocation(&request, client(n), username, b"key") {
                Verdict::Pass => None,
                Verdict::Answer(bytes) => {
                    let mut code = ErrorCodeAttribute::default();
                    code.get_from(&decode(&bytes).unwrap()).unwrap();
                    Some(code.code.0)
                }
                Verdict::Drop | Verdict::OverRate => Some(0),
            }
        };
        // alice asks from two clients: both go to the crate; a third is over her quota.
        assert_eq!(admit(1, "9:alice"), None);
        assert_eq!(admit(2, "9:alice"), None);
        assert_eq!(admit(3, "9:alice"), Some(486));
        // A retransmitted Allocate is not counted against itself.
        assert_eq!(admit(1, "9:alice"), None);
        // Three waiting in all: the relay is full for anyone.
        assert_eq!(admit(4, "9:bob"), None);
        assert_eq!(admit(5, "9:carol"), Some(508));
        // One of alice's opens: open and waiting add up, and she is still at her quota.
        guard.state.opened(client(1));
        assert_eq!(admit(6, "9:alice"), Some(486));
    }

    #[tokio::test]
    async fn at_its_limit_the_rate_table_is_forgotten_only_for_a_newcomer() {
        let guard = guard().await;
        let now = Instant::now();
        let busy: IpAddr = "10.9.0.0".parse().unwrap();
        while guard.within_rate(busy, now) {}
        for n in 1..TRACKED_ADDRESSES as u32 {
            assert!(guard.within_rate(
                IpAddr::from(std::net::Ipv4Addr::from(0x0a09_0000_u32 + n)),
                now
            ));
        }
        // The table is full; an address it holds is still judged by its bucket…
        assert!(!guard.within_rate(busy, now));
        // …and a new one clears it, which only gives everyone a fresh burst.
        assert!(guard.within_rate("10.10.0.0".parse().unwrap(), now));
        assert!(guard.within_rate(busy, now));
    }

    fn indication(method: stun::message::Method, peer: &str) -> Vec<u8> {
        let peer: SocketAddr = peer.parse().unwrap();
        let mut message = Message::new();
        message
            .build(&[
                Box::new(stun::agent::TransactionId::new()),
                Box::new(MessageType::new(method, CLASS_INDICATION)),
                Box::new(turn::proto::peeraddr::PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
            ])
            .unwrap();
        message.raw
    }

    #[tokio::test]
    async fn only_send_indications_to_allowed_peers_reach_the_crate() {
        let guard = guard().await;
        let client = udp("10.9.9.9:5000".parse().unwrap());
        let now = SystemTime::now();
        let judge = |data: Vec<u8>| guard.judge(&data, client, now);
        assert_eq!(
            judge(indication(METHOD_SEND, "10.0.0.1:5000")),
            Verdict::Pass
        );
        assert_eq!(
            judge(indication(METHOD_SEND, "127.0.0.1:5000")),
            Verdict::Drop
        );
        // A Data indication is the relay's to send, never a client's.
        assert_eq!(
            judge(indication(stun::message::METHOD_DATA, "10.0.0.1:5000")),
            Verdict::Drop
        );
        let counters = guard.counters();
        assert_eq!(counters.peers_denied.load(Ordering::Relaxed), 1);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 1);
    }

    proptest::proptest! {
        /// Whatever arrives, parsing it does not panic: the header checks, the crate's
        /// decoder, the attribute scan and the peer addresses alike.
        #[test]
        fn no_datagram_panics_the_parser(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            typ in proptest::prelude::any::<u16>(),
        ) {
            let mut data = Vec::with_capacity(body.len() + 20);
            data.extend_from_slice(&(typ & 0x3fff).to_be_bytes());
            data.extend_from_slice(&(body.len() as u16).to_be_bytes());
            data.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            data.extend_from_slice(&[7; 12]);
            data.extend_from_slice(&body);
            if let Some(message) = decode(&data) {
                let _ = unknown_attributes(&message);
                for attr in &message.attributes.0 {
                    let _ = xor_address(&attr.value, &message.transaction_id.0);
                }
            }
            let _ = decode(&body);
        }
    }
}
