//! A real nginx (Debian's package) terminating TLS in front of a dialtone, configured with the
//! README's own example: on a free loopback port, its config, log and PID in a temporary
//! folder, stopped by its PID. Without the binary the test is skipped, except under
//! `CI=true`, where that is a failure.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dialtone::config::{TlsConfig, TlsMode};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Io, Reply, Ws, connector, http1};

pub struct Nginx {
    pub port: u16,
    /// The certificate nginx presents, for the name `localhost`.
    pub cert: CertificateDer<'static>,
    child: Child,
    dir: tempfile::TempDir,
}

/// Whether nginx can run here; panics under CI when it cannot.
pub fn available() -> bool {
    super::have("nginx", "-v", "nginx")
}

/// The README's nginx example, exactly as a reader copies it.
pub fn readme_server_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split_once("## Behind a reverse proxy")
        .expect("the README has a Behind a reverse proxy section")
        .1;
    let block = section
        .split_once("```nginx\n")
        .expect("the section has an nginx block")
        .1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_owned()
}

/// Replaces `from` with `to` in `text`, and fails when `from` is not there: the README's
/// example must keep the lines a reader changes.
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the README's nginx block has no {from:?}:\n{text}"
    );
    text.replace(from, to)
}

impl Nginx {
    /// nginx with the README's example, edited only where a reader edits it (the port, the
    /// certificate, dialtone's address), then `tweak`ed; `None` (test skipped) without nginx.
    pub fn start(upstream: u16, tweak: impl Fn(String) -> String) -> Option<Nginx> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let made = dialtone::tls::setup(&TlsConfig {
            mode: TlsMode::Auto,
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        })
        .unwrap()
        .expect("a certificate");
        for _ in 0..5 {
            let port = super::free_port();
            let block = readme_server_block();
            let block = edit(
                &block,
                "listen 443 ssl;",
                &format!("listen 127.0.0.1:{port} ssl;"),
            );
            let block = edit(
                &block,
                "/etc/letsencrypt/live/calls.example.com/fullchain.pem",
                &dir.path().join("cert.pem").display().to_string(),
            );
            let block = edit(
                &block,
                "/etc/letsencrypt/live/calls.example.com/privkey.pem",
                &dir.path().join("key.pem").display().to_string(),
            );
            let block = edit(
                &block,
                "proxy_pass http://127.0.0.1:8080;",
                &format!("proxy_pass http://127.0.0.1:{upstream};"),
            );
            let block = tweak(block);
            if let Some(child) = spawn(dir.path(), &block, port) {
                return Some(Nginx {
                    port,
                    cert: made.certificate,
                    child,
                    dir,
                });
            }
        }
        panic!("nginx did not start on any of five free ports");
    }

    /// What nginx wrote to its error log.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// A TLS connection to nginx from `source` (any 127.0.0.0/8 address), verifying its
    /// certificate for `localhost`.
    pub async fn connect(&self, source: IpAddr, alpn: &[&[u8]]) -> Box<dyn Io> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let target = SocketAddr::from(([127, 0, 0, 1], self.port));
        let tcp: TcpStream = tokio::time::timeout(super::PATIENCE, socket.connect(target))
            .await
            .expect("connected to nginx in time")
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

    /// GET `path` through nginx, as a browser at `source` would.
    pub async fn get(&self, source: IpAddr, path: &str) -> Reply {
        let request = hyper::Request::get(path).header("host", format!("localhost:{}", self.port));
        http1(self.connect(source, &[b"http/1.1"]).await, request, &[]).await
    }

    /// Opens the signaling socket through nginx as the page at [`Nginx::origin`] does;
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
            .expect("the upgrade through nginx was answered in time")
        {
            Ok((stream, _)) => Ok(Ws::spawn(stream)),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
            Err(other) => panic!("the upgrade through nginx failed without an answer: {other}"),
        }
    }
}

/// Starts nginx in the foreground with `server` as its one server block; `None` when it
/// exits (its port was taken) instead of listening.
fn spawn(dir: &Path, server: &str, port: u16) -> Option<Child> {
    let temp = dir.display();
    // Workers run as nobody when started by root: no response is buffered to disk, so the
    // private temporary folder never needs to be theirs.
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {temp}/nginx.pid;\nerror_log {temp}/error.log \
         info;\nevents {{}}\nhttp {{\n    access_log off;\n    proxy_max_temp_file_size 0;\n    \
         client_body_temp_path {temp}/body;\n    proxy_temp_path {temp}/proxy;\n    \
         fastcgi_temp_path {temp}/fastcgi;\n    uwsgi_temp_path {temp}/uwsgi;\n    \
         scgi_temp_path {temp}/scgi;\n{server}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let mut child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            assert!(
                log.contains("Address already in use"),
                "nginx exited at start-up:\n{log}"
            );
            return None;
        }
        if super::process::listens_on(child.id(), port) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for Nginx {
    /// SIGTERM, nginx's fast shutdown, so the master stops its workers too (SIGKILL would
    /// leave them running); SIGKILL only if it has not exited after five seconds.
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
