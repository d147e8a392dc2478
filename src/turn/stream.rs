//! TURN over TCP and TLS: the same requests and ChannelData as over UDP, back to back on a
//! stream with no length prefix of their own (RFC 8656 §12.5); ChannelData is padded to a
//! multiple of four bytes there. Peers are still reached over UDP: browsers ask for nothing
//! else (RFC 6062's TCP allocations are not served).
//!
//! The `turn` crate's server reads only datagram sockets, and one read error ends its loop
//! for good, so streams do not go through it. Each transport has an engine of its own, made
//! of the crate's public parts: an allocation `Manager`, the nonces it handed out, and a
//! [`Gate`] in front. Each connection is read here, cut into messages ([`frame`]), judged by
//! the gate and handed to the crate's request handler one by one; what the crate sends back
//! goes through a [`Connection`], the connection as the crate sees it, into a queue that a
//! writer task empties. An allocation made over a connection lives as long as the connection
//! (RFC 8656 §2.1): when it closes, the allocation is deleted at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::debug;
use turn::allocation::AllocationInfo;
use turn::allocation::allocation_manager::{Manager, ManagerConfig};
use turn::allocation::five_tuple::FiveTuple;
use turn::auth::AuthHandler;
use turn::proto::PROTO_UDP;
use turn::proto::lifetime::DEFAULT_LIFETIME;
use turn::relay::RelayAddressGenerator;
use turn::server::request::Request;
use webrtc_util::Conn;

use super::channels::{Out, Shortcuts, channel_data};
use super::credentials::Auth;
use super::guard::{Gate, Rates, Verdict};
use super::stun::MAGIC_COOKIE;
use super::{Client, State, Transport, rand_u32};
use crate::config::Limits;
use crate::limits::Admission;

/// The largest message a connection may send: a browser's largest packet (about 1,200 bytes
/// of media, under the path MTU) with ChannelData's or a Send indication's framing fits with
/// room to spare, and the crate's UDP engine reads at most 1,500 bytes anyway.
pub const MAX_FRAME: usize = 2048;
/// What may wait unsent for one connection. At 1.5 Mbit/s that is over a second of video:
/// a client that has not taken it by then has stopped reading, and is dropped.
pub const MAX_UNSENT: usize = 256 * 1024;
/// How long one write may wait for the client to take its bytes.
const WRITE_PATIENCE: Duration = Duration::from_secs(10);
/// A connection with no message for this long is closed. A browser with an allocation sends
/// at least a permission refresh every five minutes.
const IDLE: Duration = Duration::from_secs(10 * 60);
/// How much the writer gathers into one write (one TLS record, one system call).
const BATCH: usize = 16 * 1024;
/// How long a request over the address's rate waits for it before the connection is closed
/// (at 100 requests a second, a burst of several hundred from one address clears in seconds).
const RATE_PATIENCE: Duration = Duration::from_secs(10);
/// How long the crate accepts a nonce it knows (its `NONCE_LIFETIME`, RFC 5766 §4).
const NONCE_LIFETIME: Duration = Duration::from_secs(3600);

/// Where the first message in `buf` ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// Not all of it has arrived yet.
    Need,
    /// The first this many bytes are one message (ChannelData with its padding).
    Frame(usize),
    /// Neither STUN nor ChannelData: the stream cannot be read further.
    NotTurn,
    /// A message longer than [`MAX_FRAME`].
    TooLarge(usize),
}

/// Cuts the first message off a stream: STUN (first two bits 00) is a 20-byte header and its
/// length; ChannelData (01) a 4-byte header and its length rounded up to four.
pub fn frame(buf: &[u8]) -> Framing {
    let Some(header) = buf.get(..4) else {
        return Framing::Need;
    };
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let total = match header[0] >> 6 {
        0 if length % 4 != 0 => return Framing::NotTurn,
        0 => 20 + length,
        1 => 4 + length.next_multiple_of(4),
        _ => return Framing::NotTurn,
    };
    if total > MAX_FRAME {
        Framing::TooLarge(total)
    } else if buf.len() < total {
        Framing::Need
    } else {
        Framing::Frame(total)
    }
}

/// Whether a connection's first bytes (at least 8) begin a STUN message: the top two bits
/// clear and the magic cookie at bytes 4–8. Nothing that starts TLS (0x16) or HTTP (a
/// method's capital letter, or HTTP/2's `PRI`) looks like that.
pub fn is_stun(first: &[u8]) -> bool {
    first.len() >= 8 && first[0] & 0xC0 == 0 && first[4..8] == MAGIC_COOKIE.to_be_bytes()
}

/// One transport's engine: what all its connections share.
pub struct Streams {
    transport: Transport,
    state: Arc<State>,
    gate: Gate,
    manager: Arc<Manager>,
    nonces: Arc<tokio::sync::Mutex<HashMap<String, tokio::time::Instant>>>,
    realm: String,
    /// Connections in all and per address, with `[limits]`'s numbers.
    admission: Arc<Admission>,
    /// How long a connection may take to send its first message.
    first_message: Duration,
    /// The data path's shortcut (`channels.rs`).
    shortcuts: Shortcuts,
}

impl Streams {
    pub(super) fn new(
        transport: Transport,
        state: Arc<State>,
        rates: Arc<Rates>,
        relay_addr_generator: Box<dyn RelayAddressGenerator + Send + Sync>,
        alloc_close_notify: mpsc::Sender<AllocationInfo>,
        limits: &Limits,
    ) -> Streams {
        Streams {
            transport,
            gate: Gate::new(Arc::clone(&state), transport, rates),
            realm: state.credentials.realm.clone(),
            manager: Arc::new(Manager::new(ManagerConfig {
                relay_addr_generator,
                alloc_close_notify: Some(alloc_close_notify),
            })),
            nonces: Arc::default(),
            admission: Admission::new(
                limits.max_connections.get(),
                limits.max_connections_per_ip.get(),
            ),
            first_message: limits.header_read_timeout(),
            shortcuts: Shortcuts::new(Arc::clone(&state)),
            state,
        }
    }

    /// Deletes the allocations made with TURN username `username`.
    pub(super) async fn forget(&self, username: &str) {
        self.manager.delete_allocations_by_username(username).await;
    }

    /// Serves one connection until it closes, then deletes its allocation. `read` holds the
    /// bytes already read from it (the first message, or part of it).
    pub(super) async fn serve<S>(
        self: Arc<Self>,
        io: S,
        peer: SocketAddr,
        local: SocketAddr,
        read: BytesMut,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let label = self.transport.label();
        let Ok(permit) = self.admission.admit(peer.ip()) else {
            return debug!(%peer, transport = label, "TURN connection refused: too many");
        };
        let client = Client {
            addr: peer,
            local,
            transport: self.transport,
        };
        let (queue, queued) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let connection = Arc::new_cyclic(|me| Connection {
            client,
            engine: Arc::clone(&self),
            me: me.clone(),
            queue,
            unsent: AtomicUsize::new(0),
            stop,
        });
        let (reader, writer) = tokio::io::split(io);
        let writing = tokio::spawn(write_out(
            writer,
            queued,
            Arc::clone(&connection),
            stopped.clone(),
        ));
        let why = self.read_in(reader, read, &connection, stopped).await;
        debug!(%peer, transport = label, "TURN connection closed: {why}");
        connection.stop();
        self.manager
            .delete_allocation(&FiveTuple {
                protocol: PROTO_UDP,
                src_addr: client.addr,
                dst_addr: client.local,
            })
            .await;
        // An Allocate the crate had not answered yet.
        self.state.closed(client);
        let _ = writing.await;
        drop(permit);
    }

    /// Reads messages and hands them on until the connection ends; why it ended.
    async fn read_in<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        mut buf: BytesMut,
        connection: &Arc<Connection>,
        mut stopped: watch::Receiver<bool>,
    ) -> &'static str {
        let auth: Arc<dyn AuthHandler + Send + Sync> = Arc::new(Auth {
            state: Arc::clone(&self.state),
            local: connection.client.local,
            transport: self.transport,
        });
        let mut first = true;
        loop {
            loop {
                match frame(&buf) {
                    Framing::Need => break,
                    Framing::Frame(n) => {
                        let message = buf.split_to(n);
                        if first && !is_stun(&message) {
                            return self.dropped("the first message is not STUN");
                        }
                        first = false;
                        if !self.handle(&message, connection, &auth).await {
                            return "over the request rate for too long";
                        }
                    }
                    Framing::NotTurn => return self.dropped("neither STUN nor ChannelData"),
                    Framing::TooLarge(_) => return self.dropped("a message over the limit"),
                }
            }
            buf.reserve(4096);
            let patience = if first { self.first_message } else { IDLE };
            let read = tokio::select! {
                read = tokio::time::timeout(patience, reader.read_buf(&mut buf)) => read,
                _ = stopped.wait_for(|stop| *stop) => return "stopped",
            };
            match read {
                Ok(Ok(0)) => return "closed by the client",
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return "read error",
                Err(_) if first => return self.dropped("no first message in time"),
                Err(_) => return "idle",
            }
        }
    }

    fn dropped(&self, why: &'static str) -> &'static str {
        self.state
            .counters(self.transport)
            .dropped
            .fetch_add(1, Ordering::Relaxed);
        why
    }

    /// Makes sure the gate has a nonce from this engine's map to challenge with: a new one
    /// every half hour, the map keeping each for the hour the crate accepts it.
    async fn fresh_nonce(&self) {
        let now = std::time::Instant::now();
        if self.gate.has_fresh_nonce(now) {
            return;
        }
        let nonce = format!(
            "{:08x}{:08x}{:08x}{:08x}",
            rand_u32(),
            rand_u32(),
            rand_u32(),
            rand_u32()
        );
        {
            let mut nonces = self.nonces.lock().await;
            nonces.retain(|_, made| made.elapsed() < NONCE_LIFETIME);
            nonces.insert(nonce.clone(), tokio::time::Instant::now());
        }
        self.gate.use_nonce(nonce, now);
    }

    /// One message: judged by the gate, then answered, dropped, or handled by the crate;
    /// false when the connection must close.
    async fn handle(
        &self,
        message: &[u8],
        connection: &Arc<Connection>,
        auth: &Arc<dyn AuthHandler + Send + Sync>,
    ) -> bool {
        let client = connection.client;
        // ChannelData on a channel the crate bound: relayed from here (`channels.rs`).
        if let Some((number, data)) = channel_data(message)
            && let Some((relay, peer)) = self.shortcuts.route(client, number)
        {
            relay.relay_on_channel(data, peer).await;
            return true;
        }
        if message[0] & 0xC0 == 0 {
            // A STUN message may need a challenge; ChannelData (the data path) never does.
            self.fresh_nonce().await;
        }
        // Over the address's request rate, a request waits its turn: nothing is retransmitted
        // on a stream, and many browsers behind one NAT may start their calls at once.
        let mut verdict = self.gate.judge(message, client, SystemTime::now());
        let waited = tokio::time::Instant::now();
        while verdict == Verdict::OverRate {
            if waited.elapsed() > RATE_PATIENCE {
                self.dropped("over the request rate");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            verdict = self.gate.judge(message, client, SystemTime::now());
        }
        match verdict {
            Verdict::OverRate => return false,
            Verdict::Drop => {}
            Verdict::Answer(bytes) => {
                connection.enqueue(bytes);
            }
            Verdict::Pass => {
                self.shortcuts.requested(message, client);
                let mut request = Request {
                    conn: Arc::clone(connection) as Arc<dyn Conn + Send + Sync>,
                    src_addr: client.addr,
                    buff: message.to_vec(),
                    allocation_manager: Arc::clone(&self.manager),
                    nonces: Arc::clone(&self.nonces),
                    auth_handler: Arc::clone(auth),
                    realm: self.realm.clone(),
                    channel_bind_timeout: DEFAULT_LIFETIME,
                };
                if let Err(err) = request.handle_request().await {
                    debug!(peer = %client.addr, transport = self.transport.label(), "TURN request: {err}");
                }
            }
        }
        true
    }
}

/// Accepts TCP connections on the relay's own port for `engine`.
pub(super) async fn accept(listener: TcpListener, engine: Arc<Streams>) {
    let mut backoff = Duration::ZERO;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                backoff = Duration::ZERO;
                let _ = tcp.set_nodelay(true);
                let Ok(local) = tcp.local_addr() else {
                    continue;
                };
                tokio::spawn(Arc::clone(&engine).serve(tcp, peer, local, BytesMut::new()));
            }
            Err(err) => {
                // Out of descriptors, usually: wait for some instead of spinning.
                backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
                tracing::error!("TURN relay: cannot accept a TCP connection: {err}");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Empties the connection's queue into the stream, several messages a write, until the
/// connection stops or a write stalls.
async fn write_out<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queued: mpsc::UnboundedReceiver<Vec<u8>>,
    connection: Arc<Connection>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let next = tokio::select! {
            next = queued.recv() => next,
            _ = stopped.wait_for(|stop| *stop) => None,
        };
        let Some(message) = next else {
            break;
        };
        batch.clear();
        batch.extend_from_slice(&message);
        while batch.len() < BATCH {
            match queued.try_recv() {
                Ok(message) => batch.extend_from_slice(&message),
                Err(_) => break,
            }
        }
        let write = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        };
        let written = tokio::select! {
            written = tokio::time::timeout(WRITE_PATIENCE, write) => written,
            // Dropped (by the reader's side, or over the bound) while a write waits.
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        match written {
            Ok(Ok(())) => {
                connection.unsent.fetch_sub(batch.len(), Ordering::Relaxed);
            }
            _ => {
                connection.stop();
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

/// One connection as the crate sees it: where it sends answers and relayed data for this
/// client. Sending never waits: it queues, and a client that lets [`MAX_UNSENT`] pile up is
/// dropped.
pub struct Connection {
    client: Client,
    engine: Arc<Streams>,
    /// Itself, for the shortcut's way back to the client.
    me: Weak<Connection>,
    queue: mpsc::UnboundedSender<Vec<u8>>,
    unsent: AtomicUsize,
    stop: watch::Sender<bool>,
}

impl Connection {
    fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Queues `bytes` for the writer; false when the connection is over its unsent bound
    /// (and so being dropped) or gone.
    pub(crate) fn enqueue(&self, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        if self.unsent.fetch_add(len, Ordering::Relaxed) + len > MAX_UNSENT {
            self.unsent.fetch_sub(len, Ordering::Relaxed);
            self.stop();
            return false;
        }
        self.queue.send(bytes).is_ok()
    }
}

#[async_trait]
impl Conn for Connection {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("a stream is connected".into()))
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "streams are read by dialtone".into(),
        ))
    }

    async fn recv_from(&self, _buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Err(webrtc_util::Error::Other(
            "streams are read by dialtone".into(),
        ))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.client.addr).await
    }

    /// An answer or relayed data for the client (the crate pads ChannelData itself).
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.engine.gate.sent(buf, self.client);
        let out = || Out::Stream(self.me.clone());
        self.engine.shortcuts.answered(buf, self.client, out);
        if self.enqueue(buf.to_vec()) {
            Ok(buf.len())
        } else {
            Err(webrtc_util::Error::Other(
                "the client is not reading: connection dropped".into(),
            ))
        }
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.client.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.client.addr)
    }

    /// The crate calls this when the connection's allocation closes (it expired, or was
    /// refreshed to 0): the connection stays, as RFC 8656 allows.
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

    fn stun(length: u16) -> Vec<u8> {
        let mut message = vec![0x00, 0x03];
        message.extend_from_slice(&length.to_be_bytes());
        message.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        message.extend_from_slice(&[7; 12]);
        message.extend(std::iter::repeat_n(0, usize::from(length)));
        message
    }

    /// A connection of a test engine, its writer task writing into `writer`.
    fn open(writer: tokio::io::DuplexStream) -> (Arc<Connection>, tokio::task::JoinHandle<()>) {
        let state = Arc::new(super::super::tests::state(5));
        let (closes, _) = mpsc::channel(1);
        let ports = super::super::addresses::Ports {
            bind: "127.0.0.1".parse().unwrap(),
            external: "10.0.0.1".parse().unwrap(),
            range: crate::config::PortRange {
                min: 50000,
                max: 50010,
            },
            state: Arc::clone(&state),
            transport: Transport::Tcp,
        };
        let limits = crate::config::Config::default().limits;
        let engine = Streams::new(
            Transport::Tcp,
            state,
            Arc::default(),
            Box::new(ports),
            closes,
            &limits,
        );
        let (queue, queued) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let connection = Arc::new_cyclic(|me| Connection {
            client: super::super::tests::udp("10.9.9.9:5000"),
            engine: Arc::new(engine),
            me: me.clone(),
            queue,
            unsent: AtomicUsize::new(0),
            stop,
        });
        let writing = tokio::spawn(write_out(writer, queued, Arc::clone(&connection), stopped));
        (connection, writing)
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_and_one_that_reads_never_is() {
        // Not a divisor of the bound: the check is "over", not "exactly at".
        let data = [0x40u8; 1000];
        // Nobody reads the other end: the stream takes 64 KiB, the queue the bound, then
        // the connection stops and sending fails.
        let (writer, _unread) = tokio::io::duplex(64 * 1024);
        let (connection, writing) = open(writer);
        let mut sent = 0;
        while connection
            .send_to(&data, connection.client.addr)
            .await
            .is_ok()
        {
            sent += data.len();
            assert!(sent <= 2 * MAX_UNSENT, "still accepted after {sent} bytes");
            tokio::task::yield_now().await;
        }
        assert!(sent >= MAX_UNSENT, "dropped after only {sent} bytes");
        assert!(*connection.stop.borrow());
        let _ = writing.await;

        // A reader that keeps up takes ten times the bound without a failure.
        let (writer, mut reader) = tokio::io::duplex(64 * 1024);
        let (connection, writing) = open(writer);
        let reading = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        let sends = 10 * MAX_UNSENT / data.len();
        for _ in 0..sends {
            connection
                .send_to(&data, connection.client.addr)
                .await
                .expect("a reading client is never dropped");
            tokio::task::yield_now().await;
        }
        assert!(!*connection.stop.borrow());
        connection.stop();
        let _ = writing.await;
        drop(connection);
        assert_eq!(reading.await.unwrap(), sends * data.len());
    }

    #[tokio::test]
    async fn a_stream_engine_makes_its_own_nonce_once_and_challenges_with_it() {
        let (writer, _reader) = tokio::io::duplex(1024);
        let (connection, _writing) = open(writer);
        let engine = &connection.engine;
        assert!(!engine.gate.has_fresh_nonce(std::time::Instant::now()));
        engine.fresh_nonce().await;
        engine.fresh_nonce().await;
        let nonces: Vec<String> = engine.nonces.lock().await.keys().cloned().collect();
        assert_eq!(nonces.len(), 1, "{nonces:?}");
        assert!(engine.gate.has_fresh_nonce(std::time::Instant::now()));
        // An unsigned request is challenged with it, by the gate itself.
        let mut allocate = stun::message::Message::new();
        allocate
            .build(&[
                Box::new(stun::agent::TransactionId::new()),
                Box::new(stun::message::MessageType::new(
                    stun::message::METHOD_ALLOCATE,
                    stun::message::CLASS_REQUEST,
                )),
            ])
            .unwrap();
        let Verdict::Answer(answer) =
            engine
                .gate
                .judge(&allocate.raw, connection.client, SystemTime::now())
        else {
            panic!("the gate answers the challenge itself");
        };
        let answer = super::super::stun::decode(&answer).unwrap();
        let nonce =
            stun::textattrs::TextAttribute::get_from_as(&answer, stun::attributes::ATTR_NONCE)
                .unwrap();
        assert_eq!(nonce.text, nonces[0]);
    }

    #[test]
    fn messages_are_cut_where_their_headers_say() {
        let allocate = stun(8);
        assert_eq!(frame(&allocate), Framing::Frame(28));
        // Two in one segment: the first is cut off, the rest waits its turn.
        let two = [allocate.clone(), allocate.clone()].concat();
        assert_eq!(frame(&two), Framing::Frame(28));
        // Split across segments: nothing until all of it is there.
        for cut in [0, 1, 3, 4, 19, 20, 27] {
            assert_eq!(frame(&allocate[..cut]), Framing::Need, "{cut}");
        }
        // ChannelData: 5 bytes of data come with 3 of padding over a stream.
        let channel = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(frame(&channel[..11]), Framing::Need);
        assert_eq!(frame(&channel), Framing::Frame(12));
        assert_eq!(
            frame(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]),
            Framing::Frame(8)
        );
        assert_eq!(frame(&[0x40, 0x01, 0x00, 0x00]), Framing::Frame(4));
    }

    #[test]
    fn what_is_neither_or_too_long_ends_the_stream() {
        // HTTP after a first message reads as ChannelData ('G' is 01…), of a length ("T ")
        // far over the limit.
        assert_eq!(frame(b"GET / HTTP/1.1\r\n"), Framing::TooLarge(4 + 0x5420));
        assert_eq!(frame(&[0x80, 0, 0, 4]), Framing::NotTurn);
        assert_eq!(frame(&[0xC0, 0, 0, 4]), Framing::NotTurn);
        // A STUN length is a multiple of four.
        assert_eq!(frame(&[0x00, 0x01, 0x00, 0x05]), Framing::NotTurn);
        let longest_stun = MAX_FRAME - 20;
        assert_eq!(frame(&stun(longest_stun as u16)), Framing::Frame(MAX_FRAME));
        assert_eq!(
            frame(&stun(longest_stun as u16 + 4)[..20]),
            Framing::TooLarge(MAX_FRAME + 4)
        );
        let over = (MAX_FRAME - 3) as u16;
        let mut channel = vec![0x40, 0x00];
        channel.extend_from_slice(&over.to_be_bytes());
        assert_eq!(frame(&channel), Framing::TooLarge(MAX_FRAME + 4));
        let fits = (MAX_FRAME - 4) as u16;
        channel[2..4].copy_from_slice(&fits.to_be_bytes());
        assert_eq!(frame(&channel), Framing::Need);
    }

    #[test]
    fn stun_is_told_from_tls_and_http_by_its_first_eight_bytes() {
        assert!(is_stun(&stun(0)));
        assert!(!is_stun(&stun(0)[..7]));
        let mut wrong_cookie = stun(0);
        wrong_cookie[7] ^= 1;
        assert!(!is_stun(&wrong_cookie));
        let mut top_bits = stun(0);
        top_bits[0] = 0x40;
        assert!(!is_stun(&top_bits));
        assert!(!is_stun(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]));
        assert!(!is_stun(b"GET / HTTP/1.1"));
        assert!(!is_stun(b"PRI * HTTP/2.0"));
    }
}
