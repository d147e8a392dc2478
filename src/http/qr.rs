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
/// machine (`localhost`) shows the first LAN address a listener serves instead, which a phone
/// can reach; when no listener serves one (`--listen 127.0.0.1:…`), the page's own address
/// (and the page says a phone cannot open it). `listening`: the server's bound addresses, when
/// known.
pub fn share_qr<B>(
    req: &Request<B>,
    https: bool,
    listening: Option<&[SocketAddr]>,
) -> Response<Body> {
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
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let lan = crate::net::reachable_lan_addresses();
    let served = match listening {
        Some(listening) => served_lan(listening, port, &lan),
        None => lan,
    };
    let base = match served.first() {
        Some(ip) if local => format!("{scheme}://{}", SocketAddr::new(*ip, port)),
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

/// Of this machine's LAN addresses `lan`, those a listener on `port` serves: all of them
/// behind a wildcard bind (`0.0.0.0`: the IPv4 ones), a listener's own address otherwise.
fn served_lan(listening: &[SocketAddr], port: u16, lan: &[IpAddr]) -> Vec<IpAddr> {
    let mut served = Vec::new();
    for listener in listening.iter().filter(|listener| listener.port() == port) {
        let ip = listener.ip();
        let covered = lan.iter().filter(|candidate| match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => candidate.is_ipv4(),
            IpAddr::V6(v6) if v6.is_unspecified() => true,
            _ => **candidate == ip,
        });
        for candidate in covered {
            if !served.contains(candidate) {
                served.push(*candidate);
            }
        }
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_a_listener_serves_are_offered() {
        let lan: Vec<IpAddr> = ["192.168.1.5", "10.0.0.7", "fd00::5"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        let at = |addr: &str| -> SocketAddr { addr.parse().unwrap() };
        let served = |listening: &[SocketAddr], port| served_lan(listening, port, &lan);
        // The bug this fixes: --listen 127.0.0.1 served no LAN address, yet one was offered.
        assert!(served(&[at("127.0.0.1:8443")], 8443).is_empty());
        assert_eq!(served(&[at("0.0.0.0:8443")], 8443), &lan[..2]);
        assert_eq!(served(&[at("[::]:8443")], 8443), lan);
        assert_eq!(served(&[at("10.0.0.7:8443")], 8443), &lan[1..2]);
        // Another port's listener does not serve this page's port.
        assert!(served(&[at("0.0.0.0:9000")], 8443).is_empty());
        assert_eq!(
            served(
                &[
                    at("127.0.0.1:8443"),
                    at("10.0.0.7:8443"),
                    at("0.0.0.0:8443")
                ],
                8443
            ),
            vec![lan[1], lan[0]]
        );
    }
}
