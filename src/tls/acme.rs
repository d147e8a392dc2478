//! `[tls] mode = "acme"`: a certificate from an ACME CA (Let's Encrypt by default) for the
//! configured `domains`, obtained at start and renewed in the background.
//!
//! The challenge is TLS-ALPN-01 (RFC 8737) on dialtone's own port: the CA opens a TLS
//! connection offering only the `acme-tls/1` protocol, and the resolver answers it with a
//! one-off certificate that carries the challenge's digest. Nothing else has to listen, not
//! even on port 80. instant-acme speaks the protocol; its HTTP goes through [`crate::client`],
//! so the CA's certificate is checked against the system's roots or `SSL_CERT_FILE`.
//!
//! The cache (`[tls] cache`) holds, per directory URL, the account and the certificate, each
//! written whole under a temporary name and renamed into place, so a reader never sees half of
//! one. Several instances may share it: one at a time orders (an advisory lock on `lock`), the
//! others pick the new certificate up from the cache, and every instance answers a challenge
//! another one published there, so behind a TCP load balancer it does not matter which
//! instance the CA reaches.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, Problem, RetryPolicy,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsConnector;
use tracing::{error, info, warn};

use super::{ACME_TLS_ALPN, Certificates, Served, TlsError, provider};
use crate::config::TlsConfig;
use crate::sync::lock;

/// One request to the CA may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from the CA (a certificate chain is a few KiB).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How long the CA may take to check the challenges, and then to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Renewal starts this long before expiry, or at two thirds of a shorter certificate's life.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Between renewals the cache is looked at this often, for a certificate another instance
/// sharing it has obtained.
const RECHECK: Duration = Duration::from_secs(10 * 60);
/// How far this machine's clock may be behind the CA's.
const CLOCK_SKEW: i64 = 5 * 60;
/// Warnings about a renewal that keeps failing turn to errors this close to expiry.
const URGENT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Starts ACME for `config`: the settings the server serves from at once (answering
/// challenges, and the cached certificate if it is still good), and a task that obtains and
/// renews the certificate for as long as the runtime runs. Errors are the ones a restart
/// will not fix: an unwritable cache, no trusted roots.
pub fn start(config: &TlsConfig) -> Result<Certificates, TlsError> {
    let cache = Cache::open(&config.cache, &config.directory)?;
    let connector = crate::client::connector("[tls] directory")
        .map_err(|detail| TlsError::Acme(detail.clone()))?;
    let resolver = Arc::new(Resolver {
        current: RwLock::new(None),
        challenges: Mutex::new(HashMap::new()),
        domains: config.domains.clone(),
        shared: cache.challenges.clone(),
    });
    let server_config = server_config(resolver.clone())?;
    let certificates = Certificates::new(Arc::new(server_config));
    let manager = Manager {
        domains: config.domains.clone(),
        contact: config.contact.clone(),
        directory: config.directory.clone(),
        cache,
        http: connector,
        resolver,
        certificates: certificates.clone(),
    };
    match manager.cache.certificate() {
        Some(cached) if manager.usable(&cached) => {
            info!(
                "ACME: using the cached certificate for {} (until {})",
                cached.served.names.join(", "),
                cached.served.expires()
            );
            manager.install(cached);
        }
        Some(cached) => info!(
            "ACME: the cached certificate ({}, until {}) does not do: ordering a new one from {}",
            cached.served.names.join(", "),
            cached.served.expires(),
            manager.directory
        ),
        None => info!(
            "ACME: ordering a certificate for {} from {}; until it arrives, only the CA's \
             TLS-ALPN-01 checks are answered",
            manager.domains.join(", "),
            manager.directory
        ),
    }
    tokio::spawn(manager.run());
    Ok(certificates)
}

/// HTTP/1.1 and HTTP/2 for people, `acme-tls/1` for the CA.
fn server_config(resolver: Arc<Resolver>) -> Result<ServerConfig, TlsError> {
    let fail = |detail: String| TlsError::Acme(detail);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| fail(err.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // As for the other modes (see `into_tls`).
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|err| fail(format!("cannot make a session ticket key: {err}")))?;
    Ok(config)
}

/// Picks the certificate for each handshake: the current one, or a challenge's.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// This instance's challenges under way, by domain.
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Only these names' challenges are answered (and looked for in the cache).
    domains: Vec<String>,
    /// Where every instance sharing the cache publishes its challenges.
    shared: PathBuf,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if !challenge {
            return self
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        if !self.domains.contains(&name) {
            return None;
        }
        if let Some(key) = lock(&self.challenges).get(&name) {
            return Some(key.clone());
        }
        // Another instance's order: a small file, read only for a CA's check.
        let pem = std::fs::read(self.shared.join(format!("{name}.pem"))).ok()?;
        challenge_key(&pem).ok().map(Arc::new)
    }
}

/// A certificate and its key, read from the cache or just issued.
struct Issued {
    key: CertifiedKey,
    served: Served,
}

/// Obtains and renews; owns everything the background task needs.
struct Manager {
    domains: Vec<String>,
    contact: Option<String>,
    directory: String,
    cache: Cache,
    http: TlsConnector,
    resolver: Arc<Resolver>,
    certificates: Certificates,
}

/// Why an attempt failed, which decides how soon to try again.
#[derive(Debug)]
enum Failure {
    /// The CA could not be reached, or answered nonsense: try again soon.
    Unreachable(String),
    /// The CA refused (a failed check, a policy): try again, but not often, since CAs limit
    /// failed validations (Let's Encrypt: 5 an hour per name).
    Refused(String),
    /// The CA's rate limit: wait an hour.
    RateLimited(String),
    /// Something on this machine (the cache, a key).
    Local(String),
}

impl Failure {
    /// The wait before attempt `attempt + 1` (the first failure is attempt 1).
    fn retry_in(&self, attempt: u32) -> Duration {
        let doubling = |first: u64, most: u64| {
            let factor = 1u64 << attempt.saturating_sub(1).min(16);
            Duration::from_secs(first.saturating_mul(factor).min(most))
        };
        match self {
            Failure::Unreachable(_) | Failure::Local(_) => doubling(2, 5 * 60),
            Failure::Refused(_) => doubling(60, 60 * 60),
            Failure::RateLimited(_) => Duration::from_secs(60 * 60),
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Unreachable(why)
            | Failure::Refused(why)
            | Failure::RateLimited(why)
            | Failure::Local(why) => why,
        }
    }
}

impl Manager {
    async fn run(self) {
        let mut failures = 0u32;
        loop {
            if let Some(wait) = self.until_due() {
                tokio::time::sleep(nap(wait)).await;
                // Another instance sharing the cache may have renewed meanwhile.
                if let Some(cached) = self.cache.certificate()
                    && self.newer_than_served(&cached)
                    && self.usable(&cached)
                {
                    info!(
                        "ACME: using the certificate another instance put in the cache (until {})",
                        cached.served.expires()
                    );
                    self.install(cached);
                }
                continue;
            }
            match self.obtain().await {
                Ok(issued) => {
                    failures = 0;
                    self.install(issued);
                }
                Err(failure) => {
                    failures += 1;
                    let retry = failure.retry_in(failures);
                    self.report(&failure, retry);
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    /// How long until the served certificate should be renewed; `None` when it is time.
    fn until_due(&self) -> Option<Duration> {
        let served = self.certificates.served()?;
        until_due(served.not_before, served.not_after, now_secs())
    }

    fn newer_than_served(&self, cached: &Issued) -> bool {
        self.certificates
            .served()
            .is_none_or(|served| served.fingerprint != cached.served.fingerprint)
    }

    fn usable(&self, issued: &Issued) -> bool {
        usable(issued, &self.domains, now_secs())
    }

    fn install(&self, issued: Issued) {
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(issued.key));
        self.certificates.set_served(issued.served);
    }

    /// One log line: what went wrong, what to do, when the next attempt is, and how long the
    /// certificate being served still lasts.
    fn report(&self, failure: &Failure, retry: Duration) {
        let retry = human(retry);
        match self.certificates.served() {
            None => error!(
                "ACME: no certificate yet for {}: {}; trying again in {retry} (until then \
                 browsers cannot connect)",
                self.domains.join(", "),
                failure.message()
            ),
            Some(served) => {
                let left = served.not_after - now_secs();
                let left_text = human(Duration::from_secs(left.max(0) as u64));
                let when = if left > 0 {
                    format!("expires on {} (in {left_text})", served.expires())
                } else {
                    format!("expired on {}", served.expires())
                };
                let line = format!(
                    "ACME: renewing the certificate failed: {}; trying again in {retry}; the \
                     current one stays in use and {when}",
                    failure.message(),
                );
                if left <= 0 {
                    error!("{line}: browsers refuse the page until a renewal succeeds");
                } else if urgent(left) {
                    error!("{line}: after that browsers will refuse the page");
                } else {
                    warn!("{line}");
                }
            }
        }
    }

    /// Orders a certificate, unless another instance sharing the cache has just done so.
    async fn obtain(&self) -> Result<Issued, Failure> {
        let _lock = self.cache.lock().await?;
        if let Some(cached) = self.cache.certificate()
            && self.newer_than_served(&cached)
            && self.usable(&cached)
        {
            info!("ACME: another instance sharing the cache has just obtained a certificate");
            return Ok(cached);
        }
        let account = self.account().await?;
        let issued = match self.order(&account).await {
            Err(Failure::Refused(why)) if why.contains(ACCOUNT_GONE) => {
                // The CA forgot the account (a test CA restarted, or it was deactivated).
                warn!("ACME: the CA no longer knows the cached account: making a new one");
                self.cache.forget_account();
                let account = self.account().await?;
                self.order(&account).await?
            }
            other => other?,
        };
        self.cache.save_certificate(&issued.1)?;
        info!(
            "ACME: obtained a certificate for {} from {} (until {}, SHA-256 {})",
            issued.0.served.names.join(", "),
            issued.0.served.issuer,
            issued.0.served.expires(),
            issued.0.served.fingerprint
        );
        Ok(issued.0)
    }

    async fn account(&self) -> Result<Account, Failure> {
        let builder = || Account::builder_with_http(Box::new(Http(self.http.clone())));
        if let Some(credentials) = self.cache.account() {
            return builder()
                .from_credentials(credentials)
                .await
                .map_err(|err| self.explain(err, None));
        }
        let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory.clone(),
                None,
            )
            .await
            .map_err(|err| self.explain(err, None))?;
        self.cache.save_account(&credentials)?;
        info!("ACME: registered an account with {}", self.directory);
        Ok(account)
    }

    /// One order, start to finish: the issued certificate, and its key and chain in PEM.
    async fn order(&self, account: &Account) -> Result<(Issued, String), Failure> {
        let identifiers: Vec<Identifier> = self
            .domains
            .iter()
            .map(|domain| Identifier::Dns(domain.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|err| self.explain(err, None))?;
        // Challenges are withdrawn however this ends.
        let mut published = Published {
            resolver: &self.resolver,
            cache: &self.cache,
            names: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|err| self.explain(err, None))?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(Failure::Refused(format!(
                        "the CA says the authorization for {} is {other:?}",
                        authorization.identifier()
                    )));
                }
            }
            let domain = authorization.identifier().to_string();
            let mut challenge = authorization
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| {
                    Failure::Refused(format!(
                        "the CA offers no TLS-ALPN-01 challenge for {domain}, the only one \
                         dialtone answers: use a CA that supports it (Let's Encrypt does)"
                    ))
                })?;
            let digest = challenge.key_authorization().digest();
            let pem = challenge_certificate(&domain, digest.as_ref())?;
            published.add(&domain, &pem)?;
            challenge
                .set_ready()
                .await
                .map_err(|err| self.explain(err, Some(&domain)))?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|err| self.explain(err, None))?;
        if status != OrderStatus::Ready {
            return Err(self.why_invalid(&mut order).await);
        }
        drop(published);
        let key = rcgen::KeyPair::generate().map_err(|err| Failure::Local(err.to_string()))?;
        let mut params = rcgen::CertificateParams::new(self.domains.clone())
            .map_err(|err| Failure::Local(err.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|err| Failure::Local(err.to_string()))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|err| self.explain(err, None))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(|err| self.explain(err, None))?;
        let pem = format!("{}{chain}", key.serialize_pem());
        let (certified, leaf) = certified_key(pem.as_bytes()).map_err(|why| {
            Failure::Refused(format!("the CA sent an unusable certificate: {why}"))
        })?;
        let issued = Issued {
            key: certified,
            served: Served::of(&leaf, self.origin(), false),
        };
        Ok((issued, pem))
    }

    fn origin(&self) -> String {
        format!("certificate from {} (ACME)", self.directory)
    }

    /// The failed challenge's problem, in words: which name, and what to fix.
    async fn why_invalid(&self, order: &mut instant_acme::Order) -> Failure {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authorization)) = authorizations.next().await {
            let domain = authorization.identifier().to_string();
            let Ok(state) = authorization.refresh().await else {
                continue;
            };
            let problem = state
                .challenges
                .iter()
                .filter(|challenge| challenge.r#type == ChallengeType::TlsAlpn01)
                .find_map(|challenge| challenge.error.clone());
            if let Some(problem) = problem {
                return explain_problem(&problem, &domain);
            }
        }
        Failure::Refused(
            "the CA marked the order invalid without saying why: see the CA's status page".into(),
        )
    }

    fn explain(&self, err: instant_acme::Error, domain: Option<&str>) -> Failure {
        match err {
            instant_acme::Error::Api(problem) => {
                let name = domain.map_or_else(|| self.domains.join(", "), str::to_owned);
                explain_problem(&problem, &name)
            }
            instant_acme::Error::Timeout(_) => Failure::Unreachable(format!(
                "the CA at {} did not finish within {} s",
                self.directory,
                ORDER_TIMEOUT.as_secs()
            )),
            instant_acme::Error::Other(err) => {
                let detail = err.to_string();
                let advice = if detail.starts_with("TLS with") {
                    ": its certificate is not trusted here; for a private CA, name its root \
                     in SSL_CERT_FILE"
                } else {
                    ": check the address, this machine's network and its DNS resolver"
                };
                Failure::Unreachable(format!(
                    "the ACME directory {} does not answer ({detail}){advice}",
                    self.directory
                ))
            }
            other => Failure::Unreachable(format!(
                "the CA at {} answered something dialtone cannot use ({other})",
                self.directory
            )),
        }
    }
}

/// A problem document from the CA, in words: what went wrong for `name`, and what to fix.
fn explain_problem(problem: &Problem, name: &str) -> Failure {
    let kind = problem
        .r#type
        .as_deref()
        .unwrap_or("")
        .trim_start_matches("urn:ietf:params:acme:error:");
    let detail = problem.detail.as_deref().unwrap_or("no detail");
    // CAs differ in the types they give a failed check (Pebble says `unauthorized` for a
    // refused connection, `malformed` for a failed lookup): the detail decides too.
    let said = detail.to_ascii_lowercase();
    let settled = [
        "rateLimited",
        "rejectedIdentifier",
        "caa",
        "accountDoesNotExist",
    ];
    let kind = if settled.contains(&kind) {
        kind
    } else if said.contains("resolve") || said.contains("nxdomain") {
        "dns"
    } else if said.contains("connect")
        || said.contains("timeout")
        || said.contains("timed out")
        || said.contains("refused")
    {
        "connection"
    } else {
        kind
    };
    match kind {
        "dns" => Failure::Refused(format!(
            "the CA could not look up {name} ({detail}): create an A (or AAAA) record for \
                 {name} with this machine's public address"
        )),
        "connection" => Failure::Refused(format!(
            "the CA could not connect to {name} on port 443 ({detail}): check that {name} \
                 points at this machine's public address and that port 443 from the internet \
                 reaches dialtone (firewall, port forwarding); TLS-ALPN-01 always comes to \
                 port 443"
        )),
        "tls" | "unauthorized" | "incorrectResponse" => Failure::Refused(format!(
            "the CA reached {name}, but something other than this dialtone answered \
                 ({detail}): {name} points at another machine, or a proxy or load balancer in \
                 front terminates TLS; point the name here, or pass TLS through to dialtone"
        )),
        "rateLimited" => Failure::RateLimited(format!(
            "the CA's rate limit ({detail}); while experimenting, use its staging \
                 directory"
        )),
        "rejectedIdentifier" | "caa" => Failure::Refused(format!(
            "the CA will not issue for {name} ({detail}): check the name's CAA records \
                 and the CA's policy"
        )),
        "accountDoesNotExist" => Failure::Refused(format!("{ACCOUNT_GONE}: {detail}")),
        _ => Failure::Refused(format!("the CA refused: {detail} ({kind})")),
    }
}

/// Marks the problem that makes a new account worth one more try.
const ACCOUNT_GONE: &str = "the CA does not know the cached account";

/// The challenges of one order, answered here and published in the cache for the instances
/// sharing it; withdrawn when dropped.
struct Published<'a> {
    resolver: &'a Resolver,
    cache: &'a Cache,
    names: Vec<String>,
}

impl Published<'_> {
    fn add(&mut self, domain: &str, pem: &str) -> Result<(), Failure> {
        let key = challenge_key(pem.as_bytes()).map_err(Failure::Local)?;
        lock(&self.resolver.challenges).insert(domain.to_owned(), Arc::new(key));
        self.names.push(domain.to_owned());
        write_atomically(
            &self.cache.challenges.join(format!("{domain}.pem")),
            pem.as_bytes(),
        )
        .map_err(|err| Failure::Local(err.to_string()))
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        let mut challenges = lock(&self.resolver.challenges);
        for name in &self.names {
            challenges.remove(name);
            let _ = std::fs::remove_file(self.cache.challenges.join(format!("{name}.pem")));
        }
    }
}

/// The TLS-ALPN-01 answer for `domain`: a self-signed certificate for it alone, carrying the
/// key authorization's SHA-256 in the critical acmeIdentifier extension. Key, then cert (PEM).
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<String, Failure> {
    let fail = |err: rcgen::Error| Failure::Local(format!("cannot make a challenge answer: {err}"));
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok(format!("{}{}", key.serialize_pem(), cert.pem()))
}

/// A key and chain from one PEM text, checked to belong together.
fn certified_key(pem: &[u8]) -> Result<(CertifiedKey, CertificateDer<'static>), String> {
    let (certified, leaf) = key_and_chain(pem)?;
    certified.keys_match().map_err(|err| err.to_string())?;
    Ok((certified, leaf))
}

/// A challenge answer: webpki, which [`CertifiedKey::keys_match`] uses, refuses its critical
/// acmeIdentifier extension, and dialtone made the pair itself.
fn challenge_key(pem: &[u8]) -> Result<CertifiedKey, String> {
    key_and_chain(pem).map(|(certified, _)| certified)
}

fn key_and_chain(pem: &[u8]) -> Result<(CertifiedKey, CertificateDer<'static>), String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| err.to_string())?;
    let leaf = chain.first().cloned().ok_or("no certificate")?;
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|err| err.to_string())?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|err| err.to_string())?;
    Ok((CertifiedKey::new(chain, signing), leaf))
}

/// Valid at `now`, not yet due for renewal, and for every one of `domains`.
fn usable(issued: &Issued, domains: &[String], now: i64) -> bool {
    // A few minutes' leeway for a clock behind the CA's.
    let served = &issued.served;
    served.not_before <= now + CLOCK_SKEW
        && renew_at(served.not_before, served.not_after) > now
        && domains
            .iter()
            .all(|domain| issued.served.names.contains(domain))
}

/// How long from `now` until a certificate valid from `not_before` to `not_after` is due for
/// renewal; `None` when it is due.
fn until_due(not_before: i64, not_after: i64, now: i64) -> Option<Duration> {
    let wait = renew_at(not_before, not_after) - now;
    (wait > 0).then(|| Duration::from_secs(wait as u64))
}

/// How long to sleep towards a renewal `wait` away: never past the next look at the cache.
fn nap(wait: Duration) -> Duration {
    wait.min(RECHECK)
}

/// Whether a certificate with `left` seconds to live is close enough to expiry for a failed
/// renewal to be an error rather than a warning.
fn urgent(left: i64) -> bool {
    left < URGENT.as_secs() as i64
}

/// When renewal is due: 30 days before expiry, or at two thirds of a shorter life.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let life = (not_after - not_before).max(0);
    not_after - (life / 3).min(RENEW_BEFORE.as_secs() as i64)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

/// `90 s`, `12 min`, `5 h`, `29 days`.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// `[tls] cache`, one folder per directory URL (a staging certificate is never served as a
/// production one, nor one CA's account used with another).
struct Cache {
    folder: PathBuf,
    challenges: PathBuf,
}

impl Cache {
    fn open(root: &Path, directory: &str) -> Result<Cache, TlsError> {
        let host = directory
            .trim_start_matches("https://")
            .split(['/', ':'])
            .next()
            .unwrap_or("ca")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>();
        let digest = ring::digest::digest(&ring::digest::SHA256, directory.as_bytes());
        let short: String = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let folder = root.join(format!("{host}-{short}"));
        let challenges = folder.join("challenges");
        for dir in [root, &folder, &challenges] {
            create_private_dir(dir).map_err(|reason| TlsError::Write {
                path: dir.to_owned(),
                reason,
            })?;
        }
        Ok(Cache { folder, challenges })
    }

    fn account(&self) -> Option<AccountCredentials> {
        let text = std::fs::read(self.folder.join("account.json")).ok()?;
        match serde_json::from_slice(&text) {
            Ok(credentials) => Some(credentials),
            Err(err) => {
                warn!("ACME: the cached account cannot be read ({err}): making a new one");
                None
            }
        }
    }

    fn save_account(&self, credentials: &AccountCredentials) -> Result<(), Failure> {
        let json =
            serde_json::to_vec(credentials).map_err(|err| Failure::Local(err.to_string()))?;
        write_atomically(&self.folder.join("account.json"), &json)
            .map_err(|err| Failure::Local(format!("cannot save the ACME account: {err}")))
    }

    fn forget_account(&self) {
        let _ = std::fs::remove_file(self.folder.join("account.json"));
    }

    fn certificate(&self) -> Option<Issued> {
        let path = self.folder.join("certificate.pem");
        let pem = std::fs::read(&path).ok()?;
        match certified_key(&pem) {
            Ok((key, leaf)) => Some(Issued {
                key,
                served: Served::of(
                    &leaf,
                    format!("certificate from the ACME cache {}", path.display()),
                    false,
                ),
            }),
            Err(why) => {
                warn!(
                    "ACME: {} is unusable ({why}): ordering anew",
                    path.display()
                );
                None
            }
        }
    }

    fn save_certificate(&self, pem: &str) -> Result<(), Failure> {
        write_atomically(&self.folder.join("certificate.pem"), pem.as_bytes())
            .map_err(|err| Failure::Local(format!("cannot save the certificate: {err}")))
    }

    /// Waits for the cache's lock: one instance orders at a time. Released when dropped (and
    /// by the kernel if the process dies).
    async fn lock(&self) -> Result<std::fs::File, Failure> {
        let path = self.folder.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|err| Failure::Local(format!("cannot open {}: {err}", path.display())))?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !told {
                        info!(
                            "ACME: another instance sharing {} is ordering: waiting for it",
                            self.folder.display()
                        );
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(std::fs::TryLockError::Error(err)) => {
                    return Err(Failure::Local(format!(
                        "cannot lock {}: {err}",
                        path.display()
                    )));
                }
            }
        }
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Cache files are for dialtone's eyes only.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    super::write_file(path, contents, 0o600)
}

/// instant-acme's requests, through dialtone's HTTPS client.
struct Http(TlsConnector);

impl instant_acme::HttpClient for Http {
    fn request(
        &self,
        request: hyper::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let connector = self.0.clone();
        Box::pin(async move {
            let sent = tokio::time::timeout(
                REQUEST_TIMEOUT,
                crate::client::send(&connector, request, MAX_ANSWER_BYTES),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())));
            let response = sent.map_err(|why| instant_acme::Error::Other(why.into()))?;
            Ok(BytesResponse::from(response.map(http_body_util::Full::new)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_thirty_days_before_or_at_two_thirds() {
        let day = 86_400;
        // A 90-day certificate: 30 days before expiry.
        assert_eq!(renew_at(0, 90 * day), 60 * day);
        // A 6-day one: 2 days before.
        assert_eq!(renew_at(0, 6 * day), 4 * day);
        // A 45-second one (the tests'): after 30 s.
        assert_eq!(renew_at(1000, 1045), 1030);
        // A year: still 30 days before.
        assert_eq!(renew_at(0, 365 * day), 335 * day);
    }

    #[test]
    fn each_kind_of_refusal_says_what_to_fix() {
        let problem = |kind: &str, detail: &str| -> Problem {
            serde_json::from_value(serde_json::json!({
                "type": format!("urn:ietf:params:acme:error:{kind}"),
                "detail": detail,
                "status": 400,
            }))
            .unwrap()
        };
        let says = |kind: &str, detail: &str| {
            let failure = explain_problem(&problem(kind, detail), "calls.example.com");
            (
                match failure {
                    Failure::Refused(_) => "refused",
                    Failure::RateLimited(_) => "rate-limited",
                    Failure::Unreachable(_) => "unreachable",
                    Failure::Local(_) => "local",
                },
                failure.message().to_owned(),
            )
        };
        let cases = [
            (
                "dns",
                "NXDOMAIN looking up A",
                "refused",
                "create an A (or AAAA) record",
            ),
            (
                "malformed",
                "Could not resolve URL",
                "refused",
                "create an A (or AAAA) record",
            ),
            (
                "connection",
                "Timeout during connect",
                "refused",
                "port 443 from the internet",
            ),
            (
                "unauthorized",
                "Failed to connect to 1.2.3.4",
                "refused",
                "port 443 from the internet",
            ),
            (
                "unauthorized",
                "dial 1.2.3.4:443: i/o timed out",
                "refused",
                "port 443 from the internet",
            ),
            (
                "unauthorized",
                "1.2.3.4:443: ECONNREFUSED",
                "refused",
                "port 443 from the internet",
            ),
            (
                "tls",
                "remote error: handshake failure",
                "refused",
                "points at another machine",
            ),
            (
                "unauthorized",
                "Incorrect validation certificate",
                "refused",
                "points at another machine",
            ),
            (
                "rateLimited",
                "too many certificates (5) already issued; connection",
                "rate-limited",
                "staging directory",
            ),
            (
                "rejectedIdentifier",
                "forbidden by policy",
                "refused",
                "CAA records",
            ),
            ("caa", "CAA record forbids", "refused", "CAA records"),
            (
                "accountDoesNotExist",
                "no such account",
                "refused",
                ACCOUNT_GONE,
            ),
            (
                "serverInternal",
                "oops",
                "refused",
                "the CA refused: oops (serverInternal)",
            ),
        ];
        for (kind, detail, class, advice) in cases {
            let (got, message) = says(kind, detail);
            assert_eq!(got, class, "{kind}: {message}");
            assert!(message.contains(advice), "{kind}: {message}");
            assert!(message.contains(detail), "{kind}: {message}");
        }
    }

    /// A self-signed certificate for `names`, valid from `not_before` to `not_after`.
    fn issued(names: &[&str], not_before: i64, not_after: i64) -> Issued {
        let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64);
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let (cert, key) =
            super::super::generate_valid(&names, at(not_before), at(not_after)).unwrap();
        let (key, leaf) = certified_key(format!("{key}{cert}").as_bytes()).unwrap();
        Issued {
            key,
            served: Served::of(&leaf, String::new(), false),
        }
    }

    #[test]
    fn a_cached_certificate_is_used_while_valid_not_due_and_covering() {
        let day = 86_400;
        let now = 1_800_000_000;
        let both = ["a.example.com".to_owned(), "b.example.com".to_owned()];
        let good = issued(
            &["a.example.com", "b.example.com"],
            now - day,
            now + 89 * day,
        );
        assert!(usable(&good, &both, now));
        // A newly configured name it does not cover: order anew.
        assert!(!usable(
            &issued(&["a.example.com"], now - day, now + 89 * day),
            &both,
            now
        ));
        // Due (under 30 days left), or expired.
        assert!(!usable(
            &issued(
                &["a.example.com", "b.example.com"],
                now - 70 * day,
                now + 20 * day
            ),
            &both,
            now
        ));
        assert!(!usable(
            &issued(
                &["a.example.com", "b.example.com"],
                now - 90 * day,
                now - day
            ),
            &both,
            now
        ));
        // Issued by a CA whose clock is two minutes ahead: still used; an hour ahead: not yet.
        assert!(usable(
            &issued(
                &["a.example.com", "b.example.com"],
                now + 120,
                now + 90 * day
            ),
            &both,
            now
        ));
        assert!(!usable(
            &issued(
                &["a.example.com", "b.example.com"],
                now + 3600,
                now + 90 * day
            ),
            &both,
            now
        ));
    }

    #[test]
    fn renewal_waits_until_it_is_due_then_not_at_all() {
        let day = 86_400;
        let now = 1_800_000_000;
        // Issued today for 90 days: due in 60.
        assert_eq!(
            until_due(now, now + 90 * day, now),
            Some(Duration::from_secs(60 * day as u64))
        );
        assert_eq!(
            until_due(now - 60 * day + 1, now + 30 * day + 1, now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(until_due(now - 60 * day, now + 30 * day, now), None);
        assert_eq!(until_due(now - 89 * day, now + day, now), None);
    }

    #[test]
    fn naps_end_at_the_next_look_at_the_cache_and_the_last_week_is_urgent() {
        assert_eq!(
            nap(Duration::from_secs(60 * 86_400)),
            Duration::from_secs(600)
        );
        assert_eq!(nap(Duration::from_secs(5)), Duration::from_secs(5));
        let day = 86_400;
        assert!(urgent(-5));
        assert!(urgent(6 * day));
        assert!(urgent(7 * day - 1));
        assert!(!urgent(7 * day));
        assert!(!urgent(8 * day));
        assert!(!urgent(29 * day));
    }

    #[test]
    fn durations_are_said_in_the_unit_a_person_would_use() {
        let said = |secs| human(Duration::from_secs(secs));
        assert_eq!(said(0), "0 s");
        assert_eq!(said(119), "119 s");
        assert_eq!(said(120), "2 min");
        assert_eq!(said(7199), "119 min");
        assert_eq!(said(7200), "2 h");
        assert_eq!(said(172_799), "47 h");
        assert_eq!(said(172_800), "2 days");
        assert_eq!(said(29 * 86_400 + 5), "29 days");
    }

    #[test]
    fn retries_back_off_by_kind() {
        let unreachable = Failure::Unreachable(String::new());
        assert_eq!(unreachable.retry_in(1), Duration::from_secs(2));
        assert_eq!(unreachable.retry_in(2), Duration::from_secs(4));
        assert_eq!(unreachable.retry_in(30), Duration::from_secs(300));
        let refused = Failure::Refused(String::new());
        assert_eq!(refused.retry_in(1), Duration::from_secs(60));
        assert_eq!(refused.retry_in(3), Duration::from_secs(240));
        assert_eq!(refused.retry_in(99), Duration::from_secs(3600));
        let limited = Failure::RateLimited(String::new());
        assert_eq!(limited.retry_in(1), Duration::from_secs(3600));
    }

    #[test]
    fn the_challenge_answer_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let pem = challenge_certificate("calls.example.com", &digest).unwrap();
        let (_, leaf) = key_and_chain(pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let extension = parsed
            .extensions()
            .iter()
            .find(|ext| ext.oid == oid)
            .expect("acmeIdentifier");
        assert!(extension.critical);
        // An OCTET STRING of the 32 bytes.
        assert_eq!(&extension.value[..2], &[0x04, 32]);
        assert_eq!(&extension.value[2..], &digest);
        assert_eq!(names_of_leaf(&leaf), vec!["calls.example.com".to_owned()]);
    }

    fn names_of_leaf(leaf: &CertificateDer<'_>) -> Vec<String> {
        Served::of(leaf, String::new(), false).names
    }

    #[test]
    fn the_cache_is_private_and_written_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("acme");
        let cache = Cache::open(&root, "https://ca.example:14000/dir").unwrap();
        // The directory's host, then 8 hex digits of its URL's SHA-256.
        let folder = cache
            .folder
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let (host, hash) = folder.split_once('-').unwrap();
        assert_eq!(host, "ca.example");
        assert_eq!(hash.len(), 8);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{folder}");
        for folder in [&root, &cache.folder, &cache.challenges] {
            let mode = std::fs::metadata(folder).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", folder.display());
        }
        let other = Cache::open(&root, "https://ca.example:14000/other").unwrap();
        assert_ne!(other.folder, cache.folder);

        assert!(cache.certificate().is_none());
        let (cert, key) =
            super::super::generate(&["calls.example.com".into()], SystemTime::now()).unwrap();
        cache.save_certificate(&format!("{key}{cert}")).unwrap();
        let file = cache.folder.join("certificate.pem");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let read = cache.certificate().unwrap();
        assert_eq!(read.served.names, vec!["calls.example.com".to_owned()]);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&cache.folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(
            !names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
        // A half-written or foreign file is ignored, not served.
        std::fs::write(&file, "-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
        assert!(cache.certificate().is_none());
    }

    #[tokio::test]
    async fn one_instance_at_a_time_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = Cache::open(dir.path(), "https://ca.example/dir").unwrap();
        let second = Cache::open(dir.path(), "https://ca.example/dir").unwrap();
        let held = first.lock().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(1200), second.lock()).await;
        assert!(
            waiting.is_err(),
            "the second got the lock while the first held it"
        );
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), second.lock()).await;
        assert!(got.is_ok_and(|lock| lock.is_ok()));
    }
}
