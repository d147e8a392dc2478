//! TURN over TCP and TLS, byte by byte: raw streams to the relay's own port (TCP) and to the
//! page's port (TCP in the clear, and TLS with a client that checks the certificate). Messages
//! split across segments and several in one segment are all read; a message over the size
//! limit, garbage after a valid message, a first message that is not STUN and a silent
//! connection are closed and counted, and nothing else notices; an allocation lives as long
//! as its connection; and the page keeps being served on the port it shares.

mod common;

use std::time::Duration;

use common::{Io, TestServer};
use serde_json::Value;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    BINDING_REQUEST, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE, Message,
    MessageType, Setter,
};
use stun::textattrs::{TextAttribute, Username};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turn::proto::PROTO_UDP;
use turn::proto::reqtrans::RequestedTransport;

const SECRET: &str = "north-wind-and-sun";

async fn with_relay(extra: &str) -> TestServer {
    TestServer::start_with(
        &format!(
            "[limits]\nheader_read_timeout_secs = 2\ntls_handshake_timeout_secs = 2\n[turn_server]\nenabled = true\n\
             listen = \"127.0.0.1:0\"\nsecret = \"{SECRET}\"\n{extra}"
        ),
        &common::repo_public(),
    )
    .await
}

/// Where a raw client connects, and the transport label `/metrics` gives it.
#[derive(Debug, Clone, Copy)]
enum Way {
    /// TCP on the relay's own port.
    RelayPort,
    /// TCP in the clear on the page's port.
    WebPort,
    /// TLS on the page's port.
    Tls,
}

const WAYS: [Way; 3] = [Way::RelayPort, Way::WebPort, Way::Tls];

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Tls => "tls",
            _ => "tcp",
        }
    }

    async fn connect(self, server: &TestServer) -> Box<dyn Io> {
        match self {
            Way::RelayPort => {
                let port = server.app.turn_relay().unwrap().local_addr().port();
                Box::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap())
            }
            Way::WebPort => Box::new(TcpStream::connect(server.addr).await.unwrap()),
            Way::Tls => server.connect(&[]).await,
        }
    }
}

fn binding() -> Vec<u8> {
    let mut message = Message::new();
    message
        .build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
        .unwrap();
    message.raw
}

/// Reads one STUN message off the stream, or `None` when it closes or stays silent.
async fn read_message(io: &mut Box<dyn Io>) -> Option<Message> {
    let raw = common::read_message(io, common::PATIENCE).await?;
    let mut message = Message {
        raw,
        ..Default::default()
    };
    message.decode().ok()?;
    Some(message)
}

/// Whether the server closes the stream (rather than answer or wait) within the patience.
async fn closed(io: &mut Box<dyn Io>) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(common::PATIENCE, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn answered(io: &mut Box<dyn Io>, request: &[u8]) -> bool {
    io.write_all(request).await.unwrap();
    read_message(io)
        .await
        .is_some_and(|m| m.typ.class == CLASS_SUCCESS_RESPONSE)
}

async fn figure(server: &TestServer, series: &str, way: Way) -> f64 {
    let metrics = server.get("/metrics").await.body;
    let name = format!("{series}{{transport=\"{}\"}}", way.label());
    common::sample(&metrics, &name).unwrap_or_else(|| panic!("{name} in {metrics}"))
}

#[tokio::test]
async fn split_and_batched_messages_are_all_read_over_every_stream() {
    let server = with_relay("").await;
    for way in WAYS {
        let mut io = way.connect(&server).await;
        // The first message in three segments, with pauses between them.
        let first = binding();
        for part in [&first[..3], &first[3..13], &first[13..]] {
            io.write_all(part).await.unwrap();
            io.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let answer = read_message(&mut io).await.expect("an answer");
        assert_eq!(answer.typ.class, CLASS_SUCCESS_RESPONSE, "{way:?}");
        // ChannelData for a channel nobody bound (5 bytes and 3 of padding), split after its
        // header, then three requests in one segment: all three answered, so the stream was
        // cut in the right places.
        let channel = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        io.write_all(&channel[..4]).await.unwrap();
        io.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let three: Vec<Vec<u8>> = (0..3).map(|_| binding()).collect();
        let mut rest = channel[4..].to_vec();
        rest.extend(three.concat());
        io.write_all(&rest).await.unwrap();
        for request in &three {
            let answer = read_message(&mut io).await.expect("an answer");
            assert_eq!(answer.transaction_id.0, request[8..20], "{way:?}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn hostile_streams_are_closed_and_counted_and_the_rest_goes_on() {
    let server = with_relay("").await;
    for way in WAYS {
        let dropped = figure(&server, "dialtone_turn_dropped_total", way).await;
        let mut kept = way.connect(&server).await;
        assert!(answered(&mut kept, &binding()).await, "{way:?}");

        // A message over the size limit (a ChannelData header saying 4000 bytes).
        let mut io = way.connect(&server).await;
        assert!(answered(&mut io, &binding()).await);
        io.write_all(&[0x40, 0x00, 0x0F, 0xA0]).await.unwrap();
        assert!(closed(&mut io).await, "{way:?}: a message over the limit");

        // Garbage after a valid message.
        let mut io = way.connect(&server).await;
        assert!(answered(&mut io, &binding()).await);
        io.write_all(&[0xFF; 64]).await.unwrap();
        assert!(closed(&mut io).await, "{way:?}: garbage");

        // A first message that is ChannelData, not STUN (on the page's port, that is neither
        // TLS nor HTTP nor STUN either).
        let mut io = way.connect(&server).await;
        io.write_all(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4])
            .await
            .unwrap();
        assert!(closed(&mut io).await, "{way:?}: ChannelData first");

        // Silence: closed after the first-message (or TLS handshake) deadline, 2 s here.
        let mut io = way.connect(&server).await;
        assert!(closed(&mut io).await, "{way:?}: silence");

        // The connection that behaved is still served, and the counter moved.
        assert!(answered(&mut kept, &binding()).await, "{way:?}");
        let now = figure(&server, "dialtone_turn_dropped_total", way).await;
        let closed_by_the_relay = match way {
            // On the page's port, a first message or silence never reaches the relay.
            Way::RelayPort => 4.0,
            Way::WebPort | Way::Tls => 2.0,
        };
        assert!(
            now - dropped >= closed_by_the_relay,
            "{way:?}: {dropped} → {now}"
        );
    }
    // The page and the signaling did not notice.
    assert_eq!(server.get("/").await.status, 200);
    let (_alice, reply) = server.user("alice").await;
    assert_eq!(reply["success"], true);
    server.stop().await;
}

/// The login's TURN credential, signed into an Allocate with the nonce of a 401.
async fn allocate(io: &mut Box<dyn Io>, reply: &Value) -> Message {
    let entry = reply["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["urls"].to_string().contains("?transport=tcp"))
        .unwrap_or_else(|| panic!("a TCP relay URL in {reply}"));
    let (username, password) = (
        entry["username"].as_str().unwrap(),
        entry["credential"].as_str().unwrap(),
    );
    let transport = || -> Box<dyn Setter> {
        Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        })
    };
    let request = |attributes: Vec<Box<dyn Setter>>| {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        ];
        setters.extend(attributes);
        let mut message = Message::new();
        message.build(&setters).unwrap();
        message.raw
    };
    io.write_all(&request(vec![transport()])).await.unwrap();
    let challenge = read_message(io).await.expect("a 401");
    let mut code = ErrorCodeAttribute::default();
    code.get_from(&challenge).unwrap();
    assert_eq!(code.code.0, 401);
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE).unwrap();
    let realm = TextAttribute::get_from_as(&challenge, ATTR_REALM).unwrap();
    let integrity = MessageIntegrity::new_long_term_integrity(
        username.to_owned(),
        realm.text.clone(),
        password.to_owned(),
    );
    io.write_all(&request(vec![
        transport(),
        Box::new(Username::new(
            stun::attributes::ATTR_USERNAME,
            username.to_owned(),
        )),
        Box::new(realm),
        Box::new(nonce),
        Box::new(integrity),
    ]))
    .await
    .unwrap();
    read_message(io)
        .await
        .expect("an answer to the signed Allocate")
}

#[tokio::test]
async fn an_allocation_over_a_stream_ends_with_its_connection() {
    let server = with_relay("").await;
    let (_alice, reply) = server.user("alice").await;
    for way in WAYS {
        let mut io = way.connect(&server).await;
        let answer = allocate(&mut io, &reply).await;
        assert_eq!(answer.typ.class, CLASS_SUCCESS_RESPONSE, "{way:?}");
        assert_eq!(
            figure(&server, "dialtone_turn_allocations", way).await,
            1.0,
            "{way:?}"
        );
        // Closing the connection ends the allocation at once, not at its lifetime's end
        // (ten minutes).
        drop(io);
        let deadline = tokio::time::Instant::now() + common::PATIENCE;
        while figure(&server, "dialtone_turn_allocations", way).await != 0.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{way:?}: the allocation outlived its connection"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_page_and_the_relay_share_the_port_one_connection_each() {
    let server = with_relay("").await;
    // TURN over TLS and HTTP over TLS, side by side on one port, then the other way round.
    let mut turn = Way::Tls.connect(&server).await;
    assert!(answered(&mut turn, &binding()).await);
    let page = server.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html"), "{}", page.body);
    assert!(answered(&mut turn, &binding()).await);
    // Plain HTTP on the page's port is still redirected to https://, with the relay on.
    let redirect = common::plain_get(server.addr, "/").await;
    assert_eq!(redirect.status, 308, "{}", redirect.status);
    server.stop().await;
}

/// Over the address's request rate (100 a second, bursts of 200), a stream's requests wait
/// their turn instead of being dropped (nothing is retransmitted on a stream): a burst of
/// 400 is answered in full, the later ones about two seconds late (a lower bound: the rate
/// held; a slow machine only makes it later).
#[tokio::test]
async fn a_burst_over_the_rate_is_slowed_not_dropped() {
    let server = with_relay("").await;
    for way in [Way::RelayPort, Way::Tls] {
        let mut io = way.connect(&server).await;
        let requests: Vec<Vec<u8>> = (0..400).map(|_| binding()).collect();
        let started = tokio::time::Instant::now();
        io.write_all(&requests.concat()).await.unwrap();
        for (n, request) in requests.iter().enumerate() {
            let answer = read_message(&mut io)
                .await
                .unwrap_or_else(|| panic!("{way:?}: request {n} of 400 unanswered"));
            assert_eq!(answer.transaction_id.0, request[8..20], "{way:?}");
        }
        // 200 at once, then 200 at 100 a second: the rate held, it was not skipped.
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{way:?}: {:?}",
            started.elapsed()
        );
        // Let the bucket fill again before the next way.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    server.stop().await;
}

/// On a fresh relay, several streams ask at once before any nonce exists: every one is
/// challenged (a stream never retransmits, so a request held back while a nonce is fetched
/// would hang its client), and each transport hands out one nonce, not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_is_challenged_at_once_with_one_nonce_per_transport() {
    let server = with_relay("").await;
    let unsigned = || {
        let mut message = Message::new();
        message
            .build(&[
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
                Box::new(RequestedTransport {
                    protocol: PROTO_UDP,
                }),
            ])
            .unwrap();
        message.raw
    };
    let mut streams = Vec::new();
    for way in WAYS.iter().cycle().take(30) {
        streams.push((way.label(), way.connect(&server).await));
    }
    for (_, io) in &mut streams {
        io.write_all(&unsigned()).await.unwrap();
    }
    let mut nonces: Vec<(&str, String)> = Vec::new();
    for (label, io) in &mut streams {
        let challenge = read_message(io)
            .await
            .unwrap_or_else(|| panic!("{label}: no challenge"));
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&challenge).unwrap();
        assert_eq!(code.code.0, 401, "{label}");
        nonces.push((
            label,
            TextAttribute::get_from_as(&challenge, ATTR_NONCE)
                .unwrap()
                .text,
        ));
        // A second request on the same stream gets the same nonce.
        io.write_all(&unsigned()).await.unwrap();
        let again = read_message(io).await.expect("a second challenge");
        let nonce = TextAttribute::get_from_as(&again, ATTR_NONCE).unwrap().text;
        assert_eq!(nonce, nonces.last().unwrap().1, "{label}");
    }
    for label in ["tcp", "tls"] {
        let mut of: Vec<&String> = nonces
            .iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, n)| n)
            .collect();
        of.dedup();
        assert_eq!(of.len(), 1, "{label}: {nonces:?}");
    }
    server.stop().await;
}

/// Logging out removes the user's allocations over streams too, while their connection is
/// still open (as over UDP: a page that logs out keeps no relay).
#[tokio::test]
async fn logging_out_removes_a_users_stream_allocations() {
    let server = with_relay("").await;
    let (alice, reply) = server.user("alice").await;
    let mut open = Vec::new();
    for way in WAYS {
        let mut io = way.connect(&server).await;
        let answer = allocate(&mut io, &reply).await;
        assert_eq!(answer.typ.class, CLASS_SUCCESS_RESPONSE, "{way:?}");
        open.push(io);
    }
    assert_eq!(
        figure(&server, "dialtone_turn_allocations", Way::RelayPort).await,
        2.0
    );
    assert_eq!(
        figure(&server, "dialtone_turn_allocations", Way::Tls).await,
        1.0
    );
    drop(alice);
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    for way in [Way::RelayPort, Way::Tls] {
        while figure(&server, "dialtone_turn_allocations", way).await != 0.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{way:?}: allocations outlived the logout"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The connections themselves are still open: the allocations went with the login.
    for (io, way) in open.iter_mut().zip(WAYS) {
        assert!(answered(io, &binding()).await, "{way:?}");
    }
    server.stop().await;
}
