//! Who's online (`[presence] enabled`), over real WSS, on one server and across two
//! instances on a real Redis: the list follows logins, calls and departures, a login storm
//! is coalesced, and nothing is sent unless the operator turned it on.

mod common;

use std::time::Duration;

use common::{Frame, Service, Ws};
use serde_json::{Value, json};

const PRESENCE: &str = "[presence]\nenabled = true\n[limits]\nmax_connections_per_ip = 1000\nlogins_per_minute = 1000\n";

on_one_server_and_split!(
    config = super::PRESENCE;
    the_list_follows_logins_calls_and_departures,
    a_login_storm_costs_each_page_a_few_lists,
);

const PRESENCE_GRACE: &str = "[presence]\nenabled = true\n[websocket]\nresume_grace_secs = 8\n";

on_one_server_and_split!(
    config = super::PRESENCE_GRACE;
    a_user_in_grace_stays_listed_and_is_sent_no_lists_meanwhile,
);

/// The names in an `online` frame, with busy marked by a `*`.
fn names(list: &Value) -> Vec<String> {
    list["users"]
        .as_array()
        .expect("users is a list")
        .iter()
        .map(|user| {
            let name = user["username"].as_str().unwrap();
            if user["busy"] == true {
                format!("{name}*")
            } else {
                name.to_owned()
            }
        })
        .collect()
}

/// Reads until an `online` frame lists exactly `wanted` (skipping other lists and any other
/// message); returns how many lists came, and the other messages. Panics after 10 s.
async fn list_becomes(ws: &mut Ws, wanted: &[&str]) -> (usize, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut lists, mut others, mut last) = (0, Vec::new(), None);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next_frame())
            .await
            .unwrap_or_else(|_| panic!("the list never became {wanted:?}; last: {last:?}"));
        let text = match frame {
            Frame::Text(text) => text,
            Frame::Ping => continue,
            other => panic!("expected a message, got {other:?}"),
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["type"] != "online" {
            others.push(message);
            continue;
        }
        lists += 1;
        let got = names(&message);
        if got == wanted {
            assert_eq!(message["total"], wanted.len(), "{message}");
            return (lists, others);
        }
        last = Some(got);
    }
}

async fn the_list_follows_logins_calls_and_departures(server: Service) {
    let (mut alice, _) = server.user("alice").await;
    list_becomes(&mut alice, &["alice"]).await;
    // Sorted by name without regard to case, shown as typed.
    let (mut bob, _) = server.user("Bob").await;
    list_becomes(&mut bob, &["alice", "Bob"]).await;
    list_becomes(&mut alice, &["alice", "Bob"]).await;

    let sdp = json!({"type": "offer", "sdp": "v=0\r\n"});
    alice
        .send(json!({"type": "offer", "offer": sdp, "otherUsername": "bob"}))
        .await;
    let (_, others) = list_becomes(&mut bob, &["alice*", "Bob*"]).await;
    let (mut carol, _) = server.user("carol").await;
    list_becomes(&mut carol, &["alice*", "Bob*", "carol"]).await;
    let offer = if others.is_empty() {
        bob.recv().await
    } else {
        others[0].clone()
    };
    assert_eq!(offer["type"], "offer", "{offer}");
    bob.send(json!({"type": "decline", "otherUsername": "alice"}))
        .await;
    list_becomes(&mut alice, &["alice", "Bob", "carol"]).await;
    // carol's socket goes: she leaves everyone's list.
    drop(carol);
    list_becomes(&mut alice, &["alice", "Bob"]).await;
    list_becomes(&mut bob, &["alice", "Bob"]).await;
    server.stop().await;
}

async fn a_login_storm_costs_each_page_a_few_lists(server: Service) {
    let (mut watcher, _) = server.user("watcher").await;
    list_becomes(&mut watcher, &["watcher"]).await;
    const STORM: usize = 40;
    let mut sockets = Vec::new();
    for _ in 0..STORM {
        sockets.push(server.ws().await);
    }
    // One login every 50 ms, for two seconds.
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(json!({"type": "login", "username": format!("u{i:02}")}))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut everyone: Vec<String> = (0..STORM).map(|i| format!("u{i:02}")).collect();
    everyone.push("watcher".into());
    let wanted: Vec<&str> = everyone.iter().map(String::as_str).collect();
    let (lists, others) = list_becomes(&mut watcher, &wanted).await;
    assert!(others.is_empty(), "{others:?}");
    // Without coalescing every login would send one list: 40. Each broadcast is at least a
    // second after the last, and the logins take two seconds (a few on a slow machine).
    assert!(lists <= 12, "{lists} lists for {STORM} logins");
    for ws in &mut sockets {
        assert_eq!(ws.recv().await["success"], true);
    }
    server.stop().await;
}

async fn a_user_in_grace_stays_listed_and_is_sent_no_lists_meanwhile(server: Service) {
    let (alice, login) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    list_becomes(&mut bob, &["alice", "bob"]).await;
    // alice's connection drops without a word: she is held for the grace period.
    drop(alice);
    let mut others = Vec::new();
    let mut wanted = vec!["alice", "bob"];
    for name in ["c1", "c2", "c3"] {
        others.push(server.user(name).await.0);
        wanted.push(name);
        list_becomes(&mut bob, &wanted).await;
    }
    // Back with her token: the login reply, then the list as it is now, and none of the
    // three lists sent while she was away (her held queue keeps only what a partner sends).
    let mut alice = server.servers[0].ws().await;
    let reply = alice.login_with_token("alice", &login["token"]).await;
    assert_eq!(reply["resumed"], true, "{reply}");
    let list = alice.recv().await;
    assert_eq!(list["type"], "online", "{list}");
    assert_eq!(names(&list), wanted);
    alice.quiet(1500).await;
    server.stop().await;
}

#[tokio::test]
async fn nobody_is_listed_unless_the_operator_turns_it_on() {
    let server = Service::single().await.unwrap();
    let (mut alice, _) = server.user("alice").await;
    let (mut bob, _) = server.user("bob").await;
    alice.quiet(1500).await;
    bob.quiet(10).await;
    server.stop().await;
}
