//! What a deployment meets: plain HTTP on the TLS port, silent sockets in every mode, the page
//! built into the binary, the operator's `/metrics`, and a TLS-terminating proxy in front.

mod common;

use std::time::Duration;

use common::{TestServer, plain_get, sample};
use dialtone::config::Config;
use hyper::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server from config text alone (no `public_dir` unless the text sets one), listening on
/// 127.0.0.1:0 with certificates in a temporary folder.
async fn start(text: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("listen = \"127.0.0.1:0\"\n{text}\n")).unwrap();
    let mut config = Config::load(&path, true).unwrap();
    config.websocket.resume_grace_secs = 0;
    TestServer::start_config(config, dir).await
}

/// Reads until the server closes the connection; `true` if it did within `limit`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_redirected_to_https() {
    let server = start("").await;
    let port = server.addr.port();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /?call=bob HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(common::PATIENCE, tcp.read_to_string(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let location = format!("location: https://127.0.0.1:{port}/?call=bob\r\n");
    assert!(answer.to_ascii_lowercase().contains(&location), "{answer}");
    // And the port still speaks TLS to everyone else.
    assert_eq!(server.get("/").await.status, StatusCode::OK);
    // Bytes that are neither TLS nor HTTP get the connection closed, nothing else.
    let mut junk = TcpStream::connect(server.addr).await.unwrap();
    junk.write_all(&[0x01, 0x02, 0x03]).await.unwrap();
    assert!(closed_within(&mut junk, common::PATIENCE).await);
    server.stop().await;
}

/// What a person's terminal does with `http://` on the TLS port: curl, trusting only the
/// generated certificate, follows the redirect and ends on the https:// page.
#[tokio::test]
async fn curl_follows_plain_http_on_the_tls_port_to_the_https_page() {
    let server = start("").await;
    let port = server.addr.port();
    let cert = server.dir.path().join("certs/cert.pem");
    // On a thread of its own: the server answers on this test's runtime meanwhile.
    if !common::have("curl", "--version", "curl") {
        return;
    }
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--location", "--max-time", "10"])
            .arg("--cacert")
            .arg(&cert)
            .args(["--output", "/dev/null", "--write-out"])
            .arg("%{http_code} %{num_redirects} %{url_effective}")
            .arg(format!("http://localhost:{port}/"))
            .output()
    })
    .await
    .unwrap()
    .expect("curl runs");
    let said = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said} {stderr}");
    assert_eq!(said, format!("200 1 https://localhost:{port}/"), "{stderr}");
    server.stop().await;
}

/// Slowloris: a connection that sends nothing, or only part of a request line (also one that
/// looks like the start of HTTP/2's preface), is closed after `header_read_timeout_secs`.
#[tokio::test]
async fn silent_and_half_sent_connections_are_closed_in_every_mode() {
    for tls in ["auto", "off"] {
        let server = start(&format!(
            "[tls]\nmode = \"{tls}\"\n[limits]\nheader_read_timeout_secs = 1\n\
             tls_handshake_timeout_secs = 1\n"
        ))
        .await;
        for sent in [&b""[..], b"GET / HT", b"PRI * HT"] {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            if let Some(cert) = &server.cert {
                // Past the TLS handshake, then the same bytes inside TLS.
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut stream = common::connector(cert, &[b"h2", b"http/1.1"])
                    .connect(name, tcp)
                    .await
                    .unwrap();
                stream.write_all(sent).await.unwrap();
                let mut buf = [0u8; 64];
                let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("tls {tls}: {sent:?} still open after 5 s"));
                assert!(
                    matches!(read, Ok(0) | Err(_)),
                    "tls {tls}: {sent:?}: {read:?}"
                );
                continue;
            }
            tcp.write_all(sent).await.unwrap();
            assert!(
                closed_within(&mut tcp, Duration::from_secs(5)).await,
                "tls {tls}: {sent:?} still open after 5 s"
            );
        }
        // A TLS port also drops a socket that never starts its handshake.
        if server.cert.is_some() {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            assert!(closed_within(&mut tcp, Duration::from_secs(5)).await);
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn the_built_in_page_is_served_with_types_and_validators() {
    let server = start("").await;
    let page = server.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page.body.contains(r#"<button id="call""#));
    let on_disk = std::fs::read_to_string(common::repo_public().join("index.html")).unwrap();
    assert_eq!(page.body, on_disk, "the built-in page is the repository's");
    assert_eq!(page.header("cache-control"), "no-cache");
    assert!(
        page.header("content-security-policy")
            .contains("default-src 'self'")
    );
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let script = server.get("/app.js").await;
    assert!(script.header("content-type").starts_with("text/javascript"));
    assert!(
        server
            .get("/style.css")
            .await
            .header("content-type")
            .starts_with("text/css")
    );

    let etag = page.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    let again = server
        .request(Request::get("/"), &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    let modified = page.header("last-modified").to_owned();
    let again = server
        .request(Request::get("/"), &[("if-modified-since", &modified)])
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    let other = server
        .request(Request::get("/"), &[("if-none-match", "\"other\"")])
        .await;
    assert_eq!(other.status, StatusCode::OK);
    let head = server.request(Request::head("/"), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());

    for path in [
        "/missing.html",
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/config.toml",
    ] {
        assert_eq!(
            server.get(path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_can_be_switched_off_or_kept_for_the_operator() {
    let off = start("[metrics]\nenabled = false\n").await;
    assert_eq!(off.get("/metrics").await.status, StatusCode::NOT_FOUND);
    assert_eq!(off.get("/healthz").await.status, StatusCode::OK);
    off.stop().await;

    let server = start("[metrics]\ntoken = \"s3cret-t0ken\"\n").await;
    let anonymous = server.get("/metrics").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.header("www-authenticate").starts_with("Bearer"));
    assert!(!anonymous.body.contains("dialtone_"));
    for wrong in ["Bearer s3cret-t0kem", "Bearer s3cret", "Basic s3cret-t0ken"] {
        let reply = server
            .request(Request::get("/metrics"), &[("authorization", wrong)])
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let reply = server
        .request(
            Request::get("/metrics"),
            &[("authorization", "Bearer s3cret-t0ken")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(sample(&reply.body, "dialtone_connections"), Some(0.0));
    server.stop().await;
}

/// `tls.mode = "off"` behind a TLS proxy that passes the Host on: the page's origin is
/// `https://` on the same host, which is accepted with or without `behind_proxy`; another
/// site's is not.
#[tokio::test]
async fn with_tls_off_the_same_host_on_https_may_open_the_socket() {
    let server = start("[tls]\nmode = \"off\"\n").await;
    assert!(server.cert.is_none());
    let host = format!("localhost:{}", server.addr.port());
    for (origin, allowed) in [
        (format!("https://{host}"), true),
        (format!("http://{host}"), true),
        ("https://evil.example".to_owned(), false),
        (format!("https://{host}.evil.example"), false),
    ] {
        let result = server.try_ws_with("/ws", &[("origin", &origin)]).await;
        match (result, allowed) {
            (Ok(mut ws), true) => assert_eq!(ws.login("alice").await["success"], true),
            (Err(status), false) => assert_eq!(status, StatusCode::FORBIDDEN, "{origin}"),
            (Ok(_), false) => panic!("{origin} was let in"),
            (Err(status), true) => panic!("{origin} was refused with {status}"),
        }
        // Each socket closes before the next, so one name serves them all.
        server.connections_fall_to(0, common::PATIENCE).await;
    }
    let page = plain_get(server.addr, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    server.stop().await;
}

/// Heroku's buildpack reads RustConfig; everyone else (rustup, CI) rust-toolchain.toml.
#[test]
fn heroku_builds_with_the_toolchain_ci_pins() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let pinned = std::fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
    let pinned: toml::Table = toml::from_str(&pinned).unwrap();
    let channel = pinned["toolchain"]["channel"].as_str().unwrap().to_owned();
    assert!(
        channel.split('.').count() == 3,
        "an exact version: {channel}"
    );
    let heroku = std::fs::read_to_string(root.join("RustConfig")).unwrap();
    let version = heroku
        .lines()
        .find_map(|line| line.strip_prefix("VERSION="))
        .expect("RustConfig sets VERSION");
    assert_eq!(version.trim(), channel);
}

/// contrib/dialtone.service passes `systemd-analyze verify` with no complaint (an unknown
/// key is only a warning there, so any output fails the test), pointing at the built binary.
#[test]
fn the_systemd_unit_verifies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("contrib/dialtone.service")).unwrap();
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=dialtone",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|line| line == directive), "{directive}");
    }
    // `systemctl help dialtone` opens dialtone's own pages, which the install lines put
    // where Documentation= says.
    let documentation = unit
        .lines()
        .find_map(|line| line.strip_prefix("Documentation="))
        .expect("the unit names its documentation");
    let installed = "/usr/local/share/doc/dialtone";
    assert!(unit.contains(&format!("-t {installed} README.md config.toml docs/*.md")));
    for url in documentation.split_whitespace() {
        let name = url
            .strip_prefix(&format!("file:{installed}/"))
            .unwrap_or_else(|| panic!("{url} is not one of the installed pages"));
        let source = if name == "README.md" {
            root.join(name)
        } else {
            root.join("docs").join(name)
        };
        assert!(source.is_file(), "{url}: no {}", source.display());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dialtone.service");
    let unit = unit.replace("/usr/local/bin/dialtone", env!("CARGO_BIN_EXE_dialtone"));
    std::fs::write(&path, unit).unwrap();
    if !common::have("systemd-analyze", "--version", "systemd") {
        return;
    }
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && said.trim().is_empty(), "{said}");
}
