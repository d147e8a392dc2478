//! The real `dialtone` binary, started by a test: its banner read, its log kept in a file,
//! signals sent by PID, and killed on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::repo_public;

pub fn dialtone() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dialtone"));
    command.env_remove("PORT").env("RUST_LOG", "info");
    command
}

/// Runs `start` with a port that was free a moment ago (PORT cannot be 0). Another test may
/// take that port before the binary binds it, so `start` returning `None` means try another.
pub fn on_free_port<T>(mut start: impl FnMut(u16) -> Option<T>) -> (u16, T) {
    for _ in 0..5 {
        let port = super::free_port();
        if let Some(started) = start(port) {
            return (port, started);
        }
    }
    panic!("the binary did not start on any of five free ports");
}

pub fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("dialtone.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes a config into `dir`: listening on 127.0.0.1:0, serving the repository's page, then
/// `extra`.
pub fn config_in(dir: &Path, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "listen = \"127.0.0.1:0\"\npublic_dir = {:?}\n{extra}",
            repo_public().display().to_string()
        ),
    )
}

/// Writes a config with [`config_in`] and starts the binary with it.
pub fn start_in(dir: &Path, extra: &str) -> (std::path::PathBuf, Running) {
    let path = config_in(dir, extra);
    let mut command = dialtone();
    command.arg("--config").arg(&path);
    (path.clone(), Running::start(command))
}

/// A running binary whose banner has been read; killed on drop if still running.
pub struct Running {
    child: Child,
    banner: Vec<String>,
    /// Where the binary's stderr (its log) goes.
    log: Option<tempfile::NamedTempFile>,
}

impl Running {
    pub fn start(command: Command) -> Running {
        Running::try_start(command).expect("the binary printed its banner")
    }

    /// `None` when the binary exits without a banner (it could not start).
    pub fn try_start(mut command: Command) -> Option<Running> {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stdout for the child's whole life, as a terminal would.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Through a terminal (tests/cli.rs runs it under `script`) lines end in CRLF.
                let _ = tx.send(line.trim_end_matches('\r').to_owned());
            }
        });
        let mut banner = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            let last = line == "Press Ctrl-C to stop.";
            banner.push(line);
            if last {
                break;
            }
        }
        if banner.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Running {
            child,
            banner,
            log: Some(log),
        })
    }

    /// Starts the binary without waiting for its banner (which may never come: an ACME
    /// start that cannot get a certificate prints none); stdout is dropped, the log kept.
    pub fn launch(mut command: Command) -> Running {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Running {
            child,
            banner: Vec::new(),
            log: Some(log),
        }
    }

    /// Waits (up to `limit`) until the log has a line containing `text`.
    pub fn wait_for_log_within(&self, text: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {text:?} in the log within {limit:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the binary in PORT mode on a free port, with stdout and stderr closed at once
    /// (as when its output is piped into something that has already exited).
    pub fn start_headless(config: &Path) -> (u16, Running) {
        on_free_port(|port| {
            let mut child = dialtone()
                .arg("--config")
                .arg(config)
                .env("PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdout.take());
            drop(child.stderr.take());
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                // Listening itself: another test's server may have taken the port meanwhile.
                if listens_on(child.id(), port) {
                    return Some(Running {
                        child,
                        banner: Vec::new(),
                        log: None,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            None
        })
    }

    /// What the binary has logged so far.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .map(|log| std::fs::read_to_string(log.path()).unwrap())
            .unwrap_or_default()
    }

    /// Waits until the log has a line containing `text`.
    pub fn wait_for_log(&self, text: &str) -> String {
        self.wait_for_log_within(text, Duration::from_secs(10))
    }

    /// The port from the banner's `https://localhost:PORT` (or, with TLS off, its
    /// `http://ADDR:PORT`).
    pub fn port(&self) -> u16 {
        let banner = self.text();
        ["https://localhost:", "listening on http://"]
            .iter()
            .find_map(|prefix| banner.split(prefix).nth(1))
            .and_then(|rest| rest.lines().next())
            .and_then(|rest| rest.rsplit(':').next())
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("a URL with a port in {banner}"))
    }

    /// The binary's resident memory, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the binary is running");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    pub fn text(&self) -> String {
        self.banner.join("\n")
    }

    /// The banner's lines.
    pub fn lines(&self) -> &[String] {
        &self.banner
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "exited within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` holds a socket listening on TCP `port` (from /proc: the listening
/// sockets' inodes, matched against the process's descriptors).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let listening: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    let ours = u16::from_str_radix(local_port, 16).ok()? == port;
                    (ours && *fields.get(3)? == "0A").then(|| format!("socket:[{}]", fields[9]))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|link| {
            listening
                .iter()
                .any(|socket| link.as_os_str() == socket.as_str())
        })
}
