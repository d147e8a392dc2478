//! dialtone behind a real nginx or Caddy that terminates TLS, configured with docs/deployment.md's
//! examples: the page and the signaling socket go through it, the users' own addresses reach
//! the log, and the two usual mistakes with nginx (`behind_proxy` left off, a proxy that
//! drops the port from `Host`) each give a warn line that says what to change.

mod common;

use std::net::IpAddr;

use common::Ws;
use common::process::{Running, start_in};
use common::proxy::{Proxy, edit};
use hyper::StatusCode;
use serde_json::json;

const ALICE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const BOB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// The binary with TLS off on loopback, as docs/deployment.md says to run it.
fn dialtone(dir: &std::path::Path, behind_proxy: bool) -> Running {
    let extra = format!("behind_proxy = {behind_proxy}\n[tls]\nmode = \"off\"\n");
    start_in(dir, &extra).1
}

async fn logged_in(proxy: &Proxy, source: IpAddr, name: &str) -> Ws {
    let mut ws = proxy
        .ws(source)
        .await
        .expect("the upgrade through the proxy");
    let reply = ws.login(name).await;
    assert_eq!(
        reply["success"], true,
        "{name} logged in through the proxy: {reply}"
    );
    ws
}

/// alice calls bob and bob answers, every message through nginx.
async fn call(alice: &mut Ws, bob: &mut Ws) {
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n";
    alice
        .send(json!({"type": "offer", "offer": {"type": "offer", "sdp": sdp}, "otherUsername": "bob"}))
        .await;
    let offer = bob.recv().await;
    assert_eq!(offer["type"], "offer", "{offer}");
    assert_eq!(offer["username"], "alice", "{offer}");
    assert_eq!(offer["offer"]["sdp"], sdp, "the SDP came through unchanged");
    bob.send(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0\r\n"}, "otherUsername": "alice"}))
        .await;
    assert_eq!(alice.recv().await["type"], "answer");
}

/// The page, its script and a call through `proxy`, with each user's own address in the log
/// (behind_proxy trusts the proxy's X-Forwarded-For), and no warn line.
async fn page_and_call_through(proxy: &Proxy, running: &Running) {
    let page = proxy.get(ALICE, "/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", proxy.log());
    assert!(
        page.body.contains("id=\"username-to-call\""),
        "{}",
        page.body
    );
    assert!(!page.header("content-security-policy").is_empty());
    let script = proxy.get(ALICE, "/app.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.header("content-type").contains("javascript"));

    let mut alice = logged_in(proxy, ALICE, "alice").await;
    let mut bob = logged_in(proxy, BOB, "bob").await;
    call(&mut alice, &mut bob).await;
    alice
        .send(json!({"type": "close", "otherUsername": "bob"}))
        .await;
    assert_eq!(bob.recv().await["type"], "close");

    // Not the proxy's 127.0.0.1.
    let log = running.wait_for_log("reason=\"hung up\"");
    let started = log.lines().find(|l| l.contains("call started")).unwrap();
    assert!(started.contains("client=127.0.0.2"), "{started}");
    let answered = log.lines().find(|l| l.contains("call answered")).unwrap();
    assert!(answered.contains("client=127.0.0.3"), "{answered}");
    assert!(
        !log.contains("WARN"),
        "no warn line in the documented setup:\n{log}"
    );
}

#[tokio::test]
async fn the_readme_nginx_example_carries_the_page_and_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let running = dialtone(dir.path(), true);
    let Some(nginx) = Proxy::nginx(running.port(), |block| block) else {
        return;
    };
    page_and_call_through(&nginx, &running).await;
}

#[tokio::test]
async fn the_readme_caddy_example_carries_the_page_and_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let running = dialtone(dir.path(), true);
    let Some(caddy) = Proxy::caddy(running.port()) else {
        return;
    };
    page_and_call_through(&caddy, &running).await;
}

#[tokio::test]
async fn behind_nginx_with_behind_proxy_off_calls_work_and_the_log_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let running = dialtone(dir.path(), false);
    let Some(nginx) = Proxy::nginx(running.port(), |block| block) else {
        return;
    };
    // The page's https:// origin is accepted with TLS off, so the call itself works…
    let mut alice = logged_in(&nginx, ALICE, "alice").await;
    let mut bob = logged_in(&nginx, BOB, "bob").await;
    call(&mut alice, &mut bob).await;
    // …but every user is nginx's address, and the log says so, and what to set, once.
    let log = running.wait_for_log("behind_proxy is false");
    let warn = log
        .lines()
        .find(|l| l.contains("behind_proxy is false"))
        .unwrap();
    assert!(warn.contains("WARN"), "{warn}");
    assert!(warn.contains("set behind_proxy = true in"), "{warn}");
    assert!(
        warn.contains("dialtone.toml"),
        "names the file in use: {warn}"
    );
    assert_eq!(log.matches("behind_proxy is false").count(), 1, "{log}");
    let started = log.lines().find(|l| l.contains("call started")).unwrap();
    assert!(started.contains("client=127.0.0.1"), "{started}");
}

#[tokio::test]
async fn an_nginx_that_drops_the_port_from_host_gets_a_warn_line_naming_both_origins() {
    let dir = tempfile::tempdir().unwrap();
    let running = dialtone(dir.path(), true);
    // The line most nginx guides have: `$host` has no port, so on any port but 443 the
    // page's origin and the Host dialtone sees differ.
    let Some(nginx) = Proxy::nginx(running.port(), |block| {
        edit(&block, "Host $http_host;", "Host $host;")
    }) else {
        return;
    };
    let refused = nginx.ws(ALICE).await.err();
    assert_eq!(refused, Some(StatusCode::FORBIDDEN));
    let log = running.wait_for_log("websocket refused");
    let warn = log
        .lines()
        .find(|l| l.contains("websocket refused"))
        .unwrap();
    assert!(warn.contains("WARN"), "{warn}");
    assert!(
        warn.contains(&format!("{:?}", nginx.origin())),
        "the origin that came: {warn}"
    );
    assert!(
        warn.contains("\"https://localhost\""),
        "the origin accepted: {warn}"
    );
    assert!(warn.contains("allowed_origins"), "{warn}");
    assert!(warn.contains("client=127.0.0.2"), "{warn}");
    // The page itself still loads: only the socket checks the origin.
    assert_eq!(nginx.get(ALICE, "/").await.status, StatusCode::OK);
}
