//! Where the relay may send: the peer policy. A TURN relay that sends anywhere is an open
//! proxy into the network it runs in (coturn's CVE-2020-26262 reached loopback through
//! `0.0.0.0` and `::`; cloud metadata lives at 169.254.169.254), so some addresses are denied
//! whatever the policy, and the default allows only dialtone's own relay addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::config::Peers;

/// Why a peer is refused, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Loopback, unspecified, link-local, multicast, broadcast, documentation or reserved:
    /// never a browser's address.
    Never,
    /// Allowed by a wider policy, not this one.
    Policy,
}

/// The one form of an address: IPv4 stays IPv4, and IPv6 forms that carry an IPv4 address
/// (`::ffff:a.b.c.d`, and the deprecated `::a.b.c.d`) become that IPv4 address, so that
/// `::ffff:127.0.0.1` is judged as 127.0.0.1.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let segments = v6.segments();
            // ::a.b.c.d (IPv4-compatible), but not :: and ::1, which are IPv6's own.
            if segments[..6].iter().all(|&s| s == 0) && (segments[6] != 0 || segments[7] > 1) {
                return IpAddr::V4(Ipv4Addr::from(
                    (u32::from(segments[6]) << 16) | u32::from(segments[7]),
                ));
            }
            ip
        }
    }
}

/// Whether the relay may send to `peer`, given dialtone's own relay addresses `own`.
pub fn check(policy: Peers, peer: IpAddr, own: &[IpAddr]) -> Result<(), Denied> {
    let peer = canonical(peer);
    if never(peer) {
        return Err(Denied::Never);
    }
    if own.iter().any(|&ip| canonical(ip) == peer) {
        return Ok(());
    }
    match (policy, private(peer)) {
        (Peers::RelayOnly, _) => Err(Denied::Policy),
        (Peers::Lan, true) | (Peers::Public, _) => Ok(()),
        (Peers::Lan, false) => Err(Denied::Policy),
    }
}

/// Addresses no browser has: denied whatever the policy. `ip` is canonical.
fn never(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            a == 0 // 0.0.0.0/8, "this network": 0.0.0.0 reaches loopback
                || v4.is_loopback()
                || v4.is_link_local() // 169.254/16, cloud metadata among it
                || v4.is_multicast()
                || a >= 240 // reserved, and the broadcast address
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18/15
                || v4.is_documentation()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link-local
                || (v6.segments()[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || v6.segments()[0] == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || v6.segments()[..2] == [0x0064, 0xff9b] // NAT64: may embed anything
                || v6.segments()[0] == 0x2002 // 6to4: may embed anything
                || v6.segments()[..2] == [0x2001, 0] // Teredo
                || v6.segments()[..6] == [0, 0, 0, 0, 0, 0] // any other IPv4-compatible
                || is_mapped_remainder(v6)
        }
    }
}

/// `::ffff:0:a.b.c.d` (IPv4-translated), which `canonical` does not unwrap.
fn is_mapped_remainder(v6: Ipv6Addr) -> bool {
    v6.segments()[..6] == [0, 0, 0, 0, 0xffff, 0]
}

/// The private ranges that `peers = "lan"` adds. `ip` is canonical.
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || (a == 100 && (b & 0xc0) == 64) // carrier-grade NAT, 100.64/10
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00, // unique local, fc00::/7
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn some_addresses_are_denied_whatever_the_policy() {
        let own = [ip("203.0.113.7")];
        for denied in [
            "127.0.0.1",
            "127.5.6.7",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "224.0.0.1",
            "239.255.255.250",
            "ff02::1",
            "255.255.255.255",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::ffff:0:127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.5",
            "fec0::1",
            "2001:db8::1",
            "2001:0:4136:e378::1",
            "::2",
        ] {
            for policy in [Peers::RelayOnly, Peers::Lan, Peers::Public] {
                assert_eq!(
                    check(policy, ip(denied), &own),
                    Err(Denied::Never),
                    "{denied} under {policy:?}"
                );
            }
        }
    }

    #[test]
    fn a_loopback_relay_address_is_still_loopback() {
        // Even when the relay itself is on loopback, a peer there is refused: anything
        // else listening on that port would be reachable.
        let own = [ip("127.0.0.1")];
        assert_eq!(
            check(Peers::RelayOnly, ip("127.0.0.1"), &own),
            Err(Denied::Never)
        );
    }

    #[test]
    fn relay_only_allows_dialtones_own_addresses_and_nothing_else() {
        let own = [ip("203.0.113.7"), ip("10.0.0.5")];
        assert_eq!(check(Peers::RelayOnly, ip("10.0.0.5"), &own), Ok(()));
        assert_eq!(check(Peers::RelayOnly, ip("::ffff:10.0.0.5"), &own), Ok(()));
        for other in ["10.0.0.6", "192.168.1.2", "8.8.8.8", "2a00:1450::1"] {
            assert_eq!(
                check(Peers::RelayOnly, ip(other), &own),
                Err(Denied::Policy),
                "{other}"
            );
        }
    }

    #[test]
    fn lan_adds_the_private_ranges_and_public_adds_the_rest() {
        let own = [ip("10.0.0.5")];
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.2",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert_eq!(check(Peers::Lan, ip(private), &own), Ok(()), "{private}");
            assert_eq!(check(Peers::Public, ip(private), &own), Ok(()), "{private}");
        }
        for public in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2a00:1450::1"] {
            assert_eq!(
                check(Peers::Lan, ip(public), &own),
                Err(Denied::Policy),
                "{public}"
            );
            assert_eq!(check(Peers::Public, ip(public), &own), Ok(()), "{public}");
        }
    }

    #[test]
    fn canonical_unwraps_only_the_ipv4_forms() {
        assert_eq!(canonical(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical(ip("::1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical(ip("::1.2.0.0")), ip("1.2.0.0"));
        assert_eq!(canonical(ip("::0.0.0.5")), ip("0.0.0.5"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("::")), ip("::"));
        assert_eq!(canonical(ip("2a00::1")), ip("2a00::1"));
    }
}
