//! Certificates: PEM files given by the user, a self-signed one made with rcgen, or one from
//! an ACME CA ([`acme`]).
//!
//! Browsers only allow the camera on a secure context, so on a LAN dialtone serves HTTPS with
//! a certificate whose names cover every address a phone might type. That certificate is kept
//! in `certs/` and reused while it is valid and still covers this machine's addresses, so the
//! browser exception a person accepted once keeps working across restarts.

use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::{TlsConfig, TlsMode};

pub mod acme;

/// The organization name dialtone puts in certificates it makes; only those are ever replaced.
const ISSUER_MARK: &str = "dialtone self-signed";
/// A generated certificate is valid this long.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// A generated certificate this close to expiry is replaced at start-up.
const RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The OS errors are part of the message, not a `source`, so a chain prints them once;
    /// the binary adds which setting in which file to change.
    #[error("cannot read the {what} file {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: io::Error,
    },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, SEC1 or RSA): {detail}")]
    NoKey { path: PathBuf, detail: String },
    #[error("{path} is not a certificate rustls can use: {detail}")]
    BadCertificate { path: PathBuf, detail: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {detail}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: io::Error },
    #[error("ACME: {0}")]
    Acme(String),
}

/// What the server needs to speak TLS, and what a person needs to trust it.
#[derive(Debug, Clone)]
pub struct Tls {
    pub server_config: Arc<ServerConfig>,
    /// SHA-256 of the certificate, `AA:BB:…`, as browsers show it.
    pub fingerprint: String,
    /// Where the certificate came from, for the start-up log.
    pub origin: String,
    /// Made by dialtone: browsers will ask people to accept it once.
    pub self_signed: bool,
    /// The leaf certificate, for clients (and tests) that pin it.
    pub certificate: CertificateDer<'static>,
}

impl Tls {
    /// What the banner, `/healthz` and `/metrics` say of this certificate.
    pub fn served(&self) -> Served {
        Served::of(&self.certificate, self.origin.clone(), self.self_signed)
    }

    /// The handle the server reads new connections' settings from.
    pub fn certificates(&self) -> Certificates {
        Certificates::serving(self.server_config.clone(), Some(self.served()))
    }
}

/// What people and monitoring need to know of the certificate being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Where it came from, for the log and the banner.
    pub origin: String,
    /// SHA-256 of the leaf, `AA:BB:…`, as browsers show it.
    pub fingerprint: String,
    pub self_signed: bool,
    /// The DNS names and addresses it covers.
    pub names: Vec<String>,
    /// Its issuer's common name (or organization).
    pub issuer: String,
    /// When it became valid, in seconds since 1970.
    pub not_before: i64,
    /// When it expires, in seconds since 1970.
    pub not_after: i64,
}

impl Served {
    pub fn of(leaf: &CertificateDer<'_>, origin: String, self_signed: bool) -> Served {
        let (names, issuer, not_before, not_after) = match x509_parser::parse_x509_certificate(leaf)
        {
            Ok((_, parsed)) => (
                names_of(&parsed),
                parsed
                    .issuer()
                    .iter_common_name()
                    .chain(parsed.issuer().iter_organization())
                    .find_map(|value| value.as_str().ok().map(str::to_owned))
                    .unwrap_or_default(),
                parsed.validity().not_before.timestamp(),
                parsed.validity().not_after.timestamp(),
            ),
            Err(_) => (Vec::new(), String::new(), 0, 0),
        };
        Served {
            origin,
            fingerprint: fingerprint(leaf),
            self_signed,
            names,
            issuer,
            not_before,
            not_after,
        }
    }

    /// The expiry as an HTTP date, e.g. `Sun, 06 Dec 2026 08:00:00 GMT`.
    pub fn expires(&self) -> String {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(self.not_after.max(0) as u64);
        httpdate::fmt_http_date(at)
    }
}

/// The TLS settings new connections get. Replaceable while running (SIGHUP, an ACME renewal)
/// so a renewed certificate applies without dropping a call; connections already open keep
/// theirs.
#[derive(Debug, Clone)]
pub struct Certificates {
    current: Arc<std::sync::RwLock<Arc<ServerConfig>>>,
    /// What is served; `None` until an ACME certificate has arrived.
    served: Arc<tokio::sync::watch::Sender<Option<Served>>>,
}

impl Certificates {
    pub fn new(config: Arc<ServerConfig>) -> Certificates {
        Certificates::serving(config, None)
    }

    pub fn serving(config: Arc<ServerConfig>, served: Option<Served>) -> Certificates {
        Certificates {
            current: Arc::new(std::sync::RwLock::new(config)),
            served: Arc::new(tokio::sync::watch::Sender::new(served)),
        }
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        // The lock only guards a pointer swap; a poisoned one still holds a valid config.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, config: Arc<ServerConfig>, served: Served) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        self.served.send_replace(Some(served));
    }

    /// A new certificate behind the same settings (ACME's resolver serves it).
    pub fn set_served(&self, served: Served) {
        self.served.send_replace(Some(served));
    }

    pub fn served(&self) -> Option<Served> {
        self.served.borrow().clone()
    }

    /// Sees each new certificate.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<Served>> {
        self.served.subscribe()
    }
}

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737): a connection that negotiates it is a CA
/// checking a challenge, and is closed after the handshake.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// rustls with ring only: the `ring` provider is chosen explicitly, so nothing depends on a
/// process-wide default provider being installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Sets up TLS for the configured mode; `None` for `mode = "off"`.
pub fn setup(config: &TlsConfig) -> Result<Option<Tls>, TlsError> {
    match config.mode {
        TlsMode::Off => Ok(None),
        TlsMode::Files => {
            let pair = KeyPairFiles::load(&config.cert, &config.key)?;
            let origin = format!("certificate from {}", config.cert.display());
            pair.into_tls(origin, false).map(Some)
        }
        TlsMode::Auto => auto(&config.cert, &config.key, &wanted_names()).map(Some),
        // Started by `acme::start`, which needs the runtime; nothing to read here.
        TlsMode::Acme => Ok(None),
    }
}

/// Reuses the certificate in `cert`/`key` if it is still good, otherwise makes a new one.
pub fn auto(cert: &Path, key: &Path, names: &[String]) -> Result<Tls, TlsError> {
    let regenerate_because = match KeyPairFiles::load(cert, key) {
        Err(TlsError::Read { reason, .. }) if reason.kind() == io::ErrorKind::NotFound => {
            "there was none yet".to_owned()
        }
        Err(err) => format!("the existing one is unusable ({err})"),
        Ok(pair) => match pair.reason_to_replace(names, SystemTime::now()) {
            Replace::No => {
                let origin = format!("self-signed certificate reused from {}", cert.display());
                return pair.into_tls(origin, true);
            }
            Replace::NotOurs(warning) => {
                tracing::warn!("{warning}; using it anyway because dialtone did not make it");
                let origin = format!("certificate from {}", cert.display());
                return pair.into_tls(origin, false);
            }
            Replace::Yes(reason) => reason,
        },
    };
    tracing::info!(
        "generating a self-signed certificate in {} because {regenerate_because}",
        cert.display()
    );
    let (cert_pem, key_pem) = generate(names, SystemTime::now())?;
    let written = |path: &Path, pem: &str, mode| {
        write_file(path, pem.as_bytes(), mode).map_err(|reason| TlsError::Write {
            path: path.to_owned(),
            reason,
        })
    };
    written(cert, &cert_pem, 0o644)?;
    written(key, &key_pem, 0o600)?;
    let pair = KeyPairFiles::load(cert, key)?;
    let origin = format!(
        "self-signed certificate generated in {} because {regenerate_because}",
        cert.display()
    );
    pair.into_tls(origin, true)
}

/// localhost, the loopback addresses, the host name, and every other interface address.
pub fn wanted_names() -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Some(host) = gethostname::gethostname().to_str()
        && !host.is_empty()
    {
        names.push(host.to_owned());
    }
    names.extend(crate::net::lan_addresses().iter().map(IpAddr::to_string));
    names.sort();
    names.dedup();
    names
}

/// Makes a certificate and key (PEM) for `names`, valid from a day before `now` for a year.
/// It is an end-entity certificate (no CA bit), which browsers accept as an exception and
/// rustls clients can trust directly.
pub fn generate(names: &[String], now: SystemTime) -> Result<(String, String), TlsError> {
    generate_valid(
        names,
        now - Duration::from_secs(24 * 60 * 60),
        now + VALIDITY,
    )
}

/// [`generate`] with explicit validity; tests use it to make expired certificates.
pub fn generate_valid(
    names: &[String],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(String, String), TlsError> {
    let fail = |err: rcgen::Error| TlsError::Generate(err.to_string());
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(fail)?;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, ISSUER_MARK);
    let host = gethostname::gethostname();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("dialtone on {}", host.to_string_lossy()),
    );
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A certificate chain and key read from PEM files.
struct KeyPairFiles {
    cert_path: PathBuf,
    key_path: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

enum Replace {
    No,
    Yes(String),
    /// Not made by dialtone: never overwritten, only warned about.
    NotOurs(String),
}

impl KeyPairFiles {
    fn load(cert_path: &Path, key_path: &Path) -> Result<KeyPairFiles, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|reason| TlsError::Read {
                what,
                path: path.to_owned(),
                reason,
            })
        };
        let cert_pem = read("cert", cert_path)?;
        let key_pem = read("key", key_path)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| TlsError::BadCertificate {
                path: cert_path.to_owned(),
                detail: err.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_owned(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| TlsError::NoKey {
            path: key_path.to_owned(),
            detail: err.to_string(),
        })?;
        Ok(KeyPairFiles {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            chain,
            key,
        })
    }

    /// Whether a certificate found in `certs/` should be replaced, and why.
    fn reason_to_replace(&self, names: &[String], now: SystemTime) -> Replace {
        let parsed = match x509_parser::parse_x509_certificate(&self.chain[0]) {
            Ok((_, parsed)) => parsed,
            Err(err) => return Replace::Yes(format!("the existing one cannot be parsed ({err})")),
        };
        let ours = parsed
            .subject()
            .iter_organization()
            .any(|org| org.as_str() == Ok(ISSUER_MARK));
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let not_after = parsed.validity().not_after.timestamp();
        let missing: Vec<&str> = names
            .iter()
            .filter(|name| !covers(&parsed, name))
            .map(String::as_str)
            .collect();
        let problem = if not_after <= now_secs {
            Some("the existing one has expired".to_owned())
        } else if not_after - now_secs < RENEW_BEFORE.as_secs() as i64 {
            Some("the existing one expires within a week".to_owned())
        } else if parsed.validity().not_before.timestamp() > now_secs {
            Some("the existing one is not valid yet".to_owned())
        } else if !missing.is_empty() {
            Some(format!(
                "the existing one does not cover {}",
                missing.join(", ")
            ))
        } else {
            None
        };
        match (problem, ours) {
            (None, _) => Replace::No,
            (Some(problem), true) => Replace::Yes(problem),
            (Some(problem), false) => {
                Replace::NotOurs(format!("{}: {problem}", self.cert_path.display()))
            }
        }
    }

    fn into_tls(self, origin: String, self_signed: bool) -> Result<Tls, TlsError> {
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|err| TlsError::NoKey {
                path: self.key_path.clone(),
                detail: err.to_string(),
            })?;
        let certified = CertifiedKey::new(self.chain.clone(), signing_key);
        certified.keys_match().map_err(|err| TlsError::Mismatch {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            detail: err.to_string(),
        })?;
        let mut server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::BadCertificate {
                path: self.cert_path.clone(),
                detail: err.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key)
            .map_err(|err| TlsError::BadCertificate {
                path: self.cert_path.clone(),
                detail: err.to_string(),
            })?;
        // Every suite rustls offers is an AEAD with forward secrecy; the server picks in
        // rustls's order (AES-256-GCM first) rather than the client's, which scanners such as
        // testssl.sh count as a missing cipher order. For signaling-sized traffic the choice
        // costs nothing measurable either way.
        server_config.ignore_client_order = true;
        // Pages may use HTTP/2; browsers open WebSockets on a separate HTTP/1.1 connection.
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // A browser that reconnects (after every restart of the page's socket, every network
        // change) resumes with a ticket and skips the certificate and its signature. Tickets
        // are encrypted with a key that rotates every 6 hours and lives only in this process
        // (and this configuration: a reload starts over), so any number of returning clients
        // resume at no memory cost; rustls's default keeps sessions for the last 256 only.
        server_config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|err| TlsError::BadCertificate {
                path: self.cert_path.clone(),
                detail: format!("cannot make a session ticket key: {err}"),
            })?;
        Ok(Tls {
            server_config: Arc::new(server_config),
            fingerprint: fingerprint(&self.chain[0]),
            origin,
            self_signed,
            certificate: self.chain[0].clone(),
        })
    }
}

/// The DNS names and addresses in a certificate's subject alternative names.
fn names_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|general| match general {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Whether the certificate's subject alternative names include `name` (a DNS name or an IP).
fn covers(cert: &x509_parser::certificate::X509Certificate<'_>, name: &str) -> bool {
    let ip: Option<IpAddr> = name.parse().ok();
    names_of(cert)
        .iter()
        .any(|san| match (ip, san.parse::<IpAddr>()) {
            (Some(ip), Ok(san)) => ip == san,
            (None, Err(_)) => san.eq_ignore_ascii_case(name),
            _ => false,
        })
}

/// SHA-256 of a DER certificate in the colon-separated hex that browsers display.
pub fn fingerprint(cert: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    let mut out = String::with_capacity(95);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{byte:02X}");
    }
    out
}

/// Writes `contents` with `mode` set at creation, so a key is never readable by others, not
/// even for a moment, under a name of this process's own, then renames it over `path`:
/// readers (another instance sharing an ACME cache, say) see the old file or the new one,
/// never a mix.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    // A leftover file of that name (a crash, a reused process id) keeps its mode on open.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    }

    #[test]
    fn served_says_its_names_issuer_and_expiry() {
        let (cert_pem, _) = generate(&names(), SystemTime::now()).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let served = Served::of(&der, "origin".into(), true);
        assert_eq!(served.names, names());
        assert!(
            served.issuer.starts_with("dialtone on "),
            "{}",
            served.issuer
        );
        assert_eq!(served.fingerprint, fingerprint(&der));
        let in_a_year = SystemTime::now() + VALIDITY;
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert!(secs(in_a_year).abs_diff(served.not_after as u64) < 5);
        let a_day_ago = SystemTime::now() - Duration::from_secs(24 * 60 * 60);
        assert!(secs(a_day_ago).abs_diff(served.not_before as u64) < 5);
        // The expiry as browsers and HTTP write dates.
        let served = Served {
            not_after: 1_796_544_937,
            ..served
        };
        assert_eq!(served.expires(), "Sun, 06 Dec 2026 08:15:37 GMT");
    }

    #[test]
    fn fingerprint_is_colon_hex_sha256() {
        // printf 'abc' | sha256sum
        assert_eq!(
            fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn generated_certificate_is_an_end_entity_for_the_names() {
        let (cert_pem, _) = generate(&names(), SystemTime::now()).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!parsed.is_ca());
        for name in names() {
            assert!(covers(&parsed, &name), "{name}");
        }
        assert!(!covers(&parsed, "example.com"));
        assert!(!covers(&parsed, "10.1.2.3"));
    }

    #[test]
    fn auto_reuses_then_regenerates_when_expired_or_not_covering() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c/cert.pem"), dir.path().join("c/key.pem"));
        let first = auto(&cert, &key, &names()).unwrap();
        assert!(first.origin.contains("generated"), "{}", first.origin);
        assert!(first.self_signed);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode, 0o600);

        let again = auto(&cert, &key, &names()).unwrap();
        assert!(again.origin.contains("reused"), "{}", again.origin);
        assert_eq!(again.fingerprint, first.fingerprint);

        let mut more = names();
        more.push("192.0.2.7".into());
        let wider = auto(&cert, &key, &more).unwrap();
        assert!(
            wider.origin.contains("does not cover 192.0.2.7"),
            "{}",
            wider.origin
        );
        assert_ne!(wider.fingerprint, first.fingerprint);

        let long_ago = SystemTime::now() - Duration::from_secs(400 * 24 * 3600);
        let (old_cert, old_key) =
            generate_valid(&more, long_ago, long_ago + Duration::from_secs(3600)).unwrap();
        std::fs::write(&cert, old_cert).unwrap();
        std::fs::write(&key, old_key).unwrap();
        let renewed = auto(&cert, &key, &more).unwrap();
        assert!(renewed.origin.contains("expired"), "{}", renewed.origin);
    }
}
