//! The servers under test: dialtone (TLS off and on), the Node baseline, the reference
//! relay, another dialtone to compare with, and two dialtone instances on one redis-server;
//! each started on a free loopback port and killed when dropped.

use super::*;

pub(crate) struct Paths {
    pub(crate) repo: PathBuf,
    /// The dialtone binary `--compare` measures against.
    pub(crate) before: Option<PathBuf>,
    pub(crate) work: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Where a client connects.
#[derive(Clone, Copy)]
pub(crate) struct Endpoint {
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

/// A server process started for one scenario; killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) port: u16,
    pub(crate) target: Target,
}

/// What a scenario drives: one server, or a cluster of two. Side 0 and side 1 are where the
/// two users of a pair connect (the same server, or the two instances).
pub(crate) trait Under {
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
pub(crate) struct Cluster {
    pub(crate) redis: Child,
    pub(crate) redis_pid: u32,
    pub(crate) servers: [Server; 2],
}

impl Cluster {
    pub(crate) async fn start(tls: bool, paths: &Paths) -> anyhow::Result<Cluster> {
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

    pub(crate) async fn stop(mut self) {
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
    pub(crate) async fn start(target: Target, paths: &Paths) -> anyhow::Result<Server> {
        Server::start_with(target, paths, "").await
    }

    pub(crate) async fn start_with(
        target: Target,
        paths: &Paths,
        extra: &str,
    ) -> anyhow::Result<Server> {
        Server::start_on(target, paths, extra, None, None).await
    }

    /// On core 1 alone, from its start (so its runtime sizes itself to one core), when the
    /// machine can pin; as `start` otherwise.
    pub(crate) async fn start_pinned(target: Target, paths: &Paths) -> anyhow::Result<Server> {
        let cores = measure::can_pin().then_some("1");
        Server::start_on(target, paths, "", None, cores).await
    }

    /// `extra` is appended to dialtone's config (a `[cluster]` table); `port` is a free one
    /// unless given (a restart on the same port); `cores`, a taskset core list to start on.
    pub(crate) async fn start_on(
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

    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            port: self.port,
            tls: self.target.tls,
        }
    }

    pub(crate) fn rss_bytes(&self) -> u64 {
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

    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to end by itself (after a SIGTERM), killing it after `limit`.
    pub(crate) async fn wait_exit(mut self, limit: Duration) {
        if tokio::time::timeout(limit, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
