//! Who may log in (`[access]`): anyone (`open`), whoever knows the site password
//! (`password`), or whoever holds a token signed with a configured key (`token`: invite links
//! from `dialtone invite`, or tokens minted by the operator's own site).
//!
//! - [`password`]: Argon2id hashes, made and checked;
//! - [`token`]: JWT verification and invites;
//! - [`jwks`]: keys fetched from the operator's identity provider;
//! - [`failures`]: failed logins per client address.
//!
//! Only the first login of a socket is checked here. A reconnect token (issued to a login
//! that passed) takes a name back without a new check, even after the access token expired:
//! expiry gates the first connection only.

pub mod failures;
pub mod jwks;
pub mod password;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::config::{AccessConfig, AccessMode};
use crate::signaling::protocol::same_name;
use failures::Failures;
use jwks::Jwks;
use token::{Key, Rules, TokenError};

/// What a login message offers as proof.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub access_token: Option<&'a str>,
}

/// The wire code of a refusal: nothing came (`auth-required`), or what came was wrong
/// (`auth-failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Required,
    Failed,
}

/// Why, for `/metrics` (`dialtone_auth_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Password,
    Signature,
    Expired,
    Claims,
    RateLimited,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Missing,
        Reason::Password,
        Reason::Signature,
        Reason::Expired,
        Reason::Claims,
        Reason::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Password => "password",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::Claims => "claims",
            Reason::RateLimited => "rate-limited",
        }
    }
}

/// A refused login: the code, the metrics reason, and a sentence that says what a person can
/// do (never which part of a token was wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub code: Code,
    pub reason: Reason,
    pub message: String,
}

impl Denied {
    fn new(code: Code, reason: Reason, message: impl Into<String>) -> Denied {
        Denied {
            code,
            reason,
            message: message.into(),
        }
    }
}

/// How long a login waits for a turn at the password check before it is told to retry.
const CHECK_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The access rules of one server, shared by every session.
#[derive(Debug)]
pub struct Access {
    mode: AccessMode,
    password_hash: Option<Arc<str>>,
    rules: Rules,
    keys: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    failures: Failures,
    /// Argon2 checks running at once: each takes 19 MiB and a core for tens of milliseconds.
    checks: Arc<Semaphore>,
    /// For the banner: where the token keys come from.
    key_sources: Vec<String>,
}

impl Access {
    /// Anyone may log in.
    pub fn open() -> Access {
        Access::with(&AccessConfig::default(), Vec::new(), None)
    }

    /// Loads the keys the config names and fetches the JWKS; an error says what to fix.
    pub async fn start(config: &AccessConfig) -> anyhow::Result<Access> {
        if config.mode != AccessMode::Token {
            return Ok(Access::with(config, Vec::new(), None));
        }
        let mut keys = Vec::new();
        if let Some(secret) = &config.secret {
            keys.push(token::secret_key(secret.0.as_bytes()).map_err(anyhow::Error::msg)?);
        }
        for path in &config.public_keys {
            keys.push(token::pem_key(path).map_err(anyhow::Error::msg)?);
        }
        let jwks = match &config.jwks_url {
            Some(url) => {
                let every = Duration::from_secs(config.jwks_refresh_secs.get());
                Some(Jwks::start(url, every).await.map_err(anyhow::Error::msg)?)
            }
            None => None,
        };
        Ok(Access::with(config, keys, jwks))
    }

    fn with(config: &AccessConfig, keys: Vec<Key>, jwks: Option<Arc<Jwks>>) -> Access {
        let mut key_sources = Vec::new();
        if config.secret.is_some() {
            key_sources.push("the HS256 secret".to_owned());
        }
        match config.public_keys.len() {
            0 => {}
            1 => key_sources.push("1 public key".to_owned()),
            n => key_sources.push(format!("{n} public keys")),
        }
        if let Some(url) = &config.jwks_url {
            key_sources.push(format!("the JWKS at {url}"));
        }
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Access {
            mode: config.mode,
            password_hash: config.password_hash.as_deref().map(Arc::from),
            rules: Rules::from_config(config),
            keys,
            jwks,
            failures: Failures::default(),
            checks: Arc::new(Semaphore::new(parallel)),
            key_sources,
        }
    }

    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    /// The claim that names the user in token mode (the page reads it from its token).
    pub fn name_claim(&self) -> &str {
        self.rules.name_claim()
    }

    /// One line for the start-up banner.
    pub fn describe(&self, public: bool) -> String {
        match self.mode {
            AccessMode::Open if public => "open: anyone who can reach this address can log in \
                 and call; set [access] to require a password or invite links"
                .to_owned(),
            AccessMode::Open => "open: anyone who can reach this address can log in".to_owned(),
            AccessMode::Password => "password: the site password ([access] password_hash)".into(),
            AccessMode::Token => format!(
                "token: invite links and signed tokens, checked with {}",
                self.key_sources.join(", ")
            ),
        }
    }

    /// Decides a first login: the name to log in as, or why not.
    pub async fn admit(&self, offered: Credentials<'_>, client: IpAddr) -> Result<String, Denied> {
        match self.mode {
            AccessMode::Open => Ok(offered.username.unwrap_or_default().to_owned()),
            AccessMode::Password => self.admit_password(offered, client).await,
            AccessMode::Token => self.admit_token(offered, client).await,
        }
    }

    fn rate_limited(&self, client: IpAddr) -> Result<(), Denied> {
        if self.failures.blocked(client, Instant::now()) {
            return Err(Denied::new(
                Code::Failed,
                Reason::RateLimited,
                "too many failed logins from your address: wait a minute, then try again",
            ));
        }
        Ok(())
    }

    /// Counts a failure against `client` and returns the refusal.
    fn failed(&self, client: IpAddr, denied: Denied) -> Denied {
        self.failures.failed(client, Instant::now());
        denied
    }

    async fn admit_password(
        &self,
        offered: Credentials<'_>,
        client: IpAddr,
    ) -> Result<String, Denied> {
        let Some(password) = offered.password else {
            return Err(Denied::new(
                Code::Required,
                Reason::Missing,
                "this server asks for its password: type it with your name",
            ));
        };
        self.rate_limited(client)?;
        let busy = || {
            Denied::new(
                Code::Failed,
                Reason::RateLimited,
                "the server is busy checking other logins: try again in a moment",
            )
        };
        let permit = tokio::time::timeout(CHECK_QUEUE_TIMEOUT, self.checks.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        let hash = self.password_hash.clone().unwrap_or_else(|| Arc::from(""));
        let password = password.to_owned();
        let right = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            password::verify(&hash, &password)
        })
        .await
        .unwrap_or(false);
        if !right {
            return Err(self.failed(
                client,
                Denied::new(
                    Code::Failed,
                    Reason::Password,
                    "wrong password: check it and try again",
                ),
            ));
        }
        Ok(offered.username.unwrap_or_default().to_owned())
    }

    async fn admit_token(
        &self,
        offered: Credentials<'_>,
        client: IpAddr,
    ) -> Result<String, Denied> {
        let Some(access_token) = offered.access_token else {
            return Err(Denied::new(
                Code::Required,
                Reason::Missing,
                "this server needs an invite link: ask its owner for one",
            ));
        };
        self.rate_limited(client)?;
        let name = match self.verify(access_token).await {
            Ok(name) => name,
            Err(err) => return Err(self.failed(client, token_denial(&err))),
        };
        if let Some(username) = offered.username
            && !same_name(username, &name)
        {
            return Err(self.failed(
                client,
                Denied::new(
                    Code::Failed,
                    Reason::Claims,
                    format!("this invite link is for {name}: log in as {name}"),
                ),
            ));
        }
        Ok(name)
    }

    /// Verifies against the static keys and the JWKS; a `kid` nobody knows makes the JWKS
    /// fetch again (at most once a minute) and the token is tried once more.
    async fn verify(&self, access_token: &str) -> Result<String, TokenError> {
        let attempt = |jwks_keys: &[Key]| {
            self.rules
                .verify(access_token, self.keys.iter().chain(jwks_keys))
        };
        let Some(jwks) = &self.jwks else {
            return attempt(&[]);
        };
        match attempt(&jwks.keys()) {
            Err(TokenError::UnknownKey) if jwks.refresh_soon().await => attempt(&jwks.keys()),
            other => other,
        }
    }

    /// An invite token for `name` (see `dialtone invite`), signed with `secret`.
    pub fn invite(
        config: &AccessConfig,
        name: &str,
        now_secs: u64,
        ttl_secs: u64,
    ) -> Result<String, String> {
        let secret = config.secret.as_ref().ok_or(
            "[access] secret is not set: invite links are signed with it (set it, with mode = \
             \"token\")",
        )?;
        crate::signaling::protocol::validate_name(name)
            .map_err(|why| format!("{name:?} cannot be a user name: {why}"))?;
        Rules::from_config(config).invite(secret.0.as_bytes(), name, now_secs, ttl_secs)
    }
}

/// The sentence for a refused token: what a person can do about it.
fn token_denial(err: &TokenError) -> Denied {
    let (reason, message) = match err {
        TokenError::Expired => (
            Reason::Expired,
            "this invite link has expired: ask for a new one",
        ),
        TokenError::NotYetValid => (
            Reason::Claims,
            "this invite link is not valid yet: check this device's clock, or try again later",
        ),
        TokenError::WrongIssuerOrAudience => (
            Reason::Claims,
            "this invite link was made for another server: ask for a link to this one",
        ),
        TokenError::MissingClaim(_) | TokenError::NoName => (
            Reason::Claims,
            "this invite link is incomplete (no name or no expiry): ask for a new one",
        ),
        TokenError::Malformed | TokenError::UnknownKey | TokenError::BadSignature => (
            Reason::Signature,
            "this invite link is not valid here: check that it was copied whole, or ask for a \
             new one",
        ),
    };
    Denied::new(Code::Failed, reason, message)
}
