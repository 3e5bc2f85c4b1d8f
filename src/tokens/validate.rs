//! Bearer token validation: verify once, then serve from a cache keyed by the
//! token's SHA-256 ([`super::cache`]). The validator is the only constructor of [`Principal`], so no
//! later phase can act on an unchecked token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use jsonwebtoken::errors::ErrorKind;

use super::blocks::Blocks;
use super::cache::{Digest, Lookup, VerdictCache};
use super::client_reset::ClientNotBefore;
pub use super::client_reset::{ClientResets, clamp_not_before, client_resets};
use super::keys::{Key, KeySet};
use super::{AccessClaims, now_secs, sha256};
use crate::config::Config;
pub use crate::metrics::{BlockStats, CacheStats};
use crate::store::{Block, BlockKey, Store, StoreError};

/// Tokens longer than this are refused before any parsing or hashing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

pub use super::LEEWAY_SECS;
pub use super::error::TokenError;
pub use super::principal::{ClaimValue, Principal};
use crate::config::SELF_ISSUER;
use crate::issuers::introspection::{Inactive, Introspected};
use crate::issuers::{Issuer, IssuerSet};

/// Revoked jtis seen by this process, each until its token would have expired anyway.
struct Revoked {
    map: RwLock<HashMap<Box<str>, u64>>,
    /// Whether `map` may hold anything: lets the hit path skip the lock in the usual case.
    any: AtomicBool,
    max_entries: usize,
}

impl Revoked {
    fn contains(&self, jti: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.map.read().unwrap_or_else(|e| e.into_inner()).contains_key(jti)
    }

    /// Remember a revocation. Returns false when the set was full of live revocations and
    /// was emptied to make room: what it held must then be asked of the store again.
    fn insert(&self, jti: &str, expires_at: u64) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut kept_all = true;
        if map.len() >= self.max_entries {
            let now = now_secs();
            map.retain(|_, exp| exp.saturating_add(LEEWAY_SECS) > now);
            if map.len() >= self.max_entries {
                map.clear();
                kept_all = false;
            }
        }
        map.insert(jti.into(), expires_at);
        self.any.store(true, Ordering::Release);
        kept_all
    }
}

/// Verifies bearer tokens and remembers the verdict until the token expires.
pub struct Validator {
    not_before: ClientNotBefore,
    cache: VerdictCache,
    /// Checked on every hit, so a revocation takes effect at once, including for a
    /// verification that started before the revocation and cached its verdict after it.
    revoked: Revoked,
    /// Operator blocks, likewise checked on every hit.
    blocks: Blocks,
    /// A revocation check failed since the store last answered one: set while the store
    /// is degraded. Its recovery clears the cache (see [`Validator::store_answered`]).
    store_down: AtomicBool,
    /// Skips the revocation check while the store is known not to answer.
    breaker: super::breaker::Breaker,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Validator {
    pub fn new(max_entries: u64) -> Self {
        Validator {
            not_before: ClientNotBefore::default(),
            cache: VerdictCache::new(max_entries),
            revoked: Revoked { map: RwLock::default(), any: AtomicBool::new(false), max_entries: 1_000_000 },
            blocks: Blocks::default(),
            store_down: AtomicBool::new(false),
            breaker: super::breaker::Breaker::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Refuse a token from now on, in this process.
    pub async fn revoke(&self, jti: &str, expires_at: u64) {
        self.remember_revoked(jti, expires_at);
    }

    fn remember_revoked(&self, jti: &str, expires_at: u64) {
        if !self.revoked.insert(jti, expires_at) {
            // Revocations this process no longer remembers are still in the store, which
            // every miss asks: drop every cached verdict so each token is checked again.
            tracing::warn!("more live revocations than the revocation set holds; validation cache cleared");
            self.cache.clear();
        }
    }

    /// Validate one of the gateway's own tokens against the keys, clients and users in
    /// force now (see [`Validator::validate_for`]).
    pub async fn validate(
        &self,
        token: &str,
        keys: &KeySet,
        config: &Config,
        store: &dyn Store,
    ) -> Result<Arc<Principal>, TokenError> {
        self.validate_for(token, keys, None, &|name| name == SELF_ISSUER, config, store).await
    }

    /// Validate `token` for a route that accepts the issuers `accepts` says yes to
    /// ([`SELF_ISSUER`] and trusted issuer names). The token's unverified `iss` picks whose
    /// keys verify it; an issuer the route does not accept is refused before any key is
    /// looked at (so no fetch either). Our own tokens are checked against the keys,
    /// clients and users in force now; on a miss the store is asked whether the token was
    /// revoked, and if it cannot answer, the token is judged on its own (it is
    /// self-contained) and a warning logged.
    pub async fn validate_for(
        &self,
        token: &str,
        keys: &KeySet,
        issuers: Option<&IssuerSet>,
        accepts: &(dyn Fn(&str) -> bool + Sync),
        config: &Config,
        store: &dyn Store,
    ) -> Result<Arc<Principal>, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let now = now_secs();
        let digest = Digest(sha256(token.as_bytes()));
        match self.cache.get(&digest, now) {
            // Verified under an issuer name this route does not accept: perhaps another
            // issuer's token, perhaps a name a reload changed. The miss path below decides
            // again from the token's `iss` (refusing before any signature check when the
            // route accepts none of them), so a renamed issuer's cached tokens keep working.
            Lookup::Hit(p) if !accepts(p.issuer_name()) => {}
            Lookup::Hit(p) if !p.is_own() => {
                // Served only while the key that verified it is in its issuer's set under
                // the same policy; otherwise verified again below.
                let issuer =
                    issuers.and_then(|s| s.by_name(p.issuer_name())).filter(|i| i.holds(p.kid(), &p.key_fingerprint()));
                if let Some(issuer) = issuer {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    // Operator blocks cover every issuer's tokens, checked under its `iss`.
                    self.check_blocks(&issuer.config.issuer, &p, now)?;
                    return Ok(p);
                }
            }
            Lookup::Hit(p) => {
                // Cached verdicts still answer to the current config: client, user, key, revocation.
                let key = keys.get(p.kid());
                // A replaced key file, or a changed issuer or audience, voids the verdict
                // but not necessarily the token: verify it again below.
                if key.is_none_or(|k| k.fingerprint == p.key_fingerprint()) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    check_holder(config, p.client_id(), p.subject(), p.without_user_consent())?;
                    if key.is_none() {
                        return Err(TokenError::UnknownKey);
                    }
                    if self.revoked.contains(p.token_id()) {
                        return Err(TokenError::Revoked);
                    }
                    self.check_blocks(config.issuer(), &p, now)?;
                    return Ok(p);
                }
            }
            Lookup::Expired => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Err(TokenError::Expired);
            }
            Lookup::Miss => {}
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Only with trusted issuers configured does the payload get read before the
        // signature is checked: our own tokens' miss path stays as it was.
        if let Some(set) = issuers.filter(|s| s.iter().next().is_some()) {
            // The route's introspection issuer, if it accepts one (never more than one).
            let introspector = set.iter().find(|i| i.introspection().is_some() && accepts(i.name()));
            let iss = super::external::unverified_iss(token);
            if let Some(issuer) = introspector {
                // Asked of the IdP: a token that is not a JWT (its second dot-separated
                // part is not base64url of a JSON object; opaque tokens usually have one
                // part), a JWT without `iss`, or one naming this issuer. A JWT naming
                // another issuer (ours included), or whose `iss` cannot be read, is never
                // sent: it is verified, or refused, here, and an IdP never sees another
                // issuer's tokens.
                let ask = match &iss {
                    Err(_) => !super::external::has_json_payload(token),
                    Ok(None) => true,
                    Ok(Some(iss)) => *iss == issuer.config.issuer,
                };
                if ask {
                    // Boxed, as the other miss-only futures: the hit path's future stays small.
                    return Box::pin(self.introspect(token, issuer, config.rule_claims(), now)).await;
                }
            }
            match iss? {
                Some(iss) if iss != config.issuer() => {
                    let issuer = set.by_iss(&iss).ok_or(TokenError::WrongIssuer)?;
                    if !accepts(issuer.name()) || issuer.introspection().is_some() {
                        return Err(TokenError::WrongIssuer);
                    }
                    let principal =
                        Arc::new(Box::pin(super::external::verify(token, issuer, config.rule_claims(), now)).await?);
                    self.cache.insert(digest, principal.clone(), now);
                    self.check_blocks(&issuer.config.issuer, &principal, now)?;
                    return Ok(principal);
                }
                _ => {}
            }
        }
        if !accepts(SELF_ISSUER) {
            return Err(TokenError::WrongIssuer);
        }
        let (principal, issued_at) = verify(token, keys, config.rule_claims(), now)?;
        let principal = Arc::new(principal);
        check_holder(config, principal.client_id(), principal.subject(), principal.without_user_consent())?;
        self.check_not_before(principal.client_id(), issued_at)?;
        if self.revoked.contains(principal.token_id()) {
            return Err(TokenError::Revoked);
        }
        self.check_blocks(config.issuer(), &principal, now)?;
        // While the store is known not to answer, the check fails at once, as it would
        // after the timeout (one request a second still asks: the breaker's probe).
        let checked = self.revocation_check(store, principal.token_id()).await;
        match checked {
            Ok(revoked) => {
                self.store_answered(true);
                if revoked {
                    self.remember_revoked(principal.token_id(), principal.expires_at());
                    return Err(TokenError::Revoked);
                }
            }
            Err(e) => {
                // Logged once per outage: uncached, every request of the outage gets here.
                if self.store_answered(false) {
                    tracing::warn!(error = %e, "revocation check unavailable; judging tokens on their own, uncached, until the store answers");
                } else {
                    tracing::debug!(error = %e, "revocation check unavailable");
                }
                // Never cached: a verdict reached without the revocation check must not
                // outlive the fault (the token may be revoked in the store), so every
                // request asks again until the store answers.
                return Ok(principal);
            }
        }
        // A revocation that landed while the store was asked is in `revoked` by now, and
        // every hit checks it.
        self.cache.insert(digest, principal.clone(), now);
        // Hits do not know `iat`: a not-before set while this was verified (it clears the
        // cache first) may have missed this entry, so look again after inserting it.
        if let Err(e) = self.check_not_before(principal.client_id(), issued_at) {
            self.cache.clear();
            return Err(e);
        }
        Ok(principal)
    }

    /// Judge `token` by asking `issuer`'s introspection endpoint. The client's cache is the
    /// only cache: the verdict is rebuilt per request and never enters the verdict cache,
    /// so a revocation at the IdP shows within the issuer's `max_cache` and no later.
    /// Operator blocks apply under the issuer's `iss`.
    async fn introspect(
        &self,
        token: &str,
        issuer: &Issuer,
        rule_claims: &[String],
        now: u64,
    ) -> Result<Arc<Principal>, TokenError> {
        let client = issuer.introspection().ok_or(TokenError::WrongIssuer)?;
        let active = match client.introspect(token).await {
            Ok(Introspected::Active(t)) => t,
            Ok(Introspected::Inactive(why)) => {
                return Err(match why {
                    Inactive::Expired => TokenError::Expired,
                    Inactive::NotYetValid => TokenError::NotYetValid,
                    Inactive::WrongIssuer => TokenError::WrongIssuer,
                    Inactive::WrongAudience => TokenError::WrongAudience,
                    Inactive::NotActive | Inactive::NotAccessToken | Inactive::Unusable => TokenError::Inactive,
                });
            }
            Err(_) => return Err(TokenError::IntrospectionFailed),
        };
        let principal = Arc::new(super::external::from_introspection(&active, issuer, rule_claims, now)?);
        self.check_blocks(&issuer.config.issuer, &principal, now)?;
        Ok(principal)
    }

    /// Ask the store whether `jti` is revoked, unless its breaker is open: then it fails
    /// at once, as it would after the timeout (one request a second still asks: the probe).
    async fn revocation_check(&self, store: &dyn Store, jti: &str) -> Result<bool, StoreError> {
        if !self.breaker.admit() {
            return Err(StoreError::Unavailable("known not to answer: not asked (the breaker is open)".into()));
        }
        let asked_at = std::time::Instant::now();
        let asked = store.is_revoked(jti).await;
        // Only a failure that made the request wait opens the breaker: one that came at
        // once (an I/O error, a refused connection) costs nothing to repeat, and repeating
        // it sees the recovery at once.
        if asked.is_err() && asked_at.elapsed() >= super::breaker::SLOW_FAILURE {
            self.breaker.failed();
        }
        asked
    }

    /// Whether the store could answer a revocation check (or a health probe) just now.
    /// When it answers again after failing, every cached verdict is dropped: revocations
    /// made meanwhile (by another replica, or before a restart) are asked of it again.
    /// Returns whether this call changed the state.
    pub fn store_answered(&self, ok: bool) -> bool {
        // The store answers (a check, or /metrics's health probe): the breaker closes.
        if ok && self.breaker.answered() {
            tracing::warn!("revocation check: the store answers again; every uncached token is checked again");
        }
        // `store_down` is `!ok` already in the usual case: one load, no write.
        let down = !ok;
        if self.store_down.load(Ordering::Acquire) == down {
            return false;
        }
        let changed = self.store_down.swap(down, Ordering::AcqRel) != down;
        if ok && changed {
            tracing::info!("store answering again; validation cache cleared");
            self.cache.clear();
        }
        changed
    }

    /// Void `client_id`'s tokens issued at or before `at` (kept as the latest such time).
    /// Cached verdicts stay (a disabled client's hits are refused anyway); whoever enables
    /// such a client again, or voids an enabled one, clears the cache (see [`client_resets`]).
    /// Returns whether the time known for the client was raised.
    pub fn set_client_not_before(&self, client_id: &str, at: u64) -> bool {
        self.not_before.set(client_id, at)
    }

    /// The not-before this process holds for `client_id`, if any.
    pub fn client_not_before(&self, client_id: &str) -> Option<u64> {
        self.not_before.get(client_id)
    }

    /// The issue time for a new token of `client_id` at `now`: after its not-before, so a
    /// token issued in the very second of a reset (a secret rotated and used at once) is
    /// not void from birth. At most a second ahead, well within [`LEEWAY_SECS`].
    pub fn issue_time(&self, client_id: &str, now: u64) -> u64 {
        match self.not_before.get(client_id) {
            Some(at) if at >= now => at.saturating_add(1),
            _ => now,
        }
    }

    /// Refuse a token of `client_id` issued at `issued_at` if its client was reset since.
    pub fn check_not_before(&self, client_id: &str, issued_at: u64) -> Result<(), TokenError> {
        match self.not_before.get(client_id) {
            Some(at) if issued_at <= at => Err(TokenError::ClientReset),
            _ => Ok(()),
        }
    }

    /// Has this process seen `jti` revoked (by itself or through a replica's event)?
    pub fn is_revoked_locally(&self, jti: &str) -> bool {
        self.revoked.contains(jti)
    }

    /// Refuse a token blocked by an operator. Our own tokens are checked under our issuer
    /// (a hit's key fingerprint covers the issuer, so the one in force is the token's).
    fn check_blocks(&self, iss: &str, p: &Principal, now: u64) -> Result<(), TokenError> {
        match self.blocks.check(iss, p.token_id(), p.subject(), now) {
            Some(_) => Err(TokenError::Blocked),
            None => Ok(()),
        }
    }

    /// Enforce an operator block from now on, in this process (the store keeps it).
    pub fn block(&self, block: &Block) {
        self.blocks.insert(block, now_secs());
    }

    /// Stop enforcing a block in this process.
    pub fn unblock(&self, key: &BlockKey) {
        self.blocks.remove(key);
    }

    /// Enforce exactly `all`, as loaded from the store (at start, after a feed interruption).
    pub fn replace_blocks(&self, all: &[Block]) {
        self.blocks.replace(all, now_secs());
    }

    /// Is a token of `iss` with `jti` for `sub` blocked (for introspection: not counted)?
    pub fn is_blocked(&self, iss: &str, jti: &str, sub: &str) -> bool {
        self.blocks.covers(iss, jti, sub, now_secs())
    }

    /// Requests refused by a block and blocks held, for `/metrics`.
    pub fn block_stats(&self) -> BlockStats {
        self.blocks.stats(now_secs())
    }

    /// The revocation check's breaker, for `/metrics`: checks skipped because the store
    /// was known not to answer, and whether it is open now.
    pub fn revocation_breaker_stats(&self) -> (u64, bool) {
        self.breaker.stats()
    }

    /// Drop every cached verdict (e.g. after the keys changed).
    pub fn clear(&self) {
        self.cache.clear();
    }

    pub fn cached_entries(&self) -> u64 {
        self.cache.len() as u64
    }

    /// Hit and miss counts, and the number of cached verdicts.
    pub async fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.cached_entries(),
        }
    }
}

/// May a token (access or refresh) of client `client_id` for `subject` still be honoured
/// under `config`? The one copy of the rule, for the proxy path, introspection and the
/// refresh grant. The client must exist and be enabled; a token acting for a user
/// (subject other than the client) needs that user to exist and be enabled. One issued
/// without a user's consent (`no_consent`: client_credentials, acting as the client's
/// linked user) also needs the link to hold still: after the client's `user` moves from
/// alice to bob, alice's tokens stop. On the cache-hit path this is two map lookups (one
/// when there is no user).
pub fn check_holder(config: &Config, client_id: &str, subject: &str, no_consent: bool) -> Result<(), TokenError> {
    let client = match config.clients.get(client_id) {
        None => return Err(TokenError::UnknownClient),
        Some(c) if !c.enabled => return Err(TokenError::ClientDisabled),
        Some(c) => c,
    };
    if subject == client_id {
        return Ok(());
    }
    if no_consent && client.user.as_deref() != Some(subject) {
        return Err(TokenError::UserInactive);
    }
    match config.users.get(subject) {
        Some(u) if u.enabled => Ok(()),
        // A client's linked user too: removed from the config, its tokens stop (issue 19.4).
        Some(_) | None => Err(TokenError::UserInactive),
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

/// Full cryptographic and claim verification of a token not seen before; of its claims,
/// those route rules name are kept (a key's fingerprint covers that list).
fn verify(token: &str, keys: &KeySet, rule_claims: &[String], now: u64) -> Result<(Principal, u64), TokenError> {
    let (c, key) = verify_claims(token, keys, now)?;
    let kept = rule_claims
        .iter()
        .filter_map(|name| {
            let v = match name.as_str() {
                "iss" => &c.iss,
                "sub" => &c.sub,
                "aud" => &c.aud,
                "jti" => &c.jti,
                "client_id" => &c.client_id,
                "scope" => &c.scope,
                "gty" => c.gty.as_ref()?,
                _ => return None,
            };
            Some((name.as_str().into(), ClaimValue::Text(v.as_str().into())))
        })
        .collect();
    let parts = [c.client_id.as_str(), &c.sub, &c.scope, &c.jti, &key.kid, &c.aud, ""];
    let p = Principal::build(parts, kept, key.fingerprint, c.exp)
        .ok_or(TokenError::BadClaims)?
        .without_consent(c.gty.is_some())
        .bound_to(c.cnf);
    Ok((p, c.iat))
}

fn verify_claims<'k>(token: &str, keys: &'k KeySet, now: u64) -> Result<(AccessClaims, &'k Key), TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    // RFC 7515 §4.1.11: `crit` names extensions the recipient must understand; we
    // understand none. (A repeated `crit` key fails to decode above.)
    if header.crit.is_some() {
        return Err(TokenError::CriticalHeader);
    }
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
    // Saturating: a forged-but-signed exp near u64::MAX must not overflow (fuzzing found it).
    if c.exp.saturating_add(LEEWAY_SECS) <= now {
        return Err(TokenError::Expired);
    }
    if c.iat > now.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::NotYetValid);
    }
    if c.jti.is_empty() || c.client_id.is_empty() || c.sub.is_empty() {
        return Err(TokenError::BadClaims);
    }
    // No token we issue lives longer than the longest configured lifetime (iat is required:
    // a token without one fails to parse above). exp before iat is no lifetime at all.
    if c.exp < c.iat || c.exp - c.iat > key.max_lifetime_secs.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::LifetimeTooLong);
    }
    Ok((c, key))
}
