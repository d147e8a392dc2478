//! Token mode: JWTs verified by jsonwebtoken, never by hand. Each key carries the one algorithm
//! it accepts (an HS256 secret only HS256, a P-256 key only ES256, …), so `alg: none`, a public
//! key used as an HMAC secret, or an algorithm the key was not made for all fail. `exp` is
//! required and `nbf` honoured, with 60 s of leeway; `iss` and `aud` when configured.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::config::AccessConfig;

/// The longest token looked at; anything longer fails before it is parsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// One key that may have signed a token, with the one algorithm it accepts.
#[derive(Clone)]
pub struct Key {
    /// A JWKS key's id; static keys (the secret, PEM files) have none.
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?}, kid {:?})", self.algorithm, self.kid)
    }
}

/// Why a token was refused. Only the person's sentence and a metrics label leave the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT, or is over 8 KiB")]
    Malformed,
    #[error("no configured key has the token's kid and algorithm")]
    UnknownKey,
    #[error("the signature does not match any key")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's iss or aud is not the configured one")]
    WrongIssuerOrAudience,
    #[error("the token lacks a required claim ({0})")]
    MissingClaim(String),
    #[error("the token's name claim is missing, not a string, or not a valid name")]
    NoName,
}

/// What checks tokens: the claims rules and the static keys (the JWKS keys come separately).
#[derive(Debug)]
pub struct Rules {
    issuer: Option<String>,
    audience: Option<String>,
    name_claim: String,
}

impl Rules {
    pub fn from_config(config: &AccessConfig) -> Rules {
        Rules {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            name_claim: config.name_claim.clone(),
        }
    }

    pub fn name_claim(&self) -> &str {
        &self.name_claim
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience, a token's `aud` is not dialtone's business.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Checks `token` against `keys`: the candidates are the keys with the token's `kid`, or,
    /// when no key has it (or the token names none), the keys without one; then only those
    /// made for the token's `alg`. Returns the user's name from the configured claim.
    pub fn verify<'k, I>(&self, token: &str, keys: I) -> Result<String, TokenError>
    where
        I: IntoIterator<Item = &'k Key>,
        I::IntoIter: Clone,
    {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let candidates: Vec<&Key> = candidates(keys.into_iter(), header.kid.as_deref())
            .filter(|key| key.algorithm == header.alg)
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        let mut last = TokenError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &key.key,
                &self.validation(key.algorithm),
            ) {
                Ok(data) => return self.name_in(&data.claims),
                Err(err) => {
                    last = classify(err.kind());
                    // Only a signature that did not match this key lets another key try;
                    // past the signature, the claims are what they are.
                    if last != TokenError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn name_in(&self, claims: &Map<String, Value>) -> Result<String, TokenError> {
        let name = claims
            .get(&self.name_claim)
            .and_then(Value::as_str)
            .ok_or(TokenError::NoName)?;
        crate::signaling::protocol::validate_name(name).map_err(|_| TokenError::NoName)?;
        Ok(name.to_owned())
    }

    /// An invite: an HS256 token for `name`, valid for `ttl_secs` from `now_secs`, with the
    /// configured `iss` and `aud` so this server accepts it.
    pub fn invite(
        &self,
        secret: &[u8],
        name: &str,
        now_secs: u64,
        ttl_secs: u64,
    ) -> Result<String, String> {
        let mut claims = Map::new();
        claims.insert(self.name_claim.clone(), Value::from(name));
        claims.insert("iat".into(), Value::from(now_secs));
        claims.insert("exp".into(), Value::from(now_secs.saturating_add(ttl_secs)));
        if let Some(issuer) = &self.issuer {
            claims.insert("iss".into(), Value::from(issuer.as_str()));
        }
        if let Some(audience) = &self.audience {
            claims.insert("aud".into(), Value::from(audience.as_str()));
        }
        let key =
            EncodingKey::from_secret(secret).map_err(|err| format!("unusable secret: {err}"))?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
            .map_err(|err| format!("cannot sign the invite: {err}"))
    }
}

fn candidates<'k>(
    keys: impl Iterator<Item = &'k Key> + Clone,
    kid: Option<&str>,
) -> impl Iterator<Item = &'k Key> {
    let named = kid.is_some_and(|kid| keys.clone().any(|k| k.kid.as_deref() == Some(kid)));
    keys.filter(move |key| match (kid, named) {
        (Some(kid), true) => key.kid.as_deref() == Some(kid),
        (Some(_), false) => key.kid.is_none(),
        (None, _) => true,
    })
}

fn classify(kind: &jsonwebtoken::errors::ErrorKind) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as E;
    match kind {
        E::InvalidSignature | E::InvalidAlgorithm | E::InvalidKeyFormat => TokenError::BadSignature,
        E::ExpiredSignature => TokenError::Expired,
        E::ImmatureSignature => TokenError::NotYetValid,
        E::InvalidIssuer | E::InvalidAudience | E::InvalidSubject => {
            TokenError::WrongIssuerOrAudience
        }
        E::MissingRequiredClaim(claim) | E::InvalidClaimFormat(claim) => {
            TokenError::MissingClaim(claim.clone())
        }
        _ => TokenError::Malformed,
    }
}

/// The HS256 key of `[access] secret`.
pub fn secret_key(secret: &[u8]) -> Result<Key, String> {
    Ok(Key {
        kid: None,
        algorithm: Algorithm::HS256,
        key: DecodingKey::from_secret(secret).map_err(|err| format!("unusable secret: {err}"))?,
    })
}

/// A PEM public key file: its type (RSA, P-256, P-384 or Ed25519) decides its one algorithm.
pub fn pem_key(path: &Path) -> Result<Key, String> {
    let shown = path.display();
    let text = std::fs::read(path)
        .map_err(|err| format!("cannot read [access] public_keys entry {shown}: {err}"))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).map_err(|_| {
        format!("[access] public_keys entry {shown} is not a PEM file (-----BEGIN PUBLIC KEY-----)")
    })?;
    let wrong = |what: &str| {
        format!(
            "[access] public_keys entry {shown} holds {what}: give dialtone the public key \
             alone, e.g. `openssl pkey -in key.pem -pubout`"
        )
    };
    let (algorithm, key) = match pem.label.as_str() {
        "RSA PUBLIC KEY" => (Algorithm::RS256, DecodingKey::from_rsa_pem(&text)),
        "PUBLIC KEY" => {
            let (_, spki) = SubjectPublicKeyInfo::from_der(&pem.contents)
                .map_err(|_| format!("[access] public_keys entry {shown}: unreadable key"))?;
            let oid = &spki.algorithm.algorithm;
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            if *oid == OID_PKCS1_RSAENCRYPTION {
                (Algorithm::RS256, DecodingKey::from_rsa_pem(&text))
            } else if *oid == OID_SIG_ED25519 {
                (Algorithm::EdDSA, DecodingKey::from_ed_pem(&text))
            } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_EC_P256) {
                (Algorithm::ES256, DecodingKey::from_ec_pem(&text))
            } else if curve == Some(OID_NIST_EC_P384) {
                // Only an EC key names a curve among its parameters.
                (Algorithm::ES384, DecodingKey::from_ec_pem(&text))
            } else {
                return Err(format!(
                    "[access] public_keys entry {shown} is a key type dialtone does not take: \
                     use an RSA (RS256), P-256 (ES256), P-384 (ES384) or Ed25519 (EdDSA) key"
                ));
            }
        }
        label if label.contains("PRIVATE KEY") => return Err(wrong("a private key")),
        "CERTIFICATE" => return Err(wrong("a certificate")),
        other => return Err(wrong(&format!("a {other}"))),
    };
    let key = key.map_err(|err| format!("[access] public_keys entry {shown}: {err}"))?;
    Ok(Key {
        kid: None,
        algorithm,
        key,
    })
}

/// A key from a JWKS, or why it is left out: encryption keys, symmetric keys (a published
/// HMAC key would let anyone sign), and algorithms the key type cannot have.
pub fn jwk_key(jwk: &Jwk) -> Result<Key, String> {
    let kid = jwk.common.key_id.clone();
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(format!("key {kid:?} is for encryption (use: enc)"));
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err(format!("key {kid:?} is on a curve dialtone does not take")),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "key {kid:?} is a symmetric (oct) key, which must never be published: it is \
                 ignored"
            ));
        }
        _ => return Err(format!("key {kid:?} is of a type dialtone does not take")),
    };
    let algorithm = match jwk.common.key_algorithm {
        None => by_type,
        Some(stated) => {
            let algorithm = signing_algorithm(stated).ok_or_else(|| {
                format!("key {kid:?} names {stated:?}, not a public-key signing algorithm")
            })?;
            let fits = match by_type {
                Algorithm::RS256 => matches!(
                    algorithm,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                ),
                other => algorithm == other,
            };
            if !fits {
                return Err(format!(
                    "key {kid:?} names {stated:?}, which its type cannot do"
                ));
            }
            algorithm
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|err| format!("key {kid:?}: {err}"))?;
    Ok(Key {
        kid,
        algorithm,
        key,
    })
}

fn signing_algorithm(stated: KeyAlgorithm) -> Option<Algorithm> {
    Some(match stated {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use proptest::prelude::*;

    /// One key of each kind the server takes.
    fn keys() -> Vec<Key> {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = vec![secret_key(b"a unit test secret of 32 bytes or more").unwrap()];
        for algorithm in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let pair = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let path = dir.path().join("key.pem");
            std::fs::write(&path, pair.public_key_pem()).unwrap();
            keys.push(pem_key(&path).unwrap());
        }
        let rsa = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rsa-pub.pem");
        keys.push(pem_key(&rsa).unwrap());
        keys
    }

    fn rules() -> Rules {
        Rules::from_config(&AccessConfig::default())
    }

    #[test]
    fn each_pem_key_is_pinned_to_the_one_algorithm_its_type_makes() {
        let algorithms: Vec<Algorithm> = keys().iter().map(|key| key.algorithm).collect();
        assert_eq!(
            algorithms,
            [
                Algorithm::HS256,
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
                Algorithm::RS256
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private.pem");
        let pair = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        let err = pem_key(&private).unwrap_err();
        assert!(
            err.contains("a private key") && err.contains("-pubout"),
            "{err}"
        );
        std::fs::write(
            &private,
            pair.public_key_pem().replace("PUBLIC KEY", "CERTIFICATE"),
        )
        .unwrap();
        assert!(pem_key(&private).unwrap_err().contains("a certificate"));
        std::fs::write(
            &private,
            pair.public_key_pem().replace("PUBLIC KEY", "X509 CRL"),
        )
        .unwrap();
        assert!(pem_key(&private).unwrap_err().contains("holds a X509 CRL"));
        std::fs::write(&private, "not pem").unwrap();
        assert!(pem_key(&private).unwrap_err().contains("is not a PEM file"));
        assert!(
            pem_key(&dir.path().join("missing.pem"))
                .unwrap_err()
                .contains("cannot read")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever a stranger sends as a token is refused, and nothing panics.
        #[test]
        fn any_text_is_refused_without_a_panic(text in ".{0,300}") {
            prop_assert!(rules().verify(&text, &keys_once()).is_err());
        }

        /// Well-formed JWTs with every header algorithm (and some that do not exist), any
        /// claims, and random signatures: refused, without a panic.
        #[test]
        fn forged_tokens_are_refused_without_a_panic(
            alg in prop::sample::select(vec![
                "HS256", "HS384", "ES256", "ES384", "RS256", "PS256", "EdDSA", "none", "None", "",
            ]),
            kid in prop::option::of("[a-z]{0,3}"),
            claims in prop::sample::select(vec![
                r#"{"sub":"bob","exp":99999999999}"#,
                r#"{"sub":"bob","exp":"never"}"#,
                r#"{"sub":"bob","exp":99999999999,"nbf":"x"}"#,
                r#"{"exp":1e308}"#,
                r#"[]"#,
                r#"null"#,
                "{",
            ]),
            signature in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut header = serde_json::json!({"alg": alg, "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = kid.into();
            }
            let token = format!(
                "{}.{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims),
                B64.encode(&signature)
            );
            prop_assert!(rules().verify(&token, &keys_once()).is_err());
        }
    }

    /// The keys, made once for all the cases.
    fn keys_once() -> Vec<Key> {
        static KEYS: std::sync::OnceLock<Vec<Key>> = std::sync::OnceLock::new();
        KEYS.get_or_init(keys).clone()
    }

    /// A JWK of `key` for `algorithm`, as an identity provider would publish it, under `kid`.
    fn jwk(key: &EncodingKey, algorithm: Algorithm, kid: &str) -> serde_json::Value {
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(key, algorithm).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk
    }

    fn from_json(value: serde_json::Value) -> Result<Key, String> {
        jwk_key(&serde_json::from_value(value).unwrap())
    }

    #[test]
    fn jwks_keys_take_the_algorithm_their_type_allows_and_nothing_else() {
        let rsa_pem =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rsa-key.pem"))
                .unwrap();
        let rsa = EncodingKey::from_rsa_pem(&rsa_pem).unwrap();
        let pair = |alg| rcgen::KeyPair::generate_for(alg).unwrap().serialize_pem();
        let p256 =
            EncodingKey::from_ec_pem(pair(&rcgen::PKCS_ECDSA_P256_SHA256).as_bytes()).unwrap();
        let p384 =
            EncodingKey::from_ec_pem(pair(&rcgen::PKCS_ECDSA_P384_SHA384).as_bytes()).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "e",
            "x": B64.encode(ed.public_key_raw())});
        // An RSA key may state any RSA signature algorithm; without `alg`, RS256.
        for algorithm in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let key = from_json(jwk(&rsa, algorithm, "r")).unwrap();
            assert_eq!((key.algorithm, key.kid.as_deref()), (algorithm, Some("r")));
        }
        let mut unstated = jwk(&rsa, Algorithm::RS256, "r");
        unstated.as_object_mut().unwrap().remove("alg");
        assert_eq!(from_json(unstated).unwrap().algorithm, Algorithm::RS256);
        assert_eq!(
            from_json(jwk(&p256, Algorithm::ES256, "a"))
                .unwrap()
                .algorithm,
            Algorithm::ES256
        );
        assert_eq!(
            from_json(jwk(&p384, Algorithm::ES384, "b"))
                .unwrap()
                .algorithm,
            Algorithm::ES384
        );
        let mut p384_unstated = jwk(&p384, Algorithm::ES384, "b");
        p384_unstated.as_object_mut().unwrap().remove("alg");
        assert_eq!(
            from_json(p384_unstated).unwrap().algorithm,
            Algorithm::ES384
        );
        assert_eq!(from_json(ed.clone()).unwrap().algorithm, Algorithm::EdDSA);
        let mut ed_stated = ed;
        ed_stated["alg"] = "EdDSA".into();
        assert_eq!(from_json(ed_stated).unwrap().algorithm, Algorithm::EdDSA);
        // A key that states an algorithm its type cannot do, or no signing algorithm at all.
        let mut confused = jwk(&p256, Algorithm::ES256, "a");
        confused["alg"] = "ES384".into();
        assert!(
            from_json(confused.clone())
                .unwrap_err()
                .contains("its type cannot do")
        );
        confused["alg"] = "HS256".into();
        assert!(
            from_json(confused.clone())
                .unwrap_err()
                .contains("not a public-key signing algorithm")
        );
        confused["alg"] = "RSA-OAEP".into();
        assert!(
            from_json(confused)
                .unwrap_err()
                .contains("not a public-key signing algorithm")
        );
        let mut rsa_as_es = jwk(&rsa, Algorithm::RS256, "r");
        rsa_as_es["alg"] = "ES256".into();
        assert!(from_json(rsa_as_es).is_err());
        // Encryption keys, symmetric keys and X25519 are left out, each with its reason.
        let mut encryption = jwk(&p256, Algorithm::ES256, "a");
        encryption["use"] = "enc".into();
        assert!(
            from_json(encryption)
                .unwrap_err()
                .contains("for encryption")
        );
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"});
        assert!(from_json(oct).unwrap_err().contains("symmetric"));
        let x25519 = serde_json::json!({"kty": "OKP", "crv": "X25519", "kid": "x",
            "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"});
        assert!(
            from_json(x25519)
                .unwrap_err()
                .contains("type dialtone does not take")
        );
    }

    #[test]
    fn several_keys_of_one_algorithm_are_each_tried_but_only_past_a_signature_that_fails() {
        let pair = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (first, second) = (pair(), pair());
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Key> = [&first, &second]
            .iter()
            .enumerate()
            .map(|(i, pair)| {
                let path = dir.path().join(format!("{i}.pem"));
                std::fs::write(&path, pair.public_key_pem()).unwrap();
                pem_key(&path).unwrap()
            })
            .collect();
        let sign = |pair: &rcgen::KeyPair, claims: serde_json::Value| {
            let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
        };
        let now = jsonwebtoken::get_current_timestamp();
        let fresh = serde_json::json!({"sub": "bob", "exp": now + 600});
        assert_eq!(
            rules().verify(&sign(&second, fresh), &keys),
            Ok("bob".into())
        );
        // Signed by the first key but expired: the first key's verdict stands.
        let expired = serde_json::json!({"sub": "bob", "exp": now - 600});
        assert_eq!(
            rules().verify(&sign(&first, expired), &keys),
            Err(TokenError::Expired)
        );
        let wrong_issuer = serde_json::json!({"sub": "bob", "exp": now + 600, "iss": "x"});
        let strict = Rules::from_config(&AccessConfig {
            issuer: Some("https://me.example".into()),
            ..AccessConfig::default()
        });
        assert_eq!(
            strict.verify(&sign(&first, wrong_issuer), &keys),
            Err(TokenError::WrongIssuerOrAudience)
        );
    }

    #[test]
    fn a_kid_no_key_has_falls_back_to_the_keys_without_one() {
        // An operator's app may put a kid in tokens it signs with the shared secret.
        let secret = b"a unit test secret of 32 bytes or more";
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("app-1".into());
        let claims =
            serde_json::json!({"sub": "bob", "exp": jsonwebtoken::get_current_timestamp() + 600});
        let token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret).unwrap())
                .unwrap();
        assert_eq!(
            rules().verify(&token, &[secret_key(secret).unwrap()]),
            Ok("bob".into())
        );
    }

    #[test]
    fn a_token_may_be_8_kib_and_not_one_byte_more() {
        let secret = b"a unit test secret of 32 bytes or more";
        let keys = [secret_key(secret).unwrap()];
        let key = EncodingKey::from_secret(secret).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let sized = |length: usize| {
            (0..length)
                .map(|pad| {
                    let claims =
                        serde_json::json!({"sub": "bob", "exp": now + 600, "pad": "x".repeat(pad)});
                    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
                })
                .find(|token| token.len() == length)
                .unwrap()
        };
        // A provider's token with many claims can be several KiB: that is fine.
        assert_eq!(
            rules().verify(&sized(MAX_TOKEN_BYTES), &keys),
            Ok("bob".into())
        );
        assert_eq!(
            rules().verify(&sized(MAX_TOKEN_BYTES + 1), &keys),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn an_invite_verifies_as_its_name_and_carries_the_configured_claims() {
        let config = AccessConfig {
            issuer: Some("https://me.example".into()),
            audience: Some("dialtone".into()),
            ..AccessConfig::default()
        };
        let rules = Rules::from_config(&config);
        let secret = b"a unit test secret of 32 bytes or more";
        let now = jsonwebtoken::get_current_timestamp();
        let token = rules.invite(secret, "Mum", now, 3600).unwrap();
        let key = secret_key(secret).unwrap();
        assert_eq!(
            rules.verify(&token, std::slice::from_ref(&key)),
            Ok("Mum".into())
        );
        // Without the configured iss and aud the same signature is not enough.
        let bare = Rules::from_config(&AccessConfig::default()).invite(secret, "Mum", now, 3600);
        assert!(matches!(
            rules.verify(&bare.unwrap(), std::slice::from_ref(&key)),
            Err(TokenError::MissingClaim(claim)) if claim == "iss" || claim == "aud"
        ));
        // Expired: made an hour and a half ago for an hour.
        let old = rules.invite(secret, "Mum", now - 5400, 3600).unwrap();
        assert_eq!(rules.verify(&old, &[key]), Err(TokenError::Expired));
    }
}
