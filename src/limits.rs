//! Admission and rate limits: how many sockets one address may hold, and how fast one socket
//! may talk. Sized so a real user never meets them and a flood always does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Counts open WebSocket connections, in all and per client address, behind one lock.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds its maximum of connections.
    Full,
    /// This address holds its maximum of connections.
    TooManyFromAddress,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "server-full",
            Refusal::TooManyFromAddress => "too-many-from-address",
        }
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_per_ip,
            open: Mutex::new(Open::default()),
        })
    }

    /// Takes a place for a connection from `ip`, given back when the permit drops.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut open = self.lock();
        if open.total >= self.max_total {
            return Err(Refusal::Full);
        }
        let from_ip = open.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        *from_ip += 1;
        open.total += 1;
        Ok(Permit {
            admission: self.clone(),
            ip,
        })
    }

    /// Open connections in all.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Addresses with at least one open connection (the map never keeps empty entries).
    pub fn addresses(&self) -> usize {
        self.lock().per_ip.len()
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        crate::sync::lock(&self.open)
    }
}

/// One admitted connection's place.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A token bucket: `capacity` at once, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, per_second: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(capacity),
            capacity: f64::from(capacity),
            per_second,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Tells a client that it is over its message rate, and when to give up on it: at most one
/// `rate-limited` reply a second (so the replies cannot fill its own queue), and a verdict
/// of abuse once it has had more messages dropped within a window than its burst allows.
#[derive(Debug)]
pub struct Flood {
    dropped: u32,
    window_start: Instant,
    last_reply: Option<Instant>,
    tolerance: u32,
}

/// What to do with a message over the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it and say so.
    Reply,
    /// Drop it silently (already told within the last second).
    Drop,
    /// Close the socket (1008).
    Abuse,
}

const FLOOD_WINDOW: Duration = Duration::from_secs(10);

impl Flood {
    pub fn new(tolerance: u32, now: Instant) -> Flood {
        Flood {
            dropped: 0,
            window_start: now,
            last_reply: None,
            tolerance,
        }
    }

    pub fn over_rate(&mut self, now: Instant) -> Verdict {
        if now.saturating_duration_since(self.window_start) >= FLOOD_WINDOW {
            self.window_start = now;
            self.dropped = 0;
        }
        self.dropped += 1;
        if self.dropped > self.tolerance {
            return Verdict::Abuse;
        }
        match self.last_reply {
            Some(last) if now.saturating_duration_since(last) < Duration::from_secs(1) => {
                Verdict::Drop
            }
            _ => {
                self.last_reply = Some(now);
                Verdict::Reply
            }
        }
    }
}

/// Lets something happen at most once a second (a log line an attacker could otherwise
/// repeat at will); lock-free, shared by every connection.
#[derive(Debug)]
pub struct Sometimes {
    start: std::time::Instant,
    /// Whole seconds since `start` when it last happened, plus one (0: never).
    last: std::sync::atomic::AtomicU64,
}

impl Default for Sometimes {
    fn default() -> Self {
        Sometimes::new()
    }
}

impl Sometimes {
    pub fn new() -> Sometimes {
        Sometimes {
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// True at most once in each second.
    pub fn now(&self) -> bool {
        use std::sync::atomic::Ordering;
        let second = self.start.elapsed().as_secs() + 1;
        let last = self.last.load(Ordering::Relaxed);
        last != second
            && self
                .last
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_caps_in_all_and_per_address_and_gives_places_back() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refusal::TooManyFromAddress);
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refusal::Full);
        drop(first);
        assert_eq!(admission.open(), 2);
        let _again = admission.admit(a).unwrap();
        assert_eq!(admission.addresses(), 2);
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5, 2.0, start);
        assert_eq!((0..10).filter(|_| bucket.take(start)).count(), 5);
        assert!(!bucket.take(start + Duration::from_millis(400)));
        assert!(bucket.take(start + Duration::from_millis(600)));
        // Refill stops at the capacity.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 5);
    }

    #[test]
    fn flood_replies_once_a_second_then_calls_it_abuse() {
        let start = Instant::now();
        let mut flood = Flood::new(5, start);
        assert_eq!(flood.over_rate(start), Verdict::Reply);
        assert_eq!(flood.over_rate(start), Verdict::Drop);
        // At most one reply a second: not before the second is up, and again once it is.
        let almost = start + Duration::from_millis(999);
        assert_eq!(flood.over_rate(almost), Verdict::Drop);
        let later = start + Duration::from_secs(1);
        assert_eq!(flood.over_rate(later), Verdict::Reply);
        assert_eq!(flood.over_rate(later), Verdict::Drop);
        assert_eq!(flood.over_rate(later), Verdict::Abuse);
        // A new window forgives.
        let much_later = start + Duration::from_secs(30);
        assert_eq!(flood.over_rate(much_later), Verdict::Reply);
    }

    #[test]
    fn sometimes_lets_one_through_each_second() {
        let sometimes = Sometimes::new();
        assert!(sometimes.now(), "the first time");
        assert!(
            !sometimes.now() && !sometimes.now(),
            "not again in the same second"
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(sometimes.now(), "again a second later");
        assert!(!sometimes.now());
    }
}
