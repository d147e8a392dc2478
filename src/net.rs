//! This machine's network addresses: what the self-signed certificate covers, what the banner
//! and the QR code offer to phones, and what the built-in TURN relay may advertise.

use std::net::IpAddr;

/// This machine's non-loopback addresses, for the certificate and the URLs printed at start.
pub fn lan_addresses() -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|interface| interface.ip())
        .filter(|ip| !ip.is_loopback())
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The LAN addresses a browser on another device can open: link-local IPv6 ones are left
/// out (their URLs would need a zone id). IPv4 first.
pub fn reachable_lan_addresses() -> Vec<IpAddr> {
    lan_addresses()
        .into_iter()
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect()
}
