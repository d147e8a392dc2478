//! TURN credentials: the `<expiry>:<name>` / HMAC-SHA1 scheme of coturn's
//! `--use-auth-secret`, which the `[turn]` table mints for coturn and the built-in relay
//! checks, and the long-term key the turn crate asks for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use turn::auth::AuthHandler;

use super::{Client, State, Transport};

/// The user name in a TURN username `<expiry>:<name>`.
pub(crate) fn user_of(username: &str) -> &str {
    username.split_once(':').map_or(username, |(_, name)| name)
}

/// The `<expiry>:<name>` / HMAC-SHA1 scheme (coturn's `--use-auth-secret`).
pub struct Credentials {
    secret: Vec<u8>,
    pub realm: String,
    ttl_secs: u64,
}

impl Credentials {
    pub fn new(secret: &[u8], realm: &str, ttl_secs: u64) -> Credentials {
        Credentials {
            secret: secret.to_vec(),
            realm: realm.to_owned(),
            ttl_secs,
        }
    }

    /// A username and password for `name`, valid for new allocations for the TTL.
    pub fn mint(&self, name: &str, now: SystemTime) -> (String, String) {
        let expiry = unix(now).saturating_add(self.ttl_secs);
        let username = format!("{expiry}:{name}");
        let password = self.password(&username);
        (username, password)
    }

    pub fn password(&self, username: &str) -> String {
        use base64::Engine;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.secret);
        let tag = ring::hmac::sign(&key, username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }

    /// When `username` stops opening allocations, or `None` when it is not `<expiry>:<name>`.
    pub fn expiry(username: &str) -> Option<u64> {
        let (expiry, name) = username.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        expiry.parse().ok()
    }
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The crate's credential callback: the long-term key for a username, or an error. The guard
/// has already checked the message's integrity with the same rule, so this only decides for
/// requests it let through. The crate names only the client's address: `local` and
/// `transport` say which listener (or stream) the request came in on.
pub(super) struct Auth {
    pub(super) state: Arc<State>,
    pub(super) local: SocketAddr,
    pub(super) transport: Transport,
}

impl AuthHandler for Auth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let client = Client {
            addr: src_addr,
            local: self.local,
            transport: self.transport,
        };
        key_for(&self.state, username, realm, client, SystemTime::now())
            .ok_or_else(|| turn::Error::Other(format!("refused credential {username:?}")))
    }
}

/// The long-term key (MD5 of `username:realm:password`) when `username` may be used from
/// `client` now: unexpired, or the one its open allocation was made with (a call in progress
/// is never cut because its credential expired).
pub(crate) fn key_for(
    state: &State,
    username: &str,
    realm: &str,
    client: Client,
    now: SystemTime,
) -> Option<Vec<u8>> {
    let credentials = &state.credentials;
    if realm != credentials.realm {
        return None;
    }
    let expiry = Credentials::expiry(username)?;
    if expiry < unix(now) && !state.has_open(client, username) {
        return None;
    }
    let password = credentials.password(username);
    Some(turn::auth::generate_auth_key(
        username,
        &credentials.realm,
        &password,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_coturns_rest_scheme() {
        let credentials = Credentials::new(b"north-wind", "dialtone", 600);
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let (username, password) = credentials.mint("alice", now);
        assert_eq!(username, "1000600:alice");
        // base64(HMAC-SHA1("north-wind", "1000600:alice")), computed independently with
        // `printf %s 1000600:alice | openssl dgst -sha1 -hmac north-wind -binary | base64`.
        assert_eq!(password, "HVE/rVrHrgPDcpe61KKBP3dCkXs=");
        assert_eq!(Credentials::expiry(&username), Some(1_000_600));
        assert_eq!(Credentials::expiry("alice"), None);
        assert_eq!(Credentials::expiry("12:"), None);
        assert_eq!(Credentials::expiry("soon:alice"), None);
    }
}
