//! Pages, health, traversal, HTTP/2, proxy mode and TLS, against the real server.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Reply, TestServer, http1, repo_public};
use http_body_util::Empty;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn the_page_is_served_with_the_tutorial_ids() {
    let server = TestServer::start().await;
    let page = server.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
    for id in [
        r#"<input id="username""#,
        r#"<button id="login""#,
        r#"<input id="username-to-call""#,
        r#"<button id="call""#,
        r#"<button id="close-call""#,
        r#"<video id="local""#,
        r#"<video id="remote""#,
    ] {
        assert!(page.body.contains(id), "the page lacks {id}");
    }
    let script = server.get("/app.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.header("content-type").starts_with("text/javascript"));
    let style = server.get("/style.css").await;
    assert!(style.header("content-type").starts_with("text/css"));

    // Conditional requests: an unchanged page costs a 304 and no body. (hyper-staticfile
    // answers If-Modified-Since; browsers send it beside If-None-Match.)
    let modified = page.header("last-modified").to_owned();
    assert!(!modified.is_empty());
    let again = server
        .request(Request::get("/"), &[("if-modified-since", &modified)])
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn nothing_outside_public_is_reachable() {
    // A public dir of our own, with a symlink that points outside it.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
    let public = tempfile::tempdir().unwrap();
    std::fs::write(public.path().join("index.html"), "<p>hi</p>").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        public.path().join("link.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), public.path().join("dirlink")).unwrap();
    let server = TestServer::start_with("", public.path()).await;
    // The folder's own page, not the one built into the binary: restyling works.
    let page = server.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body, "<p>hi</p>");
    let escape = format!("{}/secret.txt", outside.path().display());

    for path in [
        "/link.txt",
        "/dirlink/secret.txt",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/%5c..%5csecret.txt",
        &format!("/{escape}"),
        &format!("/{}", "/etc/passwd"),
        "/config.toml",
        "/missing.html",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.body, "not found\n", "{path}");
        assert!(!reply.body.contains("secret"));
    }
    assert_eq!(server.get("/").await.body, "<p>hi</p>");
    server.stop().await;
}

#[tokio::test]
async fn health_counts_users_and_connections() {
    let server = TestServer::start().await;
    let health = |reply: Reply| -> serde_json::Value {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), "application/json");
        serde_json::from_str(&reply.body).unwrap()
    };
    let body = health(server.get("/healthz").await);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (body["users"].as_u64(), body["connections"].as_u64()),
        (Some(0), Some(0))
    );

    let (_alice, _) = server.user("alice").await;
    let _anonymous = server.ws().await;
    let body = health(server.get("/healthz").await);
    assert_eq!(body["users"], 1);
    assert_eq!(body["connections"], 2);
    server.stop().await;
}

#[tokio::test]
async fn other_methods_are_refused() {
    let server = TestServer::start().await;
    let reply = server.request(Request::post("/"), &[]).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), "GET, HEAD");
    let head = server.request(Request::head("/"), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    server.stop().await;
}

/// GET `path` over HTTP/2 (ALPN h2), which carries the host in `:authority`, not a Host
/// header.
async fn h2_get(server: &TestServer, path: &str) -> Reply {
    let io = server.connect(&[b"h2", b"http/1.1"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("the server speaks HTTP/2 after ALPN h2");
    tokio::spawn(conn);
    let uri = format!("https://localhost:{}{path}", server.addr.port());
    let response = sender
        .send_request(Request::get(uri).body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    Reply::read(response).await
}

#[tokio::test]
async fn pages_are_served_over_http2_when_negotiated() {
    let server = TestServer::start().await;
    let reply = h2_get(&server, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains(r#"id="username""#));
    server.stop().await;
}

#[tokio::test]
async fn the_certificate_is_checked_and_bad_handshakes_do_not_stop_the_server() {
    let server = TestServer::start().await;

    // The server presents exactly the certificate it generated, for the name asked.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = common::connector(server.cert.as_ref().unwrap(), &[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("a client trusting dialtone's certificate connects");
    assert_eq!(
        tls.get_ref().1.peer_certificates(),
        Some(std::slice::from_ref(server.cert.as_ref().unwrap()))
    );
    drop(tls);

    // A client that trusts some other certificate refuses this server; the server counts the
    // failed handshake and carries on.
    let (other_pem, _) =
        dialtone::tls::generate(&["localhost".into()], std::time::SystemTime::now()).unwrap();
    use rustls::pki_types::pem::PemObject;
    let other = rustls::pki_types::CertificateDer::from_pem_slice(other_pem.as_bytes()).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let refused = common::connector(&other, &[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "a foreign certificate must not verify");
    let failures = || async {
        let metrics = server.get("/metrics").await.body;
        common::sample(&metrics, "dialtone_tls_handshake_failures_total")
    };
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while failures().await != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused handshake is counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Garbage instead of a ClientHello, and a client that hangs up mid-handshake.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(garbage);
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    drop(half);
    // A client that sends nothing at all holds no one else up.
    let _silent = TcpStream::connect(server.addr).await.unwrap();

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
    let (_alice, _) = server.user("alice").await;
    server.stop().await;
}

/// Behind Heroku's router: plain HTTP, forwarded headers trusted, http pages redirected.
#[tokio::test]
async fn proxy_mode_redirects_plain_http_and_serves_https_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = dialtone::config::Config::parse(
        &format!("public_dir = {:?}\n", repo_public().display().to_string()),
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    config.apply_port_env(Some("5000")).unwrap();
    config.limits.max_connections_per_ip = std::num::NonZeroUsize::new(1).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_config(config, dir).await;
    assert!(server.cert.is_none(), "TLS is off behind the router");

    let reply = server
        .request(
            Request::get("/call?room=1"),
            &[("x-forwarded-proto", "http")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.header("location"),
        format!("https://localhost:{}/call?room=1", server.addr.port())
    );

    let page = server
        .request(Request::get("/"), &[("x-forwarded-proto", "https")])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(r#"id="call""#));

    // The health check answers whatever the scheme.
    let health = server
        .request(Request::get("/healthz"), &[("x-forwarded-proto", "http")])
        .await;
    assert_eq!(health.status, StatusCode::OK);

    let mut ws = server
        .ws_with(
            "/",
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "203.0.113.9, 198.51.100.4"),
            ],
        )
        .await;
    assert_eq!(ws.login("alice").await["success"], true);
    // The client is the router's last X-Forwarded-For hop, not the router's own address: with
    // one socket allowed per client, another client gets in, and the same client (whatever it
    // wrote before the router's entry) does not.
    let via_router = |xff: &'static str| [("x-forwarded-proto", "https"), ("x-forwarded-for", xff)];
    let mut other = server
        .try_ws_with("/", &via_router("198.51.100.5"))
        .await
        .expect("another client behind the same router");
    assert_eq!(other.login("bob").await["success"], true);
    let same = server
        .try_ws_with("/", &via_router("192.0.2.1, 198.51.100.4"))
        .await;
    assert_eq!(same.err(), Some(StatusCode::TOO_MANY_REQUESTS));
    server.stop().await;
}

/// `/qr.svg` draws the address another device should open: on the server's own machine the
/// first LAN URL a listener serves (a phone cannot open "localhost"), elsewhere the address
/// the page has. This server listens on 127.0.0.1 only, so no LAN URL would reach it: the code
/// keeps the page's own address (which src/http/qr.rs's unit test and the page's sentence
/// cover), never a LAN address nothing serves.
#[tokio::test]
async fn the_share_code_names_the_address_another_device_can_open() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    let qr = |host: String, path: &'static str| {
        let server = &server;
        async move {
            let io = server.connect(&[b"http/1.1"]).await;
            http1(io, Request::get(path).header("host", host), &[]).await
        }
    };
    let reply = qr(format!("localhost:{port}"), "/qr.svg?call=B%C3%B6b+Smith").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "image/svg+xml");
    assert!(!reply.header("content-security-policy").is_empty());
    let base = format!("https://localhost:{port}");
    assert_eq!(
        reply.header("x-qr-text"),
        format!("{base}/?call=B%C3%B6b%20Smith")
    );
    assert_eq!(
        reply.body,
        dialtone::qr::svg(reply.header("x-qr-text")).unwrap()
    );
    let reply = qr(format!("127.0.0.1:{port}"), "/qr.svg").await;
    assert_eq!(
        reply.header("x-qr-text"),
        format!("https://127.0.0.1:{port}/")
    );
    // Reached by another name, that name is what to share; a bad name is left out.
    let reply = qr("calls.example.com".into(), "/qr.svg?call=%22quoted%22").await;
    assert_eq!(reply.header("x-qr-text"), "https://calls.example.com/");
    let reply = qr("[fd00::5]:8443".into(), "/qr.svg?x=1&call=al").await;
    assert_eq!(reply.header("x-qr-text"), "https://[fd00::5]:8443/?call=al");
    // Over HTTP/2 (what browsers negotiate) there is no Host header, only the authority.
    let reply = h2_get(&server, "/qr.svg?call=al").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-qr-text"), format!("{base}/?call=al"));
    server.stop().await;
}
