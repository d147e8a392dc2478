//! The relay protocol over real WSS: login, calls, relaying, and every error case.

mod common;

use common::{Service, TestServer};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

// Every test between users runs twice: on one server, and with the users spread over two
// instances sharing one Redis.
on_one_server_and_split!(
    login_reply_carries_the_configured_ice_servers,
    login_is_refused_when_taken_invalid_or_repeated,
    a_whole_call_is_relayed_with_server_set_names,
    busy_decline_and_strangers,
    someone_in_a_call_cannot_reach_into_another_call,
    a_vanished_peer_ends_the_call_and_frees_the_name,
    every_error_is_answered_and_the_socket_keeps_working,
    shutdown_closes_every_socket_with_1001,
    camera_and_microphone_notices_pass_only_between_partners,
);

async fn camera_and_microphone_notices_pass_only_between_partners(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    let (mut carol, _) = server.user("carol").await;
    let off = json!({"type": "media", "audio": true, "video": false});
    assert_eq!(alice.error_code(off.clone()).await, "not-in-call");
    alice
        .send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "BOB"}))
        .await;
    assert_eq!(bob.recv().await["type"], "offer");
    bob.send(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0"}, "otherUsername": "Alice"}))
        .await;
    assert_eq!(alice.recv().await["type"], "answer");
    alice.send(off).await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "media", "audio": true, "video": false, "username": "alice"})
    );
    bob.send(json!({"type": "media", "audio": false, "video": true, "otherUsername": "alice", "username": "carol"}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "media", "audio": false, "video": true, "username": "bob"})
    );
    // Outsiders reach nobody; a notice without both flags is refused.
    let to_bob = json!({"type": "media", "audio": false, "video": false, "otherUsername": "bob"});
    assert_eq!(carol.error_code(to_bob).await, "not-in-call");
    let half = json!({"type": "media", "audio": false});
    assert_eq!(alice.error_code(half).await, "bad-message");
    alice.quiet(200).await;
    bob.quiet(10).await;
    server.stop().await;
}

fn offer_sdp() -> serde_json::Value {
    json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"})
}

async fn login_reply_carries_the_configured_ice_servers(server: Service) {
    let (_alice, mut reply) = server.user("alice").await;
    // The reconnect token: 128 random bits in base64url (tests/grace.rs uses it).
    let token = reply
        .as_object_mut()
        .and_then(|fields| fields.remove("token"))
        .expect("a token in the login reply");
    assert_eq!(token.as_str().map(str::len), Some(22), "{token}");
    assert_eq!(
        reply,
        json!({
            "type": "login",
            "success": true,
            "username": "alice",
            "iceServers": [{"urls": "stun:stun.l.google.com:19302"}],
        })
    );
    server.stop().await;
}

async fn login_is_refused_when_taken_invalid_or_repeated(server: Service) {
    let (mut alice, _) = server.user("alice").await;

    let mut other = server.ws().await;
    let reply = other.login("alice").await;
    assert_eq!(reply["success"], false, "{reply}");
    assert_eq!(reply["code"], "name-taken");
    assert!(reply["message"].as_str().unwrap().contains("taken"));

    for bad in ["", " alice", "bob\n", &"x".repeat(33), "a\"b"] {
        let reply = other.login(bad).await;
        assert_eq!(reply["success"], false, "{bad:?}: {reply}");
        assert_eq!(reply["code"], "invalid-name", "{bad:?}");
    }
    // The limit counts characters, not bytes: 32 two-byte characters fit, 33 do not.
    let reply = other.login(&"ñ".repeat(33)).await;
    assert_eq!(reply["code"], "invalid-name", "{reply}");
    let (_wide, reply) = server.user(&"ñ".repeat(32)).await;
    assert_eq!(reply["username"], "ñ".repeat(32));
    // The same socket can still log in under a free name.
    assert_eq!(other.login("ñandú").await["success"], true);

    let reply = alice.login("alice2").await;
    assert_eq!(reply["success"], false);
    assert_eq!(reply["code"], "already-logged-in");
    server.stop().await;
}

async fn a_whole_call_is_relayed_with_server_set_names(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;

    // alice tries to pass herself off as carol: the server names the real sender.
    alice
        .send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "bob", "username": "carol"}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "offer", "offer": offer_sdp(), "username": "alice"})
    );

    // Candidates before the answer still go through, in order.
    for i in 0..3 {
        alice
            .send(json!({"type": "candidate", "candidate": {"candidate": format!("c{i}"), "sdpMid": "0"}, "otherUsername": "bob"}))
            .await;
    }
    for i in 0..3 {
        let message = bob.recv().await;
        assert_eq!(message["type"], "candidate");
        assert_eq!(message["candidate"]["candidate"], format!("c{i}"));
        assert_eq!(message["username"], "alice");
    }

    // The tutorial's client answers and sends candidates without otherUsername.
    bob.send(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0\r\n"}}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0\r\n"}, "username": "bob"})
    );
    bob.send(json!({"type": "candidate", "candidate": {"candidate": "b0"}}))
        .await;
    assert_eq!(alice.recv().await["candidate"]["candidate"], "b0");

    // Renegotiation in either direction.
    bob.send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "alice"}))
        .await;
    assert_eq!(alice.recv().await["type"], "offer");

    alice
        .send(json!({"type": "close", "otherUsername": "bob"}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "close", "username": "alice", "reason": "hung-up"})
    );

    // A second call on the same sockets.
    bob.send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "alice"}))
        .await;
    assert_eq!(alice.recv().await["username"], "bob");
    alice.send(json!({"type": "leave"})).await;
    assert_eq!(bob.recv().await["type"], "close");
    assert_eq!(server.calls(), (0, 0));

    // A third, whose browsers cannot connect: the page that gives up says so, and the other
    // hears the same reason (a page may not claim any other).
    bob.send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "alice"}))
        .await;
    assert_eq!(alice.recv().await["username"], "bob");
    for reason in [json!("disconnected"), json!("FAILED"), json!(1)] {
        let code = bob
            .error_code(json!({"type": "close", "otherUsername": "alice", "reason": reason}))
            .await;
        assert_eq!(code, "bad-message", "{reason}");
    }
    assert_eq!(server.calls(), (1, 0), "a refused close ends nothing");
    bob.send(json!({"type": "close", "otherUsername": "alice", "reason": "failed"}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "close", "username": "bob", "reason": "failed"})
    );
    assert_eq!(server.calls(), (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn the_tutorial_root_path_also_upgrades() {
    let server = TestServer::start().await;
    let mut ws = server.ws_at("/").await;
    assert_eq!(ws.login("alice").await["success"], true);
    server.stop().await;
}

async fn busy_decline_and_strangers(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    let (mut carol, _) = server.user("carol").await;

    alice
        .send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "bob"}))
        .await;
    bob.recv().await;

    // bob is being rung by alice: carol gets busy, bob hears nothing.
    carol
        .send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "bob"}))
        .await;
    assert_eq!(
        carol.recv().await,
        json!({"type": "busy", "username": "bob"})
    );
    // carol cannot inject candidates into alice and bob's call.
    let code = carol
        .error_code(json!({"type": "candidate", "candidate": {"candidate": "evil"}, "otherUsername": "bob"}))
        .await;
    assert_eq!(code, "not-in-call");
    // alice cannot ring a second person while ringing bob.
    let code = alice
        .error_code(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "carol"}))
        .await;
    assert_eq!(code, "already-in-call");
    bob.quiet(200).await;

    bob.send(json!({"type": "decline", "otherUsername": "alice"}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "decline", "username": "bob"})
    );

    // Declined: bob is free again, and carol can call him.
    carol
        .send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "bob"}))
        .await;
    assert_eq!(bob.recv().await["username"], "carol");
    server.stop().await;
}

async fn someone_in_a_call_cannot_reach_into_another_call(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    let (mut carol, _) = server.user("carol").await;
    let (mut dave, _) = server.user("dave").await;
    for (caller, callee, name) in [
        (&mut alice, &mut bob, "bob"),
        (&mut carol, &mut dave, "dave"),
    ] {
        caller
            .send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": name}))
            .await;
        callee.recv().await;
        callee
            .send(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0\r\n"}}))
            .await;
        caller.recv().await;
    }
    assert_eq!(server.calls(), (0, 2));

    // alice, in a call with bob, names carol (in a call with dave) in every relayed type.
    for message in [
        json!({"type": "candidate", "candidate": {"candidate": "evil"}, "otherUsername": "carol"}),
        json!({"type": "answer", "answer": {"sdp": "evil"}, "otherUsername": "carol"}),
        json!({"type": "decline", "otherUsername": "carol"}),
        json!({"type": "close", "otherUsername": "carol"}),
    ] {
        assert_eq!(
            alice.error_code(message.clone()).await,
            "not-in-call",
            "{message}"
        );
    }
    for ws in [&mut bob, &mut carol, &mut dave] {
        ws.quiet(200).await;
    }
    assert_eq!(server.calls(), (0, 2), "both calls go on");
    alice
        .send(json!({"type": "candidate", "candidate": {"candidate": "mine"}}))
        .await;
    assert_eq!(bob.recv().await["candidate"]["candidate"], "mine");
    server.stop().await;
}

async fn a_vanished_peer_ends_the_call_and_frees_the_name(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    alice
        .send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "bob"}))
        .await;
    // bob is being rung (the call exists) when his TCP connection drops without a Close
    // frame. (Without this wait the drop can be seen before the offer, on another instance.)
    assert_eq!(bob.recv().await["type"], "offer");
    drop(bob);
    assert_eq!(
        alice.recv().await,
        json!({"type": "close", "username": "bob", "reason": "disconnected"})
    );
    let code = alice
        .error_code(json!({"type": "candidate", "candidate": {"candidate": "late"}}))
        .await;
    assert_eq!(code, "not-in-call");
    // The name is free at once.
    let (mut bob_again, _) = server.user("bob").await;
    alice
        .send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "bob"}))
        .await;
    assert_eq!(bob_again.recv().await["type"], "offer");
    drop(alice);
    assert_eq!(bob_again.recv().await["reason"], "disconnected");
    drop(bob_again);
    // Both sessions are gone from the registry.
    server.connections_fall_to(0, common::PATIENCE).await;
    assert_eq!(server.users(), 0);
    assert_eq!(server.addresses(), 0, "no per-address counts left behind");
    server.stop().await;
}

async fn every_error_is_answered_and_the_socket_keeps_working(server: Service) {
    let mut ws = server.ws().await;

    let code = ws
        .error_code(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "bob"}))
        .await;
    assert_eq!(code, "not-logged-in");

    ws.send_text("this is not json").await;
    let reply = ws.recv().await;
    assert_eq!(reply["code"], "invalid-json", "{reply}");

    ws.send_text(r#"{"type":"dance"}"#).await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "error", "code": "unknown-type", "message": "Command not found: dance"})
    );

    let (_bob, _) = server.user("bob").await;
    ws.login("alice").await;
    let cases = [
        (json!({"type": 42}), "bad-message"),
        (json!({"username": "x"}), "bad-message"),
        (
            json!({"type": "offer", "offer": "not an object", "otherUsername": "bob"}),
            "bad-message",
        ),
        (
            json!({"type": "offer", "offer": offer_sdp()}),
            "bad-message",
        ),
        (
            json!({"type": "offer", "offer": offer_sdp(), "otherUsername": 7}),
            "bad-message",
        ),
        (json!({"type": "candidate"}), "bad-message"),
        (
            json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "zed"}),
            "unknown-user",
        ),
        (
            json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "alice"}),
            "self-call",
        ),
        (
            json!({"type": "answer", "answer": {"sdp": "x"}}),
            "not-in-call",
        ),
        (
            json!({"type": "candidate", "candidate": {}, "otherUsername": "bob"}),
            "not-in-call",
        ),
        (json!({"type": "decline"}), "not-in-call"),
        (
            json!({"type": "close", "otherUsername": "bob"}),
            "not-in-call",
        ),
    ];
    for (message, expected) in cases {
        assert_eq!(ws.error_code(message.clone()).await, expected, "{message}");
    }
    ws.send_binary(b"\x00\x01binary").await;
    assert_eq!(ws.recv().await["code"], "binary-frame");

    // Still fully working.
    ws.send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "bob"}))
        .await;
    ws.quiet(100).await;
    assert_eq!(server.calls(), (1, 0), "ringing");
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_harms_nobody_else() {
    let server = TestServer::start_with(
        "[websocket]\nmax_message_bytes = 4096\n",
        &common::repo_public(),
    )
    .await;
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    let big =
        json!({"type": "offer", "offer": {"sdp": "x".repeat(5000)}, "otherUsername": "alice"});
    bob.send(big).await;
    let frame = bob.closed().await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Size);

    // A message just under the limit is fine for everyone else.
    let (mut carol, _) = server.user("carol").await;
    let fits =
        json!({"type": "offer", "offer": {"sdp": "y".repeat(3900)}, "otherUsername": "alice"});
    carol.send(fits).await;
    assert_eq!(alice.recv().await["username"], "carol");
    server.stop().await;
}

async fn shutdown_closes_every_socket_with_1001(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    let stopping = tokio::spawn(server.stop());
    for ws in [&mut alice, &mut bob] {
        let frame = ws.closed().await.expect("a close frame");
        assert_eq!(frame.code, CloseCode::Away);
        assert_eq!(frame.reason, "server restarting");
    }
    stopping.await.unwrap();
}

#[tokio::test]
async fn turn_credentials_are_minted_per_login() {
    let server = TestServer::start_with(
        "[turn]\nurls = [\"turn:turn.example:3478\"]\nsecret = \"north-wind\"\nttl = 600\n",
        &common::repo_public(),
    )
    .await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_alice, reply) = server.user("alice").await;
    let servers = reply["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{reply}");
    let turn = &servers[1];
    assert_eq!(turn["urls"], json!(["turn:turn.example:3478"]));
    let username = turn["username"].as_str().unwrap();
    let (expiry, name) = username.split_once(':').unwrap();
    assert_eq!(name, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    assert!((before + 600..=before + 602).contains(&expiry), "{expiry}");
    // The credential is what coturn computes from the shared secret: base64 of
    // HMAC-SHA1(secret, username), computed here with ring directly.
    let credential_for = |username: &str| {
        use base64::Engine;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"north-wind");
        base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
    };
    assert_eq!(turn["credential"], credential_for(username), "{reply}");

    // Each login gets its own: bob's names bob and verifies only for bob.
    let (_bob, reply) = server.user("bob").await;
    let bobs = &reply["iceServers"][1];
    let bob_username = bobs["username"].as_str().unwrap();
    assert!(bob_username.ends_with(":bob"), "{reply}");
    assert_eq!(bobs["credential"], credential_for(bob_username));
    assert_ne!(bobs["credential"], turn["credential"]);
    // The secret itself never leaves the server.
    assert!(!reply.to_string().contains("north-wind"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_pings_and_drops_a_silent_socket_after_two_intervals() {
    use futures_util::{SinkExt, StreamExt};
    use std::time::{Duration, Instant};
    use tokio_tungstenite::tungstenite::Message;
    const INTERVAL: Duration = Duration::from_secs(2);
    let server = TestServer::start_with(
        "[websocket]\nping_interval_secs = 2\n",
        &common::repo_public(),
    )
    .await;
    // The first Ping comes one interval after the socket opened, not at once.
    let mut carol = server.ws().await;
    let early = tokio::time::timeout(INTERVAL / 2, carol.next_frame()).await;
    assert!(early.is_err(), "a frame before any was due: {early:?}");
    let (mut alice, _) = server.user("alice").await;
    // bob logs in, then never reads again: the last the server hears of him is his login.
    let mut bob = server.raw_ws_with("/ws", &[]).await;
    let silent_since = Instant::now();
    bob.send(Message::text(r#"{"type":"login","username":"bob"}"#))
        .await
        .unwrap();
    assert!(matches!(bob.next().await, Some(Ok(Message::Text(_)))));
    alice
        .send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "bob"}))
        .await;

    // alice reads, so her client answers the server's Pings with Pongs.
    let deadline = tokio::time::Instant::now() + INTERVAL * 2;
    assert!(
        matches!(alice.next_frame_by(deadline).await, common::Frame::Ping),
        "the server pings every interval"
    );

    // bob never answers: after two intervals of silence the server drops him, and alice
    // hears that the call is over: not sooner, and not much later.
    let deadline = tokio::time::Instant::now() + INTERVAL * 3;
    let close = loop {
        match alice.next_frame_by(deadline).await {
            common::Frame::Text(text) => {
                break serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
            common::Frame::Ping => continue,
            other => panic!("expected bob's close, got {other:?}"),
        }
    };
    let silent_for = silent_since.elapsed();
    assert_eq!(
        close,
        json!({"type": "close", "username": "bob", "reason": "disconnected"})
    );
    assert!(
        silent_for >= INTERVAL * 3 / 2 && silent_for <= INTERVAL * 5 / 2,
        "bob was dropped after {silent_for:?} of silence; the rule is two intervals of {INTERVAL:?}"
    );
    assert_eq!(server.app.registry().users(), 1);
    // A socket given up for silence is presumed dead: no Close reply is waited for, and its
    // place is given back at once (alice's and carol's remain).
    server.connections_fall_to(2, Duration::from_secs(1)).await;

    // What bob would read, had he read: alice's offer, the Pings he never answered, then
    // Close 1001.
    let close = tokio::time::timeout(common::PATIENCE, async {
        loop {
            match bob.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                Some(Ok(Message::Text(text))) if text.contains("\"offer\"") => continue,
                Some(Ok(Message::Close(frame))) => break frame,
                other => panic!("expected Pings and a Close, got {other:?}"),
            }
        }
    })
    .await
    .expect("bob's Close frame was sent")
    .expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason, "no heartbeat");

    // alice, who answers, is kept: by now she has been connected for over two intervals.
    alice.quiet(1500).await;
    assert_eq!(alice.login("again").await["code"], "already-logged-in");
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_harms_nobody_else() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = TestServer::start().await;
    let (mut alice, _) = server.user("alice").await;
    let (mut mallory, _) = server.user("mallory").await;
    let frame = Frame::message(
        &b"{\"type\":\"\xff\xfe\"}"[..],
        OpCode::Data(Data::Text),
        true,
    );
    mallory.send_frame(Message::Frame(frame)).await;
    let close = mallory.closed().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Invalid);

    let (mut bob, _) = server.user("bob").await;
    bob.send(json!({"type": "offer", "offer": offer_sdp(), "otherUsername": "alice"}))
        .await;
    assert_eq!(alice.recv().await["username"], "bob");
    server.stop().await;
}
