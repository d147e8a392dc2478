//! Calls that survive a dropped connection or a restart: the grace period, the reconnect
//! token, and mutual resume, against the real server (and two instances on a real Redis,
//! where the user comes back to the instance it left).

mod common;

use std::time::Duration;

use common::{Frame, Service, Ws};
use serde_json::{Value, json};

/// Two seconds of grace: long enough to come back in, short enough to run out in a test.
const GRACE: &str = "[websocket]\nresume_grace_secs = 2\n";
/// With rate limits a test's burst stays under.
const GRACE_NO_LIMITS: &str = "[websocket]\nresume_grace_secs = 2\n[limits]\nmessages_per_second = 1000\nmessage_burst = 1000\n";

on_one_server_and_split!(
    config = super::GRACE;
    a_token_takes_over_a_socket_that_still_looks_open,
    a_token_takes_back_a_dropped_socket_with_its_call_and_held_messages,
    a_wrong_or_old_token_is_refused_as_name_taken,
    the_partner_is_told_when_the_grace_runs_out_not_before,
    a_hang_up_during_the_grace_reaches_the_returning_user,
    leaving_on_purpose_ends_things_at_once,
    a_user_in_grace_is_busy_for_others,
    resume_pairs_only_two_users_who_asked_for_each_other,
    a_hang_up_while_waiting_to_resume_withdraws_the_request,
    a_third_party_cannot_resume_someone_elses_call,
    a_request_to_resume_is_busy_for_others_not_for_the_one_asked_for,
);

on_one_server_and_split!(
    config = super::GRACE_NO_LIMITS;
    a_flood_to_a_user_in_grace_ends_the_grace_instead_of_growing,
);

/// alice (first instance) calls bob (second instance), who answers.
async fn in_a_call(server: &Service) -> (Ws, Value, Ws) {
    let (mut alice, login) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    alice
        .send(json!({"type": "offer", "offer": {"sdp": "o"}, "otherUsername": "bob"}))
        .await;
    assert_eq!(bob.recv().await["type"], "offer");
    bob.send(json!({"type": "answer", "answer": {"sdp": "a"}, "otherUsername": "alice"}))
        .await;
    assert_eq!(alice.recv().await["type"], "answer");
    (alice, login, bob)
}

/// `dialtone_users_in_grace`, summed over the service's instances.
async fn in_grace(server: &Service) -> f64 {
    let mut sum = 0.0;
    for one in &server.servers {
        let metrics = one.get("/metrics").await.body;
        sum += common::sample(&metrics, "dialtone_users_in_grace").expect("the gauge");
    }
    sum
}

/// A new socket on alice's own instance.
async fn back_home(server: &Service) -> Ws {
    server.servers[0].ws().await
}

fn candidate(n: u32) -> Value {
    json!({"type": "candidate", "candidate": {"candidate": format!("c{n}")}, "otherUsername": "alice"})
}

async fn a_token_takes_over_a_socket_that_still_looks_open(server: Service) {
    let (mut old, login, mut bob) = in_a_call(&server).await;
    let mut alice = back_home(&server).await;
    let reply = alice.login_with_token("alice", &login["token"]).await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["resumed"], true, "{reply}");
    assert_eq!(reply["otherUsername"], "bob", "{reply}");
    assert_ne!(
        reply["token"], login["token"],
        "tokens rotate at each login"
    );
    // The old socket is closed with a reason; the partner hears nothing of it.
    let close = old.closed().await.expect("a Close frame");
    assert_eq!(u16::from(close.code), 4001);
    assert!(close.reason.contains("another connection"), "{close:?}");
    bob.quiet(300).await;
    // The call goes on over the new socket, both ways.
    bob.send(candidate(1)).await;
    assert_eq!(alice.recv().await["candidate"]["candidate"], "c1");
    alice
        .send(json!({"type": "offer", "offer": {"sdp": "again"}, "otherUsername": "bob"}))
        .await;
    let renegotiation = bob.recv().await;
    assert_eq!(renegotiation["offer"]["sdp"], "again", "{renegotiation}");
    assert_eq!(renegotiation["username"], "alice");
    // The old token is spent: it no longer takes anything.
    let mut thief = back_home(&server).await;
    let refused = thief.login_with_token("alice", &login["token"]).await;
    assert_eq!(refused["code"], "name-taken", "{refused}");
    server.stop().await;
}

async fn a_token_takes_back_a_dropped_socket_with_its_call_and_held_messages(server: Service) {
    let (alice, login, mut bob) = in_a_call(&server).await;
    drop(alice);
    // While alice is away, bob's messages are held for her, in order, and he is told nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 0..5 {
        bob.send(candidate(n)).await;
    }
    bob.send(json!({"type": "offer", "offer": {"sdp": "restart"}, "otherUsername": "alice"}))
        .await;
    bob.quiet(500).await;
    assert_eq!(in_grace(&server).await, 1.0);
    let mut alice = back_home(&server).await;
    let reply = alice.login_with_token("alice", &login["token"]).await;
    assert_eq!(reply["resumed"], true, "{reply}");
    assert_eq!(reply["otherUsername"], "bob", "{reply}");
    assert_eq!(in_grace(&server).await, 0.0);
    for n in 0..5 {
        let held = alice.recv().await;
        assert_eq!(held["candidate"]["candidate"], format!("c{n}"), "{held}");
        assert_eq!(held["username"], "bob");
    }
    assert_eq!(alice.recv().await["offer"]["sdp"], "restart");
    alice
        .send(json!({"type": "answer", "answer": {"sdp": "restarted"}, "otherUsername": "bob"}))
        .await;
    assert_eq!(bob.recv().await["answer"]["sdp"], "restarted");
    assert_eq!(server.calls(), (0, 1));
    server.stop().await;
}

async fn a_wrong_or_old_token_is_refused_as_name_taken(server: Service) {
    let (alice, login, mut bob) = in_a_call(&server).await;
    drop(alice);
    let mut other = back_home(&server).await;
    for token in [json!("not-the-token"), json!(""), Value::Null] {
        let reply = other.login_with_token("alice", &token).await;
        assert_eq!(reply["code"], "name-taken", "{token}: {reply}");
    }
    // bob's token does not take alice's name either.
    let mut bobs = back_home(&server).await;
    let reply = bobs.login_with_token("alice", &Value::Null).await;
    assert_eq!(reply["code"], "name-taken");
    // Nothing of that reached bob; the right token still works.
    bob.quiet(200).await;
    let reply = other.login_with_token("alice", &login["token"]).await;
    assert_eq!(reply["resumed"], true, "{reply}");
    server.stop().await;
}

async fn the_partner_is_told_when_the_grace_runs_out_not_before(server: Service) {
    let (alice, login, mut bob) = in_a_call(&server).await;
    drop(alice);
    // Grace is 2 s: nothing for the first 1.5 s…
    bob.quiet(1500).await;
    assert_eq!(server.users(), 2, "alice's name is still held");
    // …then the usual ending.
    let close = bob.recv_within(Duration::from_secs(3)).await;
    assert_eq!(
        close,
        json!({"type": "close", "username": "alice", "reason": "disconnected"})
    );
    // The name is free for anyone now; the old token has nothing left to take back.
    let mut late = back_home(&server).await;
    let reply = late.login_with_token("alice", &login["token"]).await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply.get("resumed"), None, "{reply}");
    server.stop().await;
}

async fn a_hang_up_during_the_grace_reaches_the_returning_user(server: Service) {
    let (alice, login, mut bob) = in_a_call(&server).await;
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob.send(json!({"type": "close", "otherUsername": "alice"}))
        .await;
    bob.quiet(300).await;
    assert_eq!(server.calls(), (0, 0));
    let mut alice = back_home(&server).await;
    let reply = alice.login_with_token("alice", &login["token"]).await;
    assert_eq!(reply["resumed"], true, "{reply}");
    assert_eq!(
        reply.get("otherUsername"),
        None,
        "no call any more: {reply}"
    );
    assert_eq!(
        alice.recv().await,
        json!({"type": "close", "username": "bob", "reason": "hung-up"})
    );
    server.stop().await;
}

async fn leaving_on_purpose_ends_things_at_once(server: Service) {
    let (mut alice, _, mut bob) = in_a_call(&server).await;
    // A page that logs out closes with 1000: no grace.
    alice
        .send_frame(tokio_tungstenite::tungstenite::Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "logged out".into(),
            },
        )))
        .await;
    let close = bob.recv_within(Duration::from_secs(1)).await;
    assert_eq!(close["reason"], "disconnected", "{close}");
    let (_again, _) = server.user("alice").await;
    server.stop().await;
}

async fn a_user_in_grace_is_busy_for_others(server: Service) {
    let (alice, _, _bob) = in_a_call(&server).await;
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut carol, _) = server.user("carol").await;
    carol
        .send(json!({"type": "offer", "offer": {"sdp": "o"}, "otherUsername": "alice"}))
        .await;
    assert_eq!(
        carol.recv().await,
        json!({"type": "busy", "username": "alice"})
    );
    server.stop().await;
}

async fn a_flood_to_a_user_in_grace_ends_the_grace_instead_of_growing(server: Service) {
    let (alice, _, mut bob) = in_a_call(&server).await;
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // More than the held queue takes (128 frames): the grace ends, and bob is told.
    for n in 0..300 {
        bob.send(candidate(n)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        match bob.next_frame_by(deadline).await {
            Frame::Text(text) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "close" {
                    assert_eq!(message["reason"], "disconnected", "{message}");
                    break;
                }
                // Candidates past the end of the call are refused: not-in-call.
                assert_eq!(message["code"], "not-in-call", "{message}");
            }
            Frame::Ping => continue,
            other => panic!("{other:?}"),
        }
    }
    server.stop().await;
}

async fn resume_pairs_only_two_users_who_asked_for_each_other(server: Service) {
    // As after a restart: both log in plainly, with no call on record.
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    alice
        .send(json!({"type": "resume", "otherUsername": "bob"}))
        .await;
    // Until bob asks too, nothing is relayed on the call alice claims.
    bob.quiet(200).await;
    assert_eq!(
        alice
            .error_code(json!({"type": "candidate", "candidate": {"candidate": "c"}, "otherUsername": "bob"}))
            .await,
        "not-in-call"
    );
    bob.quiet(100).await;
    bob.send(json!({"type": "resume", "otherUsername": "alice"}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "resume", "username": "alice"})
    );
    assert_eq!(
        alice.recv().await,
        json!({"type": "resume", "username": "bob"})
    );
    assert_eq!(server.calls(), (0, 1));
    // Asking again (a page that retried) is answered as done, and tells bob nothing new.
    alice
        .send(json!({"type": "resume", "otherUsername": "BOB"}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "resume", "username": "bob"})
    );
    bob.quiet(200).await;
    // In a call, asking to resume another one is refused.
    let other = json!({"type": "resume", "otherUsername": "zed"});
    assert_eq!(alice.error_code(other).await, "already-in-call");
    // The call works as any other: an ICE restart offer, its answer, candidates, hang-up.
    alice
        .send(json!({"type": "offer", "offer": {"sdp": "ice-restart"}, "otherUsername": "bob"}))
        .await;
    assert_eq!(bob.recv().await["offer"]["sdp"], "ice-restart");
    bob.send(json!({"type": "answer", "answer": {"sdp": "ok"}, "otherUsername": "alice"}))
        .await;
    assert_eq!(alice.recv().await["answer"]["sdp"], "ok");
    bob.send(candidate(7)).await;
    assert_eq!(alice.recv().await["candidate"]["candidate"], "c7");
    alice
        .send(json!({"type": "close", "otherUsername": "bob"}))
        .await;
    assert_eq!(bob.recv().await["reason"], "hung-up");
    assert_eq!(server.calls(), (0, 0));
    server.stop().await;
}

async fn a_request_to_resume_is_busy_for_others_not_for_the_one_asked_for(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    let (mut carol, _) = server.user("carol").await;
    bob.send(json!({"type": "resume", "otherUsername": "alice"}))
        .await;
    bob.quiet(200).await;
    // bob waits for alice: carol gets busy, and alice may simply call him instead.
    carol
        .send(json!({"type": "offer", "offer": {"sdp": "c"}, "otherUsername": "bob"}))
        .await;
    assert_eq!(
        carol.recv().await,
        json!({"type": "busy", "username": "bob"})
    );
    alice
        .send(json!({"type": "offer", "offer": {"sdp": "a"}, "otherUsername": "Bob"}))
        .await;
    let offer = bob.recv().await;
    assert_eq!(
        (&offer["type"], &offer["username"]),
        (&json!("offer"), &json!("alice"))
    );
    alice.quiet(100).await;
    server.stop().await;
}

async fn a_hang_up_while_waiting_to_resume_withdraws_the_request(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    alice
        .send(json!({"type": "resume", "otherUsername": "bob"}))
        .await;
    // alice gives up (the page's hang-up button) before bob is back.
    assert_eq!(
        alice
            .error_code(json!({"type": "close", "otherUsername": "bob"}))
            .await,
        "not-in-call"
    );
    bob.send(json!({"type": "resume", "otherUsername": "alice"}))
        .await;
    alice.quiet(300).await;
    // bob's request finds nobody and runs out (2 s) with the usual ending.
    let lapsed = bob.recv_within(Duration::from_secs(4)).await;
    assert_eq!(
        lapsed,
        json!({"type": "close", "username": "alice", "reason": "disconnected"})
    );
    assert_eq!(server.calls(), (0, 0));
    server.stop().await;
}

async fn a_third_party_cannot_resume_someone_elses_call(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    let (mut mallory, _) = server.user("mallory").await;
    // mallory claims a call with alice, before and after alice asks for bob.
    mallory
        .send(json!({"type": "resume", "otherUsername": "alice"}))
        .await;
    alice
        .send(json!({"type": "resume", "otherUsername": "bob"}))
        .await;
    mallory
        .send(json!({"type": "resume", "otherUsername": "bob"}))
        .await;
    // alice waits to resume a call, but not with mallory.
    mallory
        .send(json!({"type": "resume", "otherUsername": "alice"}))
        .await;
    // Nobody is paired with mallory, and neither victim hears a thing.
    alice.quiet(300).await;
    bob.quiet(100).await;
    assert_eq!(server.calls(), (0, 0));
    // bob asks for alice: the two are paired; mallory's request runs out (the 2 s window)
    // with the usual ending, and alice and bob's call is untouched.
    bob.send(json!({"type": "resume", "otherUsername": "alice"}))
        .await;
    assert_eq!(bob.recv().await["type"], "resume");
    assert_eq!(alice.recv().await["type"], "resume");
    let lapsed = mallory.recv_within(Duration::from_secs(4)).await;
    assert_eq!(lapsed["type"], "close", "{lapsed}");
    assert_eq!(lapsed["reason"], "disconnected");
    alice.quiet(200).await;
    bob.quiet(100).await;
    assert_eq!(server.calls(), (0, 1));
    // Claiming alice now, in her call with bob, reaches nobody either.
    mallory
        .send(json!({"type": "resume", "otherUsername": "alice"}))
        .await;
    alice.quiet(300).await;
    bob.quiet(100).await;
    assert_eq!(
        mallory
            .error_code(json!({"type": "resume", "otherUsername": "mallory"}))
            .await,
        "self-call"
    );
    server.stop().await;
}

/// With several instances the token is checked in Redis too: a page that reconnects to
/// another instance takes its session there, call and all.
mod across_instances {
    use super::*;

    #[tokio::test]
    async fn a_token_takes_a_dropped_session_to_another_instance() {
        let Some(server) = Service::split_with(GRACE).await else {
            return;
        };
        // alice and bob both on the first instance; alice comes back on the second.
        let (mut alice, login) = server.servers[0].user("alice").await;
        let (mut bob, _) = server.servers[0].user("bob").await;
        alice
            .send(json!({"type": "offer", "offer": {"sdp": "o"}, "otherUsername": "bob"}))
            .await;
        assert_eq!(bob.recv().await["type"], "offer");
        bob.send(json!({"type": "answer", "answer": {"sdp": "a"}}))
            .await;
        assert_eq!(alice.recv().await["type"], "answer");
        drop(alice);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut alice = server.servers[1].ws().await;
        let reply = alice.login_with_token("alice", &login["token"]).await;
        assert_eq!(reply["resumed"], true, "{reply}");
        assert_eq!(reply["otherUsername"], "bob", "{reply}");
        // bob's instance now reaches alice on hers, both ways, with no word of the move.
        bob.send(candidate(1)).await;
        assert_eq!(alice.recv().await["candidate"]["candidate"], "c1");
        alice
            .send(json!({"type": "candidate", "candidate": {"candidate": "back"}}))
            .await;
        assert_eq!(bob.recv().await["candidate"]["candidate"], "back");
        alice
            .send(json!({"type": "offer", "offer": {"sdp": "restart"}, "otherUsername": "bob"}))
            .await;
        assert_eq!(bob.recv().await["offer"]["sdp"], "restart");
        // The held session on the first instance was let go quietly: its grace running out
        // (2 s) ends nothing.
        bob.quiet(2500).await;
        alice.quiet(100).await;
        assert_eq!(server.users(), 2);
        alice.send(json!({"type": "close"})).await;
        assert_eq!(bob.recv().await["reason"], "hung-up");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_token_takes_a_live_session_from_another_instance() {
        let Some(server) = Service::split_with(GRACE).await else {
            return;
        };
        let (mut old, login, mut bob) = in_a_call(&server).await;
        // alice was on the first instance, bob on the second; alice comes back on bob's.
        let mut alice = server.servers[1].ws().await;
        let wrong = alice.login_with_token("alice", &json!("guess")).await;
        assert_eq!(wrong["code"], "name-taken", "{wrong}");
        let reply = alice.login_with_token("alice", &login["token"]).await;
        assert_eq!(reply["resumed"], true, "{reply}");
        assert_eq!(reply["otherUsername"], "bob", "{reply}");
        assert!(old.closed().await.is_some(), "the old socket is closed");
        bob.quiet(300).await;
        bob.send(candidate(2)).await;
        assert_eq!(alice.recv().await["candidate"]["candidate"], "c2");
        // The old token is spent everywhere; the new one works on the first instance too.
        let mut thief = server.servers[0].ws().await;
        let refused = thief.login_with_token("alice", &login["token"]).await;
        assert_eq!(refused["code"], "name-taken", "{refused}");
        drop(alice);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut again = server.servers[0].ws().await;
        let back = again.login_with_token("alice", &reply["token"]).await;
        assert_eq!(back["resumed"], true, "{back}");
        assert_eq!(back["otherUsername"], "bob", "{back}");
        bob.send(candidate(3)).await;
        assert_eq!(again.recv().await["candidate"]["candidate"], "c3");
        server.stop().await;
    }
}
