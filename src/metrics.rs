//! `/metrics` in the Prometheus text format, through the `prometheus` crate.
//!
//! Counters are bumped where things happen; the gauges (connections, users, calls) are read
//! from the registry and admission at scrape time, so they can never drift from the truth.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

/// The kinds of relayed message, by their `type` on the wire.
const RELAYED_KINDS: [&str; 7] = [
    "candidate",
    "offer",
    "answer",
    "media",
    "decline",
    "close",
    "resume",
];

#[derive(Debug)]
pub struct Metrics {
    registry: prometheus::Registry,
    connections: IntGauge,
    users: IntGauge,
    users_in_grace: IntGauge,
    calls: IntGaugeVec,
    relayed: IntCounterVec,
    /// The relayed counter of each kind, resolved once: a label lookup hashes the label and
    /// takes a lock, on every message.
    relayed_kinds: Vec<(&'static str, IntCounter)>,
    errors: IntCounterVec,
    refused: IntCounterVec,
    tls_handshake_failures: IntCounter,
    closes: IntCounterVec,
    auth_failures: IntCounterVec,
}

/// What the gauges show, read at scrape time.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub connections: usize,
    pub users: usize,
    /// Of `users`, those whose socket dropped and who are held for the grace period.
    pub users_in_grace: usize,
    pub calls_ringing: usize,
    pub calls_active: usize,
    /// The built-in TURN relay's figures, when it runs.
    pub relay: Option<crate::turn::RelaySnapshot>,
    /// When the certificate being served expires (seconds since 1970), when there is one.
    pub certificate_expiry: Option<i64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // The names and labels below are constants, valid and distinct, so building and
        // registering them cannot fail.
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let counters = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
        };
        let relayed = counters(
            "dialtone_messages_relayed_total",
            "Messages relayed from one user to another, by type.",
            "type",
        );
        let relayed_kinds = RELAYED_KINDS
            .iter()
            .map(|&kind| (kind, relayed.with_label_values(&[kind])))
            .collect();
        let metrics = Metrics {
            registry: prometheus::Registry::new(),
            relayed,
            relayed_kinds,
            connections: gauge("dialtone_connections", "Open WebSocket connections."),
            users: gauge("dialtone_users", "Logged-in users."),
            users_in_grace: gauge(
                "dialtone_users_in_grace",
                "Logged-in users whose connection dropped, held for resume_grace_secs.",
            ),
            calls: IntGaugeVec::new(
                Opts::new("dialtone_calls", "Calls, by state (ringing or active)."),
                &["state"],
            )
            .expect("valid metric"),
            errors: counters(
                "dialtone_errors_total",
                "Error replies sent to clients, by code.",
                "code",
            ),
            refused: counters(
                "dialtone_connections_refused_total",
                "WebSocket upgrades refused, by reason.",
                "reason",
            ),
            tls_handshake_failures: IntCounter::new(
                "dialtone_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
            )
            .expect("valid metric"),
            closes: counters(
                "dialtone_websocket_closes_total",
                "WebSocket connections ended, by close code (\"none\": no Close frame).",
                "code",
            ),
            auth_failures: counters(
                "dialtone_auth_failures_total",
                "Logins refused by [access], by reason (missing, password, signature, \
                 expired, claims, rate-limited).",
                "reason",
            ),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 10] = [
            Box::new(metrics.connections.clone()),
            Box::new(metrics.users.clone()),
            Box::new(metrics.users_in_grace.clone()),
            Box::new(metrics.calls.clone()),
            Box::new(metrics.relayed.clone()),
            Box::new(metrics.errors.clone()),
            Box::new(metrics.refused.clone()),
            Box::new(metrics.tls_handshake_failures.clone()),
            Box::new(metrics.closes.clone()),
            Box::new(metrics.auth_failures.clone()),
        ];
        // Every reason shows from the first scrape, at 0: an alert on a rate needs the series.
        for reason in crate::access::Reason::ALL {
            metrics.auth_failures.with_label_values(&[reason.as_str()]);
        }
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("metric names are distinct");
        }
        metrics
    }

    pub fn relayed(&self, kind: &str) {
        match self.relayed_kinds.iter().find(|(k, _)| *k == kind) {
            Some((_, counter)) => counter.inc(),
            None => self.relayed.with_label_values(&[kind]).inc(),
        }
    }

    pub fn error(&self, code: &str) {
        self.errors.with_label_values(&[code]).inc();
    }

    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    /// A login refused by `[access]`; `reason` is one of [`crate::access::Reason`]'s labels.
    pub fn auth_failed(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    /// `code` is the close code sent or received, or `None` when no Close frame was seen.
    pub fn closed(&self, code: Option<u16>) {
        let label = code.map_or_else(|| "none".to_owned(), |code| code.to_string());
        self.closes.with_label_values(&[&label]).inc();
    }

    /// The text exposition, with the gauges set from `now`.
    pub fn render(&self, now: Snapshot) -> String {
        let set = |gauge: &IntGauge, value: usize| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.connections, now.connections);
        set(&self.users, now.users);
        set(&self.users_in_grace, now.users_in_grace);
        set(
            &self.calls.with_label_values(&["ringing"]),
            now.calls_ringing,
        );
        set(&self.calls.with_label_values(&["active"]), now.calls_active);
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        if let Some(relay) = now.relay {
            relay_series(&mut text, &relay);
        }
        if let Some(expiry) = now.certificate_expiry {
            use std::fmt::Write;
            let name = "dialtone_certificate_expiry_timestamp_seconds";
            let _ = write!(
                text,
                "# HELP {name} When the TLS certificate being served expires (Unix time); alert \
                 on it minus time() falling under a few days.\n# TYPE {name} gauge\n{name} \
                 {expiry}\n"
            );
        }
        text
    }

    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }

    /// The backplane's series, registered only when there is one.
    pub fn backplane(&self) -> Backplane {
        let backplane = Backplane {
            round_trips: HistogramVec::new(
                HistogramOpts::new(
                    "dialtone_backplane_round_trip_seconds",
                    "Redis round trips, by operation.",
                )
                .buckets(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0,
                ]),
                &["op"],
            )
            .expect("valid metric"),
            errors: IntCounterVec::new(
                Opts::new(
                    "dialtone_backplane_errors_total",
                    "Redis commands that failed or timed out, by operation.",
                ),
                &["op"],
            )
            .expect("valid metric"),
            published: IntCounter::new(
                "dialtone_backplane_published_total",
                "Messages sent to users on other instances.",
            )
            .expect("valid metric"),
            received: IntCounter::new(
                "dialtone_backplane_received_total",
                "Messages received from other instances for users here.",
            )
            .expect("valid metric"),
            instances: IntGauge::new(
                "dialtone_backplane_instances",
                "Live instances in the cluster, this one included, as of the last heartbeat.",
            )
            .expect("valid metric"),
            up: IntGauge::new(
                "dialtone_backplane_up",
                "1 while the backplane is usable, 0 while it is not.",
            )
            .expect("valid metric"),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 6] = [
            Box::new(backplane.round_trips.clone()),
            Box::new(backplane.errors.clone()),
            Box::new(backplane.published.clone()),
            Box::new(backplane.received.clone()),
            Box::new(backplane.instances.clone()),
            Box::new(backplane.up.clone()),
        ];
        for collector in collectors {
            // Registered once per Metrics; a second call finds them there already.
            let _ = self.registry.register(collector);
        }
        backplane
    }
}

/// The backplane's counters; cloning shares them.
#[derive(Debug, Clone)]
pub struct Backplane {
    pub round_trips: HistogramVec,
    pub errors: IntCounterVec,
    pub published: IntCounter,
    pub received: IntCounter,
    pub instances: IntGauge,
    pub up: IntGauge,
}

/// The relay's series, one sample per transport it serves, written out from its own atomics
/// (they are read, not bumped here).
fn relay_series(out: &mut String, relay: &crate::turn::RelaySnapshot) {
    use crate::turn::RelayFigures;
    use std::fmt::Write;
    type Read = fn(&RelayFigures) -> u64;
    let series: [(&str, &str, &str, Read); 7] = [
        (
            "dialtone_turn_allocations",
            "gauge",
            "TURN allocations open on the built-in relay, by the transport their client uses.",
            |f| f.allocations as u64,
        ),
        (
            "dialtone_turn_relayed_packets_total",
            "counter",
            "UDP datagrams through the relay's sockets, to and from peers (between two of its own allocations, a datagram counts out and in), by the transport of the allocation's client.",
            |f| f.packets_relayed,
        ),
        (
            "dialtone_turn_relayed_bytes_total",
            "counter",
            "Payload bytes of those datagrams.",
            |f| f.bytes_relayed,
        ),
        (
            "dialtone_turn_channel_packets_total",
            "counter",
            "ChannelData relayed on a channel the client bound, by dialtone's own data path, client to peer and peer to client, by the transport of the client (the rest goes through the turn crate: Send and Data indications, and ChannelData in the seconds around a binding's renewal).",
            |f| f.channel_packets,
        ),
        (
            "dialtone_turn_auth_failures_total",
            "counter",
            "TURN requests with a wrong, foreign or expired credential.",
            |f| f.auth_failures,
        ),
        (
            "dialtone_turn_peers_denied_total",
            "counter",
            "Permissions, channels and packets refused by the peer policy.",
            |f| f.peers_denied,
        ),
        (
            "dialtone_turn_dropped_total",
            "counter",
            "Messages dropped unanswered: not STUN, malformed, or over the request rate; over TCP and TLS, also connections closed for what they sent (not TURN, a message over the size limit, nothing in time).",
            |f| f.dropped,
        ),
    ];
    for (name, kind, help, read) in series {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (transport, figures) in &relay.transports {
            let _ = writeln!(
                out,
                "{name}{{transport=\"{}\"}} {}",
                transport.label(),
                read(figures)
            );
        }
    }
}
