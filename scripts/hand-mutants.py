#!/usr/bin/env python3
"""Hand-written mutants: one-line breakages that cargo-mutants cannot generate, because the
code lies inside a macro (the `tokio::select!` loops of session::serve and server::run), or
because the break is a new line rather than a changed one (logging a payload). They began as
the mutation audit of issue 14; each names the tests that must catch it.

Each mutant is applied to a copy of the tree (never to the working tree), built with its own
target directory under target/, and its tests run. Exit status 0 when every mutant was caught.
`--only TEXT...` runs just the mutants whose description contains one of the TEXTs.
"""

import os
import shutil
import subprocess
import sys
import tempfile

# (what breaks, file, exact text, replacement, cargo test arguments that must fail)
MUTANTS = [
    ("a user in a call relays to a named non-partner", "src/signaling/registry/memory.rs",
     "(Some(call), Some(to)) if *call.with != *name_key(to) => {",
     "(Some(call), Some(to)) if false && *call.with != *name_key(to) => {",
     ["--lib", "--test", "signaling", "--test", "fuzz"]),
    ("X-Forwarded-For trusted without behind_proxy", "src/http/mod.rs",
     "        if !self.inner.behind_proxy {\n            return peer.ip();",
     "        if false {\n            return peer.ip();",
     ["--test", "hardening", "one_address"]),
    ("message contents logged at info", "src/signaling/session/messages.rs",
     "    let metrics = &shared.metrics;\n    let message = match ClientMessage::parse(text) {",
     "    let metrics = &shared.metrics;\n    info!(\"message {text}\");\n"
     "    let message = match ClientMessage::parse(text) {",
     ["--test", "cli", "the_log_never"]),
    ("drain timeout ignored (3600 s)", "src/server.rs",
     "let deadline = limits.drain_timeout();", "let deadline = Duration::from_secs(3600);",
     ["--test", "hardening", "shutdown_waits"]),
    ("silence cut-off after 4 intervals", "src/signaling/session/mod.rs",
     "let silent_at = last_heard + 2 * period;", "let silent_at = last_heard + 4 * period;",
     ["--test", "signaling", "heartbeat"]),
    ("silence never cuts off", "src/signaling/session/mod.rs",
     "if now >= silent_at {\n                        break End::Silent;",
     "if false && now >= silent_at {\n                        break End::Silent;",
     ["--test", "signaling", "heartbeat"]),
    ("no Pings sent", "src/signaling/session/mod.rs",
     "if !outbox.deliver(Message::Ping(Default::default())) {",
     "if false && !outbox.deliver(Message::Ping(Default::default())) {",
     ["--test", "signaling", "heartbeat"]),
    ("TLS handshake timeout hard-coded to 10 s", "src/server.rs",
     "let handshake_timeout = limits.tls_handshake_timeout();",
     "let handshake_timeout = Duration::from_secs(10);",
     ["--test", "hardening", "handshake"]),
    ("header-read timeout hard-coded to 5 s", "src/server.rs",
     ".header_read_timeout(limits.header_read_timeout());",
     ".header_read_timeout(Duration::from_secs(5));",
     ["--test", "hardening", "slow_headers"]),
    ("login timeout hard-coded to 5 s", "src/signaling/session/mod.rs",
     "let login_by = last_heard + settings.limits.login_timeout();",
     "let login_by = last_heard + Duration::from_secs(5);",
     ["--test", "hardening", "never_logs_in"]),
    ("the login deadline never closes the socket", "src/signaling/session/mod.rs",
     "if login_wait.is_some_and(|by| now >= by) {",
     "if false && login_wait.is_some_and(|by| now >= by) {",
     ["--test", "hardening", "never_logs_in"]),
    ("login bucket refilled per second", "src/signaling/session/mod.rs",
     "f64::from(limits.logins_per_minute.get()) / 60.0,",
     "f64::from(limits.logins_per_minute.get()),",
     ["--test", "hardening", "login_attempts"]),
    ("name length counted in bytes", "src/signaling/protocol.rs",
     "let count = name.chars().count();", "let count = name.len();",
     ["--lib", "--test", "signaling", "login_is_refused"]),
    ("panic when a socket's queue is full", "src/signaling/queue.rs",
     "            if slots.frames.len() >= chan.capacity {\n                drop(slots);",
     "            if slots.frames.len() >= chan.capacity {\n                panic!(\"full\");",
     ["--test", "fuzz"]),
    ("a full queue does not drop the slow reader", "src/signaling/session/mod.rs",
     "() = outbox.bell().notified() => {",
     "() = outbox.bell().notified(), if false => {",
     ["--test", "hardening", "slow_reader"]),
    ("upgrades accepted on any path", "src/http/mod.rs",
     '"/" | "/ws" => self.upgrade(req, client, https, conn.tls),',
     '_ => self.upgrade(req, client, https, conn.tls),',
     ["--test", "hardening", "upgrades_are"]),
    ("TURN credential signed with another key", "src/signaling/mod.rs",
     "turn.secret.0.as_bytes(),", "b\"other\",",
     ["--test", "signaling", "turn_credentials"]),
    ("flood never closes the socket", "src/signaling/session/mod.rs",
     "Verdict::Abuse => break End::Flooding,", "Verdict::Abuse => continue,",
     ["--test", "hardening", "flood"]),
    ("sessions not closed at shutdown", "src/server.rs",
     "    app.close_sessions();\n", "",
     ["--test", "signaling", "shutdown_closes"]),
    # The Redis engine's own loops.
    ("a deaf subscription is never replaced", "src/signaling/registry/cluster/pubsub.rs",
     "() = self.resubscribe.notified() => break,",
     "() = self.resubscribe.notified(), if false => break,",
     ["--test", "cluster", "half_open"]),
    ("an instance leaves the cluster without freeing its names", "src/server.rs",
     "    app.registry().leave().await;\n", "",
     ["--test", "cluster", "sigterm"]),
    ("an eviction taken for a slow reader (no Close frame, no reason)",
     "src/signaling/session/mod.rs",
     "break if conn.evicted() { End::NameLost } else { End::SlowReader };",
     "break End::SlowReader;",
     ["--test", "cluster", "taken_while"]),
    # Issue 11: the grace period, the token and resume (select! arms and Lua scripts).
    ("a login with the token never takes over a live socket", "src/signaling/session/mod.rs",
     "handoff = Some(request);\n                    break End::TakenOver;",
     "drop(request);",
     ["--test", "grace", "still_looks_open"]),
    ("a resume that lapses says nothing", "src/signaling/session/mod.rs",
     "&& conn.resume_lapsed(&to).await", "&& false && conn.resume_lapsed(&to).await",
     ["--test", "grace", "third_party"]),
    ("a resume's wait ends at the next Ping, not when it is up", "src/signaling/session/mod.rs",
     "                        heartbeat.as_mut().reset(*at);\n", "",
     ["--test", "grace", "third_party"]),
    ("the grace lasts ten times longer", "src/signaling/grace.rs",
     "() = tokio::time::sleep(grace) =>", "() = tokio::time::sleep(grace * 10) =>",
     ["--test", "grace", "runs_out"]),
    ("a full held queue is ignored", "src/signaling/grace.rs",
     "() = outbox.bell().notified() => Err(", "() = std::future::pending::<()>() => Err(",
     ["--test", "grace", "flood"]),
    ("any token takes a session on another instance", "src/signaling/registry/cluster/lua/token.lua",
     "if redis.call('HGET', ukey(name), 'tok') ~= ARGV[7] then return {'refused'} end", "",
     ["--test", "grace", "across_instances"]),
    ("the partner of a vanished instance is told at once", "src/signaling/registry/cluster/lua/common.lua",
     "if HOLD > 0 and theirs.state", "if false and theirs.state",
     ["--test", "cluster", "with_a_grace"]),
    ("a held partner waits forever", "src/signaling/registry/cluster/lua/heartbeat.lua",
     "if deadline and tonumber(deadline) <= now_ms() then", "if false then",
     ["--test", "cluster", "with_a_grace_period_the_partner"]),
    ("a hang-up while waiting to resume keeps the request", "src/signaling/registry/memory.rs",
     "            // Hanging up while waiting for the other side to resume: stop waiting.\n"
     "            user.call = None;",
     "",
     ["--test", "grace", "withdraws"]),
    ("a hang-up while waiting to resume keeps the request (Redis)",
     "src/signaling/registry/cluster/lua/relay.lua",
     "if mine.state == 'resuming' and (kind == 'close' or kind == 'decline') then",
     "if false then",
     ["--test", "grace", "withdraws"]),
    ("a wait for a resume written back after a Redis restart is unbounded",
     "src/signaling/registry/cluster/lua/claim.lua",
     "if state == 'resuming' and HOLD > 0 then", "if false then",
     ["--test", "cluster", "a_wait_for_a_resume"]),
    # Issue 30: access control. Lines whose breaking cargo-mutants cannot write (a flag set
    # to another value, a new logging line, a guard in front of a block).
    ("nbf is not checked", "src/access/token.rs",
     "validation.validate_nbf = true;", "validation.validate_nbf = false;",
     ["--test", "access", "hostile"]),
    ("no leeway on exp", "src/access/token.rs",
     "validation.leeway = LEEWAY_SECS;", "validation.leeway = 0;",
     ["--test", "access", "every_kind_of_key"]),
    ("the credentials of every login logged", "src/signaling/session/messages.rs",
     "    let client = this.client;\n    let asked = offered.username.unwrap_or_default();",
     "    let client = this.client;\n    info!(?offered, \"login\");\n"
     "    let asked = offered.username.unwrap_or_default();",
     ["--test", "access_tools"]),
    ("an expired access token never falls back to the reconnect token", "src/signaling/session/messages.rs",
     "if restricted && let (Some(name), Some(presented))",
     "if false && let (Some(name), Some(presented))",
     ["--test", "access", "outlives"]),
    ("a reconnect token alone claims a free name (Redis)", "src/signaling/registry/cluster/connection.rs",
     "Ok(None) if tokens.take_back_only => {", "Ok(None) if false => {",
     ["--test", "access", "outlives"]),
    ("a reconnect token alone claims a free name (memory)", "src/signaling/registry/mod.rs",
     "Connection::Memory(_) if tokens.take_back_only => Err(LoginFailure::AuthFailed),", "",
     ["--test", "access", "outlives"]),
    ("an unknown kid never makes the JWKS fetch again", "src/access/mod.rs",
     "Err(TokenError::UnknownKey) if jwks.refresh_soon().await",
     "Err(TokenError::UnknownKey) if false && jwks.refresh_soon().await",
     ["--test", "access_tools", "rotation"]),
    ("the per-address block is never checked", "src/access/mod.rs",
     "        self.rate_limited(client)?;\n        let name = match self.verify",
     "        let name = match self.verify",
     ["--test", "access", "lock_out"]),
    ("frame_ancestors ignored", "src/http/mod.rs",
     "content_security_policy(&req, https, &self.inner.frame_ancestors);",
     "content_security_policy(&req, https, \"'none'\");",
     ["--test", "access", "frame"]),
]


def cargo_test(tree, target, args):
    env = dict(os.environ, CARGO_TARGET_DIR=target)
    return subprocess.run(["cargo", "test", "-q", "--locked"] + args, cwd=tree, env=env,
                          capture_output=True, text=True, timeout=900)


def main():
    # --only TEXT...: just the mutants whose description contains one of the TEXTs.
    mutants = MUTANTS
    if len(sys.argv) >= 3 and sys.argv[1] == "--only":
        mutants = [m for m in MUTANTS if any(text in m[0] for text in sys.argv[2:])]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.path.join(repo, "target", "hand-mutants")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo,
                           check=True, capture_output=True, text=True).stdout.split("\n")
    tree = tempfile.mkdtemp(prefix="dialtone-hand-mutants-")
    try:
        for name in filter(None, files):
            if os.path.isfile(os.path.join(repo, name)):
                os.makedirs(os.path.dirname(os.path.join(tree, name)) or tree, exist_ok=True)
                # A plain copy, so every file is newer than what the shared target directory
                # holds: cargo keys the build by the package, not the folder, and with the
                # repository's older times it took the previous run's last mutant as fresh.
                shutil.copy(os.path.join(repo, name), os.path.join(tree, name))
        # The unmutated tree must pass every selection, or "caught" would mean nothing.
        for _, _, _, _, args in mutants:
            run = cargo_test(tree, target, args)
            if run.returncode != 0:
                print(f"the unmutated tree fails `cargo test {' '.join(args)}`:\n"
                      f"{run.stdout[-3000:]}{run.stderr[-3000:]}")
                return 1
        survivors = 0
        for number, (what, path, old, new, args) in enumerate(mutants, 1):
            file = os.path.join(tree, path)
            with open(file) as f:
                source = f.read()
            if source.count(old) != 1:
                print(f"{number:2} STALE     {what}: the text to mutate is no longer in {path}")
                survivors += 1
                continue
            with open(file, "w") as f:
                f.write(source.replace(old, new))
            try:
                run = cargo_test(tree, target, args)
                output = run.stdout + run.stderr
                if "could not compile" in output:
                    verdict = "UNVIABLE"
                elif run.returncode != 0:
                    verdict = "caught"
                else:
                    verdict = "SURVIVED"
            except subprocess.TimeoutExpired:
                verdict = "caught (timeout)"
            finally:
                with open(file, "w") as f:
                    f.write(source)
            if verdict in ("SURVIVED", "UNVIABLE"):
                survivors += 1
            print(f"{number:2} {verdict:9} {what} ({path})", flush=True)
        print(f"hand-written mutants: {len(mutants) - survivors} of {len(mutants)} caught")
        return 0 if survivors == 0 else 2
    finally:
        shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
