//! How the benchmark measures: CPU time to the nanosecond, the rest of the machine's load
//! during a window, pinning to cores, and medians over rounds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// CPU time a process has used, summed over its threads (`/proc/<pid>/task/*/schedstat`,
/// nanoseconds: `/proc/<pid>/stat` counts 10 ms ticks, too coarse for 1,000 msg/s).
pub fn cpu_of(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(nanos)
}

/// User-mode ticks (1/100 s) of a process: what it takes of the machine's user time.
fn user_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") "; utime is the 14th
    // field of stat, the 12th after the name.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(11))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The machine's user + nice ticks over all cores.
fn machine_user_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or("");
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.first().copied().unwrap_or(0) + fields.get(1).copied().unwrap_or(0)
}

/// A measured window: the CPU of the processes under test, of this generator, and of
/// everything else (foreign load).
pub struct Window {
    pids: Vec<u32>,
    at: Instant,
    cpu: Vec<Duration>,
    generator: Duration,
    machine_user: u64,
    known_user: u64,
}

/// What a window saw.
#[derive(Clone, Debug, Default)]
pub struct Spent {
    pub wall: Duration,
    /// CPU of each process under test, in the order given.
    pub parts: Vec<Duration>,
    pub generator: Duration,
    /// User time of processes that are neither under test nor the generator, in cores
    /// (1.0 = one core busy for the whole window).
    pub foreign_cores: f64,
}

impl Spent {
    pub fn server(&self) -> Duration {
        self.parts.iter().sum()
    }
}

impl Window {
    pub fn open(pids: &[u32]) -> Window {
        let me = std::process::id();
        Window {
            pids: pids.to_vec(),
            at: Instant::now(),
            cpu: pids.iter().map(|&p| cpu_of(p)).collect(),
            generator: cpu_of(me),
            machine_user: machine_user_ticks(),
            known_user: pids.iter().chain([&me]).map(|&p| user_ticks(p)).sum(),
        }
    }

    pub fn close(&self) -> Spent {
        let me = std::process::id();
        let wall = self.at.elapsed();
        let machine = machine_user_ticks().saturating_sub(self.machine_user);
        let known: u64 = self.pids.iter().chain([&me]).map(|&p| user_ticks(p)).sum();
        let foreign = machine.saturating_sub(known.saturating_sub(self.known_user));
        Spent {
            wall,
            parts: self
                .pids
                .iter()
                .zip(&self.cpu)
                .map(|(&p, &before)| cpu_of(p).saturating_sub(before))
                .collect(),
            generator: cpu_of(me).saturating_sub(self.generator),
            foreign_cores: foreign as f64 / 100.0 / wall.as_secs_f64().max(1e-3),
        }
    }
}

/// Foreign load above this share of a core disturbs a run: it is dropped and run again.
pub const FOREIGN_LIMIT: f64 = 0.15;

/// Pins every thread of `pid` to the cores in `cores` (taskset's list syntax).
pub fn pin(pid: u32, cores: &str) {
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Whether this machine can pin: taskset is there and there are two cores to split.
pub fn can_pin() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && std::process::Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The median and the spread (min, max) of `values`.
pub fn median_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

/// Every round's value of every figure, by figure and target label.
#[derive(Default)]
pub struct Rounds {
    values: BTreeMap<(&'static str, String), Vec<f64>>,
    /// Runs dropped for foreign load, and why.
    pub dropped: Vec<String>,
}

impl Rounds {
    pub fn add(&mut self, figure: &'static str, target: &str, value: f64) {
        self.values
            .entry((figure, target.to_owned()))
            .or_default()
            .push(value);
    }

    pub fn get(&self, figure: &'static str, target: &str) -> Option<&[f64]> {
        self.values
            .get(&(figure, target.to_owned()))
            .map(Vec::as_slice)
    }

    /// The median of a figure, NaN when it was not measured.
    pub fn median(&self, figure: &'static str, target: &str) -> f64 {
        self.get(figure, target)
            .map_or(f64::NAN, |v| median_spread(v.to_vec()).0)
    }

    /// "median (min–max)", or "–".
    pub fn shown(&self, figure: &'static str, target: &str, digits: usize) -> String {
        match self.get(figure, target) {
            None => "–".to_owned(),
            Some(values) => {
                let (m, lo, hi) = median_spread(values.to_vec());
                if values.len() == 1 {
                    format!("{m:.digits$}")
                } else {
                    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median_spread(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_spread(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(median_spread(vec![]).0.is_nan());
    }

    /// This thread's own CPU time, from the kernel's per-thread file (not the per-process
    /// sum `cpu_of` reads), in nanoseconds.
    fn thread_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        let ns: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
        Duration::from_nanos(ns)
    }

    #[test]
    fn own_cpu_is_counted_in_nanoseconds() {
        // Spins until this thread has used 30 ms of CPU, however long that takes on a busy
        // machine: no wall-clock bound.
        let window = Window::open(&[]);
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - start < Duration::from_millis(30) {
            for _ in 0..10_000 {
                x = x.wrapping_mul(31).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let spent = window.close();
        // The process's CPU includes this thread's 30 ms; read in any other unit it would be
        // off by a factor of a thousand or more.
        assert!(spent.generator >= Duration::from_millis(30), "{spent:?}");
        assert!(spent.generator < Duration::from_secs(30), "{spent:?}");
    }
}
