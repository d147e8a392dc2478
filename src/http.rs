//! Routing one HTTP request: WebSocket upgrades to the signaling relay (after the origin
//! check and admission), `/healthz`, `/metrics`, and the page's files from `public/`; and the
//! security headers every response carries.
//!
//! Files are served by hyper-staticfile (MIME types, Last-Modified, ranges); this module adds
//! the rules that keep every request inside `public/`.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_staticfile::vfs::{FileOpener, FileWithMetadata};
use hyper_staticfile::{ResolveResult, Resolver, ResponseBuilder};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::config::{Config, Origin};
use crate::limits::{Admission, Refusal};
use crate::metrics::{Metrics, Snapshot};
use crate::signaling::presence::Presence;
use crate::signaling::registry::Registry;
use crate::signaling::registry::cluster::Cluster;
use crate::signaling::session::{self, Settings, Shared};

/// The body type of every response: static files stream, everything else is one buffer.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "the public directory {path} cannot be opened: {source} (set public_dir in config.toml)"
    )]
    PublicDir { path: PathBuf, source: io::Error },
}

/// What one accepted connection tells the router about itself.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// The application: everything a request needs, behind one cheap-to-clone handle.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    files: Resolver<PublicDir>,
    behind_proxy: bool,
    allowed_origins: Vec<Origin>,
    /// Flipped to `true` at shutdown; every session holds a receiver, so the sender also
    /// tells when the last session has ended.
    shutdown: watch::Sender<bool>,
}

impl App {
    /// The application with the engine the config asks for: Redis when `[cluster]` names
    /// one (connecting and subscribing before it returns), memory otherwise.
    pub async fn start(config: &Config) -> anyhow::Result<App> {
        let metrics = Metrics::new();
        let registry = match &config.cluster.redis_url {
            None => Registry::new(),
            Some(_) => {
                let cluster = Cluster::start(&config.cluster, &metrics).await?;
                cluster.set_resume_grace(config.websocket.resume_grace());
                Registry::Cluster(cluster)
            }
        };
        Ok(App::with_registry(config, registry, metrics)?)
    }

    /// The application with the in-memory engine.
    pub fn new(config: &Config) -> Result<App, AppError> {
        App::with_registry(config, Registry::new(), Metrics::new())
    }

    fn with_registry(
        config: &Config,
        registry: Registry,
        metrics: Metrics,
    ) -> Result<App, AppError> {
        let root = config
            .public_dir
            .canonicalize()
            .and_then(|root| {
                if root.is_dir() {
                    Ok(root)
                } else {
                    Err(io::Error::other("it is not a directory"))
                }
            })
            .map_err(|source| AppError::PublicDir {
                path: config.public_dir.clone(),
                source,
            })?;
        let limits = &config.limits;
        let presence = config
            .presence
            .enabled
            .then(|| Presence::start(registry.clone()));
        Ok(App {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    registry,
                    settings: Settings::from_config(config),
                    metrics,
                    sessions: Default::default(),
                    presence,
                }),
                admission: Admission::new(
                    limits.max_connections.get(),
                    limits.max_connections_per_ip.get(),
                ),
                files: Resolver::with_opener(PublicDir { root }),
                behind_proxy: config.behind_proxy,
                allowed_origins: config.allowed_origins.clone(),
                shutdown: watch::Sender::new(false),
            }),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.shared.registry
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.shared.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.inner.admission.open()
    }

    /// Client addresses holding at least one WebSocket.
    pub fn addresses(&self) -> usize {
        self.inner.admission.addresses()
    }

    /// Tells every open WebSocket to close with 1001 "server restarting".
    pub fn close_sessions(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Completes when every WebSocket session has ended.
    pub async fn sessions_closed(&self) {
        self.inner.shutdown.closed().await;
    }

    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let https = self.is_https(&req, conn);
        let csp = content_security_policy(&req, https);
        let mut response = self.route(req, conn, https).await;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            security_headers(response.headers_mut(), csp, https);
        }
        response
    }

    async fn route(&self, req: Request<Incoming>, conn: ConnInfo, https: bool) -> Response<Body> {
        let client = self.client_ip(&req, conn.peer);
        let path = req.uri().path();
        if hyper_tungstenite::is_upgrade_request(&req) {
            return match path {
                "/" | "/ws" => self.upgrade(req, client, https, conn.tls),
                _ => not_found(),
            };
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/healthz" => return self.health(),
            "/metrics" => return self.metrics_page(),
            "/qr.svg" => return share_qr(&req, https),
            _ => {}
        }
        if self.inner.behind_proxy && forwarded_proto(&req) == Some("http") {
            return redirect_to_https(&req);
        }
        self.file(req).await
    }

    /// Whether the browser sees this page over https: our own TLS, or behind a proxy that
    /// says so.
    fn is_https<B>(&self, req: &Request<B>, conn: ConnInfo) -> bool {
        conn.tls || (self.inner.behind_proxy && forwarded_proto(req) == Some("https"))
    }

    /// Cross-site WebSocket hijacking: a page on another site could open our socket with the
    /// visitor's browser. Browsers always send `Origin`; a request without one is not from a
    /// page (command-line clients, bots) and is let through.
    fn origin_allowed<B>(&self, req: &Request<B>, https: bool) -> bool {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.to_ascii_lowercase();
        if !self.inner.allowed_origins.is_empty() {
            return self
                .inner
                .allowed_origins
                .iter()
                .any(|o| o.as_str() == origin);
        }
        let Some(host) = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        else {
            return false;
        };
        let scheme = if https { "https" } else { "http" };
        Origin::normalise(scheme, host) == origin
    }

    /// The client's address: the peer, or behind a proxy the last hop it recorded in
    /// `X-Forwarded-For` (earlier entries are whatever the client chose to send).
    fn client_ip(&self, req: &Request<Incoming>, peer: SocketAddr) -> IpAddr {
        if !self.inner.behind_proxy {
            return peer.ip();
        }
        req.headers()
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok())
            .unwrap_or(peer.ip())
    }

    /// `https`: what the browser sees (perhaps through a proxy); `tls`: our own TLS.
    fn upgrade(
        &self,
        mut req: Request<Incoming>,
        client: IpAddr,
        https: bool,
        tls: bool,
    ) -> Response<Body> {
        let metrics = self.metrics();
        if !self.origin_allowed(&req, https) {
            metrics.refused("forbidden-origin");
            let origin = req.headers().get(header::ORIGIN);
            debug!(%client, ?origin, "websocket from a foreign origin refused");
            return text(
                StatusCode::FORBIDDEN,
                "this origin may not open the signaling socket (see allowed_origins)\n",
            );
        }
        let permit = match self.inner.admission.admit(client) {
            Ok(permit) => permit,
            Err(refusal) => {
                // Counted in /metrics; a log line each would flood the log in an attack.
                metrics.refused(refusal.label());
                debug!(%client, "websocket refused: {}", refusal.label());
                let (status, body) = match refusal {
                    Refusal::Full => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server full: try again later\n",
                    ),
                    Refusal::TooManyFromAddress => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many connections from your address: close some first\n",
                    ),
                };
                let mut response = text(status, body);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                return response;
            }
        };
        let config = self.settings().websocket_config(tls);
        match hyper_tungstenite::upgrade(&mut req, Some(config)) {
            Ok((response, websocket)) => {
                tokio::spawn(session::serve(
                    websocket,
                    self.inner.shared.clone(),
                    client,
                    permit,
                    self.inner.shutdown.subscribe(),
                ));
                response.map(|body| body.map_err(|never| match never {}).boxed_unsync())
            }
            Err(err) => {
                metrics.refused("bad-upgrade");
                debug!(%client, "bad websocket upgrade: {err}");
                text(
                    StatusCode::BAD_REQUEST,
                    &format!("bad websocket upgrade: {err}\n"),
                )
            }
        }
    }

    fn metrics_page(&self) -> Response<Body> {
        let registry = self.registry();
        let (calls_ringing, calls_active) = registry.calls();
        let body = self.metrics().render(Snapshot {
            connections: self.connections(),
            users: registry.users(),
            users_in_grace: self.inner.shared.sessions.parked(),
            calls_ringing,
            calls_active,
        });
        uncached(&body, Metrics::content_type())
    }

    /// 503 while the backplane is unavailable, so a load balancer sends new users elsewhere.
    fn health(&self) -> Response<Body> {
        let mut body = serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "users": self.registry().users(),
            "connections": self.connections(),
        });
        let backplane = self.registry().backplane_up();
        if let Some(up) = backplane {
            body["backplane"] = if up { "ok" } else { "unavailable" }.into();
            if !up {
                body["status"] = "unavailable".into();
            }
        }
        let mut response = uncached(&body.to_string(), "application/json");
        if backplane == Some(false) {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    }

    async fn file(&self, req: Request<Incoming>) -> Response<Body> {
        if leaves_root(req.uri().path()) {
            return not_found();
        }
        let resolved = match self.inner.files.resolve_request(&req).await {
            Ok(resolved) => resolved,
            Err(err) => {
                warn!("cannot serve {}: {err}", req.uri().path());
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n");
            }
        };
        if matches!(
            resolved,
            ResolveResult::NotFound | ResolveResult::PermissionDenied
        ) {
            return not_found();
        }
        match ResponseBuilder::new().request(&req).build(resolved) {
            Ok(mut response) => {
                // Revalidate every time (cheap: If-Modified-Since answers 304), so a new page
                // is seen after an upgrade.
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response.map(BodyExt::boxed_unsync)
            }
            Err(err) => {
                warn!("cannot build a response for {}: {err}", req.uri().path());
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot build response\n")
            }
        }
    }
}

/// The page's policy: everything from this origin only; the socket to this host; no plugins,
/// no framing. The WebSocket URL is named explicitly because older browsers do not count
/// ws:/wss: as 'self'.
/// The host (and port) the browser asked for: the Host header, or over HTTP/2, which has
/// none, the request's `:authority`.
fn authority<B>(req: &Request<B>) -> Option<hyper::http::uri::Authority> {
    match req.headers().get(header::HOST) {
        Some(host) => host.to_str().ok()?.parse().ok(),
        None => req.uri().authority().cloned(),
    }
}

fn content_security_policy<B>(req: &Request<B>, https: bool) -> HeaderValue {
    let host = authority(req);
    let socket = match host {
        Some(host) => format!(" {}://{host}", if https { "wss" } else { "ws" }),
        None => String::new(),
    };
    let policy = format!(
        "default-src 'self'; connect-src 'self'{socket}; img-src 'self' data:; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'self'"))
}

fn security_headers(headers: &mut hyper::HeaderMap, csp: HeaderValue, https: bool) {
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static(
            "camera=(self), microphone=(self), display-capture=(), geolocation=(), usb=()",
        ),
    );
    if https {
        // Browsers ignore this over a certificate they had to be told to accept (RFC 6797
        // 8.1), so it never locks anyone out of a self-signed LAN setup.
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
}

/// A request path that tries to climb out of `public/`: a `..` segment (also percent-encoded),
/// a backslash, or a NUL. hyper-staticfile would fold these into harmless paths; refusing them
/// outright makes the rule plain.
fn leaves_root(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded.contains('\\') || decoded.contains('\0') || decoded.split('/').any(|s| s == "..")
}

fn forwarded_proto<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get("x-forwarded-proto")?.to_str().ok()?;
    // A chain of proxies appends; the first entry is what the client used.
    value.split(',').next().map(str::trim)
}

/// Behind a TLS-terminating router, a plain-http page request goes to the same URL on https.
fn redirect_to_https<B>(req: &Request<B>) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .filter(|host| host.parse::<hyper::http::uri::Authority>().is_ok());
    let Some(host) = host else {
        return text(StatusCode::BAD_REQUEST, "missing or invalid Host header\n");
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let location = format!("https://{host}{path}");
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            let mut response = text(StatusCode::PERMANENT_REDIRECT, "use https\n");
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "invalid request target\n"),
    }
}

/// A 200 that no cache may keep: live figures.
fn uncached(body: &str, content_type: &'static str) -> Response<Body> {
    let mut response = text(StatusCode::OK, body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Names and other URL components: everything but the unreserved characters is encoded.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `GET /qr.svg[?call=NAME]`: a QR code of this page's address (with `call`, of the link that
/// calls NAME), so one device can hand it to another. A page opened on the server's own
/// machine (`localhost`) shows the first LAN address instead, which a phone can reach.
fn share_qr<B>(req: &Request<B>, https: bool) -> Response<Body> {
    let Some(authority) = authority(req) else {
        return text(StatusCode::BAD_REQUEST, "a Host header is needed\n");
    };
    let scheme = if https { "https" } else { "http" };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let local = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let lan = crate::tls::reachable_lan_addresses();
    let base = match lan.first() {
        Some(ip) if local => {
            let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
            format!("{scheme}://{}", SocketAddr::new(*ip, port))
        }
        _ => format!("{scheme}://{authority}"),
    };
    let call = req.uri().query().and_then(|query| {
        query.split('&').find_map(|pair| {
            let value = pair.strip_prefix("call=")?;
            let name = percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8()
                .ok()?
                .into_owned();
            crate::signaling::protocol::validate_name(&name).ok()?;
            Some(name)
        })
    });
    let url = match call {
        Some(name) => format!(
            "{base}/?call={}",
            percent_encoding::utf8_percent_encode(&name, COMPONENT)
        ),
        None => format!("{base}/"),
    };
    match crate::qr::svg(&url) {
        Some(svg) => {
            let mut response = uncached(&svg, "image/svg+xml");
            if let Ok(value) = HeaderValue::from_str(&url) {
                // What the code says, for a test or a curious operator.
                response.headers_mut().insert("x-qr-text", value);
            }
            response
        }
        None => text(
            StatusCode::BAD_REQUEST,
            "that address is too long for a QR code\n",
        ),
    }
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::copy_from_slice(body.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Opens files under a canonical root, refusing anything whose real path (symlinks
/// resolved) lies outside it, so a symlink in `public/` cannot expose the rest of the disk.
struct PublicDir {
    root: PathBuf,
}

impl FileOpener for PublicDir {
    type File = tokio::fs::File;
    type Future =
        Pin<Box<dyn Future<Output = io::Result<FileWithMetadata<tokio::fs::File>>> + Send>>;

    fn open(&self, path: &Path) -> Self::Future {
        let root = self.root.clone();
        let wanted = root.join(path);
        Box::pin(async move {
            let opened = tokio::task::spawn_blocking(move || {
                let real = wanted.canonicalize()?;
                if !real.starts_with(&root) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "path leads outside the public directory",
                    ));
                }
                let file = std::fs::File::open(&real)?;
                let metadata = file.metadata()?;
                Ok(FileWithMetadata {
                    handle: tokio::fs::File::from_std(file),
                    size: metadata.len(),
                    modified: metadata.modified().ok(),
                    is_dir: metadata.is_dir(),
                })
            })
            .await;
            opened.unwrap_or_else(|join| Err(io::Error::other(join)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_paths_are_recognised() {
        for bad in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/%2e%2e/x",
            "/a/../../x",
            "/..%2fx",
            "/%5c..%5cx",
            "/a\\b",
            "/x%00.html",
        ] {
            assert!(leaves_root(bad), "{bad}");
        }
        for good in ["/", "/index.html", "/app.js", "/a..b", "/.well-known/x"] {
            assert!(!leaves_root(good), "{good}");
        }
    }
}
