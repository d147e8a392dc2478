//! Where the relay is reached and what it binds: the address browsers are told to relay
//! through, the listening socket's address, dialtone's own relay addresses, and each
//! allocation's relay socket on a port from `relay_ports`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::UdpSocket;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

use super::policy::{self, Peers};
use super::socket::RelaySocket;
use super::{StartError, State, Transport, rand_u32};
use crate::config::{PortRange, TurnServerConfig};

/// The address browsers are told to relay through, and how it was decided: the setting, the
/// listen address, or the machine's only usable address (a public one over private ones).
pub fn external_ip(
    config: &TurnServerConfig,
    machine: &[IpAddr],
) -> Result<(IpAddr, String), StartError> {
    if let Some(ip) = config.external_ip {
        return Ok((ip, "[turn_server] external_ip".into()));
    }
    let listen = config.listen.ip();
    if !listen.is_unspecified() {
        return Ok((listen, "the [turn_server] listen address".into()));
    }
    let usable: Vec<IpAddr> = machine
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv4() == listen.is_ipv4())
        .filter(|ip| policy::check(Peers::Public, *ip, &[]).is_ok())
        .collect();
    let (public, private): (Vec<IpAddr>, Vec<IpAddr>) = usable
        .iter()
        .partition(|ip| policy::check(Peers::Lan, **ip, &[]).is_err());
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (public.as_slice(), private.as_slice()) {
        ([one], _) => Ok((*one, "this machine's only public address".into())),
        ([], [one]) => Ok((
            *one,
            "this machine's only address, a private one: browsers outside this network \
             reach it only if it is the address they see (behind NAT, set external_ip)"
                .into(),
        )),
        ([], []) => Err(StartError::ExternalIp(
            "this machine has no address but loopback".into(),
        )),
        ([], several) => Err(StartError::ExternalIp(format!(
            "this machine has several addresses ({}) and no public one",
            list(several)
        ))),
        (several, _) => Err(StartError::ExternalIp(format!(
            "this machine has several public addresses ({})",
            list(several)
        ))),
    }
}

/// Why browsers cannot relay through `external`, when that is plain from the address alone:
/// loopback (only this machine reaches it) or a range reserved for documentation (an
/// address copied from an example).
pub fn unreachable_external_ip(external: IpAddr) -> Option<String> {
    if external.is_loopback() {
        return Some(format!(
            "the TURN relay tells browsers to relay through {external}, a loopback address: \
             only browsers on this machine can reach it there; set [turn_server] external_ip \
             (or listen) to an address the other devices reach"
        ));
    }
    let documentation = match external {
        IpAddr::V4(v4) => matches!(
            v4.octets(),
            [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]
        ),
        IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0x0db8],
    };
    documentation.then(|| {
        format!(
            "the TURN relay tells browsers to relay through {external}, an address reserved \
             for documentation and examples (RFC 5737, RFC 3849) that no browser can reach: \
             set [turn_server] external_ip to this machine's public address"
        )
    })
}

/// Where the relay's socket binds. A socket on the wildcard answers from whichever address
/// the route picks: on a machine with several, that is not always the one the client sent
/// to, and the client drops the answer. So a wildcard listen address becomes the external
/// address when that is this machine's own; an address that is set is kept as it is.
pub(super) fn listen_address(
    listen: SocketAddr,
    external: IpAddr,
    machine: &[IpAddr],
) -> SocketAddr {
    if listen.ip().is_unspecified() && machine.contains(&external) {
        SocketAddr::new(external, listen.port())
    } else {
        listen
    }
}

/// dialtone's own relay addresses, where `relay-only` lets it send: the external one, and
/// the one relay sockets bind to when that is another (behind NAT, the private one).
pub(super) fn own_addresses(external: IpAddr, local: IpAddr) -> Vec<IpAddr> {
    let mut own = vec![external];
    if !local.is_unspecified() && local != external {
        own.push(local);
    }
    own
}

/// Makes each allocation's relay socket: a free port in `relay_ports` on the listen address,
/// announced at the external address.
pub(super) struct Ports {
    pub(super) bind: IpAddr,
    pub(super) external: IpAddr,
    pub(super) range: PortRange,
    pub(super) state: Arc<State>,
    /// The transport whose allocations this makes sockets for.
    pub(super) transport: Transport,
}

#[async_trait]
impl RelayAddressGenerator for Ports {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.external.is_ipv4() {
            return Err(turn::Error::Other(
                "only the external address's family is relayed".into(),
            ));
        }
        let PortRange { min, max } = self.range;
        let span = u32::from(max - min) + 1;
        let tries: Vec<u16> = if requested_port != 0 {
            if !(min..=max).contains(&requested_port) {
                return Err(turn::Error::Other("requested port out of range".into()));
            }
            vec![requested_port]
        } else {
            (0..16).map(|_| min + (rand_u32() % span) as u16).collect()
        };
        for port in tries {
            if let Ok(socket) = UdpSocket::bind(SocketAddr::new(self.bind, port)).await {
                let relay = SocketAddr::new(self.external, port);
                let conn = RelaySocket::new(socket, Arc::clone(&self.state), self.transport)
                    .map(Arc::new)
                    .map_err(|err| turn::Error::Other(err.to_string()))?;
                // For the shortcut, once the crate's answer names this relayed address.
                crate::sync::lock(&self.state.relays).insert(port, Arc::downgrade(&conn));
                return Ok((conn, relay));
            }
        }
        Err(turn::Error::Other("no free relay port".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> TurnServerConfig {
        let config: crate::config::Config = toml::from_str(text).unwrap();
        config.turn_server
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn external_ip_is_the_setting_then_the_listen_address_then_the_only_usable_one() {
        let set = config("[turn_server]\nexternal_ip = \"203.0.113.9\"\n");
        let (ip, how) = external_ip(&set, &ips(&["10.0.0.2"])).unwrap();
        assert_eq!(
            (ip.to_string(), how.as_str()),
            ("203.0.113.9".into(), "[turn_server] external_ip")
        );

        let listen = config("[turn_server]\nlisten = \"10.1.2.3:3478\"\n");
        let (ip, how) = external_ip(&listen, &ips(&["10.0.0.2"])).unwrap();
        assert_eq!(ip.to_string(), "10.1.2.3");
        assert!(how.contains("listen"), "{how}");

        let wildcard = config("[turn_server]\n");
        // One public address wins over private ones; link-local and IPv6 don't count for an
        // IPv4 listen address.
        let (ip, how) = external_ip(
            &wildcard,
            &ips(&["10.0.0.2", "81.2.69.160", "169.254.1.1", "2a00::1"]),
        )
        .unwrap();
        assert_eq!(ip.to_string(), "81.2.69.160");
        assert!(how.contains("public"), "{how}");
        let (ip, how) = external_ip(&wildcard, &ips(&["192.168.1.5", "fe80::1"])).unwrap();
        assert_eq!(ip.to_string(), "192.168.1.5");
        assert!(how.contains("set external_ip"), "{how}");
    }

    #[test]
    fn external_ip_refuses_to_guess() {
        let wildcard = config("[turn_server]\n");
        let several = external_ip(&wildcard, &ips(&["192.168.1.5", "10.0.0.2"]))
            .unwrap_err()
            .to_string();
        assert!(several.contains("192.168.1.5, 10.0.0.2"), "{several}");
        assert!(several.contains("external_ip must be set"), "{several}");
        let none = external_ip(&wildcard, &ips(&["fe80::1"]))
            .unwrap_err()
            .to_string();
        assert!(none.contains("no address but loopback"), "{none}");
        let two_public = external_ip(&wildcard, &ips(&["81.2.69.160", "81.2.69.161"]))
            .unwrap_err()
            .to_string();
        assert!(two_public.contains("several public"), "{two_public}");
    }

    #[test]
    fn an_external_address_nobody_can_reach_is_named_with_the_reason() {
        for (ip, says) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("192.0.2.2", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.255", "documentation"),
            ("2001:db8::5", "documentation"),
        ] {
            let why = unreachable_external_ip(ip.parse().unwrap())
                .unwrap_or_else(|| panic!("{ip} passed"));
            assert!(why.contains(says) && why.contains(ip), "{ip}: {why}");
            assert!(why.contains("external_ip"), "{why}");
        }
        for ip in [
            "10.0.0.5",
            "192.0.3.1",
            "203.0.114.1",
            "8.8.8.8",
            "2001:db9::1",
            "fd00::2",
        ] {
            assert_eq!(unreachable_external_ip(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn the_relay_binds_the_external_address_only_for_a_wildcard_listen() {
        let machine = ips(&["10.0.0.2", "192.168.1.5"]);
        let wildcard: SocketAddr = "0.0.0.0:3478".parse().unwrap();
        let own: IpAddr = "10.0.0.2".parse().unwrap();
        let nat: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            listen_address(wildcard, own, &machine),
            "10.0.0.2:3478".parse().unwrap()
        );
        // Behind NAT the external address is not this machine's: the wildcard stays.
        assert_eq!(listen_address(wildcard, nat, &machine), wildcard);
        // A listen address that is set is never moved, even to one of the machine's own.
        let set: SocketAddr = "192.168.1.5:3478".parse().unwrap();
        assert_eq!(listen_address(set, own, &machine), set);
    }

    #[test]
    fn own_addresses_are_the_external_one_and_a_different_bound_one() {
        let [public, private, wildcard] = [
            ips(&["203.0.113.9"])[0],
            ips(&["10.0.0.2"])[0],
            ips(&["0.0.0.0"])[0],
        ];
        assert_eq!(own_addresses(public, private), vec![public, private]);
        assert_eq!(own_addresses(private, private), vec![private]);
        assert_eq!(own_addresses(public, wildcard), vec![public]);
    }

    #[tokio::test]
    async fn a_one_port_range_allocates_that_port() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ports = Ports {
            bind: ips(&["127.0.0.1"])[0],
            external: ips(&["10.0.0.1"])[0],
            range: PortRange {
                min: port,
                max: port,
            },
            state: Arc::new(super::super::tests::state(5)),
            transport: Transport::Udp,
        };
        let (conn, relayed) = ports.allocate_conn(true, 0).await.unwrap();
        assert_eq!(relayed, SocketAddr::new(ips(&["10.0.0.1"])[0], port));
        assert_eq!(conn.local_addr().unwrap().port(), port);
        // Taken now: a second allocation finds no free port, and says so.
        let err = ports.allocate_conn(true, 0).await.err().unwrap();
        assert!(err.to_string().contains("no free relay port"), "{err}");
        // The other family is not relayed.
        assert!(ports.allocate_conn(false, 0).await.is_err());
    }
}
