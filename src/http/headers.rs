//! The headers every response carries: the content security policy, and the rest of the
//! browser hardening; and what the request says about where it came from.

use hyper::Request;
use hyper::header::{self, HeaderValue};

/// The host (and port) the browser asked for: the Host header, or over HTTP/2, which has
/// none, the request's `:authority`.
pub fn authority<B>(req: &Request<B>) -> Option<hyper::http::uri::Authority> {
    match req.headers().get(header::HOST) {
        Some(host) => host.to_str().ok()?.parse().ok(),
        None => req.uri().authority().cloned(),
    }
}

/// The page's policy: everything from this origin only; the socket to this host; no plugins;
/// no framing, except by the origins in `frame_ancestors` (`'none'` when there are none).
/// The WebSocket URL is named explicitly because older browsers do not count ws:/wss: as
/// 'self'.
pub fn content_security_policy<B>(
    req: &Request<B>,
    https: bool,
    frame_ancestors: &str,
) -> HeaderValue {
    let host = authority(req);
    let socket = match host {
        Some(host) => format!(" {}://{host}", if https { "wss" } else { "ws" }),
        None => String::new(),
    };
    let policy = format!(
        "default-src 'self'; connect-src 'self'{socket}; img-src 'self' data:; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors {frame_ancestors}"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'self'"))
}

pub fn security_headers(headers: &mut hyper::HeaderMap, csp: HeaderValue, https: bool) {
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

pub fn forwarded_proto<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get("x-forwarded-proto")?.to_str().ok()?;
    // A chain of proxies appends; the first entry is what the client used.
    value.split(',').next().map(str::trim)
}
