//! dialtone's benchmark. Starts dialtone (TLS off and on) and the tutorial's Node server
//! (bench/baseline-node, plain and with TLS), drives each over loopback with the real
//! protocol, stops them, and prints the figures and the ratios dialtone / baseline.
//!
//! Every load is bounded in count and time, goes to 127.0.0.0/8 only, and stops by itself.
//! Run it through `bench/run`, which builds what it needs.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

mod relay;

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
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dialtone,
    Baseline,
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
            (Kind::Baseline, false) => "baseline ws",
            (Kind::Baseline, true) => "baseline wss",
        }
    }
}

const TARGETS: [Target; 4] = [
    Target {
        kind: Kind::Dialtone,
        tls: false,
    },
    Target {
        kind: Kind::Dialtone,
        tls: true,
    },
    Target {
        kind: Kind::Baseline,
        tls: false,
    },
    Target {
        kind: Kind::Baseline,
        tls: true,
    },
];

struct Paths {
    repo: PathBuf,
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
    /// CPU time of every process serving the load, process by process.
    fn cpu_parts(&self) -> Vec<Duration>;
}

impl Under for Server {
    fn endpoint(&self, _side: usize) -> Endpoint {
        Server::endpoint(self)
    }

    fn cpu_parts(&self) -> Vec<Duration> {
        vec![cpu_of(self.pid)]
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
    fn cpu_parts(&self) -> Vec<Duration> {
        let mut parts: Vec<_> = self.servers.iter().map(|s| cpu_of(s.pid)).collect();
        parts.push(cpu_of(self.redis_pid));
        parts
    }
}

/// User + system CPU time a process has used.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

impl Server {
    async fn start(target: Target, paths: &Paths) -> anyhow::Result<Server> {
        Server::start_with(target, paths, "").await
    }

    /// `extra` is appended to dialtone's config (a `[cluster]` table).
    async fn start_with(target: Target, paths: &Paths, extra: &str) -> anyhow::Result<Server> {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut command = match target.kind {
                Kind::Dialtone => {
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
                    let mut command = Command::new(paths.repo.join("target/release/dialtone"));
                    command.arg("--config").arg(config);
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
            command
                .env("PORT", port.to_string())
                .env_remove("RUST_LOG")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            if target.kind == Kind::Dialtone {
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
    let (count0, cpu0, t0) = (
        received.load(Ordering::Relaxed),
        server.cpu_parts(),
        Instant::now(),
    );
    tokio::time::sleep(plan.measure).await;
    let (count1, cpu1, t1) = (
        received.load(Ordering::Relaxed),
        server.cpu_parts(),
        Instant::now(),
    );
    stop.store(true, Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    let messages = count1.saturating_sub(count0).max(1);
    let used: Duration = cpu1.iter().sum::<Duration>() - cpu0.iter().sum::<Duration>();
    let last = cpu1.last().copied().unwrap_or_default() - cpu0.last().copied().unwrap_or_default();
    Ok(Throughput {
        rate: messages as f64 / (t1 - t0).as_secs_f64(),
        cpu_per_message: used / messages as u32,
        last_part_per_message: last / messages as u32,
    })
}

#[derive(Default, Clone, Copy)]
struct Latency {
    sent: u64,
    received: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// A fixed total rate spread over the pairs; latency from send to receive, end to end.
async fn latency_at(
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
    Ok(Latency {
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

/// TCP connect, TLS handshake, upgrade, login, close: as many as `workers` manage.
async fn logins_per_second(
    server: &impl Under,
    tls: &tokio_rustls::TlsConnector,
    plan: Plan,
) -> anyhow::Result<f64> {
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
    let (n0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(plan.measure).await;
    let (n1, t1) = (done.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok((n1 - n0) as f64 / (t1 - t0).as_secs_f64())
}

/// All figures of one run.
struct Figures {
    throughput: [Throughput; 4],
    latency_10k: [Latency; 4],
    latency_80k: [Latency; 4],
    idle_bytes: [f64; 4],
    logins: [f64; 4],
    max_idle: Option<(usize, u64, f64)>,
    /// The cluster section, or why it did not run.
    cluster: Result<ClusterFigures, String>,
    /// The relay section's runs, or why it did not run.
    relay: Result<Vec<(relay::Relay, relay::RelayRun)>, String>,
}

/// Two instances on one Redis: relay over ws, logins over wss.
#[derive(Default, Clone, Copy)]
struct ClusterFigures {
    throughput: Throughput,
    latency_10k: Latency,
    logins: f64,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            throughput: Default::default(),
            latency_10k: Default::default(),
            latency_80k: Default::default(),
            idle_bytes: Default::default(),
            logins: Default::default(),
            max_idle: None,
            cluster: Err("not run".into()),
            relay: Err("not run".into()),
        }
    }
}

/// The cluster scenarios, each on a fresh cluster like the single-server ones.
async fn run_cluster(
    paths: &Paths,
    tls: &tokio_rustls::TlsConnector,
    plan: Plan,
) -> anyhow::Result<ClusterFigures> {
    let mut figures = ClusterFigures::default();
    let cluster = Cluster::start(false, paths).await?;
    let t = max_rate(&cluster, tls, plan).await?;
    eprintln!(
        "cluster ws: max rate {:.0} msg/s, {:.1} µs CPU/msg (both instances and redis-server, \
         of which redis-server {:.1})",
        t.rate,
        micros(t.cpu_per_message),
        micros(t.last_part_per_message)
    );
    figures.throughput = t;
    cluster.stop().await;

    let cluster = Cluster::start(false, paths).await?;
    let l = latency_at(&cluster, tls, plan, 10_000.0 * plan_scale(plan)).await?;
    eprintln!(
        "cluster ws: at 10k msg/s p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, {} of {} received",
        micros(l.p50),
        micros(l.p99),
        micros(l.max),
        l.received,
        l.sent
    );
    figures.latency_10k = l;
    cluster.stop().await;

    let cluster = Cluster::start(true, paths).await?;
    figures.logins = logins_per_second(&cluster, tls, plan).await?;
    eprintln!("cluster wss: {:.0} logins/s", figures.logins);
    cluster.stop().await;
    Ok(figures)
}

/// The cluster section of the table, beside the single instance and the baseline of the
/// same run.
fn cluster_table(f: &Figures, plan: Plan, out: &mut String) {
    let _ = writeln!(
        out,
        "\n## Several instances\n\nTwo dialtone instances and one redis-server, every pair split across the \
         instances (each message crosses Redis pub/sub). CPU for the cluster is both instances \
         plus redis-server."
    );
    let c = match &f.cluster {
        Ok(c) => *c,
        Err(why) => {
            let _ = writeln!(out, "\nNot run: {why}.");
            return;
        }
    };
    let _ = writeln!(
        out,
        "\n| what | one instance | cluster of two | baseline | cluster / baseline | target | met |\n|---|---|---|---|---|---|---|"
    );
    let mut row = |what: &str,
                   one: String,
                   cluster: String,
                   base: String,
                   ratio: Option<f64>,
                   target: &str,
                   met: Option<bool>| {
        let ratio = ratio.map_or("–".to_owned(), |r| format!("{r:.2}×"));
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(
            out,
            "| {what} | {one} | {cluster} | {base} | {ratio} | {target} | {met} |"
        );
    };
    let (one, base) = (f.throughput[0], f.throughput[2]);
    let r = ratio(c.throughput.rate, base.rate);
    row(
        "maximum relay rate, ws (msg/s)",
        format!("{:.0}", one.rate),
        format!("{:.0}", c.throughput.rate),
        format!("{:.0}", base.rate),
        Some(r),
        "≥ 1.0×",
        Some(r >= 1.0),
    );
    let r = ratio(
        micros(c.throughput.cpu_per_message),
        micros(base.cpu_per_message),
    );
    let redis_share = micros(c.throughput.last_part_per_message);
    row(
        &format!("CPU per relayed message, ws (µs; cluster: {redis_share:.1} of it redis-server)"),
        format!("{:.1}", micros(one.cpu_per_message)),
        format!("{:.1}", micros(c.throughput.cpu_per_message)),
        format!("{:.1}", micros(base.cpu_per_message)),
        Some(r),
        "≤ 1.0×",
        Some(r <= 1.0),
    );
    let low = rate_label(10_000.0, plan);
    let (one, base) = (f.latency_10k[0], f.latency_10k[2]);
    row(
        &format!("p50 latency at {low}, ws (µs)"),
        format!("{:.0}", micros(one.p50)),
        format!("{:.0}", micros(c.latency_10k.p50)),
        format!("{:.0}", micros(base.p50)),
        Some(ratio(micros(c.latency_10k.p50), micros(base.p50))),
        "",
        None,
    );
    let p99 = micros(c.latency_10k.p99);
    row(
        &format!("p99 latency at {low}, ws (µs)"),
        format!("{:.0}", micros(one.p99)),
        format!("{p99:.0}"),
        format!("{:.0}", micros(base.p99)),
        Some(ratio(p99, micros(base.p99))),
        "< 5 ms, none lost",
        Some(p99 < 5000.0 && c.latency_10k.received >= c.latency_10k.sent),
    );
    row(
        "WSS logins per second",
        format!("{:.0}", f.logins[1]),
        format!("{:.0}", c.logins),
        format!("{:.0}", f.logins[3]),
        Some(ratio(c.logins, f.logins[3])),
        "",
        None,
    );
    let _ = writeln!(
        out,
        "\nCluster latency at {low}: p50 / p99 / max {:.0} / {:.0} / {:.0} µs; {} of {} received.",
        micros(c.latency_10k.p50),
        micros(c.latency_10k.p99),
        micros(c.latency_10k.max),
        c.latency_10k.received,
        c.latency_10k.sent
    );
}

async fn run_target(
    index: usize,
    target: Target,
    paths: &Paths,
    tls: &tokio_rustls::TlsConnector,
    plan: Plan,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let label = target.label();
    let fresh = || Server::start(target, paths);

    let server = fresh().await?;
    let t = max_rate(&server, tls, plan).await?;
    eprintln!(
        "{label}: max rate {:.0} msg/s, {:.1} µs CPU/msg",
        t.rate,
        micros(t.cpu_per_message)
    );
    figures.throughput[index] = t;
    server.stop().await;

    for (rate, slot) in [
        (10_000.0, &mut figures.latency_10k),
        (80_000.0, &mut figures.latency_80k),
    ] {
        let server = fresh().await?;
        let l = latency_at(&server, tls, plan, rate * plan_scale(plan)).await?;
        eprintln!(
            "{label}: at {rate} msg/s p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, {} of {} received",
            micros(l.p50),
            micros(l.p99),
            micros(l.max),
            l.received,
            l.sent
        );
        slot[index] = l;
        server.stop().await;
    }

    let server = fresh().await?;
    let (held, _, per) = idle(&server, tls, plan.idle).await?;
    eprintln!("{label}: {held} idle logged-in connections, {per:.0} bytes each");
    figures.idle_bytes[index] = per;
    server.stop().await;

    let server = fresh().await?;
    let rate = logins_per_second(&server, tls, plan).await?;
    eprintln!("{label}: {rate:.0} logins/s");
    figures.logins[index] = rate;
    server.stop().await;

    if target.kind == Kind::Dialtone && target.tls {
        let server = fresh().await?;
        let most = idle(&server, tls, plan.max_idle).await?;
        eprintln!(
            "{label}: held {} idle WSS connections at {} MiB RSS",
            most.0,
            most.1 >> 20
        );
        figures.max_idle = Some(most);
        server.stop().await;
    }
    Ok(())
}

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

/// The table: dialtone's figures, the baseline's, the ratio, the target, and whether it holds.
fn table(f: &Figures, plan: Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| what | dialtone ws | dialtone wss | baseline ws | baseline wss | ratio | target | met |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let mut row = |what: &str, values: [String; 4], ratio: f64, target: &str, met: bool| {
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {} | {ratio:.2}× | {target} | {} |",
            values[0],
            values[1],
            values[2],
            values[3],
            if met { "yes" } else { "**no**" }
        );
    };
    let cpu = f.throughput.map(|t| micros(t.cpu_per_message));
    let r = ratio(cpu[0], cpu[2]);
    row(
        "server CPU per relayed message (µs)",
        cpu.map(|v| format!("{v:.1}")),
        r,
        "≤ 0.4×",
        r <= 0.4,
    );
    let rate = f.throughput.map(|t| t.rate);
    let r = ratio(rate[0], rate[2]);
    row(
        "maximum relay rate (msg/s)",
        rate.map(|v| format!("{v:.0}")),
        r,
        "≥ 1.8×",
        r >= 1.8,
    );
    // The quick plan runs the fixed rates scaled down; say which rate was run.
    let (low, high) = (rate_label(10_000.0, plan), rate_label(80_000.0, plan));
    let p99 = f.latency_10k.map(|l| micros(l.p99));
    let r = ratio(p99[0], p99[2]);
    row(
        &format!("p99 latency at {low} (µs)"),
        p99.map(|v| format!("{v:.0}")),
        r,
        "≤ 0.7×, < 1 ms",
        r <= 0.7 && p99[0] < 1000.0,
    );
    let p99 = f.latency_80k.map(|l| micros(l.p99));
    let lost = f.latency_80k.map(|l| l.sent.saturating_sub(l.received));
    let r = ratio(p99[0], p99[2]);
    row(
        &format!("p99 latency at {high} (µs)"),
        p99.map(|v| format!("{v:.0}")),
        r,
        "≤ 0.15×, none lost",
        r <= 0.15 && lost[0] == 0,
    );
    let idle = f.idle_bytes;
    let r = ratio(idle[0], idle[2]);
    row(
        "idle memory per connection, ws (bytes)",
        idle.map(|v| format!("{v:.0}")),
        r,
        "≤ 0.75×",
        r <= 0.75,
    );
    let r = ratio(idle[1], idle[3]);
    row(
        "idle memory per connection, wss (bytes)",
        idle.map(|v| format!("{v:.0}")),
        r,
        "≤ 0.4×",
        r <= 0.4,
    );
    let logins = f.logins;
    let r = ratio(logins[1], logins[3]);
    row(
        "WSS logins per second",
        logins.map(|v| format!("{v:.0}")),
        r,
        "≥ 2.5×",
        r >= 2.5,
    );
    if let Some((held, rss, per)) = f.max_idle {
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
    let _ = writeln!(
        out,
        "\nLatency detail (p50 / p99 / max in µs, received of sent):"
    );
    for (name, set) in [(&low, &f.latency_10k), (&high, &f.latency_80k)] {
        for (i, target) in TARGETS.iter().enumerate() {
            let l = set[i];
            let _ = writeln!(
                out,
                "- {name}, {}: {:.0} / {:.0} / {:.0}; {} of {}",
                target.label(),
                micros(l.p50),
                micros(l.p99),
                micros(l.max),
                l.received,
                l.sent
            );
        }
    }
    out
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let repo = std::env::current_dir()?;
    if !repo.join("bench/bench.toml").exists() {
        bail!("run from the repository's top folder (bench/run does)");
    }
    let work = std::env::temp_dir().join(format!("dialtone-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // The benchmark's own certificate, trusted by its clients and used by both servers.
    let (cert_pem, key_pem) = dialtone::tls::generate(&["localhost".into()], SystemTime::now())?;
    let paths = Paths {
        cert: work.join("cert.pem"),
        key: work.join("key.pem"),
        repo,
        work: work.clone(),
    };
    std::fs::write(&paths.cert, &cert_pem)?;
    std::fs::write(&paths.key, &key_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert_pem.as_bytes())?)?;
    let client = rustls::ClientConfig::builder_with_provider(dialtone::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client));

    eprintln!(
        "dialtone benchmark ({}); bench/bench.toml raises dialtone's per-connection message rate and per-address connection limits (and the total) so the load generator is not throttled by design",
        if quick { "quick" } else { "full" }
    );
    let mut figures = Figures::default();
    // Alternate dialtone and baseline so drift on a shared machine hits both.
    // --cluster-only and --relay-only: that section alone, for working on it (no RESULTS.md).
    let cluster_only = std::env::args().any(|a| a == "--cluster-only");
    let relay_only = std::env::args().any(|a| a == "--relay-only");
    let single = if cluster_only || relay_only { 0 } else { 4 };
    for (index, target) in [
        (0, TARGETS[0]),
        (2, TARGETS[2]),
        (1, TARGETS[1]),
        (3, TARGETS[3]),
    ]
    .into_iter()
    .take(single)
    {
        run_target(index, target, &paths, &tls, plan, &mut figures).await?;
    }
    let have_redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    figures.cluster = if relay_only {
        Err("not run (--relay-only)".into())
    } else if have_redis {
        run_cluster(&paths, &tls, plan)
            .await
            .map_err(|err| format!("{err:#}"))
    } else {
        Err("no redis-server here (apt-get install redis-server)".into())
    };
    if !cluster_only {
        figures.relay = match relay::unavailable() {
            Some(why) => Err(why),
            None => relay::run(&paths.repo, &work, plan.relay())
                .await
                .map_err(|err| format!("{err:#}")),
        };
    }
    let mut table = if relay_only {
        String::new()
    } else {
        let mut table = table(&figures, plan);
        cluster_table(&figures, plan, &mut table);
        table
    };
    relay::table(&figures.relay, plan.relay(), &mut table);
    println!("{table}");
    if !quick && !cluster_only && !relay_only {
        let date = String::from_utf8(
            std::process::Command::new("date")
                .arg("-u")
                .output()?
                .stdout,
        )?;
        let results = format!(
            "# Benchmark results\n\nDate: {}\nMachine: {}\nCommand: `bench/run`\n\n{table}",
            date.trim(),
            machine()
        );
        std::fs::write(paths.repo.join("bench/RESULTS.md"), results)?;
        eprintln!("written to bench/RESULTS.md");
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
