//! Starts the real server on 127.0.0.1:0 and talks to it the way browsers do: TLS that checks
//! the server's certificate (trusting only the one dialtone generated), HTTP/1.1 or HTTP/2,
//! and WebSockets.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod coturn;
pub mod netns;
pub mod pebble;
pub mod process;
pub mod proxy;
pub mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dialtone::config::Config;
use dialtone::http::App;
use dialtone::{server, tls};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{WebSocketStream, client_async};

/// A loopback port that was free a moment ago, for a server that cannot be given port 0.
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// Whether `program` runs here (asked with `probe`, e.g. `--version`). A test that needs it is
/// skipped without it, except under `CI=true`, where CI must have installed `package`.
pub fn have(program: &str, probe: &str, package: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg(probe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        skip(&format!(
            "{program} is not installed (apt-get install {package})"
        ));
    }
    found
}

/// Says that the running test is skipped, and why, where a person sees it: on the terminal
/// even when the test passes (libtest captures only `print!`), and in
/// `target/skipped-tests.txt`, which `scripts/test` lists at the end. Under `CI=true` a
/// missing tool is a failure instead: CI installs everything.
pub fn skip(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} cannot run under CI: {why}"
    );
    let line = format!("SKIPPED {}: {test}: {why}\n", env!("CARGO_CRATE_NAME"));
    let _ = std::io::stderr().write_all(line.as_bytes());
    let list = concat!(env!("CARGO_MANIFEST_DIR"), "/target/skipped-tests.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(list)
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// A CA of the test's own and a certificate it signed, for a server the tests run (a JWKS
/// endpoint, Pebble) that dialtone is told to trust through `SSL_CERT_FILE`.
pub struct PrivateCa {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub leaf_pem: String,
    pub leaf_der: CertificateDer<'static>,
    pub key_pem: String,
}

impl PrivateCa {
    /// A CA, and a certificate from it for `name`.
    pub fn new(name: &str) -> PrivateCa {
        PrivateCa::for_names(&[name])
    }

    /// A CA, and a certificate from it for `names`.
    pub fn for_names(names: &[&str]) -> PrivateCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dialtone test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let leaf = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        PrivateCa {
            ca_pem: ca_cert.pem(),
            ca_der: CertificateDer::from(ca_cert.der().to_vec()),
            leaf_pem: leaf.pem(),
            leaf_der: leaf.der().clone(),
            key_pem: leaf_key.serialize_pem(),
        }
    }
}

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The certificate the server presents; `None` with TLS off.
    pub cert: Option<CertificateDer<'static>>,
    pub app: App,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The repository's own `public/`.
pub fn repo_public() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("public")
}

impl TestServer {
    /// The server with its default settings, the repository's page, and a certificate
    /// generated into a fresh temporary `certs/`.
    pub async fn start() -> TestServer {
        TestServer::start_with("", &repo_public()).await
    }

    /// `extra` is appended to the config file (keys other than listen and public_dir).
    pub async fn start_with(extra: &str, public: &Path) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = format!(
            "listen = \"127.0.0.1:0\"\npublic_dir = {:?}\n{extra}\n",
            public.display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        let mut config = Config::load(&path, true).unwrap();
        // The grace period is off unless a test sets it: a test socket that drops then tells
        // its partner at once, which is what most tests are about (tests/grace.rs sets it).
        if !extra.contains("resume_grace_secs") {
            config.websocket.resume_grace_secs = 0;
        }
        TestServer::start_config(config, dir).await
    }

    pub async fn start_config(config: Config, dir: tempfile::TempDir) -> TestServer {
        let tls = tls::setup(&config.tls).unwrap();
        let app = App::start(&config).await.unwrap();
        let listener = server::bind(&config.listen).await.unwrap().remove(0);
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let cert = tls.as_ref().map(|tls| tls.certificate.clone());
        let task = tokio::spawn(server::run(
            listener,
            tls.map(|tls| tls.certificates()),
            app.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            cert,
            app,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server the way SIGTERM does, and waits until `run` has returned.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stopped within its drain deadline")
                .unwrap();
        }
    }

    /// A connection to the server: TLS with the given ALPN protocols, verifying the
    /// certificate for the name `localhost`, or plain TCP when TLS is off.
    pub async fn connect(&self, alpn: &[&[u8]]) -> Box<dyn Io> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let Some(cert) = &self.cert else {
            return Box::new(tcp);
        };
        let connector = connector(cert, alpn);
        let name = ServerName::try_from("localhost").unwrap();
        Box::new(connector.connect(name, tcp).await.unwrap())
    }

    /// GET over HTTP/1.1.
    pub async fn get(&self, path: &str) -> Reply {
        self.request(Request::get(path), &[]).await
    }

    /// Sends a request with extra headers over HTTP/1.1.
    pub async fn request(
        &self,
        builder: hyper::http::request::Builder,
        headers: &[(&str, &str)],
    ) -> Reply {
        let builder = builder.header("host", format!("localhost:{}", self.addr.port()));
        http1(self.connect(&[b"http/1.1"]).await, builder, headers).await
    }

    /// Opens a WebSocket at `path` (`/` or `/ws`).
    pub async fn ws_at(&self, path: &str) -> Ws {
        self.ws_with(path, &[]).await
    }

    pub async fn ws(&self) -> Ws {
        self.ws_at("/ws").await
    }

    pub async fn ws_with(&self, path: &str, headers: &[(&str, &str)]) -> Ws {
        Ws::spawn(self.raw_ws_with(path, headers).await)
    }

    /// Tries to open a WebSocket; a refused upgrade gives its HTTP status.
    pub async fn try_ws_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, StatusCode> {
        let request = self.ws_request(path, headers);
        let io = self.connect(&[b"http/1.1"]).await;
        match client_async(request, io).await {
            Ok((stream, _)) => Ok(Ws::spawn(stream)),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
            Err(other) => panic!("the upgrade failed without an HTTP answer: {other}"),
        }
    }

    fn ws_request(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let scheme = if self.cert.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://localhost:{}{path}", self.addr.port());
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            let name = hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        request
    }

    /// A WebSocket that only reads when the test polls it, e.g. to play a client that has
    /// stopped reading.
    pub async fn raw_ws_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> WebSocketStream<Box<dyn Io>> {
        let request = self.ws_request(path, headers);
        let io = self.connect(&[b"http/1.1"]).await;
        let (stream, _) = client_async(request, io).await.unwrap();
        stream
    }

    /// Waits until the server counts at most `count` open WebSockets; panics after `limit`.
    pub async fn connections_fall_to(&self, count: usize, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.app.connections() > count {
            assert!(
                std::time::Instant::now() < deadline,
                "{} connections after {limit:?}, expected {count}",
                self.app.connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Opens a WebSocket and logs in as `name`, returning the login reply.
    pub async fn user(&self, name: &str) -> (Ws, Value) {
        let mut ws = self.ws().await;
        let reply = ws.login(name).await;
        assert_eq!(reply["success"], true, "login as {name}: {reply}");
        (ws, reply)
    }
}

/// The service a protocol test talks to: one server, or two instances on one real Redis with
/// users handed to them in turn (alice on the first, bob on the second, carol on the first…),
/// so that every exchange between two users crosses instances.
pub struct Service {
    pub servers: Vec<TestServer>,
    turn: std::sync::atomic::AtomicUsize,
    _redis: Option<redis::Redis>,
}

impl Service {
    pub async fn single() -> Option<Service> {
        Service::single_with("").await
    }

    /// One server, `extra` appended to its config (tables other than `[cluster]`).
    pub async fn single_with(extra: &str) -> Option<Service> {
        Some(Service {
            servers: vec![TestServer::start_with(extra, &repo_public()).await],
            turn: Default::default(),
            _redis: None,
        })
    }

    /// `None` (the test is skipped) without redis-server, except under CI.
    pub async fn split() -> Option<Service> {
        Service::split_with("").await
    }

    /// Two instances, `extra` appended to each one's config before its `[cluster]` table.
    pub async fn split_with(extra: &str) -> Option<Service> {
        let redis = redis::Redis::start()?;
        let mut servers = Vec::new();
        for id in ["a", "b"] {
            let extra = format!(
                "{extra}\n[cluster]\nredis_url = {:?}\ninstance_id = {id:?}\nheartbeat_ms = 200\nlease_ms = 1000\n",
                redis.url()
            );
            servers.push(TestServer::start_with(&extra, &repo_public()).await);
        }
        Some(Service {
            servers,
            turn: Default::default(),
            _redis: Some(redis),
        })
    }

    /// The server the next socket goes to.
    fn next(&self) -> &TestServer {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.servers[turn % self.servers.len()]
    }

    pub async fn ws(&self) -> Ws {
        self.next().ws().await
    }

    pub async fn user(&self, name: &str) -> (Ws, Value) {
        self.next().user(name).await
    }

    /// A socket on `/ws` with extra request headers (`X-Forwarded-For` behind a proxy).
    pub async fn ws_with(&self, headers: &[(&str, &str)]) -> Ws {
        self.next().ws_with("/ws", headers).await
    }

    /// Ringing and active calls in the whole service (each counted by its caller's instance).
    pub fn calls(&self) -> (usize, usize) {
        self.servers.iter().fold((0, 0), |(r, a), server| {
            let (ringing, active) = server.app.registry().calls();
            (r + ringing, a + active)
        })
    }

    pub fn users(&self) -> usize {
        self.servers.iter().map(|s| s.app.registry().users()).sum()
    }

    pub fn addresses(&self) -> usize {
        self.servers.iter().map(|s| s.app.addresses()).sum()
    }

    pub async fn connections_fall_to(&self, count: usize, limit: Duration) {
        assert_eq!(count, 0, "per server, only zero adds up");
        for server in &self.servers {
            server.connections_fall_to(0, limit).await;
        }
    }

    pub async fn stop(self) {
        for server in self.servers {
            server.stop().await;
        }
    }
}

/// Runs a protocol test against one server and against two instances on Redis; with
/// `config = EXTRA;` first, each server's config gets `EXTRA` appended.
#[macro_export]
macro_rules! on_one_server_and_split {
    (config = $extra:expr; $($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn one_server() {
                super::$test(super::common::Service::single_with($extra).await.unwrap()).await;
            }
            #[tokio::test]
            async fn split_over_two_instances() {
                if let Some(service) = super::common::Service::split_with($extra).await {
                    super::$test(service).await;
                }
            }
        }
    )*};
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn one_server() {
                super::$test(super::common::Service::single().await.unwrap()).await;
            }
            #[tokio::test]
            async fn split_over_two_instances() {
                if let Some(service) = super::common::Service::split().await {
                    super::$test(service).await;
                }
            }
        }
    )*};
}

/// A WebSocket on `/ws` to a dialtone at `addr` with TLS off, such as a binary a test started.
pub async fn plain_ws(addr: SocketAddr) -> Ws {
    let tcp: Box<dyn Io> = Box::new(TcpStream::connect(addr).await.unwrap());
    let (stream, _) = client_async(format!("ws://{addr}/ws"), tcp).await.unwrap();
    Ws::spawn(stream)
}

/// GET over plain HTTP/1.1 from a dialtone at `addr` with TLS off.
pub async fn plain_get(addr: SocketAddr, path: &str) -> Reply {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let request = Request::get(path).header("host", "localhost");
    http1(tcp, request, &[]).await
}

/// Reads one counter or gauge line from a /metrics exposition.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// One TURN message read off a stream (TCP or TLS), raw: a STUN message (its 20-byte header,
/// then the length it gives) or ChannelData (its 4-byte header, then the length padded to 4).
/// `None` when the stream closes, or stays silent for `patience` (the rest of a message that
/// has begun gets [`PATIENCE`]).
#[allow(dead_code)]
pub async fn read_message<I: AsyncRead + Unpin>(io: &mut I, patience: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut raw = vec![0u8; 4];
    tokio::time::timeout(patience, io.read_exact(&mut raw))
        .await
        .ok()?
        .ok()?;
    let length = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
    let whole = if raw[0] & 0xC0 == 0x40 {
        4 + length.next_multiple_of(4)
    } else {
        20 + length
    };
    raw.resize(whole, 0);
    tokio::time::timeout(PATIENCE, io.read_exact(&mut raw[4..]))
        .await
        .ok()?
        .ok()?;
    Some(raw)
}

/// Sends one request with extra headers over HTTP/1.1 on `io`.
pub async fn http1(
    io: impl Io + 'static,
    mut builder: hyper::http::request::Builder,
    headers: &[(&str, &str)],
) -> Reply {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = sender
        .send_request(builder.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    Reply::read(response).await
}

/// A WebSocket over TLS to a binary a test started, read only when the test says so.
pub type TlsWs = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// TLS to 127.0.0.1:`port` through `connector`, verifying the name `localhost`.
pub async fn tls_to(
    port: u16,
    connector: tokio_rustls::TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// A WebSocket on `/ws` over [`tls_to`].
pub async fn wss_to(port: u16, connector: tokio_rustls::TlsConnector) -> TlsWs {
    let tls = tls_to(port, connector).await;
    let url = format!("wss://localhost:{port}/ws");
    client_async(url, tls).await.unwrap().0
}

pub async fn send_json(ws: &mut TlsWs, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

/// The next text message as JSON, skipping other frames; panics after [`PATIENCE`].
pub async fn next_json(ws: &mut TlsWs) -> Value {
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a message within the patience")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

pub fn connector(cert: &CertificateDer<'static>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn read(response: hyper::Response<hyper::body::Incoming>) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

/// A WebSocket client that behaves like a browser: a task owns the socket and reads it all the
/// time (so Pings and the server's Close are answered at once), handing frames to the test.
pub struct Ws {
    outgoing: mpsc::Sender<Message>,
    incoming: mpsc::UnboundedReceiver<Frame>,
}

/// What the reading task hands over.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Ping,
    Close(Option<CloseFrame>),
    /// The connection ended without a Close frame, or with an error.
    Gone,
}

impl Ws {
    /// Reading and writing run in tasks of their own, as in a browser: a write blocked on a
    /// server that is not reading never stops the reading.
    pub fn spawn(stream: WebSocketStream<Box<dyn Io>>) -> Ws {
        // Capacity 1: `send` waits while the socket is not taking data, like a real sender.
        let (outgoing, mut to_send) = mpsc::channel::<Message>(1);
        let (deliver, incoming) = mpsc::unbounded_channel();
        let (mut sink, mut source) = stream.split();
        let (stop_reading, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            while let Some(message) = to_send.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            // The test dropped its handle (a closed tab): drop the connection.
            let _ = stop_reading.send(());
        });
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = source.next() => frame,
                    _ = &mut stopped => break,
                    () = deliver.closed() => break,
                };
                let frame = match frame {
                    Some(Ok(Message::Text(text))) => Frame::Text(text.to_string()),
                    Some(Ok(Message::Ping(_))) => Frame::Ping,
                    Some(Ok(Message::Close(frame))) => Frame::Close(frame),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        let _ = deliver.send(Frame::Gone);
                        break;
                    }
                };
                let _ = deliver.send(frame);
            }
        });
        Ws { outgoing, incoming }
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(Message::text(text)).await;
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.send_frame(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await;
    }

    /// Sends any frame, including raw ones a browser would never send.
    pub async fn send_frame(&mut self, frame: Message) {
        // After the server closed the socket, what is sent is lost, as in a browser.
        let _ = self.outgoing.send(frame).await;
    }

    /// The next frame of any kind; panics after [`PATIENCE`].
    pub async fn next_frame(&mut self) -> Frame {
        self.next_frame_by(tokio::time::Instant::now() + PATIENCE)
            .await
    }

    /// The next frame of any kind; panics if none has come by `deadline`.
    pub async fn next_frame_by(&mut self, deadline: tokio::time::Instant) -> Frame {
        tokio::time::timeout_at(deadline, self.incoming.recv())
            .await
            .expect("a frame within the patience")
            .unwrap_or(Frame::Gone)
    }

    /// The next JSON message, skipping Pings; panics after [`PATIENCE`] in all, however many
    /// Pings come meanwhile.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(PATIENCE).await
    }

    /// The next JSON message, skipping Pings; panics after `limit` in all.
    pub async fn recv_within(&mut self, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.next_frame_by(deadline).await {
                Frame::Text(text) => return serde_json::from_str(&text).unwrap(),
                Frame::Ping => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Asserts that no text message arrives within `ms` milliseconds.
    pub async fn quiet(&mut self, ms: u64) {
        let deadline = tokio::time::sleep(Duration::from_millis(ms));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                frame = self.incoming.recv() => match frame {
                    Some(Frame::Ping) => continue,
                    other => panic!("unexpected {other:?}"),
                },
            }
        }
    }

    /// Waits for the server's Close frame and returns it; panics on a text message, or after
    /// [`PATIENCE`] in all.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        self.closed_by(tokio::time::Instant::now() + PATIENCE).await
    }

    /// Waits for the server's Close frame until `deadline`, skipping Pings; panics on a text
    /// message, or if the socket is still open at `deadline`.
    pub async fn closed_by(&mut self, deadline: tokio::time::Instant) -> Option<CloseFrame> {
        loop {
            match self.next_frame_by(deadline).await {
                Frame::Close(frame) => return frame,
                Frame::Gone => return None,
                Frame::Ping => continue,
                Frame::Text(text) => panic!("expected a close, got {text}"),
            }
        }
    }

    /// Logs in with a reconnect token from an earlier login reply.
    pub async fn login_with_token(&mut self, name: &str, token: &Value) -> Value {
        self.send(serde_json::json!({"type": "login", "username": name, "token": token}))
            .await;
        self.recv().await
    }

    pub async fn login(&mut self, name: &str) -> Value {
        self.send(serde_json::json!({"type": "login", "username": name}))
            .await;
        self.recv().await
    }

    /// Sends `message` and returns the error reply's code.
    pub async fn error_code(&mut self, message: Value) -> String {
        self.send(message).await;
        let reply = self.recv().await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
        reply["code"].as_str().unwrap().to_owned()
    }
}
