//! The report: the rows, their goals and the tables printed and written to RESULTS.md.

use super::*;

pub(crate) const CLUSTER: &str = "cluster";

/// The quick plan scales the fixed rates down with its smaller load.
pub(crate) fn plan_scale(plan: Plan) -> f64 {
    if plan.pairs < 50 { 0.25 } else { 1.0 }
}

pub(crate) fn rate_label(rate: f64, plan: Plan) -> String {
    format!("{}k msg/s", rate * plan_scale(plan) / 1000.0)
}

pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

pub(crate) fn shown_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "–".to_owned()
    }
}

pub(crate) fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "–",
    }
}

/// A row's target for dialtone's median, against Node's and the reference relay's.
#[derive(Clone, Copy)]
pub(crate) enum Goal {
    /// None: the figure is there to read the others by.
    Context,
    /// At most `node`× Node's median (and `reference`× the reference relay's), and below
    /// `under` (in the row's unit).
    AtMost {
        node: f64,
        reference: Option<f64>,
        under: Option<(f64, &'static str)>,
    },
    /// At least `node`× Node's median.
    AtLeast { node: f64 },
    /// At least `factor`× another of dialtone's figures (same transport).
    AtLeastOwn {
        factor: f64,
        figure: &'static str,
        named: &'static str,
    },
}

/// One row of the main table: a figure, how many digits it is shown with, its target.
pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) figure: &'static str,
    pub(crate) digits: usize,
    pub(crate) tls: bool,
    pub(crate) goal: Goal,
    /// A figure (per round) that must be 0 in every round for the target to hold.
    pub(crate) none_lost: Option<&'static str>,
}

impl Row {
    pub(crate) fn new(
        what: String,
        figure: &'static str,
        digits: usize,
        tls: bool,
        goal: Goal,
    ) -> Row {
        Row {
            what,
            figure,
            digits,
            tls,
            goal,
            none_lost: None,
        }
    }

    /// The target as the table shows it.
    pub(crate) fn target(&self) -> String {
        let mut parts = Vec::new();
        match self.goal {
            Goal::Context => {}
            Goal::AtMost {
                node,
                reference,
                under,
            } => {
                if let Some((_, shown)) = under {
                    parts.push(format!("< {shown}"));
                }
                parts.push(format!("≤ {node}× Node"));
                if let Some(r) = reference {
                    parts.push(format!("≤ {r}× reference"));
                }
            }
            Goal::AtLeast { node } => parts.push(format!("≥ {node}× Node")),
            Goal::AtLeastOwn { factor, named, .. } => parts.push(format!("≥ {factor}× {named}")),
        }
        if self.none_lost.is_some() {
            parts.push("none lost".to_owned());
        }
        parts.join(", ")
    }

    /// Whether the target holds for `label`'s median `d`, Node's `n` and the reference's `r`.
    pub(crate) fn met(&self, d: f64, n: f64, r: f64, rounds: &Rounds, label: &str) -> Option<bool> {
        let holds = match self.goal {
            Goal::Context => return None,
            Goal::AtMost {
                node,
                reference,
                under,
            } => {
                d <= node * n
                    && reference.is_none_or(|f| d <= f * r)
                    && under.is_none_or(|(limit, _)| d < limit)
            }
            Goal::AtLeast { node } => d >= node * n,
            Goal::AtLeastOwn { factor, figure, .. } => d >= factor * rounds.median(figure, label),
        };
        let none_lost = self.none_lost.is_none_or(|lost| {
            let lost = rounds.get(lost, label).unwrap_or(&[]);
            lost.iter().all(|&l| l == 0.0)
        });
        Some(holds && none_lost)
    }
}

pub(crate) fn rows(plan: Plan) -> Vec<Row> {
    let (k1, k10, k80) = (
        rate_label(1_000.0, plan),
        rate_label(10_000.0, plan),
        rate_label(80_000.0, plan),
    );
    let at_most = |node| Goal::AtMost {
        node,
        reference: None,
        under: None,
    };
    let mut rows = Vec::new();
    for tls in [false, true] {
        let t = if tls { "wss" } else { "ws" };
        let row = |what: String, figure, digits, goal| Row::new(what, figure, digits, tls, goal);
        rows.push(row(
            format!("server CPU per message at the maximum rate, {t} (µs)"),
            "cpu_max",
            2,
            Goal::AtMost {
                node: 0.3,
                reference: Some(1.6),
                under: None,
            },
        ));
        rows.push(row(
            format!("maximum relay rate, {t} (msg/s)"),
            "rate_max",
            0,
            Goal::AtLeast { node: 1.8 },
        ));
        rows.push(row(
            format!("generator CPU per message at the maximum rate, {t} (µs)"),
            "gen_max",
            2,
            Goal::Context,
        ));
        rows.push(row(
            format!("server CPU per message at {k10}, {t} (µs)"),
            "cpu_10k",
            2,
            at_most(0.5),
        ));
        rows.push(row(
            format!("server CPU per message at {k1}, {t} (µs)"),
            "cpu_1k",
            2,
            Goal::Context,
        ));
        rows.push(row(
            format!("p50 latency at {k10}, pinned, {t} (µs)"),
            "p50_10k",
            0,
            Goal::Context,
        ));
        rows.push(row(
            format!("p99 latency at {k10}, pinned, {t} (µs)"),
            "p99_10k",
            0,
            Goal::AtMost {
                node: 0.7,
                reference: None,
                under: Some((1000.0, "1 ms")),
            },
        ));
        rows.push(row(
            format!("p99 latency at {k1}, pinned, {t} (µs)"),
            "p99_1k",
            0,
            Goal::Context,
        ));
        rows.push(Row {
            none_lost: Some("lost_80k"),
            ..row(
                format!("p99 latency at {k80}, pinned, {t} (µs)"),
                "p99_80k",
                0,
                at_most(0.15),
            )
        });
        rows.push(row(
            format!("idle memory per logged-in connection, {t} (bytes)"),
            "idle",
            0,
            at_most(if tls { 0.4 } else { 0.6 }),
        ));
        rows.push(if tls {
            row(
                "WSS logins per second, full handshakes".to_owned(),
                "logins",
                0,
                Goal::AtLeast { node: 3.0 },
            )
        } else {
            row(
                "WS logins per second".to_owned(),
                "logins",
                0,
                Goal::Context,
            )
        });
    }
    rows.push(Row::new(
        "WSS logins per second, resumed handshakes".to_owned(),
        "logins_resumed",
        0,
        true,
        Goal::AtLeastOwn {
            factor: 2.0,
            figure: "logins",
            named: "dialtone's full",
        },
    ));
    rows
}

/// The main table: each figure's median over the rounds with its min–max spread, for
/// dialtone, Node and the reference relay, and the ratios of the medians.
pub(crate) fn table(rounds: &Rounds, plan: Plan, subject: Kind, others: &[Kind]) -> String {
    let mut out = String::new();
    let name = |kind: Kind| match kind {
        Kind::Dialtone => "dialtone",
        Kind::Baseline => "Node",
        Kind::Reference => "reference",
        Kind::Before => "before",
    };
    let mut header = format!("| what | {}", name(subject));
    for &k in others {
        let _ = write!(header, " | {}", name(k));
    }
    for &k in others {
        let _ = write!(header, " | {} / {}", name(subject), name(k));
    }
    let compare = subject == Kind::Dialtone && others == [Kind::Baseline, Kind::Reference];
    if compare {
        header.push_str(" | target | met");
    }
    let _ = writeln!(out, "{header} |");
    let columns = header.matches(" | ").count() + 1;
    let _ = writeln!(out, "{}|", "|---".repeat(columns));
    for row in rows(plan) {
        let label = |kind| Target::of(kind, row.tls).label();
        if rounds.get(row.figure, label(subject)).is_none() {
            continue;
        }
        let mut line = format!(
            "| {} | {}",
            row.what,
            rounds.shown(row.figure, label(subject), row.digits)
        );
        for &k in others {
            let _ = write!(
                line,
                " | {}",
                rounds.shown(row.figure, label(k), row.digits)
            );
        }
        let d = rounds.median(row.figure, label(subject));
        for &k in others {
            let _ = write!(
                line,
                " | {}",
                shown_ratio(ratio(d, rounds.median(row.figure, label(k))))
            );
        }
        if compare {
            let (n, r) = (
                rounds.median(row.figure, label(Kind::Baseline)),
                rounds.median(row.figure, label(Kind::Reference)),
            );
            let verdict = if d.is_finite() {
                row.met(d, n, r, rounds, label(subject))
            } else {
                None
            };
            let _ = write!(line, " | {} | {}", row.target(), met(verdict));
        }
        let _ = writeln!(out, "{line} |");
    }
    out
}

/// The reconnect storm's rows.
pub(crate) fn storm_table(rounds: &Rounds, plan: Plan, label: &str, out: &mut String) {
    if rounds.get("storm_back", label).is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Reconnect storm\n\n{} logged-in WSS users; {label} restarts (SIGTERM, then a new process on the \
         same port once the old one ended); every user reconnects on the page's own schedule (500 ms \
         doubling to 10 s, each delay times 0.75–1.25) and logs in again. Medians of the rounds with \
         the spread.\n\n| what | {label} | target | met |\n|---|---|---|---|",
        plan.storm_users
    );
    let back = rounds.median("storm_back", label);
    let lost = rounds.get("storm_lost", label).unwrap_or(&[]);
    let peak = rounds.median("storm_peak_ratio", label);
    for (what, figure, digits, target, verdict) in [
        (
            "all logged in again, seconds after SIGTERM",
            "storm_back",
            1,
            "≤ 15 s",
            Some(back <= 15.0),
        ),
        ("failed attempts (retried)", "storm_failed", 0, "", None),
        (
            "users not back within 60 s",
            "storm_lost",
            0,
            "none",
            Some(lost.iter().all(|&l| l == 0.0)),
        ),
        (
            "RSS with every user in, before the restart (MiB)",
            "storm_steady",
            0,
            "",
            None,
        ),
        (
            "peak RSS of the new process (MiB)",
            "storm_peak",
            0,
            "",
            None,
        ),
        (
            "peak / steady RSS",
            "storm_peak_ratio",
            2,
            "< 2×",
            Some(peak < 2.0),
        ),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {} | {target} | {} |",
            rounds.shown(figure, label, digits),
            met(verdict)
        );
    }
}

/// A cluster row: what, figure, digits, over TLS, target, whether (cluster, Node) meet it.
pub(crate) type ClusterRow = (
    String,
    &'static str,
    usize,
    bool,
    &'static str,
    fn(f64, f64) -> Option<bool>,
);

/// The cluster section of the table, beside the single instance and Node of the same run.
pub(crate) fn cluster_table(
    rounds: &Rounds,
    cluster: &Result<(), String>,
    plan: Plan,
    out: &mut String,
) {
    let _ = writeln!(
        out,
        "\n## Several instances\n\nTwo dialtone instances and one redis-server, every pair split across the \
         instances (each message crosses Redis pub/sub). CPU for the cluster is both instances \
         plus redis-server. Medians of the rounds with the spread; the latency here is not \
         pinned (three processes on two cores), as before."
    );
    if let Err(why) = cluster {
        let _ = writeln!(out, "\nNot run: {why}.");
        return;
    }
    let _ = writeln!(
        out,
        "\n| what | one instance | cluster of two | Node | cluster / Node | target | met |\n|---|---|---|---|---|---|---|"
    );
    let low = rate_label(10_000.0, plan);
    let redis = rounds.median("cpu_redis", CLUSTER);
    let lost = rounds.get("lost_10k", CLUSTER).unwrap_or(&[]).to_vec();
    let none_lost = lost.iter().all(|&l| l == 0.0);
    let rows: [ClusterRow; 5] = [
        (
            "maximum relay rate, ws (msg/s)".to_owned(),
            "rate_max",
            0,
            false,
            "≥ 1.0×",
            |c, n| Some(c >= n),
        ),
        (
            format!("CPU per relayed message, ws (µs; cluster: {redis:.1} of it redis-server)"),
            "cpu_max",
            2,
            false,
            "≤ 1.0×",
            |c, n| Some(c <= n),
        ),
        (
            format!("p50 latency at {low}, ws (µs)"),
            "p50_10k",
            0,
            false,
            "",
            |_, _| None,
        ),
        (
            format!("p99 latency at {low}, ws (µs)"),
            "p99_10k",
            0,
            false,
            "< 5 ms, none lost",
            |c, _| Some(c < 5000.0),
        ),
        (
            "WSS logins per second".to_owned(),
            "logins",
            0,
            true,
            "",
            |_, _| None,
        ),
    ];
    for (what, figure, digits, tls, target, verdict) in rows {
        let one = Target::of(Kind::Dialtone, tls).label();
        let node = Target::of(Kind::Baseline, tls).label();
        let c = rounds.median(figure, CLUSTER);
        let mut holds = verdict(c, rounds.median(figure, node));
        if figure == "p99_10k" {
            holds = holds.map(|h| h && none_lost);
        }
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {} | {target} | {} |",
            rounds.shown(figure, one, digits),
            rounds.shown(figure, CLUSTER, digits),
            rounds.shown(figure, node, digits),
            shown_ratio(ratio(c, rounds.median(figure, node))),
            met(holds)
        );
    }
    let _ = writeln!(
        out,
        "\nCluster messages lost at {low}, by round: {lost:?}. Single-instance latency rows are pinned; the cluster's are not."
    );
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb >> 20);
    format!("{cores} cores ({cpu}), {memory} GiB; client and servers share the machine")
}
