//! `jwks_url`: the signing keys of the operator's identity provider, fetched over HTTPS at
//! start, refreshed every `jwks_refresh_secs` (an hour by default), and at once when a token
//! names a `kid` nobody knows (such fetches at most once a minute, so a stream of made-up
//! `kid`s cannot make dialtone hammer the provider). A failed refresh keeps the keys already held. The server's certificate is
//! checked against the system's roots, or `SSL_CERT_FILE` (as rustls-native-certs reads it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Uri;
use jsonwebtoken::jwk::Jwk;
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
            connector: crate::client::connector("[access] jwks_url")?,
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

/// One HTTPS GET; the body of a 200 answer, at most [`MAX_BODY_BYTES`].
async fn get(url: &Uri, connector: &TlsConnector) -> Result<Bytes, String> {
    let request = hyper::Request::get(url.clone())
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("{err}"))?;
    let response = crate::client::send(connector, request, MAX_BODY_BYTES).await?;
    let status = response.status();
    if status != hyper::StatusCode::OK {
        return Err(format!("it answered {status}"));
    }
    Ok(response.into_body())
}
