//! The loads and what they measure: the maximum relay rate, latency and CPU at fixed rates,
//! idle memory, logins per second, and the rounds that run each target.

use super::*;

#[derive(Default, Clone, Copy)]
pub(crate) struct Throughput {
    pub(crate) rate: f64,
    pub(crate) cpu_per_message: Duration,
    /// Of that, the last process's share (redis-server, in a cluster).
    pub(crate) last_part_per_message: Duration,
    /// The generator's own CPU per message.
    pub(crate) generator_per_message: Duration,
    /// Foreign load during the window, in cores.
    pub(crate) foreign: f64,
}

impl Throughput {
    pub(crate) fn of(messages: u64, spent: &Spent) -> Throughput {
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
pub(crate) async fn max_rate(
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
pub(crate) struct Latency {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    /// Server CPU per message over the measured window.
    pub(crate) cpu_per_message: Duration,
    pub(crate) foreign: f64,
}

/// A fixed total rate spread over the pairs; latency from send to receive, end to end. With
/// `pinned`, the server runs on core 1 and this generator on core 0 (when there are two).
pub(crate) async fn latency_at(
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

pub(crate) async fn latency_run(
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

/// Logged-in idle connections: how many the server held, and its RSS growth per connection.
pub(crate) async fn idle(
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
pub(crate) async fn logins_per_second(
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
pub(crate) async fn steady<T, F, Fut>(
    what: &str,
    rounds: &mut Rounds,
    mut run: F,
) -> anyhow::Result<T>
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
pub(crate) struct Only(pub(crate) Option<Vec<String>>);

impl Only {
    pub(crate) fn has(&self, scenario: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == scenario))
    }
}

/// The two TLS client configurations: one that never resumes (every handshake full), one
/// with rustls's session cache (resumes once the server has handed it a ticket).
pub(crate) struct Clients {
    pub(crate) full: tokio_rustls::TlsConnector,
    pub(crate) resuming: tokio_rustls::TlsConnector,
}

/// Every scenario of one round against one target, each on a fresh server.
pub(crate) async fn run_target(
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
pub(crate) async fn run_cluster(
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
