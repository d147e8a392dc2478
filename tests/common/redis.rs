//! A real `redis-server` for a test: on a free loopback port, with nothing saved to disk,
//! stopped by its PID. Without the binary the test is skipped, except under `CI=true`, where
//! that is a failure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// `--tls-port` setup, kept so a restart serves the same way.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    extra: Vec<String>,
}

/// Whether `redis-server` can run here; panics under CI when it cannot.
pub fn available() -> bool {
    super::have("redis-server", "--version", "redis-server")
}

impl Redis {
    /// A fresh Redis, or `None` (test skipped) when there is no redis-server.
    pub fn start() -> Option<Redis> {
        Redis::start_with(&[])
    }

    /// A fresh Redis with extra command-line settings, such as `--requirepass`.
    pub fn start_with(extra: &[&str]) -> Option<Redis> {
        if !available() {
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            let mut redis = Redis {
                port,
                child: None,
                tls: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            if redis.spawn() {
                return Some(redis);
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// A Redis that speaks only TLS, with this certificate and key.
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Redis> {
        if !available() {
            return None;
        }
        let port = free_port();
        let mut redis = Redis {
            port,
            child: None,
            tls: Some((cert.to_owned(), key.to_owned())),
            extra: Vec::new(),
        };
        assert!(redis.spawn(), "redis-server with TLS started");
        Some(redis)
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://localhost:{}", self.port),
        }
    }

    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        command.args(&self.extra);
        match &self.tls {
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
            Some((cert, key)) => {
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false; // it exited: the port was taken
            }
            if self.listening() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Redis answers PING (for TLS: the port accepts connections).
    fn listening(&self) -> bool {
        let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        tcp.set_read_timeout(Some(Duration::from_secs(1))).ok();
        let _ = tcp.write_all(b"PING\r\n");
        // With a password set, Redis answers -NOAUTH: it is up all the same.
        let mut reply = [0u8; 7];
        tcp.read_exact(&mut reply).is_ok()
            && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
    }

    /// Sends one command in Redis' inline syntax; returns the first line of the reply.
    pub fn command(&self, line: &str) -> String {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("redis listens");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
        tcp.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while tcp.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    /// Sends one command whose reply is a bulk string, and returns that string.
    pub fn bulk(&self, line: &str) -> String {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("redis listens");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
        tcp.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf) {
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if let Some((head, rest)) = text.split_once("\r\n")
                && let Some(len) = head.strip_prefix('$').and_then(|l| l.parse::<usize>().ok())
                && rest.len() >= len
            {
                return rest[..len].to_owned();
            }
            if n == 0 {
                break;
            }
        }
        panic!(
            "no bulk reply to {line:?}: {:?}",
            String::from_utf8_lossy(&reply)
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Kills Redis (SIGKILL: nothing saved) and starts an empty one on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server restarted on its port"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) server must be woken to die promptly.
        if self.child.is_some() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.pid().to_string())
                .status();
        }
        self.kill();
    }
}
