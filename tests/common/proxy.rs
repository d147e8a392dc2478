//! A real reverse proxy terminating TLS in front of a dialtone, configured with the
//! example in docs/deployment.md: nginx or Caddy (Debian's packages), on a free loopback port, its
//! config, log and PID in a temporary folder, stopped by its PID. Without the binary the test
//! is skipped, except under `CI=true`, where that is a failure.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dialtone::config::{TlsConfig, TlsMode};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Io, Reply, Ws, connector, http1};

pub struct Proxy {
    pub port: u16,
    /// The certificate the proxy presents, for the name `localhost`.
    pub cert: CertificateDer<'static>,
    child: Child,
    /// Where the proxy writes its log.
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The example for `language` (`nginx`, `caddyfile`) in docs/deployment.md, exactly as a
/// reader copies it.
pub fn readme_block(language: &str) -> String {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deployment.md"))
        .expect("docs/deployment.md");
    let section = docs
        .split_once("## Behind a reverse proxy")
        .expect("docs/deployment.md has a Behind a reverse proxy section")
        .1;
    let block = section
        .split_once(&format!("```{language}\n"))
        .unwrap_or_else(|| panic!("the section has a {language} block"))
        .1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_owned()
}

/// Replaces `from` with `to` in `text`, and fails when `from` is not there: the documented
/// example must keep the lines a reader changes.
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the documented example has no {from:?}:\n{text}"
    );
    text.replace(from, to)
}

/// A certificate for `localhost` in `dir`, made the way dialtone makes its own.
fn certificate(dir: &Path) -> CertificateDer<'static> {
    dialtone::tls::setup(&TlsConfig {
        mode: TlsMode::Auto,
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ..Default::default()
    })
    .unwrap()
    .expect("a certificate")
    .certificate
}

impl Proxy {
    /// nginx with docs/deployment.md's example, edited only where a reader edits it (the port, the
    /// certificate, dialtone's address), then `tweak`ed; `None` (test skipped) without nginx.
    pub fn nginx(upstream: u16, tweak: impl Fn(String) -> String) -> Option<Proxy> {
        if !super::have("nginx", "-v", "nginx") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let cert = certificate(dir.path());
        let temp = dir.path().display().to_string();
        Proxy::start(dir, cert, "nginx", |port| {
            let block = readme_block("nginx");
            let block = edit(
                &block,
                "listen 443 ssl;",
                &format!("listen 127.0.0.1:{port} ssl;"),
            );
            let block = edit(
                &block,
                "/etc/letsencrypt/live/calls.example.com/fullchain.pem",
                &format!("{temp}/cert.pem"),
            );
            let block = edit(
                &block,
                "/etc/letsencrypt/live/calls.example.com/privkey.pem",
                &format!("{temp}/key.pem"),
            );
            let block = edit(
                &block,
                "proxy_pass http://127.0.0.1:8080;",
                &format!("proxy_pass http://127.0.0.1:{upstream};"),
            );
            let block = tweak(block);
            // Workers run as nobody when started by root: no response is buffered to disk,
            // so the private temporary folder never needs to be theirs.
            let conf = format!(
                "daemon off;\nworker_processes 1;\npid {temp}/nginx.pid;\nerror_log \
                 {temp}/proxy.log info;\nevents {{}}\nhttp {{\n    access_log off;\n    \
                 proxy_max_temp_file_size 0;\n    client_body_temp_path {temp}/body;\n    \
                 proxy_temp_path {temp}/proxy;\n    fastcgi_temp_path {temp}/fastcgi;\n    \
                 uwsgi_temp_path {temp}/uwsgi;\n    scgi_temp_path {temp}/scgi;\n{block}\n}}\n"
            );
            std::fs::write(format!("{temp}/nginx.conf"), conf).unwrap();
            let mut command = Command::new("nginx");
            command.args(["-p", &temp, "-e", &format!("{temp}/proxy.log")]);
            command.args(["-c", &format!("{temp}/nginx.conf")]);
            command
        })
    }

    /// Caddy with docs/deployment.md's Caddyfile: the site address becomes `https://localhost:PORT`
    /// with a test certificate (there is no ACME here), dialtone's address its own; what
    /// Caddy does with Host, the upgrade and the forwarded headers is left to Caddy.
    pub fn caddy(upstream: u16) -> Option<Proxy> {
        if !super::have("caddy", "version", "caddy") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let cert = certificate(dir.path());
        let temp = dir.path().display().to_string();
        Proxy::start(dir, cert, "caddy", |port| {
            let block = readme_block("caddyfile");
            let block = edit(
                &block,
                "calls.example.com {",
                &format!(
                    "https://localhost:{port} {{\n    bind 127.0.0.1\n    tls {temp}/cert.pem \
                     {temp}/key.pem"
                ),
            );
            let block = edit(
                &block,
                "reverse_proxy 127.0.0.1:8080",
                &format!("reverse_proxy 127.0.0.1:{upstream}"),
            );
            // No admin endpoint (its fixed port would clash between tests), no http:// port,
            // no HTTP/3, and everything Caddy keeps in the temporary folder.
            let conf = format!(
                "{{\n    admin off\n    auto_https disable_redirects\n    storage file_system \
                 {temp}/data\n    servers {{\n        protocols h1 h2\n    }}\n    log {{\n        \
                 output file {temp}/proxy.log\n    }}\n}}\n{block}"
            );
            std::fs::write(format!("{temp}/Caddyfile"), conf).unwrap();
            let mut command = Command::new("caddy");
            command
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(format!("{temp}/Caddyfile"))
                .env("HOME", &temp)
                .env("XDG_DATA_HOME", &temp)
                .env("XDG_CONFIG_HOME", &temp);
            command
        })
    }

    /// Starts `program` as `configure` sets it up for a free port, trying another port when
    /// the proxy exits (its port was taken) instead of listening.
    fn start(
        dir: tempfile::TempDir,
        cert: CertificateDer<'static>,
        program: &str,
        configure: impl Fn(u16) -> Command,
    ) -> Option<Proxy> {
        let log = dir.path().join("proxy.log");
        for _ in 0..5 {
            let port = super::free_port();
            let mut child = configure(port)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
                .spawn()
                .unwrap_or_else(|err| panic!("{program} runs: {err}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            let listening = loop {
                if child.try_wait().unwrap().is_some() {
                    let said = std::fs::read_to_string(&log).unwrap_or_default()
                        + &std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
                    assert!(
                        said.contains("address already in use")
                            || said.contains("Address already in use"),
                        "{program} exited at start-up:\n{said}"
                    );
                    break false;
                }
                if super::process::listens_on(child.id(), port) {
                    break true;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if listening {
                return Some(Proxy {
                    port,
                    cert,
                    child,
                    log,
                    _dir: dir,
                });
            }
        }
        panic!("{program} did not start on any of five free ports");
    }

    /// What the proxy wrote to its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A TLS connection to the proxy from `source` (any 127.0.0.0/8 address), verifying its
    /// certificate for `localhost`.
    pub async fn connect(&self, source: IpAddr, alpn: &[&[u8]]) -> Box<dyn Io> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let target = SocketAddr::from(([127, 0, 0, 1], self.port));
        let tcp: TcpStream = tokio::time::timeout(super::PATIENCE, socket.connect(target))
            .await
            .expect("connected to the proxy in time")
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        Box::new(
            connector(&self.cert, alpn)
                .connect(name, tcp)
                .await
                .unwrap(),
        )
    }

    /// `https://localhost:PORT`, the page's origin as a browser sees it.
    pub fn origin(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// GET `path` through the proxy, as a browser at `source` would.
    pub async fn get(&self, source: IpAddr, path: &str) -> Reply {
        let request = hyper::Request::get(path).header("host", format!("localhost:{}", self.port));
        http1(self.connect(source, &[b"http/1.1"]).await, request, &[]).await
    }

    /// Opens the signaling socket through the proxy as the page at [`Proxy::origin`] does;
    /// a refused upgrade gives its HTTP status.
    pub async fn ws(&self, source: IpAddr) -> Result<Ws, hyper::StatusCode> {
        let mut request = format!("wss://localhost:{}/ws", self.port)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("origin", self.origin().parse().unwrap());
        let io = self.connect(source, &[b"http/1.1"]).await;
        match tokio::time::timeout(super::PATIENCE, client_async(request, io))
            .await
            .expect("the upgrade through the proxy was answered in time")
        {
            Ok((stream, _)) => Ok(Ws::spawn(stream)),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
            Err(other) => panic!("the upgrade through the proxy failed without an answer: {other}"),
        }
    }
}

impl Drop for Proxy {
    /// SIGTERM, so nginx's master stops its workers too (SIGKILL would leave them running);
    /// SIGKILL only if it has not exited after five seconds.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
