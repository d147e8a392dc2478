//! The `dialtone` binary as a person runs it: flags, config errors, the start-up banner,
//! signals, and Heroku's PORT mode.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::repo_public;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

fn dialtone() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dialtone"));
    command.env_remove("PORT").env("RUST_LOG", "info");
    command
}

/// A port that was free a moment ago (PORT cannot be 0).
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("dialtone.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running binary whose banner has been read; killed on drop if still running.
struct Running {
    child: Child,
    banner: Vec<String>,
}

impl Running {
    fn start(command: Command) -> Running {
        Running::try_start(command).expect("the binary printed its banner")
    }

    /// `None` when the binary exits without a banner (it could not start).
    fn try_start(mut command: Command) -> Option<Running> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stdout for the child's whole life, as a terminal would.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut banner = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            let last = line == "Press Ctrl-C to stop.";
            banner.push(line);
            if last {
                break;
            }
        }
        if banner.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Running { child, banner })
    }

    /// Starts the binary in PORT mode on a free port, with stdout and stderr closed at once
    /// (as when its output is piped into something that has already exited).
    fn start_headless(config: &Path) -> (u16, Running) {
        for _ in 0..5 {
            let port = free_port();
            let mut child = dialtone()
                .arg("--config")
                .arg(config)
                .env("PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdout.take());
            drop(child.stderr.take());
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let banner = Vec::new();
                    return (port, Running { child, banner });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the binary did not start on any of five free ports");
    }

    fn text(&self) -> String {
        self.banner.join("\n")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "exited within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn help_explains_the_flags_and_port_mode() {
    let output = dialtone().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("--config <PATH>"), "{help}");
    assert!(help.contains("PORT"), "{help}");
    assert!(help.contains("config.toml"), "{help}");
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
    let path = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\npublic_dir = {:?}\n",
            repo_public().display().to_string()
        ),
    );
    let mut command = dialtone();
    command.arg("--config").arg(&path);
    let mut running = Running::start(command);
    let banner = running.text();

    // The certificate was generated next to the config, and its fingerprint printed.
    let cert_pem = std::fs::read(dir.path().join("certs/cert.pem")).unwrap();
    let cert = CertificateDer::from_pem_slice(&cert_pem).unwrap();
    let fingerprint = dialtone::tls::fingerprint(&cert);
    assert!(banner.contains(&fingerprint), "{banner}");
    assert!(banner.contains("mode: HTTPS"), "{banner}");
    let port: u16 = banner
        .split("https://localhost:")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|port| port.trim().parse().ok())
        .unwrap_or_else(|| panic!("a localhost URL in {banner}"));
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

    running.signal("TERM");
    let status = running.wait(Duration::from_secs(15));
    assert!(
        status.success(),
        "SIGTERM ends dialtone cleanly: {status:?}"
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
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut command = dialtone();
    command
        .arg("--config")
        .arg(&path)
        .env("PORT", port.to_string());
    let running = Running::start(command);
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
