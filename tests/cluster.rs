//! Several real dialtone processes on one real Redis, and each way that setup fails: an
//! instance killed or stopped, Redis stalled or restarted empty, a subscription killed or gone
//! deaf, TLS to Redis, and the password kept out of the log.
//!
//! Skipped without `redis-server`, except under `CI=true`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::process::{Running, dialtone, start_in};
use common::redis::Redis;
use common::{Ws, plain_get, plain_ws, sample};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// What the spec promises for failover with the default settings.
const FAILOVER: Duration = Duration::from_secs(10);

struct Instance {
    run: Running,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A dialtone process (TLS off: the cluster is what is under test here) on `url`.
fn instance_on(url: &str, id: &str, extra: &str) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    // Tests log in again and again on one socket, more often than a person would.
    // No grace period unless a test sets one: these tests are about what a dropped socket
    // or a vanished instance does at once.
    let (grace, extra): (Vec<&str>, Vec<&str>) = extra
        .lines()
        .partition(|line| line.starts_with("resume_grace_secs"));
    let websocket = format!(
        "[websocket]\n{}\n",
        grace.first().unwrap_or(&"resume_grace_secs = 0")
    );
    let extra = extra.join("\n");
    let config = format!(
        "[tls]\nmode = \"off\"\n{websocket}[limits]\nlogins_per_minute = 600\n\
         [cluster]\nredis_url = {url:?}\ninstance_id = {id:?}\n{extra}"
    );
    let (_, run) = start_in(dir.path(), &config);
    let addr = SocketAddr::from(([127, 0, 0, 1], run.port()));
    Instance {
        run,
        addr,
        _dir: dir,
    }
}

fn instance(redis: &Redis, id: &str, extra: &str) -> Instance {
    instance_on(&redis.url(), id, extra)
}

impl Instance {
    async fn ws(&self) -> Ws {
        plain_ws(self.addr).await
    }

    async fn user(&self, name: &str) -> Ws {
        let mut ws = self.ws().await;
        let reply = ws.login(name).await;
        assert_eq!(reply["success"], true, "login as {name}: {reply}");
        ws
    }

    async fn health(&self) -> (u16, Value) {
        let reply = plain_get(self.addr, "/healthz").await;
        let body = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        (reply.status.as_u16(), body)
    }

    /// Waits until `/healthz` says the backplane is `want`; returns how long that took.
    async fn backplane_becomes(&self, want: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let (status, body) = self.health().await;
            if body["backplane"] == want {
                assert_eq!(status, if want == "ok" { 200 } else { 503 }, "{body}");
                assert_eq!(body["status"], want, "{body}");
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "backplane still {body} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metrics(&self) -> String {
        plain_get(self.addr, "/metrics").await.body
    }
}

/// Instances a and b on `redis` (with `extra` settings each), alice on a and bob on b, in a
/// call alice started.
async fn alice_and_bob_in_a_call(redis: &Redis, extra: &str) -> (Instance, Instance, Ws, Ws) {
    let a = instance(redis, "a", extra);
    let b = instance(redis, "b", extra);
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    call(&mut alice, &mut bob, "bob").await;
    (a, b, alice, bob)
}

fn offer() -> Value {
    json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0\r\n"}, "otherUsername": ""})
}

fn offer_to(name: &str) -> Value {
    let mut message = offer();
    message["otherUsername"] = name.into();
    message
}

/// `caller` calls `callee` and the call is answered.
async fn call(caller: &mut Ws, callee: &mut Ws, callee_name: &str) {
    caller.send(offer_to(callee_name)).await;
    assert_eq!(callee.recv().await["type"], "offer");
    callee
        .send(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0\r\n"}}))
        .await;
    assert_eq!(caller.recv().await["type"], "answer");
}

async fn candidate_gets_through(from: &mut Ws, to: &mut Ws, text: &str) {
    from.send(json!({"type": "candidate", "candidate": {"candidate": text}}))
        .await;
    assert_eq!(to.recv().await["candidate"]["candidate"], text);
}

/// Sends candidates from `from` until one reaches `to`. Until a broken subscription is back a
/// message may be lost (pub/sub is at most once); after, everything goes through.
async fn until_through(from: &mut Ws, to: &mut Ws, since: Instant) {
    for n in 1.. {
        let text = format!("probe {n}");
        from.send(json!({"type": "candidate", "candidate": {"candidate": text}}))
            .await;
        let got = tokio::time::timeout(Duration::from_millis(300), to.recv()).await;
        if got.is_ok_and(|message| message["candidate"]["candidate"] == text.as_str()) {
            return;
        }
        assert!(
            since.elapsed() < FAILOVER,
            "not repaired after {FAILOVER:?}"
        );
    }
}

#[tokio::test]
async fn two_instances_are_one_service_and_show_it_in_metrics() {
    let Some(redis) = Redis::start() else { return };
    let a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let mut other = b.ws().await;
    assert_eq!(other.login("alice").await["code"], "name-taken");
    call(&mut alice, &mut bob, "bob").await;
    candidate_gets_through(&mut bob, &mut alice, "b1").await;
    let (status, health) = a.health().await;
    assert_eq!(
        (status, &health["backplane"]),
        (200, &json!("ok")),
        "{health}"
    );

    // Each instance counts its own side; the heartbeat counts the live instances.
    let metrics = a.metrics().await;
    assert!(
        sample(&metrics, "dialtone_backplane_up") == Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "dialtone_backplane_published_total") >= Some(1.0),
        "the offer went to another instance: {metrics}"
    );
    assert!(
        sample(&metrics, "dialtone_backplane_received_total") >= Some(2.0),
        "the answer and the candidate came from one: {metrics}"
    );
    assert!(
        sample(
            &metrics,
            "dialtone_backplane_round_trip_seconds_count{op=\"offer\"}"
        ) >= Some(1.0),
        "{metrics}"
    );
    let deadline = Instant::now() + FAILOVER;
    while sample(&b.metrics().await, "dialtone_backplane_instances") != Some(2.0) {
        assert!(Instant::now() < deadline, "two live instances counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        a.run.log().contains("cluster mode: Redis at"),
        "{}",
        a.run.log()
    );
}

#[tokio::test]
async fn an_instance_killed_mid_call_is_reaped_and_its_partners_told() {
    let Some(redis) = Redis::start() else { return };
    // The default heartbeat and lease: failover must come within 10 s with them.
    let (mut a, b, _alice, mut bob) = alice_and_bob_in_a_call(&redis, "").await;

    a.run.signal("KILL");
    a.run.wait(Duration::from_secs(5));
    let killed = Instant::now();
    let told = bob.recv_within(FAILOVER + Duration::from_secs(2)).await;
    let failover = killed.elapsed();
    assert_eq!(
        told,
        json!({"type": "close", "username": "alice", "reason": "disconnected"})
    );
    assert!(failover <= FAILOVER, "failover took {failover:?}");
    eprintln!("failover after SIGKILL: {failover:?}");
    // alice's name is free again, and bob is free to take a call.
    let mut alice_again = b.user("alice").await;
    call(&mut alice_again, &mut bob, "bob").await;
    assert!(
        b.run.log().contains("stopped renewing their lease"),
        "{}",
        b.run.log()
    );
}

#[tokio::test]
async fn with_a_grace_period_a_user_whose_instance_was_killed_resumes_on_another() {
    let Some(redis) = Redis::start() else { return };
    let (mut a, b, _alice, mut bob) =
        alice_and_bob_in_a_call(&redis, "resume_grace_secs = 20\n").await;
    a.run.signal("KILL");
    a.run.wait(Duration::from_secs(5));
    let killed = Instant::now();
    // alice's page comes back on the other instance: her name is free once the dead
    // instance's lease lapses; she logs in (her token means nothing there) and resumes.
    let mut alice = b.ws().await;
    loop {
        let reply = alice.login("alice").await;
        if reply["success"] == true {
            break;
        }
        assert_eq!(reply["code"], "name-taken", "{reply}");
        assert!(killed.elapsed() < FAILOVER, "alice's name was never freed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    alice
        .send(json!({"type": "resume", "otherUsername": "bob"}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "resume", "username": "bob"})
    );
    // bob heard nothing but that: no "disconnected" in between.
    assert_eq!(
        bob.recv().await,
        json!({"type": "resume", "username": "alice"})
    );
    eprintln!("resumed {:?} after SIGKILL", killed.elapsed());
    candidate_gets_through(&mut alice, &mut bob, "after").await;
    candidate_gets_through(&mut bob, &mut alice, "both ways").await;
    alice.send(json!({"type": "close"})).await;
    assert_eq!(bob.recv().await["reason"], "hung-up");
}

#[tokio::test]
async fn with_a_grace_period_the_partner_of_a_stopped_instance_waits_then_is_told() {
    let Some(redis) = Redis::start() else { return };
    let extra = "resume_grace_secs = 2\nheartbeat_ms = 200\nlease_ms = 1000\n";
    let (mut a, _b, _alice, mut bob) = alice_and_bob_in_a_call(&redis, extra).await;
    a.run.signal("TERM");
    let stopped = Instant::now();
    // Nobody resumes: bob waits out the grace, then hears the usual ending.
    bob.quiet(1500).await;
    let told = bob.recv_within(Duration::from_secs(3)).await;
    assert_eq!(
        told,
        json!({"type": "close", "username": "alice", "reason": "disconnected"})
    );
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
    assert!(a.run.wait(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn a_wait_for_a_resume_outlives_a_redis_restart_and_still_ends() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let extra = "resume_grace_secs = 3\nheartbeat_ms = 200\nlease_ms = 1000\n";
    let (mut a, _b, _alice, mut bob) = alice_and_bob_in_a_call(&redis, extra).await;
    a.run.signal("TERM");
    // bob waits for alice to resume (a leaves as its drain starts); then, within the 3 s,
    // Redis loses everything, and bob's instance writes bob back, still waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart_empty();
    // The wait is bounded again, so bob is told in the end, not left in a call forever.
    let told = bob.recv_within(Duration::from_secs(10)).await;
    assert_eq!(
        told,
        json!({"type": "close", "username": "alice", "reason": "disconnected"})
    );
    assert!(a.run.wait(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn an_instance_stopped_with_sigterm_releases_its_users_before_it_exits() {
    let Some(redis) = Redis::start() else { return };
    // A lease far longer than the test: only the instance itself can free its names in time.
    let slow_reaper = "lease_ms = 60000\n";
    let (mut a, b, _alice, mut bob) = alice_and_bob_in_a_call(&redis, slow_reaper).await;

    a.run.signal("TERM");
    assert_eq!(
        bob.recv().await,
        json!({"type": "close", "username": "alice", "reason": "disconnected"})
    );
    assert!(a.run.wait(Duration::from_secs(15)).success());
    assert!(a.run.log().contains("left the cluster"), "{}", a.run.log());
    let mut alice_again = b.user("alice").await;
    call(&mut bob, &mut alice_again, "alice").await;
}

#[tokio::test]
async fn a_stalled_redis_is_answered_fast_spares_local_calls_and_recovers() {
    let Some(redis) = Redis::start() else { return };
    let a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");
    let mut alice = a.user("alice").await;
    let mut carol = a.user("carol").await;
    let mut bob = b.user("bob").await;
    let mut erin = a.user("erin").await;
    call(&mut alice, &mut carol, "carol").await;

    redis.signal("STOP");
    let stalled = Instant::now();
    // A login and a new call need Redis: each is refused with "unavailable" within 2 s.
    let mut dave = a.ws().await;
    let asked = Instant::now();
    let reply = dave.login("dave").await;
    assert_eq!(reply["success"], false, "{reply}");
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("try again"));
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let asked = Instant::now();
    assert_eq!(bob.error_code(offer_to("erin")).await, "unavailable");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    a.backplane_becomes("unavailable", FAILOVER).await;

    // Once down, the instance answers at once without sending Redis anything: no commands
    // pile up while it is away.
    let errors = |metrics: &str| {
        metrics
            .lines()
            .filter(|line| line.starts_with("dialtone_backplane_errors_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = errors(&a.metrics().await);
    for _ in 0..50 {
        assert_eq!(dave.login("dave").await["code"], "unavailable");
    }
    let after = errors(&a.metrics().await);
    assert!(after - before < 5.0, "{before} → {after} failed commands");

    // The call between two users of one instance goes on: candidates, renegotiation.
    candidate_gets_through(&mut alice, &mut carol, "during the stall").await;
    carol.send(offer_to("alice")).await;
    assert_eq!(alice.recv().await["type"], "offer");
    // Only to the partner the local copies agree on, named in any case: a hang-up naming
    // someone else reaches nobody, and the call stays up.
    let stray = json!({"type": "close", "otherUsername": "erin"});
    assert_eq!(alice.error_code(stray).await, "unavailable");
    let named =
        json!({"type": "candidate", "candidate": {"candidate": "c"}, "otherUsername": "CAROL"});
    alice.send(named).await;
    assert_eq!(carol.recv().await["candidate"]["candidate"], "c");
    erin.quiet(200).await;
    // A hang-up between them ends the call in both copies: nothing is relayed after it.
    carol.send(json!({"type": "close"})).await;
    assert_eq!(alice.recv().await["reason"], "hung-up");
    let after_hang_up = json!({"type": "candidate", "candidate": {"candidate": "late"}});
    assert_eq!(alice.error_code(after_hang_up).await, "unavailable");
    carol.quiet(200).await;

    // Past the lease: every instance's lease lapses in Redis while it is stopped.
    let past_lease = Duration::from_secs(6).saturating_sub(stalled.elapsed());
    tokio::time::sleep(past_lease).await;
    redis.signal("CONT");
    let back = Instant::now();
    a.backplane_becomes("ok", FAILOVER).await;
    b.backplane_becomes("ok", FAILOVER).await;
    eprintln!("backplane back after SIGCONT: {:?}", back.elapsed());

    // Nobody was logged out, and names are still unique.
    let mut other = b.ws().await;
    for name in ["alice", "carol", "bob", "erin"] {
        assert_eq!(other.login(name).await["code"], "name-taken", "{name}");
    }
    // The hang-up was written back: the two are free for a new call.
    call(&mut carol, &mut alice, "alice").await;
    candidate_gets_through(&mut carol, &mut alice, "after the stall").await;
    bob.send(offer_to("erin")).await;
    assert_eq!(erin.recv().await["username"], "bob");
    alice.send(json!({"type": "close"})).await;
    assert_eq!(carol.recv().await["reason"], "hung-up");
    assert!(a.run.log().contains("backplane lost"), "{}", a.run.log());
    assert!(a.run.log().contains("backplane up"), "{}", a.run.log());
}

#[tokio::test]
async fn a_redis_restarted_empty_gets_every_user_and_call_back() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let mut carol = a.user("carol").await;
    call(&mut alice, &mut bob, "bob").await;

    redis.restart_empty();
    let restarted = Instant::now();
    let mut other = b.ws().await;
    let deadline = restarted + FAILOVER;
    // Each instance re-claims its users: their names are taken again, everywhere.
    for name in ["alice", "bob", "carol"] {
        loop {
            let reply = other.login(name).await;
            if reply["code"] == "name-taken" {
                break;
            }
            assert_ne!(reply["success"], true, "{name} was free after the restart");
            assert!(Instant::now() < deadline, "{name} not re-claimed: {reply}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "users re-claimed {:?} after the restart",
        restarted.elapsed()
    );
    a.backplane_becomes("ok", FAILOVER).await;
    // The call across instances survived: its partners still reach each other.
    candidate_gets_through(&mut bob, &mut alice, "after the restart").await;
    candidate_gets_through(&mut alice, &mut bob, "and back").await;
    bob.send(offer_to("carol")).await;
    assert_eq!(bob.recv().await["code"], "already-in-call");
    carol.quiet(200).await;
}

#[tokio::test]
async fn a_killed_subscription_is_noticed_and_repaired() {
    let Some(redis) = Redis::start() else { return };
    let (a, _b, mut alice, mut bob) = alice_and_bob_in_a_call(&redis, "").await;

    let killed = redis.command("CLIENT KILL TYPE pubsub");
    assert!(killed.starts_with(':'), "{killed}");
    let started = Instant::now();
    until_through(&mut bob, &mut alice, started).await;
    until_through(&mut alice, &mut bob, started).await;
    eprintln!("subscriptions repaired within {:?}", started.elapsed());
    a.backplane_becomes("ok", FAILOVER).await;
}

/// A TCP relay to Redis that can make the subscriptions open at the time go deaf: Redis still
/// counts them and their commands still reach it, but nothing it sends comes back. That is a
/// half-open connection, which only a probe can tell from a quiet one.
struct DeafeningProxy {
    port: u16,
    subscriptions: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
}

impl DeafeningProxy {
    async fn start(redis_port: u16) -> DeafeningProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let subscriptions: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let list = subscriptions.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                let deaf = Arc::new(AtomicBool::new(false));
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let list = list.clone();
                let flag = deaf.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    let mut registered = false;
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).to_ascii_uppercase();
                        if !registered && text.contains("SUBSCRIBE") {
                            registered = true;
                            list.lock().unwrap().push(flag.clone());
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if deaf.load(Ordering::Relaxed) {
                            continue;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        DeafeningProxy {
            port,
            subscriptions,
        }
    }

    /// Deafens the subscriptions open now; later ones are left alone.
    fn deafen(&self) -> usize {
        let list = self.subscriptions.lock().unwrap();
        for flag in list.iter() {
            flag.store(true, Ordering::Relaxed);
        }
        list.len()
    }
}

// Multi-threaded: the proxy must keep relaying while the test waits on a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_subscription_is_caught_by_the_probe() {
    let Some(redis) = Redis::start() else { return };
    let proxy = DeafeningProxy::start(redis.port).await;
    let a = instance_on(&format!("redis://127.0.0.1:{}", proxy.port), "a", "");
    let b = instance(&redis, "b", "");
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    call(&mut bob, &mut alice, "alice").await;

    assert_eq!(proxy.deafen(), 1, "instance a's one subscription");
    // Redis still counts a subscriber on a's channel: only the probe can notice.
    // (A message that is no envelope is ignored by the instance.)
    assert_eq!(redis.command("PUBLISH dialtone:ch:a not-an-envelope"), ":1");
    let started = Instant::now();
    a.run.wait_for_log("the subscription is deaf");
    until_through(&mut bob, &mut alice, started).await;
    eprintln!(
        "half-open subscription repaired within {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rediss_with_a_self_signed_certificate_needs_tls_insecure() {
    if !common::redis::available() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    dialtone::tls::setup(&dialtone::config::TlsConfig {
        mode: dialtone::config::TlsMode::Auto,
        cert: cert.clone(),
        key: key.clone(),
        ..Default::default()
    })
    .unwrap();
    let Some(redis) = Redis::start_tls(&cert, &key) else {
        return;
    };
    assert!(redis.url().starts_with("rediss://"));
    // Checked by default: a certificate nobody vouches for is refused, and the log says why.
    let strict = instance(&redis, "strict", "timeout_ms = 500\n");
    let (status, health) = strict.health().await;
    assert_eq!((status, &health["backplane"]), (503, &json!("unavailable")));
    let log = strict.run.log();
    assert!(
        log.contains("backplane (Redis at rediss://localhost"),
        "{log}"
    );
    // The wait is announced when it begins, not only when it is given up.
    let waiting = log.find("waiting for Redis at rediss://localhost");
    let gave_up = log.find("backplane (Redis at rediss://localhost");
    assert!(waiting.is_some() && waiting < gave_up, "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
    assert!(log.contains("tls_insecure"), "{log}");
    let mut ws = strict.ws().await;
    assert_eq!(ws.login("alice").await["code"], "unavailable");

    let trusting = instance(&redis, "trusting", "tls_insecure = true\n");
    trusting.backplane_becomes("ok", FAILOVER).await;
    let mut alice = trusting.user("alice").await;
    let mut bob = trusting.user("bob").await;
    call(&mut alice, &mut bob, "bob").await;
}

#[tokio::test]
async fn redis_url_comes_from_the_environment_and_its_password_stays_out_of_the_log() {
    let password = "pa55-w0rd-in-the-url";
    let Some(redis) = Redis::start_with(&["--requirepass", password]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = common::process::config_in(dir.path(), "[tls]\nmode = \"off\"\n");
    let start = |url: String| {
        let mut command = dialtone();
        command
            .arg("--config")
            .arg(&path)
            .env("REDIS_URL", url)
            .env("RUST_LOG", "debug");
        Running::start(command)
    };
    let good = start(format!("redis://:{password}@127.0.0.1:{}", redis.port));
    let addr = SocketAddr::from(([127, 0, 0, 1], good.port()));
    let mut ws = plain_ws(addr).await;
    assert_eq!(ws.login("alice").await["success"], true);
    let log = good.log();
    assert!(
        log.contains("Redis backplane from the REDIS_URL environment variable"),
        "{log}"
    );
    assert!(
        log.contains(&format!("Redis at redis://127.0.0.1:{}", redis.port)),
        "{log}"
    );

    let wrong = start(format!("redis://:not-{password}@127.0.0.1:{}", redis.port));
    let addr = SocketAddr::from(([127, 0, 0, 1], wrong.port()));
    let mut ws = plain_ws(addr).await;
    assert_eq!(ws.login("alice").await["code"], "unavailable");
    let wrong_log = wrong.log();
    assert!(wrong_log.contains("is unavailable"), "{wrong_log}");
    for log in [good.log(), wrong_log] {
        assert!(!log.contains(password), "the password leaked:\n{log}");
    }
}

#[tokio::test]
async fn an_instance_restarted_under_its_id_frees_what_its_predecessor_left() {
    let Some(redis) = Redis::start() else { return };
    // A lease far longer than the test: the reaper cannot be what frees the names.
    let slow_reaper = "lease_ms = 60000\n";
    let mut a = instance(&redis, "a", slow_reaper);
    let b = instance(&redis, "b", slow_reaper);
    let _alice = a.user("alice").await;
    let mut carol = a.user("carol").await;
    let mut bob = b.user("bob").await;
    call(&mut carol, &mut bob, "bob").await;

    a.run.signal("KILL");
    a.run.wait(Duration::from_secs(5));
    // Same id, as a process manager that restarts a crashed service would do.
    let a = instance(&redis, "a", slow_reaper);
    assert_eq!(
        bob.recv().await,
        json!({"type": "close", "username": "carol", "reason": "disconnected"})
    );
    // The names the old process held are free, on the new process and everywhere else.
    let _alice = a.user("alice").await;
    let mut carol = b.user("carol").await;
    call(&mut bob, &mut carol, "carol").await;
}

#[tokio::test]
async fn a_name_taken_while_redis_was_empty_closes_the_old_socket_only() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    // a re-claims slowly, b is back at once: b's new "alice" wins the race after the restart.
    let a = instance(&redis, "a", "heartbeat_ms = 3000\nlease_ms = 6000\n");
    let b = instance(&redis, "b", "heartbeat_ms = 200\nlease_ms = 1000\n");
    let mut alice = a.user("alice").await;
    let mut carol = a.user("carol").await;

    redis.restart_empty();
    b.backplane_becomes("ok", FAILOVER).await;
    let mut usurper = b.ws().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let reply = usurper.login("alice").await;
        if reply["success"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice could not be taken: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a finds the name taken when it re-claims, and closes its own socket for it, saying why.
    let frame = alice
        .closed_by(tokio::time::Instant::now() + FAILOVER)
        .await
        .expect("a close frame");
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason, "your name was taken over: log in again");
    // carol's name was not taken: she stays, and the new alice is the only one.
    let mut other = b.ws().await;
    assert_eq!(other.login("carol").await["code"], "name-taken");
    usurper.send(offer_to("carol")).await;
    assert_eq!(carol.recv().await["username"], "alice");
}

#[tokio::test]
async fn an_instance_started_before_its_redis_waits_for_it() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    redis.kill();
    // Nothing listens on the Redis port: the instance starts anyway, unavailable.
    let a = instance(&redis, "a", "timeout_ms = 300\n");
    let (status, health) = a.health().await;
    assert_eq!((status, &health["backplane"]), (503, &json!("unavailable")));
    let mut ws = a.ws().await;
    let asked = Instant::now();
    assert_eq!(ws.login("alice").await["code"], "unavailable");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert!(a.run.log().contains("is unavailable"), "{}", a.run.log());

    redis.restart_empty();
    let waited = a.backplane_becomes("ok", FAILOVER).await;
    eprintln!("backplane up {waited:?} after Redis started");
    let mut alice = a.user("alice").await;
    let mut bob = a.user("bob").await;
    call(&mut alice, &mut bob, "bob").await;
    assert!(a.run.log().contains("backplane up"), "{}", a.run.log());
}

#[tokio::test]
async fn a_message_from_someone_who_is_not_the_partner_is_dropped_on_arrival() {
    let Some(redis) = Redis::start() else { return };
    let (_a, b, _alice, mut bob) = alice_and_bob_in_a_call(&redis, "").await;
    let bob_sid = redis.bulk("HGET dialtone:user:bob sid");
    let alice_sid = redis.bulk("HGET dialtone:user:alice sid");
    // What an instance with a stale copy of a call would send: a candidate from mallory, who
    // is in no call with bob. The receiving instance checks against its own copy.
    let envelope = |from: &str, sid: &str, text: &str| {
        format!(
            "PUBLISH dialtone:ch:b \"direct-candidate\\nbob\\n{bob_sid}\\n{from}\\na\\n{sid}\\n0\\n\
             {{\\\"type\\\":\\\"candidate\\\",\\\"candidate\\\":{{\\\"candidate\\\":\\\"{text}\\\"}},\
             \\\"username\\\":\\\"{from}\\\"}}\""
        )
    };
    assert_eq!(redis.command(&envelope("mallory", "7", "forged")), ":1");
    bob.quiet(500).await;
    // The same envelope from his partner goes through: the one above was well formed.
    assert_eq!(redis.command(&envelope("alice", &alice_sid, "real")), ":1");
    assert_eq!(bob.recv().await["candidate"]["candidate"], "real");
    drop(b);
}
