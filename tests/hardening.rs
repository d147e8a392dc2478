//! Hostile and unlucky clients against the real server: each sends the bad thing for real,
//! and each test checks both the answer it gets and that everyone else carried on.

mod common;

use std::time::{Duration, Instant};

use common::{Frame, TestServer, repo_public, sample};
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn server_with(extra: &str) -> TestServer {
    TestServer::start_with(extra, &repo_public()).await
}

fn offer() -> Value {
    json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0\r\n"}, "otherUsername": "bob"})
}

/// alice and bob, in a call.
async fn pair(server: &TestServer) -> (common::Ws, common::Ws) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    alice.send(offer()).await;
    assert_eq!(bob.recv().await["type"], "offer");
    bob.send(json!({"type": "answer", "answer": {"sdp": "a"}}))
        .await;
    assert_eq!(alice.recv().await["type"], "answer");
    (alice, bob)
}

/// Checks that alice and bob can still talk.
async fn still_talking(alice: &mut common::Ws, bob: &mut common::Ws) {
    alice
        .send(json!({"type": "candidate", "candidate": {"candidate": "still here"}}))
        .await;
    let got = bob.recv().await;
    assert_eq!(got["candidate"]["candidate"], "still here", "{got}");
}

#[tokio::test]
async fn above_max_connections_upgrades_get_503_and_users_notice_nothing() {
    let server = server_with("[limits]\nmax_connections = 3\n").await;
    let (mut alice, mut bob) = pair(&server).await;
    let third = server.ws().await;
    let refused = server.try_ws_with("/ws", &[]).await;
    assert_eq!(refused.err(), Some(StatusCode::SERVICE_UNAVAILABLE));
    still_talking(&mut alice, &mut bob).await;
    // A place frees up when someone leaves.
    drop(third);
    server.connections_fall_to(2, common::PATIENCE).await;
    assert!(server.try_ws_with("/ws", &[]).await.is_ok());
    let metrics = server.get("/metrics").await.body;
    let refused = "dialtone_connections_refused_total{reason=\"server-full\"}";
    assert_eq!(sample(&metrics, refused), Some(1.0), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn one_address_is_capped_and_behind_a_proxy_the_last_hop_counts() {
    // Not behind a proxy, the peer address counts, and X-Forwarded-For is whatever the client
    // chose to write: three made-up addresses are still one client.
    let server = server_with("[limits]\nmax_connections_per_ip = 2\n").await;
    let _a = server
        .ws_with("/ws", &[("x-forwarded-for", "198.51.100.1")])
        .await;
    let _b = server
        .ws_with("/ws", &[("x-forwarded-for", "198.51.100.2")])
        .await;
    let refused = server
        .try_ws_with("/ws", &[("x-forwarded-for", "198.51.100.3")])
        .await;
    assert_eq!(refused.err(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(server.app.addresses(), 1);
    let metrics = server.get("/metrics").await.body;
    let refused = "dialtone_connections_refused_total{reason=\"too-many-from-address\"}";
    assert_eq!(sample(&metrics, refused), Some(1.0), "{metrics}");
    server.stop().await;

    // Behind a proxy every connection comes from the proxy; the client is the last hop it
    // recorded, whatever the client wrote before it.
    let server = server_with(
        "behind_proxy = true\n[tls]\nmode = \"off\"\n[limits]\nmax_connections_per_ip = 2\n",
    )
    .await;
    let from = |xff: &'static str| [("x-forwarded-for", xff), ("x-forwarded-proto", "https")];
    let _c = server.ws_with("/ws", &from("198.51.100.1")).await;
    let _d = server
        .ws_with("/ws", &from("203.0.113.5, 198.51.100.1"))
        .await;
    let spoofed = server
        .try_ws_with("/ws", &from("10.9.9.9, 198.51.100.1"))
        .await;
    assert_eq!(spoofed.err(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(
        server
            .try_ws_with("/ws", &from("198.51.100.2"))
            .await
            .is_ok()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_candidates_passes_and_a_flood_is_throttled_then_closed() {
    let server = server_with("[limits]\nmessages_per_second = 5\nmessage_burst = 60\n").await;
    let (mut alice, mut bob) = pair(&server).await;
    let (mut carol, _) = server.user("carol").await;

    // A browser's burst of ICE candidates goes through whole.
    for i in 0..50 {
        alice
            .send(json!({"type": "candidate", "candidate": {"candidate": format!("c{i}")}}))
            .await;
    }
    for i in 0..50 {
        assert_eq!(bob.recv().await["candidate"]["candidate"], format!("c{i}"));
    }

    // bob floods: he is told (at most once a second), then closed with 1008.
    let start = Instant::now();
    for _ in 0..400 {
        bob.send(json!({"type": "candidate", "candidate": {"candidate": "x"}}))
            .await;
    }
    let mut rate_limited = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let close = loop {
        match bob.next_frame_by(deadline).await {
            Frame::Text(text) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "error" {
                    assert_eq!(message["code"], "rate-limited", "{message}");
                    rate_limited += 1;
                }
            }
            Frame::Close(frame) => break frame.expect("a close frame"),
            Frame::Ping => {}
            Frame::Gone => panic!("closed without a Close frame"),
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    let seconds = start.elapsed().as_secs() + 1;
    assert!(
        (1..=seconds).contains(&rate_limited),
        "{rate_limited} rate-limited replies in about {seconds} s"
    );

    // alice hears that bob is gone; carol never noticed anything.
    loop {
        let message = alice.recv().await;
        if message["type"] == "close" {
            assert_eq!(message["reason"], "disconnected");
            break;
        }
    }
    carol
        .send(json!({"type": "offer", "offer": {}, "otherUsername": "alice"}))
        .await;
    let (mut dave, _) = server.user("dave").await;
    dave.send(json!({"type": "offer", "offer": {}, "otherUsername": "carol"}))
        .await;
    assert_eq!(dave.recv().await["type"], "busy");
    server.stop().await;
}

#[tokio::test]
async fn login_attempts_are_limited_per_connection() {
    let server = server_with("[limits]\nlogins_per_minute = 3\n").await;
    let mut ws = server.ws().await;
    for _ in 0..3 {
        assert_eq!(ws.login("").await["code"], "invalid-name");
    }
    let reply = ws.login("alice").await;
    assert_eq!(reply["success"], false);
    assert_eq!(reply["code"], "rate-limited");
    // The allowance is per minute: a second later it has not come back (3 a minute is one
    // every 20 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(ws.login("alice").await["code"], "rate-limited");
    // Another connection is not affected.
    let (_other, reply) = server.user("alice").await;
    assert_eq!(reply["success"], true);
    server.stop().await;
}

/// Asserts that `elapsed` is the configured `setting`: not shorter than three quarters of
/// it, not longer than one and a half times (room for a busy machine, far from any other
/// value the code could have used instead).
fn about(elapsed: Duration, setting: Duration, what: &str) {
    assert!(
        elapsed >= setting * 3 / 4 && elapsed <= setting * 3 / 2,
        "{what} after {elapsed:?}; the setting is {setting:?}"
    );
}

#[tokio::test]
async fn a_socket_that_never_logs_in_is_closed_at_the_login_timeout() {
    let server = server_with("[limits]\nlogin_timeout_secs = 2\n").await;
    let opened = Instant::now();
    let mut idle = server.ws().await;
    let (mut alice, _) = server.user("alice").await;
    let close = idle
        .closed_by(tokio::time::Instant::now() + Duration::from_secs(4))
        .await
        .expect("a close frame");
    about(opened.elapsed(), Duration::from_secs(2), "closed");
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason, "log in first");
    // The logged-in one stays.
    alice.quiet(1500).await;
    assert_eq!(alice.login("again").await["code"], "already-logged-in");
    server.stop().await;
}

/// When the server closes a socket, it completes the close handshake: it keeps the
/// connection until the client's Close reply (a browser that finds the connection reset
/// instead reports 1006 and loses the code and reason), then lets go at once.
#[tokio::test]
async fn the_server_waits_for_the_close_reply_then_lets_go() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = server_with("[limits]\nlogin_timeout_secs = 1\n").await;
    let mut client = server.raw_ws_with("/ws", &[]).await;
    // Read the server's Close; the reply is only sent on the next read.
    let frame = tokio::time::timeout(common::PATIENCE, client.next())
        .await
        .expect("a Close within the patience");
    match frame {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(close.code, CloseCode::Policy),
        other => panic!("expected the server's Close, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.app.connections(),
        1,
        "the server waits for the reply"
    );
    // Reading sends the reply; the server then closes the connection.
    let end = tokio::time::timeout(common::PATIENCE, client.next()).await;
    assert!(
        matches!(end, Ok(None | Some(Err(_)))),
        "the connection ends: {end:?}"
    );
    server.connections_fall_to(0, Duration::from_secs(2)).await;
    server.stop().await;
}

#[tokio::test]
async fn websockets_from_a_foreign_origin_are_refused() {
    let server = TestServer::start().await;
    let own = format!("https://localhost:{}", server.addr.port());
    let refused = server
        .try_ws_with("/ws", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(refused.err(), Some(StatusCode::FORBIDDEN));
    let plain = server
        .try_ws_with("/ws", &[("origin", &own.replace("https", "http"))])
        .await;
    assert_eq!(
        plain.err(),
        Some(StatusCode::FORBIDDEN),
        "the scheme counts too"
    );
    let mut page = server.ws_with("/ws", &[("origin", &own)]).await;
    assert_eq!(page.login("alice").await["success"], true);
    // No Origin: not a browser page, let through.
    let mut tool = server.ws().await;
    assert_eq!(tool.login("bob").await["success"], true);
    server.stop().await;

    let server = server_with("allowed_origins = [\"https://calls.example.com\"]\n").await;
    let own = format!("https://localhost:{}", server.addr.port());
    assert!(
        server
            .try_ws_with("/ws", &[("origin", "https://calls.example.com")])
            .await
            .is_ok()
    );
    let refused = server.try_ws_with("/ws", &[("origin", &own)]).await;
    assert_eq!(refused.err(), Some(StatusCode::FORBIDDEN));
    server.stop().await;
}

#[tokio::test]
async fn pages_carry_security_headers() {
    let server = TestServer::start().await;
    for path in ["/", "/app.js", "/missing", "/healthz"] {
        let reply = server.get(path).await;
        let csp = reply.header("content-security-policy");
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(
            csp.contains(&format!(
                "connect-src 'self' wss://localhost:{}",
                server.addr.port()
            )),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(reply.header("x-content-type-options"), "nosniff");
        assert_eq!(reply.header("referrer-policy"), "no-referrer");
        let permissions = reply.header("permissions-policy");
        assert!(permissions.contains("camera=(self)"), "{permissions}");
        assert!(permissions.contains("microphone=(self)"), "{permissions}");
        assert!(
            reply
                .header("strict-transport-security")
                .contains("max-age=")
        );
    }
    // The page really has no inline script or style for the policy to block.
    let page = server.get("/").await.body;
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );
    server.stop().await;

    // Behind a proxy: HSTS only when the browser used https; ws: for an http page.
    let server = server_with("behind_proxy = true\n[tls]\nmode = \"off\"\n").await;
    let https = server
        .request(Request::get("/"), &[("x-forwarded-proto", "https")])
        .await;
    assert!(
        https
            .header("strict-transport-security")
            .contains("max-age=")
    );
    assert!(
        https
            .header("content-security-policy")
            .contains("wss://localhost:")
    );
    let health = server.get("/healthz").await;
    assert_eq!(health.header("strict-transport-security"), "");
    assert!(
        health
            .header("content-security-policy")
            .contains(" ws://localhost:")
    );
    server.stop().await;
}

/// Reads until the server hangs up; panics if it has not after `limit`.
async fn hung_up_within(conn: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(limit, conn.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server still holds the connection after {limit:?}"
    );
}

#[tokio::test]
async fn slow_headers_are_cut_off_at_the_header_timeout() {
    let server = server_with("[limits]\nheader_read_timeout_secs = 2\n").await;
    let mut conn = server.connect(&[b"http/1.1"]).await;
    let started = Instant::now();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    hung_up_within(&mut conn, Duration::from_secs(10)).await;
    about(started.elapsed(), Duration::from_secs(2), "headers cut off");
    // Meanwhile everyone else is served.
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_off_at_the_handshake_timeout() {
    let server = server_with("[limits]\ntls_handshake_timeout_secs = 2\n").await;
    let (mut alice, _) = server.user("alice").await;
    let started = Instant::now();
    // One client sends nothing; another sends the first bytes of a ClientHello and stops.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
    hung_up_within(&mut silent, Duration::from_secs(10)).await;
    hung_up_within(&mut partial, Duration::from_secs(10)).await;
    about(
        started.elapsed(),
        Duration::from_secs(2),
        "handshakes cut off",
    );
    // Those who finished their handshake are kept.
    assert_eq!(alice.login("again").await["code"], "already-logged-in");
    let metrics = server.get("/metrics").await.body;
    assert_eq!(
        sample(&metrics, "dialtone_tls_handshake_failures_total"),
        Some(2.0),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_stalled_connections_only_until_the_drain_timeout() {
    // A download that the client stops reading never finishes by itself.
    let public = tempfile::tempdir().unwrap();
    std::fs::write(public.path().join("big.bin"), vec![7u8; 32 << 20]).unwrap();
    let server = TestServer::start_with("[limits]\ndrain_timeout_secs = 2\n", public.path()).await;
    let mut stalled = server.connect(&[b"http/1.1"]).await;
    stalled
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    stalled.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let (mut alice, _) = server.user("alice").await;

    let stopping = Instant::now();
    let stop = tokio::spawn(server.stop());
    let close = alice.closed().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("the server stopped although a download was stalled")
        .unwrap();
    about(stopping.elapsed(), Duration::from_secs(2), "stopped");
    drop(stalled);
}

#[tokio::test]
async fn upgrades_are_served_on_the_two_signaling_paths_only() {
    let server = TestServer::start().await;
    for path in ["/other", "/ws/", "/app.js", "/healthz"] {
        let refused = server.try_ws_with(path, &[]).await;
        assert_eq!(refused.err(), Some(StatusCode::NOT_FOUND), "{path}");
    }
    for path in ["/", "/ws"] {
        let mut ws = server.try_ws_with(path, &[]).await.expect(path);
        assert_eq!(
            ws.login(&format!("user{}", path.len())).await["success"],
            true
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_slow_reader_is_dropped_and_its_partner_goes_on() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server =
        server_with("[limits]\nmessages_per_second = 100000\nmessage_burst = 100000\n").await;
    // alice logs in, then stops reading.
    let mut alice = server.raw_ws_with("/ws", &[]).await;
    alice
        .send(Message::text(r#"{"type":"login","username":"alice"}"#))
        .await
        .unwrap();
    assert!(matches!(alice.next().await, Some(Ok(Message::Text(_)))));
    let (mut bob, _) = server.user("bob").await;
    let (mut carol, _) = server.user("carol").await;
    bob.send(json!({"type": "offer", "offer": {}, "otherUsername": "alice"}))
        .await;
    let deadline = Instant::now() + common::PATIENCE;
    while server.app.registry().call_of("bob").is_none() {
        assert!(Instant::now() < deadline, "bob's offer arrives");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // bob sends far more than alice's queue and socket buffers can hold.
    let payload = "x".repeat(60_000);
    let mut dropped = false;
    for _ in 0..3000 {
        bob.send(json!({"type": "candidate", "candidate": {"candidate": payload}}))
            .await;
        if server.app.registry().call_of("bob").is_none() {
            dropped = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        dropped,
        "the slow reader was dropped before bob sent 180 MB"
    );
    loop {
        let message = bob.recv().await;
        if message["type"] == "close" {
            assert_eq!(message["username"], "alice");
            assert_eq!(message["reason"], "disconnected");
            break;
        }
    }
    // bob and carol carry on.
    carol
        .send(json!({"type": "offer", "offer": {}, "otherUsername": "bob"}))
        .await;
    // (bob's candidates still in flight when alice went are answered not-in-call.)
    let offer = loop {
        let message = bob.recv().await;
        if message["type"] != "error" {
            break message;
        }
        assert_eq!(message["code"], "not-in-call", "{message}");
    };
    assert_eq!(offer["username"], "carol", "{offer}");
    assert_eq!(server.app.registry().users(), 2);
    // Dropped as a slow reader: no Close frame was queued behind the ones it did not read.
    let metrics = server.get("/metrics").await.body;
    let closes = |code: &str| {
        common::sample(
            &metrics,
            &format!("dialtone_websocket_closes_total{{code=\"{code}\"}}"),
        )
    };
    assert_eq!(closes("none"), Some(1.0), "{metrics}");
    assert_eq!(closes("1008"), None, "{metrics}");
    drop(alice);
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let server = server_with("[websocket]\nmax_message_bytes = 2048\n").await;
    let (mut alice, mut bob) = pair(&server).await;
    still_talking(&mut alice, &mut bob).await;
    let mut stranger = server.ws().await;
    stranger.login("carol").await;
    assert_eq!(
        stranger
            .error_code(json!({"type": "offer", "offer": {}, "otherUsername": "zed"}))
            .await,
        "unknown-user"
    );
    let _ = server
        .try_ws_with("/ws", &[("origin", "https://evil.example")])
        .await;
    let mut big = server.ws().await;
    big.send_text(&"x".repeat(4000)).await;
    assert_eq!(big.closed().await.unwrap().code, CloseCode::Size);
    let mut garbage = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    garbage.write_all(b"not a TLS hello\r\n\r\n").await.unwrap();
    let _ = garbage.read(&mut [0; 16]).await;

    let reply = server.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = reply.body;
    assert_eq!(sample(&text, "dialtone_users"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "dialtone_connections"), Some(3.0), "{text}");
    assert_eq!(
        sample(&text, "dialtone_calls{state=\"active\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "dialtone_calls{state=\"ringing\"}"),
        Some(0.0),
        "{text}"
    );
    for (series, value) in [
        ("dialtone_messages_relayed_total{type=\"offer\"}", 1.0),
        ("dialtone_messages_relayed_total{type=\"answer\"}", 1.0),
        ("dialtone_messages_relayed_total{type=\"candidate\"}", 1.0),
        ("dialtone_errors_total{code=\"unknown-user\"}", 1.0),
        (
            "dialtone_connections_refused_total{reason=\"forbidden-origin\"}",
            1.0,
        ),
        ("dialtone_websocket_closes_total{code=\"1009\"}", 1.0),
        ("dialtone_tls_handshake_failures_total", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(text.contains("# TYPE dialtone_messages_relayed_total counter"));
    server.stop().await;
}

/// Thousands of connect / login / call / disconnect cycles against the real binary, a third
/// of them ending in a dropped TCP connection without a Close frame. The memory measured is
/// the server process's own, so nothing the test itself allocates can hide or fake a leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (_, running) = common::process::start_in(
        dir.path(),
        // A second of grace: the sockets that vanish are held and then let go, and that
        // path must leave nothing behind either.
        "[tls]\nmode = \"off\"\n[websocket]\nresume_grace_secs = 1\n[limits]\nmax_connections_per_ip = 1000\n",
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], running.port()));
    async fn cycles(addr: std::net::SocketAddr, round: usize, worker: usize, count: usize) {
        for i in 0..count {
            let (a, b) = (
                format!("a{round}-{worker}-{i}"),
                format!("b{round}-{worker}-{i}"),
            );
            let mut caller = common::plain_ws(addr).await;
            assert_eq!(caller.login(&a).await["success"], true);
            let mut callee = common::plain_ws(addr).await;
            assert_eq!(callee.login(&b).await["success"], true);
            caller
                .send(json!({"type": "offer", "offer": {"sdp": "x"}, "otherUsername": b}))
                .await;
            callee.recv().await;
            callee
                .send(json!({"type": "answer", "answer": {"sdp": "y"}}))
                .await;
            caller.recv().await;
            match i % 3 {
                0 => {
                    caller.send(json!({"type": "close"})).await;
                    callee.recv().await;
                }
                1 => drop(callee), // vanishes without a Close frame
                _ => {}
            }
        }
    }
    let run = |round: usize| async move {
        let handles: Vec<_> = (0..16)
            .map(|worker| tokio::spawn(cycles(addr, round, worker, CYCLES / 16)))
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        // Every session ends, and the registry and the address counts are empty again.
        let deadline = Instant::now() + common::PATIENCE;
        loop {
            let health: Value =
                serde_json::from_str(&common::plain_get(addr, "/healthz").await.body).unwrap();
            if health["users"] == 0 && health["connections"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "sessions left over: {health}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    const CYCLES: usize = 2400; // 4,800 connections a round
    // The first rounds set the allocator's high-water mark (glibc keeps freed memory); later
    // identical rounds must not raise it. A leak of 1 KiB per cycle would add 2.4 MiB a round.
    run(0).await;
    run(1).await;
    let before = running.rss_kib();
    run(2).await;
    run(3).await;
    let after = running.rss_kib();
    let grown = after.saturating_sub(before);
    assert!(
        grown < 2 * 1024,
        "the server's RSS grew by {grown} KiB over 2 x {CYCLES} cycles ({before} -> {after} KiB)"
    );
    let metrics = common::plain_get(addr, "/metrics").await.body;
    assert_eq!(
        sample(&metrics, "dialtone_calls{state=\"active\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "dialtone_calls{state=\"ringing\"}"),
        Some(0.0)
    );
    eprintln!("churn: server RSS {before} -> {after} KiB over 2 x {CYCLES} cycles");
}
