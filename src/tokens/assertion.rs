//! `private_key_jwt` client assertions (RFC 7523 §2.2 and §3, OIDC Core §9): the public
//! keys of the clients that use them, loaded with the runtime (so a reload reads them
//! again), and the checks of one assertion. Everything that can be checked without a key
//! is checked first; then the one signature verification. The caller refuses a replayed
//! `jti` through the store afterwards (only a signed assertion may fill the replay memory).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::LEEWAY_SECS;
use super::jws::{Jws, JwsError};
use crate::config::{ClientAuth, Config, JwsAlgorithm};
use crate::issuers::jwks::{self, Found, KeySet};

/// The assertion type of RFC 7523 §2.2.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Longer assertions are refused unread: an RSA-4096 signature and a generous payload fit.
pub const MAX_ASSERTION_BYTES: usize = 4096;

/// Signature algorithms a client assertion may use; the client's key decides among them.
pub const ALGORITHMS: [JwsAlgorithm; 4] =
    [JwsAlgorithm::RS256, JwsAlgorithm::PS256, JwsAlgorithm::ES256, JwsAlgorithm::EdDSA];

/// The public keys of every `private_key_jwt` client of one configuration.
#[derive(Default)]
pub struct ClientKeys {
    by_client: HashMap<String, Arc<ClientKey>>,
}

/// One client's keys.
pub struct ClientKey {
    set: KeySet,
    /// A PEM file holds one key and no `kid`: whatever `kid` an assertion names, that key
    /// verifies it (libraries put a `kid` of their own making in the header).
    single: bool,
}

impl ClientKey {
    /// One key from a PEM public key, as a client's file gives it; for the fuzz targets.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn from_pem(pem: &[u8]) -> Result<ClientKey, String> {
        Ok(ClientKey { set: jwks::from_spki_pem(pem, &ALGORITHMS, &[0; 32])?, single: true })
    }
}

impl ClientKeys {
    /// Read every `private_key_jwt` client's key file. Errors carry the line that names
    /// the file.
    pub fn load(config: &Config) -> Result<ClientKeys, (usize, String)> {
        let mut by_client = HashMap::new();
        for client in config.clients.values() {
            let ClientAuth::PrivateKeyJwt(k) = &client.auth else { continue };
            let fail = |why: String| (k.line, format!("client {:?}: key file {}: {why}", client.id, k.file.display()));
            let bytes = std::fs::read(&k.file).map_err(|e| fail(e.to_string()))?;
            if bytes.len() > 64 * 1024 {
                return Err(fail("larger than 64 KiB".into()));
            }
            let set = if k.jwks {
                let (set, skipped) = jwks::parse(&bytes, &ALGORITHMS, &[0; 32]).map_err(|e| fail(e.to_string()))?;
                for why in skipped {
                    tracing::warn!(client_id = %client.id, file = %k.file.display(), "client key skipped: {why}");
                }
                set
            } else {
                jwks::from_spki_pem(&bytes, &ALGORITHMS, &[0; 32]).map_err(fail)?
            };
            by_client.insert(client.id.clone(), Arc::new(ClientKey { set, single: !k.jwks }));
        }
        Ok(ClientKeys { by_client })
    }

    pub fn get(&self, client_id: &str) -> Option<&Arc<ClientKey>> {
        self.by_client.get(client_id)
    }
}

/// Why an assertion was refused (all `invalid_client` on the wire; this is for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("assertion: {0}")]
    Jws(#[from] JwsError),
    #[error("iss or sub is not the client id")]
    Subject,
    #[error("aud is neither the issuer nor the token endpoint (or an array with another member)")]
    Audience,
    #[error("exp missing or passed")]
    Expired,
    #[error("lives longer than allowed")]
    TooLong,
    #[error("not yet valid (nbf or iat in the future)")]
    NotYetValid,
    #[error("jti missing")]
    NoJti,
    #[error("no key of the client fits")]
    NoKey,
    #[error("bad signature")]
    Signature,
}

/// What a verified assertion tells the replay check.
#[derive(Debug)]
pub struct Verified {
    pub jti: String,
    /// Until when the `jti` must be remembered.
    pub remember_until: u64,
}

/// Public keys nobody holds the private half of (RSA, P-256, Ed25519): an assertion for an
/// unknown client is checked against the one of its algorithm, so it costs what a known
/// client's does (the same checks, one signature verification) and time tells no ids.
const DUMMY_KEYS: [&str; 3] = [
    "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAv9dqbMDmUa2g20f5AaHB
QT33d6cwAOAYllSFucopqkqjx0Qrea6tsZcKzraUfkU54mq5Zy3WPKFBFJpFc6wS
jKn7Eje0NR8Y6XY6BDWFvpYLGgtoN9v5gxTQboVbAqkTo6UcVGY3FD4XWuwtPXbe
jU70yh/VuZqyrb7os1mNGLeHS69x8HIjfeRK7+hJuxicuNraUe7VyorEXlbYaLZw
Z8516JwJb/OwOmouW29188CXge/AT06ceaPyfbDpL2RVqCmvjG/2C/W2tVneBLQp
yKlUbTfFrxw71eYzS+XJWiXY7fVP4qSmKsznEsXT0OuwsrnaDDmonMiZHE1Xb1H7
NwIDAQAB
-----END PUBLIC KEY-----
",
    "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8W4nyYXcj8jn5m0wrao7YDjp35nn
zTodJLTPxrL2iHaflJsaVfiMZeq6YeiXCMaape6H721JJbTKm4DUPqhE+w==
-----END PUBLIC KEY-----
",
    "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAiZwki4nxQThc0iiIuBT7jQVTY1Rb0QAoDiBBOQ5iNIQ=
-----END PUBLIC KEY-----
",
];

static DUMMY: std::sync::LazyLock<Vec<ClientKey>> = std::sync::LazyLock::new(|| {
    DUMMY_KEYS
        .iter()
        .filter_map(|pem| jwks::from_spki_pem(pem.as_bytes(), &ALGORITHMS, &[0; 32]).ok())
        .map(|set| ClientKey { set, single: true })
        .collect()
});

/// Check `assertion` as for a client that does not exist: the work of [`verify`] against
/// a key nobody holds. Always refused.
pub fn verify_dummy(assertion: &str, client_id: &str, audiences: &[&str], max_lifetime: u64, now: u64) {
    let Ok(jws) = Jws::parse(assertion, MAX_ASSERTION_BYTES, &ALGORITHMS) else { return };
    if let Some(key) = DUMMY.iter().find(|k| matches!(k.set.find(None, jws.alg), Found::Key(_))) {
        let _ = verify(assertion, client_id, key, audiences, max_lifetime, now);
    }
}

/// The claims `iss`, `sub` of an assertion before it is verified: they name the client
/// whose key verifies it. `None` when it is not a JWS we would accept at all.
pub fn unverified_client(assertion: &str) -> Option<String> {
    let jws = Jws::parse(assertion, MAX_ASSERTION_BYTES, &ALGORITHMS).ok()?;
    jws.claim_str("iss").map(str::to_string)
}

/// Check `assertion` as `client_id`'s, for one of `audiences` (exact), at `now`.
pub fn verify(
    assertion: &str,
    client_id: &str,
    keys: &ClientKey,
    audiences: &[&str],
    max_lifetime: u64,
    now: u64,
) -> Result<Verified, AssertionError> {
    let jws = Jws::parse(assertion, MAX_ASSERTION_BYTES, &ALGORITHMS)?;
    // Another kind of JWT (an access token, a DPoP proof, an ID token) is no assertion.
    if let Some(typ) = jws.header_str("typ")
        && !typ.eq_ignore_ascii_case("JWT")
        && !typ.eq_ignore_ascii_case("client-authentication+jwt")
    {
        return Err(AssertionError::Jws(JwsError::Malformed));
    }
    if jws.claim_str("iss") != Some(client_id) || jws.claim_str("sub") != Some(client_id) {
        return Err(AssertionError::Subject);
    }
    let aud_ok = match jws.claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(&a.as_str()),
        // Every member ours: an array naming a foreign audience too is an assertion
        // meant for (or replayable at) someone else (rfc7523bis, audience injection).
        Some(Value::Array(list)) => {
            !list.is_empty() && list.iter().all(|a| a.as_str().is_some_and(|a| audiences.contains(&a)))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(AssertionError::Audience);
    }
    let exp = jws.claim_secs("exp").ok_or(AssertionError::Expired)?;
    if exp.saturating_add(LEEWAY_SECS) <= now {
        return Err(AssertionError::Expired);
    }
    if exp > now.saturating_add(max_lifetime).saturating_add(LEEWAY_SECS) {
        return Err(AssertionError::TooLong);
    }
    for name in ["nbf", "iat"] {
        match jws.claims.get(name) {
            None => {}
            Some(v) => match v.as_u64() {
                Some(t) if t <= now.saturating_add(LEEWAY_SECS) => {}
                _ => return Err(AssertionError::NotYetValid),
            },
        }
    }
    let jti = jws.claim_str("jti").filter(|j| !j.is_empty() && j.len() <= 256).ok_or(AssertionError::NoJti)?;
    // RFC 7515 §4.1.4: `kid` is a string; anything else is refused, not read as absent.
    // Without `kid`, the client's one key of the assertion's algorithm verifies it.
    if jws.header.get("kid").is_some_and(|k| !k.is_string()) {
        return Err(AssertionError::Jws(JwsError::Malformed));
    }
    let kid = if keys.single { None } else { jws.header_str("kid") };
    let key = match keys.set.find(kid, jws.alg) {
        Found::Key(k) => k,
        Found::WrongAlgorithm | Found::Unknown => return Err(AssertionError::NoKey),
    };
    if !jws.verify(key) {
        return Err(AssertionError::Signature);
    }
    Ok(Verified { jti: jti.to_string(), remember_until: exp.saturating_add(LEEWAY_SECS) })
}
