//! Client authentication at the token endpoint (RFC 6749 §2.3.1): HTTP Basic
//! (`client_secret_basic`) or body parameters (`client_secret_post`), never both.
//!
//! Secrets are argon2id hashes in config. Verifying one costs tens of milliseconds by
//! design, so a successful verification is remembered in a bounded cache keyed by an
//! HMAC (with a per-process random key) of the client id and the presented secret: the
//! cache never holds anything from which a secret could be recovered offline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use aws_lc_rs::hmac;
use base64::Engine;
use http::{HeaderMap, header};
use moka::sync::Cache;
use percent_encoding::percent_decode_str;
use subtle::ConstantTimeEq;

use super::error::{BadRequest, OAuthError};
use super::params::Params;
use crate::config::{Client, ClientAuth};
use crate::state::{Gateway, Runtime};

/// Whose secret is being checked; client and user names live in separate namespaces.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Client = 1,
    User = 2,
}

/// Remembers (client, secret) pairs that verified, and against which hash.
pub struct SecretCache {
    key: hmac::Key,
    verified: Cache<[u8; 32], Arc<str>>,
    /// argon2 runs at most this many at once (one per core): each costs ~19 MiB and tens of
    /// milliseconds, so a flood of wrong secrets queues here instead of exhausting memory.
    hashing: tokio::sync::Semaphore,
    /// Verifications against [`DUMMY_HASH`] (unknown client or user), for tests and metrics.
    dummy_runs: AtomicU64,
}

/// A valid argon2id hash (argon2's default parameters, as `portcullis hash-secret` uses) of
/// a random string nobody knows. Verified against when the client or user does not exist,
/// so that "no such name" and "wrong secret" cost the same.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$bfvdNrf2I4dnZKtN8XZqIA$cVSC4XrogpedQjyCA0MATCnO225EByVri6brmsYzpJ4";

impl SecretCache {
    pub fn new(max_entries: u64) -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        // Without a working RNG nothing else here is safe either.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| panic!("system RNG unavailable"));
        let verified = Cache::builder().max_capacity(max_entries).time_to_live(Duration::from_secs(600)).build();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        SecretCache { key, verified, hashing: tokio::sync::Semaphore::new(cores), dummy_runs: AtomicU64::new(0) }
    }

    fn tag(&self, kind: Kind, id: &str, secret: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&[kind as u8]);
        ctx.update(&(id.len() as u64).to_be_bytes());
        ctx.update(id.as_bytes());
        ctx.update(secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Does `secret` match the argon2id `phc` hash of client or user `id`? Constant-time either way.
    pub async fn verify(&self, kind: Kind, id: &str, secret: &str, phc: &str) -> bool {
        let tag = self.tag(kind, id, secret);
        if let Some(hash) = self.verified.get(&tag) {
            // The hash may have changed since (secret rotation): only the same hash counts.
            if bool::from(hash.as_bytes().ct_eq(phc.as_bytes())) {
                return true;
            }
        }
        let ok = self.verify_uncached(secret, phc).await;
        if ok {
            self.verified.insert(tag, Arc::from(phc));
        }
        ok
    }

    /// A full verification that cannot succeed, costing what a real one costs: for a name
    /// that does not exist.
    pub async fn verify_dummy(&self, secret: &str) {
        self.dummy_runs.fetch_add(1, Ordering::Relaxed);
        self.verify_uncached(secret, DUMMY_HASH).await;
    }

    /// How many dummy verifications ran.
    pub fn dummy_runs(&self) -> u64 {
        self.dummy_runs.load(Ordering::Relaxed)
    }

    /// A full argon2 verification on the blocking pool, within the concurrency bound.
    pub async fn verify_uncached(&self, secret: &str, phc: &str) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else { return false };
        let (secret, phc) = (secret.to_string(), phc.to_string());
        tokio::task::spawn_blocking(move || verify_argon2(&secret, &phc)).await.unwrap_or(false)
    }
}

/// argon2's own comparison of the derived output is constant-time.
pub fn verify_argon2(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(secret.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// Credentials as presented, before any lookup.
pub(crate) struct Presented {
    pub(crate) client_id: String,
    pub(crate) secret: Option<String>,
    pub(crate) basic: bool,
}

/// Parse `Authorization: Basic` if present. Other schemes are not client authentication.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let bad = || OAuthError::InvalidClient { basic: true };
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, rest)) = value.split_once(' ') else { return Ok(None) };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    // RFC 6749 §2.3.1: both halves are form-url-encoded before Basic encoding.
    let unform = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8().map(|c| c.into_owned());
    Ok(Some((unform(id).map_err(|_| bad())?, unform(secret).map_err(|_| bad())?)))
}

pub(crate) fn presented(headers: &HeaderMap, params: &Params) -> Result<Presented, OAuthError> {
    match basic_credentials(headers)? {
        Some((id, secret)) => {
            if params.get("client_secret").is_some() {
                return Err(BadRequest::TwoClientAuthMethods.into());
            }
            if params.get("client_id").is_some_and(|body_id| body_id != id) {
                return Err(BadRequest::Invalid("client_id".into()).into());
            }
            Ok(Presented { client_id: id, secret: Some(secret), basic: true })
        }
        None => {
            let client_id = params.get("client_id").ok_or(OAuthError::InvalidClient { basic: false })?;
            Ok(Presented {
                client_id: client_id.to_string(),
                secret: params.get("client_secret").map(str::to_string),
                basic: false,
            })
        }
    }
}

/// Authenticate the client of a token request against the configuration in force.
/// A public client (no secret configured) is identified, not authenticated; grants
/// that need a confidential client are refused to public ones by validation.
/// A client with too many recent failures is refused before its secret is verified.
///
/// An unknown or disabled client id that comes with a secret is treated like a known one
/// with a wrong secret: the same failure budget (keyed by the id as given) and a dummy
/// argon2 verification, so neither the answer, the 429 nor the time taken tells which ids exist.
pub async fn authenticate(
    gw: &Gateway,
    rt: &Runtime,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Arc<Client>, OAuthError> {
    let p = presented(headers, params)?;
    let fail = OAuthError::InvalidClient { basic: p.basic };
    let limits = &rt.config.rate_limit;
    let client = match rt.config.clients.get(&p.client_id) {
        Some(c) if c.enabled => c,
        known => {
            if known.is_some() {
                tracing::debug!(client_id = %p.client_id, "disabled client");
            } else {
                // Not the presented id: people paste secrets into the wrong field.
                tracing::debug!("unknown client");
            }
            if let Some(secret) = &p.secret {
                gw.limiter.reserve_client(limits, &p.client_id).map_err(OAuthError::RateLimited)?;
                gw.secrets.verify_dummy(secret).await;
            }
            return Err(fail);
        }
    };
    match (&client.auth, &p.secret) {
        (ClientAuth::Confidential { secret_hash: hash }, Some(secret)) => {
            gw.limiter.reserve_client(limits, &client.id).map_err(OAuthError::RateLimited)?;
            if !gw.secrets.verify(Kind::Client, &client.id, secret, hash).await {
                tracing::debug!(client_id = %p.client_id, "wrong client secret");
                return Err(fail);
            }
            gw.limiter.release_client(limits, &client.id);
        }
        (ClientAuth::Public, None) => {}
        // A secret offered by a public client: as for an unknown id.
        (ClientAuth::Public, Some(secret)) => {
            gw.limiter.reserve_client(limits, &client.id).map_err(OAuthError::RateLimited)?;
            gw.secrets.verify_dummy(secret).await;
            return Err(fail);
        }
        // A confidential client without its secret.
        (ClientAuth::Confidential { .. }, None) => return Err(fail),
    }
    Ok(client.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn basic_halves_are_form_decoded() {
        let enc = base64::engine::general_purpose::STANDARD.encode("my%20app:s%3Acret+x");
        let got = basic_credentials(&basic(&format!("basic {enc}"))).unwrap().unwrap();
        assert_eq!(got, ("my app".to_string(), "s:cret x".to_string()));
    }

    #[test]
    fn garbage_basic_is_invalid_client() {
        assert_eq!(basic_credentials(&basic("Basic !!!")), Err(OAuthError::InvalidClient { basic: true }));
        assert_eq!(basic_credentials(&basic("Bearer abc")), Ok(None));
    }
}
