//! `[access]` with the built binary: keys from a JWKS served over HTTPS by this test (its own
//! CA, trusted through `SSL_CERT_FILE`) with rotation and an outage; `dialtone invite` and
//! `dialtone hash-password`, whose output logs in for real; the banner's access line; and
//! the start-up refusals.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use common::plain_ws;
use common::process::{Running, config_in, dialtone};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::TcpListener;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A P-256 signing key with its `kid`, and its public half as a JWK.
struct Signer {
    kid: &'static str,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn new(kid: &'static str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!(
            (point.len(), point[0]),
            (65, 4),
            "an uncompressed P-256 point"
        );
        Signer {
            kid,
            key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]),
            }),
        }
    }

    /// This key's JWK under another `kid`.
    fn jwk_with_kid(&self, kid: usize) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = format!("{}{kid}", self.kid).into();
        jwk
    }

    fn token(&self, name: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.to_owned());
        let claims = json!({"sub": name, "exp": now() + 600});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// An HTTPS server on 127.0.0.1 that answers every request with the current JWKS, under a
/// certificate from a CA of its own (written to `ca.pem` for `SSL_CERT_FILE`).
struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
    ca: std::path::PathBuf,
}

impl JwksServer {
    async fn start(dir: &Path, keys: Vec<Value>) -> JwksServer {
        let private = common::PrivateCa::new("127.0.0.1");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &private.ca_pem).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![private.leaf_der, private.ca_der],
            PrivateKeyDer::from_pem_slice(private.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = Arc::new(Mutex::new(keys));
        let served = keys.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_request| {
                        let body = json!({"keys": *served.lock().unwrap()}).to_string();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            keys,
            task,
            ca,
        }
    }

    fn url(&self) -> String {
        format!("https://{}/.well-known/jwks.json", self.addr)
    }

    fn set(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }
}

async fn login(addr: SocketAddr, message: Value) -> Value {
    let mut ws = plain_ws(addr).await;
    ws.send(message).await;
    ws.recv().await
}

fn token_login(token: &str) -> Value {
    json!({"type": "login", "accessToken": token})
}

// Multi-threaded: the JWKS server must answer while this thread waits on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_a_jwks_over_https_with_rotation_and_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2, k3) = (Signer::new("k1"), Signer::new("k2"), Signer::new("k3"));
    // Twenty keys nobody signs with beside the ones in use: a set of a few KiB, as
    // providers publish them.
    let unused = Signer::new("unused");
    let others: Vec<Value> = (0..20).map(|i| unused.jwk_with_kid(i)).collect();
    let with = |keys: &[&Value]| -> Vec<Value> {
        others.iter().chain(keys.iter().copied()).cloned().collect()
    };
    let jwks = JwksServer::start(dir.path(), with(&[&k1.jwk])).await;
    let start = |refresh_secs: u64| {
        let extra = format!(
            "[tls]\nmode = \"off\"\n[access]\nmode = \"token\"\njwks_url = {:?}\njwks_refresh_secs = {refresh_secs}\n",
            jwks.url()
        );
        let path = config_in(dir.path(), &extra);
        let mut command = dialtone();
        command
            .arg("--config")
            .arg(&path)
            .env("SSL_CERT_FILE", &jwks.ca);
        let running = Running::start(command);
        let addr = SocketAddr::from(([127, 0, 0, 1], running.port()));
        (running, addr)
    };
    // Refreshed hourly: only an unknown kid makes it fetch now.
    let (hourly, addr) = start(3600);
    assert!(
        hourly
            .text()
            .contains(&format!("the JWKS at {}", jwks.url())),
        "{}",
        hourly.text()
    );
    let reply = login(addr, token_login(&k1.token("ann"))).await;
    assert_eq!(reply["username"], "ann", "{reply}");
    // A new key appears: the first token that names it makes dialtone fetch at once.
    jwks.set(with(&[&k1.jwk, &k2.jwk]));
    let reply = login(addr, token_login(&k2.token("ben"))).await;
    assert_eq!(reply["username"], "ben", "{reply}");
    // Another one within the minute is not fetched for: made-up kids cannot make dialtone
    // hammer the provider.
    jwks.set(with(&[&k1.jwk, &k2.jwk, &k3.jwk]));
    let reply = login(addr, token_login(&k3.token("cy"))).await;
    assert_eq!(reply["code"], "auth-failed", "{reply}");
    drop(hourly);
    // Refreshed every second: a removed key stops working at the next refresh.
    jwks.set(with(&[&k1.jwk, &k2.jwk]));
    let (running, addr) = start(1);
    let reply = login(addr, token_login(&k1.token("cat"))).await;
    assert_eq!(reply["username"], "cat", "{reply}");
    jwks.set(with(&[&k2.jwk]));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = login(addr, token_login(&k1.token("cat"))).await;
        if reply["code"] == "auth-failed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "k1 still accepted: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The provider publishes nothing usable (only an HMAC key): the keys held stay.
    jwks.set(vec![json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"})]);
    running.wait_for_log("holds no usable key now");
    let reply = login(addr, token_login(&k2.token("eve"))).await;
    assert_eq!(reply["username"], "eve", "{reply}");
    // The provider goes down: the refresh fails, is logged, and the keys held stay.
    jwks.task.abort();
    running.wait_for_log("cannot refresh the JWKS");
    let token = k2.token("dot");
    let reply = login(addr, token_login(&token)).await;
    assert_eq!(reply["username"], "dot", "{reply}");
    assert!(!running.log().contains(&token[token.len() - 40..]));
}

// Multi-threaded: the JWKS server must answer while this thread waits on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_that_cannot_be_fetched_or_trusted_stops_the_start_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = JwksServer::start(dir.path(), vec![Signer::new("k1").jwk]).await;
    let config = |url: &str| {
        config_in(
            dir.path(),
            &format!("[tls]\nmode = \"off\"\n[access]\nmode = \"token\"\njwks_url = {url:?}\n"),
        )
    };
    // Each start must fail: a binary that starts anyway is stopped after 30 s.
    let run = |path: &Path, ca: Option<&Path>| {
        let mut command = std::process::Command::new("timeout");
        command
            .args(["-s", "KILL", "30", env!("CARGO_BIN_EXE_dialtone")])
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(path);
        match ca {
            Some(ca) => command.env("SSL_CERT_FILE", ca),
            // The system's roots, which do not hold the test's CA.
            None => command.env_remove("SSL_CERT_FILE"),
        };
        command.output().unwrap()
    };
    // Not trusted: the test's CA is not among the system's roots.
    let output = run(&config(&jwks.url()), None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("jwks_url") && stderr.contains("SSL_CERT_FILE"),
        "{stderr}"
    );
    // Nothing listens there.
    let closed = format!("https://127.0.0.1:{}/jwks.json", common::free_port());
    let output = run(&config(&closed), Some(&jwks.ca));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot fetch [access] jwks_url") && stderr.contains("cannot connect"),
        "{stderr}"
    );
    // A key set over 512 KiB is not read to its end.
    let signer = Signer::new("k");
    let many: Vec<Value> = (0..6000).map(|i| signer.jwk_with_kid(i)).collect();
    assert!(json!({ "keys": many }).to_string().len() > 600 * 1024);
    jwks.set(many);
    let output = run(&config(&jwks.url()), Some(&jwks.ca));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("reading the answer"), "{stderr}");
    // Only symmetric keys: nothing usable (a published HMAC key would let anyone sign).
    jwks.set(vec![json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"})]);
    let output = run(&config(&jwks.url()), Some(&jwks.ca));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("holds no key dialtone can use"), "{stderr}");
}

const SECRET: &str = "a test secret of more than thirty-two bytes";

#[tokio::test]
async fn an_invite_link_logs_its_person_in_and_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[tls]\nmode = \"off\"\n[access]\nmode = \"token\"\nsecret = {SECRET:?}\naudience = \"dialtone\"\n"
    );
    let path = config_in(dir.path(), &extra);
    let output = dialtone()
        .args([
            "invite",
            "Mum",
            "--ttl",
            "2h",
            "--url",
            "https://calls.example/",
        ])
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("Mum's link, valid until"), "{stderr}");
    let token = stdout
        .trim()
        .strip_prefix("https://calls.example/#token=")
        .unwrap_or_else(|| panic!("a link in the fragment: {stdout}"));
    // An HS256 token for Mum, with this server's audience, for two hours.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&["dialtone"]);
    let decoded = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        &validation,
    )
    .unwrap();
    assert_eq!(decoded.claims["sub"], "Mum");
    let exp = decoded.claims["exp"].as_u64().unwrap();
    assert!((now() + 7190..=now() + 7210).contains(&exp), "exp {exp}");
    let running = Running::start({
        let mut command = dialtone();
        command.arg("--config").arg(&path);
        command
    });
    assert!(
        running.text().contains(
            "access: token: invite links and signed tokens, checked with the HS256 secret"
        ),
        "{}",
        running.text()
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], running.port()));
    let reply = login(addr, token_login(token)).await;
    assert_eq!(
        (reply["success"].as_bool(), reply["username"].as_str()),
        (Some(true), Some("Mum"))
    );
    let reply = login(addr, json!({"type": "login", "username": "mum"})).await;
    assert_eq!(reply["code"], "auth-required", "{reply}");
    assert!(!running.log().contains(token), "a token is never logged");
    // What the command refuses, and why.
    for (args, says) in [
        (vec!["invite", "a\"b"], "cannot be a user name"),
        (vec!["invite", "mum", "--ttl", "0d"], "never valid"),
        (
            vec!["invite", "mum", "--ttl", "3w"],
            "end it with s, m, h or d",
        ),
    ] {
        let output = dialtone()
            .args(&args)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let open = config_in(dir.path(), "[tls]\nmode = \"off\"\n");
    let output = dialtone()
        .args(["invite", "mum"])
        .arg("--config")
        .arg(&open)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("[access] secret is not set"),
        "{stderr}"
    );
}

/// `dialtone hash-password` with `input` on a pipe (not a terminal).
fn hash_password(input: &[u8]) -> std::process::Output {
    let mut child = dialtone()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn hash_password_makes_the_hash_that_lets_the_password_in() {
    let output = hash_password(b"tea for two\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains("tea for two"));
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(
        dir.path(),
        &format!(
            "[tls]\nmode = \"off\"\n[access]\nmode = \"password\"\npassword_hash = {hash:?}\n"
        ),
    );
    let running = Running::start({
        let mut command = dialtone();
        command.arg("--config").arg(&path);
        command
    });
    assert!(
        running.text().contains("access: password"),
        "{}",
        running.text()
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], running.port()));
    let reply = login(
        addr,
        json!({"type": "login", "username": "al", "password": "tea for two"}),
    )
    .await;
    assert_eq!(reply["success"], true, "{reply}");
    let reply = login(
        addr,
        json!({"type": "login", "username": "bo", "password": "tea for two\n"}),
    )
    .await;
    assert_eq!(reply["code"], "auth-failed", "{reply}");
    assert!(!running.log().contains("tea for two"));
    // The password itself where the hash belongs stops the start, without echoing it.
    let path = config_in(
        dir.path(),
        "[tls]\nmode = \"off\"\n[access]\nmode = \"password\"\npassword_hash = \"tea for two\"\n",
    );
    let output = dialtone().arg("--config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("never the password itself"), "{stderr}");
    // An empty password is refused.
    assert!(!hash_password(b"\n").status.success());
}

#[tokio::test]
async fn the_banner_says_the_access_mode_and_warns_when_open_to_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let (_, running) = common::process::start_in(dir.path(), "[tls]\nmode = \"off\"\n");
    let banner = running.text();
    // Loopback only: nobody else can reach it, so no warning.
    assert!(
        banner.contains("access: open: anyone who can reach this address can log in\n"),
        "{banner}"
    );
    assert!(!banner.contains("set [access]"), "{banner}");
    let public = dialtone::access::Access::open().describe(true);
    assert!(
        public.contains("log in and call") && public.contains("[access]"),
        "{public}"
    );
}

/// At a terminal (`script` gives the binary one) the password is asked twice and never
/// echoed.
#[test]
fn at_a_terminal_hash_password_asks_twice_without_echo() {
    use std::io::Read;
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        common::skip("script (util-linux) is not installed");
        return;
    }
    let inner = format!(
        "exec timeout -s TERM 20 {} hash-password",
        env!("CARGO_BIN_EXE_dialtone")
    );
    let mut child = std::process::Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buffer[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut seen = String::new();
    let until = |wanted: &str, seen: &mut String| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !seen.contains(wanted) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(text) => seen.push_str(&text),
                Err(_) => panic!("no {wanted:?} in {seen:?}"),
            }
        }
    };
    // Typed a moment after the prompt shows, as a person would: rpassword writes the prompt
    // first and turns echo off just after it, so text typed within microseconds of the
    // prompt could still be echoed (seen once in a loaded run).
    let typing = Duration::from_millis(300);
    until("Password: ", &mut seen);
    std::thread::sleep(typing);
    stdin.write_all(b"tea for two\n").unwrap();
    until("Again: ", &mut seen);
    std::thread::sleep(typing);
    stdin.write_all(b"tea for two\n").unwrap();
    until("$argon2id$", &mut seen);
    let status = child.wait().unwrap();
    while let Ok(text) = rx.recv_timeout(Duration::from_millis(200)) {
        seen.push_str(&text);
    }
    assert!(status.success(), "{seen}");
    assert!(
        !seen.contains("tea for two"),
        "the password was echoed: {seen:?}"
    );
    let hash = seen
        .lines()
        .find(|line| line.starts_with("$argon2id$"))
        .unwrap()
        .trim();
    assert!(
        dialtone::access::password::verify(hash, "tea for two"),
        "{hash}"
    );
}

/// With `mode = "acme"` an invite points at the certificate's first name (nothing else is
/// covered by it), with the port unless it is 443. Nothing is fetched: `invite` reads the
/// config only.
#[test]
fn an_invite_on_an_acme_server_points_at_its_domain() {
    let dir = tempfile::tempdir().unwrap();
    for (listen, base) in [
        ("0.0.0.0:443", "https://calls.example.com/"),
        ("0.0.0.0:8443", "https://calls.example.com:8443/"),
    ] {
        let path = common::process::write_config(
            dir.path(),
            &format!(
                "listen = {listen:?}\n[tls]\nmode = \"acme\"\ndomains = [\"calls.example.com\", \
                 \"www.example.com\"]\n[access]\nmode = \"token\"\nsecret = {SECRET:?}\n"
            ),
        );
        let output = dialtone()
            .args(["invite", "mum"])
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let link = String::from_utf8(output.stdout).unwrap();
        assert!(
            link.starts_with(&format!("{base}#token=")),
            "{link}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
