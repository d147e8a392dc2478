//! `/qr.svg`: the page's address as a QR code, for handing a call link to another device.

use std::net::{IpAddr, SocketAddr};

use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};

use super::headers::authority;
use super::response::{Body, text, uncached};

/// Names and other URL components: everything but the unreserved characters is encoded.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `GET /qr.svg[?call=NAME]`: a QR code of this page's address (with `call`, of the link that
/// calls NAME), so one device can hand it to another. A page opened on the server's own
/// machine (`localhost`) shows the first LAN address instead, which a phone can reach.
pub fn share_qr<B>(req: &Request<B>, https: bool) -> Response<Body> {
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
    let lan = crate::net::reachable_lan_addresses();
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
