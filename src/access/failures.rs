//! Failed logins per client address: more than [`MAX_FAILURES`] in a minute, and that address
//! gets `auth-failed` without a check for the next minute, so one address's guessing never
//! locks out anyone else. An IPv4 address counts alone; IPv6 addresses count by their /64,
//! the block one subscriber gets (one host can pick any address in it at will). Per instance:
//! each instance of a cluster keeps its own count.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures one address may have in a [`WINDOW`] before it is blocked.
pub const MAX_FAILURES: u32 = 10;
/// How long failures are counted for, and how long a block lasts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past this, expired entries are dropped, and if none have
/// expired the oldest window goes (a flood of addresses cannot grow the map without bound).
const MAX_ADDRESSES: usize = 50_000;

#[derive(Debug, Default)]
pub struct Failures {
    by_address: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

impl Failures {
    /// Whether `address` is blocked at `now`.
    pub fn blocked(&self, address: IpAddr, now: Instant) -> bool {
        crate::sync::lock(&self.by_address)
            .get(&counted_as(address))
            .and_then(|window| window.blocked_until)
            .is_some_and(|until| now < until)
    }

    /// Counts one failure; returns whether `address` is now blocked.
    pub fn failed(&self, address: IpAddr, now: Instant) -> bool {
        let address = counted_as(address);
        let mut map = crate::sync::lock(&self.by_address);
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&address) {
            map.retain(|_, window| !window.expired(now));
            if map.len() >= MAX_ADDRESSES
                && let Some(oldest) = map.iter().min_by_key(|(_, w)| w.started).map(|(a, _)| *a)
            {
                map.remove(&oldest);
            }
        }
        let window = map.entry(address).or_insert(Window {
            started: now,
            count: 0,
            blocked_until: None,
        });
        if window.expired(now) {
            *window = Window {
                started: now,
                count: 0,
                blocked_until: None,
            };
        }
        window.count += 1;
        if window.count > MAX_FAILURES && window.blocked_until.is_none() {
            window.blocked_until = Some(now + WINDOW);
        }
        window.blocked_until.is_some_and(|until| now < until)
    }

    /// Addresses with a failure on record (for tests and the curious).
    pub fn addresses(&self) -> usize {
        crate::sync::lock(&self.by_address).len()
    }
}

/// The key an address is counted under: itself (IPv4, or IPv6 written as IPv4), or its /64.
fn counted_as(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

impl Window {
    /// Nothing left to remember: the counting window is over and no block is running.
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.started) >= WINDOW
            && self.blocked_until.is_none_or(|until| now >= until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eleven_failures_in_a_minute_block_that_address_alone_for_a_minute() {
        let failures = Failures::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert!(!failures.failed(a, t0 + Duration::from_secs(u64::from(i))));
        }
        assert!(!failures.blocked(a, t0 + Duration::from_secs(10)));
        assert!(failures.failed(a, t0 + Duration::from_secs(10)));
        assert!(failures.blocked(a, t0 + Duration::from_secs(11)));
        assert!(!failures.blocked(b, t0 + Duration::from_secs(11)));
        assert!(!failures.failed(b, t0 + Duration::from_secs(11)));
        // The block lasts a minute from the failure that set it, then all is forgotten; a
        // failure counted meanwhile (past the counting window) leaves it as it is.
        assert!(failures.failed(a, t0 + Duration::from_secs(65)));
        assert!(failures.blocked(a, t0 + Duration::from_secs(69)));
        assert!(!failures.blocked(a, t0 + Duration::from_secs(70)));
        assert!(!failures.failed(a, t0 + Duration::from_secs(71)));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_itself() {
        let failures = Failures::default();
        let t0 = Instant::now();
        let one = |text: &str| text.parse::<IpAddr>().unwrap();
        // Eleven addresses of one /64: one subscriber trying addresses in turn.
        for i in 1..=u16::try_from(MAX_FAILURES).unwrap() {
            assert!(!failures.failed(one(&format!("2001:db8:0:7::{i:x}")), t0));
        }
        assert!(failures.failed(one("2001:db8:0:7:ffff::1"), t0));
        assert!(failures.blocked(one("2001:db8:0:7::abcd"), t0));
        assert!(
            !failures.blocked(one("2001:db8:0:8::1"), t0),
            "the next /64 is someone else"
        );
        // An IPv4 client seen on a dual-stack socket is that IPv4 address.
        for _ in 0..=MAX_FAILURES {
            failures.failed(one("::ffff:192.0.2.9"), t0);
        }
        assert!(failures.blocked(one("192.0.2.9"), t0));
        assert!(!failures.blocked(one("192.0.2.10"), t0));
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_never_block() {
        let failures = Failures::default();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..100u64 {
            assert!(
                !failures.failed(a, t0 + Duration::from_secs(i * 7)),
                "failure {i}"
            );
        }
    }

    #[test]
    fn the_map_stays_bounded_and_a_full_map_keeps_counting_who_is_in_it() {
        let failures = Failures::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            failures.failed(IpAddr::from(std::net::Ipv4Addr::from(i)), later);
        }
        assert_eq!(failures.addresses(), MAX_ADDRESSES);
        // A guesser whose window is the oldest in a full map: it evicts one newcomer to get
        // in, then stays and is counted, never evicted in its own turn.
        let guesser: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..=MAX_FAILURES {
            failures.failed(guesser, t0);
        }
        assert!(failures.blocked(guesser, t0));
        assert_eq!(failures.addresses(), MAX_ADDRESSES);
    }
}
