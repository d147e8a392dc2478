//! The `[turn]` table against the real thing: a coturn `turnserver` started with
//! `--use-auth-secret` and the same secret accepts the credentials dialtone hands each browser
//! at login, and refuses the ones it must: tampered, borrowed by another name, made with
//! another secret, expired.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::TestServer;
use common::coturn::{Coturn, MESSAGES, relay_between_two_clients};
use dialtone::config::{Config, TurnConfig};
use dialtone::signaling::turn_credentials;
use serde_json::Value;

const SECRET: &str = "north-wind-and-sun";

fn turn_table(port: u16, secret: &str) -> String {
    format!("[turn]\nurls = [\"turn:127.0.0.1:{port}\"]\nsecret = \"{secret}\"\nttl = 600\n")
}

/// `[turn]` as dialtone loads it from `text`.
fn turn_config(text: &str) -> TurnConfig {
    Config::parse(text, Path::new("dialtone.toml"))
        .unwrap()
        .turn
        .expect("a [turn] table")
}

/// Allocates through coturn with these credentials, off the async runtime.
async fn relay(port: u16, username: &str, password: &str) -> common::coturn::Relayed {
    let (username, password) = (username.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || relay_between_two_clients(port, &username, &password))
        .await
        .unwrap()
}

#[tokio::test]
async fn coturn_relays_with_the_credentials_a_login_hands_out_and_refuses_the_rest() {
    let Some(coturn) = Coturn::start(SECRET) else {
        return;
    };
    let server =
        TestServer::start_with(&turn_table(coturn.port, SECRET), &common::repo_public()).await;
    let (_alice, reply) = server.user("alice").await;
    let turn: &Value = reply["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|server| server["urls"].to_string().contains("turn:"))
        .unwrap_or_else(|| panic!("the login reply lists the TURN server: {reply}"));
    assert_eq!(
        turn["urls"][0],
        format!("turn:127.0.0.1:{}", coturn.port),
        "{reply}"
    );
    let username = turn["username"].as_str().unwrap();
    let credential = turn["credential"].as_str().unwrap();

    // What the browser would do with them: both relays allocated, every message through.
    let relayed = relay(coturn.port, username, credential).await;
    assert!(
        relayed.allocated,
        "coturn refused dialtone's credentials:\n{}\n{}",
        relayed.output,
        coturn.log()
    );
    assert_eq!(relayed.received, 2 * MESSAGES, "{}", relayed.output);

    // One character off, the same credential under another name, or a credential made with
    // another secret: no allocation, so nothing is relayed.
    let mut tampered = credential.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (expiry, _) = username.split_once(':').unwrap();
    let borrowed = format!("{expiry}:mallory");
    let other_secret = turn_config(&turn_table(coturn.port, "another-secret"));
    let (foreign_user, foreign_credential) =
        turn_credentials(&other_secret, "alice", SystemTime::now());
    for (what, username, credential) in [
        ("a tampered credential", username, tampered.as_str()),
        (
            "alice's credential under another name",
            &borrowed,
            credential,
        ),
        (
            "a credential made with another secret",
            &foreign_user,
            &foreign_credential,
        ),
    ] {
        let relayed = relay(coturn.port, username, credential).await;
        assert!(
            !relayed.allocated && relayed.received == 0,
            "coturn accepted {what}:\n{}",
            relayed.output
        );
        assert!(
            relayed.output.contains("Cannot complete Allocation"),
            "{what}: {}",
            relayed.output
        );
    }

    // Credentials dialtone minted with this very secret, but an hour and a ttl ago: expired.
    let ours = turn_config(&turn_table(coturn.port, SECRET));
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let (old_user, old_credential) = turn_credentials(&ours, "alice", an_hour_ago);
    let relayed = relay(coturn.port, &old_user, &old_credential).await;
    assert!(
        !relayed.allocated && relayed.received == 0,
        "coturn accepted an expired credential:\n{}",
        relayed.output
    );
    // …while the same function, minting now, makes a credential coturn takes: the refusal
    // above is the expiry, not the minting.
    let (user, credential) = turn_credentials(&ours, "alice", SystemTime::now());
    assert!(relay(coturn.port, &user, &credential).await.allocated);
    server.stop().await;
}
