//! The site password: an Argon2id hash made by `dialtone hash-password`, and checks against it
//! with Argon2's own verification (constant-time on the digest). Both are slow on purpose
//! (tens of milliseconds, 19 MiB), so the server runs checks on the blocking pool, a few at a
//! time (see [`super::Access`]).

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

/// A PHC string for `password` with Argon2id's recommended parameters and a random salt.
pub fn hash(password: &str) -> Result<String, String> {
    if password.is_empty() {
        return Err("the password is empty: type one".into());
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| format!("cannot hash the password: {err}"))
}

/// Whether `password` is the one `hash` was made from. A hash that does not parse (which the
/// config check rules out) matches nothing.
pub fn verify(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_accepts_its_password_only() {
        let made = hash("correct horse").unwrap();
        assert!(
            made.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{made}"
        );
        assert!(verify(&made, "correct horse"));
        assert!(!verify(&made, "correct horse "));
        assert!(!verify(&made, "Correct horse"));
        assert!(!verify(&made, ""));
        assert!(!verify("not a hash", "correct horse"));
        // A fresh salt each time: two hashes of one password differ, and both verify.
        let again = hash("correct horse").unwrap();
        assert_ne!(made, again);
        assert!(verify(&again, "correct horse"));
        assert!(hash("").is_err());
    }

    #[test]
    fn verifies_a_hash_made_elsewhere() {
        // Made by the reference implementation (argon2-cffi, Python):
        // PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash("hunter2")
        let reference = "$argon2id$v=19$m=19456,t=2,p=1$iiMSBbJTXlnvjz1eQQulCw$TEHQuvofNLEJ/w31vbVg9UtCql8+sHBJKLBChTYVNu8";
        assert!(verify(reference, "hunter2"));
        assert!(!verify(reference, "hunter3"));
    }
}
