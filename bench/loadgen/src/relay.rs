//! The relay section: media-sized packets through TURN allocations, dialtone's built-in relay
//! beside coturn's `turnserver` (Debian's package), alternated in one run, with the clients
//! reaching the relay over UDP, TCP and TLS in turn (peers are reached over UDP either way).
//!
//! A TURN relay refuses loopback peers (dialtone always, coturn by default), so the servers
//! run in a network namespace the benchmark makes, reached over one veth pair:
//!
//! ```text
//!   this process 10.78.0.2 ── veth ── 10.78.0.1 relay namespace (dialtone or turnserver)
//! ```
//!
//! Each call is two clients, each with an allocation, a permission for the other's relayed
//! address and a channel bound to it: what two browsers that both relay do. A packet goes
//! client → server → (relay to relay, inside the server's namespace) → server → client, so
//! every packet counted here crossed the server twice. Traffic goes to 10.78.0.1 only, and
//! the namespace (with its veth pair) is removed at the end.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE,
    METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, Message, MessageType, Method,
    Setter,
};
use stun::textattrs::TextAttribute;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, Notify, mpsc};
use turn::proto::PROTO_UDP;
use turn::proto::channum::ChannelNumber;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

use crate::measure::median_spread;
use crate::{cpu_of, micros};

/// The servers' address, inside the namespace.
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// This process's end of the veth pair.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const TURN_PORT: u16 = 3478;
/// Where each server takes TURN over TLS: dialtone on the page's port, coturn on its own.
const DIALTONE_TLS_PORT: u16 = 8443;
const COTURN_TLS_PORT: u16 = 5349;
const SECRET: &str = "dialtone-bench-relay";
const REALM: &str = "dialtone";
/// A video RTP packet's size: what a browser sends at 1.5 Mbit/s.
const PAYLOAD: usize = 1200;
/// One call's video, each way.
const CALL_BITS_PER_SECOND: f64 = 1.5e6;
const FRAMES_PER_SECOND: f64 = 30.0;
/// Packets each stream may have in flight at the maximum rate; a stream whose packets stop
/// arriving for `STALL` counts the missing ones as lost and goes on.
const WINDOW: u64 = 8;
const STALL: Duration = Duration::from_millis(20);
/// The one channel each client binds, to its partner's relayed address.
const CHANNEL: u16 = 0x4000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Relay {
    Dialtone,
    /// Another dialtone binary (`--relay-only --compare PATH`): before a change.
    Before,
    Coturn,
}

impl Relay {
    pub fn label(self) -> &'static str {
        match self {
            Relay::Dialtone => "dialtone",
            Relay::Before => "before",
            Relay::Coturn => "coturn",
        }
    }
}

/// How the clients reach the relay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wire {
    Udp,
    Tcp,
    Tls,
}

impl Wire {
    pub const ALL: [Wire; 3] = [Wire::Udp, Wire::Tcp, Wire::Tls];

    pub fn label(self) -> &'static str {
        match self {
            Wire::Udp => "UDP",
            Wire::Tcp => "TCP",
            Wire::Tls => "TLS",
        }
    }
}

/// A connected stream to the relay, TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One client's way to the relay: a connected UDP socket, or a stream whose reader task cuts
/// what arrives into messages (RFC 8656 §12.5 framing).
#[derive(Clone)]
enum Link {
    Udp(Arc<UdpSocket>),
    Stream {
        writer: Arc<Mutex<tokio::io::WriteHalf<Box<dyn Io>>>>,
        incoming: Arc<Mutex<mpsc::UnboundedReceiver<Vec<u8>>>>,
    },
}

impl Link {
    async fn open(
        wire: Wire,
        relay: Relay,
        tls: &tokio_rustls::TlsConnector,
    ) -> anyhow::Result<Link> {
        let port = match (wire, relay) {
            (Wire::Tls, Relay::Dialtone | Relay::Before) => DIALTONE_TLS_PORT,
            (Wire::Tls, Relay::Coturn) => COTURN_TLS_PORT,
            _ => TURN_PORT,
        };
        let server = SocketAddr::from((SERVER_IP, port));
        if wire == Wire::Udp {
            let socket = UdpSocket::bind((CLIENT_IP, 0)).await?;
            socket.connect(server).await?;
            return Ok(Link::Udp(Arc::new(socket)));
        }
        let tcp = TcpStream::connect(server).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = if wire == Wire::Tls {
            let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from(SERVER_IP));
            Box::new(tls.connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };
        let (mut reader, writer) = tokio::io::split(io);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let mut at = 0;
                while buf.len() - at >= 4 {
                    let head = &buf[at..];
                    let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
                    let total = match head[0] >> 6 {
                        0 => 20 + length,
                        1 => 4 + length.next_multiple_of(4),
                        _ => return,
                    };
                    if head.len() < total {
                        break;
                    }
                    if tx.send(head[..total].to_vec()).is_err() {
                        return;
                    }
                    at += total;
                }
                buf.drain(..at);
            }
        });
        Ok(Link::Stream {
            writer: Arc::new(Mutex::new(writer)),
            incoming: Arc::new(Mutex::new(rx)),
        })
    }

    async fn send(&self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Udp(socket) => socket.send(data).await.map(|_| ()),
            Link::Stream { writer, .. } => writer.lock().await.write_all(data).await,
        }
    }

    /// The next message from the relay, or `None` after `patience`.
    async fn recv(&self, patience: Duration) -> Option<Vec<u8>> {
        match self {
            Link::Udp(socket) => {
                let mut buf = vec![0u8; 2048];
                let n = tokio::time::timeout(patience, socket.recv(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                buf.truncate(n);
                Some(buf)
            }
            Link::Stream { incoming, .. } => {
                tokio::time::timeout(patience, incoming.lock().await.recv())
                    .await
                    .ok()?
            }
        }
    }
}

/// A TLS client that trusts the benchmark's certificate (made at the section's start).
fn connector(cert: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let pem = std::fs::read(cert)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(der?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(dialtone::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One round's figures for one server.
#[derive(Clone, Copy, Default, Debug)]
pub struct RelayRun {
    /// Packets delivered end to end per second, at the maximum rate.
    pub max_pps: f64,
    /// Server CPU per delivered packet at the maximum rate.
    pub cpu_per_packet: Duration,
    /// This process's (the generator's) CPU per delivered packet at the maximum rate.
    pub generator_cpu_per_packet: Duration,
    /// At the fixed load: packets lost of those sent, as a fraction.
    pub fixed_loss: f64,
    pub fixed_sent: u64,
    pub fixed_received: u64,
    /// Server CPU per delivered packet at the fixed load.
    pub fixed_cpu_per_packet: Duration,
    pub fixed_p50: Duration,
    pub fixed_p99: Duration,
}

/// The section's plan: calls, windows and rounds.
#[derive(Clone, Copy)]
pub struct RelayPlan {
    pub calls: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub fixed_measure: Duration,
    pub rounds: usize,
}

/// The network namespace the servers run in; removed (with its veth pair) when dropped.
struct Namespace {
    name: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running ip (apt-get install iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Namespace {
    fn create() -> anyhow::Result<Namespace> {
        let pid = std::process::id();
        let namespace = Namespace {
            name: format!("dtbench{pid}"),
        };
        // A run killed before its clean-up leaves its server, and with it its namespace and
        // the outer end of its veth pair at CLIENT_IP: two routes to the servers' subnet.
        let addresses = std::process::Command::new("ip")
            .args(["-o", "addr", "show"])
            .output()
            .context("running ip (apt-get install iproute2)")?;
        if String::from_utf8_lossy(&addresses.stdout).contains(&format!(" {CLIENT_IP}/")) {
            bail!(
                "{CLIENT_IP} is already on an interface here, left by an earlier run that was \
                 killed: stop its relay (pkill -f relay-bench.toml; pkill turnserver) and try again"
            );
        }
        let (outer, inner) = (format!("dtbo{pid}"), format!("dtbi{pid}"));
        ip(&["netns", "add", &namespace.name]).context("making a network namespace (root)")?;
        let server = format!("{SERVER_IP}/24");
        let client = format!("{CLIENT_IP}/24");
        let ns = namespace.name.as_str();
        for args in [
            vec!["-n", ns, "link", "set", "lo", "up"],
            vec![
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ],
            vec!["link", "set", &inner, "netns", ns],
            vec!["-n", ns, "addr", "add", &server, "dev", &inner],
            vec!["-n", ns, "link", "set", &inner, "up"],
            vec!["addr", "add", &client, "dev", &outer],
            vec!["link", "set", &outer, "up"],
        ] {
            ip(&args)?;
        }
        Ok(namespace)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth inside it, and with it the outer end.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A relay server in the namespace, stopped (SIGKILL) when dropped.
struct Server {
    child: Child,
    pid: u32,
}

impl Server {
    /// `cert` and `key`: the certificate both serve TLS with.
    async fn start(
        relay: Relay,
        ns: &Namespace,
        work: &Path,
        binaries: (&Path, Option<&Path>),
        (cert, key): (&Path, &Path),
    ) -> anyhow::Result<Server> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &ns.name]);
        match relay {
            Relay::Dialtone | Relay::Before => {
                let binary = match (relay, binaries.1) {
                    (Relay::Before, Some(before)) => before.to_path_buf(),
                    _ => binaries.0.join("target/release/dialtone"),
                };
                let config = work.join("relay-bench.toml");
                std::fs::write(
                    &config,
                    format!(
                        "listen = \"{SERVER_IP}:{DIALTONE_TLS_PORT}\"\nice_servers = []\n[tls]\n\
                         mode = \"files\"\ncert = {:?}\nkey = {:?}\n\
                         [limits]\nmax_connections_per_ip = 1000\n\
                         [turn_server]\nenabled = true\nlisten = \"{SERVER_IP}:{TURN_PORT}\"\n\
                         relay_ports = \"40000-40999\"\nsecret = \"{SECRET}\"\nrealm = \"{REALM}\"\n",
                        cert.display().to_string(),
                        key.display().to_string(),
                    ),
                )?;
                command
                    .arg(binary)
                    .arg("--config")
                    .arg(config)
                    .env_remove("RUST_LOG")
                    .env_remove("PORT");
            }
            Relay::Coturn => {
                command
                    .arg("turnserver")
                    .arg("-n")
                    .arg(format!("--listening-ip={SERVER_IP}"))
                    .arg(format!("--relay-ip={SERVER_IP}"))
                    .arg(format!("--listening-port={TURN_PORT}"))
                    .arg(format!("--tls-listening-port={COTURN_TLS_PORT}"))
                    .arg(format!("--cert={}", cert.display()))
                    .arg(format!("--pkey={}", key.display()))
                    .args(["--min-port=40000", "--max-port=40999"])
                    .arg("--use-auth-secret")
                    .arg(format!("--static-auth-secret={SECRET}"))
                    .arg(format!("--realm={REALM}"))
                    .args(["--no-dtls", "--no-tcp-relay", "--no-cli"])
                    .arg(format!("--userdb={}", work.join("turndb").display()))
                    .arg(format!("--pidfile={}", work.join("turn.pid").display()))
                    .arg(format!("--log-file={}", work.join("turn.log").display()))
                    .arg("--simple-log");
            }
        }
        // `ip netns exec` execs the server: the child's pid is the server's.
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (coturn: apt-get install coturn)",
                    relay.label()
                )
            })?;
        let pid = child.id().context("the relay has a pid")?;
        let socket = UdpSocket::bind((CLIENT_IP, 0)).await?;
        socket.connect((SERVER_IP, TURN_PORT)).await?;
        let link = Link::Udp(Arc::new(socket));
        let deadline = Instant::now() + Duration::from_secs(15);
        // Ready when it answers a STUN Binding request.
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                bail!("{} exited at start", relay.label());
            }
            let request = request(METHOD_BINDING, vec![])?;
            if exchange(&link, &request, Duration::from_millis(100))
                .await
                .is_some()
            {
                return Ok(Server { child, pid });
            }
        }
        let _ = child.kill().await;
        bail!("{} did not answer STUN within 15 s", relay.label())
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

fn request(method: Method, attributes: Vec<Box<dyn Setter>>) -> anyhow::Result<Message> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(method, CLASS_REQUEST)),
    ];
    setters.extend(attributes);
    let mut message = Message::new();
    message.build(&setters)?;
    Ok(message)
}

/// Sends `message` and waits `patience` for the answer to its transaction.
async fn exchange(link: &Link, message: &Message, patience: Duration) -> Option<Message> {
    link.send(&message.raw).await.ok()?;
    let deadline = Instant::now() + patience;
    loop {
        let raw = link
            .recv(deadline.checked_duration_since(Instant::now())?)
            .await?;
        let mut reply = Message {
            raw,
            ..Default::default()
        };
        if reply.decode().is_ok() && reply.transaction_id == message.transaction_id {
            return Some(reply);
        }
    }
}

/// Sends a request built by `build` until it is answered: the server may drop requests (a
/// rate limit, or dialtone's guard while it fetches a nonce), as it may on any network.
async fn transact(
    link: &Link,
    build: impl Fn() -> anyhow::Result<Message>,
) -> anyhow::Result<Message> {
    for _ in 0..40 {
        let message = build()?;
        if let Some(reply) = exchange(link, &message, Duration::from_millis(250)).await {
            return Ok(reply);
        }
    }
    bail!("no answer from the relay in 10 s")
}

fn error_code(message: &Message) -> u16 {
    let mut code = ErrorCodeAttribute::default();
    if code.get_from(message).is_ok() {
        code.code.0
    } else {
        0
    }
}

/// One client with an allocation: its socket, its relayed address, and what it needs to
/// sign further requests.
struct Client {
    link: Link,
    relayed: SocketAddr,
    username: String,
    password: String,
    nonce: String,
}

impl Client {
    async fn allocate(link: Link, name: &str) -> anyhow::Result<Client> {
        let credentials = dialtone::turn::Credentials::new(SECRET.as_bytes(), REALM, 3600);
        let (username, password) = credentials.mint(name, SystemTime::now());
        let transport = || -> Box<dyn Setter> {
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })
        };
        let challenge = transact(&link, || request(METHOD_ALLOCATE, vec![transport()])).await?;
        if challenge.typ.class != CLASS_ERROR_RESPONSE || error_code(&challenge) != 401 {
            bail!("expected a 401 challenge, got {challenge}");
        }
        let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)?.text;
        let mut client = Client {
            link,
            relayed: SocketAddr::from(([0, 0, 0, 0], 0)),
            username,
            password,
            nonce,
        };
        let reply = client.signed(METHOD_ALLOCATE, || vec![transport()]).await?;
        let mut relayed = RelayedAddress::default();
        relayed.get_from(&reply)?;
        client.relayed = SocketAddr::new(relayed.ip, relayed.port);
        Ok(client)
    }

    /// A request with the long-term credential; a 438 (stale nonce) is retried with the new one.
    async fn signed(
        &mut self,
        method: Method,
        attributes: impl Fn() -> Vec<Box<dyn Setter>>,
    ) -> anyhow::Result<Message> {
        for _ in 0..3 {
            let build = || {
                let mut all = attributes();
                all.push(Box::new(TextAttribute::new(
                    ATTR_USERNAME,
                    self.username.clone(),
                )));
                all.push(Box::new(TextAttribute::new(ATTR_REALM, REALM.to_owned())));
                all.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
                all.push(Box::new(MessageIntegrity::new_long_term_integrity(
                    self.username.clone(),
                    REALM.to_owned(),
                    self.password.clone(),
                )));
                request(method, all)
            };
            let reply = transact(&self.link, build).await?;
            if reply.typ.class == CLASS_SUCCESS_RESPONSE {
                return Ok(reply);
            }
            if error_code(&reply) == 438 {
                self.nonce = TextAttribute::get_from_as(&reply, ATTR_NONCE)?.text;
                continue;
            }
            bail!("{method} refused with {}: {reply}", error_code(&reply));
        }
        bail!("{method}: the nonce kept going stale")
    }

    /// Permission for `peer`, and the channel bound to it.
    async fn bind(&mut self, peer: SocketAddr) -> anyhow::Result<()> {
        let peer_attr = move || -> Box<dyn Setter> {
            Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            })
        };
        self.signed(METHOD_CREATE_PERMISSION, || vec![peer_attr()])
            .await?;
        self.signed(METHOD_CHANNEL_BIND, || {
            vec![Box::new(ChannelNumber(CHANNEL)), peer_attr()]
        })
        .await?;
        Ok(())
    }
}

/// The calls: two clients each, both relaying, each bound to the other's relayed address.
async fn calls(count: usize, way: Way<'_>) -> anyhow::Result<Vec<[Link; 2]>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let link = || Link::open(way.wire, way.relay, way.tls);
        let mut a = Client::allocate(link().await?, &format!("a{i}")).await?;
        let mut b = Client::allocate(link().await?, &format!("b{i}")).await?;
        let (to_b, to_a) = (b.relayed, a.relayed);
        a.bind(to_b).await?;
        b.bind(to_a).await?;
        out.push([a.link, b.link]);
    }
    Ok(out)
}

/// Which server, over what, and the TLS client for it.
#[derive(Clone, Copy)]
struct Way<'a> {
    relay: Relay,
    wire: Wire,
    tls: &'a tokio_rustls::TlsConnector,
}

/// Microseconds since `origin`, the clock every stamp is read on.
fn since(origin: Instant) -> u64 {
    origin.elapsed().as_micros() as u64
}

/// A ChannelData datagram: channel, length, then the payload, which starts with the send
/// stamp (µs since the run's origin).
fn datagram(stamp: u64) -> Vec<u8> {
    let mut data = vec![0u8; 4 + PAYLOAD];
    data[..2].copy_from_slice(&CHANNEL.to_be_bytes());
    data[2..4].copy_from_slice(&(PAYLOAD as u16).to_be_bytes());
    data[4..12].copy_from_slice(&stamp.to_be_bytes());
    data
}

fn stamp_of(data: &[u8]) -> Option<u64> {
    if data.len() < 12 || u16::from_be_bytes([data[0], data[1]]) != CHANNEL {
        return None;
    }
    Some(u64::from_be_bytes(data[4..12].try_into().ok()?))
}

/// What one receiving socket counts.
#[derive(Default)]
struct Inbox {
    received: AtomicU64,
    more: Notify,
}

/// Receives on `socket` until `stop`: counts every packet, and keeps the one-way latency
/// (µs) of those stamped inside `[from, to)` µs.
fn receiver(
    link: Link,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
    origin: Instant,
    window: Arc<(AtomicU64, AtomicU64)>,
) -> tokio::task::JoinHandle<Vec<u32>> {
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Some(data) = link.recv(Duration::from_millis(50)).await else {
                continue;
            };
            let Some(stamp) = stamp_of(&data) else {
                continue;
            };
            let now = since(origin);
            let (from, to) = (
                window.0.load(Ordering::Relaxed),
                window.1.load(Ordering::Relaxed),
            );
            if stamp >= from && stamp < to {
                latencies.push(now.saturating_sub(stamp).min(u64::from(u32::MAX)) as u32);
            }
            inbox.received.fetch_add(1, Ordering::Relaxed);
            inbox.more.notify_one();
        }
        latencies
    })
}

/// Everything a load needs: each call's two sockets, each socket's receiver.
struct Load {
    calls: Vec<[Link; 2]>,
    /// Per call, per side: what that side receives.
    inboxes: Vec<[Arc<Inbox>; 2]>,
    receivers: Vec<tokio::task::JoinHandle<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    origin: Instant,
    /// The stamps, in µs since `origin`, whose packets are measured: `[from, to)`.
    window: Arc<(AtomicU64, AtomicU64)>,
}

impl Load {
    async fn new(count: usize, way: Way<'_>) -> anyhow::Result<Load> {
        let calls = calls(count, way).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let window = Arc::new((AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)));
        let mut inboxes = Vec::new();
        let mut receivers = Vec::new();
        for call in &calls {
            let pair = [Arc::new(Inbox::default()), Arc::new(Inbox::default())];
            for side in 0..2 {
                receivers.push(receiver(
                    call[side].clone(),
                    pair[side].clone(),
                    stop.clone(),
                    origin,
                    window.clone(),
                ));
            }
            inboxes.push(pair);
        }
        Ok(Load {
            calls,
            inboxes,
            receivers,
            stop,
            origin,
            window,
        })
    }

    fn delivered(&self) -> u64 {
        self.inboxes
            .iter()
            .flatten()
            .map(|inbox| inbox.received.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops the receivers; the latencies they kept, sorted.
    async fn finish(self) -> Vec<u32> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for receiver in self.receivers {
            all.extend(receiver.await.unwrap_or_default());
        }
        all.sort_unstable();
        all
    }
}

/// Every stream (each side of each call) sends as fast as the server delivers, at most
/// `WINDOW` packets in flight.
async fn max_rate(
    server: &Server,
    plan: RelayPlan,
    way: Way<'_>,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let load = Load::new(plan.calls, way).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (call, inboxes) in load.calls.iter().zip(&load.inboxes) {
        for side in 0..2 {
            let link = call[side].clone();
            // What this side sends, the other side receives.
            let inbox = inboxes[1 - side].clone();
            let (stop, origin) = (stop.clone(), load.origin);
            senders.push(tokio::spawn(async move {
                let mut sent = 0u64;
                let mut written_off = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let arrived = inbox.received.load(Ordering::Relaxed) + written_off;
                    if sent.saturating_sub(arrived) >= WINDOW {
                        if tokio::time::timeout(STALL, inbox.more.notified())
                            .await
                            .is_err()
                        {
                            written_off =
                                sent.saturating_sub(inbox.received.load(Ordering::Relaxed));
                        }
                        continue;
                    }
                    if link.send(&datagram(since(origin))).await.is_ok() {
                        sent += 1;
                    }
                }
            }));
        }
    }
    tokio::time::sleep(plan.warmup).await;
    let (cpu0, own0, delivered0, at0) = (
        cpu_of(server.pid),
        cpu_of(std::process::id()),
        load.delivered(),
        Instant::now(),
    );
    tokio::time::sleep(plan.measure).await;
    let (cpu1, own1, delivered1, elapsed) = (
        cpu_of(server.pid),
        cpu_of(std::process::id()),
        load.delivered(),
        at0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        let _ = sender.await;
    }
    load.finish().await;
    let delivered = (delivered1 - delivered0).max(1) as u32;
    Ok((
        f64::from(delivered) / elapsed.as_secs_f64(),
        (cpu1 - cpu0) / delivered,
        own1.saturating_sub(own0) / delivered,
    ))
}

/// The fixed load: each side of each call sends `CALL_BITS_PER_SECOND` of `PAYLOAD`-byte
/// packets as a browser sends video, a frame's packets back to back `FRAMES_PER_SECOND`
/// times a second, the calls' frames spread over the frame interval.
async fn fixed_load(
    server: &Server,
    plan: RelayPlan,
    way: Way<'_>,
    run: &mut RelayRun,
) -> anyhow::Result<()> {
    let load = Load::new(plan.calls, way).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let frame = Duration::from_secs_f64(1.0 / FRAMES_PER_SECOND);
    let bytes_per_frame = CALL_BITS_PER_SECOND / 8.0 / FRAMES_PER_SECOND;
    let streams = 2 * load.calls.len();
    let mut senders = Vec::new();
    for (i, call) in load.calls.iter().enumerate() {
        for (side, link) in call.iter().enumerate() {
            let link = link.clone();
            let (stop, sent, origin, window) =
                (stop.clone(), sent.clone(), load.origin, load.window.clone());
            let offset = frame.mul_f64((2 * i + side) as f64 / streams as f64);
            senders.push(tokio::spawn(async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, frame);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut budget = 0.0;
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    budget += bytes_per_frame;
                    while budget >= PAYLOAD as f64 {
                        budget -= PAYLOAD as f64;
                        let stamp = since(origin);
                        if link.send(&datagram(stamp)).await.is_ok()
                            && stamp >= window.0.load(Ordering::Relaxed)
                            && stamp < window.1.load(Ordering::Relaxed)
                        {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }
    tokio::time::sleep(plan.warmup).await;
    let from = since(load.origin);
    load.window.0.store(from, Ordering::Relaxed);
    load.window.1.store(
        from + plan.fixed_measure.as_micros() as u64,
        Ordering::Relaxed,
    );
    let (cpu0, delivered0) = (cpu_of(server.pid), load.delivered());
    tokio::time::sleep(plan.fixed_measure).await;
    let (cpu1, delivered1) = (cpu_of(server.pid), load.delivered());
    // The last stamped packets still get time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        let _ = sender.await;
    }
    let latencies = load.finish().await;
    let sent = sent.load(Ordering::Relaxed);
    let received = latencies.len() as u64;
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(Duration::ZERO, |&us| Duration::from_micros(u64::from(us)))
    };
    run.fixed_sent = sent;
    run.fixed_received = received;
    run.fixed_loss = if sent == 0 {
        1.0
    } else {
        1.0 - received.min(sent) as f64 / sent as f64
    };
    run.fixed_cpu_per_packet = (cpu1 - cpu0) / (delivered1 - delivered0).max(1) as u32;
    run.fixed_p50 = at(0.5);
    run.fixed_p99 = at(0.99);
    Ok(())
}

/// Why the relay section cannot run here, or `None`.
pub fn unavailable() -> Option<String> {
    let have = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    };
    if !have("turnserver", "--version") {
        return Some("no turnserver here (apt-get install coturn)".into());
    }
    if !have("ip", "-V") {
        return Some("no ip here (apt-get install iproute2)".into());
    }
    None
}

/// The whole section: `plan.rounds` rounds, each dialtone then coturn (alternating which goes
/// first), each scenario on a fresh server.
pub async fn run(
    repo: &Path,
    before: Option<&Path>,
    work: &Path,
    plan: RelayPlan,
) -> anyhow::Result<Vec<(Relay, Wire, RelayRun)>> {
    let ns = Namespace::create()?;
    // One certificate for both servers' TLS, naming the servers' address.
    let (cert, key) = (work.join("relay-cert.pem"), work.join("relay-key.pem"));
    let _ = std::fs::remove_file(&cert);
    let _ = std::fs::remove_file(&key);
    dialtone::tls::auto(&cert, &key, &[SERVER_IP.to_string()])
        .map_err(|err| anyhow::anyhow!("the benchmark's certificate: {err}"))?;
    let tls = connector(&cert)?;
    let mut runs = Vec::new();
    for round in 0..plan.rounds {
        let mut order = vec![Relay::Dialtone];
        if before.is_some() {
            order.push(Relay::Before);
        }
        order.push(Relay::Coturn);
        if round % 2 == 1 {
            order.reverse();
        }
        for (relay, wire) in order
            .into_iter()
            .flat_map(|relay| Wire::ALL.map(|wire| (relay, wire)))
        {
            let way = Way {
                relay,
                wire,
                tls: &tls,
            };
            let pair = (cert.as_path(), key.as_path());
            let mut run = RelayRun::default();
            let server = Server::start(relay, &ns, work, (repo, before), pair).await?;
            (
                run.max_pps,
                run.cpu_per_packet,
                run.generator_cpu_per_packet,
            ) = max_rate(&server, plan, way).await?;
            server.stop().await;
            let server = Server::start(relay, &ns, work, (repo, before), pair).await?;
            fixed_load(&server, plan, way, &mut run).await?;
            server.stop().await;
            eprintln!(
                "relay round {}, {} over {}: max {:.0} packets/s at {:.2} µs server CPU each (generator {:.2}); \
                 {} calls at 1.5 Mbit/s each way: {} of {} received ({:.3} % lost), {:.2} µs CPU each, \
                 p50 {:.0} µs, p99 {:.0} µs",
                round + 1,
                relay.label(),
                wire.label(),
                run.max_pps,
                micros(run.cpu_per_packet),
                micros(run.generator_cpu_per_packet),
                plan.calls,
                run.fixed_received,
                run.fixed_sent,
                run.fixed_loss * 100.0,
                micros(run.fixed_cpu_per_packet),
                micros(run.fixed_p50),
                micros(run.fixed_p99),
            );
            runs.push((relay, wire, run));
        }
    }
    drop(ns);
    Ok(runs)
}

/// The relay section of the table.
pub fn table(
    runs: &Result<Vec<(Relay, Wire, RelayRun)>, String>,
    plan: RelayPlan,
    out: &mut String,
) {
    use std::fmt::Write as _;
    let packets_per_second = CALL_BITS_PER_SECOND / 8.0 / PAYLOAD as f64;
    let _ = writeln!(
        out,
        "\n## The built-in TURN relay\n\n{} calls, both sides relaying (two allocations each, a \
         channel bound to the other's relayed address), {PAYLOAD}-byte packets, the clients reaching \
         the relay over UDP, TCP or TLS (peers over UDP), through dialtone's built-in relay (TCP \
         on its port, TLS on the page's) and coturn's turnserver (Debian's package, its defaults, \
         TCP on 3478 and TLS on 5349, the same certificate) in a network namespace; {} rounds \
         alternating the two, medians with the min–max spread. A \
         packet is counted once, delivered end to end; each crossed the server twice. The fixed \
         load is each call sending 1.5 Mbit/s each way ({packets_per_second:.0} packets/s per \
         side, a frame's packets back to back 30 times a second): {:.0} packets/s in all.",
        plan.calls,
        plan.rounds,
        packets_per_second * 2.0 * plan.calls as f64,
    );
    let runs = match runs {
        Ok(runs) => runs,
        Err(why) => {
            let _ = writeln!(out, "\nNot run: {why}.");
            return;
        }
    };
    for wire in Wire::ALL {
        wire_table(runs, wire, out);
    }
}

/// One transport's rows.
fn wire_table(runs: &[(Relay, Wire, RelayRun)], wire: Wire, out: &mut String) {
    use std::fmt::Write as _;
    let of = |relay: Relay, pick: &dyn Fn(&RelayRun) -> f64| {
        median_spread(
            runs.iter()
                .filter(|(r, w, _)| *r == relay && *w == wire)
                .map(|(_, _, run)| pick(run))
                .collect(),
        )
    };
    let shown = |(median, low, high): (f64, f64, f64), digits: usize| {
        format!("{median:.digits$} ({low:.digits$}–{high:.digits$})")
    };
    // With `--compare`: the build before the change, in the same rounds.
    let compared = runs.iter().any(|(relay, _, _)| *relay == Relay::Before);
    let _ = writeln!(
        out,
        "\n### Over {}\n\n| what | dialtone | coturn | dialtone / coturn | target | met |{}\n|---|---|---|---|---|---|{}",
        wire.label(),
        if compared {
            " before | dialtone / before |"
        } else {
            ""
        },
        if compared { "---|---|" } else { "" },
    );
    let mut row = |what: &str,
                   pick: &dyn Fn(&RelayRun) -> f64,
                   digits: usize,
                   target: &str,
                   met: &dyn Fn(f64, f64, f64) -> Option<bool>| {
        let (d, c) = (of(Relay::Dialtone, pick), of(Relay::Coturn, pick));
        let ratio = if c.0 == 0.0 {
            "–".to_owned()
        } else {
            format!("{:.2}×", d.0 / c.0)
        };
        let met = match met(d.0, c.0, d.0 / c.0) {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let against = if compared {
            let b = of(Relay::Before, pick);
            let ratio = if b.0 == 0.0 {
                "–".to_owned()
            } else {
                format!("{:.2}×", d.0 / b.0)
            };
            format!(" {} | {ratio} |", shown(b, digits))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {ratio} | {target} | {met} |{against}",
            shown(d, digits),
            shown(c, digits)
        );
    };
    // Over UDP the first target (issue 25's); over TCP and TLS issue 33's.
    let (target, least) = match wire {
        Wire::Udp => ("≥ 0.5× coturn", 0.5),
        Wire::Tcp | Wire::Tls => ("≥ 0.8× coturn", 0.8),
    };
    row(
        "maximum rate (packets/s)",
        &|r| r.max_pps,
        0,
        "",
        &|_, _, _| None,
    );
    row(
        "server CPU per packet at the maximum rate (µs)",
        &|r| micros(r.cpu_per_packet),
        2,
        "",
        &|_, _, _| None,
    );
    row(
        "packets per server CPU-second at the maximum rate",
        &|r| 1e6 / micros(r.cpu_per_packet).max(1e-9),
        0,
        target,
        &|_, _, ratio| Some(ratio >= least),
    );
    row(
        "generator CPU per packet at the maximum rate (µs)",
        &|r| micros(r.generator_cpu_per_packet),
        2,
        "",
        &|_, _, _| None,
    );
    row(
        "loss at the fixed load (%)",
        &|r| r.fixed_loss * 100.0,
        3,
        "< 1 %",
        &|d, _, _| Some(d < 1.0),
    );
    row(
        "server CPU per packet at the fixed load (µs)",
        &|r| micros(r.fixed_cpu_per_packet),
        2,
        "",
        &|_, _, _| None,
    );
    row(
        "p50 one-way latency at the fixed load (µs)",
        &|r| micros(r.fixed_p50),
        0,
        "",
        &|_, _, _| None,
    );
    row(
        "p99 one-way latency at the fixed load (µs)",
        &|r| micros(r.fixed_p99),
        0,
        "",
        &|_, _, _| None,
    );
}
