//! Routing one HTTP request: WebSocket upgrades to the signaling relay (after the origin
//! check and admission), `/healthz`, `/metrics`, and the page's files; and the security
//! headers every response carries.
//!
//! The page is built into the binary (rust-embed), so a copied or `cargo install`ed binary
//! runs from any folder. With `public_dir` set, files come from disk instead, served by
//! hyper-staticfile (MIME types, Last-Modified, ranges), and this module adds the rules that
//! keep every request inside that folder.

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

use crate::config::{Config, Origin, Secret};
use crate::limits::{Admission, Refusal, Sometimes};
use crate::metrics::{Metrics, Snapshot};
use crate::relay::TurnRelay;
use crate::signaling::presence::Presence;
use crate::signaling::registry::Registry;
use crate::signaling::registry::cluster::Cluster;
use crate::signaling::session::{self, Settings, Shared};

/// The body type of every response: static files stream, everything else is one buffer.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `reason` is part of the message, not a `source`, so a chain prints it once.
    #[error(
        "the public_dir {path} cannot be opened: {reason} (fix public_dir in {file}, or remove \
         it to serve the page built into the binary)"
    )]
    PublicDir {
        path: PathBuf,
        reason: io::Error,
        file: String,
    },
}

/// The page's files as built into the binary from the repository's `public/`.
///
/// rust-embed: widely used and maintained, it embeds with `include_bytes!` (so cargo rebuilds
/// when a file changes) and records each file's SHA-256 and modification time at build time,
/// which give the ETag and Last-Modified. `debug-embed` makes debug builds embed too, so the
/// tests run the same page a release serves.
#[derive(rust_embed::Embed)]
#[folder = "public/"]
struct BuiltInPage;

/// Where the page's files come from.
enum Files {
    BuiltIn,
    Disk(Resolver<PublicDir>),
}

/// Checks `public_dir` (when set) and returns the folder to serve, canonical; `None` serves
/// the built-in page.
pub fn public_root(config: &Config) -> Result<Option<PathBuf>, AppError> {
    let Some(dir) = &config.public_dir else {
        return Ok(None);
    };
    dir.canonicalize()
        .and_then(|root| {
            if root.is_dir() {
                Ok(root)
            } else {
                Err(io::Error::other("it is not a directory"))
            }
        })
        .map(Some)
        .map_err(|reason| AppError::PublicDir {
            path: dir.clone(),
            reason,
            file: config.file_name(),
        })
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
    files: Files,
    behind_proxy: bool,
    /// Whether dialtone terminates TLS itself (`tls.mode` other than "off").
    own_tls: bool,
    allowed_origins: Vec<Origin>,
    metrics_enabled: bool,
    metrics_token: Option<Secret>,
    /// Log lines an attacker could repeat at will: at most one a second each.
    refused_origin_log: Sometimes,
    forwarded_log: Sometimes,
    /// The settings file, for log lines that say what to change.
    config_file: String,
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
        let relay = if config.turn_server.enabled {
            Some(TurnRelay::start(&config.turn_server, &crate::tls::lan_addresses()).await?)
        } else {
            None
        };
        Ok(App::with_registry(config, registry, metrics, relay)?)
    }

    /// The application with the in-memory engine.
    pub fn new(config: &Config) -> Result<App, AppError> {
        App::with_registry(config, Registry::new(), Metrics::new(), None)
    }

    fn with_registry(
        config: &Config,
        registry: Registry,
        metrics: Metrics,
        relay: Option<TurnRelay>,
    ) -> Result<App, AppError> {
        let files = match public_root(config)? {
            None => Files::BuiltIn,
            Some(root) => Files::Disk(Resolver::with_opener(PublicDir { root })),
        };
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
                    relay,
                }),
                admission: Admission::new(
                    limits.max_connections.get(),
                    limits.max_connections_per_ip.get(),
                ),
                files,
                behind_proxy: config.behind_proxy,
                own_tls: config.tls.mode != crate::config::TlsMode::Off,
                allowed_origins: config.allowed_origins.clone(),
                metrics_enabled: config.metrics.enabled,
                metrics_token: config.metrics.token.clone(),
                refused_origin_log: Sometimes::new(),
                forwarded_log: Sometimes::new(),
                config_file: config.file_name(),
                shutdown: watch::Sender::new(false),
            }),
        })
    }

    /// The built-in TURN relay, when it runs.
    pub fn relay(&self) -> Option<&TurnRelay> {
        self.inner.shared.relay.as_ref()
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

    /// Plain HTTP that reached the TLS port (someone typed `http://`, or no scheme): the
    /// same URL on `https://`.
    pub fn redirect_to_tls<B>(&self, req: &Request<B>) -> Response<Body> {
        let mut response = redirect_to_https(req);
        security_headers(
            response.headers_mut(),
            content_security_policy(req, false),
            false,
        );
        response
    }

    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        self.notice_forwarding(&req, conn);
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
            "/metrics" if self.inner.metrics_enabled => return self.metrics_page(&req),
            "/qr.svg" => return share_qr(&req, https),
            _ => {}
        }
        if self.inner.behind_proxy && forwarded_proto(&req) == Some("http") {
            return redirect_to_https(&req);
        }
        self.file(req).await
    }

    /// A proxy in front that dialtone was not told about: every user then counts as the
    /// proxy's address for the per-address limits, and http:// pages are not redirected.
    fn notice_forwarding<B>(&self, req: &Request<B>, conn: ConnInfo) {
        if self.inner.behind_proxy || conn.tls {
            return;
        }
        let forwarded = ["x-forwarded-for", "x-forwarded-proto", "forwarded"]
            .iter()
            .find(|name| req.headers().contains_key(**name));
        if let Some(header) = forwarded
            && self.inner.forwarded_log.now()
        {
            warn!(
                peer = %conn.peer,
                "requests come through a proxy ({header} is set) but behind_proxy is false: \
                 every user counts as the proxy's address {} for the per-address limits; set \
                 behind_proxy = true in {} if that proxy is yours",
                conn.peer.ip(),
                self.inner.config_file
            );
        }
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
        self.accepted_origins(req, https).contains(&origin)
    }

    /// The origins whose pages may open the socket: `allowed_origins` when set, otherwise the
    /// page's own, from the Host the browser asked for. With TLS off, dialtone expects a
    /// TLS-terminating proxy in front (the documented setup), so the same host under
    /// `https://` counts as the page's own too, whether or not `behind_proxy` is set: only
    /// the forwarded addresses need that trust, not the origin.
    fn accepted_origins<B>(&self, req: &Request<B>, https: bool) -> Vec<String> {
        if !self.inner.allowed_origins.is_empty() {
            return self
                .inner
                .allowed_origins
                .iter()
                .map(|o| o.as_str().to_owned())
                .collect();
        }
        let Some(host) = authority(req) else {
            return Vec::new();
        };
        let host = host.as_str();
        let mut own = vec![Origin::normalise(
            if https { "https" } else { "http" },
            host,
        )];
        if !self.inner.own_tls && !https {
            own.push(Origin::normalise("https", host));
        }
        own
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
            // Usually a proxy that rewrites Host, or a page served from another address: say
            // what came and what to change (at most once a second: anyone can send these).
            if self.inner.refused_origin_log.now() {
                let accepted = self.accepted_origins(&req, https);
                let came = origin.map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned());
                warn!(
                    %client,
                    "websocket refused: its page's origin {:?} is not one of {accepted:?}; if \
                     that page is yours, add it to allowed_origins in {} (behind a proxy, or \
                     have the proxy pass the browser's Host header on)",
                    came.unwrap_or_default(),
                    self.inner.config_file
                );
            } else {
                debug!(%client, ?origin, "websocket from a foreign origin refused");
            }
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

    /// With `[metrics] token`, only `Authorization: Bearer <token>` may read the figures.
    fn metrics_page<B>(&self, req: &Request<B>) -> Response<Body> {
        if let Some(token) = &self.inner.metrics_token {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim);
            let matches = presented
                .is_some_and(|presented| same_secret(presented.as_bytes(), token.0.as_bytes()));
            if !matches {
                let mut response = text(
                    StatusCode::UNAUTHORIZED,
                    "send Authorization: Bearer <the [metrics] token>\n",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"dialtone metrics\""),
                );
                return response;
            }
        }
        let registry = self.registry();
        let (calls_ringing, calls_active) = registry.calls();
        let body = self.metrics().render(Snapshot {
            connections: self.connections(),
            users: registry.users(),
            users_in_grace: self.inner.shared.sessions.parked(),
            calls_ringing,
            calls_active,
            relay: self.inner.shared.relay.as_ref().map(TurnRelay::snapshot),
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
        let files = match &self.inner.files {
            Files::BuiltIn => return built_in_file(&req),
            Files::Disk(files) => files,
        };
        let resolved = match files.resolve_request(&req).await {
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

/// One file of the built-in page, with the same caching rules as files from disk:
/// revalidated each time, and answered 304 when the ETag or the date still matches.
fn built_in_file<B>(req: &Request<B>) -> Response<Body> {
    let path = req.uri().path().trim_start_matches('/');
    let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.into_owned()
    };
    let Some(file) = BuiltInPage::get(&path) else {
        return not_found();
    };
    let hash = file.metadata.sha256_hash();
    let mime = file.metadata.mimetype();
    let etag = format!(
        "\"{}\"",
        hash[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let modified = file
        .metadata
        .last_modified()
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    let headers = req.headers();
    let unchanged = match headers.get(header::IF_NONE_MATCH) {
        Some(tags) => tags.to_str().is_ok_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == "*" || tag.trim().trim_start_matches("W/") == etag)
        }),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|since| httpdate::parse_http_date(since.to_str().ok()?).ok())
            .zip(modified)
            .is_some_and(|(since, modified)| modified <= since),
    };
    let mut response = if unchanged {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let length = file.data.len();
        let body = match (req.method(), file.data) {
            (&Method::HEAD, _) => empty(),
            (_, std::borrow::Cow::Borrowed(bytes)) => full(Bytes::from_static(bytes)),
            (_, std::borrow::Cow::Owned(bytes)) => full(Bytes::from(bytes)),
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        if let Ok(mime) = HeaderValue::from_str(mime) {
            headers.insert(header::CONTENT_TYPE, mime);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        response
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(modified) = modified
        && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(modified))
    {
        headers.insert(header::LAST_MODIFIED, date);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Compares without stopping at the first difference, so the time taken does not tell how
/// much of a guessed token was right (only whether its length was).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn empty() -> Body {
    full(Bytes::new())
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// The host (and port) the browser asked for: the Host header, or over HTTP/2, which has
/// none, the request's `:authority`.
fn authority<B>(req: &Request<B>) -> Option<hyper::http::uri::Authority> {
    match req.headers().get(header::HOST) {
        Some(host) => host.to_str().ok()?.parse().ok(),
        None => req.uri().authority().cloned(),
    }
}

/// The page's policy: everything from this origin only; the socket to this host; no plugins,
/// no framing. The WebSocket URL is named explicitly because older browsers do not count
/// ws:/wss: as 'self'.
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
    let mut response = Response::new(full(Bytes::copy_from_slice(body.as_bytes())));
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
