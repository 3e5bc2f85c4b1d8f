//! DPoP proofs (RFC 9449 §4.3): the checks of one proof for one request, and the server
//! nonces of §8–9. Everything that can be checked without the key is checked first (size,
//! shape, `typ`, `alg`, the `jwk` being a public key, `htm`, `htu`, `iat`, `ath`, the
//! nonce); then the one signature verification. The caller records the proof's `jti` in
//! the shared store after that (only a signed proof may fill the replay memory).
//!
//! Nonces are stateless, so every replica accepts every replica's: a nonce is a time
//! bucket (the `iat` window long) and an HMAC of it under a key derived from the signing
//! key in force (replicas share it). A nonce of the current or the previous bucket passes.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

use super::jws::{Jws, JwsError};
use super::sha256;
use crate::config::DpopSettings;
use crate::issuers::jwks;

/// A proof is a header line: longer ones are refused unread. An RSA-4096 `jwk` and
/// signature fit with room to spare.
pub const MAX_PROOF_BYTES: usize = 4096;

/// Members only a private JWK has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2; `k` of an
/// octet key): a proof carrying one is refused, never used.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a proof was refused; all are `invalid_dpop_proof` on the wire but [`DpopError::UseNonce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("more than one DPoP header")]
    Multiple,
    #[error("proof: {0}")]
    Jws(#[from] JwsError),
    #[error("typ is not dpop+jwt")]
    Type,
    #[error("jwk missing, private, or not usable with the alg")]
    Jwk,
    #[error("htm does not match the request method")]
    Method,
    #[error("htu does not match the request URL")]
    Url,
    #[error("iat missing or outside the window")]
    IssuedAt,
    #[error("jti missing or too long")]
    Jti,
    #[error("ath missing or not the hash of the access token")]
    AccessTokenHash,
    #[error("nonce missing or stale")]
    UseNonce,
    #[error("proof key is not the key the token is bound to")]
    KeyMismatch,
    #[error("bad signature")]
    Signature,
    #[error("jti replayed")]
    Replay,
}

impl DpopError {
    /// A short label for the logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            DpopError::Multiple => "multiple",
            DpopError::Jws(JwsError::TooLarge) => "too_large",
            DpopError::Jws(JwsError::Algorithm) => "algorithm",
            DpopError::Jws(_) => "malformed",
            DpopError::Type => "type",
            DpopError::Jwk => "jwk",
            DpopError::Method => "htm",
            DpopError::Url => "htu",
            DpopError::IssuedAt => "iat",
            DpopError::Jti => "jti",
            DpopError::AccessTokenHash => "ath",
            DpopError::UseNonce => "nonce",
            DpopError::KeyMismatch => "key_mismatch",
            DpopError::Signature => "signature",
            DpopError::Replay => "replay",
        }
    }
}

/// What the request a proof is for looks like.
pub struct Expect<'a> {
    /// The request method.
    pub htm: &'a str,
    /// The request URL as the client addressed it, without query (see [`normalise_htu`]).
    pub htu: &'a str,
    /// On the proxy path, the access token the proof must be bound to (`ath`).
    pub access_token: Option<&'a str>,
    /// On the proxy path, the thumbprint the token is bound to (`cnf.jkt`): compared before
    /// the signature is checked, so a thief's proof with its own key costs no verification.
    pub jkt: Option<&'a str>,
    /// Seconds since the epoch.
    pub now: u64,
}

/// A verified proof.
#[derive(Debug)]
pub struct Proof {
    /// The RFC 7638 thumbprint of the proof key, base64url: what `cnf.jkt` names.
    pub jkt: String,
    /// The SHA-256 of the proof's `jti` and key, for the replay memory.
    pub once: [u8; 32],
    /// Until when the `jti` must be remembered.
    pub remember_until: u64,
}

/// Check `proof` for the request `expect` describes. `nonce_key` is `Some` when nonces are
/// required.
pub fn verify(
    proof: &str,
    settings: &DpopSettings,
    expect: &Expect<'_>,
    nonce_key: Option<&hmac::Key>,
) -> Result<Proof, DpopError> {
    let jws = Jws::parse(proof, MAX_PROOF_BYTES, &settings.algorithms)?;
    if !jws.header_str("typ").is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")) {
        return Err(DpopError::Type);
    }
    let jwk = jws.header.get("jwk").ok_or(DpopError::Jwk)?;
    let private = jwk.as_object().is_none_or(|o| PRIVATE_MEMBERS.iter().any(|m| o.contains_key(*m)));
    if private {
        return Err(DpopError::Jwk);
    }
    let key = jwks::parse_jwk(jwk, &settings.algorithms).map_err(|_| DpopError::Jwk)?;
    if !key.algs.contains(&jws.alg) {
        return Err(DpopError::Jwk);
    }
    if jws.claim_str("htm") != Some(expect.htm) {
        return Err(DpopError::Method);
    }
    let htu = jws.claim_str("htu").and_then(normalise_htu).ok_or(DpopError::Url)?;
    if htu != expect.htu {
        return Err(DpopError::Url);
    }
    let window = settings.iat_window.as_secs();
    let iat = jws.claim_secs("iat").ok_or(DpopError::IssuedAt)?;
    if iat.abs_diff(expect.now) > window {
        return Err(DpopError::IssuedAt);
    }
    let jti = jws.claim_str("jti").filter(|j| !j.is_empty() && j.len() <= 256).ok_or(DpopError::Jti)?;
    if let Some(token) = expect.access_token {
        let want = URL_SAFE_NO_PAD.encode(sha256(token.as_bytes()));
        if jws.claim_str("ath") != Some(want.as_str()) {
            return Err(DpopError::AccessTokenHash);
        }
    }
    if let Some(k) = nonce_key {
        let fresh = jws.claim_str("nonce").is_some_and(|n| nonce_ok(k, n, window, expect.now));
        if !fresh {
            return Err(DpopError::UseNonce);
        }
    }
    let jkt = key.thumbprint();
    if let Some(want) = expect.jkt {
        let got = URL_SAFE_NO_PAD.encode(jkt);
        if !bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
            return Err(DpopError::KeyMismatch);
        }
    }
    if !jws.verify(&key) {
        return Err(DpopError::Signature);
    }
    let mut once = Vec::with_capacity(32 + jti.len());
    once.extend_from_slice(&jkt);
    once.extend_from_slice(jti.as_bytes());
    Ok(Proof {
        jkt: URL_SAFE_NO_PAD.encode(jkt),
        once: sha256(&once),
        remember_until: iat.saturating_add(window).saturating_add(1),
    })
}

/// The one `DPoP` header of a request: `Ok(None)` when there is none; two or more (or one
/// that is not text) are refused (RFC 9449 §4.3 item 1).
pub fn header(headers: &http::HeaderMap) -> Result<Option<&str>, DpopError> {
    let mut all = headers.get_all("dpop").iter();
    match (all.next(), all.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| DpopError::Jws(JwsError::Malformed)),
        (Some(_), Some(_)) => Err(DpopError::Multiple),
    }
}

/// An HTTP(S) URL in the form `htu` is compared in (RFC 9449 §4.3 item 9, RFC 3986
/// §6.2.2–6.2.3): scheme and host lower-cased, the default port dropped, an empty path
/// made `/`, the query and fragment removed, and in the path the percent-encoding of
/// unreserved characters decoded and other escapes' hex upper-cased (§6.2.2.1–2), so
/// `/a/%7e` and `/a/~` are one URL however the client or the gateway spelled it.
/// `None` for anything else.
pub fn normalise_htu(url: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() || !u.username().is_empty() {
        return None;
    }
    u.set_query(None);
    u.set_fragment(None);
    let path = normalise_escapes(u.path());
    u.set_path(&path);
    Some(u.into())
}

/// RFC 3986 §6.2.2.1–2 on a path: `%XX` of an unreserved character decoded, the hex of
/// the others upper-cased. A `%` not followed by two hex digits is left as it is.
fn normalise_escapes(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            let c = (h * 16 + l) as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                out.push_str(&format!("%{c:02X}"));
            }
            i += 3;
            continue;
        }
        // Multi-byte characters are copied whole (a URL's path is ASCII, but be safe).
        let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// The nonce key: derived from the key that protects the login forms (itself derived from
/// the active signing key), so replicas sharing the keys share nonces.
pub fn nonce_key(base: &hmac::Key) -> hmac::Key {
    let derived = hmac::sign(base, b"portcullis dpop nonce v1");
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

/// A fresh nonce for `now`: the bucket number and 16 bytes of its HMAC, base64url.
pub fn make_nonce(key: &hmac::Key, window: u64, now: u64) -> String {
    let bucket = now / window.max(1);
    let tag = hmac::sign(key, &bucket.to_be_bytes());
    let mut raw = bucket.to_be_bytes().to_vec();
    raw.extend_from_slice(&tag.as_ref()[..16]);
    URL_SAFE_NO_PAD.encode(raw)
}

fn nonce_ok(key: &hmac::Key, nonce: &str, window: u64, now: u64) -> bool {
    let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else { return false };
    if raw.len() != 24 {
        return false;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[..8]);
    let bucket = u64::from_be_bytes(b);
    let current = now / window.max(1);
    if bucket != current && bucket.saturating_add(1) != current {
        return false;
    }
    let tag = hmac::sign(key, &bucket.to_be_bytes());
    bool::from(tag.as_ref()[..16].ct_eq(&raw[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_is_normalised() {
        let n = |s: &str| normalise_htu(s);
        assert_eq!(n("HTTPS://Example.COM:443/a?x=1#f").as_deref(), Some("https://example.com/a"));
        assert_eq!(n("http://example.com:80").as_deref(), Some("http://example.com/"));
        assert_eq!(n("https://example.com:8443/a").as_deref(), Some("https://example.com:8443/a"));
        assert_ne!(n("https://example.com/a"), n("https://example.com/A"));
        assert_eq!(n("ftp://example.com/"), None);
        assert_eq!(n("https://user@example.com/"), None);
        assert_eq!(n("/relative"), None);
        // RFC 3986 §6.2.2: unreserved escapes decoded, other escapes' hex upper-cased.
        assert_eq!(n("https://e.com/api/%7E%7e%41x").as_deref(), Some("https://e.com/api/~~Ax"));
        assert_eq!(n("https://e.com/api/%2f%2F%zz").as_deref(), Some("https://e.com/api/%2F%2F%zz"));
        assert_eq!(n("https://e.com/api/%7E"), n("https://e.com/api/~"));
        assert_ne!(n("https://e.com/a%2Fb"), n("https://e.com/a/b"));
    }

    #[test]
    fn nonces_pass_for_two_buckets_and_only_with_the_key() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"other");
        let n = make_nonce(&key, 60, 1000);
        assert!(nonce_ok(&key, &n, 60, 1000));
        assert!(nonce_ok(&key, &n, 60, 1000 + 60));
        assert!(!nonce_ok(&key, &n, 60, 1000 + 180));
        assert!(!nonce_ok(&other, &n, 60, 1000));
        assert!(!nonce_ok(&key, "garbage", 60, 1000));
    }
}
