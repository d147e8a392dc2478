//! One HTTPS request from dialtone to another server: the identity provider's JWKS
//! (`[access] jwks_url`) and the ACME CA (`[tls] mode = "acme"`).
//!
//! Each request opens its own HTTP/1.1 connection: both callers make a handful of requests
//! an hour at most, so a pool would only hold sockets open. The server's certificate is
//! checked against the system's roots, or `SSL_CERT_FILE` (as rustls-native-certs reads it),
//! which is how a private CA (a company's, or a test server's) is trusted.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::client::conn::http1;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What dialtone says it is, to servers that log it.
pub const USER_AGENT: &str = concat!("dialtone/", env!("CARGO_PKG_VERSION"));

/// A TLS client that trusts the system's roots; `purpose` names the setting whose address
/// it reaches, for the error when there are no roots at all.
pub fn connector(purpose: &str) -> Result<TlsConnector, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no trusted root certificates found to check {purpose} with: install \
             ca-certificates, or name a PEM bundle in SSL_CERT_FILE"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Sends `request` (whose URI is absolute, `https://…`) and reads the answer's body, at most
/// `max_body` bytes. Any status is an answer; the caller decides what a good one is. The
/// caller also sets the time limit: dropping this future drops the connection.
pub async fn send<B>(
    connector: &TlsConnector,
    mut request: Request<B>,
    max_body: usize,
) -> Result<Response<Bytes>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let url = request.uri().clone();
    let host = url.host().ok_or("the URL has no host")?.to_owned();
    if url.scheme_str() != Some("https") {
        return Err(format!("{url} is not an https:// address"));
    }
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
    // The connection's task goes with the request, however the request ends (the caller's
    // timeout included).
    let _driver = AbortOnDrop(tokio::spawn(conn));
    // HTTP/1.1 wants the path in the request line and the authority in Host.
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = path.parse::<Uri>().map_err(|err| format!("{url}: {err}"))?;
    let authority = url.authority().map_or(host.as_str(), |a| a.as_str());
    let headers = request.headers_mut();
    headers.insert(
        hyper::header::HOST,
        authority
            .parse()
            .map_err(|err| format!("{authority}: {err}"))?,
    );
    headers.insert(
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_static(USER_AGENT),
    );
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| format!("HTTP with {host}: {err}"))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|err| format!("reading the answer: {err}"))?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
