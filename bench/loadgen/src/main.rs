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

mod client;
mod load;
mod measure;
mod reference;
mod relay;
mod report;
mod servers;
mod storm;

use client::*;
use load::*;
use report::*;
use servers::*;

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
            None => relay::run(&paths.repo, before.as_deref(), &work, plan.relay())
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
