//! `[tls] mode = "acme"` against a real ACME server: Debian's Pebble, which validates for
//! real by connecting back to dialtone's port for TLS-ALPN-01, and its DNS, which answers the
//! tests' names (`calls.test`, …) with 127.0.0.1. The binary runs with `SSL_CERT_FILE`
//! naming the CA of Pebble's own HTTPS, as a private CA is trusted; clients trust only the
//! root Pebble issues under, so every check below is a real chain check.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::pebble::Pebble;
use common::process::{Running, dialtone};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NAMES: [&str; 2] = ["calls.test", "www.calls.test"];

/// The binary, configured for ACME against `pebble` on 127.0.0.1:`port`, trusting Pebble's
/// HTTPS through `SSL_CERT_FILE`.
fn command(dir: &Path, pebble: &Pebble, port: u16, names: &[&str]) -> std::process::Command {
    let config = common::process::write_config(
        dir,
        &format!(
            "listen = \"127.0.0.1:{port}\"\npublic_dir = {:?}\n{}",
            common::repo_public().display().to_string(),
            pebble.tls_table(names, &dir.join("acme"))
        ),
    );
    let mut command = dialtone();
    command
        .arg("--config")
        .arg(config)
        .env("SSL_CERT_FILE", pebble.ca_file());
    command
}

/// A TLS client that trusts only `root`, offering `alpn`.
fn client(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    common::connector(root, alpn)
}

/// TLS to 127.0.0.1:`port` for `name`: the stream, or the handshake's error.
async fn tls(
    port: u16,
    name: &str,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(common::PATIENCE, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// GET `path` from `name` (trusting only `root`): the status line's code, the body, and the
/// SHA-256 of the certificate the server presented.
async fn get(
    port: u16,
    name: &str,
    root: &CertificateDer<'static>,
    path: &str,
) -> (u16, String, String) {
    let mut stream = tls(port, name, &client(root, &[b"http/1.1"]))
        .await
        .unwrap_or_else(|err| panic!("TLS to {name}: {err}"));
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(common::PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .ok();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body, dialtone::tls::fingerprint(&leaf))
}

async fn health(port: u16, name: &str, root: &CertificateDer<'static>) -> Value {
    let (status, body, _) = get(port, name, root, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The one folder under the cache (one per directory URL).
fn cache_folder(dir: &Path) -> std::path::PathBuf {
    let mut folders: Vec<_> = std::fs::read_dir(dir.join("acme"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    folders.remove(0)
}

#[tokio::test]
async fn a_first_start_gets_a_certificate_for_two_names_and_a_restart_reuses_it() {
    let port = common::free_port();
    let Some(pebble) = Pebble::start(port, None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut running = Running::start(command(dir.path(), &pebble, port, &NAMES));
    let banner = running.text();
    for name in NAMES {
        assert!(
            banner.contains(&format!("https://{name}:{port}")),
            "{banner}"
        );
    }
    assert!(
        banner.contains("issued by Pebble Intermediate CA"),
        "{banner}"
    );
    assert!(banner.contains("valid until"), "{banner}");
    assert!(
        banner.contains(&format!(
            "mode: HTTPS with a certificate from {} (ACME)",
            pebble.directory()
        )),
        "{banner}"
    );
    assert!(!banner.contains("https://localhost"), "{banner}");

    let root = pebble.root();
    let mut fingerprints = Vec::new();
    for name in NAMES {
        let (status, body, fingerprint) = get(port, name, &root, "/").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("<html"), "{body}");
        fingerprints.push(fingerprint);
        let health = health(port, name, &root).await;
        let certificate = &health["certificate"];
        assert_eq!(certificate["names"], json!(NAMES), "{health}");
        assert_eq!(certificate["selfSigned"], json!(false));
        assert!(
            certificate["issuer"]
                .as_str()
                .unwrap()
                .starts_with("Pebble"),
            "{health}"
        );
        assert_eq!(certificate["sha256"], json!(fingerprints[0]));
        let (_, metrics, _) = get(port, name, &root, "/metrics").await;
        assert_eq!(
            common::sample(&metrics, "dialtone_certificate_expiry_timestamp_seconds"),
            certificate["notAfterUnix"].as_f64(),
            "{metrics}"
        );
    }
    assert_eq!(fingerprints[0], fingerprints[1]);

    // A client that trusts another root refuses it: the chain above really was checked.
    let stranger = common::PrivateCa::new("calls.test").ca_der;
    let refused = tls(port, "calls.test", &client(&stranger, &[])).await;
    assert!(refused.is_err(), "a foreign root accepted the chain");
    // A name the certificate does not cover is refused by the client too.
    assert!(tls(port, "other.test", &client(&root, &[])).await.is_err());
    // Someone posing as the CA, with no challenge under way, gets no certificate at all.
    let posing = tls(port, "calls.test", &client(&root, &[b"acme-tls/1"])).await;
    assert!(
        posing.is_err(),
        "an acme-tls/1 handshake succeeded with no challenge"
    );

    // The cache: private, and the key never readable by others.
    let folder = cache_folder(dir.path());
    assert_eq!(mode(&dir.path().join("acme")), 0o700);
    assert_eq!(mode(&folder), 0o700);
    assert_eq!(mode(&folder.join("certificate.pem")), 0o600);
    assert_eq!(mode(&folder.join("account.json")), 0o600);
    assert_eq!(pebble.orders(), 1);
    // SIGHUP (systemctl reload) re-reads nothing in this mode, and harms nothing.
    running.signal("HUP");
    running.wait_for_log("SIGHUP: ACME certificates are renewed by dialtone itself");
    let (status, _, fingerprint) = get(port, "calls.test", &root, "/").await;
    assert_eq!((status, &fingerprint), (200, &fingerprints[0]));

    running.signal("TERM");
    running.wait(Duration::from_secs(10));
    let again = Running::start(command(dir.path(), &pebble, port, &NAMES));
    assert!(
        again.log().contains("ACME: using the cached certificate"),
        "{}",
        again.log()
    );
    let (status, _, fingerprint) = get(port, "calls.test", &root, "/").await;
    assert_eq!((status, fingerprint), (200, fingerprints[0].clone()));
    assert_eq!(pebble.orders(), 1, "the restart ordered anew");
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_while_a_websocket_stays_open() {
    let port = common::free_port();
    // 30 s of validity: renewal is due after 20.
    let Some(pebble) = Pebble::start(port, Some(30)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(command(dir.path(), &pebble, port, &NAMES[..1]));
    let root = pebble.root();
    let first = health(port, "calls.test", &root).await["certificate"].clone();
    // Not before it is due (after 20 s): a few seconds in, still the first certificate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pebble.orders(), 1, "renewed early:\n{}", running.log());

    let mut alice = ws(port, &root, "alice").await;
    let mut bob = ws(port, &root, "bob").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let renewed = loop {
        let now = health(port, "calls.test", &root).await["certificate"].clone();
        if now["sha256"] != first["sha256"] {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not renewed within 60 s:\n{}",
            running.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        renewed["notAfterUnix"].as_i64() > first["notAfterUnix"].as_i64(),
        "{renewed}"
    );
    // New connections get the new certificate…
    let (_, _, fingerprint) = get(port, "calls.test", &root, "/").await;
    assert_eq!(json!(fingerprint), renewed["sha256"]);
    // …and the sockets opened under the old one carry on.
    alice
        .send(json!({"type": "offer", "otherUsername": "bob", "offer": {"type": "offer", "sdp": "v=0"}}))
        .await;
    let offer = bob.recv().await;
    assert_eq!(
        (&offer["type"], &offer["username"]),
        (&json!("offer"), &json!("alice"))
    );
    assert_eq!(pebble.orders(), 2);
    assert!(running.log().contains("ACME: obtained a certificate"));
}

/// A logged-in WebSocket to `calls.test`, over TLS checked against `root`.
async fn ws(port: u16, root: &CertificateDer<'static>, name: &str) -> common::Ws {
    let stream = tls(port, "calls.test", &client(root, &[b"http/1.1"]))
        .await
        .unwrap();
    let stream: Box<dyn common::Io> = Box::new(stream);
    let url = format!("wss://calls.test:{port}/ws");
    let (socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let mut ws = common::Ws::spawn(socket);
    let reply = ws.login(name).await;
    assert_eq!(reply["success"], json!(true), "{reply}");
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_that_is_down_at_start_is_retried_until_the_certificate_arrives() {
    let port = common::free_port();
    let Some(mut pebble) = Pebble::prepare(port, None) else {
        return;
    };
    pebble.start_dns();
    let dir = tempfile::tempdir().unwrap();
    let running = Running::launch(command(dir.path(), &pebble, port, &NAMES[..1]));
    let log = running.wait_for_log("does not answer");
    assert!(
        log.contains(&format!(
            "ACME: no certificate yet for calls.test: the ACME directory {} does not answer",
            pebble.directory()
        )),
        "{log}"
    );
    assert!(log.contains("trying again in 2 s"), "{log}");
    // Each failure waits twice as long as the one before.
    let log = running.wait_for_log("trying again in 4 s");
    assert!(log.contains("does not answer"), "{log}");
    // Until the certificate is there, nobody gets a page.
    let ca = common::PrivateCa::new("x").ca_der;
    assert!(tls(port, "calls.test", &client(&ca, &[])).await.is_err());

    pebble.start_ca();
    running.wait_for_log_within("ACME: obtained a certificate", Duration::from_secs(40));
    let root = pebble.root();
    let health = health(port, "calls.test", &root).await;
    assert_eq!(health["certificate"]["names"], json!(["calls.test"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_points_elsewhere_fails_with_a_sentence_that_says_so() {
    let port = common::free_port();
    let Some(pebble) = Pebble::start(port, None) else {
        return;
    };
    // Nothing listens on 127.0.0.2: the CA cannot connect.
    pebble.point("elsewhere.test", "127.0.0.2");
    let dir = tempfile::tempdir().unwrap();
    let running = Running::launch(command(dir.path(), &pebble, port, &["elsewhere.test"]));
    let log = running.wait_for_log("ACME: no certificate yet");
    assert!(
        log.contains(
            "the CA could not connect to elsewhere.test on port 443 (Failed to connect to \
             127.0.0.2"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "check that elsewhere.test points at this machine's public address and that port \
             443 from the internet reaches dialtone"
        ),
        "{log}"
    );
    assert!(log.contains("trying again in 60 s"), "{log}");
    // A refused check is not mistaken for an account the CA forgot.
    assert!(!log.contains("no longer knows"), "{log}");
    drop(running);

    // Something else answers TLS there: the sentence says another machine answered.
    let other = tokio::net::TcpListener::bind(("127.0.0.2", port))
        .await
        .unwrap();
    let stranger = common::PrivateCa::new("elsewhere.test");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        rustls::ServerConfig::builder_with_provider(dialtone::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![stranger.leaf_der],
                rustls::pki_types::pem::PemObject::from_pem_slice(stranger.key_pem.as_bytes())
                    .unwrap(),
            )
            .unwrap(),
    ));
    let answering = tokio::spawn(async move {
        while let Ok((tcp, _)) = other.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let running = Running::launch(command(dir.path(), &pebble, port, &["elsewhere.test"]));
    let log = running.wait_for_log("ACME: no certificate yet");
    answering.abort();
    assert!(
        log.contains(
            "the CA reached elsewhere.test, but something other than this dialtone answered"
        ),
        "{log}"
    );
    assert!(
        log.contains("elsewhere.test points at another machine, or a proxy or load balancer"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_sharing_a_cache_order_once_and_answer_each_others_challenges() {
    // Pebble validates on `port`, instance A's; instance B listens elsewhere.
    let port = common::free_port();
    let Some(pebble) = Pebble::start(port, None) else {
        return;
    };
    let root = pebble.root();
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    // B's config, but the same cache as A's.
    let b_port = common::free_port();
    let b_command = || {
        let command = command(other_dir.path(), &pebble, b_port, &NAMES);
        let config = other_dir.path().join("dialtone.toml");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &format!("{:?}", other_dir.path().join("acme").display().to_string()),
            &format!("{:?}", dir.path().join("acme").display().to_string()),
        );
        std::fs::write(&config, text).unwrap();
        command
    };
    // Both at once, on an empty cache: one order, one certificate for both.
    let a = Running::launch(command(dir.path(), &pebble, port, &NAMES));
    let b = Running::launch(b_command());
    let a_health = wait_health(port, &root).await;
    let b_health = wait_health(b_port, &root).await;
    assert_eq!(
        a_health["certificate"]["sha256"],
        b_health["certificate"]["sha256"]
    );
    assert_eq!(pebble.orders(), 1, "A:\n{}\nB:\n{}", a.log(), b.log());
    drop(b);

    // B alone orders now (its cache emptied), and Pebble checks at A's port: A answers B's
    // challenge from the cache.
    std::fs::remove_file(cache_folder(dir.path()).join("certificate.pem")).unwrap();
    let b = Running::launch(b_command());
    b.wait_for_log_within("ACME: obtained a certificate", Duration::from_secs(30));
    let b_health = wait_health(b_port, &root).await;
    assert_ne!(
        b_health["certificate"]["sha256"],
        a_health["certificate"]["sha256"]
    );
    assert_eq!(pebble.orders(), 2);
    // Nothing is left of the challenges.
    let left: Vec<_> = std::fs::read_dir(cache_folder(dir.path()).join("challenges"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `/healthz` from `calls.test` on `port`, once it serves (up to 30 s).
async fn wait_health(port: u16, root: &CertificateDer<'static>) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let connector = client(root, &[]);
    while tls(port, "calls.test", &connector).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate on {port}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    health(port, "calls.test", root).await
}

#[tokio::test(flavor = "multi_thread")]
async fn while_renewals_fail_the_current_certificate_stays_and_the_log_says_until_when() {
    let port = common::free_port();
    // 60 s of validity: renewal is due after 40, leaving 20 to see the old one still served.
    let Some(mut pebble) = Pebble::start(port, Some(60)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(command(dir.path(), &pebble, port, &NAMES[..1]));
    let root = pebble.root();
    let first = health(port, "calls.test", &root).await["certificate"].clone();
    pebble.stop_ca();
    let log = running.wait_for_log_within(
        "ACME: renewing the certificate failed",
        Duration::from_secs(60),
    );
    let line = log
        .lines()
        .find(|line| line.contains("renewing the certificate failed"))
        .unwrap();
    assert!(line.contains("does not answer"), "{line}");
    assert!(line.contains("trying again in 2 s"), "{line}");
    assert!(
        line.contains(&format!(
            "the current one stays in use and expires on {}",
            first["notAfter"].as_str().unwrap()
        )),
        "{line}"
    );
    // Under a week from expiry, it is an error that says what happens next.
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("after that browsers will refuse the page"),
        "{line}"
    );
    let now = health(port, "calls.test", &root).await["certificate"].clone();
    assert_eq!(now["sha256"], first["sha256"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_added_to_domains_orders_anew_at_the_next_start() {
    let port = common::free_port();
    let Some(pebble) = Pebble::start(port, None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut running = Running::start(command(dir.path(), &pebble, port, &NAMES[..1]));
    running.signal("TERM");
    running.wait(Duration::from_secs(10));
    let running = Running::start(command(dir.path(), &pebble, port, &NAMES));
    let log = running.log();
    assert!(
        log.contains("ACME: the cached certificate (calls.test, until"),
        "{log}"
    );
    assert!(log.contains("does not do: ordering a new one"), "{log}");
    assert_eq!(pebble.orders(), 2);
    let health = health(port, "www.calls.test", &pebble.root()).await;
    assert_eq!(health["certificate"]["names"], json!(NAMES));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_that_forgot_the_cached_account_gets_a_new_one() {
    let port = common::free_port();
    let Some(mut pebble) = Pebble::start(port, None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut running = Running::start(command(dir.path(), &pebble, port, &NAMES[..1]));
    running.signal("TERM");
    running.wait(Duration::from_secs(10));
    // Pebble keeps nothing across a restart: the cached account is unknown to it now.
    pebble.stop_ca();
    pebble.start_ca();
    std::fs::remove_file(cache_folder(dir.path()).join("certificate.pem")).unwrap();
    let running = Running::start(command(dir.path(), &pebble, port, &NAMES[..1]));
    let log = running.log();
    assert!(
        log.contains("ACME: the CA no longer knows the cached account: making a new one"),
        "{log}"
    );
    assert!(log.contains("ACME: obtained a certificate"), "{log}");
    let health = health(port, "calls.test", &pebble.root()).await;
    assert_eq!(health["certificate"]["names"], json!(["calls.test"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_sharing_a_cache_renew_once() {
    let port = common::free_port();
    // 30 s certificates: both instances are due together, after 20 s.
    let Some(pebble) = Pebble::start(port, Some(30)) else {
        return;
    };
    let root = pebble.root();
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let a = Running::start(command(dir.path(), &pebble, port, &NAMES[..1]));
    // B on another port, its config pointing at A's cache: it starts from A's certificate.
    let b_port = common::free_port();
    let b_command = command(other_dir.path(), &pebble, b_port, &NAMES[..1]);
    let config = other_dir.path().join("dialtone.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("{:?}", other_dir.path().join("acme").display().to_string()),
        &format!("{:?}", dir.path().join("acme").display().to_string()),
    );
    std::fs::write(&config, text).unwrap();
    let b = Running::start(b_command);
    assert!(
        b.log().contains("ACME: using the cached certificate"),
        "{}",
        b.log()
    );
    let first = health(port, "calls.test", &root).await["certificate"]["sha256"].clone();
    // Both renew; one orders, the other takes what it saved.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let on_a = health(port, "calls.test", &root).await["certificate"]["sha256"].clone();
        let on_b = health(b_port, "calls.test", &root).await["certificate"]["sha256"].clone();
        if on_a != first && on_b != first {
            assert_eq!(on_a, on_b, "A:\n{}\nB:\n{}", a.log(), b.log());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not both renewed within 60 s:\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(pebble.orders(), 2, "A:\n{}\nB:\n{}", a.log(), b.log());
    let both = format!("{}{}", a.log(), b.log());
    assert!(
        both.contains("ACME: another instance sharing the cache has just obtained a certificate"),
        "{both}"
    );
}
