//! Bearer token validation: verify once, then serve from a moka cache keyed by the
//! token's SHA-256. The validator is the only constructor of [`Principal`], so no
//! later phase can act on an unchecked token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use moka::Expiry;
use moka::future::Cache;

use super::keys::{Key, KeySet};
use super::{AccessClaims, now_secs, sha256};
use crate::config::Client;
use crate::store::Store;

/// Tokens longer than this are refused before any parsing or hashing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Clock-skew allowance in seconds for exp, nbf and iat, applied the same on a hit and a miss.
pub const LEEWAY_SECS: u64 = 5;

/// Who a valid token speaks for.
#[derive(Debug)]
pub struct Principal {
    client_id: String,
    subject: String,
    scope: String,
    token_id: String,
    user: Option<String>,
    kid: String,
    /// The fingerprint of the key that verified it (key file, issuer, audience): a hit
    /// under a key with another fingerprint is verified again.
    key_fingerprint: [u8; 32],
    expires_at: u64,
}

impl Principal {
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// Space-separated, as in the token.
    pub fn scope(&self) -> &str {
        &self.scope
    }
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope.split(' ').any(|s| s == wanted)
    }
    pub fn token_id(&self) -> &str {
        &self.token_id
    }
    /// The resource owner, when the token acts for a user rather than the client itself.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

/// Why a token was refused. All of them are `invalid_token` on the wire; the detail is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token names no kid or an unknown kid")]
    UnknownKey,
    #[error("token header alg does not match its key")]
    WrongAlgorithm,
    #[error("token typ is not at+jwt")]
    WrongType,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("required claim missing or invalid")]
    BadClaims,
    #[error("token's client is unknown")]
    UnknownClient,
    #[error("token's client is disabled")]
    ClientDisabled,
    #[error("token was revoked")]
    Revoked,
}

impl TokenError {
    /// The `error_description` sent to the caller: enough to act on, nothing to exploit.
    pub fn description(self) -> &'static str {
        match self {
            TokenError::Expired => "The access token expired",
            _ => "The access token is invalid",
        }
    }
}

struct UntilTokenExpiry;

impl Expiry<[u8; 32], Arc<Principal>> for UntilTokenExpiry {
    fn expire_after_create(&self, _key: &[u8; 32], value: &Arc<Principal>, _created_at: Instant) -> Option<Duration> {
        Some(Duration::from_secs(value.expires_at.saturating_add(LEEWAY_SECS).saturating_sub(now_secs())))
    }
}

struct UntilRevocationLapses;

impl Expiry<String, u64> for UntilRevocationLapses {
    fn expire_after_create(&self, _key: &String, expires_at: &u64, _created_at: Instant) -> Option<Duration> {
        Some(Duration::from_secs(expires_at.saturating_add(LEEWAY_SECS).saturating_sub(now_secs())))
    }
}

/// How well the validation cache is doing, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

/// Verifies bearer tokens and remembers the verdict until the token expires.
pub struct Validator {
    cache: Cache<[u8; 32], Arc<Principal>>,
    /// jti → cache key, so a revocation can evict the cached verdict at once.
    by_jti: moka::sync::Cache<String, [u8; 32]>,
    /// Revoked jtis seen by this process, until the token would have expired anyway.
    /// Checked on every hit: it closes the race where a verification that started
    /// before a revocation caches its verdict after the eviction.
    revoked: moka::sync::Cache<String, u64>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Validator {
    pub fn new(max_entries: u64) -> Self {
        let cache = Cache::builder().max_capacity(max_entries).expire_after(UntilTokenExpiry).build();
        let by_jti =
            moka::sync::Cache::builder().max_capacity(max_entries).time_to_live(Duration::from_secs(24 * 3600)).build();
        let revoked = moka::sync::Cache::builder().max_capacity(1_000_000).expire_after(UntilRevocationLapses).build();
        Validator { cache, by_jti, revoked, hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    /// Refuse a token from now on, in this process: evict its cached verdict.
    pub async fn revoke(&self, jti: &str, expires_at: u64) {
        self.revoked.insert(jti.to_string(), expires_at);
        if let Some(digest) = self.by_jti.remove(jti) {
            self.cache.invalidate(&digest).await;
        }
    }

    /// Validate `token` against the keys and clients in force now.
    /// On a miss the store is asked whether the token was revoked; if the store cannot
    /// answer, the token is judged on its own (it is self-contained) and a warning logged.
    pub async fn validate(
        &self,
        token: &str,
        keys: &KeySet,
        clients: &HashMap<String, Arc<Client>>,
        store: &dyn Store,
    ) -> Result<Arc<Principal>, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let now = now_secs();
        let digest = sha256(token.as_bytes());
        if let Some(p) = self.cache.get(&digest).await {
            // Cached verdicts still answer to the current config: expiry, client, key.
            let key = keys.get(&p.kid);
            // A replaced key file, or a changed issuer or audience, voids the verdict
            // but not necessarily the token: verify it again below.
            if key.is_none_or(|k| k.fingerprint == p.key_fingerprint) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                if p.expires_at.saturating_add(LEEWAY_SECS) <= now {
                    return Err(TokenError::Expired);
                }
                check_client(clients, &p.client_id)?;
                if key.is_none() {
                    return Err(TokenError::UnknownKey);
                }
                if self.revoked.contains_key(&p.token_id) {
                    return Err(TokenError::Revoked);
                }
                return Ok(p);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let principal = Arc::new(verify(token, keys, now)?);
        check_client(clients, &principal.client_id)?;
        if self.revoked.contains_key(&principal.token_id) {
            return Err(TokenError::Revoked);
        }
        match store.is_revoked(&principal.token_id).await {
            Ok(true) => {
                self.revoked.insert(principal.token_id.clone(), principal.expires_at);
                return Err(TokenError::Revoked);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "revocation check unavailable; judging the token on its own"),
        }
        self.by_jti.insert(principal.token_id.clone(), digest);
        self.cache.insert(digest, principal.clone()).await;
        Ok(principal)
    }

    /// Has this process seen `jti` revoked (by itself or through a replica's event)?
    pub fn is_revoked_locally(&self, jti: &str) -> bool {
        self.revoked.contains_key(jti)
    }

    /// Drop every cached verdict (e.g. after the keys changed).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    pub fn cached_entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Hit and miss counts, and the entry count once pending cache maintenance has run.
    pub async fn stats(&self) -> CacheStats {
        self.cache.run_pending_tasks().await;
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
        }
    }
}

fn check_client(clients: &HashMap<String, Arc<Client>>, id: &str) -> Result<(), TokenError> {
    match clients.get(id) {
        None => Err(TokenError::UnknownClient),
        Some(c) if !c.enabled => Err(TokenError::ClientDisabled),
        Some(_) => Ok(()),
    }
}

/// The verified claims of one of our access tokens, for introspection and revocation
/// (RFC 7662, RFC 7009): signature, typ, iss, aud and time checks, but no client or
/// revocation check — the caller decides what those mean for its answer.
pub fn inspect(token: &str, keys: &KeySet, now: u64) -> Result<AccessClaims, TokenError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    verify_claims(token, keys, now).map(|(claims, _)| claims)
}

/// Full cryptographic and claim verification of a token not seen before.
fn verify(token: &str, keys: &KeySet, now: u64) -> Result<Principal, TokenError> {
    let (c, key) = verify_claims(token, keys, now)?;
    let user = (c.sub != c.client_id).then(|| c.sub.clone());
    Ok(Principal {
        client_id: c.client_id,
        subject: c.sub,
        scope: c.scope,
        token_id: c.jti,
        user,
        kid: key.kid.clone(),
        key_fingerprint: key.fingerprint,
        expires_at: c.exp,
    })
}

fn verify_claims<'k>(token: &str, keys: &'k KeySet, now: u64) -> Result<(AccessClaims, &'k Key), TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
    let key = keys.get(kid).ok_or(TokenError::UnknownKey)?;
    if header.alg != key.alg {
        return Err(TokenError::WrongAlgorithm);
    }
    // RFC 9068 §4: typ must be at+jwt (the media type prefix is optional).
    match header.typ.as_deref().map(|t| t.to_ascii_lowercase()) {
        Some(t) if t == "at+jwt" || t == "application/at+jwt" => {}
        _ => return Err(TokenError::WrongType),
    }
    let data =
        jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &key.validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
                TokenError::BadSignature
            }
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => TokenError::BadClaims,
            _ => TokenError::Malformed,
        })?;
    let c = data.claims;
    // exp is signed, but any u64 parses: near u64::MAX the sum must not overflow.
    if c.exp.saturating_add(LEEWAY_SECS) <= now {
        return Err(TokenError::Expired);
    }
    if c.iat > now + LEEWAY_SECS {
        return Err(TokenError::NotYetValid);
    }
    if c.jti.is_empty() || c.client_id.is_empty() || c.sub.is_empty() {
        return Err(TokenError::BadClaims);
    }
    Ok((c, key))
}
