//! The built-in STUN/TURN relay (`[turn_server]`), against coturn's own client
//! (`turnutils_uclient`, Debian's `coturn` package) and raw datagrams: the login hands out a
//! credential it accepts; bad, foreign and expired ones open nothing; denied peers are refused
//! whatever the policy; quotas hold; hostile datagrams get a STUN error or nothing, and the
//! relay goes on serving; and, in network namespaces where two clients cannot reach each
//! other, their traffic goes through dialtone.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use common::TestServer;
use common::coturn::{self, MESSAGES, Relayed, uclient};
use common::netns::{self, Topology};
use common::process::{Running, start_in, write_config};
use dialtone::turn::Credentials;
use serde_json::{Value, json};
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, AttrType, RawAttribute};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    BINDING_REQUEST, CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, Message, MessageType, Method,
    Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use turn::proto::PROTO_UDP;
use turn::proto::channum::ChannelNumber;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::reqtrans::RequestedTransport;

const SECRET: &str = "north-wind-and-sun";

/// An in-process dialtone with the relay on 127.0.0.1 and `extra` in `[turn_server]`.
async fn with_relay(extra: &str) -> TestServer {
    TestServer::start_with(
        &format!(
            "[turn_server]\nenabled = true\nlisten = \"127.0.0.1:0\"\nsecret = \"{SECRET}\"\n{extra}"
        ),
        &common::repo_public(),
    )
    .await
}

fn relay_port(server: &TestServer) -> u16 {
    server
        .app
        .turn_relay()
        .expect("the relay runs")
        .local_addr()
        .port()
}

/// The relay's entry in a login reply.
fn relay_entry(reply: &Value) -> &Value {
    reply["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|server| server["urls"].to_string().contains("?transport="))
        .unwrap_or_else(|| panic!("the login reply lists the built-in relay: {reply}"))
}

/// `turnutils_uclient` off the async runtime, on loopback.
async fn client(port: u16, username: &str, password: &str, args: &[&str]) -> Relayed {
    let (username, password) = (username.to_owned(), password.to_owned());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        uclient(
            None,
            "127.0.0.1".parse().unwrap(),
            port,
            &username,
            &password,
            &args,
        )
    })
    .await
    .unwrap()
}

/// One way coturn's client reaches the relay: the port (the relay's own or the page's), its
/// flags for the transport (and a source address of its own, so that the ways do not share
/// one address's request rate), and the transport's label in `/metrics`.
#[derive(Debug, Clone, Copy)]
struct Way {
    label: &'static str,
    web_port: bool,
    args: &'static [&'static str],
}

/// UDP and TCP on the relay's port; TCP (in the clear) and TLS on the page's.
const WAYS: [Way; 4] = [
    Way {
        label: "udp",
        web_port: false,
        args: &["-L", "127.0.0.1"],
    },
    Way {
        label: "tcp",
        web_port: false,
        args: &["-t", "-L", "127.0.0.2"],
    },
    Way {
        label: "tcp",
        web_port: true,
        args: &["-t", "-L", "127.0.0.3"],
    },
    Way {
        label: "tls",
        web_port: true,
        args: &["-t", "-S", "-L", "127.0.0.4"],
    },
];

impl Way {
    fn port(&self, server: &TestServer) -> u16 {
        if self.web_port {
            server.addr.port()
        } else {
            relay_port(server)
        }
    }

    /// `turnutils_uclient` this way, with `args` after the transport's flags.
    async fn client(
        &self,
        server: &TestServer,
        user: &str,
        password: &str,
        args: &[&str],
    ) -> Relayed {
        let all: Vec<&str> = self.args.iter().chain(args).copied().collect();
        client(self.port(server), user, password, &all).await
    }

    /// `/metrics`' `series` for this way's transport.
    fn series(&self, series: &str) -> String {
        format!("{series}{{transport=\"{}\"}}", self.label)
    }
}

fn metric(server_metrics: &str, name: &str) -> f64 {
    common::sample(server_metrics, name).unwrap_or_else(|| panic!("{name} in {server_metrics}"))
}

/// What an allocation refused before it was made prints.
const NO_ALLOCATION: &str = "Cannot complete Allocation";

#[tokio::test]
async fn the_login_hands_out_a_credential_the_relay_accepts_and_others_open_nothing() {
    if !coturn::available() {
        return;
    }
    let server = with_relay("").await;
    let port = relay_port(&server);
    let before = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_alice, reply) = server.user("alice").await;
    let relay = relay_entry(&reply);
    // UDP and TCP on the relay's port, then TCP on the page's: with a self-signed
    // certificate, no `turns:` (a browser would refuse it).
    let web = server.addr.port();
    assert_eq!(
        relay["urls"],
        json!([
            format!("stun:127.0.0.1:{port}"),
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp"),
            format!("turn:127.0.0.1:{web}?transport=tcp"),
        ]),
        "{reply}"
    );
    let username = relay["username"].as_str().unwrap();
    let (expiry, name) = username.split_once(':').unwrap();
    assert_eq!(name, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    // credential_ttl_secs defaults to a day.
    assert!(
        (before + 86_400..=before + 86_402).contains(&expiry),
        "{expiry}"
    );
    let credential = relay["credential"].as_str().unwrap();
    {
        use base64::Engine;
        let key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, SECRET.as_bytes());
        let expected = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&key, username.as_bytes()).as_ref());
        assert_eq!(credential, expected);
    }
    assert!(!reply.to_string().contains(SECRET), "{reply}");

    // The allocation is made; the peer (a private address, not dialtone's own relay) is then
    // refused by the default policy: the 403 comes only after a successful allocation.
    for way in WAYS {
        let allowed = way
            .client(&server, username, credential, &["-e", "10.1.2.3"])
            .await;
        assert!(
            !allowed.output.contains(NO_ALLOCATION) && allowed.output.contains("403"),
            "{way:?}: {}",
            allowed.output
        );
    }

    let mut tampered = credential.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let credentials = server.app.turn_relay().unwrap().credentials();
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    let (old_user, old_password) = credentials.mint("alice", two_days_ago);
    let foreign = Credentials::new(b"another secret", "dialtone", 600);
    let (foreign_user, foreign_password) = foreign.mint("alice", SystemTime::now());
    let borrowed = format!("{}:mallory", username.split_once(':').unwrap().0);
    for (what, user, password) in [
        ("a tampered credential", username, tampered.as_str()),
        ("an expired credential", &old_user, &old_password),
        (
            "another secret's credential",
            &foreign_user,
            &foreign_password,
        ),
        (
            "alice's credential under another name",
            &borrowed,
            credential,
        ),
    ] {
        for way in WAYS {
            let refused = way
                .client(&server, user, password, &["-e", "10.1.2.3"])
                .await;
            assert!(
                refused.output.contains(NO_ALLOCATION),
                "{what} opened an allocation ({way:?}):\n{}",
                refused.output
            );
        }
    }
    let metrics = server.get("/metrics").await.body;
    for way in WAYS {
        assert!(
            metric(&metrics, &way.series("dialtone_turn_auth_failures_total")) >= 4.0,
            "{way:?}: {metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn denied_peers_are_refused_whatever_the_policy() {
    if !coturn::available() {
        return;
    }
    for policy in ["relay-only", "lan", "public"] {
        let server = with_relay(&format!("peers = \"{policy}\"\n")).await;
        let (_alice, reply) = server.user("alice").await;
        let relay = relay_entry(&reply);
        let (username, credential) = (
            relay["username"].as_str().unwrap(),
            relay["credential"].as_str().unwrap(),
        );
        for way in WAYS {
            for peer in ["127.0.0.1", "169.254.169.254", "0.0.0.0"] {
                let refused = way
                    .client(&server, username, credential, &["-e", peer])
                    .await;
                assert!(
                    !refused.output.contains(NO_ALLOCATION) && refused.output.contains("403"),
                    "{peer} under {policy} ({way:?}):\n{}",
                    refused.output
                );
                assert_eq!(refused.received, 0, "{peer} under {policy} ({way:?})");
            }
        }
        let metrics = server.get("/metrics").await.body;
        for way in WAYS {
            assert!(
                metric(&metrics, &way.series("dialtone_turn_peers_denied_total")) >= 3.0,
                "{policy} ({way:?}): {metrics}"
            );
        }
        server.stop().await;
    }
}

/// `::ffff:127.0.0.1` is 127.0.0.1: coturn's client cannot name it on an IPv4 allocation
/// (it asks for an IPv6 relay for an IPv6 peer, which this IPv4 relay refuses), so these are
/// raw requests signed with the credential a login hands out. An allowed address is the
/// control: the same request for it succeeds. Over UDP, TCP and TLS alike.
#[tokio::test]
async fn the_mapped_form_of_a_denied_peer_is_refused_like_the_peer() {
    // "public": the widest policy, where only the always-denied ranges stop a peer.
    let server = with_relay("peers = \"public\"\n").await;
    let relay = SocketAddr::from(([127, 0, 0, 1], relay_port(&server)));
    let (_alice, reply) = server.user("alice").await;
    let entry = relay_entry(&reply);
    let (username, password) = (
        entry["username"].as_str().unwrap().to_owned(),
        entry["credential"].as_str().unwrap().to_owned(),
    );
    // Over UDP, TCP to the relay's port, and TLS to the page's: the same answers.
    for label in ["udp", "tcp", "tls"] {
        let mut raw = match label {
            "udp" => {
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                socket.connect(relay).await.unwrap();
                Raw::Udp(socket)
            }
            "tcp" => Raw::Stream(Box::new(
                tokio::net::TcpStream::connect(relay).await.unwrap(),
            )),
            _ => Raw::Stream(server.connect(&[]).await),
        };
        mapped_peers_refused(&server, &mut raw, label, &username, &password).await;
    }
    server.stop().await;
}

/// One client's side of the test above, over `raw`.
async fn mapped_peers_refused(
    server: &TestServer,
    raw: &mut Raw,
    label: &str,
    username: &str,
    password: &str,
) {
    let (signed, allocated) = allocate(raw, username, password).await;
    assert_eq!(
        allocated.typ.class, CLASS_SUCCESS_RESPONSE,
        "{label}: {allocated}"
    );

    let peer = |ip: &str| -> Box<dyn Setter> {
        Box::new(PeerAddress {
            ip: ip.parse().unwrap(),
            port: 5000,
        })
    };
    let permit = |ip: &str| signed(METHOD_CREATE_PERMISSION, vec![peer(ip)]);
    let denied_before = peers_denied(server, label).await;
    for mapped in ["::ffff:127.0.0.1", "::ffff:169.254.169.254"] {
        for request in [
            permit(mapped),
            signed(
                METHOD_CHANNEL_BIND,
                vec![Box::new(ChannelNumber(0x4000)), peer(mapped)],
            ),
        ] {
            let answer = raw.exchange(&request).await.expect("an answer");
            assert_eq!(error_code(&answer), 403, "{label}, {mapped}: {answer}");
        }
    }
    let denied_after = peers_denied(server, label).await;
    assert_eq!(denied_after - denied_before, 4.0, "{label}");

    // The control: the same request for an allowed peer succeeds. (Its mapped form
    // passes the guard and the crate then refuses an IPv6 peer on an IPv4 allocation: 443.)
    let allowed = raw.exchange(&permit("10.0.0.5")).await.expect("an answer");
    assert_eq!(
        allowed.typ.class, CLASS_SUCCESS_RESPONSE,
        "{label}: {allowed}"
    );
    let mapped = raw
        .exchange(&permit("::ffff:10.0.0.5"))
        .await
        .expect("an answer");
    assert_eq!(error_code(&mapped), 443, "{label}: {mapped}");
    let denied_end = peers_denied(server, label).await;
    assert_eq!(
        denied_end, denied_after,
        "{label}: allowed peers are not counted as denied"
    );
}

/// Allocates over `raw` with the credential: the 401 challenge first, then the signed
/// request. What signs further requests with the same nonce, and the Allocate's answer.
async fn allocate(
    raw: &mut Raw,
    username: &str,
    password: &str,
) -> (
    impl Fn(Method, Vec<Box<dyn Setter>>) -> Vec<u8> + use<>,
    Message,
) {
    let transport = || -> Box<dyn Setter> {
        Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        })
    };
    let challenge = raw
        .exchange(&request(METHOD_ALLOCATE, vec![transport()]))
        .await
        .expect("a 401 challenge");
    assert_eq!(error_code(&challenge), 401);
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)
        .unwrap()
        .text;
    let (username, password) = (username.to_owned(), password.to_owned());
    let signed = move |method: Method, mut attributes: Vec<Box<dyn Setter>>| {
        attributes.push(Box::new(TextAttribute::new(
            ATTR_USERNAME,
            username.clone(),
        )));
        attributes.push(Box::new(TextAttribute::new(ATTR_REALM, "dialtone".into())));
        attributes.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.clone())));
        attributes.push(Box::new(MessageIntegrity::new_long_term_integrity(
            username.clone(),
            "dialtone".into(),
            password.clone(),
        )));
        request(method, attributes)
    };
    let allocated = raw
        .exchange(&signed(METHOD_ALLOCATE, vec![transport()]))
        .await
        .expect("an answer to the Allocate");
    (signed, allocated)
}

/// A raw client of the relay: a connected UDP socket, or a TCP or TLS stream.
enum Raw {
    Udp(UdpSocket),
    Stream(Box<dyn common::Io>),
}

impl Raw {
    /// Sends one message.
    async fn send(&mut self, message: &[u8]) {
        match self {
            Raw::Udp(socket) => {
                socket.send(message).await.unwrap();
            }
            Raw::Stream(io) => tokio::io::AsyncWriteExt::write_all(io, message)
                .await
                .unwrap(),
        }
    }

    /// The next message (a datagram, or one STUN or ChannelData message off the stream),
    /// if one comes within `patience`.
    async fn recv(&mut self, patience: Duration) -> Option<Vec<u8>> {
        match self {
            Raw::Udp(socket) => {
                let mut buf = vec![0u8; 1600];
                let n = tokio::time::timeout(patience, socket.recv(&mut buf))
                    .await
                    .ok()?
                    .unwrap();
                buf.truncate(n);
                Some(buf)
            }
            Raw::Stream(io) => common::read_message(io, patience).await,
        }
    }

    /// Sends one message and reads the answer (a moment's patience over UDP, where a lost
    /// answer would be retransmitted; over a stream, the tests' usual).
    async fn exchange(&mut self, message: &[u8]) -> Option<Message> {
        self.send(message).await;
        let patience = match self {
            Raw::Udp(_) => Duration::from_millis(500),
            Raw::Stream(_) => common::PATIENCE,
        };
        let mut message = Message {
            raw: self.recv(patience).await?,
            ..Default::default()
        };
        message.decode().unwrap();
        Some(message)
    }
}

async fn peers_denied(server: &TestServer, label: &str) -> f64 {
    metric(
        &server.get("/metrics").await.body,
        &format!("dialtone_turn_peers_denied_total{{transport=\"{label}\"}}"),
    )
}

/// A request of `method` from a fresh transaction, with `attributes`.
fn request(method: Method, attributes: Vec<Box<dyn Setter>>) -> Vec<u8> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(method, CLASS_REQUEST)),
    ];
    setters.extend(attributes);
    let mut message = Message::new();
    message.build(&setters).unwrap();
    message.raw
}

/// Sends `datagram` to the relay and waits a moment for an answer.
async fn exchange(socket: &UdpSocket, relay: SocketAddr, datagram: &[u8]) -> Option<Message> {
    socket.send_to(datagram, relay).await.unwrap();
    let mut buf = vec![0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    let mut message = Message {
        raw: buf[..n].to_vec(),
        ..Default::default()
    };
    message.decode().unwrap();
    Some(message)
}

fn error_code(message: &Message) -> u16 {
    assert_eq!(message.typ.class, CLASS_ERROR_RESPONSE, "{message}");
    let mut code = ErrorCodeAttribute::default();
    code.get_from(message).unwrap();
    code.code.0
}

async fn binding_answered(socket: &UdpSocket, relay: SocketAddr) -> bool {
    let Some(reply) = exchange(socket, relay, &request(BINDING_REQUEST.method, vec![])).await
    else {
        return false;
    };
    assert_eq!(reply.typ.class, CLASS_SUCCESS_RESPONSE, "{reply}");
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&reply).unwrap();
    assert_eq!(
        SocketAddr::new(mapped.ip, mapped.port),
        socket.local_addr().unwrap(),
        "the relay is a STUN server: it says where the request came from"
    );
    true
}

#[tokio::test]
async fn hostile_datagrams_get_a_stun_error_or_nothing_and_the_relay_goes_on() {
    let server = with_relay("").await;
    let relay = SocketAddr::from(([127, 0, 0, 1], relay_port(&server)));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // STUN Binding needs no credential.
    assert!(binding_answered(&socket, relay).await);

    // Not STUN at all, a header cut short, a wrong magic cookie, a length that lies, a
    // response sent to the server: no answer (a reflector would answer junk).
    let binding = request(BINDING_REQUEST.method, vec![]);
    let mut wrong_cookie = binding.clone();
    wrong_cookie[4] ^= 0xff;
    let mut lying_length = binding.clone();
    lying_length[3] = 40;
    let mut response = binding.clone();
    response[0] |= 0x01; // success class (C1, bit 8)
    for junk in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0u8; 7],
        binding[..19].to_vec(),
        wrong_cookie,
        lying_length,
        response,
        vec![0xff; 1400],
    ] {
        assert!(
            exchange(&socket, relay, &junk).await.is_none(),
            "{junk:?} was answered"
        );
    }

    // An unknown method: 400. An unknown comprehension-required attribute: 420.
    // Method 0x0fe, request class, in STUN's interleaved encoding.
    let mut unknown_method = request(BINDING_REQUEST.method, vec![]);
    unknown_method[..2].copy_from_slice(&[0x02, 0xee]);
    assert_eq!(
        error_code(&exchange(&socket, relay, &unknown_method).await.unwrap()),
        400
    );
    let unknown_attribute = request(
        METHOD_ALLOCATE,
        vec![Box::new(RawAttribute {
            typ: AttrType(0x0042),
            length: 4,
            value: vec![0; 4],
        })],
    );
    assert_eq!(
        error_code(&exchange(&socket, relay, &unknown_attribute).await.unwrap()),
        420
    );

    // An Allocate without credentials: 401 with a nonce and the realm, as every client
    // expects before it signs its request.
    let challenge = exchange(&socket, relay, &request(METHOD_ALLOCATE, vec![]))
        .await
        .unwrap();
    assert_eq!(error_code(&challenge), 401);
    let realm = TextAttribute::get_from_as(&challenge, ATTR_REALM).unwrap();
    assert_eq!(realm.text, "dialtone");
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE).unwrap();
    assert!(!nonce.text.is_empty());
    // The next challenge reuses it: nothing is kept per stranger.
    let again = exchange(&socket, relay, &request(METHOD_ALLOCATE, vec![]))
        .await
        .unwrap();
    assert_eq!(
        TextAttribute::get_from_as(&again, ATTR_NONCE).unwrap().text,
        nonce.text
    );

    // A flood from one address: past its rate the relay stops answering it…
    let flood = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let allocate = request(METHOD_ALLOCATE, vec![]);
    for _ in 0..1000 {
        flood.send_to(&allocate, relay).await.unwrap();
    }
    let mut answered = 0;
    let mut buf = vec![0u8; 1500];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), flood.recv_from(&mut buf)).await
    {
        answered += 1;
    }
    assert!(
        (100..1000).contains(&answered),
        "{answered} of 1000 flooded requests answered"
    );
    // …while everyone else is still served, this socket and another address alike.
    assert!(binding_answered(&socket, relay).await);
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    assert!(binding_answered(&other, relay).await);

    let metrics = server.get("/metrics").await.body;
    assert!(
        metric(&metrics, "dialtone_turn_dropped_total{transport=\"udp\"}") >= 7.0,
        "{metrics}"
    );
    // The signaling side never noticed.
    let (_alice, reply) = server.user("alice").await;
    assert_eq!(reply["success"], true);
    server.stop().await;
}

#[tokio::test]
async fn a_user_over_the_quota_gets_486_and_logging_out_removes_their_allocations() {
    if !coturn::available() {
        return;
    }
    let server = with_relay("max_allocations_per_user = 1\n").await;
    let port = relay_port(&server);
    let (alice, reply) = server.user("alice").await;
    let relay = relay_entry(&reply);
    let (username, credential) = (
        relay["username"].as_str().unwrap().to_owned(),
        relay["credential"].as_str().unwrap().to_owned(),
    );
    // One allocation, kept open (-h: the client hangs on after its messages).
    let (user, password) = (username.clone(), credential.clone());
    let held = tokio::task::spawn_blocking(move || {
        std::process::Command::new("turnutils_uclient")
            .args(["-u", &user, "-w", &password, "-p", &port.to_string()])
            .args(["-c", "-h", "-n", "1", "-e", "10.1.2.3", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    })
    .await
    .unwrap();
    let _held = KillOnDrop(held);
    let opened = wait_for_metric(&server, UDP_ALLOCATIONS, |v| v >= 1.0).await;
    assert_eq!(opened, 1.0);
    // A second one for alice: over her quota.
    let second = client(port, &username, &credential, &["-e", "10.1.2.3"]).await;
    assert!(
        second.output.contains(NO_ALLOCATION) || second.output.contains("486"),
        "{}",
        second.output
    );
    // bob has his own quota.
    let (bob, reply) = server.user("bob").await;
    let bobs = relay_entry(&reply);
    let for_bob = client(
        port,
        bobs["username"].as_str().unwrap(),
        bobs["credential"].as_str().unwrap(),
        &["-e", "10.1.2.3"],
    )
    .await;
    assert!(
        !for_bob.output.contains(NO_ALLOCATION),
        "{}",
        for_bob.output
    );
    // bob's client has exited, its allocation left to time out, as a crashed page's would.
    let both = wait_for_metric(&server, UDP_ALLOCATIONS, |v| v >= 2.0).await;
    assert_eq!(both, 2.0);

    // alice logs out: her allocation goes, though her client is still running; then bob's.
    drop(alice);
    let left = wait_for_metric(&server, UDP_ALLOCATIONS, |v| v <= 1.0).await;
    assert_eq!(left, 1.0);
    // The one left is bob's: a second one for him is still over his quota.
    let bobs_second = client(
        port,
        bobs["username"].as_str().unwrap(),
        bobs["credential"].as_str().unwrap(),
        &["-e", "10.1.2.3"],
    )
    .await;
    assert!(bobs_second.output.contains("486"), "{}", bobs_second.output);
    drop(bob);
    let left = wait_for_metric(&server, UDP_ALLOCATIONS, |v| v == 0.0).await;
    assert_eq!(left, 0.0);
    server.stop().await;
}

const UDP_ALLOCATIONS: &str = "dialtone_turn_allocations{transport=\"udp\"}";

/// Kills the client when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `/metrics` until `series` satisfies `done` (or five seconds pass); its last value.
async fn wait_for_metric(server: &TestServer, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let value = metric(&server.get("/metrics").await.body, series);
        if done(value) || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Over UDP, TCP and TLS, on the relay's port and on the page's: the same relayed traffic.
#[test]
fn clients_that_cannot_reach_each_other_relay_through_dialtone() {
    if !coturn::available() {
        return;
    }
    let Some(net) = Topology::create() else {
        return;
    };
    let relay: IpAddr = netns::RELAY.parse().unwrap();
    // The two sides have no route to each other: only to the relay.
    assert!(!Topology::routes(&net.a, netns::B.parse().unwrap()));
    assert!(!Topology::routes(&net.b, netns::A.parse().unwrap()));
    assert!(Topology::routes(&net.b, relay));

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"{relay}:8443\"\n[turn_server]\nenabled = true\n\
             external_ip = \"{relay}\"\nsecret = \"{SECRET}\"\n"
        ),
    );
    let mut command = Topology::command(&net.relay, env!("CARGO_BIN_EXE_dialtone"));
    command.env("RUST_LOG", "info").arg("--config").arg(&config);
    let running = Running::start(command);
    let credentials = Credentials::new(SECRET.as_bytes(), "dialtone", 600);

    // From each side, two clients each allocate a relay address and send to the other's:
    // every message arrives, through dialtone, over each transport (`-t` TCP, `-t -S` TLS), on
    // the relay's own port and on the page's.
    for (port, how) in [
        (3478, &[][..]),
        (3478, &["-t"][..]),
        (8443, &["-t"][..]),
        // 100 ms apart over TLS: coturn's client misses a message that arrives in the same
        // TLS read as another (2 of 10 lost against coturn's own turnserver too).
        (8443, &["-t", "-S", "-z", "100"][..]),
    ] {
        for (side, name) in [(&net.a, "alice"), (&net.b, "bob")] {
            let (username, password) = credentials.mint(name, SystemTime::now());
            let args: Vec<&str> = ["-y"].iter().chain(how).copied().collect();
            let relayed = uclient(Some(side), relay, port, &username, &password, &args);
            assert_eq!(
                relayed.received,
                2 * MESSAGES,
                "{how:?} to port {port} from {side}:\n{}\n{}",
                relayed.output,
                running.log()
            );
        }
    }
    assert!(!running.log().contains("WARN"), "{}", running.log());
}

/// A relay address that only this machine reaches is said at start, with what to set; one
/// a browser can reach (the namespace test above) gives no warning.
#[test]
fn a_loopback_external_address_is_warned_about_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_, running) = start_in(
        dir.path(),
        "[tls]\nmode = \"off\"\n[turn_server]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
    );
    let log = running.wait_for_log("a loopback address");
    let line = log
        .lines()
        .find(|line| line.contains("a loopback address"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("127.0.0.1") && line.contains("external_ip"),
        "{line}"
    );
    // The banner says where the relay takes which transport: with TLS off, no TLS.
    let port = running
        .text()
        .lines()
        .find_map(|line| line.strip_prefix("  TURN relay: UDP and TCP on 127.0.0.1:"))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("{}", running.text()))
        .to_owned();
    assert!(
        running.text().contains(&format!(
            "  TURN relay: UDP and TCP on 127.0.0.1:{port}; TCP on the page's port\n"
        )),
        "{}",
        running.text()
    );
}

/// The login lists the relay on the page's port as what can work there: `turns:NAME` with a
/// certificate browsers trust for a host name, `turn:IP?transport=tcp` with the self-signed
/// one (the first test), nothing behind a proxy; and only the transports served.
#[tokio::test]
async fn the_login_lists_each_transport_only_where_it_can_work() {
    let urls = |reply: &Value| -> Vec<String> {
        relay_entry(reply)["urls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|url| url.as_str().unwrap().to_owned())
            .collect()
    };
    // A certificate from a CA, for a host name.
    let ca = common::PrivateCa::for_names(&["calls.example.test", "localhost"]);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert, format!("{}{}", ca.leaf_pem, ca.ca_pem)).unwrap();
    std::fs::write(&key, &ca.key_pem).unwrap();
    let server = TestServer::start_with(
        &format!(
            "[tls]\nmode = \"files\"\ncert = {:?}\nkey = {:?}\n[turn_server]\nenabled = true\n\
             listen = \"127.0.0.1:0\"\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        &common::repo_public(),
    )
    .await;
    // The test's client trusts the CA (and checks the name localhost).
    let mut server = server;
    server.cert = Some(ca.ca_der.clone());
    let (port, web) = (relay_port(&server), server.addr.port());
    let (_alice, reply) = server.user("alice").await;
    assert_eq!(
        urls(&reply),
        [
            format!("stun:127.0.0.1:{port}"),
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp"),
            format!("turns:calls.example.test:{web}?transport=tcp"),
        ]
    );
    server.stop().await;

    // Only UDP: nothing on the page's port.
    let server = with_relay("transports = [\"udp\"]\n").await;
    let port = relay_port(&server);
    let (_alice, reply) = server.user("alice").await;
    assert_eq!(
        urls(&reply),
        [
            format!("stun:127.0.0.1:{port}"),
            format!("turn:127.0.0.1:{port}?transport=udp"),
        ]
    );
    // …and a STUN message on the page's port is not taken for the relay.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let binding = request(stun::message::METHOD_BINDING, Vec::new());
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &binding)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        common::PATIENCE,
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    server.stop().await;

    // TCP only, behind a proxy with TLS off: the relay's own port, nothing on the page's
    // (TURN does not pass through an HTTP proxy).
    let server = TestServer::start_with(
        "behind_proxy = true\n[tls]\nmode = \"off\"\n[turn_server]\nenabled = true\n\
         listen = \"127.0.0.1:0\"\ntransports = [\"tcp\"]\n",
        &common::repo_public(),
    )
    .await;
    let port = relay_port(&server);
    let (_alice, reply) = server.user("alice").await;
    assert_eq!(
        urls(&reply),
        [format!("turn:127.0.0.1:{port}?transport=tcp")]
    );
    server.stop().await;
}

/// The data path, where dialtone relays ChannelData on a channel the crate bound by itself
/// (`src/turn/channels.rs`), over UDP and over TCP: both ways, byte for byte; a peer that
/// has only a permission still gets Data indications; nothing on an unbound number or from
/// another client; and nothing at all once the allocation is gone. dialtone runs in a
/// namespace of the test's own (a relay refuses loopback peers); the clients and the peers
/// are this process, at the other end of a veth pair.
#[tokio::test]
async fn channel_data_goes_both_ways_only_on_a_bound_channel_and_only_while_the_allocation_lives() {
    const INSIDE: &str = "10.79.0.1";
    const OUTSIDE: &str = "10.79.0.2";
    let Some(ns) = netns::Namespace::linked(INSIDE, OUTSIDE) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"{INSIDE}:8443\"\n[tls]\nmode = \"off\"\n[turn_server]\nenabled = true\n\
             listen = \"{INSIDE}:3478\"\nexternal_ip = \"{INSIDE}\"\nsecret = \"{SECRET}\"\n\
             peers = \"lan\"\n"
        ),
    );
    let mut command = ns.command(env!("CARGO_BIN_EXE_dialtone"));
    command.arg("--config").arg(&config);
    let running = Running::start(command);
    let relay = SocketAddr::new(INSIDE.parse().unwrap(), 3478);
    for wire in ["udp", "tcp"] {
        let connect = || async {
            if wire == "udp" {
                let socket = UdpSocket::bind(SocketAddr::new(OUTSIDE.parse().unwrap(), 0))
                    .await
                    .unwrap();
                socket.connect(relay).await.unwrap();
                Raw::Udp(socket)
            } else {
                Raw::Stream(Box::new(
                    tokio::net::TcpStream::connect(relay).await.unwrap(),
                ))
            }
        };
        channel_data_on(wire, connect().await, connect().await, OUTSIDE).await;
        // Every ChannelData of the 20 round trips, and nothing else, took dialtone's own
        // path (the Data indication, the refused and the late ones did not).
        let page = SocketAddr::new(INSIDE.parse().unwrap(), 8443);
        let metrics = common::plain_get(page, "/metrics").await.body;
        let series = format!("dialtone_turn_channel_packets_total{{transport=\"{wire}\"}}");
        assert_eq!(metric(&metrics, &series), 40.0, "{wire}");
    }
    assert!(!running.log().contains("WARN"), "{}", running.log());
}

/// The test above over one transport: `raw` allocates and binds, `stranger` is another
/// client of the relay.
async fn channel_data_on(wire: &str, mut raw: Raw, mut stranger: Raw, outside: &str) {
    let bind = || async {
        UdpSocket::bind(SocketAddr::new(outside.parse().unwrap(), 0))
            .await
            .unwrap()
    };
    let (peer, other_peer) = (bind().await, bind().await);
    let (username, password) =
        Credentials::new(SECRET.as_bytes(), "dialtone", 600).mint("alice", SystemTime::now());
    let (signed, allocated) = allocate(&mut raw, &username, &password).await;
    assert_eq!(
        allocated.typ.class, CLASS_SUCCESS_RESPONSE,
        "{wire}: {allocated}"
    );
    let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
    relayed.get_from(&allocated).unwrap();
    let relayed = SocketAddr::new(relayed.ip, relayed.port);
    let at = peer.local_addr().unwrap();
    let bound = raw
        .exchange(&signed(
            METHOD_CHANNEL_BIND,
            vec![
                Box::new(ChannelNumber(0x4000)),
                Box::new(PeerAddress {
                    ip: at.ip(),
                    port: at.port(),
                }),
            ],
        ))
        .await
        .expect("an answer to the ChannelBind");
    assert_eq!(bound.typ.class, CLASS_SUCCESS_RESPONSE, "{wire}: {bound}");

    // Client to peer and back, every one, byte for byte; lengths that need padding both
    // ways (a stream's ChannelData is padded to 4 on the way in too).
    for i in 0..20u8 {
        let out = vec![i; 100 + usize::from(i)];
        raw.send(&channel_data(0x4000, &out, wire != "udp")).await;
        let (got, from) = receive(&peer)
            .await
            .expect("the peer gets the client's data");
        assert_eq!(
            (got, from),
            (out, relayed),
            "{wire}: datagram {i} to the peer"
        );
        let back = vec![i ^ 0xFF; 50 + usize::from(i)];
        peer.send_to(&back, relayed).await.unwrap();
        let got = raw
            .recv(common::PATIENCE)
            .await
            .expect("the client gets the peer's data");
        assert_eq!(
            got,
            channel_data(0x4000, &back, true),
            "{wire}: datagram {i} back as ChannelData, padded to 4"
        );
    }
    // The ChannelBind gave the peer's IP a permission: another port of it comes as a Data
    // indication (the crate's), not on the channel.
    other_peer.send_to(b"by indication", relayed).await.unwrap();
    let got = raw.recv(common::PATIENCE).await.expect("a Data indication");
    let mut indication = Message {
        raw: got,
        ..Default::default()
    };
    indication.decode().unwrap();
    assert_eq!(
        indication.typ,
        MessageType::new(stun::message::METHOD_DATA, stun::message::CLASS_INDICATION),
        "{wire}: {indication}"
    );
    let mut from = PeerAddress::default();
    from.get_from(&indication).unwrap();
    let other = other_peer.local_addr().unwrap();
    assert_eq!(SocketAddr::new(from.ip, from.port), other);
    // And the client's Send indication to it goes out from the relayed address (the crate's
    // path, through the relay socket's own send).
    let send = {
        let mut message = Message::new();
        message
            .build(&[
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(
                    stun::message::METHOD_SEND,
                    stun::message::CLASS_INDICATION,
                )),
                Box::new(PeerAddress {
                    ip: other.ip(),
                    port: other.port(),
                }),
                Box::new(turn::proto::data::Data(b"by Send".to_vec())),
            ])
            .unwrap();
        message.raw
    };
    raw.send(&send).await;
    let got = receive(&other_peer)
        .await
        .expect("the Send indication's data");
    assert_eq!(got, (b"by Send".to_vec(), relayed), "{wire}");
    // An unbound number, and the bound one from another client (who says hello first, as
    // a stream must): nothing reaches the peer.
    raw.send(&channel_data(0x4001, b"unbound", wire != "udp"))
        .await;
    assert!(
        stranger
            .exchange(&request(BINDING_REQUEST.method, vec![]))
            .await
            .is_some()
    );
    stranger
        .send(&channel_data(0x4000, b"not mine", wire != "udp"))
        .await;
    assert_eq!(receive(&peer).await, None, "{wire}");

    // The allocation deleted (a Refresh to 0): nothing more goes either way.
    let refreshed = raw
        .exchange(&signed(
            stun::message::METHOD_REFRESH,
            vec![Box::new(turn::proto::lifetime::Lifetime(Duration::ZERO))],
        ))
        .await
        .expect("an answer to the Refresh");
    assert_eq!(
        refreshed.typ.class, CLASS_SUCCESS_RESPONSE,
        "{wire}: {refreshed}"
    );
    raw.send(&channel_data(0x4000, b"after the end", wire != "udp"))
        .await;
    assert_eq!(
        receive(&peer).await,
        None,
        "{wire}: nothing after the allocation ended"
    );
    peer.send_to(b"too late", relayed).await.unwrap();
    assert_eq!(raw.recv(QUIET).await, None, "{wire}");
    // Quiet, not gone: the client's connection still serves it.
    assert!(
        raw.exchange(&request(BINDING_REQUEST.method, vec![]))
            .await
            .is_some(),
        "{wire}: the relay still answers"
    );
}

/// A ChannelData message: `number`, the length, `data`, and (`padded`) zeros up to a
/// multiple of 4.
fn channel_data(number: u16, data: &[u8], padded: bool) -> Vec<u8> {
    let mut frame = number.to_be_bytes().to_vec();
    frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
    frame.extend_from_slice(data);
    if padded {
        frame.resize(frame.len().next_multiple_of(4), 0);
    }
    frame
}

/// How long a test waits to see that nothing comes.
const QUIET: Duration = Duration::from_millis(400);

/// The next datagram on `socket` and where it came from, if one comes within 400 ms (what
/// is expected comes sooner; what must not come would have by then).
async fn receive(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 1600];
    let got = tokio::time::timeout(QUIET, socket.recv_from(&mut buf)).await;
    got.ok().map(|got| {
        let (n, from) = got.unwrap();
        buf.truncate(n);
        (buf, from)
    })
}
