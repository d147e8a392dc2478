//! Three network namespaces made by the test, and removed when it ends: `relay`, where
//! dialtone runs, and `a` and `b`, which each reach only the relay's namespace. There is no
//! route between `a` and `b`, and the relay's namespace does not forward, so whatever passes
//! between them goes through dialtone. Needs root (`ip netns`); without it the test is
//! skipped, except under `CI=true`, where that is a failure.
//!
//! ```text
//!   a 10.77.1.2 ── veth ── 10.77.1.1 relay 10.77.2.1 ── veth ── 10.77.2.2 b
//! ```
//! `b` has one route, to 10.77.1.1 (the relay's address that both sides use) through
//! 10.77.2.1; the relay answers for it on either link, as Linux does for any local address.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The relay's address as both `a` and `b` reach it.
pub const RELAY: &str = "10.77.1.1";
pub const A: &str = "10.77.1.2";
pub const B: &str = "10.77.2.2";

pub struct Topology {
    pub relay: String,
    pub a: String,
    pub b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("ip {}: {err}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Whether network namespaces can be made here; panics under CI when they cannot.
pub fn available() -> bool {
    let probe = format!("dtprobe{}", std::process::id());
    let made = ip(&["netns", "add", &probe]).is_ok();
    if made {
        let _ = ip(&["netns", "del", &probe]);
        return true;
    }
    super::skip(
        "cannot create network namespaces (run as root, with iproute2: apt-get install iproute2)",
    );
    false
}

/// A tag no other namespace of this run has: the process id and a counter.
fn fresh_tag() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Topology {
    /// The three namespaces, or `None` (test skipped) where they cannot be made.
    pub fn create() -> Option<Topology> {
        if !available() {
            return None;
        }
        let tag = fresh_tag();
        let topology = Topology {
            relay: format!("dtr{tag}"),
            a: format!("dta{tag}"),
            b: format!("dtb{tag}"),
        };
        topology.build(&tag).unwrap_or_else(|err| panic!("{err}"));
        Some(topology)
    }

    fn build(&self, tag: &str) -> Result<(), String> {
        let (r, a, b) = (self.relay.as_str(), self.a.as_str(), self.b.as_str());
        for ns in [r, a, b] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Interface names have at most 15 characters.
        let short = &tag[tag.len().saturating_sub(8)..];
        for (side, ns, relay_ip, side_ip) in [
            ("a", a, "10.77.1.1/24", "10.77.1.2/24"),
            ("b", b, "10.77.2.1/24", "10.77.2.2/24"),
        ] {
            let outer = format!("r{side}{short}");
            let inner = format!("s{side}{short}");
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &outer, "netns", r])?;
            ip(&["link", "set", &inner, "netns", ns])?;
            ip(&["-n", r, "addr", "add", relay_ip, "dev", &outer])?;
            ip(&["-n", ns, "addr", "add", side_ip, "dev", &inner])?;
            ip(&["-n", r, "link", "set", &outer, "up"])?;
            ip(&["-n", ns, "link", "set", &inner, "up"])?;
        }
        ip(&["-n", b, "route", "add", "10.77.1.1/32", "via", "10.77.2.1"])?;
        Ok(())
    }

    /// `program` with `args`, run inside namespace `ns`.
    pub fn command(ns: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, program]);
        command
    }

    /// Whether `from` has a route to `to`.
    pub fn routes(ns: &str, to: IpAddr) -> bool {
        ip(&["-n", ns, "route", "get", &to.to_string()]).is_ok()
    }
}

impl Drop for Topology {
    /// Deleting a namespace deletes the veth ends in it, and so their peers.
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.relay] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// One namespace of the test's own, with only loopback up: a machine with nothing else.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// The namespace, or `None` (test skipped) where namespaces cannot be made.
    pub fn create() -> Option<Namespace> {
        if !available() {
            return None;
        }
        let name = format!("dtn{}", fresh_tag());
        ip(&["netns", "add", &name]).unwrap_or_else(|err| panic!("{err}"));
        ip(&["-n", &name, "link", "set", "lo", "up"]).unwrap_or_else(|err| panic!("{err}"));
        Some(Namespace { name })
    }

    /// A namespace joined to this process's own by a veth pair: `inside` (a /24 address) on
    /// its end, `outside` on this one, so the test talks to what runs in it directly.
    pub fn linked(inside: &str, outside: &str) -> Option<Namespace> {
        let namespace = Namespace::create()?;
        let tag = &namespace.name[namespace.name.len().saturating_sub(8)..];
        let (here, there) = (format!("lh{tag}"), format!("lt{tag}"));
        let ns = namespace.name.as_str();
        let (inside, outside) = (format!("{inside}/24"), format!("{outside}/24"));
        for args in [
            vec!["link", "add", &here, "type", "veth", "peer", "name", &there],
            vec!["link", "set", &there, "netns", ns],
            vec!["-n", ns, "addr", "add", &inside, "dev", &there],
            vec!["-n", ns, "link", "set", &there, "up"],
            vec!["addr", "add", &outside, "dev", &here],
            vec!["link", "set", &here, "up"],
        ] {
            ip(&args).unwrap_or_else(|err| panic!("{err}"));
        }
        Some(namespace)
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        Topology::command(&self.name, program)
    }

    /// Sets a sysctl inside the namespace (network sysctls are per namespace).
    pub fn sysctl(&self, setting: &str) {
        let status = self
            .command("sysctl")
            .args(["-q", "-w", setting])
            .status()
            .expect("sysctl runs");
        assert!(status.success(), "sysctl -w {setting}");
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
