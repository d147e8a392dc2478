//! The `dialtone` binary: command line, logging, config, bind, then [`server::run`].

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use dialtone::config::{Config, Listen, LogFormat, Mode, TlsConfig, UrlSource};
use dialtone::http::App;
use dialtone::tls::{Certificates, TlsError};
use dialtone::{server, tls};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::info;

/// WebRTC video calls between two people: serves the call page over HTTPS and relays
/// signaling between browsers over a WebSocket on the same port.
///
/// Settings come from a TOML file: config.toml in the repository lists every key, commented,
/// with its default (docs/configuration.md explains them). With the PORT environment variable
/// set (Heroku), dialtone listens on 0.0.0.0:$PORT in plain HTTP behind the platform's TLS
/// router. Log detail follows RUST_LOG (default: info).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The config file. Without this flag, dialtone reads config.toml in the directory it is
    /// started from (the working directory, not the binary's folder: under the systemd unit,
    /// /var/lib/dialtone), and uses the built-in defaults if there is none there. Generated
    /// certificates go to certs/ in that same directory.
    #[arg(long, short, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Listen here instead of the config's `listen`, e.g. 127.0.0.1:9000, localhost:8443 or
    /// [::]:443. TLS stays as configured; a PORT variable is then ignored.
    #[arg(long, short, value_name = "HOST:PORT")]
    listen: Option<Listen>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Tools for `[access]`; without a command, dialtone serves.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Reads a password from standard input (without echo at a terminal) and prints its
    /// Argon2id hash, for `[access] password_hash`.
    HashPassword,
    /// Prints a link that logs NAME in, signed with `[access] secret` (for mode = "token").
    /// Send it to that person alone: whoever opens it is NAME.
    Invite {
        /// The user name the link logs in as.
        name: String,
        /// How long the link works: a number with s, m, h or d (seconds, minutes, hours,
        /// days).
        #[arg(long, default_value = "30d", value_parser = parse_ttl)]
        ttl: u64,
        /// The address people open, e.g. https://calls.example.com. Default: the first of
        /// allowed_origins, else the first LAN address the start-up banner would print.
        #[arg(long)]
        url: Option<String>,
    },
}

/// `30d`, `12h`, `90m`, `3600s` (or a bare number of seconds) in seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], c),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 60 * 60,
        'd' => 24 * 60 * 60,
        _ => return Err(format!("{text:?}: end it with s, m, h or d, as in 30d")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30d, 12h or 90m"))?;
    match number.checked_mul(scale) {
        Some(0) => Err("a link that is never valid is no use: give a duration above 0".into()),
        Some(secs) if secs <= 10 * 365 * 24 * 60 * 60 => Ok(secs),
        _ => Err(format!(
            "{text:?} is longer than ten years: give a shorter duration"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "dialtone: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; stdout carries only the banner a person reads. A closed stderr must not
/// stop the server: tracing-subscriber's report of a failed write would go to stderr itself,
/// through `eprintln!`, which panics there. Colours only for a person at a terminal, and
/// never with `NO_COLOR` set (<https://no-color.org>): a log file, systemd's journal or
/// Heroku's log drain would get escape codes.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The TURN crate logs every datagram it rejects at error level: a stranger could fill the
    // log with them. The guard in front of it logs what an operator needs; RUST_LOG naming
    // `turn` brings the crate's own lines back.
    let names_turn = std::env::var("RUST_LOG").is_ok_and(|value| value.contains("turn"));
    let filter = if names_turn {
        filter
    } else {
        filter.add_directive("turn=off".parse().expect("a valid directive"))
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .log_internal_errors(false)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let explicit = cli.config.is_some();
    let path = cli.config.unwrap_or_else(|| PathBuf::from("config.toml"));
    match cli.command {
        Some(Command::HashPassword) => return hash_password(),
        Some(Command::Invite { name, ttl, url }) => {
            let config = Config::load(&path, explicit)?;
            return invite(&config, &name, ttl, url).await;
        }
        None => {}
    }
    let mut config = Config::load(&path, explicit)?;
    init_logging(config.log_format);
    let port = std::env::var("PORT").ok();
    let mode = match cli.listen {
        Some(listen) => {
            if let Some(port) = &port {
                info!("PORT={port} is set, but --listen wins: TLS stays as configured");
            }
            config.listen = listen;
            Mode::Configured
        }
        None => config.apply_port_env(port.as_deref())?,
    };
    match mode {
        Mode::Configured if config.file.is_some() => info!("settings from {}", path.display()),
        Mode::Configured => info!("no {} found: using built-in defaults", path.display()),
        Mode::Platform { port } => info!(
            "PORT={port} is set: listening on 0.0.0.0:{port} in plain HTTP behind the \
             platform's TLS router, trusting X-Forwarded-Proto and X-Forwarded-For"
        ),
    }
    let redis_url = std::env::var("REDIS_URL").ok();
    match config.cluster.apply_env(redis_url.as_deref())? {
        None => info!(
            "one instance, state in memory (set [cluster] redis_url or REDIS_URL to run several)"
        ),
        Some(source) => {
            let from = match source {
                UrlSource::File => format!("[cluster] redis_url in {}", path.display()),
                UrlSource::Environment => "the REDIS_URL environment variable".to_owned(),
            };
            info!("Redis backplane from {from}");
        }
    }
    // Everything that can be checked without side effects, first: nothing is bound or
    // written while a setting is still wrong.
    match dialtone::http::public_root(&config)? {
        Some(root) => info!("serving the page from {}", root.display()),
        None => info!("serving the page built into this binary"),
    }
    let listeners = server::bind(&config.listen).await?;
    let tls = tls::setup(&config.tls).map_err(|err| tls_error(err, &config))?;
    let app = App::start(&config).await?;
    let bound: Vec<SocketAddr> = listeners
        .iter()
        .map(|listener| listener.local_addr())
        .collect::<Result<_, _>>()?;
    // Signal handlers go in before the banner says we are up: until a handler is registered
    // a signal takes its default action, and SIGTERM would kill instead of draining.
    let shutdown = shutdown_signal()?;
    let acme = config.tls.mode == dialtone::config::TlsMode::Acme;
    let certificates = if acme {
        Some(tls::acme::start(&config.tls).map_err(|err| tls_error(err, &config))?)
    } else {
        tls.as_ref().map(tls::Tls::certificates)
    };
    if let Some(certificates) = &certificates {
        let hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        tokio::spawn(reload_on_sighup(
            hangups,
            config.tls.clone(),
            certificates.clone(),
        ));
    }
    let public =
        matches!(mode, Mode::Platform { .. }) || bound.iter().any(|addr| !addr.ip().is_loopback());
    let access = app.access().describe(public);
    let relay = app
        .turn_relay()
        .map(|relay| relay.describe(certificates.is_some(), config.behind_proxy));
    let banner = Banner {
        bound,
        mode,
        config: config.clone(),
        access,
        relay,
    };
    match &certificates {
        // The banner says where to open the page: not before a certificate is there.
        Some(certificates) if certificates.served().is_none() => {
            let mut served = certificates.watch();
            tokio::spawn(async move {
                if let Ok(first) = served.wait_for(Option::is_some).await {
                    banner.print(first.as_ref());
                }
            });
        }
        Some(certificates) => banner.print(certificates.served().as_ref()),
        None => banner.print(None),
    }
    server::serve(listeners, certificates, app, shutdown).await;
    info!("stopped");
    Ok(())
}

/// A TLS error with what to change in the file actually in use.
fn tls_error(err: TlsError, config: &Config) -> anyhow::Error {
    let file = config.file_name();
    let hint = match &err {
        TlsError::Read { what, .. } => {
            format!(" (set [tls] {what} in {file}, or mode = \"auto\" to generate one)")
        }
        TlsError::Write { .. } if config.tls.mode == dialtone::config::TlsMode::Acme => {
            format!(" (make that folder writable, or point [tls] cache in {file} elsewhere)")
        }
        TlsError::Write { .. } => {
            format!(" (make that folder writable, or point [tls] cert and key in {file} elsewhere)")
        }
        _ => String::new(),
    };
    anyhow::anyhow!("{err}{hint}")
}

/// What the banner needs, kept until there is a certificate to describe.
struct Banner {
    bound: Vec<SocketAddr>,
    mode: Mode,
    config: Config,
    access: String,
    /// Where the built-in TURN relay takes which transport, when it runs.
    relay: Option<String>,
}

impl Banner {
    fn print(&self, served: Option<&tls::Served>) {
        print_banner(
            &self.bound,
            served,
            &self.mode,
            &self.config,
            (&self.access, self.relay.as_deref()),
        );
    }
}

/// What a person needs to start a call: where to point a browser, and how to recognise the
/// certificate the browser will warn about.
fn print_banner(
    bound: &[SocketAddr],
    tls: Option<&tls::Served>,
    mode: &Mode,
    config: &Config,
    (access, relay): (&str, Option<&str>),
) {
    let mut lines = vec![format!(
        "dialtone {} is running.",
        env!("CARGO_PKG_VERSION")
    )];
    lines.push(format!("  access: {access}"));
    if let Some(relay) = relay {
        lines.push(format!("  TURN relay: {relay}"));
    }
    match (tls, mode) {
        (Some(tls), _) => {
            lines.push(format!("  mode: HTTPS with a {}", tls.origin));
            lines.push("  open one of:".into());
            let port = bound.first().map_or(0, SocketAddr::port);
            if config.tls.mode == dialtone::config::TlsMode::Acme {
                // The certificate covers these names only.
                let port = if port == 443 {
                    String::new()
                } else {
                    format!(":{port}")
                };
                lines.extend(
                    config
                        .tls
                        .domains
                        .iter()
                        .map(|domain| format!("    https://{domain}{port}")),
                );
            } else {
                let (local, lan) = reachable(bound);
                if local {
                    lines.push(format!("    https://localhost:{port}"));
                }
                lines.extend(lan.iter().map(|addr| format!("    https://{addr}")));
                // A person at a terminal can point a phone at it; a log file gets no picture.
                let phone = lan.iter().find(|addr| !addr.ip().is_loopback());
                if std::io::stdout().is_terminal()
                    && let Some(phone) = phone
                    && let url = format!("https://{phone}")
                    && let Some(code) = dialtone::qr::terminal(&url)
                {
                    lines.push(format!("  on a phone on this network, scan to open {url}:"));
                    lines.push(code.trim_end().to_owned());
                }
            }
            lines.push("  (http:// to this port is redirected to https://)".into());
            lines.push(format!(
                "  certificate for {}, issued by {}, valid until {}",
                tls.names.join(", "),
                tls.issuer,
                tls.expires()
            ));
            lines.push("  certificate SHA-256 fingerprint:".into());
            lines.push(format!("    {}", tls.fingerprint));
            if tls.self_signed {
                lines.push(
                    "  A self-signed certificate makes browsers warn once per device: check \
                     that the fingerprint matches, then accept."
                        .into(),
                );
            }
        }
        (None, Mode::Platform { port }) => {
            lines.push(format!(
                "  mode: plain HTTP on port {port} behind the platform's TLS router: TLS is off \
                 because PORT is set (as on Heroku)"
            ));
            lines.push(
                "  open your app's https:// address; http:// page requests are redirected".into(),
            );
            lines.push(
                "  to run it yourself on another port, unset PORT and use --listen HOST:PORT"
                    .into(),
            );
        }
        (None, Mode::Configured) => {
            lines.push(
                "  mode: plain HTTP (tls mode \"off\"): put a TLS-terminating proxy in front;"
                    .into(),
            );
            lines.push("  browsers only allow the camera on https:// or on localhost".into());
            if !config.behind_proxy {
                lines.push(format!(
                    "  behind that proxy, set behind_proxy = true in {} so users are told apart \
                     by their own addresses",
                    config.file_name()
                ));
            }
            lines.extend(
                bound
                    .iter()
                    .map(|addr| format!("  listening on http://{addr}")),
            );
        }
    }
    lines.push("Press Ctrl-C to stop.".into());
    // A closed stdout (a pipe whose reader left) must not stop the server: `println!` would
    // panic, so write and ignore errors.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", lines.join("\n")).and_then(|()| out.flush());
}

/// Whether `localhost` reaches a bound address, and the addresses another device on the
/// network could use (each LAN address for a wildcard bind).
fn reachable(bound: &[SocketAddr]) -> (bool, Vec<SocketAddr>) {
    let local = bound
        .iter()
        .any(|addr| addr.ip().is_unspecified() || addr.ip().is_loopback());
    let mut lan = Vec::new();
    for addr in bound {
        let ips: Vec<IpAddr> = if addr.ip().is_unspecified() {
            dialtone::net::reachable_lan_addresses()
        } else {
            vec![addr.ip()]
        };
        for ip in ips {
            let addr = SocketAddr::new(ip, addr.port());
            if !lan.contains(&addr) {
                lan.push(addr);
            }
        }
    }
    (local, lan)
}

/// `dialtone hash-password`: the hash goes to stdout, prompts to the terminal.
fn hash_password() -> anyhow::Result<()> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let again = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        if first != again {
            anyhow::bail!("the two passwords differ: run it again");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    let hash = dialtone::access::password::hash(&password).map_err(anyhow::Error::msg)?;
    use std::io::Write;
    writeln!(std::io::stdout(), "{hash}")?;
    Ok(())
}

/// `dialtone invite NAME`: the link to stdout; what it is, and until when, to stderr.
async fn invite(config: &Config, name: &str, ttl: u64, url: Option<String>) -> anyhow::Result<()> {
    use std::io::Write;
    let now = std::time::SystemTime::now();
    let now_secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let token = dialtone::access::Access::invite(&config.access, name, now_secs, ttl)
        .map_err(anyhow::Error::msg)?;
    let base = match url {
        Some(url) => url,
        None => default_invite_url(config).await?,
    };
    let link = format!("{}/#token={token}", base.trim_end_matches('/'));
    let until = httpdate::fmt_http_date(now + std::time::Duration::from_secs(ttl));
    let mut err = std::io::stderr();
    if config.access.mode != dialtone::config::AccessMode::Token {
        let _ = writeln!(
            err,
            "note: {} has [access] mode = \"{}\": this link only logs in once mode = \"token\"",
            config.file_name(),
            config.access.mode.as_str()
        );
    }
    let _ = writeln!(
        err,
        "{name}'s link, valid until {until}; whoever opens it is {name}:"
    );
    writeln!(std::io::stdout(), "{link}")?;
    Ok(())
}

/// The address an invite points at when `--url` is not given: the first allowed origin
/// (the operator's own public name), else the first ACME domain, else the first LAN address
/// the banner would print, else localhost.
async fn default_invite_url(config: &Config) -> anyhow::Result<String> {
    if let Some(origin) = config.allowed_origins.first() {
        return Ok(origin.as_str().to_owned());
    }
    if config.tls.mode == dialtone::config::TlsMode::Acme
        && let Some(domain) = config.tls.domains.first()
    {
        // The name the certificate is for: the address people open.
        let port = config.listen.port();
        return Ok(match port {
            443 => format!("https://{domain}"),
            port => format!("https://{domain}:{port}"),
        });
    }
    if config.tls.mode == dialtone::config::TlsMode::Off {
        anyhow::bail!(
            "TLS is off in {}, so the address people open is the proxy's: pass it with --url \
             https://your.name",
            config.file_name()
        );
    }
    let bound = config.listen.resolve().await.unwrap_or_default();
    let (_, lan) = reachable(&bound);
    let url = match lan.iter().find(|addr| !addr.ip().is_loopback()) {
        Some(addr) => format!("https://{addr}"),
        None => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: this link opens on this machine only; pass --url with the address others use"
            );
            format!("https://localhost:{}", config.listen.port())
        }
    };
    Ok(url)
}

/// Reads the certificate files again on each SIGHUP, so a renewed certificate applies to new
/// connections without a restart; calls in progress are untouched. A bad new certificate is
/// refused with a log line, and the current one stays.
async fn reload_on_sighup(mut hangups: Signal, config: TlsConfig, certificates: Certificates) {
    while hangups.recv().await.is_some() {
        if config.mode == dialtone::config::TlsMode::Acme {
            info!("SIGHUP: ACME certificates are renewed by dialtone itself; nothing to re-read");
            continue;
        }
        match tls::setup(&config) {
            Ok(Some(new)) => {
                certificates.replace(new.server_config.clone(), new.served());
                info!(
                    "SIGHUP: new connections use the {} (SHA-256 {})",
                    new.origin, new.fingerprint
                );
            }
            Ok(None) => {}
            Err(err) => tracing::error!("SIGHUP: keeping the current certificate: {err}"),
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what Heroku and systemd send). The handlers are
/// registered when this is called, not when the future is first polled.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT received"),
            _ = terminate.recv() => info!("SIGTERM received"),
        }
    })
}
