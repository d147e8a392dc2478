//! `jwks_url`: the signing keys of the operator's identity provider, fetched over HTTPS at
//! start, refreshed every `jwks_refresh_secs` (an hour by default), and at once when a token
//! names a `kid` nobody knows (such fetches at most once a minute, so a stream of made-up
//! `kid`s cannot make dialtone hammer the provider). A failed refresh keeps the keys already held. The server's certificate is
//! checked against the system's roots, or `SSL_CERT_FILE` (as rustls-native-certs reads it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tracing::warn;

use super::token::{Key, jwk_key};

/// The longest a whole fetch may take: connect, handshake, request and body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two fetches caused by unknown `kid`s.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(60);
/// The largest key set read.
const MAX_BODY_BYTES: usize = 512 * 1024;

pub struct Jwks {
    url: Uri,
    connector: TlsConnector,
    keys: Mutex<Arc<Vec<Key>>>,
    /// When the last fetch for an unknown `kid` started; held across that fetch, so logins
    /// that arrive meanwhile wait for it instead of starting their own.
    last_triggered: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// Fetches the keys once; an error says what to fix.
    pub async fn start(url: &str, refresh_every: Duration) -> Result<Arc<Jwks>, String> {
        let parsed: Uri = url
            .parse()
            .map_err(|err| format!("[access] jwks_url {url:?} is not a URL: {err}"))?;
        let jwks = Arc::new(Jwks {
            url: parsed,
            connector: connector()?,
            keys: Mutex::new(Arc::default()),
            last_triggered: tokio::sync::Mutex::new(None),
        });
        let keys = jwks.fetch().await.map_err(|err| {
            format!(
                "cannot fetch [access] jwks_url {url}: {err} (check the address, that this \
                 machine can reach it, and that its certificate is trusted here: a private CA \
                 goes in SSL_CERT_FILE)"
            )
        })?;
        if keys.is_empty() {
            return Err(format!(
                "[access] jwks_url {url} holds no key dialtone can use (RSA, P-256, P-384 or \
                 Ed25519 signing keys)"
            ));
        }
        *crate::sync::lock(&jwks.keys) = Arc::new(keys);
        tokio::spawn(refresh_every_so_often(Arc::downgrade(&jwks), refresh_every));
        Ok(jwks)
    }

    /// The keys held now.
    pub fn keys(&self) -> Arc<Vec<Key>> {
        crate::sync::lock(&self.keys).clone()
    }

    /// For a token with an unknown `kid`: fetches again unless such a fetch started less
    /// than [`MIN_REFRESH_GAP`] ago; returns whether the keys were replaced.
    pub async fn refresh_soon(&self) -> bool {
        let mut last = self.last_triggered.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFRESH_GAP) {
            return false;
        }
        *last = Some(Instant::now());
        self.refresh().await
    }

    async fn refresh(&self) -> bool {
        match self.fetch().await {
            Ok(keys) if !keys.is_empty() => {
                *crate::sync::lock(&self.keys) = Arc::new(keys);
                true
            }
            Ok(_) => {
                warn!(url = %self.url, "the JWKS holds no usable key now: keeping the keys held");
                false
            }
            Err(err) => {
                warn!(url = %self.url, "cannot refresh the JWKS: {err}: keeping the keys held");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let body = timeout(FETCH_TIMEOUT, get(&self.url, &self.connector))
            .await
            .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))??;
        parse(&body)
    }
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwks({})", self.url)
    }
}

/// Ends when the server that started it has gone.
async fn refresh_every_so_often(jwks: std::sync::Weak<Jwks>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(jwks) = jwks.upgrade() else { return };
        jwks.refresh().await;
    }
}

/// The usable keys of a JWKS document; each key that cannot be used is logged and skipped,
/// so one odd key does not hide the rest.
pub fn parse(body: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|err| format!("the answer is not a JWKS ({{\"keys\": [...]}}): {err}"))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let key = serde_json::from_value::<Jwk>(value)
            .map_err(|err| format!("unreadable key: {err}"))
            .and_then(|jwk| jwk_key(&jwk));
        match key {
            Ok(key) => keys.push(key),
            Err(why) => warn!("JWKS: skipping a key: {why}"),
        }
    }
    Ok(keys)
}

fn connector() -> Result<TlsConnector, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(
            "no trusted root certificates found to check [access] jwks_url with: install \
             ca-certificates, or name a PEM bundle in SSL_CERT_FILE"
                .into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One HTTPS GET over HTTP/1.1; the body of a 200 answer, at most [`MAX_BODY_BYTES`].
async fn get(url: &Uri, connector: &TlsConnector) -> Result<Bytes, String> {
    let host = url.host().ok_or("the URL has no host")?;
    let port = url.port_u16().unwrap_or(443);
    // `[::1]` in a URL is `::1` to the resolver and in the certificate.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|err| format!("cannot connect to {host}:{port}: {err}"))?;
    let name = ServerName::try_from(bare.to_owned()).map_err(|err| format!("{host}: {err}"))?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|err| format!("TLS with {host}: {err}"))?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|err| format!("HTTP with {host}: {err}"))?;
    // The connection's task goes with the fetch, however the fetch ends (the timeout around
    // it included).
    let _driver = AbortOnDrop(tokio::spawn(conn));
    request_body(url, host, &mut sender).await
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The request on an open connection, and the answer's body.
async fn request_body(
    url: &Uri,
    host: &str,
    sender: &mut http1::SendRequest<Empty<Bytes>>,
) -> Result<Bytes, String> {
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let authority = url.authority().map_or(host, |a| a.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("dialtone/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("{err}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| format!("HTTP with {host}: {err}"))?;
    let status = response.status();
    if status != hyper::StatusCode::OK {
        return Err(format!("it answered {status}"));
    }
    Ok(Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|err| format!("reading the answer: {err}"))?
        .to_bytes())
}
