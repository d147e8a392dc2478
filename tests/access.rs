//! `[access]` over real WSS: the site password, tokens signed with every kind of key the
//! server takes, the hostile tokens it must refuse, the per-address failure limit, and the
//! reconnect token that outlives an expired access token. The semantic tests run on one
//! server and with the users split over two instances sharing a real Redis.

mod common;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{Service, TestServer, sample};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The site password of the password-mode tests, and its hash made by the reference
/// implementation (argon2-cffi, Python), independently of dialtone.
const PASSWORD: &str = "open sesame";
const PASSWORD_CONFIG: &str = "[access]\nmode = \"password\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$14psnez2qL7zXFCTQH/4/A$krnh38+VNf6s1F28U1P8TiG/wRO0PlM7sgtXE6uc1sA\"\n";

const SECRET: &str = "a test secret of more than thirty-two bytes";

/// The keys the token tests sign with: made here (P-256 and Ed25519 by rcgen) or read from
/// the fixtures (RSA), with their public halves written where the config points.
struct Keys {
    es256: EncodingKey,
    ed25519: EncodingKey,
    rs256: EncodingKey,
    /// A P-256 key the server does not know.
    stranger: EncodingKey,
    es256_public_pem: String,
    rsa_public_pem: String,
    config: String,
    _dir: tempfile::TempDir,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let rsa_private = std::fs::read(fixtures.join("rsa-key.pem")).unwrap();
        let rsa_public = std::fs::read_to_string(fixtures.join("rsa-pub.pem")).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let es_path = write("es256.pem", &es.public_key_pem());
        let ed_path = write("ed25519.pem", &ed.public_key_pem());
        let rsa_path = write("rsa.pem", &rsa_public);
        let config = format!(
            "[access]\nmode = \"token\"\nsecret = {SECRET:?}\npublic_keys = [{es_path:?}, {rsa_path:?}, {ed_path:?}]\n"
        );
        Keys {
            es256: EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
            ed25519: EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
            rs256: EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
            stranger: EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).unwrap(),
            es256_public_pem: es.public_key_pem(),
            rsa_public_pem: rsa_public,
            config,
            _dir: dir,
        }
    })
}

fn token_config() -> String {
    keys().config.clone()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for `name`, valid for ten minutes.
fn claims(name: &str) -> Value {
    json!({"sub": name, "exp": now() + 600})
}

fn sign(algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        claims,
    )
}

/// A token whose header and claims are written by hand, signed (HMAC-SHA256) with `secret`.
fn hand_made(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signature = ring::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", B64.encode(signature.as_ref()))
}

async fn login(ws: &mut common::Ws, message: Value) -> Value {
    ws.send(message).await;
    let reply = ws.recv().await;
    assert_eq!(reply["type"], "login", "{reply}");
    reply
}

/// Asserts a refusal with `code`, and a sentence that gives nothing of the credential away.
fn refused(reply: &Value, code: &str, credential: &str) -> String {
    assert_eq!(reply["success"], false, "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    assert!(
        reply.get("token").is_none() && reply.get("iceServers").is_none(),
        "{reply}"
    );
    let message = reply["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    if credential.len() > 8 {
        assert!(!message.contains(credential), "{message}");
    }
    message
}

/// The sum over the service's instances of one `dialtone_auth_failures_total` series.
async fn failures(service: &Service, reason: &str) -> f64 {
    let mut total = 0.0;
    for server in &service.servers {
        let metrics = server.get("/metrics").await.body;
        let series = format!("dialtone_auth_failures_total{{reason=\"{reason}\"}}");
        total += sample(&metrics, &series).unwrap_or_else(|| panic!("no {series}"));
    }
    total
}

on_one_server_and_split!(config = super::PASSWORD_CONFIG; the_site_password_lets_in_those_who_know_it);
on_one_server_and_split!(config = &super::token_config(); tokens_log_in_by_their_name_with_every_kind_of_key);
// Behind a proxy, so that each hostile token comes from an address of its own: more than ten
// failures from one address would be refused without a check.
on_one_server_and_split!(
    config = &format!("behind_proxy = true\n{}", super::token_config());
    hostile_tokens_are_refused_each_with_its_reason
);
on_one_server_and_split!(
    config = &format!("{}\n[websocket]\nresume_grace_secs = 30\n", super::token_config());
    a_reconnect_token_outlives_the_access_token_but_never_claims_a_free_name
);

async fn the_site_password_lets_in_those_who_know_it(service: Service) {
    let mut alice = service.ws().await;
    // The tutorial's client sends a name alone: it cannot log in here, by design.
    let reply = login(&mut alice, json!({"type": "login", "username": "alice"})).await;
    let message = refused(&reply, "auth-required", "");
    assert!(message.contains("password"), "{message}");
    let wrong = "open sesame!";
    let reply = login(
        &mut alice,
        json!({"type": "login", "username": "alice", "password": wrong}),
    )
    .await;
    let message = refused(&reply, "auth-failed", wrong);
    assert!(message.contains("wrong password"), "{message}");
    // A refused socket is not logged in: it cannot ring anyone.
    assert_eq!(
        alice
            .error_code(json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0"}, "otherUsername": "bob"}))
            .await,
        "not-logged-in"
    );
    let reply = login(
        &mut alice,
        json!({"type": "login", "username": "alice", "password": PASSWORD}),
    )
    .await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["username"], "alice");
    assert!(
        reply["token"].is_string() && reply["iceServers"].is_array(),
        "{reply}"
    );
    // Everyone shares the one password; names stay unique.
    let mut bob = service.ws().await;
    let reply = login(
        &mut bob,
        json!({"type": "login", "username": "Alice", "password": PASSWORD}),
    )
    .await;
    assert_eq!(reply["code"], "name-taken", "{reply}");
    let reply = login(
        &mut bob,
        json!({"type": "login", "username": "bob", "password": PASSWORD}),
    )
    .await;
    assert_eq!(reply["success"], true, "{reply}");
    alice
        .send(json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0"}, "otherUsername": "bob"}))
        .await;
    let offer = bob.recv().await;
    assert_eq!(
        (offer["type"].as_str(), offer["username"].as_str()),
        (Some("offer"), Some("alice"))
    );
    assert!(failures(&service, "missing").await >= 1.0);
    assert!(failures(&service, "password").await >= 1.0);
    service.stop().await;
}

async fn tokens_log_in_by_their_name_with_every_kind_of_key(service: Service) {
    let keys = keys();
    let signed = [
        ("mum", hs256(&claims("mum"))),
        (
            "dad",
            sign(Algorithm::ES256, None, &keys.es256, &claims("dad")),
        ),
        (
            "gran",
            sign(Algorithm::RS256, None, &keys.rs256, &claims("gran")),
        ),
        (
            "uncle",
            sign(Algorithm::EdDSA, None, &keys.ed25519, &claims("uncle")),
        ),
    ];
    let mut sockets = Vec::new();
    for (name, token) in &signed {
        let mut ws = service.ws().await;
        // No username: the token names the user.
        let reply = login(&mut ws, json!({"type": "login", "accessToken": token})).await;
        assert_eq!(reply["success"], true, "{name}: {reply}");
        assert_eq!(reply["username"], *name);
        sockets.push(ws);
    }
    // Nobody else can be mum while she is logged in, or log in as her without her link.
    let mut eve = service.ws().await;
    let reply = login(&mut eve, json!({"type": "login", "username": "mum"})).await;
    refused(&reply, "auth-required", "");
    // A name given with a token must be the token's (case-folded); the token's spelling wins.
    let token = hs256(&claims("Émile"));
    let reply = login(
        &mut eve,
        json!({"type": "login", "username": "eve", "accessToken": token}),
    )
    .await;
    let message = refused(&reply, "auth-failed", &token);
    assert!(message.contains("Émile"), "{message}");
    let reply = login(
        &mut eve,
        json!({"type": "login", "username": "ÉMILE", "accessToken": token}),
    )
    .await;
    assert_eq!(reply["username"], "Émile", "{reply}");
    // The token-holders call each other as anyone would.
    sockets[0]
        .send(json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0"}, "otherUsername": "dad"}))
        .await;
    assert_eq!(sockets[1].recv().await["username"], "mum");
    // A token within the 60 s leeway of its expiry still logs in.
    let mut late = service.ws().await;
    let token = hs256(&json!({"sub": "late", "exp": now() - 30}));
    assert_eq!(
        login(&mut late, json!({"type": "login", "accessToken": token})).await["success"],
        true
    );
    service.stop().await;
}

async fn hostile_tokens_are_refused_each_with_its_reason(service: Service) {
    let keys = keys();
    let none_header = B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    let payload = B64.encode(claims("mallory").to_string());
    let good_for_bob = hs256(&claims("bob"));
    let mut tampered: Vec<&str> = good_for_bob.split('.').collect();
    tampered[1] = &payload;
    let tampered = tampered.join(".");
    let big = json!({"sub": "bob", "exp": now() + 600, "pad": "x".repeat(9000)});
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", format!("{none_header}.{payload}."), "signature"),
        (
            "alg none with a signature",
            format!("{none_header}.{payload}.c2ln"),
            "signature",
        ),
        (
            "a kid no key has",
            sign(
                Algorithm::ES256,
                Some("nobody"),
                &keys.stranger,
                &claims("mallory"),
            ),
            "signature",
        ),
        (
            "a key the server does not know",
            sign(Algorithm::ES256, None, &keys.stranger, &claims("mallory")),
            "signature",
        ),
        (
            "HS256 signed with the RSA public key as the secret",
            hand_made(
                &json!({"alg": "HS256", "typ": "JWT"}),
                &claims("mallory"),
                keys.rsa_public_pem.as_bytes(),
            ),
            "signature",
        ),
        (
            "HS256 signed with the P-256 public key as the secret",
            hand_made(
                &json!({"alg": "HS256", "typ": "JWT"}),
                &claims("mallory"),
                keys.es256_public_pem.as_bytes(),
            ),
            "signature",
        ),
        (
            "HS384 with the right secret (the secret is pinned to HS256)",
            sign(
                Algorithm::HS384,
                None,
                &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
                &claims("mallory"),
            ),
            "signature",
        ),
        (
            "a payload swapped under a good signature",
            tampered,
            "signature",
        ),
        ("not a JWT at all", "hello".into(), "signature"),
        ("over 8 KiB", hs256(&big), "signature"),
        ("no exp", hs256(&json!({"sub": "bob"})), "claims"),
        (
            "expired beyond the leeway",
            hs256(&json!({"sub": "bob", "exp": now() - 120})),
            "expired",
        ),
        (
            "nbf in the future",
            hs256(&json!({"sub": "bob", "exp": now() + 600, "nbf": now() + 600})),
            "claims",
        ),
        (
            "nbf as a string (CVE-2026-25537)",
            hs256(&json!({"sub": "bob", "exp": now() + 600, "nbf": "99999999999"})),
            "claims",
        ),
        (
            "exp as a string",
            hs256(&json!({"sub": "bob", "exp": "never"})),
            "claims",
        ),
        (
            "no name claim",
            hs256(&json!({"exp": now() + 600})),
            "claims",
        ),
        (
            "a name claim that is not a string",
            hs256(&json!({"sub": 42, "exp": now() + 600})),
            "claims",
        ),
        (
            "a name claim dialtone's names cannot be",
            hs256(&json!({"sub": "a\"b", "exp": now() + 600})),
            "claims",
        ),
    ];
    for (i, (what, token, reason)) in cases.iter().enumerate() {
        let before = failures(&service, reason).await;
        let address = format!("198.51.100.{i}");
        let mut ws = service.ws_with(&[("x-forwarded-for", &address)]).await;
        let reply = login(&mut ws, json!({"type": "login", "accessToken": token})).await;
        let message = refused(&reply, "auth-failed", token);
        if *reason == "expired" {
            assert!(
                message.contains("expired") && message.contains("new one"),
                "{message}"
            );
        }
        let after = failures(&service, reason).await;
        assert_eq!(after, before + 1.0, "{what}: counted as {reason}");
    }
    service.stop().await;
}

async fn a_reconnect_token_outlives_the_access_token_but_never_claims_a_free_name(
    service: Service,
) {
    let mut alice = service.servers[0].ws().await;
    let reply = login(
        &mut alice,
        json!({"type": "login", "accessToken": hs256(&claims("alice"))}),
    )
    .await;
    let reconnect = reply["token"].as_str().unwrap().to_owned();
    let mut bob = service.servers[0].ws().await;
    login(
        &mut bob,
        json!({"type": "login", "accessToken": hs256(&claims("bob"))}),
    )
    .await;
    alice
        .send(json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0"}, "otherUsername": "bob"}))
        .await;
    bob.recv().await;
    bob.send(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0"}, "otherUsername": "alice"}))
        .await;
    alice.recv().await;
    // Alice's connection drops; meanwhile her access token has expired. Split: she comes
    // back on the other instance.
    drop(alice);
    let expired = hs256(&json!({"sub": "alice", "exp": now() - 3600}));
    let mut alice = service.servers.last().unwrap().ws().await;
    let reply = login(
        &mut alice,
        json!({"type": "login", "username": "alice", "token": reconnect, "accessToken": expired}),
    )
    .await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(
        (reply["resumed"].as_bool(), reply["otherUsername"].as_str()),
        (Some(true), Some("bob"))
    );
    // And once more with the new reconnect token and no access token at all.
    let reconnect = reply["token"].as_str().unwrap().to_owned();
    drop(alice);
    // Split: the first instance lets go of its copy of alice when the second tells it she
    // moved, a moment after the move; until then it still counts her as its own (a page's
    // reconnect back-off, 500 ms at least, is far longer).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut alice = service.servers[0].ws().await;
    let reply = login(
        &mut alice,
        json!({"type": "login", "username": "alice", "token": reconnect}),
    )
    .await;
    assert_eq!(reply["success"], true, "{reply}");
    // A made-up reconnect token, or an old one, takes nothing and claims no free name.
    for server in &service.servers {
        let mut eve = server.ws().await;
        let reply = login(
            &mut eve,
            json!({"type": "login", "username": "carol", "token": "made-up"}),
        )
        .await;
        refused(&reply, "auth-required", "");
        let reply = login(
            &mut eve,
            json!({"type": "login", "username": "alice", "token": reconnect, "accessToken": expired}),
        )
        .await;
        assert_eq!(reply["code"], "auth-failed", "{reply}");
    }
    // Nobody got the name carol.
    let mut dave = service.ws().await;
    login(
        &mut dave,
        json!({"type": "login", "accessToken": hs256(&claims("dave"))}),
    )
    .await;
    let offer = json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0"}, "otherUsername": "carol"});
    assert_eq!(dave.error_code(offer).await, "unknown-user");
    service.stop().await;
}

/// More than ten failures a minute from one address: that address is refused without a
/// check, even with a good token; another address is not. Behind a proxy, so the test can
/// speak from two addresses.
#[tokio::test]
async fn failures_from_one_address_lock_out_that_address_alone() {
    // behind_proxy is a top-level key: it comes before the [access] table.
    let config = format!("behind_proxy = true\n{}", token_config());
    let server = TestServer::start_with(&config, &common::repo_public()).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let bad = hs256(&json!({"sub": "bob", "exp": now() - 3600}));
    // Several sockets: each allows 10 logins a minute of its own.
    for round in 0..3 {
        let mut ws = server.ws_with("/ws", &from("203.0.113.7")).await;
        for _ in 0..4 {
            let reply = login(&mut ws, json!({"type": "login", "accessToken": bad})).await;
            assert_eq!(reply["code"], "auth-failed", "round {round}: {reply}");
        }
    }
    let mut ws = server.ws_with("/ws", &from("203.0.113.7")).await;
    let reply = login(
        &mut ws,
        json!({"type": "login", "accessToken": hs256(&claims("bob"))}),
    )
    .await;
    let message = refused(&reply, "auth-failed", "");
    assert!(message.contains("too many failed logins"), "{message}");
    let mut other = server.ws_with("/ws", &from("203.0.113.8")).await;
    let reply = login(
        &mut other,
        json!({"type": "login", "accessToken": hs256(&claims("bob"))}),
    )
    .await;
    assert_eq!(reply["success"], true, "{reply}");
    let metrics = server.get("/metrics").await.body;
    assert!(
        sample(
            &metrics,
            "dialtone_auth_failures_total{reason=\"rate-limited\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(sample(&metrics, "dialtone_auth_failures_total{reason=\"expired\"}").unwrap() >= 11.0);
    server.stop().await;
}

/// The page asks `/access` before its first login; in open mode nothing changes.
#[tokio::test]
async fn the_page_learns_the_mode_and_open_mode_is_unchanged() {
    let open = TestServer::start().await;
    let reply = open.get("/access").await;
    assert_eq!(reply.header("cache-control"), "no-store");
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap(),
        json!({"mode": "open"})
    );
    let mut ws = open.ws().await;
    // The tutorial's login; a stray password or token is ignored in open mode.
    let reply = login(
        &mut ws,
        json!({"type": "login", "username": "alice", "password": "x"}),
    )
    .await;
    assert_eq!(reply["success"], true, "{reply}");
    let mut ws = open.ws().await;
    let reply = login(
        &mut ws,
        json!({"type": "login", "accessToken": hs256(&claims("bob"))}),
    )
    .await;
    assert_eq!(
        reply["code"], "invalid-name",
        "open mode takes no name from a token: {reply}"
    );
    open.stop().await;
    let token = TestServer::start_with(&token_config(), &common::repo_public()).await;
    let reply = token.get("/access").await;
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap(),
        json!({"mode": "token", "nameClaim": "sub"})
    );
    token.stop().await;
    let password = TestServer::start_with(PASSWORD_CONFIG, &common::repo_public()).await;
    let body = password.get("/access").await.body;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"mode": "password"})
    );
    assert!(!body.contains("argon2"));
    password.stop().await;
}

/// `iss` and `aud`, when configured, are required and must match.
#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let config = format!(
        "{}issuer = \"https://auth.example\"\naudience = \"dialtone\"\n",
        token_config()
    );
    let server = TestServer::start_with(&config, &common::repo_public()).await;
    let base = |extra: Value| {
        let mut claims = json!({"sub": "bob", "exp": now() + 600});
        for (key, value) in extra.as_object().unwrap() {
            claims[key] = value.clone();
        }
        hs256(&claims)
    };
    for (what, token) in [
        ("no iss or aud", base(json!({}))),
        ("no aud", base(json!({"iss": "https://auth.example"}))),
        ("no iss", base(json!({"aud": "dialtone"}))),
        (
            "another iss",
            base(json!({"iss": "https://evil.example", "aud": "dialtone"})),
        ),
        (
            "another aud",
            base(json!({"iss": "https://auth.example", "aud": "other"})),
        ),
    ] {
        let mut ws = server.ws().await;
        let reply = login(&mut ws, json!({"type": "login", "accessToken": token})).await;
        refused(&reply, "auth-failed", &token);
        assert_eq!(reply["code"], "auth-failed", "{what}");
    }
    let mut ws = server.ws().await;
    let good = base(json!({"iss": "https://auth.example", "aud": ["other", "dialtone"]}));
    let reply = login(&mut ws, json!({"type": "login", "accessToken": good})).await;
    assert_eq!(reply["success"], true, "{reply}");
    server.stop().await;
}

async fn csp(server: &TestServer) -> String {
    server
        .get("/")
        .await
        .header("content-security-policy")
        .to_owned()
}

/// Embedding: framing is off unless `frame_ancestors` names the sites that may frame the page.
#[tokio::test]
async fn only_the_configured_sites_may_frame_the_page() {
    let plain = TestServer::start().await;
    assert!(csp(&plain).await.contains("frame-ancestors 'none'"));
    plain.stop().await;
    let config =
        "frame_ancestors = [\"https://clinic.example\", \"https://school.example:8443\"]\n";
    let framed = TestServer::start_with(config, &common::repo_public()).await;
    let policy = csp(&framed).await;
    assert!(
        policy.ends_with("frame-ancestors https://clinic.example https://school.example:8443"),
        "{policy}"
    );
    framed.stop().await;
    // Nothing but an origin gets into the header.
    for bad in ["https://a.example; script-src *", "https://a;b", "*"] {
        let text = format!("frame_ancestors = [{bad:?}]\n");
        let err = dialtone::config::Config::parse(&text, std::path::Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not an origin"), "{bad}: {err}");
    }
}
