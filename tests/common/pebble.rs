//! Debian's `pebble`, an ACME server written for testing ACME clients, and its
//! `pebble-challtestsrv`, whose DNS answers the tests' names with 127.0.0.1 (or what a test
//! sets). Both on free loopback ports, stopped by PID. Pebble really validates: it connects
//! back to `tls_port` for TLS-ALPN-01 (never `PEBBLE_VA_ALWAYS_VALID`).
//!
//! Pebble's own HTTPS uses a certificate from a CA made here ([`Pebble::ca_file`]), which
//! dialtone is told to trust with `SSL_CERT_FILE`, as a person would for a private CA. The
//! certificates Pebble issues chain to a root Pebble makes at each start, fetched from its
//! management port ([`Pebble::root`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::free_port;

/// Whether pebble and pebble-challtestsrv can run here; panics under CI when they cannot.
pub fn available() -> bool {
    for program in ["pebble", "pebble-challtestsrv"] {
        let found = Command::new(program)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            super::skip(&format!(
                "{program} is not installed (apt-get install pebble)"
            ));
            return false;
        }
    }
    true
}

pub struct Pebble {
    pub dir: tempfile::TempDir,
    /// The ACME directory.
    pub port: u16,
    pub management: u16,
    pub dns_port: u16,
    pub dns_management: u16,
    /// Where Pebble connects for TLS-ALPN-01 (dialtone's port).
    pub tls_port: u16,
    /// For HTTP-01, which dialtone does not answer; Pebble wants one anyway.
    http_port: u16,
    validity_secs: Option<u64>,
    pebble: Option<Child>,
    dns: Option<Child>,
}

impl Pebble {
    /// Pebble and its DNS, validating on `tls_port`; `validity_secs` makes short-lived
    /// certificates. `None` (test skipped) without the tools.
    pub fn start(tls_port: u16, validity_secs: Option<u64>) -> Option<Pebble> {
        let mut pebble = Pebble::prepare(tls_port, validity_secs)?;
        pebble.start_dns();
        pebble.start_ca();
        Some(pebble)
    }

    /// Everything but the CA itself, which [`Pebble::start_ca`] starts later.
    pub fn prepare(tls_port: u16, validity_secs: Option<u64>) -> Option<Pebble> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        make_https_certificate(dir.path());
        // Each probe's port is free again at once: the next one could get it too.
        let mut ports = Vec::new();
        while ports.len() < 5 {
            let port = free_port();
            if port != tls_port && !ports.contains(&port) {
                ports.push(port);
            }
        }
        Some(Pebble {
            dir,
            port: ports[0],
            management: ports[1],
            dns_port: ports[2],
            dns_management: ports[3],
            http_port: ports[4],
            tls_port,
            validity_secs,
            pebble: None,
            dns: None,
        })
    }

    pub fn start_dns(&mut self) {
        let child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{}", self.dns_port)])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", self.dns_management)])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.dns = Some(child);
        wait_for_port(self.dns_management, "pebble-challtestsrv");
    }

    pub fn start_ca(&mut self) {
        let validity = self
            .validity_secs
            .map(|secs| format!(",\"certificateValidityPeriod\":{secs}"))
            .unwrap_or_default();
        let config = format!(
            "{{\"pebble\":{{\"listenAddress\":\"127.0.0.1:{}\",\"managementListenAddress\":\
             \"127.0.0.1:{}\",\"certificate\":{:?},\"privateKey\":{:?},\"httpPort\":{},\
             \"tlsPort\":{},\"ocspResponderURL\":\"\",\"externalAccountBindingRequired\":false\
             {validity}}}}}",
            self.port,
            self.management,
            self.dir.path().join("https.pem").display().to_string(),
            self.dir.path().join("https.key").display().to_string(),
            self.http_port,
            self.tls_port,
        );
        let path = self.dir.path().join("pebble.json");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&path)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            // No random sleeps before validating, and no nonces refused on purpose: the
            // tests are about dialtone, not about retrying Pebble's induced failures.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.pebble = Some(child);
        wait_for_port(self.port, "pebble");
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pebble.log")
    }

    /// How many orders Pebble has been sent.
    pub fn orders(&self) -> usize {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .matches("POST /order-plz")
            .count()
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA file that makes dialtone trust Pebble's HTTPS (for `SSL_CERT_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The `[tls]` table for `domains`, with the cache in `cache`.
    pub fn tls_table(&self, domains: &[&str], cache: &Path) -> String {
        format!(
            "[tls]\nmode = \"acme\"\ndomains = {domains:?}\ndirectory = {:?}\ncache = {:?}\n",
            self.directory(),
            cache.display().to_string()
        )
    }

    /// The root the certificates Pebble issues chain to.
    pub fn root(&self) -> CertificateDer<'static> {
        let pem = curl(&[
            "--cacert",
            &self.ca_file().display().to_string(),
            &format!("https://127.0.0.1:{}/roots/0", self.management),
        ]);
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM root from Pebble")
    }

    /// Makes the DNS answer `host` with `address` instead of 127.0.0.1.
    pub fn point(&self, host: &str, address: &str) {
        curl(&[
            "-X",
            "POST",
            "-d",
            &format!("{{\"host\":\"{host}.\",\"addresses\":[\"{address}\"]}}"),
            &format!("http://127.0.0.1:{}/add-a", self.dns_management),
        ]);
    }

    /// Stops the CA (the DNS keeps running).
    pub fn stop_ca(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop_ca();
        if let Some(mut child) = self.dns.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A CA (`ca.pem`) and, signed by it, Pebble's HTTPS certificate for 127.0.0.1
/// (`https.pem`, `https.key`).
fn make_https_certificate(dir: &Path) {
    let ca = super::PrivateCa::new("127.0.0.1");
    std::fs::write(dir.join("ca.pem"), &ca.ca_pem).unwrap();
    std::fs::write(dir.join("https.pem"), &ca.leaf_pem).unwrap();
    std::fs::write(dir.join("https.key"), &ca.key_pem).unwrap();
}
