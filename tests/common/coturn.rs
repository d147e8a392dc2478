//! A real coturn (Debian's `coturn` package) for a test: `turnserver` on a free loopback port
//! with the TURN REST scheme (`--use-auth-secret`), its log, PID file and database in a
//! temporary folder, stopped by its PID; and `turnutils_uclient`, coturn's own client, to
//! allocate relays through a TURN server and send through them. Without the package the test
//! is skipped, except under `CI=true`, where that is a failure.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one `turnutils_uclient` run may take (it needs well under a second here).
const CLIENT_PATIENCE: Duration = Duration::from_secs(20);

pub struct Coturn {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

/// Whether coturn's programs can run here; panics under CI when they cannot.
pub fn available() -> bool {
    super::have("turnserver", "--version", "coturn")
}

impl Coturn {
    /// `turnserver` accepting credentials made from `secret`, relaying on 127.0.0.1 only, or
    /// `None` (test skipped) without coturn.
    pub fn start(secret: &str) -> Option<Coturn> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = super::free_port();
            let mut child = turnserver(dir.path(), port, secret)
                .spawn()
                .expect("turnserver runs");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait().unwrap().is_some() {
                    // Its port (UDP or TCP) was taken: try another.
                    break;
                }
                if super::process::listens_on(child.id(), port) {
                    return Some(Coturn { port, child, dir });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "turnserver did not start on any of five free ports:\n{}",
            std::fs::read_to_string(dir.path().join("turn.log")).unwrap_or_default()
        );
    }

    /// What turnserver wrote to its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turn.log")).unwrap_or_default()
    }
}

/// The server: no config file, UDP and TCP on `port`, no TLS/DTLS listeners, no telnet CLI
/// (its fixed port would clash between tests), and loopback peers allowed, because the two
/// test clients' relays are on 127.0.0.1. (Only here: that is what a production relay denies.)
fn turnserver(dir: &Path, port: u16, secret: &str) -> Command {
    let mut command = Command::new("turnserver");
    command
        .arg("-n")
        .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .arg(format!("--listening-port={port}"))
        .arg("--use-auth-secret")
        .arg(format!("--static-auth-secret={secret}"))
        .args(["--realm", "dialtone"])
        .args([
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
        ])
        .arg(format!("--userdb={}", dir.join("turndb").display()))
        .arg(format!("--pidfile={}", dir.join("turn.pid").display()))
        .arg(format!("--log-file={}", dir.join("turn.log").display()))
        .arg("--simple-log")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one `turnutils_uclient` run did.
pub struct Relayed {
    /// Whether both clients got their allocation (the client exits 0).
    pub allocated: bool,
    /// Messages the two clients received from each other through their relays.
    pub received: u64,
    /// Everything the client printed, for assertion messages.
    pub output: String,
}

/// Messages each of the two clients sends.
pub const MESSAGES: u64 = 5;

/// Two clients on 127.0.0.1 each allocate a UDP relay on the TURN server at `port` with
/// `username` and `password`, then send [`MESSAGES`] to each other through the relays
/// (`-y`); run with a deadline, off the async runtime.
pub fn relay_between_two_clients(port: u16, username: &str, password: &str) -> Relayed {
    uclient(
        None,
        "127.0.0.1".parse().unwrap(),
        port,
        username,
        password,
        &["-y"],
    )
}

/// `turnutils_uclient` against `server:port`, in network namespace `netns` when given, with
/// `args` after the credentials (`-y` for two clients relaying to each other, `-e PEER` for
/// one sending to PEER), one client, [`MESSAGES`] messages, no RTCP.
pub fn uclient(
    netns: Option<&str>,
    server: std::net::IpAddr,
    port: u16,
    username: &str,
    password: &str,
    args: &[&str],
) -> Relayed {
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, "turnutils_uclient"]);
            command
        }
        None => Command::new("turnutils_uclient"),
    };
    let mut child = command
        .args(["-u", username, "-w", password])
        .args(["-p", &port.to_string()])
        .args(["-c", "-m", "1", "-n", &MESSAGES.to_string()])
        .args(args)
        .arg(server.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("turnutils_uclient runs");
    let deadline = Instant::now() + CLIENT_PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    let output = String::from_utf8_lossy(&stdout).into_owned() + &String::from_utf8_lossy(&stderr);
    // The last summary line: "start_mclient: tot_send_msgs=10, tot_recv_msgs=10".
    let received = output
        .lines()
        .filter_map(|line| line.split_once("tot_recv_msgs=")?.1.split(',').next())
        .filter_map(|count| count.trim().parse().ok())
        .next_back()
        .unwrap_or(0);
    Relayed {
        allocated: status.success(),
        received,
        output,
    }
}
