//! dialtone's benchmark. Starts dialtone (TLS off and on), the tutorial's Node server
//! (bench/baseline-node, plain and with TLS) and the reference relay (reference.rs, the
//! limit), drives each over loopback with the real protocol, in rounds that alternate the
//! order, stops them, and prints medians with their spread and the ratios dialtone / Node and
//! dialtone / reference.
//!
//! Every load is bounded in count and time, goes to 127.0.0.0/8 only, and stops by itself.
//! Run it through `bench/run`, which builds what it needs.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use measure::{FOREIGN_LIMIT, Rounds, Spent, Window, pin};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

mod measure;
mod reference;
mod relay;
mod storm;

pub use measure::cpu_of;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

/// How long each timed phase runs, and how big the loads are.
#[derive(Clone, Copy)]
struct Plan {
    warmup: Duration,
    measure: Duration,
    pairs: usize,
    idle: usize,
    max_idle: usize,
    login_workers: usize,
    /// Rounds of every single-instance and cluster scenario.
    rounds: usize,
    storm_users: usize,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(5),
            pairs: 50,
            idle: 10_000,
            max_idle: 19_000,
            login_workers: 32,
            rounds: 3,
            storm_users: 10_000,
        }
    }

    /// The relay section: as many calls as the relay scenarios have pairs.
    fn relay(self) -> relay::RelayPlan {
        let full = self.pairs >= 50;
        relay::RelayPlan {
            calls: self.pairs,
            warmup: self.warmup,
            measure: self.measure,
            fixed_measure: if full {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(2)
            },
            rounds: if full { 3 } else { 1 },
        }
    }

    fn quick() -> Plan {
        Plan {
            warmup: Duration::from_millis(300),
            measure: Duration::from_secs(1),
            pairs: 20,
            idle: 1_000,
            max_idle: 2_000,
            login_workers: 8,
            rounds: 1,
            storm_users: 1_000,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dialtone,
    /// The tutorial's Node server.
    Baseline,
    /// The reference relay (reference.rs): the limit.
    Reference,
    /// Another dialtone binary (`--compare PATH`): before a change.
    Before,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Target {
    kind: Kind,
    tls: bool,
}

impl Target {
    fn label(self) -> &'static str {
        match (self.kind, self.tls) {
            (Kind::Dialtone, false) => "dialtone ws",
            (Kind::Dialtone, true) => "dialtone wss",
            (Kind::Baseline, false) => "Node ws",
            (Kind::Baseline, true) => "Node wss",
            (Kind::Reference, false) => "reference ws",
            (Kind::Reference, true) => "reference wss",
            (Kind::Before, false) => "before ws",
            (Kind::Before, true) => "before wss",
        }
    }

    fn of(kind: Kind, tls: bool) -> Target {
        Target { kind, tls }
    }
}

struct Paths {
    repo: PathBuf,
    /// The dialtone binary `--compare` measures against.
    before: Option<PathBuf>,
    work: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Where a client connects.
#[derive(Clone, Copy)]
struct Endpoint {
    port: u16,
    tls: bool,
}

/// A server process started for one scenario; killed when dropped.
struct Server {
    child: Child,
    pid: u32,
    port: u16,
    target: Target,
}

/// What a scenario drives: one server, or a cluster of two. Side 0 and side 1 are where the
/// two users of a pair connect (the same server, or the two instances).
trait Under {
    fn endpoint(&self, side: usize) -> Endpoint;
    /// Every process serving the load.
    fn pids(&self) -> Vec<u32>;
}

impl Under for Server {
    fn endpoint(&self, _side: usize) -> Endpoint {
        Server::endpoint(self)
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.pid]
    }
}

/// Two dialtone instances on one redis-server, every pair split across them.
struct Cluster {
    redis: Child,
    redis_pid: u32,
    servers: [Server; 2],
}

impl Cluster {
    async fn start(tls: bool, paths: &Paths) -> anyhow::Result<Cluster> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut redis = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let redis_pid = redis.id().context("redis-server has a pid")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline || redis.try_wait()?.is_some() {
                bail!("redis-server did not start on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let target = Target {
            kind: Kind::Dialtone,
            tls,
        };
        let cluster = |id: &str| {
            format!("[cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\ninstance_id = \"{id}\"\n")
        };
        let one = Server::start_with(target, paths, &cluster("one")).await?;
        let two = Server::start_with(target, paths, &cluster("two")).await?;
        Ok(Cluster {
            redis,
            redis_pid,
            servers: [one, two],
        })
    }

    async fn stop(mut self) {
        for server in self.servers {
            server.stop().await;
        }
        let _ = self.redis.kill().await;
    }
}

impl Under for Cluster {
    fn endpoint(&self, side: usize) -> Endpoint {
        self.servers[side % 2].endpoint()
    }

    /// The two instances, then redis-server.
    fn pids(&self) -> Vec<u32> {
        vec![self.servers[0].pid, self.servers[1].pid, self.redis_pid]
    }
}

impl Server {
    async fn start(target: Target, paths: &Paths) -> anyhow::Result<Server> {
        Server::start_with(target, paths, "").await
    }

    async fn start_with(target: Target, paths: &Paths, extra: &str) -> anyhow::Result<Server> {
        Server::start_on(target, paths, extra, None, None).await
    }

    /// On core 1 alone, from its start (so its runtime sizes itself to one core), when the
    /// machine can pin; as `start` otherwise.
    async fn start_pinned(target: Target, paths: &Paths) -> anyhow::Result<Server> {
        let cores = measure::can_pin().then_some("1");
        Server::start_on(target, paths, "", None, cores).await
    }

    /// `extra` is appended to dialtone's config (a `[cluster]` table); `port` is a free one
    /// unless given (a restart on the same port); `cores`, a taskset core list to start on.
    async fn start_on(
        target: Target,
        paths: &Paths,
        extra: &str,
        port: Option<u16>,
        cores: Option<&str>,
    ) -> anyhow::Result<Server> {
        for _ in 0..5 {
            let port = match port {
                Some(port) => port,
                None => std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port(),
            };
            let mut command = match target.kind {
                Kind::Dialtone | Kind::Before => {
                    let config = paths.work.join(format!("dialtone-{port}.toml"));
                    let tls = if target.tls {
                        format!(
                            "[tls]\nmode = \"files\"\ncert = {:?}\nkey = {:?}\n",
                            paths.cert.display().to_string(),
                            paths.key.display().to_string()
                        )
                    } else {
                        "[tls]\nmode = \"off\"\n".to_owned()
                    };
                    let bench = std::fs::read_to_string(paths.repo.join("bench/bench.toml"))?;
                    std::fs::write(
                        &config,
                        format!(
                            "listen = \"127.0.0.1:{port}\"\npublic_dir = {:?}\n{tls}\n{bench}\n{extra}",
                            paths.repo.join("public").display().to_string()
                        ),
                    )?;
                    let binary = match (&paths.before, target.kind) {
                        (Some(before), Kind::Before) => before.clone(),
                        _ => paths.repo.join("target/release/dialtone"),
                    };
                    let mut command = Command::new(binary);
                    command.arg("--config").arg(config);
                    command
                }
                Kind::Reference => {
                    let mut command = Command::new(std::env::current_exe()?);
                    command.args(["--reference-relay", &port.to_string()]);
                    if target.tls {
                        command.arg(&paths.cert).arg(&paths.key);
                    }
                    command
                }
                Kind::Baseline => {
                    let mut command = Command::new("node");
                    command
                        .arg("server.js")
                        .current_dir(paths.repo.join("bench/baseline-node"));
                    if target.tls {
                        command
                            .env("TLS_CERT", &paths.cert)
                            .env("TLS_KEY", &paths.key);
                    }
                    command
                }
            };
            if let Some(cores) = cores {
                // taskset execs the server: the pid stays the server's.
                let program = command.as_std().get_program().to_owned();
                let args: Vec<_> = command.as_std().get_args().map(ToOwned::to_owned).collect();
                let dir = command.as_std().get_current_dir().map(ToOwned::to_owned);
                let envs: Vec<_> = command
                    .as_std()
                    .get_envs()
                    .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
                    .collect();
                let mut pinned = Command::new("taskset");
                pinned.args(["-c", cores]).arg(program).args(args);
                if let Some(dir) = dir {
                    pinned.current_dir(dir);
                }
                for (key, value) in envs {
                    match value {
                        Some(value) => pinned.env(key, value),
                        None => pinned.env_remove(key),
                    };
                }
                command = pinned;
            }
            command
                .env("PORT", port.to_string())
                .env_remove("RUST_LOG")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            if matches!(target.kind, Kind::Dialtone | Kind::Before) {
                // PORT would switch dialtone to plain HTTP: the config names the port.
                command.env_remove("PORT");
            }
            let mut child = command.spawn().context("starting a server")?;
            let pid = child.id().context("the server has a pid")?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Ok(Server {
                        child,
                        pid,
                        port,
                        target,
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill().await;
        }
        bail!("{} did not start", target.label())
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            port: self.port,
            tls: self.target.tls,
        }
    }

    fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to end by itself (after a SIGTERM), killing it after `limit`.
    async fn wait_exit(mut self, limit: Duration) {
        if tokio::time::timeout(limit, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Connects from one of several loopback source addresses (one address has only ~28,000
/// ephemeral ports), over TLS when the target has it, and upgrades to a WebSocket.
async fn connect(
    server: Endpoint,
    tls: &tokio_rustls::TlsConnector,
    n: usize,
) -> anyhow::Result<Ws> {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 200) as u8));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], server.port)))
        .await?;
    tcp.set_nodelay(true)?;
    let (io, scheme): (Box<dyn Io>, _) = if server.tls {
        let name = ServerName::try_from("localhost")?;
        (Box::new(tls.connect(name, tcp).await?), "wss")
    } else {
        (Box::new(tcp), "ws")
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let url = format!("{scheme}://localhost:{}/", server.port);
    let (ws, _) = client_async_with_config(url, io, Some(config)).await?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.to_string()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(err))) => return Err(err.into()),
            Ok(None) => bail!("the server closed the socket"),
            Err(_) => bail!("no message within 10 s"),
        }
    }
}

async fn login(ws: &mut Ws, name: &str) -> anyhow::Result<()> {
    let message = format!(r#"{{"type":"login","username":"{name}"}}"#);
    ws.send(Message::text(message)).await?;
    let reply = next_text(ws).await?;
    if !reply.contains("\"success\":true") {
        bail!("login as {name} refused: {reply}");
    }
    Ok(())
}

fn epoch_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// A realistic ICE candidate (~230 bytes on the wire), stamped with its send time.
fn candidate(to: &str, stamp: u64) -> String {
    format!(
        r#"{{"type":"candidate","candidate":{{"candidate":"candidate:842163049 1 udp 1677729535 192.0.2.44 54321 typ srflx raddr 10.0.0.5 rport 54321 generation 0 ufrag sK3b network-cost 999","sdpMid":"0","sdpMLineIndex":0,"t":{stamp}}},"otherUsername":"{to}"}}"#
    )
}

/// A realistic SDP offer (~3 KB), stamped with its send time.
fn offer(to: &str, stamp: u64) -> String {
    let mut sdp = String::from(
        "v=0\\r\\no=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\na=group:BUNDLE 0 1\\r\\n",
    );
    while sdp.len() < 2900 {
        sdp.push_str("a=rtpmap:111 opus/48000/2\\r\\na=fmtp:111 minptime=10;useinbandfec=1\\r\\n");
    }
    format!(
        r#"{{"type":"offer","offer":{{"type":"offer","sdp":"{sdp}","t":{stamp}}},"otherUsername":"{to}"}}"#
    )
}

/// The traffic mix: mostly candidates, every 20th message an offer (renegotiation).
fn traffic(to: &str, n: u64, stamp: u64) -> String {
    if n.is_multiple_of(20) {
        offer(to, stamp)
    } else {
        candidate(to, stamp)
    }
}

/// The send time carried in a relayed message.
fn stamp_of(text: &str) -> Option<u64> {
    let at = text.rfind("\"t\":")? + 4;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Pairs of logged-in users with a call set up (offer and answer), so both servers relay
/// between them; `a` sends, `b` receives.
async fn pairs(
    server: &impl Under,
    tls: &tokio_rustls::TlsConnector,
    count: usize,
) -> anyhow::Result<Vec<(Ws, Ws, String)>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (a_name, b_name) = (format!("a{i}"), format!("b{i}"));
        let mut a = connect(server.endpoint(0), tls, 2 * i).await?;
        let mut b = connect(server.endpoint(1), tls, 2 * i + 1).await?;
        login(&mut a, &a_name).await?;
        login(&mut b, &b_name).await?;
        a.send(Message::text(offer(&b_name, epoch_micros())))
            .await?;
        next_text(&mut b).await?;
        let answer = format!(
            r#"{{"type":"answer","answer":{{"type":"answer","sdp":"v=0"}},"otherUsername":"{a_name}"}}"#
        );
        b.send(Message::text(answer)).await?;
        next_text(&mut a).await?;
        out.push((a, b, b_name));
    }
    Ok(out)
}

#[derive(Default, Clone, Copy)]
struct Throughput {
    rate: f64,
    cpu_per_message: Duration,
    /// Of that, the last process's share (redis-server, in a cluster).
    last_part_per_message: Duration,
    /// The generator's own CPU per message.
    generator_per_message: Duration,
    /// Foreign load during the window, in cores.
    foreign: f64,
}

impl Throughput {
    fn of(messages: u64, spent: &Spent) -> Throughput {
        let messages = messages.max(1);
        let per = |d: Duration| d / u32::try_from(messages).unwrap_or(u32::MAX);
        Throughput {
            rate: messages as f64 / spent.wall.as_secs_f64(),
            cpu_per_message: per(spent.server()),
            last_part_per_message: per(spent.parts.last().copied().unwrap_or_default()),
            generator_per_message: per(spent.generator),
            foreign: spent.foreign_cores,
        }
    }
}

/// Every sender as fast as the server takes it, with at most `WINDOW` messages in flight
/// per pair so nothing queues without bound.
async fn max_rate(
    server: &impl Under,
    tls: &tokio_rustls::TlsConnector,
    plan: Plan,
) -> anyhow::Result<Throughput> {
    const WINDOW: u64 = 64;
    let pairs = pairs(server, tls, plan.pairs).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (mut a, mut b, to) in pairs {
        let (stop, received) = (stop.clone(), received.clone());
        let got = Arc::new(AtomicU64::new(0));
        let more = Arc::new(Notify::new());
        let (got_r, more_r) = (got.clone(), more.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = b.next().await {
                if let Message::Text(_) = frame {
                    got_r.fetch_add(1, Ordering::Relaxed);
                    received.fetch_add(1, Ordering::Relaxed);
                    more_r.notify_one();
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                while sent - got.load(Ordering::Relaxed) >= WINDOW {
                    let _ = tokio::time::timeout(Duration::from_millis(50), more.notified()).await;
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                let text = traffic(&to, sent, epoch_micros());
                if a.send(Message::text(text)).await.is_err() {
                    return;
                }
                sent += 1;
            }
            let _ = a.close(None).await;
        }));
    }
    tokio::time::sleep(plan.warmup).await;
    let (count0, window) = (
        received.load(Ordering::Relaxed),
        Window::open(&server.pids()),
    );
    tokio::time::sleep(plan.measure).await;
    let (count1, spent) = (received.load(Ordering::Relaxed), window.close());
    stop.store(true, Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    Ok(Throughput::of(count1.saturating_sub(count0), &spent))
}

#[derive(Default, Clone, Copy)]
struct Latency {
    sent: u64,
    received: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// Server CPU per message over the measured window.
    cpu_per_message: Duration,
    foreign: f64,
}

/// A fixed total rate spread over the pairs; latency from send to receive, end to end. With
/// `pinned`, the server runs on core 1 and this generator on core 0 (when there are two).
async fn latency_at(
    server: &impl Under,
    tls: &tokio_rustls::TlsConnector,
    plan: Plan,
    rate: f64,
    pinned: bool,
) -> anyhow::Result<Latency> {
    let pinned = pinned && measure::can_pin();
    if pinned {
        for pid in server.pids() {
            pin(pid, "1");
        }
        pin(std::process::id(), "0");
    }
    let result = latency_run(server, tls, plan, rate).await;
    if pinned {
        pin(std::process::id(), "0-1");
    }
    result
}

async fn latency_run(
    server: &impl Under,
    tls: &tokio_rustls::TlsConnector,
    plan: Plan,
    rate: f64,
) -> anyhow::Result<Latency> {
    let pairs = pairs(server, tls, plan.pairs).await?;
    let per_sender = rate / pairs.len() as f64;
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.measure;
    // Sender and receiver count a message by the same rule, its stamp against this.
    let counted_from = epoch_of(measure_from);
    let sent_total = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (mut a, mut b, to) in pairs {
        let sent_total = sent_total.clone();
        receivers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut received = 0u64;
            let deadline = tokio::time::Instant::from_std(end + Duration::from_secs(2));
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, b.next()).await {
                if let Message::Text(text) = frame {
                    let now = epoch_micros();
                    if let Some(stamp) = stamp_of(&text)
                        && stamp >= counted_from
                    {
                        received += 1;
                        samples.push(now.saturating_sub(stamp));
                    }
                }
            }
            (received, samples)
        }));
        senders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut counted = 0u64;
            tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;
            // Sleep until the next message is due (timers have millisecond resolution, so
            // above 1,000 messages a second per sender a wake-up sends what has come due).
            while Instant::now() < end {
                let next = start + Duration::from_secs_f64(sent as f64 / per_sender);
                tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                let due = ((Instant::now() - start).as_secs_f64() * per_sender) as u64 + 1;
                while sent < due && Instant::now() < end {
                    let stamp = epoch_micros();
                    let text = traffic(&to, sent, stamp);
                    if a.send(Message::text(text)).await.is_err() {
                        return counted;
                    }
                    sent += 1;
                    if stamp >= counted_from {
                        counted += 1;
                    }
                }
            }
            sent_total.fetch_add(counted, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(3)).await; // keep the socket for the drain
            counted
        }));
    }
    // The server's CPU over the measured window.
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
    let window = Window::open(&server.pids());
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    let spent = window.close();
    let mut samples = Vec::new();
    let mut received = 0;
    for receiver in receivers {
        let (count, mut got) = receiver.await?;
        received += count;
        samples.append(&mut got);
    }
    let mut sent = 0;
    for sender in senders {
        sent += sender.await?;
    }
    samples.sort_unstable();
    let pick = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .map_or(Duration::ZERO, |&us| Duration::from_micros(us))
    };
    let messages = u32::try_from(received.max(1)).unwrap_or(u32::MAX);
    Ok(Latency {
        cpu_per_message: spent.server() / messages,
        foreign: spent.foreign_cores,
        sent,
        received,
        p50: pick(0.50),
        p99: pick(0.99),
        max: samples
            .last()
            .map_or(Duration::ZERO, |&us| Duration::from_micros(us)),
    })
}

fn epoch_of(at: Instant) -> u64 {
    let now = Instant::now();
    let epoch_now = epoch_micros();
    if at >= now {
        epoch_now + (at - now).as_micros() as u64
    } else {
        epoch_now.saturating_sub((now - at).as_micros() as u64)
    }
}

/// Logged-in idle connections: how many the server held, and its RSS growth per connection.
async fn idle(
    server: &Server,
    tls: &tokio_rustls::TlsConnector,
    count: usize,
) -> anyhow::Result<(usize, u64, f64)> {
    let before = server.rss_bytes();
    let mut held = Vec::with_capacity(count);
    // A few at a time, so the handshakes do not time out under their own load.
    for chunk in 0..count.div_ceil(100) {
        let batch: Vec<_> = (chunk * 100..((chunk + 1) * 100).min(count))
            .map(|i| async move {
                let mut ws = connect(server.endpoint(), tls, i).await?;
                login(&mut ws, &format!("idle{i}")).await?;
                anyhow::Ok(ws)
            })
            .collect();
        let mut failed = false;
        for result in futures_util::future::join_all(batch).await {
            match result {
                Ok(ws) => held.push(ws),
                Err(_) => failed = true,
            }
        }
        if failed {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_bytes();
    let per = (after.saturating_sub(before)) as f64 / held.len().max(1) as f64;
    Ok((held.len(), after, per))
}

/// TCP connect, TLS handshake, upgrade, login, close: as many as `workers` manage. Whether
/// the TLS handshakes are full or resumed is the connector's (its session cache). Returns the
/// rate and the foreign load.
async fn logins_per_second(
    server: &impl Under,
    tls: &tokio_rustls::TlsConnector,
    plan: Plan,
) -> anyhow::Result<(f64, f64)> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..plan.login_workers {
        let endpoint = server.endpoint(worker);
        let (tls, done, stop) = (tls.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let i = worker * 1_000_000 + n;
                n += 1;
                if let Ok(mut ws) = connect(endpoint, &tls, i).await
                    && login(&mut ws, &format!("l{i}")).await.is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                    let _ = ws.close(None).await;
                }
            }
        }));
    }
    tokio::time::sleep(plan.warmup).await;
    let (n0, window) = (done.load(Ordering::Relaxed), Window::open(&server.pids()));
    tokio::time::sleep(plan.measure).await;
    let (n1, spent) = (done.load(Ordering::Relaxed), window.close());
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok((
        (n1 - n0) as f64 / spent.wall.as_secs_f64(),
        spent.foreign_cores,
    ))
}

/// Runs one measurement again while foreign load disturbed it (at most three tries); a run
/// kept after three disturbed tries is said so in the results.
async fn steady<T, F, Fut>(what: &str, rounds: &mut Rounds, mut run: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<(T, f64)>>,
{
    const TRIES: usize = 3;
    for attempt in 1..=TRIES {
        let (value, foreign) = run().await?;
        if foreign <= FOREIGN_LIMIT {
            return Ok(value);
        }
        let kept = attempt == TRIES;
        let line = format!(
            "{what}: {foreign:.2} cores of foreign load, {}",
            if kept {
                "kept (third try)"
            } else {
                "dropped and run again"
            }
        );
        eprintln!("{line}");
        rounds.dropped.push(line);
        if kept {
            return Ok(value);
        }
    }
    unreachable!("the last try returns")
}

/// Which scenarios run (`--only max,10k,...`; all by default).
#[derive(Clone)]
struct Only(Option<Vec<String>>);

impl Only {
    fn has(&self, scenario: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == scenario))
    }
}

/// The two TLS client configurations: one that never resumes (every handshake full), one
/// with rustls's session cache (resumes once the server has handed it a ticket).
struct Clients {
    full: tokio_rustls::TlsConnector,
    resuming: tokio_rustls::TlsConnector,
}

/// Every scenario of one round against one target, each on a fresh server.
async fn run_target(
    target: Target,
    paths: &Paths,
    clients: &Clients,
    plan: Plan,
    only: &Only,
    rounds: &mut Rounds,
) -> anyhow::Result<()> {
    let label = target.label();
    let tls = &clients.full;
    let fresh = || Server::start(target, paths);

    if only.has("max") {
        let t = steady(&format!("{label} max"), rounds, || async {
            let server = fresh().await?;
            let t = max_rate(&server, tls, plan).await;
            server.stop().await;
            let t = t?;
            Ok((t, t.foreign))
        })
        .await?;
        eprintln!(
            "{label}: max rate {:.0} msg/s, {:.2} µs CPU/msg (generator {:.2})",
            t.rate,
            micros(t.cpu_per_message),
            micros(t.generator_per_message)
        );
        rounds.add("rate_max", label, t.rate);
        rounds.add("cpu_max", label, micros(t.cpu_per_message));
        rounds.add("gen_max", label, micros(t.generator_per_message));
    }

    for (rate, scenario, p50, p99, cpu, lost) in [
        (1_000.0, "1k", "p50_1k", "p99_1k", "cpu_1k", "lost_1k"),
        (10_000.0, "10k", "p50_10k", "p99_10k", "cpu_10k", "lost_10k"),
        (80_000.0, "80k", "p50_80k", "p99_80k", "cpu_80k", "lost_80k"),
    ] {
        if !only.has(scenario) {
            continue;
        }
        let l = steady(&format!("{label} {scenario}"), rounds, || async {
            let server = Server::start_pinned(target, paths).await?;
            let l = latency_at(&server, tls, plan, rate * plan_scale(plan), true).await;
            server.stop().await;
            let l = l?;
            Ok((l, l.foreign))
        })
        .await?;
        eprintln!(
            "{label}: at {rate} msg/s p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, {} of {} received, {:.2} µs CPU/msg",
            micros(l.p50),
            micros(l.p99),
            micros(l.max),
            l.received,
            l.sent,
            micros(l.cpu_per_message)
        );
        rounds.add(p50, label, micros(l.p50));
        rounds.add(p99, label, micros(l.p99));
        rounds.add(cpu, label, micros(l.cpu_per_message));
        rounds.add(lost, label, l.sent.saturating_sub(l.received) as f64);
    }

    if only.has("idle") {
        let server = fresh().await?;
        let (held, _, per) = idle(&server, tls, plan.idle).await?;
        server.stop().await;
        eprintln!("{label}: {held} idle logged-in connections, {per:.0} bytes each");
        rounds.add("idle", label, per);
    }

    if only.has("logins") {
        let rate = steady(&format!("{label} logins"), rounds, || async {
            let server = fresh().await?;
            let r = logins_per_second(&server, &clients.full, plan).await;
            server.stop().await;
            r
        })
        .await?;
        eprintln!("{label}: {rate:.0} logins/s (full handshakes)");
        rounds.add("logins", label, rate);
        if target.tls {
            let rate = steady(&format!("{label} resumed logins"), rounds, || async {
                let server = fresh().await?;
                let r = logins_per_second(&server, &clients.resuming, plan).await;
                server.stop().await;
                r
            })
            .await?;
            eprintln!("{label}: {rate:.0} logins/s (resumed handshakes)");
            rounds.add("logins_resumed", label, rate);
        }
    }

    if matches!(target.kind, Kind::Dialtone | Kind::Before) && target.tls && only.has("storm") {
        let s = storm::run(target, paths, tls, plan.storm_users).await?;
        eprintln!(
            "{label}: storm of {}: all back {:.1} s after SIGTERM, {} failed attempts, {} lost, RSS {} MiB steady, {} MiB peak",
            s.users,
            s.all_back.as_secs_f64(),
            s.failed_attempts,
            s.lost,
            s.steady_rss >> 20,
            s.peak_rss >> 20
        );
        rounds.add("storm_back", label, s.all_back.as_secs_f64());
        rounds.add("storm_failed", label, s.failed_attempts as f64);
        rounds.add("storm_lost", label, s.lost as f64);
        rounds.add("storm_steady", label, (s.steady_rss >> 20) as f64);
        rounds.add("storm_peak", label, (s.peak_rss >> 20) as f64);
        rounds.add(
            "storm_peak_ratio",
            label,
            ratio(s.peak_rss as f64, s.steady_rss as f64),
        );
    }
    Ok(())
}

/// The cluster scenarios of one round, each on a fresh cluster like the single-server ones.
async fn run_cluster(
    paths: &Paths,
    tls: &tokio_rustls::TlsConnector,
    plan: Plan,
    rounds: &mut Rounds,
) -> anyhow::Result<()> {
    let t = steady("cluster max", rounds, || async {
        let cluster = Cluster::start(false, paths).await?;
        let t = max_rate(&cluster, tls, plan).await;
        cluster.stop().await;
        let t = t?;
        Ok((t, t.foreign))
    })
    .await?;
    eprintln!(
        "cluster ws: max rate {:.0} msg/s, {:.1} µs CPU/msg (both instances and redis-server, \
         of which redis-server {:.1})",
        t.rate,
        micros(t.cpu_per_message),
        micros(t.last_part_per_message)
    );
    rounds.add("rate_max", CLUSTER, t.rate);
    rounds.add("cpu_max", CLUSTER, micros(t.cpu_per_message));
    rounds.add("cpu_redis", CLUSTER, micros(t.last_part_per_message));

    // Unpinned, as the cluster rows were measured before: three processes on two cores.
    let l = steady("cluster 10k", rounds, || async {
        let cluster = Cluster::start(false, paths).await?;
        let l = latency_at(&cluster, tls, plan, 10_000.0 * plan_scale(plan), false).await;
        cluster.stop().await;
        let l = l?;
        Ok((l, l.foreign))
    })
    .await?;
    eprintln!(
        "cluster ws: at 10k msg/s p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, {} of {} received",
        micros(l.p50),
        micros(l.p99),
        micros(l.max),
        l.received,
        l.sent
    );
    rounds.add("p50_10k", CLUSTER, micros(l.p50));
    rounds.add("p99_10k", CLUSTER, micros(l.p99));
    rounds.add(
        "lost_10k",
        CLUSTER,
        l.sent.saturating_sub(l.received) as f64,
    );

    let rate = steady("cluster logins", rounds, || async {
        let cluster = Cluster::start(true, paths).await?;
        let r = logins_per_second(&cluster, tls, plan).await;
        cluster.stop().await;
        r
    })
    .await?;
    eprintln!("cluster wss: {rate:.0} logins/s");
    rounds.add("logins", CLUSTER, rate);
    Ok(())
}

const CLUSTER: &str = "cluster";

/// The quick plan scales the fixed rates down with its smaller load.
fn plan_scale(plan: Plan) -> f64 {
    if plan.pairs < 50 { 0.25 } else { 1.0 }
}

fn rate_label(rate: f64, plan: Plan) -> String {
    format!("{}k msg/s", rate * plan_scale(plan) / 1000.0)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

fn shown_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "–".to_owned()
    }
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "–",
    }
}

/// A row's target for dialtone's median, against Node's and the reference relay's.
#[derive(Clone, Copy)]
enum Goal {
    /// None: the figure is there to read the others by.
    Context,
    /// At most `node`× Node's median (and `reference`× the reference relay's), and below
    /// `under` (in the row's unit).
    AtMost {
        node: f64,
        reference: Option<f64>,
        under: Option<(f64, &'static str)>,
    },
    /// At least `node`× Node's median.
    AtLeast { node: f64 },
    /// At least `factor`× another of dialtone's figures (same transport).
    AtLeastOwn {
        factor: f64,
        figure: &'static str,
        named: &'static str,
    },
}

/// One row of the main table: a figure, how many digits it is shown with, its target.
struct Row {
    what: String,
    figure: &'static str,
    digits: usize,
    tls: bool,
    goal: Goal,
    /// A figure (per round) that must be 0 in every round for the target to hold.
    none_lost: Option<&'static str>,
}

impl Row {
    fn new(what: String, figure: &'static str, digits: usize, tls: bool, goal: Goal) -> Row {
        Row {
            what,
            figure,
            digits,
            tls,
            goal,
            none_lost: None,
        }
    }

    /// The target as the table shows it.
    fn target(&self) -> String {
        let mut parts = Vec::new();
        match self.goal {
            Goal::Context => {}
            Goal::AtMost {
                node,
                reference,
                under,
            } => {
                if let Some((_, shown)) = under {
                    parts.push(format!("< {shown}"));
                }
                parts.push(format!("≤ {node}× Node"));
                if let Some(r) = reference {
                    parts.push(format!("≤ {r}× reference"));
                }
            }
            Goal::AtLeast { node } => parts.push(format!("≥ {node}× Node")),
            Goal::AtLeastOwn { factor, named, .. } => parts.push(format!("≥ {factor}× {named}")),
        }
        if self.none_lost.is_some() {
            parts.push("none lost".to_owned());
        }
        parts.join(", ")
    }

    /// Whether the target holds for `label`'s median `d`, Node's `n` and the reference's `r`.
    fn met(&self, d: f64, n: f64, r: f64, rounds: &Rounds, label: &str) -> Option<bool> {
        let holds = match self.goal {
            Goal::Context => return None,
            Goal::AtMost {
                node,
                reference,
                under,
            } => {
                d <= node * n
                    && reference.is_none_or(|f| d <= f * r)
                    && under.is_none_or(|(limit, _)| d < limit)
            }
            Goal::AtLeast { node } => d >= node * n,
            Goal::AtLeastOwn { factor, figure, .. } => d >= factor * rounds.median(figure, label),
        };
        let none_lost = self.none_lost.is_none_or(|lost| {
            let lost = rounds.get(lost, label).unwrap_or(&[]);
            lost.iter().all(|&l| l == 0.0)
        });
        Some(holds && none_lost)
    }
}

fn rows(plan: Plan) -> Vec<Row> {
    let (k1, k10, k80) = (
        rate_label(1_000.0, plan),
        rate_label(10_000.0, plan),
        rate_label(80_000.0, plan),
    );
    let at_most = |node| Goal::AtMost {
        node,
        reference: None,
        under: None,
    };
    let mut rows = Vec::new();
    for tls in [false, true] {
        let t = if tls { "wss" } else { "ws" };
        let row = |what: String, figure, digits, goal| Row::new(what, figure, digits, tls, goal);
        rows.push(row(
            format!("server CPU per message at the maximum rate, {t} (µs)"),
            "cpu_max",
            2,
            Goal::AtMost {
                node: 0.3,
                reference: Some(1.6),
                under: None,
            },
        ));
        rows.push(row(
            format!("maximum relay rate, {t} (msg/s)"),
            "rate_max",
            0,
            Goal::AtLeast { node: 1.8 },
        ));
        rows.push(row(
            format!("generator CPU per message at the maximum rate, {t} (µs)"),
            "gen_max",
            2,
            Goal::Context,
        ));
        rows.push(row(
            format!("server CPU per message at {k10}, {t} (µs)"),
            "cpu_10k",
            2,
            at_most(0.5),
        ));
        rows.push(row(
            format!("server CPU per message at {k1}, {t} (µs)"),
            "cpu_1k",
            2,
            Goal::Context,
        ));
        rows.push(row(
            format!("p50 latency at {k10}, pinned, {t} (µs)"),
            "p50_10k",
            0,
            Goal::Context,
        ));
        rows.push(row(
            format!("p99 latency at {k10}, pinned, {t} (µs)"),
            "p99_10k",
            0,
            Goal::AtMost {
                node: 0.7,
                reference: None,
                under: Some((1000.0, "1 ms")),
            },
        ));
        rows.push(row(
            format!("p99 latency at {k1}, pinned, {t} (µs)"),
            "p99_1k",
            0,
            Goal::Context,
        ));
        rows.push(Row {
            none_lost: Some("lost_80k"),
            ..row(
                format!("p99 latency at {k80}, pinned, {t} (µs)"),
                "p99_80k",
                0,
                at_most(0.15),
            )
        });
        rows.push(row(
            format!("idle memory per logged-in connection, {t} (bytes)"),
            "idle",
            0,
            at_most(if tls { 0.4 } else { 0.6 }),
        ));
        rows.push(if tls {
            row(
                "WSS logins per second, full handshakes".to_owned(),
                "logins",
                0,
                Goal::AtLeast { node: 3.0 },
            )
        } else {
            row(
                "WS logins per second".to_owned(),
                "logins",
                0,
                Goal::Context,
            )
        });
    }
    rows.push(Row::new(
        "WSS logins per second, resumed handshakes".to_owned(),
        "logins_resumed",
        0,
        true,
        Goal::AtLeastOwn {
            factor: 2.0,
            figure: "logins",
            named: "dialtone's full",
        },
    ));
    rows
}

/// The main table: each figure's median over the rounds with its min–max spread, for
/// dialtone, Node and the reference relay, and the ratios of the medians.
fn table(rounds: &Rounds, plan: Plan, subject: Kind, others: &[Kind]) -> String {
    let mut out = String::new();
    let name = |kind: Kind| match kind {
        Kind::Dialtone => "dialtone",
        Kind::Baseline => "Node",
        Kind::Reference => "reference",
        Kind::Before => "before",
    };
    let mut header = format!("| what | {}", name(subject));
    for &k in others {
        let _ = write!(header, " | {}", name(k));
    }
    for &k in others {
        let _ = write!(header, " | {} / {}", name(subject), name(k));
    }
    let compare = subject == Kind::Dialtone && others == [Kind::Baseline, Kind::Reference];
    if compare {
        header.push_str(" | target | met");
    }
    let _ = writeln!(out, "{header} |");
    let columns = header.matches(" | ").count() + 1;
    let _ = writeln!(out, "{}|", "|---".repeat(columns));
    for row in rows(plan) {
        let label = |kind| Target::of(kind, row.tls).label();
        if rounds.get(row.figure, label(subject)).is_none() {
            continue;
        }
        let mut line = format!(
            "| {} | {}",
            row.what,
            rounds.shown(row.figure, label(subject), row.digits)
        );
        for &k in others {
            let _ = write!(
                line,
                " | {}",
                rounds.shown(row.figure, label(k), row.digits)
            );
        }
        let d = rounds.median(row.figure, label(subject));
        for &k in others {
            let _ = write!(
                line,
                " | {}",
                shown_ratio(ratio(d, rounds.median(row.figure, label(k))))
            );
        }
        if compare {
            let (n, r) = (
                rounds.median(row.figure, label(Kind::Baseline)),
                rounds.median(row.figure, label(Kind::Reference)),
            );
            let verdict = if d.is_finite() {
                row.met(d, n, r, rounds, label(subject))
            } else {
                None
            };
            let _ = write!(line, " | {} | {}", row.target(), met(verdict));
        }
        let _ = writeln!(out, "{line} |");
    }
    out
}

/// The reconnect storm's rows.
fn storm_table(rounds: &Rounds, plan: Plan, label: &str, out: &mut String) {
    if rounds.get("storm_back", label).is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Reconnect storm\n\n{} logged-in WSS users; {label} restarts (SIGTERM, then a new process on the \
         same port once the old one ended); every user reconnects on the page's own schedule (500 ms \
         doubling to 10 s, each delay times 0.75–1.25) and logs in again. Medians of the rounds with \
         the spread.\n\n| what | {label} | target | met |\n|---|---|---|---|",
        plan.storm_users
    );
    let back = rounds.median("storm_back", label);
    let lost = rounds.get("storm_lost", label).unwrap_or(&[]);
    let peak = rounds.median("storm_peak_ratio", label);
    for (what, figure, digits, target, verdict) in [
        (
            "all logged in again, seconds after SIGTERM",
            "storm_back",
            1,
            "≤ 15 s",
            Some(back <= 15.0),
        ),
        ("failed attempts (retried)", "storm_failed", 0, "", None),
        (
            "users not back within 60 s",
            "storm_lost",
            0,
            "none",
            Some(lost.iter().all(|&l| l == 0.0)),
        ),
        (
            "RSS with every user in, before the restart (MiB)",
            "storm_steady",
            0,
            "",
            None,
        ),
        (
            "peak RSS of the new process (MiB)",
            "storm_peak",
            0,
            "",
            None,
        ),
        (
            "peak / steady RSS",
            "storm_peak_ratio",
            2,
            "< 2×",
            Some(peak < 2.0),
        ),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {} | {target} | {} |",
            rounds.shown(figure, label, digits),
            met(verdict)
        );
    }
}

/// A cluster row: what, figure, digits, over TLS, target, whether (cluster, Node) meet it.
type ClusterRow = (
    String,
    &'static str,
    usize,
    bool,
    &'static str,
    fn(f64, f64) -> Option<bool>,
);

/// The cluster section of the table, beside the single instance and Node of the same run.
fn cluster_table(rounds: &Rounds, cluster: &Result<(), String>, plan: Plan, out: &mut String) {
    let _ = writeln!(
        out,
        "\n## Several instances\n\nTwo dialtone instances and one redis-server, every pair split across the \
         instances (each message crosses Redis pub/sub). CPU for the cluster is both instances \
         plus redis-server. Medians of the rounds with the spread; the latency here is not \
         pinned (three processes on two cores), as before."
    );
    if let Err(why) = cluster {
        let _ = writeln!(out, "\nNot run: {why}.");
        return;
    }
    let _ = writeln!(
        out,
        "\n| what | one instance | cluster of two | Node | cluster / Node | target | met |\n|---|---|---|---|---|---|---|"
    );
    let low = rate_label(10_000.0, plan);
    let redis = rounds.median("cpu_redis", CLUSTER);
    let lost = rounds.get("lost_10k", CLUSTER).unwrap_or(&[]).to_vec();
    let none_lost = lost.iter().all(|&l| l == 0.0);
    let rows: [ClusterRow; 5] = [
        (
            "maximum relay rate, ws (msg/s)".to_owned(),
            "rate_max",
            0,
            false,
            "≥ 1.0×",
            |c, n| Some(c >= n),
        ),
        (
            format!("CPU per relayed message, ws (µs; cluster: {redis:.1} of it redis-server)"),
            "cpu_max",
            2,
            false,
            "≤ 1.0×",
            |c, n| Some(c <= n),
        ),
        (
            format!("p50 latency at {low}, ws (µs)"),
            "p50_10k",
            0,
            false,
            "",
            |_, _| None,
        ),
        (
            format!("p99 latency at {low}, ws (µs)"),
            "p99_10k",
            0,
            false,
            "< 5 ms, none lost",
            |c, _| Some(c < 5000.0),
        ),
        (
            "WSS logins per second".to_owned(),
            "logins",
            0,
            true,
            "",
            |_, _| None,
        ),
    ];
    for (what, figure, digits, tls, target, verdict) in rows {
        let one = Target::of(Kind::Dialtone, tls).label();
        let node = Target::of(Kind::Baseline, tls).label();
        let c = rounds.median(figure, CLUSTER);
        let mut holds = verdict(c, rounds.median(figure, node));
        if figure == "p99_10k" {
            holds = holds.map(|h| h && none_lost);
        }
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {} | {target} | {} |",
            rounds.shown(figure, one, digits),
            rounds.shown(figure, CLUSTER, digits),
            rounds.shown(figure, node, digits),
            shown_ratio(ratio(c, rounds.median(figure, node))),
            met(holds)
        );
    }
    let _ = writeln!(
        out,
        "\nCluster messages lost at {low}, by round: {lost:?}. Single-instance latency rows are pinned; the cluster's are not."
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb >> 20);
    format!("{cores} cores ({cpu}), {memory} GiB; client and servers share the machine")
}

/// The value after `flag` on the command line.
fn arg_value(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--reference-relay") {
        let port = args
            .get(at + 1)
            .context("--reference-relay PORT")?
            .parse()?;
        let tls = args.get(at + 2).cloned().zip(args.get(at + 3).cloned());
        return reference::serve(port, tls).await;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut plan = if quick { Plan::quick() } else { Plan::full() };
    if let Some(n) = arg_value("--rounds") {
        plan.rounds = n.parse().context("--rounds N")?;
    }
    let only = Only(arg_value("--only").map(|list| list.split(',').map(str::to_owned).collect()));
    let before = arg_value("--compare").map(PathBuf::from);
    let transports: Vec<bool> = match arg_value("--transport").as_deref() {
        None => vec![false, true],
        Some("ws") => vec![false],
        Some("wss") => vec![true],
        Some(other) => bail!("--transport ws or wss, not {other}"),
    };
    let repo = std::env::current_dir()?;
    if !repo.join("bench/bench.toml").exists() {
        bail!("run from the repository's top folder (bench/run does)");
    }
    let work = std::env::temp_dir().join(format!("dialtone-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // The benchmark's own certificate, trusted by its clients and used by every server.
    let (cert_pem, key_pem) = dialtone::tls::generate(&["localhost".into()], SystemTime::now())?;
    let paths = Paths {
        cert: work.join("cert.pem"),
        key: work.join("key.pem"),
        repo,
        before: before.clone(),
        work: work.clone(),
    };
    std::fs::write(&paths.cert, &cert_pem)?;
    std::fs::write(&paths.key, &key_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert_pem.as_bytes())?)?;
    let client = || {
        rustls::ClientConfig::builder_with_provider(dialtone::tls::provider())
            .with_safe_default_protocol_versions()
            .map(|c| {
                c.with_root_certificates(roots.clone())
                    .with_no_client_auth()
            })
    };
    let mut full = client()?;
    full.resumption = rustls::client::Resumption::disabled();
    let clients = Clients {
        full: tokio_rustls::TlsConnector::from(Arc::new(full)),
        resuming: tokio_rustls::TlsConnector::from(Arc::new(client()?)),
    };

    eprintln!(
        "dialtone benchmark ({}, {} round(s)); bench/bench.toml raises dialtone's per-connection message rate and per-address connection limits (and the total) so the load generator is not throttled by design",
        if quick { "quick" } else { "full" },
        plan.rounds
    );
    let cluster_only = args.iter().any(|a| a == "--cluster-only");
    let relay_only = args.iter().any(|a| a == "--relay-only");
    let (subject, others) = match before {
        Some(_) => (Kind::Dialtone, vec![Kind::Before]),
        None => (Kind::Dialtone, vec![Kind::Baseline, Kind::Reference]),
    };
    let mut targets = Vec::new();
    for &tls in &transports {
        for kind in std::iter::once(subject).chain(others.iter().copied()) {
            targets.push(Target::of(kind, tls));
        }
    }
    let mut rounds = Rounds::default();
    let single = !cluster_only && !relay_only;
    if single {
        for round in 0..plan.rounds {
            // Alternate the order, so drift on a shared machine hits every target alike.
            let mut order = targets.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            eprintln!("round {} of {}", round + 1, plan.rounds);
            for &target in &order {
                run_target(target, &paths, &clients, plan, &only, &mut rounds).await?;
            }
        }
    }
    // The most idle WSS connections dialtone holds within the descriptor limit: once.
    let mut max_idle = None;
    if single && before.is_none() && only.has("maxidle") && transports.contains(&true) {
        let server = Server::start(Target::of(Kind::Dialtone, true), &paths).await?;
        let most = idle(&server, &clients.full, plan.max_idle).await?;
        server.stop().await;
        eprintln!(
            "dialtone wss: held {} idle WSS connections at {} MiB RSS",
            most.0,
            most.1 >> 20
        );
        max_idle = Some(most);
    }
    let have_redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let cluster_wanted = (single && before.is_none() && only.0.is_none()) || cluster_only;
    let cluster = if !cluster_wanted {
        Err("not run".to_owned())
    } else if have_redis {
        let mut result = Ok(());
        for round in 0..plan.rounds {
            eprintln!("cluster round {} of {}", round + 1, plan.rounds);
            if let Err(err) = run_cluster(&paths, &clients.full, plan, &mut rounds).await {
                result = Err(format!("{err:#}"));
                break;
            }
        }
        result
    } else {
        Err("no redis-server here (apt-get install redis-server)".into())
    };
    let relay_wanted = (single && before.is_none() && only.0.is_none()) || relay_only;
    let relay = if !relay_wanted {
        Err("not run".to_owned())
    } else {
        match relay::unavailable() {
            Some(why) => Err(why),
            None => relay::run(&paths.repo, &work, plan.relay())
                .await
                .map_err(|err| format!("{err:#}")),
        }
    };

    let mut out = String::new();
    if single {
        out.push_str(&table(&rounds, plan, subject, &others));
        if let Some((held, rss, per)) = max_idle {
            let projected = rss as f64 + per * (50_000 - held.min(50_000)) as f64;
            let _ = writeln!(
                out,
                "\nIdle WSS connections held by dialtone: {held} of {} tried, at {} MiB RSS ({per:.0} bytes each); \
                 50,000 would take about {:.0} MiB (target: under 1024).",
                plan.max_idle,
                rss >> 20,
                projected / f64::from(1 << 20)
            );
        }
        let lost: Vec<String> = targets
            .iter()
            .flat_map(|t| {
                ["lost_1k", "lost_10k", "lost_80k"]
                    .map(|f| (f, t.label(), rounds.get(f, t.label())))
            })
            .filter_map(|(f, label, v)| {
                v.filter(|v| v.iter().any(|&l| l > 0.0))
                    .map(|v| format!("{label} {f}: {v:?}"))
            })
            .collect();
        let _ = writeln!(
            out,
            "\nMessages lost at the fixed rates: {}.",
            if lost.is_empty() {
                "none, in every round".to_owned()
            } else {
                lost.join("; ")
            }
        );
        storm_table(&rounds, plan, Target::of(subject, true).label(), &mut out);
        if before.is_some() {
            storm_table(
                &rounds,
                plan,
                Target::of(Kind::Before, true).label(),
                &mut out,
            );
        }
    }
    if cluster_wanted {
        cluster_table(&rounds, &cluster, plan, &mut out);
    }
    if relay_wanted {
        relay::table(&relay, plan.relay(), &mut out);
    }
    let _ = writeln!(
        out,
        "\nRuns dropped for foreign load (over {FOREIGN_LIMIT} of a core used by other processes during the measured window): {}.",
        if rounds.dropped.is_empty() {
            "none".to_owned()
        } else {
            rounds.dropped.join("; ")
        }
    );
    println!("{out}");
    if !quick && single && before.is_none() && only.0.is_none() && plan.rounds >= 3 {
        let date = String::from_utf8(
            std::process::Command::new("date")
                .arg("-u")
                .output()?
                .stdout,
        )?;
        let results = format!(
            "# Benchmark results\n\nDate: {}\nMachine: {}\nCommand: `bench/run`\n\n{out}",
            date.trim(),
            machine()
        );
        std::fs::write(paths.repo.join("bench/RESULTS.md"), results)?;
        eprintln!("written to bench/RESULTS.md");
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict in the main table's row for `what` (the last cell).
    fn verdict<'a>(table: &'a str, what: &str) -> (&'a str, &'a str) {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {what}")))
            .unwrap_or_else(|| panic!("no row {what} in\n{table}"));
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        (cells[cells.len() - 2].trim(), cells[cells.len() - 1].trim())
    }

    #[test]
    fn the_table_checks_each_target_against_its_own_transports_figures() {
        let plan = Plan::full();
        let mut rounds = Rounds::default();
        for (label, cpu, idle, lost, p99) in [
            ("dialtone ws", 2.0, 5_000.0, 0.0, 500.0),
            ("dialtone wss", 3.0, 13_500.0, 4.0, 900.0),
            ("Node ws", 10.0, 10_000.0, 0.0, 5_000.0),
            ("Node wss", 10.0, 30_000.0, 0.0, 5_000.0),
            ("reference ws", 1.0, 4_000.0, 0.0, 400.0),
            ("reference wss", 2.0, 8_000.0, 0.0, 400.0),
        ] {
            rounds.add("cpu_max", label, cpu);
            rounds.add("idle", label, idle);
            rounds.add("p99_80k", label, p99);
            rounds.add("lost_80k", label, lost);
            rounds.add("p99_10k", label, p99 * 1.5);
        }
        for (label, full, resumed) in [
            ("dialtone wss", 3_000.0, 6_500.0),
            ("Node wss", 900.0, 1_000.0),
        ] {
            rounds.add("logins", label, full);
            rounds.add("logins_resumed", label, resumed);
        }
        let table = table(
            &rounds,
            plan,
            Kind::Dialtone,
            &[Kind::Baseline, Kind::Reference],
        );
        let cpu = "server CPU per message at the maximum rate";
        // ws: 2.0 ≤ 0.3 × 10 and ≤ 1.6 × 1.0 fails the reference half.
        assert_eq!(
            verdict(&table, &format!("{cpu}, ws")),
            ("≤ 0.3× Node, ≤ 1.6× reference", "**no**")
        );
        // wss: 3.0 ≤ 3.0 and ≤ 3.2.
        assert_eq!(verdict(&table, &format!("{cpu}, wss")).1, "yes");
        // 0.5 and 0.45 of Node: each transport has its own factor.
        assert_eq!(
            verdict(&table, "idle memory per logged-in connection, ws"),
            ("≤ 0.6× Node", "yes")
        );
        assert_eq!(
            verdict(&table, "idle memory per logged-in connection, wss"),
            ("≤ 0.4× Node", "**no**")
        );
        // Losses count only for the transport that lost: wss lost 4 frames at 80k.
        let p99 = "p99 latency at 80k msg/s, pinned";
        assert_eq!(
            verdict(&table, &format!("{p99}, ws")),
            ("≤ 0.15× Node, none lost", "yes")
        );
        assert_eq!(
            verdict(&table, &format!("{p99}, wss")),
            ("≤ 0.15× Node, none lost", "**no**")
        );
        // wss: 1,350 µs is under 0.7× Node but not under 1 ms.
        let p99 = "p99 latency at 10k msg/s, pinned";
        assert_eq!(
            verdict(&table, &format!("{p99}, ws")),
            ("< 1 ms, ≤ 0.7× Node", "yes")
        );
        assert_eq!(verdict(&table, &format!("{p99}, wss")).1, "**no**");
        assert_eq!(
            verdict(&table, "WSS logins per second, full handshakes"),
            ("≥ 3× Node", "yes")
        );
        assert_eq!(
            verdict(&table, "WSS logins per second, resumed handshakes"),
            ("≥ 2× dialtone's full", "yes")
        );
        // Rows without figures are left out.
        assert!(!table.contains("maximum relay rate"));
    }
}
