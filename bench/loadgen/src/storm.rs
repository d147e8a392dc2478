//! The reconnect storm: many logged-in WSS users, dialtone restarts (SIGTERM, then a new
//! process on the same port, as systemd or a redeploy does), and every user comes back on the
//! page's own schedule (`public/app.js`: 500 ms doubling to 10 s, each delay times 0.75–1.25).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;

use crate::{Paths, Server, Target, connect, login};

/// app.js's RECONNECT_MAX_MS and first delay.
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(10);
/// How long after the restart a user still counts as coming back.
const GIVE_UP: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, Default)]
pub struct Storm {
    pub users: usize,
    /// From SIGTERM to the last user logged in again.
    pub all_back: Duration,
    /// Connects or logins that failed and were retried.
    pub failed_attempts: u64,
    /// Users not back within GIVE_UP.
    pub lost: u64,
    /// The old process's RSS with every user logged in, settled.
    pub steady_rss: u64,
    /// The new process's peak RSS (VmHWM) through the storm.
    pub peak_rss: u64,
}

/// A small xorshift for the jitter: the page uses Math.random().
struct Jitter(u64);

impl Jitter {
    fn factor(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        0.75 + (self.0 >> 11) as f64 / (1u64 << 53) as f64 / 2.0
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub async fn run(
    target: Target,
    paths: &Paths,
    tls: &tokio_rustls::TlsConnector,
    users: usize,
) -> anyhow::Result<Storm> {
    let server = Server::start(target, paths).await?;
    let endpoint = server.endpoint();
    // Log everyone in, a hundred at a time.
    let mut sockets = Vec::with_capacity(users);
    for chunk in 0..users.div_ceil(100) {
        let batch = (chunk * 100..((chunk + 1) * 100).min(users)).map(|i| async move {
            let mut ws = connect(endpoint, tls, i).await?;
            login(&mut ws, &format!("s{i}")).await?;
            anyhow::Ok(ws)
        });
        for ws in futures_util::future::join_all(batch).await {
            sockets.push(ws.context("logging the storm's users in")?);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steady_rss = status_kib(server.pid, "VmRSS:") * 1024;

    let back = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let last_back_ms = Arc::new(AtomicU64::new(0));
    let restart = Instant::now();
    let mut tasks = Vec::with_capacity(users);
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (back, failed, last_back_ms, tls) = (
            back.clone(),
            failed.clone(),
            last_back_ms.clone(),
            tls.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Until the server closes the socket (1001, restarting) or it drops.
            while let Some(Ok(_)) = ws.next().await {}
            drop(ws);
            let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
            let mut delay = FIRST_DELAY;
            let mut held = None;
            while restart.elapsed() < GIVE_UP {
                tokio::time::sleep(delay.mul_f64(jitter.factor())).await;
                delay = (delay * 2).min(MAX_DELAY);
                let attempt = async {
                    let mut ws = connect(endpoint, &tls, i).await?;
                    login(&mut ws, &format!("s{i}")).await?;
                    anyhow::Ok(ws)
                };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(ws)) => {
                        back.fetch_add(1, Ordering::Relaxed);
                        last_back_ms
                            .fetch_max(restart.elapsed().as_millis() as u64, Ordering::Relaxed);
                        held = Some(ws);
                        break;
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Hold the socket until the storm is over (the task is aborted).
            std::future::pending::<()>().await;
            drop(held);
        }));
    }
    // The restart: SIGTERM, wait for the old process to end, start the new one on the port.
    let old_pid = server.pid;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &old_pid.to_string()])
        .status();
    server.wait_exit(Duration::from_secs(20)).await;
    let server = Server::start_on(target, paths, "", Some(endpoint.port), None).await?;
    while back.load(Ordering::Relaxed) < users as u64 && restart.elapsed() < GIVE_UP {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak_rss = status_kib(server.pid, "VmHWM:") * 1024;
    let got = back.load(Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    server.stop().await;
    Ok(Storm {
        users,
        all_back: Duration::from_millis(last_back_ms.load(Ordering::Relaxed)),
        failed_attempts: failed.load(Ordering::Relaxed),
        lost: users as u64 - got,
        steady_rss,
        peak_rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_three_quarters_to_five_quarters() {
        let mut j = Jitter(42);
        let draws: Vec<f64> = (0..10_000).map(|_| j.factor()).collect();
        assert!(draws.iter().all(|f| (0.75..1.25).contains(f)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
    }
}
