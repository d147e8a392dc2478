//! The validated value types the configuration is made of. Each checks itself as it is
//! read, so a bad value is an error that names its line in `config.toml`, and code that
//! holds one never checks it again.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// `"MIN-MAX"`, both inclusive, MIN at least 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let bad = || {
            format!(
                "{text:?} is not a port range: use \"MIN-MAX\" with 1024 <= MIN <= MAX <= 65535, \
                 for example \"49152-65535\""
            )
        };
        let (min, max) = text.split_once('-').ok_or_else(bad)?;
        let min: u16 = min.trim().parse().map_err(|_| bad())?;
        let max: u16 = max.trim().parse().map_err(|_| bad())?;
        if min < 1024 || min > max {
            return Err(bad());
        }
        Ok(PortRange { min, max })
    }
}

/// Where to listen: an IP address and port, or a host name and port that is looked up at
/// start-up (`localhost:8443` listens on each address `localhost` has).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Listen {
    host: ListenHost,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ListenHost {
    Ip(IpAddr),
    Name(String),
}

impl Listen {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The addresses to bind: the one given, or each one the host name resolves to (IPv4
    /// first), without repeats.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let name = match &self.host {
            ListenHost::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, self.port)]),
            ListenHost::Name(name) => name,
        };
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), self.port))
            .await?
            .collect();
        addrs.sort_by_key(|addr| addr.is_ipv6());
        let mut unique = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        Ok(unique)
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            ListenHost::Ip(ip) => SocketAddr::new(*ip, self.port).fmt(f),
            ListenHost::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Listen {
        Listen {
            host: ListenHost::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let bad = || {
            format!(
                "{text:?} is not an address to listen on: use HOST:PORT, e.g. \"0.0.0.0:8443\" \
                 (every IPv4 address), \"[::]:8443\" (IPv6), \"127.0.0.1:8443\" or \
                 \"localhost:8443\""
            )
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let name_like = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
            });
        if !name_like {
            return Err(bad());
        }
        // A dotted quad that did not parse as an address (`300.1.1.1`) is no host name either.
        if host
            .split('.')
            .all(|label| label.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(bad());
        }
        Ok(Listen {
            host: ListenHost::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

impl TryFrom<String> for Listen {
    type Error = String;

    fn try_from(text: String) -> Result<Listen, String> {
        text.parse()
    }
}

/// A `redis://` or `rediss://` URL. Its `Debug` and [`RedisUrl::redacted`] never show the
/// password.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL without user name and password, for logs.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let path = path.split(['?', '#']).next().unwrap_or("");
        format!("{scheme}://{host}{path}")
    }

    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl TryFrom<String> for RedisUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, Self::Error> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(RedisUrl(url))
        } else {
            Err(format!(
                "the Redis URL must start with redis:// or rediss:// (TLS), e.g. \
                 redis://127.0.0.1:6379, not {:?}",
                url.split("://").next().unwrap_or("")
            ))
        }
    }
}

/// `[cluster] instance_id`: this instance's name in Redis keys and channels.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct InstanceId(String);

impl InstanceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstanceId {
    type Error = &'static str;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        if id.is_empty() || id.contains(char::is_control) {
            return Err(
                "[cluster] instance_id must be a non-empty name without control \
                        characters, or left out (then DYNO or the host name is used)",
            );
        }
        Ok(InstanceId(id))
    }
}

/// A web origin, `http(s)://host[:port]`, lower-cased, without a default port or a path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Origin(String);

impl Origin {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `scheme://host[:port]` normalised the same way as configured origins, so an `Origin`
    /// header can be compared with them.
    pub fn normalise(scheme: &str, authority: &str) -> String {
        let authority = authority.to_ascii_lowercase();
        let default_port = if scheme == "https" { ":443" } else { ":80" };
        let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
        format!("{scheme}://{authority}")
    }
}

impl TryFrom<String> for Origin {
    type Error = String;

    fn try_from(origin: String) -> Result<Self, String> {
        let trimmed = origin.trim_end_matches('/');
        let parsed = ["https", "http"].iter().find_map(|scheme| {
            let authority = trimmed.strip_prefix(scheme)?.strip_prefix("://")?;
            // Browsers send host names in ASCII (punycode), so nothing else belongs here; an
            // origin also goes into the CSP header, where a `;` would start a new directive.
            let valid = !authority.is_empty()
                && authority
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
                && authority.parse::<hyper::http::uri::Authority>().is_ok();
            valid.then(|| Origin::normalise(scheme, authority))
        });
        parsed.map(Origin).ok_or_else(|| {
            format!("{origin:?} is not an origin: use scheme://host[:port], e.g. \"https://calls.example.com\"")
        })
    }
}

/// `urls` may be one string or a list, as in the browser's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Urls {
    One(IceUrl),
    Many(Vec<IceUrl>),
}

/// Written by hand because serde's untagged enums replace the URL's own error message with
/// "did not match any variant".
impl<'de> Deserialize<'de> for Urls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UrlsVisitor;
        impl<'de> serde::de::Visitor<'de> for UrlsVisitor {
            type Value = Urls;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL string or a list of URL strings")
            }

            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<Urls, E> {
                IceUrl::try_from(url.to_owned())
                    .map(Urls::One)
                    .map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Urls, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<IceUrl>()? {
                    urls.push(url);
                }
                if urls.is_empty() {
                    return Err(serde::de::Error::custom("urls must list at least one URL"));
                }
                Ok(Urls::Many(urls))
            }
        }
        deserializer.deserialize_any(UrlsVisitor)
    }
}

impl Urls {
    pub fn iter(&self) -> impl Iterator<Item = &IceUrl> {
        match self {
            Urls::One(url) => std::slice::from_ref(url).iter(),
            Urls::Many(urls) => urls.iter(),
        }
    }
}

/// A `stun:`, `stuns:`, `turn:` or `turns:` URL. Checked at load time, because a browser
/// rejects the whole `RTCPeerConnection` over one bad URL, long after the server started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct IceUrl(pub String);

impl IceUrl {
    pub fn is_turn(&self) -> bool {
        self.0.starts_with("turn:") || self.0.starts_with("turns:")
    }
}

impl TryFrom<String> for IceUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        let rest = ["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme));
        match rest {
            Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
                Ok(IceUrl(url))
            }
            _ => Err(format!(
                "{url:?} is not an ICE server URL: use stun:HOST[:PORT], stuns:…, turn:HOST[:PORT] or turns:…"
            )),
        }
    }
}

/// A non-empty shared secret; kept out of `Debug` output so it never reaches a log.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Secret(pub String);

impl TryFrom<String> for Secret {
    type Error = &'static str;

    fn try_from(secret: String) -> Result<Self, Self::Error> {
        if secret.is_empty() {
            return Err(
                "a secret must not be empty: for [turn], coturn's static-auth-secret; \
                 for [metrics] token, a long random string",
            );
        }
        Ok(Secret(secret))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The largest WebSocket message accepted, at least 1 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "usize")]
pub struct MessageLimit(pub usize);

impl TryFrom<usize> for MessageLimit {
    type Error = &'static str;

    fn try_from(bytes: usize) -> Result<Self, Self::Error> {
        if bytes < 1024 {
            return Err(
                "max_message_bytes must be at least 1024: an SDP offer alone is several KiB",
            );
        }
        Ok(MessageLimit(bytes))
    }
}

/// `[turn_server] peers`: what the relay may send to, beyond the addresses always denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Peers {
    /// Only dialtone's own relay addresses. In a 1-to-1 call both browsers relay through this
    /// server, so each side's peer is the other side's relay address: that is enough.
    #[default]
    RelayOnly,
    /// Also the private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7).
    Lan,
    /// Any public unicast address, and the private ranges.
    Public,
}

impl Peers {
    /// As written in the config file.
    pub fn label(self) -> &'static str {
        match self {
            Peers::RelayOnly => "relay-only",
            Peers::Lan => "lan",
            Peers::Public => "public",
        }
    }
}

/// How a browser reaches the built-in relay: UDP (the default for media), TCP, or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// As written in the config file and in the `/metrics` label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// Its place in per-transport arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// `[turn_server] transports`: which of them the relay serves, at least one, each once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<Transport>")]
pub struct Transports(Vec<Transport>);

impl Default for Transports {
    fn default() -> Self {
        Transports(Transport::ALL.to_vec())
    }
}

impl TryFrom<Vec<Transport>> for Transports {
    type Error = &'static str;

    fn try_from(list: Vec<Transport>) -> Result<Self, Self::Error> {
        if list.is_empty() {
            return Err(
                "transports must name at least one of \"udp\", \"tcp\", \"tls\" \
                 (to turn the relay off, set enabled = false)",
            );
        }
        let mut seen = Vec::new();
        for transport in list {
            if seen.contains(&transport) {
                return Err("transports names a transport twice");
            }
            seen.push(transport);
        }
        Ok(Transports(seen))
    }
}

impl Transports {
    pub fn has(&self, transport: Transport) -> bool {
        self.0.contains(&transport)
    }

    /// The ones served, in the order UDP, TCP, TLS.
    pub fn list(&self) -> Vec<Transport> {
        Transport::ALL
            .into_iter()
            .filter(|t| self.has(*t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_what_the_config_file_says() {
        #[derive(Deserialize)]
        struct Table {
            peers: Peers,
        }
        for policy in [Peers::RelayOnly, Peers::Lan, Peers::Public] {
            let text = format!("peers = \"{}\"", policy.label());
            let table: Table = toml::from_str(&text).unwrap();
            assert_eq!(table.peers, policy, "{text}");
        }
    }

    #[test]
    fn transports_are_checked_and_listed_in_a_fixed_order() {
        #[derive(Deserialize, Debug)]
        struct Table {
            #[allow(dead_code)]
            transports: Transports,
        }
        let parse = |text: &str| toml::from_str::<Table>(&format!("transports = {text}"));
        let tls_udp = parse("[\"tls\", \"udp\"]").unwrap().transports;
        assert_eq!(tls_udp.list(), vec![Transport::Udp, Transport::Tls]);
        assert!(!tls_udp.has(Transport::Tcp));
        for (text, says) in [
            ("[]", "at least one"),
            ("[\"udp\", \"udp\"]", "twice"),
            ("[\"quic\"]", "unknown variant"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
        for transport in Transport::ALL {
            assert_eq!(Transport::ALL[transport.index()], transport);
            let one = parse(&format!("[\"{}\"]", transport.label())).unwrap();
            assert_eq!(one.transports.list(), vec![transport]);
        }
        assert_eq!(Transports::default().list(), Transport::ALL.to_vec());
    }
}
