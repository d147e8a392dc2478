//! Settings from `config.toml`, and the `PORT` override for platforms such as Heroku.
//!
//! Every key is optional: a missing key takes the default documented in the repository's
//! `config.toml`. Unknown keys and bad values are errors that name the file, line and column,
//! so a typo never silently falls back to a default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod access;
pub mod values;

pub use access::{AccessConfig, AccessMode};

pub use values::{
    IceUrl, InstanceId, Listen, MessageLimit, Origin, Peers, PortRange, RedisUrl, Secret,
    Transport, Transports, Urls,
};

/// Why the configuration could not be loaded. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The OS error is part of the message, not a `source`: printed as a chain it would
    /// appear twice.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    /// toml's message already carries the line, the column and the offending text.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the PORT environment variable must be a port number from 1 to 65535, not {0:?}")]
    BadPort(String),
    #[error("the REDIS_URL environment variable is not usable: {0}")]
    BadRedisUrl(String),
}

/// The whole configuration, as read from `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on, as one `"host:port"` string; the host may be a name.
    pub listen: Listen,
    /// Serve the page from this folder instead of the copy built into the binary; relative
    /// paths resolve against the config file's folder.
    pub public_dir: Option<PathBuf>,
    #[serde(deserialize_with = "TlsConfig::checked")]
    pub tls: TlsConfig,
    /// Trust `X-Forwarded-Proto` and `X-Forwarded-For` from a TLS-terminating proxy in front.
    pub behind_proxy: bool,
    /// Handed to every browser at login, exactly in the shape of `RTCIceServer`.
    pub ice_servers: Vec<IceServer>,
    /// Optional: mint short-lived TURN credentials for each login (coturn's REST API scheme).
    pub turn: Option<TurnConfig>,
    pub websocket: WebSocketConfig,
    pub limits: Limits,
    /// Origins (`scheme://host[:port]`) whose pages may open the WebSocket. Empty: only pages
    /// served by dialtone itself, judged from the request's Host.
    pub allowed_origins: Vec<Origin>,
    /// Origins whose pages may show dialtone in a frame (an iframe on the operator's own
    /// site). Empty: no framing at all.
    pub frame_ancestors: Vec<Origin>,
    pub log_format: LogFormat,
    /// Several instances as one service, through Redis. Without a URL: one process, in memory.
    #[serde(deserialize_with = "ClusterConfig::checked")]
    pub cluster: ClusterConfig,
    pub presence: PresenceConfig,
    pub metrics: MetricsConfig,
    /// The built-in STUN/TURN relay (UDP), off by default.
    pub turn_server: TurnServerConfig,
    /// Who may log in: anyone, with the site password, or with a signed token.
    #[serde(deserialize_with = "AccessConfig::checked")]
    pub access: AccessConfig,
    /// The file these settings came from (`None`: built-in defaults), for messages.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// `/metrics`, the operator's endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            token: None,
        }
    }
}

/// `[turn_server]`: the relay for calls that cannot connect browser to browser.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnServerConfig {
    pub enabled: bool,
    /// The address for STUN and TURN requests: UDP, and TCP next to it.
    pub listen: SocketAddr,
    /// UDP and TCP on `listen`, TLS (and TCP) on the page's own port.
    pub transports: Transports,
    /// The address browsers are told to relay through; derived from the machine's addresses
    /// when left out (see `relay::external_ip`).
    pub external_ip: Option<IpAddr>,
    /// The UDP ports relayed traffic uses, one per allocation.
    pub relay_ports: PortRange,
    pub realm: String,
    pub peers: Peers,
    /// Allocations open at once, over all users.
    pub max_allocations: NonZeroUsize,
    /// Allocations open at once for one user.
    pub max_allocations_per_user: NonZeroUsize,
    /// How long a login's credential can open new allocations.
    pub credential_ttl_secs: NonZeroU64,
    /// The HMAC secret for credentials; generated at start when left out. Set the same one on
    /// every instance behind one name.
    pub secret: Option<Secret>,
}

impl Default for TurnServerConfig {
    fn default() -> Self {
        TurnServerConfig {
            enabled: false,
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 3478)),
            transports: Transports::default(),
            external_ip: None,
            relay_ports: PortRange {
                min: 49152,
                max: 65535,
            },
            realm: "dialtone".into(),
            peers: Peers::default(),
            max_allocations: NonZeroUsize::new(1000).expect("not zero"),
            max_allocations_per_user: NonZeroUsize::new(10).expect("not zero"),
            credential_ttl_secs: NonZeroU64::new(24 * 60 * 60).expect("not zero"),
            secret: None,
        }
    }
}

/// Who's online. Off by default: listing everyone online is the operator's privacy choice.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Send logged-in pages the list of users online, with busy marked, as it changes.
    pub enabled: bool,
}

/// The Redis backplane. Times are in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` (TLS). When unset, the `REDIS_URL` environment variable is
    /// used (the Heroku Redis add-on sets it); when both are unset, dialtone runs alone.
    pub redis_url: Option<RedisUrl>,
    /// Accept any certificate on `rediss://`: Heroku Redis presents a self-signed one.
    pub tls_insecure: bool,
    /// Put before every key and channel, so several deployments can share one Redis.
    pub key_prefix: String,
    /// This instance's name in Redis. Default: `DYNO` (Heroku), else host name plus a random
    /// suffix.
    pub instance_id: Option<InstanceId>,
    /// How often the lease is renewed, and the other checks run.
    pub heartbeat_ms: NonZeroU64,
    /// How long a lease lasts without renewal: the time to notice an instance that died.
    pub lease_ms: NonZeroU64,
    /// The longest any one Redis command may take before it counts as failed.
    pub timeout_ms: NonZeroU64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let n64 = |n: u64| NonZeroU64::new(n).expect("the defaults are not zero");
        ClusterConfig {
            redis_url: None,
            tls_insecure: false,
            key_prefix: "dialtone:".into(),
            instance_id: None,
            heartbeat_ms: n64(1000),
            lease_ms: n64(5000),
            timeout_ms: n64(1000),
        }
    }
}

/// Where the Redis URL came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSource {
    File,
    Environment,
}

impl ClusterConfig {
    /// Takes `REDIS_URL` when the file names no Redis. Returns where the URL came from.
    pub fn apply_env(&mut self, redis_url: Option<&str>) -> Result<Option<UrlSource>, ConfigError> {
        if self.redis_url.is_some() {
            return Ok(Some(UrlSource::File));
        }
        match redis_url.map(str::trim).filter(|url| !url.is_empty()) {
            None => Ok(None),
            Some(url) => {
                self.redis_url =
                    Some(RedisUrl::try_from(url.to_owned()).map_err(ConfigError::BadRedisUrl)?);
                Ok(Some(UrlSource::Environment))
            }
        }
    }

    /// The table as read, with the rule that ties two of its keys checked, so the error
    /// names the `[cluster]` table's line.
    fn checked<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ClusterConfig, D::Error> {
        let cluster = ClusterConfig::deserialize(d)?;
        if cluster.lease_ms.get() < 2 * cluster.heartbeat_ms.get() {
            return Err(serde::de::Error::custom(format!(
                "[cluster] lease_ms ({}) must be at least twice heartbeat_ms ({}): one late \
                 heartbeat must not lose the lease",
                cluster.lease_ms, cluster.heartbeat_ms
            )));
        }
        Ok(cluster)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.get())
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.get())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.get())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log drains (Heroku, Loki, …).
    Json,
}

/// What one client may use. The defaults never get in a real user's way; they stop floods.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open WebSocket connections in all; more get HTTP 503 before any WebSocket exists.
    pub max_connections: NonZeroUsize,
    /// Open WebSocket connections from one address (an office or family behind one NAT).
    pub max_connections_per_ip: NonZeroUsize,
    /// Sustained messages per second per connection…
    pub messages_per_second: NonZeroU32,
    /// …and how many may come at once (a browser sends its ICE candidates in a burst).
    pub message_burst: NonZeroU32,
    /// Login attempts per connection per minute.
    pub logins_per_minute: NonZeroU32,
    /// A WebSocket that has not logged in by then is closed.
    pub login_timeout_secs: NonZeroU64,
    /// A TLS handshake not finished by then is dropped.
    pub tls_handshake_timeout_secs: NonZeroU64,
    /// Time to send a request's headers (slowloris).
    pub header_read_timeout_secs: NonZeroU64,
    /// At shutdown, how long open connections get to finish (Heroku kills after 30 s).
    pub drain_timeout_secs: NonZeroU64,
}

impl Default for Limits {
    fn default() -> Self {
        let n = |n: usize| NonZeroUsize::new(n).expect("the defaults are not zero");
        let n32 = |n: u32| NonZeroU32::new(n).expect("the defaults are not zero");
        let n64 = |n: u64| NonZeroU64::new(n).expect("the defaults are not zero");
        Limits {
            max_connections: n(10_000),
            max_connections_per_ip: n(64),
            messages_per_second: n32(20),
            message_burst: n32(100),
            logins_per_minute: n32(10),
            login_timeout_secs: n64(60),
            tls_handshake_timeout_secs: n64(10),
            header_read_timeout_secs: n64(10),
            drain_timeout_secs: n64(10),
        }
    }
}

impl Limits {
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_timeout_secs.get())
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs.get())
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs.get())
    }

    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.login_timeout_secs.get())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8443)).into(),
            public_dir: None,
            tls: TlsConfig::default(),
            behind_proxy: false,
            ice_servers: vec![IceServer {
                urls: Urls::One(IceUrl("stun:stun.l.google.com:19302".into())),
                username: None,
                credential: None,
            }],
            turn: None,
            websocket: WebSocketConfig::default(),
            limits: Limits::default(),
            allowed_origins: Vec::new(),
            frame_ancestors: Vec::new(),
            log_format: LogFormat::default(),
            cluster: ClusterConfig::default(),
            presence: PresenceConfig::default(),
            metrics: MetricsConfig::default(),
            turn_server: TurnServerConfig::default(),
            access: AccessConfig::default(),
            file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Use `cert`/`key` if they exist, otherwise generate a self-signed pair there.
    Auto,
    /// Use the PEM files named by `cert` and `key`; never generate anything.
    Files,
    /// Plain HTTP, for running behind a proxy that terminates TLS.
    Off,
    /// A certificate from an ACME CA (Let's Encrypt by default) for `domains`, obtained and
    /// renewed by dialtone itself over TLS-ALPN-01 on its own port.
    Acme,
}

/// Let's Encrypt's production directory, the default for `mode = "acme"`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub mode: TlsMode,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// ACME: the names the certificate is for, each pointing at this machine.
    pub domains: Vec<String>,
    /// ACME: how the CA may reach the operator (`mailto:…`), when set.
    pub contact: Option<String>,
    /// ACME: the CA's directory URL.
    pub directory: String,
    /// ACME: the account key and certificates, kept across restarts (and shareable).
    pub cache: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            mode: TlsMode::Auto,
            cert: PathBuf::from("certs/cert.pem"),
            key: PathBuf::from("certs/key.pem"),
            domains: Vec::new(),
            contact: None,
            directory: LETS_ENCRYPT.to_owned(),
            cache: PathBuf::from("certs/acme"),
        }
    }
}

impl TlsConfig {
    /// The table as read, with the ACME keys checked, so an error names the `[tls]` line.
    fn checked<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TlsConfig, D::Error> {
        let mut tls = TlsConfig::deserialize(d)?;
        tls.check().map_err(serde::de::Error::custom)?;
        for domain in &mut tls.domains {
            *domain = domain.to_ascii_lowercase();
        }
        Ok(tls)
    }

    fn check(&self) -> Result<(), String> {
        if self.mode != TlsMode::Acme {
            return Ok(());
        }
        if self.domains.is_empty() {
            return Err(
                "[tls] mode = \"acme\" needs domains, the names that point at this \
                        machine: domains = [\"calls.example.com\"]"
                    .into(),
            );
        }
        for domain in &self.domains {
            check_domain(domain)?;
        }
        if let Some(contact) = &self.contact
            && !contact.starts_with("mailto:")
        {
            return Err(format!(
                "[tls] contact must be a mailto: address, such as \"mailto:ops@example.com\", \
                 not {contact:?}"
            ));
        }
        if !self.directory.starts_with("https://") {
            return Err(format!(
                "[tls] directory must be an https:// address (an ACME CA's directory), not {:?}",
                self.directory
            ));
        }
        Ok(())
    }
}

/// A name a public CA can issue for over TLS-ALPN-01: a DNS name, not an address or a
/// wildcard (those need other challenges).
fn check_domain(domain: &str) -> Result<(), String> {
    if domain.starts_with("*.") {
        return Err(format!(
            "[tls] domains: {domain:?} is a wildcard, which needs a DNS challenge: list each \
             name instead"
        ));
    }
    if domain.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "[tls] domains: {domain:?} is an address; ACME needs a DNS name that points at it"
        ));
    }
    let labels_ok = domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(format!(
            "[tls] domains: {domain:?} is not a DNS name such as \"calls.example.com\" \
             (letters, digits and hyphens, with dots between; write internationalized \
             names in their xn-- form)"
        ));
    }
    Ok(())
}

/// One entry of `RTCPeerConnection`'s `iceServers`, serialized exactly as the browser wants it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "IceServerFields")]
pub struct IceServer {
    pub urls: Urls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IceServerFields {
    urls: Urls,
    username: Option<String>,
    credential: Option<String>,
}

impl TryFrom<IceServerFields> for IceServer {
    type Error = String;

    /// A browser refuses a `turn:` URL without credentials, and with it the whole call.
    fn try_from(f: IceServerFields) -> Result<Self, String> {
        let has_credentials = f.username.is_some() && f.credential.is_some();
        if let Some(url) = f.urls.iter().find(|url| url.is_turn())
            && !has_credentials
        {
            return Err(format!(
                "the TURN server {:?} needs both `username` and `credential` \
                 (or leave it out here and use [turn] to mint them per login)",
                url.0
            ));
        }
        Ok(IceServer {
            urls: f.urls,
            username: f.username,
            credential: f.credential,
        })
    }
}

/// TURN REST credentials: `secret` is coturn's `--static-auth-secret`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    pub urls: Urls,
    pub secret: Secret,
    /// How long each minted credential stays valid, in seconds.
    #[serde(default = "default_turn_ttl")]
    pub ttl: NonZeroU64,
}

fn default_turn_ttl() -> NonZeroU64 {
    NonZeroU64::new(24 * 60 * 60).expect("a day is not zero")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Seconds between Pings; a socket silent for two intervals is dropped.
    pub ping_interval_secs: NonZeroU64,
    /// Largest message accepted, in bytes; a larger one closes the socket with 1009.
    pub max_message_bytes: MessageLimit,
    /// Seconds a dropped user's name and call are held for them to come back; 0 frees them
    /// at once.
    pub resume_grace_secs: u64,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_secs: NonZeroU64::new(25).expect("25 is not zero"),
            max_message_bytes: MessageLimit(64 * 1024),
            resume_grace_secs: 30,
        }
    }
}

impl WebSocketConfig {
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.get())
    }

    pub fn resume_grace(&self) -> Duration {
        Duration::from_secs(self.resume_grace_secs)
    }
}

/// How the listen address and TLS were chosen, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// From the config file alone.
    Configured,
    /// `PORT` was set: plain HTTP behind the platform's TLS-terminating router.
    Platform { port: u16 },
}

impl Config {
    /// Reads `path`. When `explicit` is false (the default path) a missing file means defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default().resolved_against(Path::new(".")));
            }
            Err(reason) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    reason,
                });
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, path)?.resolved_against(base);
        config.file = Some(path.to_owned());
        Ok(config)
    }

    /// The settings file for a message that says what to change: the one in use, or the
    /// `config.toml` that would be read.
    pub fn file_name(&self) -> String {
        match &self.file {
            Some(file) => file.display().to_string(),
            None => "config.toml (none was found: create it)".to_owned(),
        }
    }

    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: in_words(err.to_string().trim_end()),
        })
    }

    /// Makes relative paths relative to the folder the config file is in.
    fn resolved_against(mut self, base: &Path) -> Config {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(public_dir) = &mut self.public_dir {
            resolve(public_dir);
        }
        resolve(&mut self.tls.cert);
        resolve(&mut self.tls.key);
        resolve(&mut self.tls.cache);
        self.access.resolve(base);
        self
    }

    /// Applies the platform override: with `PORT` set, listen on `0.0.0.0:$PORT` in plain HTTP
    /// and trust the router's forwarding headers, since the router terminates TLS.
    pub fn apply_port_env(&mut self, port: Option<&str>) -> Result<Mode, ConfigError> {
        let Some(port) = port else {
            return Ok(Mode::Configured);
        };
        let number: u16 = port
            .trim()
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| ConfigError::BadPort(port.to_owned()))?;
        self.listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, number)).into();
        self.tls.mode = TlsMode::Off;
        self.behind_proxy = true;
        Ok(Mode::Platform { port: number })
    }
}

/// toml and serde word a few errors for programmers ("expected a nonzero u64"): each gets
/// a sentence that says what to write instead. toml's line, column and excerpt stay.
fn in_words(message: &str) -> String {
    let mut out = message.to_owned();
    for ty in ["u64", "u32", "usize"] {
        out = out.replace(
            &format!("invalid value: integer `0`, expected a nonzero {ty}"),
            "0 is not allowed here: write a whole number of 1 or more",
        );
    }
    out.replace(
        "invalid float, expected nothing",
        "this value cannot be read: write a number without a unit or letters after it \
         (for example 25), or text in double quotes (for example \"0.0.0.0:8443\")",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_across_a_table_and_raw_serde_errors_name_the_line_in_words() {
        let err = parse("[tls]\nmode = \"off\"\n[cluster]\nheartbeat_ms = 1000\nlease_ms = 1500\n")
            .unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(
            err.contains("lease_ms (1500) must be at least twice heartbeat_ms (1000)"),
            "{err}"
        );
        let err = parse("[cluster]\ninstance_id = \"a\\nb\"\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("instance_id must be"),
            "{err}"
        );
        assert!(parse("[cluster]\ninstance_id = \"\"\n").is_err());
        let err = parse("[limits]\nmax_connections = 0\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("0 is not allowed here"),
            "{err}"
        );
        assert!(!err.contains("nonzero"), "{err}");
        let err = parse("[websocket]\nping_interval_secs = 1.5s\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("without a unit"),
            "{err}"
        );
        assert!(!err.contains("expected nothing"), "{err}");
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn acme_needs_dns_names_and_https() {
        let acme = |rest: &str| parse(&format!("[tls]\nmode = \"acme\"\n{rest}"));
        let config =
            acme("domains = [\"Calls.Example.com\", \"www.example.com\"]\ncache = \"c\"\n")
                .unwrap();
        assert_eq!(config.tls.domains, ["calls.example.com", "www.example.com"]);
        assert_eq!(config.tls.directory, LETS_ENCRYPT);
        assert_eq!(config.tls.contact, None);
        let refused = [
            ("", "needs domains"),
            ("domains = []", "needs domains"),
            ("domains = [\"*.example.com\"]", "wildcard"),
            ("domains = [\"192.0.2.7\"]", "is an address"),
            ("domains = [\"localhost\"]", "is not a DNS name"),
            ("domains = [\"a..example.com\"]", "is not a DNS name"),
            ("domains = [\"-a.example.com\"]", "is not a DNS name"),
            ("domains = [\"a_b.example.com\"]", "is not a DNS name"),
            (
                "domains = [\"a.example.com\"]\ncontact = \"ops@example.com\"",
                "mailto:",
            ),
            (
                "domains = [\"a.example.com\"]\ndirectory = \"http://ca.example/dir\"",
                "https://",
            ),
        ];
        for (rest, why) in refused {
            let err = acme(rest).unwrap_err();
            assert!(err.contains("line 1") && err.contains(why), "{rest}: {err}");
        }
        let long = format!("domains = [\"{}.example.com\"]", "a".repeat(64));
        assert!(acme(&long).unwrap_err().contains("is not a DNS name"));
        assert!(acme(&format!("domains = [\"{}.example.com\"]", "a".repeat(63))).is_ok());
        // The ACME keys are not checked in other modes.
        assert!(parse("[tls]\nmode = \"auto\"\ndomains = [\"*.x\"]\n").is_ok());
        let config =
            acme("domains = [\"a.example.com\"]\ncontact = \"mailto:o@example.com\"\n").unwrap();
        assert_eq!(config.tls.contact.as_deref(), Some("mailto:o@example.com"));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(config.public_dir, None, "the page built into the binary");
        assert!(config.metrics.enabled && config.metrics.token.is_none());
        assert_eq!(config.tls.mode, TlsMode::Auto);
        assert_eq!(config.websocket.ping_interval_secs.get(), 25);
        assert_eq!(config.websocket.max_message_bytes.0, 65536);
        assert_eq!(config.ice_servers.len(), 1);
        assert!(config.turn.is_none());
        assert!(!config.behind_proxy);
    }

    #[test]
    fn turn_server_settings_are_checked_with_what_to_write() {
        for (text, says) in [
            ("relay_ports = \"100-200\"", "MIN-MAX"),
            ("relay_ports = \"60000-50000\"", "MIN-MAX"),
            ("relay_ports = \"49152\"", "MIN-MAX"),
            ("peers = \"everywhere\"", "relay-only"),
            ("max_allocations = 0", "1 or more"),
            ("secret = \"\"", "must not be empty"),
            ("listen = \"3478\"", "socket address"),
        ] {
            let err = parse(&format!("[turn_server]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
        let ok =
            parse("[turn_server]\nrelay_ports = \"40000 - 40100\"\npeers = \"lan\"\n").unwrap();
        assert_eq!(
            (
                ok.turn_server.relay_ports.min,
                ok.turn_server.relay_ports.max
            ),
            (40000, 40100)
        );
        assert_eq!(ok.turn_server.peers, Peers::Lan);
    }

    #[test]
    fn the_shipped_config_toml_parses_and_matches_the_defaults() {
        let text = include_str!("../../config.toml");
        let shipped = parse(text).unwrap();
        let defaults = Config::default();
        assert_eq!(shipped.listen, defaults.listen);
        assert_eq!(shipped.public_dir, defaults.public_dir);
        assert_eq!(shipped.tls.mode, defaults.tls.mode);
        assert_eq!(shipped.tls.directory, defaults.tls.directory);
        assert_eq!(shipped.tls.domains, defaults.tls.domains);
        assert_eq!(shipped.tls.contact, defaults.tls.contact);
        // Relative to the file's folder once loaded; as written, the same words.
        assert_eq!(shipped.tls.cache, defaults.tls.cache);
        assert_eq!(shipped.ice_servers, defaults.ice_servers);
        assert_eq!(
            shipped.websocket.ping_interval_secs,
            defaults.websocket.ping_interval_secs
        );
        assert_eq!(
            shipped.websocket.resume_grace_secs,
            defaults.websocket.resume_grace_secs
        );
        assert_eq!(
            shipped.websocket.max_message_bytes,
            defaults.websocket.max_message_bytes
        );
        let (a, b) = (&shipped.limits, &defaults.limits);
        assert_eq!(a.max_connections, b.max_connections);
        assert_eq!(a.max_connections_per_ip, b.max_connections_per_ip);
        assert_eq!(a.messages_per_second, b.messages_per_second);
        assert_eq!(a.message_burst, b.message_burst);
        assert_eq!(a.logins_per_minute, b.logins_per_minute);
        assert_eq!(a.login_timeout_secs, b.login_timeout_secs);
        assert_eq!(a.tls_handshake_timeout_secs, b.tls_handshake_timeout_secs);
        assert_eq!(a.header_read_timeout_secs, b.header_read_timeout_secs);
        assert_eq!(a.drain_timeout_secs, b.drain_timeout_secs);
        assert_eq!(shipped.allowed_origins, defaults.allowed_origins);
        assert_eq!(shipped.frame_ancestors, defaults.frame_ancestors);
        let (x, y) = (&shipped.access, &defaults.access);
        assert_eq!(
            y.mode,
            AccessMode::Open,
            "open by default: nothing to set up on a LAN"
        );
        assert_eq!(x.mode, y.mode);
        assert_eq!(x.jwks_refresh_secs, y.jwks_refresh_secs);
        assert_eq!(x.name_claim, y.name_claim);
        assert!(x.password_hash.is_none() && x.secret.is_none() && x.jwks_url.is_none());
        assert_eq!(shipped.log_format, defaults.log_format);
        assert_eq!(shipped.metrics.enabled, defaults.metrics.enabled);
        assert!(shipped.metrics.token.is_none());
        assert_eq!(shipped.presence.enabled, defaults.presence.enabled);
        let (t, u) = (&shipped.turn_server, &defaults.turn_server);
        assert!(!u.enabled, "the relay is off by default");
        assert_eq!(t.enabled, u.enabled);
        assert_eq!(t.listen, u.listen);
        assert_eq!(t.transports, u.transports);
        assert_eq!(
            u.transports.list(),
            vec![Transport::Udp, Transport::Tcp, Transport::Tls]
        );
        assert_eq!((t.external_ip, u.external_ip), (None, None));
        assert_eq!(t.relay_ports, u.relay_ports);
        assert_eq!(t.realm, u.realm);
        assert_eq!(t.peers, u.peers);
        assert_eq!(u.peers, Peers::RelayOnly);
        assert_eq!(t.max_allocations, u.max_allocations);
        assert_eq!(t.max_allocations_per_user, u.max_allocations_per_user);
        assert_eq!(t.credential_ttl_secs, u.credential_ttl_secs);
        assert!(t.secret.is_none() && u.secret.is_none());
        let (c, d) = (&shipped.cluster, &defaults.cluster);
        assert!(
            c.redis_url.is_none() && d.redis_url.is_none(),
            "alone by default"
        );
        assert_eq!(c.tls_insecure, d.tls_insecure);
        assert!(!d.tls_insecure, "certificates are checked by default");
        assert_eq!(c.key_prefix, d.key_prefix);
        assert_eq!(c.instance_id, d.instance_id);
        assert_eq!(c.heartbeat_ms, d.heartbeat_ms);
        assert_eq!(c.lease_ms, d.lease_ms);
        assert_eq!(c.timeout_ms, d.timeout_ms);
        // Failover within 10 s: the lease, plus one heartbeat to notice it lapsed.
        assert!(d.lease_ms.get() + d.heartbeat_ms.get() <= 10_000);
        // The documented floors: an office behind one NAT, a browser's candidate burst.
        assert!(b.max_connections_per_ip.get() >= 32);
        assert!(b.message_burst.get() >= 50);
    }

    #[test]
    fn redis_urls_are_checked_and_never_show_their_password() {
        let url =
            RedisUrl::try_from("rediss://user:s3cret@redis.example:6380/2?x=1".to_owned()).unwrap();
        assert_eq!(url.redacted(), "rediss://redis.example:6380/2");
        assert_eq!(format!("{url:?}"), "rediss://redis.example:6380/2");
        assert!(url.is_tls());
        let plain = RedisUrl::try_from("redis://:p@ss@10.0.0.5:6379".to_owned()).unwrap();
        assert_eq!(plain.redacted(), "redis://10.0.0.5:6379");
        assert!(!plain.is_tls());
        let err = RedisUrl::try_from("http://10.0.0.5:6379".to_owned()).unwrap_err();
        assert!(
            err.contains("redis://") && err.contains("\"http\""),
            "{err}"
        );
        let err = parse("[cluster]\nredis_url = \"localhost:6379\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn redis_url_from_the_file_wins_over_the_environment() {
        let mut config = parse("[cluster]\nredis_url = \"redis://file:6379\"\n").unwrap();
        let source = config.cluster.apply_env(Some("redis://env:6379")).unwrap();
        assert_eq!(source, Some(UrlSource::File));
        assert_eq!(
            config.cluster.redis_url.unwrap().as_str(),
            "redis://file:6379"
        );

        let mut config = Config::default();
        let source = config
            .cluster
            .apply_env(Some(" redis://env:6379 "))
            .unwrap();
        assert_eq!(source, Some(UrlSource::Environment));
        assert_eq!(
            config.cluster.redis_url.unwrap().as_str(),
            "redis://env:6379"
        );

        let mut config = Config::default();
        assert_eq!(config.cluster.apply_env(Some("")).unwrap(), None);
        assert_eq!(config.cluster.apply_env(None).unwrap(), None);
        let err = config.cluster.apply_env(Some("memcached://x")).unwrap_err();
        assert!(err.to_string().contains("REDIS_URL"), "{err}");
    }

    #[test]
    fn each_tls_mode_parses() {
        for (text, mode) in [
            ("auto", TlsMode::Auto),
            ("files", TlsMode::Files),
            ("off", TlsMode::Off),
        ] {
            let config = parse(&format!("[tls]\nmode = \"{text}\"\n")).unwrap();
            assert_eq!(config.tls.mode, mode);
        }
    }

    #[test]
    fn unknown_key_is_rejected_with_line_and_column() {
        let err =
            parse("listen = \"127.0.0.1:1\"\n\n[websocket]\npign_interval_secs = 3\n").unwrap_err();
        assert!(err.contains("line 4, column 1"), "{err}");
        assert!(err.contains("pign_interval_secs"), "{err}");
        assert!(err.contains("test.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_with_line_and_column() {
        let err = parse("\nlisten = \"localhost-8443\"\n").unwrap_err();
        assert!(err.contains("line 2, column 10"), "{err}");

        let err = parse("[tls]\nmode = \"sometimes\"\n").unwrap_err();
        assert!(err.contains("line 2, column 8"), "{err}");

        let err = parse("[[ice_servers]]\nurls = \"http://example.com\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("not an ICE server URL"), "{err}");

        let err = parse("[[ice_servers]]\nurls = [\"stun:a\", \"ftp://b\"]\n").unwrap_err();
        assert!(err.contains("line 2, column 8"), "{err}");
        assert!(
            err.contains("\"ftp://b\" is not an ICE server URL"),
            "{err}"
        );

        let err = parse("[[ice_servers]]\nurls = []\n").unwrap_err();
        assert!(err.contains("at least one"), "{err}");

        let err = parse("[[ice_servers]]\nurls = [\"turn:t.example:3478\"]\n").unwrap_err();
        assert!(err.contains("line 1, column 1"), "{err}");
        assert!(err.contains("credential"), "{err}");

        let err = parse("[websocket]\nping_interval_secs = 0\n").unwrap_err();
        assert!(err.contains("line 2, column 22"), "{err}");

        let err = parse("[websocket]\nmax_message_bytes = 10\n").unwrap_err();
        assert!(err.contains("line 2, column 21"), "{err}");

        let err = parse("[turn]\nurls = \"turn:t.example\"\nsecret = \"\"\n").unwrap_err();
        assert!(err.contains("line 3, column 10"), "{err}");
    }

    #[test]
    fn origins_are_checked_and_normalised() {
        let config = parse(
            "allowed_origins = [\"https://Calls.Example.com:443/\", \"http://192.0.2.1:8080\"]\n",
        )
        .unwrap();
        let origins: Vec<&str> = config.allowed_origins.iter().map(Origin::as_str).collect();
        assert_eq!(
            origins,
            ["https://calls.example.com", "http://192.0.2.1:8080"]
        );
        for bad in ["calls.example.com", "ftp://x", "https://x/path", "https://"] {
            let err = parse(&format!("allowed_origins = [{bad:?}]\n")).unwrap_err();
            assert!(err.contains("line 1"), "{bad}: {err}");
            assert!(err.contains("not an origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn ice_servers_keep_the_browser_shape() {
        let config = parse(
            "[[ice_servers]]\nurls = \"stun:a.example\"\n\n[[ice_servers]]\n\
             urls = [\"turn:t.example\", \"turns:t.example:443\"]\nusername = \"u\"\ncredential = \"p\"\n",
        )
        .unwrap();
        let json = serde_json::to_value(&config.ice_servers).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"urls": "stun:a.example"},
                {"urls": ["turn:t.example", "turns:t.example:443"], "username": "u", "credential": "p"}
            ])
        );
    }

    #[test]
    fn port_env_switches_to_proxy_mode() {
        let mut config = parse("listen = \"127.0.0.1:9000\"\n").unwrap();
        assert_eq!(config.apply_port_env(None).unwrap(), Mode::Configured);
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());

        let mode = config.apply_port_env(Some("5123")).unwrap();
        assert_eq!(mode, Mode::Platform { port: 5123 });
        assert_eq!(config.listen, "0.0.0.0:5123".parse().unwrap());
        assert_eq!(config.tls.mode, TlsMode::Off);
        assert!(config.behind_proxy);

        for bad in ["", "0", "http", "70000"] {
            assert!(config.apply_port_env(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dialtone.toml");
        std::fs::write(
            &path,
            "public_dir = \"site\"\n[tls]\ncert = \"/abs/cert.pem\"\n",
        )
        .unwrap();
        let config = Config::load(&path, true).unwrap();
        assert_eq!(config.public_dir, Some(dir.path().join("site")));
        assert_eq!(config.file.as_deref(), Some(path.as_path()));
        assert!(config.file_name().ends_with("dialtone.toml"));
        assert_eq!(config.tls.cert, PathBuf::from("/abs/cert.pem"));
        assert_eq!(config.tls.key, dir.path().join("certs/key.pem"));
    }

    #[test]
    fn missing_file_is_an_error_only_when_named_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        assert!(Config::load(&path, false).is_ok());
        let err = Config::load(&path, true).unwrap_err();
        assert!(err.to_string().contains("nope.toml"), "{err}");
        // Said once: the OS error is in the message and not repeated as a source.
        assert!(std::error::Error::source(&err).is_none());
        assert_eq!(
            err.to_string().matches("No such file or directory").count(),
            1,
            "{err}"
        );
    }

    #[test]
    fn listen_takes_addresses_and_host_names() {
        for (text, shown) in [
            ("0.0.0.0:8443", "0.0.0.0:8443"),
            ("[::]:443", "[::]:443"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("localhost:8443", "localhost:8443"),
            ("Calls.Example.com:443", "calls.example.com:443"),
        ] {
            let listen: Listen = text.parse().unwrap();
            assert_eq!(listen.to_string(), shown);
        }
        for bad in [
            "8443",
            "localhost",
            "localhost:",
            ":8443",
            "localhost:99999",
            "300.1.1.1:80",
            "local host:80",
            "-x:80",
            "http://localhost:80",
        ] {
            let err = bad.parse::<Listen>().unwrap_err();
            assert!(
                err.contains("HOST:PORT") && err.contains("localhost:8443"),
                "{bad}: {err}"
            );
        }
        let err = parse("listen = \"localhost\"\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("HOST:PORT"), "{err}");
    }

    #[tokio::test]
    async fn a_host_name_listens_on_each_of_its_addresses() {
        let listen: Listen = "localhost:8443".parse().unwrap();
        let addrs = listen.resolve().await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8443)
        );
        assert!(addrs[0].is_ipv4(), "IPv4 first: {addrs:?}");
        let ip: Listen = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            ip.resolve().await.unwrap(),
            ["127.0.0.1:9".parse().unwrap()]
        );
    }

    #[test]
    fn metrics_can_be_switched_off_or_given_a_token() {
        let config = parse("[metrics]\nenabled = false\n").unwrap();
        assert!(!config.metrics.enabled);
        let config = parse("[metrics]\ntoken = \"t0ken\"\n").unwrap();
        assert_eq!(config.metrics.token.unwrap().0, "t0ken");
        let err = parse("[metrics]\ntoken = \"\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }
}
