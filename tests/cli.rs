//! The `dialtone` binary as a person runs it: flags, config errors, the start-up banner,
//! signals, and Heroku's PORT mode.

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::{Running, config_in, dialtone, on_free_port, start_in, write_config};
use common::repo_public;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The certificate the binary generated in `dir/certs/` (tls mode "auto").
fn generated_certificate(dir: &std::path::Path) -> CertificateDer<'static> {
    let pem = std::fs::read(dir.join("certs/cert.pem")).expect("dialtone wrote certs/cert.pem");
    CertificateDer::from_pem_slice(&pem).unwrap()
}

#[test]
fn help_explains_the_flags_and_port_mode() {
    let output = dialtone().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("--config <PATH>"), "{help}");
    assert!(help.contains("PORT"), "{help}");
    assert!(help.contains("config.toml"), "{help}");
    // Where the file is looked for, for a binary copied out of the repository.
    assert!(help.contains("the directory it is"), "{help}");
    assert!(help.contains("not the binary's folder"), "{help}");
}

#[test]
fn config_errors_stop_the_binary_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "listen = \"127.0.0.1:0\"\n[tls]\nmdoe = \"off\"\n",
    );
    let output = dialtone().arg("--config").arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("line 3, column 1"), "{stderr}");
    assert!(stderr.contains("mdoe"), "{stderr}");
    assert!(stderr.contains("dialtone.toml"), "{stderr}");
    // It stopped before generating anything.
    assert!(!dir.path().join("certs").exists());

    let missing = dir.path().join("nope.toml");
    let output = dialtone().arg("--config").arg(&missing).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("nope.toml"), "{stderr}");

    let output = dialtone()
        .arg("--config")
        .arg(write_config(dir.path(), "listen = \"127.0.0.1:0\"\n"))
        .env("PORT", "eighty")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8(output.stderr).unwrap().contains("PORT"));
}

#[tokio::test]
async fn the_binary_prints_where_to_go_and_serves_https_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut running) = start_in(dir.path(), "");
    let banner = running.text();

    // The certificate was generated next to the config, and its fingerprint printed.
    let cert = generated_certificate(dir.path());
    let fingerprint = dialtone::tls::fingerprint(&cert);
    assert!(banner.contains(&fingerprint), "{banner}");
    assert!(banner.contains("mode: HTTPS"), "{banner}");
    assert!(!banner.contains("scan"), "no QR code into a pipe: {banner}");
    let port = running.port();
    assert!(
        banner.contains(&format!("https://127.0.0.1:{port}")),
        "{banner}"
    );

    // A client that trusts exactly that certificate gets the page.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = common::connector(&cert, &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let request = hyper::Request::get("/healthz").header("host", "localhost");
    let reply = common::http1(tls, request, &[]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("\"status\":\"ok\""), "{}", reply.body);

    // Two users logged in when SIGTERM comes: each gets Close 1001, and dialtone exits 0.
    let mut alice = wss(port, &cert).await;
    let mut bob = wss(port, &cert).await;
    assert_eq!(login(&mut alice, "alice").await["success"], true);
    assert_eq!(login(&mut bob, "bob").await["success"], true);
    running.signal("TERM");
    for ws in [&mut alice, &mut bob] {
        let frame = close_frame(ws).await;
        assert_eq!(u16::from(frame.code), 1001);
        assert_eq!(frame.reason, "server restarting");
    }
    let status = running.wait(Duration::from_secs(15));
    assert!(
        status.success(),
        "SIGTERM ends dialtone cleanly: {status:?}"
    );
    assert!(
        running.log().contains("SIGTERM received"),
        "{}",
        running.log()
    );

    // A restart reuses the certificate: browsers keep the exception they were given.
    let mut command = dialtone();
    command.arg("--config").arg(&path);
    let mut again = Running::start(command);
    assert!(again.text().contains(&fingerprint), "{}", again.text());
    assert!(again.text().contains("reused"), "{}", again.text());
    again.signal("INT");
    assert!(again.wait(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn with_port_set_it_serves_plain_http_for_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("public_dir = {:?}\n", repo_public().display().to_string()),
    );
    let (port, running) = on_free_port(|port| {
        let mut command = dialtone();
        command
            .arg("--config")
            .arg(&path)
            .env("PORT", port.to_string());
        Running::try_start(command)
    });
    assert!(running.text().contains("plain HTTP"), "{}", running.text());
    assert!(
        !dir.path().join("certs").exists(),
        "no certificate in PORT mode"
    );

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = hyper::Request::get("/").header("host", "dialtone-demo.herokuapp.com");
    let reply = common::http1(tcp, request, &[("x-forwarded-proto", "http")]).await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        "https://dialtone-demo.herokuapp.com/"
    );
}

#[tokio::test]
async fn closed_stdout_and_stderr_do_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("public_dir = {:?}\n", repo_public().display().to_string()),
    );
    let (port, mut running) = Running::start_headless(&path);
    // Requests that log, after the banner was written into a closed pipe.
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = hyper::Request::get("/healthz").header("host", "localhost");
        let reply = common::http1(tcp, request, &[]).await;
        assert_eq!(reply.status, 200);
    }
    running.signal("TERM");
    assert!(running.wait(Duration::from_secs(15)).success());
}

type Wss = common::TlsWs;

/// A WebSocket over TLS to the binary, trusting only `cert`.
async fn wss(port: u16, cert: &CertificateDer<'static>) -> Wss {
    common::wss_to(port, common::connector(cert, &[b"http/1.1"])).await
}

async fn login(ws: &mut Wss, name: &str) -> serde_json::Value {
    let message = serde_json::json!({"type": "login", "username": name});
    common::send_json(ws, message).await;
    common::next_json(ws).await
}

async fn close_frame(ws: &mut Wss) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(common::PATIENCE, ws.next())
            .await
            .expect("a close in time");
        match frame {
            Some(Ok(Message::Close(Some(frame)))) => {
                // Read on, as a browser does, which sends our Close reply.
                while let Ok(Some(Ok(_))) = tokio::time::timeout(common::PATIENCE, ws.next()).await
                {
                }
                return frame;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a Close frame, got {other:?}"),
        }
    }
}

/// Whether a fresh TLS connection to the binary verifies against `cert`.
async fn presents(port: u16, cert: &CertificateDer<'static>) -> bool {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    common::connector(cert, &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .is_ok()
}

#[tokio::test]
async fn sighup_swaps_in_renewed_certificates_without_dropping_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write_pair = || {
        let (cert, key) =
            dialtone::tls::generate(&["localhost".into()], std::time::SystemTime::now()).unwrap();
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
    };
    let old = write_pair();
    let files = "[tls]\nmode = \"files\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n";
    let (_, running) = start_in(dir.path(), files);
    let port = running.port();
    let mut alice = wss(port, &old).await;
    assert_eq!(login(&mut alice, "alice").await["success"], true);

    // Renewed files, then SIGHUP: new connections get the new certificate.
    let new = write_pair();
    running.signal("HUP");
    running.wait_for_log("SIGHUP: new connections use");
    assert!(presents(port, &new).await);
    assert!(!presents(port, &old).await);
    // alice, connected before, noticed nothing.
    assert_eq!(
        login(&mut alice, "alice2").await["code"],
        "already-logged-in"
    );

    // A broken renewal is refused and the working certificate stays.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    running.signal("HUP");
    let log = running.wait_for_log("keeping the current certificate");
    assert!(log.contains("cert.pem"), "{log}");
    assert!(presents(port, &new).await);
    assert_eq!(
        login(&mut alice, "alice3").await["code"],
        "already-logged-in"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut running) = start_in(dir.path(), "log_format = \"json\"\n");
    running.wait_for_log("settings from");
    running.signal("TERM");
    assert!(running.wait(Duration::from_secs(15)).success());
    let log = running.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    assert!(
        lines
            .iter()
            .all(|line| line["level"].is_string() && line["timestamp"].is_string())
    );
    assert!(
        lines.iter().any(|line| line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("settings from"))),
        "{log}"
    );
}

#[tokio::test]
async fn at_the_descriptor_limit_existing_users_go_on_and_new_ones_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    // Idle sockets keep their descriptor for the whole handshake timeout.
    let path = config_in(dir.path(), "[limits]\ntls_handshake_timeout_secs = 60\n");
    // A descriptor limit of 64, set for the binary alone.
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_dialtone"))
        .arg(&path)
        .env_remove("PORT")
        .env("RUST_LOG", "info");
    let running = Running::start(command);
    let port = running.port();
    let cert = generated_certificate(dir.path());
    let mut alice = wss(port, &cert).await;
    assert_eq!(login(&mut alice, "alice").await["success"], true);

    // 80 clients that connect and say nothing use up the server's descriptors.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    let log = running.wait_for_log("cannot accept a connection");
    assert!(log.contains("Too many open files"), "{log}");
    // alice, already connected, is served as before.
    assert_eq!(
        login(&mut alice, "alice2").await["code"],
        "already-logged-in"
    );
    // When descriptors free up, new users get in again.
    drop(idle);
    let mut bob = tokio::time::timeout(Duration::from_secs(10), wss(port, &cert))
        .await
        .expect("a new connection is accepted once descriptors are free");
    assert_eq!(login(&mut bob, "bob").await["success"], true);
}

/// The README's promise: SDP and ICE candidates (which hold people's addresses) never reach
/// the log, even at the most detailed level, and neither does the TURN secret.
#[tokio::test]
async fn the_log_never_carries_sdp_candidates_or_secrets() {
    use futures_util::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(
        dir.path(),
        "[turn]\nurls = \"turn:turn.example:3478\"\nsecret = \"secret-9d1c-north-wind\"\n",
    );
    let mut command = dialtone();
    command
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "dialtone=trace,info");
    let mut running = Running::start(command);
    let port = running.port();
    let cert = generated_certificate(dir.path());
    let mut alice = wss(port, &cert).await;
    let mut bob = wss(port, &cert).await;
    assert_eq!(login(&mut alice, "alice").await["success"], true);
    assert_eq!(login(&mut bob, "bob").await["success"], true);
    let secrets = [
        "sdp-offer-7f3a",
        "sdp-answer-51c0",
        "candidate-93b1",
        "203.0.113.77",
        "secret-9d1c-north-wind",
    ];
    let send = |message: serde_json::Value| message.to_string().into();
    alice
        .send(send(
            serde_json::json!({"type": "offer", "otherUsername": "bob",
            "offer": {"type": "offer", "sdp": "v=0\r\na=sdp-offer-7f3a\r\n"}}),
        ))
        .await
        .unwrap();
    assert_eq!(common::next_json(&mut bob).await["type"], "offer");
    bob.send(send(serde_json::json!({"type": "answer",
        "answer": {"type": "answer", "sdp": "v=0\r\na=sdp-answer-51c0\r\n"}})))
        .await
        .unwrap();
    assert_eq!(common::next_json(&mut alice).await["type"], "answer");
    bob.send(send(serde_json::json!({"type": "candidate", "candidate": {
        "candidate": "candidate:candidate-93b1 1 udp 2122260223 203.0.113.77 54321 typ host"}})))
        .await
        .unwrap();
    assert_eq!(common::next_json(&mut alice).await["type"], "candidate");
    // Refused messages carry payloads too.
    alice
        .send(send(
            serde_json::json!({"type": "offer", "otherUsername": "zed",
            "offer": {"sdp": "a=sdp-offer-7f3a"}}),
        ))
        .await
        .unwrap();
    assert_eq!(common::next_json(&mut alice).await["code"], "unknown-user");
    alice
        .send(send(serde_json::json!({"type": "close"})))
        .await
        .unwrap();
    assert_eq!(common::next_json(&mut bob).await["type"], "close");

    running.signal("TERM");
    assert!(running.wait(Duration::from_secs(15)).success());
    let log = running.log();
    // The log was as detailed as it gets: every relayed message type is there.
    for line in [
        "offer relayed",
        "answer relayed",
        "candidate relayed",
        "offer refused",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
    for secret in secrets {
        assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
}

#[test]
fn a_lease_shorter_than_two_heartbeats_stops_the_binary_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(
        dir.path(),
        "[tls]\nmode = \"off\"\n[cluster]\nredis_url = \"redis://127.0.0.1:9\"\n\
         heartbeat_ms = 1000\nlease_ms = 1500\n",
    );
    let mut child = dialtone()
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must stop by itself, before it would wait for a Redis that is not there.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("dialtone started with a lease shorter than two heartbeats");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("lease_ms (1500) must be at least twice heartbeat_ms"),
        "{stderr}"
    );
}

/// At a terminal (`script` gives the binary one) the banner draws a QR code of the first LAN
/// URL, so a phone can open it.
#[test]
fn at_a_terminal_the_banner_draws_a_qr_code_of_the_lan_url() {
    if Command::new("script").arg("--version").output().is_err() {
        common::skip("script (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"0.0.0.0:0\"\npublic_dir = {:?}\n",
            repo_public().display().to_string()
        ),
    );
    // The binary ends by itself (SIGTERM after 20 s) even if this test fails midway.
    let inner = format!(
        "exec timeout -s TERM 20 {} --config {}",
        env!("CARGO_BIN_EXE_dialtone"),
        config.display()
    );
    let mut command = Command::new("script");
    command
        .args(["-qefc", &inner, "/dev/null"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped());
    let running = Running::start(command);
    let banner = running.lines();
    let text = running.text();
    assert!(text.contains("Press Ctrl-C to stop."), "{text}");
    let Some(first_lan) = dialtone::net::reachable_lan_addresses().first().copied() else {
        assert!(!text.contains("scan"), "no LAN address, no code: {text}");
        return;
    };
    let at = banner
        .iter()
        .position(|line| line.contains("scan to open"))
        .unwrap_or_else(|| panic!("no QR code at a terminal: {text}"));
    let url = banner[at].rsplit(' ').next().unwrap().trim_end_matches(':');
    let addr: std::net::SocketAddr = url.strip_prefix("https://").unwrap().parse().unwrap();
    assert_eq!(addr.ip(), first_lan, "{text}");
    assert!(
        banner.contains(&format!("    {url}")),
        "one of the listed URLs: {text}"
    );
    let code = dialtone::qr::terminal(url).unwrap();
    let drawn: Vec<&str> = banner[at + 1..].iter().map(String::as_str).collect();
    let expected: Vec<&str> = code.lines().collect();
    assert_eq!(drawn[..expected.len()], expected[..], "{text}");
}

/// A copy of the binary in an empty folder, with no config file and no `public/`, serves the
/// page built into it, and two people can log in and call.
#[tokio::test]
async fn a_binary_copied_to_an_empty_folder_serves_the_page_and_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("dialtone");
    std::fs::copy(env!("CARGO_BIN_EXE_dialtone"), &binary).unwrap();
    // Another test's fork can hold the copy's write descriptor until its exec; running the
    // copy meanwhile fails with ETXTBSY ("Text file busy"), so wait for that to pass.
    for _ in 0..100 {
        match Command::new(&binary).arg("--help").output() {
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => break,
        }
    }
    let mut command = Command::new(&binary);
    command
        .current_dir(dir.path())
        .env_remove("PORT")
        .env("RUST_LOG", "info")
        .args(["--listen", "localhost:0"]);
    let mut running = Running::start(command);
    let log = running.wait_for_log("built into this binary");
    assert!(log.contains("no config.toml found"), "{log}");
    let port = running.port();
    let cert = generated_certificate(dir.path());

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = common::connector(&cert, &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let request = hyper::Request::get("/").header("host", format!("localhost:{port}"));
    let page = common::http1(tls, request, &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"<video id="remote""#));

    let (mut alice, mut bob) = (wss(port, &cert).await, wss(port, &cert).await);
    assert_eq!(login(&mut alice, "alice").await["success"], true);
    assert_eq!(login(&mut bob, "bob").await["success"], true);
    call_and_hang_up(&mut alice, &mut bob).await;
    let mut carol = wss(port, &cert).await;
    assert_eq!(login(&mut carol, "alice").await["code"], "name-taken");
    // A refused name is shown escaped and cut to 40 characters, so a hostile one cannot
    // flood or forge log lines.
    let long = format!("{}\nforged", "x".repeat(45));
    assert_eq!(login(&mut carol, &long).await["success"], false);
    // The page's log-out button: Close 1000.
    let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "".into(),
    };
    alice.close(Some(normal)).await.unwrap();
    let log = running.wait_for_log("logged out");
    for line in [
        "call started",
        "call answered",
        "call ended",
        "reason=\"hung up\"",
        "login refused",
        "code=\"name-taken\"",
    ] {
        assert!(log.contains(line), "no {line:?} in\n{log}");
    }
    let ended = log
        .lines()
        .find(|line| line.contains("call ended"))
        .unwrap();
    assert!(
        ended.contains("duration=\"0 s since the ") || ended.contains("duration=\"1 s since the "),
        "{ended}"
    );
    let cut = format!("user=\"{}…\"", "x".repeat(40));
    assert!(
        log.lines()
            .any(|line| line.contains("login refused") && line.contains(&cut)),
        "no {cut} in\n{log}"
    );
    assert!(!log.contains("\nforged"), "{log}");
    let logout = log
        .lines()
        .find(|line| line.contains("logged out"))
        .unwrap();
    assert!(
        logout.contains("user=\"alice\"") && logout.contains("127.0.0.1"),
        "{logout}"
    );
    // Plain text to a file: no colour codes.
    assert!(!log.contains('\u{1b}'), "{log}");
    running.signal("TERM");
    assert!(running.wait(Duration::from_secs(15)).success());
}

/// Alice calls Bob, Bob answers, Alice hangs up.
async fn call_and_hang_up(alice: &mut Wss, bob: &mut Wss) {
    use futures_util::SinkExt;
    let send = |message: serde_json::Value| message.to_string().into();
    alice
        .send(send(
            serde_json::json!({"type": "offer", "otherUsername": "bob",
            "offer": {"type": "offer", "sdp": "v=0\r\n"}}),
        ))
        .await
        .unwrap();
    assert_eq!(common::next_json(bob).await["type"], "offer");
    bob.send(send(
        serde_json::json!({"type": "answer", "otherUsername": "alice",
        "answer": {"type": "answer", "sdp": "v=0\r\n"}}),
    ))
    .await
    .unwrap();
    assert_eq!(common::next_json(alice).await["type"], "answer");
    alice
        .send(send(
            serde_json::json!({"type": "close", "otherUsername": "bob"}),
        ))
        .await
        .unwrap();
    assert_eq!(common::next_json(bob).await["type"], "close");
}

#[test]
fn start_up_errors_are_said_once_name_the_file_and_come_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothere.toml");
    let output = dialtone().arg("--config").arg(&missing).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("nothere.toml"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");

    // A bad public_dir stops it before certs/ is written.
    let path = write_config(
        dir.path(),
        "listen = \"127.0.0.1:0\"\npublic_dir = \"no-such-folder\"\n",
    );
    let output = dialtone().arg("--config").arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("no-such-folder"), "{stderr}");
    assert!(stderr.contains("dialtone.toml"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert!(!dir.path().join("certs").exists(), "{stderr}");

    // A missing certificate names the setting in the file actually in use, and relative
    // paths are the config folder's.
    let path = write_config(
        dir.path(),
        "listen = \"127.0.0.1:0\"\n[tls]\nmode = \"files\"\ncert = \"mine/cert.pem\"\n",
    );
    let output = dialtone()
        .current_dir(std::env::temp_dir())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let expected = dir.path().join("mine/cert.pem");
    assert!(stderr.contains(&*expected.to_string_lossy()), "{stderr}");
    assert!(stderr.contains("set [tls] cert in"), "{stderr}");
    assert!(stderr.contains("dialtone.toml"), "{stderr}");
    assert!(!stderr.contains("config.toml"), "{stderr}");

    // Bad listen values, in the file or on the command line, say what is expected.
    let output = dialtone().args(["--listen", "8443"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("HOST:PORT") && stderr.contains("localhost:8443"),
        "{stderr}"
    );
}

/// `--listen` wins over the config file and over PORT, and keeps TLS on; in PORT mode the
/// banner says why TLS is off.
#[tokio::test]
async fn listen_flag_overrides_the_file_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), "");
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("127.0.0.1:0", "127.0.0.1:1"),
    )
    .unwrap();
    let mut command = dialtone();
    command
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("PORT", "5999");
    let running = Running::start(command);
    assert!(running.text().contains("mode: HTTPS"), "{}", running.text());
    assert!(presents(running.port(), &generated_certificate(dir.path())).await);
    assert!(running.log().contains("--listen wins"), "{}", running.log());
    drop(running);

    let (_, running) = on_free_port(|port| {
        let mut command = dialtone();
        command
            .arg("--config")
            .arg(&path)
            .env("PORT", port.to_string());
        Running::try_start(command)
    });
    let banner = running.text();
    assert!(
        banner.contains("TLS is off because PORT is set"),
        "{banner}"
    );
    assert!(banner.contains("--listen"), "{banner}");
}

/// Behind a proxy that dialtone was not told about, and with a page from another address:
/// warn lines that say what came and what to change, at most one a second.
#[tokio::test]
async fn proxy_mistakes_are_logged_with_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let (path, running) = start_in(dir.path(), "[tls]\nmode = \"off\"\n");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], running.port()).into();
    for _ in 0..5 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = hyper::Request::get("/")
            .header("host", "calls.example.com")
            .header("x-forwarded-for", "198.51.100.7");
        assert_eq!(common::http1(tcp, request, &[]).await.status, 200);
    }
    let log = running.wait_for_log("behind_proxy is false");
    assert!(log.contains("set behind_proxy = true in"), "{log}");
    assert!(log.contains(&*path.to_string_lossy()), "{log}");
    assert_eq!(
        log.matches("behind_proxy is false").count(),
        1,
        "once a second:\n{log}"
    );

    // A proxy that does not pass the Host on: the origin does not match.
    for _ in 0..5 {
        let tcp: Box<dyn common::Io> =
            Box::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}/ws"),
            )
            .unwrap();
        request
            .headers_mut()
            .insert("origin", "https://calls.example.com".parse().unwrap());
        let refused = tokio_tungstenite::client_async(request, tcp).await;
        assert!(refused.is_err());
    }
    let log = running.wait_for_log("websocket refused");
    assert!(log.contains("\"https://calls.example.com\""), "{log}");
    assert!(log.contains(&format!("https://{addr}")), "{log}");
    assert!(log.contains("allowed_origins"), "{log}");
    assert_eq!(log.matches("websocket refused").count(), 1, "{log}");
}

#[test]
fn a_low_port_without_the_capability_says_what_it_needs() {
    // Ports below 1024 need privilege; in a namespace of its own the threshold is the
    // kernel's default, whatever the host's is.
    let Some(ns) = common::netns::Namespace::create() else {
        return;
    };
    if Command::new("setpriv").arg("--version").output().is_err() {
        common::skip("setpriv (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = common::process::write_config(dir.path(), "[tls]\nmode = \"off\"\n");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let output = ns
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_dialtone"))
        .args(["--listen", "127.0.0.1:80", "--config"])
        .arg(&config)
        .env_remove("PORT")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot listen on 127.0.0.1:80")
            && stderr.contains("ports below 1024 need root or CAP_NET_BIND_SERVICE"),
        "{stderr}"
    );
}
