//! `[access]`: who may log in. Checked as a table at load time, so a password in place of its
//! hash, a token mode without a key, or a short secret stops dialtone with the table's line.

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::values::Secret;

/// The shortest `[access] secret`: an HS256 key anyone holding one invite link could try to
/// guess offline, so it must be long and random.
pub const MIN_SECRET_BYTES: usize = 32;

/// How people prove they may log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Anyone who reaches the page may log in under any free name.
    #[default]
    Open,
    /// One site password, checked against an Argon2 hash.
    Password,
    /// A signed JWT whose claim names the user: invite links, or tokens from the operator's app.
    Token,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Open => "open",
            AccessMode::Password => "password",
            AccessMode::Token => "token",
        }
    }
}

/// `[access]`, the same on every instance of a cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    pub mode: AccessMode,
    /// Password mode: a PHC string made by `dialtone hash-password`.
    pub password_hash: Option<String>,
    /// Token mode: the HS256 key (also what `dialtone invite` signs with).
    pub secret: Option<Secret>,
    /// Token mode: PEM public keys (ES256, ES384, RS256 or EdDSA), relative to the config file.
    pub public_keys: Vec<PathBuf>,
    /// Token mode: an `https://` JWKS, fetched at start and refreshed.
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again, in seconds.
    pub jwks_refresh_secs: NonZeroU64,
    /// Token mode: the `iss` every token must carry, when set.
    pub issuer: Option<String>,
    /// Token mode: an `aud` every token must include, when set.
    pub audience: Option<String>,
    /// Token mode: the claim that holds the user's name.
    pub name_claim: String,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            mode: AccessMode::Open,
            password_hash: None,
            secret: None,
            public_keys: Vec::new(),
            jwks_url: None,
            jwks_refresh_secs: NonZeroU64::new(3600).expect("not zero"),
            issuer: None,
            audience: None,
            name_claim: "sub".into(),
        }
    }
}

impl AccessConfig {
    /// The table as read, with the rules across its keys checked, so an error names its line.
    pub(super) fn checked<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<AccessConfig, D::Error> {
        let access = AccessConfig::deserialize(d)?;
        access.check().map_err(serde::de::Error::custom)?;
        Ok(access)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(hash) = &self.password_hash {
            check_password_hash(hash)?;
        }
        if let Some(secret) = &self.secret
            && secret.0.len() < MIN_SECRET_BYTES
        {
            return Err(format!(
                "[access] secret is {} bytes: use at least {MIN_SECRET_BYTES} random ones, \
                 e.g. the output of `openssl rand -base64 32`",
                secret.0.len()
            ));
        }
        if let Some(url) = &self.jwks_url
            && !url.starts_with("https://")
        {
            return Err(format!(
                "[access] jwks_url must be an https:// address, not {url:?}: the keys that \
                 decide who logs in must not travel in the clear"
            ));
        }
        if self.name_claim.is_empty() {
            return Err("[access] name_claim must name a claim, such as \"sub\"".into());
        }
        match self.mode {
            AccessMode::Open => Ok(()),
            AccessMode::Password if self.password_hash.is_none() => Err(
                "[access] mode = \"password\" needs password_hash: make one with \
                 `dialtone hash-password`"
                    .into(),
            ),
            AccessMode::Password => Ok(()),
            AccessMode::Token
                if self.secret.is_none()
                    && self.public_keys.is_empty()
                    && self.jwks_url.is_none() =>
            {
                Err(
                    "[access] mode = \"token\" needs at least one of secret, public_keys or \
                     jwks_url to check tokens with"
                        .into(),
                )
            }
            AccessMode::Token => Ok(()),
        }
    }

    /// Makes `public_keys` relative to the config file's folder.
    pub(super) fn resolve(&mut self, base: &Path) {
        for key in &mut self.public_keys {
            if key.is_relative() {
                *key = base.join(&*key);
            }
        }
    }
}

/// A hash is a PHC string of an Argon2 variant; anything else (above all, the password itself)
/// is refused without repeating it.
fn check_password_hash(hash: &str) -> Result<(), String> {
    let refuse = || {
        "[access] password_hash is not an Argon2 hash: put the output of `dialtone \
         hash-password` there, never the password itself"
            .to_owned()
    };
    if !hash.starts_with("$argon2") {
        return Err(refuse());
    }
    let parsed = argon2::PasswordHash::new(hash).map_err(|_| refuse())?;
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err(refuse());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AccessConfig, String> {
        #[derive(Deserialize)]
        struct Wrap {
            #[serde(deserialize_with = "AccessConfig::checked")]
            access: AccessConfig,
        }
        toml::from_str::<Wrap>(text)
            .map(|w| w.access)
            .map_err(|e| e.to_string())
    }

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

    #[test]
    fn each_mode_needs_its_keys() {
        assert_eq!(parse("[access]\n").unwrap().mode, AccessMode::Open);
        let err = parse("[access]\nmode = \"password\"\n").unwrap_err();
        assert!(
            err.contains("needs password_hash") && err.contains("line 1"),
            "{err}"
        );
        let ok = parse(&format!(
            "[access]\nmode = \"password\"\npassword_hash = \"{HASH}\"\n"
        ));
        assert_eq!(ok.unwrap().mode, AccessMode::Password);
        let err = parse("[access]\nmode = \"token\"\n").unwrap_err();
        assert!(err.contains("at least one of secret"), "{err}");
        let secret = "s".repeat(32);
        let ok = parse(&format!(
            "[access]\nmode = \"token\"\nsecret = \"{secret}\"\n"
        ))
        .unwrap();
        assert_eq!(
            (ok.mode, ok.name_claim.as_str()),
            (AccessMode::Token, "sub")
        );
        assert!(parse("[access]\nmode = \"token\"\npublic_keys = [\"k.pem\"]\n").is_ok());
        assert!(parse("[access]\nmode = \"closed\"\n").is_err());
    }

    #[test]
    fn a_password_in_place_of_its_hash_is_refused_without_being_repeated() {
        for wrong in [
            "hunter2",
            "$argon2id$nonsense",
            "$2b$12$abcdefghijklmnopqrstuv",
            // The parameters and a salt, but no hash.
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA",
        ] {
            let err = parse(&format!(
                "[access]\nmode = \"password\"\npassword_hash = \"{wrong}\"\n"
            ))
            .unwrap_err();
            assert!(err.contains("never the password itself"), "{err}");
            let shown = err.lines().last().unwrap_or_default();
            assert!(!shown.contains(wrong), "{err}");
        }
    }

    #[test]
    fn short_secrets_plain_jwks_urls_and_empty_claims_are_refused() {
        let err = parse("[access]\nmode = \"token\"\nsecret = \"short\"\n").unwrap_err();
        assert!(
            err.contains("is 5 bytes") && err.contains("openssl rand"),
            "{err}"
        );
        let secret = "s".repeat(31);
        assert!(parse(&format!("[access]\nsecret = \"{secret}\"\n")).is_err());
        let err = parse("[access]\nmode = \"token\"\njwks_url = \"http://a/jwks\"\n").unwrap_err();
        assert!(err.contains("https://"), "{err}");
        assert!(parse("[access]\nmode = \"token\"\njwks_url = \"https://a/jwks\"\n").is_ok());
        let err = parse("[access]\nname_claim = \"\"\n").unwrap_err();
        assert!(err.contains("name_claim"), "{err}");
    }

    #[test]
    fn public_keys_resolve_against_the_config_folder() {
        let mut access =
            parse("[access]\npublic_keys = [\"keys/a.pem\", \"/etc/b.pem\"]\n").unwrap();
        access.resolve(Path::new("/srv/dialtone"));
        assert_eq!(
            access.public_keys,
            [
                PathBuf::from("/srv/dialtone/keys/a.pem"),
                PathBuf::from("/etc/b.pem")
            ]
        );
    }
}
