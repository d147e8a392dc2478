//! TLS as a stranger probes it, record by record. After a real handshake with a rustls client
//! that checks dialtone's certificate, the test writes and reads TLS records by hand. RFC 8446
//! §5 and §6 (and RFC 5246 for TLS 1.2) require a fatal alert for a forged or oversized record
//! and for a malformed key update; a connection cut without close_notify is a truncation, not
//! a clean close; and no key update, record size or read size changes what is relayed.
//!
//! The hand-written records use AES-128-GCM (the only suite the client offers) with the
//! traffic keys rustls hands out through `dangerous_extract_secrets`.

mod common;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use common::process::{Running, start_in};
use common::{PATIENCE, TestServer, TlsWs, Ws, next_json, send_json};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ConnectionTrafficSecrets, ProtocolVersion};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

// Content types (RFC 8446 §5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
// Alert descriptions (RFC 8446 §6).
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const FATAL: u8 = 2;
/// The most plaintext one record may carry (2^14).
const MAX_FRAGMENT: usize = 16_384;
/// Handshake message type of a key update (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Version {
    Tls12,
    Tls13,
}

const BOTH: [Version; 2] = [Version::Tls12, Version::Tls13];

/// One direction's AES-128-GCM key, IV and record sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Keys {
        let ConnectionTrafficSecrets::Aes128Gcm { key, iv } = secrets else {
            panic!("the client offers AES-128-GCM only");
        };
        Keys {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    /// The next record's sequence number and nonce (the IV XOR the sequence number, which for
    /// TLS 1.2 is also what rustls sends as the explicit nonce).
    fn next(&mut self) -> (u64, [u8; 12]) {
        let seq = self.seq;
        self.seq += 1;
        let mut nonce = self.iv;
        for (byte, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *byte ^= s;
        }
        (seq, nonce)
    }
}

/// A TLS connection whose records after the handshake are the test's to write and read.
struct RawTls {
    tcp: TcpStream,
    version: Version,
    tx: Keys,
    rx: Keys,
    inbox: Vec<u8>,
}

fn client_config(cert: &CertificateDer<'static>, version: Version) -> ClientConfig {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|suite| {
        matches!(
            suite.suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match version {
        Version::Tls12 => &[&rustls::version::TLS12],
        Version::Tls13 => &[&rustls::version::TLS13],
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

impl RawTls {
    async fn connect(addr: SocketAddr, cert: &CertificateDer<'static>, version: Version) -> RawTls {
        let mut config = client_config(cert, version);
        config.enable_secret_extraction = true;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("a handshake with a client that checks the certificate");
        let (tcp, conn) = tls.into_inner();
        let expected = match version {
            Version::Tls12 => ProtocolVersion::TLSv1_2,
            Version::Tls13 => ProtocolVersion::TLSv1_3,
        };
        assert_eq!(conn.protocol_version(), Some(expected));
        let secrets = conn.dangerous_extract_secrets().unwrap();
        RawTls {
            tcp,
            version,
            tx: Keys::new(secrets.tx),
            rx: Keys::new(secrets.rx),
            inbox: Vec::new(),
        }
    }

    /// `data` as the client's next record of content type `kind`, encrypted.
    fn seal(&mut self, kind: u8, data: &[u8]) -> Vec<u8> {
        let (seq, nonce) = self.tx.next();
        let explicit = nonce[4..].to_vec();
        let nonce = Nonce::assume_unique_for_key(nonce);
        let mut body = data.to_vec();
        match self.version {
            Version::Tls13 => {
                body.push(kind);
                let header = record_header(APPLICATION_DATA, body.len() + 16);
                self.tx
                    .key
                    .seal_in_place_append_tag(nonce, Aad::from(header), &mut body)
                    .unwrap();
                [&header[..], &body].concat()
            }
            Version::Tls12 => {
                let aad = tls12_aad(seq, kind, data.len());
                self.tx
                    .key
                    .seal_in_place_append_tag(nonce, Aad::from(aad), &mut body)
                    .unwrap();
                let header = record_header(kind, explicit.len() + body.len());
                [&header[..], &explicit, &body].concat()
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed (after an alert): what it does then is the test.
        let _ = self.tcp.write_all(bytes).await;
    }

    /// The server's next record, decrypted: its content type and plaintext. `None` when the
    /// connection ends.
    async fn open(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.inbox.len() >= 5 {
                let len = usize::from(u16::from_be_bytes([self.inbox[3], self.inbox[4]]));
                if self.inbox.len() >= 5 + len {
                    let record: Vec<u8> = self.inbox.drain(..5 + len).collect();
                    return Some(self.decrypt(&record));
                }
            }
            let mut buf = [0u8; 4096];
            let read = tokio::time::timeout(PATIENCE, self.tcp.read(&mut buf))
                .await
                .expect("the server answers or closes within the patience");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn decrypt(&mut self, record: &[u8]) -> (u8, Vec<u8>) {
        let header: [u8; 5] = record[..5].try_into().unwrap();
        let mut body = record[5..].to_vec();
        let (seq, nonce) = self.rx.next();
        match self.version {
            Version::Tls13 => {
                assert_eq!(header[0], APPLICATION_DATA, "TLS 1.3 encrypts every record");
                let plain = self
                    .rx
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(header),
                        &mut body,
                    )
                    .expect("the server's record decrypts");
                let end = plain.iter().rposition(|&b| b != 0).expect("a content type");
                (plain[end], plain[..end].to_vec())
            }
            Version::Tls12 => {
                let mut salted = self.rx.iv;
                salted[4..].copy_from_slice(&body[..8]);
                let aad = tls12_aad(seq, header[0], body.len() - 8 - 16);
                let plain = self
                    .rx
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(salted),
                        Aad::from(aad),
                        &mut body[8..],
                    )
                    .expect("the server's record decrypts");
                (header[0], plain.to_vec())
            }
        }
    }

    /// Reads past the server's other records (session tickets) to its alert, and returns the
    /// alert's description; `None` when the connection ends without one.
    async fn alert(&mut self) -> Option<u8> {
        while let Some((kind, data)) = self.open().await {
            if kind == ALERT {
                assert_eq!(data[0], FATAL, "a fatal alert: {data:?}");
                return Some(data[1]);
            }
        }
        None
    }

    /// Whether the server has closed the connection (within the patience).
    async fn closed(&mut self) -> bool {
        self.open().await.is_none()
    }
}

fn record_header(kind: u8, len: usize) -> [u8; 5] {
    let len = u16::try_from(len).unwrap().to_be_bytes();
    [kind, 3, 3, len[0], len[1]]
}

fn tls12_aad(seq: u64, kind: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8..].copy_from_slice(&record_header(kind, len));
    aad
}

/// The server still serves everyone else.
async fn still_serves(server: &TestServer) {
    assert_eq!(server.get("/").await.status, hyper::StatusCode::OK);
}

#[tokio::test]
async fn a_forged_record_after_the_handshake_gets_a_bad_record_mac_alert() {
    let server = TestServer::start().await;
    let cert = server.cert.clone().unwrap();
    for version in BOTH {
        let mut raw = RawTls::connect(server.addr, &cert, version).await;
        // An application-data record of the right shape whose bytes no key made.
        let mut forged = record_header(APPLICATION_DATA, 48).to_vec();
        forged.extend((0..48u8).map(|i| i.wrapping_mul(97) ^ 0x5a));
        raw.send(&forged).await;
        assert_eq!(raw.alert().await, Some(BAD_RECORD_MAC), "{version:?}");
        assert!(raw.closed().await, "{version:?}: closed after the alert");

        // The same for a real record with one bit flipped.
        let mut raw = RawTls::connect(server.addr, &cert, version).await;
        let mut record = raw.seal(APPLICATION_DATA, b"GET / HTTP/1.1\r\n");
        let last = record.len() - 1;
        record[last] ^= 1;
        raw.send(&record).await;
        assert_eq!(raw.alert().await, Some(BAD_RECORD_MAC), "{version:?}");
    }
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_record_over_the_size_limit_gets_a_record_overflow_alert() {
    let server = TestServer::start().await;
    let cert = server.cert.clone().unwrap();
    for version in BOTH {
        // A record of exactly the limit is fine (the server waits for the rest of a request)…
        let mut raw = RawTls::connect(server.addr, &cert, version).await;
        let record = raw.seal(APPLICATION_DATA, &[b'a'; MAX_FRAGMENT]);
        raw.send(&record).await;
        let waits = tokio::time::timeout(Duration::from_millis(300), raw.alert()).await;
        assert!(waits.is_err(), "{version:?}: a full record is allowed");

        // …one byte more is not.
        let mut raw = RawTls::connect(server.addr, &cert, version).await;
        let record = raw.seal(APPLICATION_DATA, &[b'a'; MAX_FRAGMENT + 1]);
        raw.send(&record).await;
        assert_eq!(raw.alert().await, Some(RECORD_OVERFLOW), "{version:?}");
        assert!(raw.closed().await, "{version:?}: closed after the alert");
    }
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_key_update_gets_an_illegal_parameter_alert() {
    let server = TestServer::start().await;
    let cert = server.cert.clone().unwrap();
    let mut raw = RawTls::connect(server.addr, &cert, Version::Tls13).await;
    // request_update may be 0 or 1 (RFC 8446 §4.6.3); 7 is neither.
    let record = raw.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 7]);
    raw.send(&record).await;
    assert_eq!(raw.alert().await, Some(ILLEGAL_PARAMETER));
    assert!(raw.closed().await);
    still_serves(&server).await;
    server.stop().await;
}

/// A small deterministic generator (xorshift64), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";
        (0..len)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len())]))
            .collect()
    }
}

/// Passes bytes through in pieces of random size: a write takes 1..=`max` bytes (so a TLS
/// client above writes records of those sizes, and a socket below sends segments of them), a
/// read fills at most 1..=`max`.
struct Chunky<I> {
    io: I,
    rng: Rng,
    max: usize,
}

impl<I: AsyncRead + Unpin> AsyncRead for Chunky<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let room = buf.remaining().min(this.rng.below(this.max) + 1);
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(room));
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
        let got = part.filled().len();
        buf.advance(got);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Chunky<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = buf.len().min(this.rng.below(this.max) + 1);
        Pin::new(&mut this.io).poll_write(cx, &buf[..len])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A WebSocket whose TCP segments and TLS records are cut at random sizes, and whose reads
/// take random sizes at both levels.
async fn chunky_ws(server: &TestServer, version: Version, seed: u64) -> Ws {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let segments = Chunky {
        io: tcp,
        rng: Rng(seed),
        max: 1500,
    };
    let config = client_config(server.cert.as_ref().unwrap(), version);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), segments)
        .await
        .unwrap();
    let records = Chunky {
        io: tls,
        rng: Rng(seed ^ 0x9e37_79b9_7f4a_7c15),
        max: 20_000,
    };
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let io: Box<dyn common::Io> = Box::new(records);
    Ws::spawn(tokio_tungstenite::client_async(url, io).await.unwrap().0)
}

/// Enough room for a few hundred relayed messages at once.
const GENEROUS: &str = "[limits]\nmessages_per_second = 100000\nmessage_burst = 100000\n";

async fn call(alice: &mut Ws, bob: &mut Ws) {
    assert_eq!(alice.login("alice").await["success"], true);
    assert_eq!(bob.login("bob").await["success"], true);
    alice
        .send(json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0"}, "otherUsername": "bob"}))
        .await;
    assert_eq!(bob.recv().await["type"], "offer");
    bob.send(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0"}, "otherUsername": "alice"}))
        .await;
    assert_eq!(alice.recv().await["type"], "answer");
}

/// Sizes from one byte to 60 KB: the edges of a TLS record and of the WebSocket's length
/// encodings, then random ones.
fn sizes(rng: &mut Rng, count: usize) -> Vec<usize> {
    let mut sizes = vec![
        1,
        125,
        126,
        65_535 - 5_535,
        MAX_FRAGMENT - 60,
        MAX_FRAGMENT,
        MAX_FRAGMENT + 1,
        60_000,
    ];
    while sizes.len() < count {
        sizes.push(rng.below(60_000) + 1);
    }
    sizes
}

/// Sends candidates of the given sizes from `from` to `to` and checks that each arrives
/// byte-exact and in order.
async fn relay_all(from: &mut Ws, to: &mut Ws, peer: &str, contents: &[String]) {
    let send = async {
        for (i, text) in contents.iter().enumerate() {
            from.send(json!({"type": "candidate", "candidate": {"candidate": text, "i": i}, "otherUsername": peer}))
                .await;
        }
    };
    let receive = async {
        for (i, text) in contents.iter().enumerate() {
            let message = to.recv_within(Duration::from_secs(30)).await;
            assert_eq!(message["type"], "candidate");
            assert_eq!(message["candidate"]["i"], i, "in order");
            assert!(
                message["candidate"]["candidate"].as_str() == Some(text.as_str()),
                "message {i} ({} bytes) arrived changed",
                text.len()
            );
        }
    };
    tokio::join!(send, receive);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_messages_of_every_size_arrive_byte_exact_whatever_the_chunking() {
    for (version, seed) in [(Version::Tls12, 7), (Version::Tls13, 11)] {
        let server = TestServer::start_with(GENEROUS, &common::repo_public()).await;
        let mut alice = chunky_ws(&server, version, seed).await;
        let mut bob = chunky_ws(&server, version, seed + 1).await;
        call(&mut alice, &mut bob).await;
        let mut rng = Rng(seed * 1_000_003);
        let there: Vec<String> = sizes(&mut rng, 60)
            .into_iter()
            .map(|len| rng.text(len))
            .collect();
        let back: Vec<String> = sizes(&mut rng, 60)
            .into_iter()
            .map(|len| rng.text(len))
            .collect();
        relay_all(&mut alice, &mut bob, "bob", &there).await;
        relay_all(&mut bob, &mut alice, "alice", &back).await;
        still_serves(&server).await;
        server.stop().await;
    }
}

/// The binary started with `extra` in its config, and the certificate it generated.
fn binary(extra: &str) -> (tempfile::TempDir, Running, CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let (_, running) = start_in(dir.path(), extra);
    let cert = CertificateDer::from_pem_file(dir.path().join("certs/cert.pem")).unwrap();
    (dir, running, cert)
}

/// TLS to the binary with only `version` offered.
async fn tls_to(
    port: u16,
    cert: &CertificateDer<'static>,
    version: Version,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = Arc::new(client_config(cert, version));
    common::tls_to(port, tokio_rustls::TlsConnector::from(config)).await
}

async fn tls_ws(port: u16, cert: &CertificateDer<'static>, version: Version) -> TlsWs {
    let config = Arc::new(client_config(cert, version));
    common::wss_to(port, tokio_rustls::TlsConnector::from(config)).await
}

/// The log line that mentions `user`, once it has one that also says `what`.
fn log_line(running: &Running, user: &str, what: &str) -> String {
    let quoted = format!("user=\"{user}\"");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let log = running.log();
        if let Some(line) = log
            .lines()
            .find(|line| line.contains(&quoted) && line.contains(what))
        {
            return line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line about {user} saying {what:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_tcp_close_without_close_notify_mid_message_is_logged_as_truncated() {
    let (_dir, running, cert) = binary("");
    let port = running.port();
    for (name, close_notify) in [("alice", false), ("bob", true), ("carol", false)] {
        let mut ws = tls_ws(port, &cert, Version::Tls13).await;
        send_json(&mut ws, json!({"type": "login", "username": name})).await;
        assert_eq!(next_json(&mut ws).await["success"], true);
        // A masked text frame of 5 bytes, cut after its first byte.
        let tls = ws.get_mut();
        tls.write_all(&[0x81, 0x85, 1, 2, 3, 4, b'x' ^ 1])
            .await
            .unwrap();
        tls.flush().await.unwrap();
        if close_notify {
            // TLS's own end of stream, then the TCP FIN: a clean close (of a broken frame).
            tls.shutdown().await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if name == "carol" {
            // A reset (RST) rather than a FIN: an error, not a truncated stream.
            ws.get_ref().get_ref().0.set_zero_linger().unwrap();
        }
        // Dropped without close_notify: the TCP FIN alone, as when a process dies or an
        // attacker cuts the stream.
        drop(ws);
    }
    let cut = log_line(&running, "alice", "websocket closed");
    assert!(cut.contains("truncated"), "{cut}");
    for other in ["bob", "carol"] {
        let line = log_line(&running, other, "websocket closed");
        assert!(!line.contains("truncated"), "{line}");
    }
    // One line for one event: the grace period's line says how the socket ended, and no
    // second line repeats it (both are written together, before the later sockets' lines).
    let log = running.log();
    let alice: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("user=\"alice\"") && line.contains("websocket closed"))
        .collect();
    assert_eq!(alice.len(), 1, "{alice:#?}");
    assert!(alice[0].contains("holding the name"), "{}", alice[0]);
}

/// A client renewing its keys before every message it sends, and reading nothing: rustls
/// answers each request once the server next writes to it, and allows 32 requests between
/// two application-data records (RFC 8446 §4.6.3 lets a peer answer many with one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_key_updates_from_a_client_that_does_not_read_change_nothing() {
    let (_dir, running, cert) = binary(GENEROUS);
    let port = running.port();
    let mut alice = tls_ws(port, &cert, Version::Tls13).await;
    let bob_io: Box<dyn common::Io> = Box::new(tls_to(port, &cert, Version::Tls13).await);
    let url = format!("wss://localhost:{port}/ws");
    let mut bob = Ws::spawn(
        tokio_tungstenite::client_async(url, bob_io)
            .await
            .unwrap()
            .0,
    );
    send_json(&mut alice, json!({"type": "login", "username": "alice"})).await;
    assert_eq!(next_json(&mut alice).await["success"], true);
    assert_eq!(bob.login("bob").await["success"], true);
    send_json(
        &mut alice,
        json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0"}, "otherUsername": "bob"}),
    )
    .await;
    assert_eq!(bob.recv().await["type"], "offer");
    bob.send(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0"}, "otherUsername": "alice"}))
        .await;
    assert_eq!(next_json(&mut alice).await["type"], "answer");
    // From here on alice never reads.

    let mut rng = Rng(5);
    let mut rounds = async |count: usize| {
        let contents: Vec<String> = (0..count)
            .map(|_| {
                let len = rng.below(4000) + 1;
                rng.text(len)
            })
            .collect();
        // At most 64 messages ahead of bob: his queue holds 256, and a bob slowed down by a
        // busy machine must not be dropped as a slow reader, which would lose messages by
        // design and say nothing about TLS.
        let window = tokio::sync::Semaphore::new(64);
        let send = async {
            for (i, text) in contents.iter().enumerate() {
                window.acquire().await.expect("never closed").forget();
                alice
                    .get_mut()
                    .get_mut()
                    .1
                    .refresh_traffic_keys()
                    .expect("TLS 1.3 can renew its keys");
                send_json(
                    &mut alice,
                    json!({"type": "candidate", "candidate": {"candidate": text, "i": i}, "otherUsername": "bob"}),
                )
                .await;
            }
        };
        let receive = async {
            for (i, text) in contents.iter().enumerate() {
                let message = bob.recv_within(Duration::from_secs(30)).await;
                window.add_permits(1);
                assert_eq!(message["candidate"]["i"], i, "in order");
                assert!(
                    message["candidate"]["candidate"].as_str() == Some(text.as_str()),
                    "message {i} arrived changed"
                );
            }
        };
        tokio::join!(send, receive);
    };
    rounds(100).await;
    let before = running.rss_kib();
    rounds(1000).await;
    let after = running.rss_kib();
    eprintln!("resident memory: {before} KiB, then {after} KiB after 1,000 key updates");
    // 1,000 messages of 2 KB on average went through: kept, they would be 2 MB.
    assert!(
        after < before + 1024,
        "resident memory grew from {before} KiB to {after} KiB over 1,000 key updates"
    );
    // And alice's connection is still whole: bob's message reaches her.
    bob.send(
        json!({"type": "candidate", "candidate": {"candidate": "last"}, "otherUsername": "alice"}),
    )
    .await;
    assert_eq!(
        next_json(&mut alice).await["candidate"]["candidate"],
        "last"
    );
}
