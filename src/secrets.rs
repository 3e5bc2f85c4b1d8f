//! Verifying argon2id secrets (clients' and users'), and remembering those that verified.
//!
//! Verifying one costs tens of milliseconds by design, so a successful verification is
//! remembered in a bounded cache keyed by an HMAC (with a per-process random key) of the
//! name and the presented secret: the cache never holds anything from which a secret could
//! be recovered offline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use aws_lc_rs::hmac;
use moka::sync::Cache;
use subtle::ConstantTimeEq;

/// Whose secret is being checked; client and user names and the admin API key live in
/// separate namespaces.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Client = 1,
    User = 2,
    /// The admin API key (`[admin] api_key_hash`).
    Admin = 3,
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
