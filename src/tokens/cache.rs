//! The validation cache: verified tokens by the SHA-256 of their bytes, bounded, each
//! entry served only until its token expires.
//!
//! A purpose-built map rather than a general cache: a hit is one short lock, no hashing
//! (the key is already a uniform digest) and no bookkeeping; an entry costs its map slot,
//! one 32-byte slot in an insertion-order ring and the shared [`Principal`] — about a
//! third of what a general-purpose cache with per-entry expiry needs. Eviction is first
//! in, first out: with one token lifetime per client, insertion order is close to expiry
//! order, so the oldest entry is also the next to lapse.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use super::LEEWAY_SECS;
use super::principal::Principal;

/// A SHA-256 digest as a map key. Its bytes are already uniformly distributed, so the
/// hash is simply eight of them (only verified tokens are inserted, so a caller cannot
/// choose keys to collide).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; 32]);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Passes the one `u64` a [`Digest`] writes straight through.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Digest`; fold anything else in anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<DigestHasher>>;

struct Shard {
    map: DigestMap<Arc<Principal>>,
    /// Keys in insertion order; may hold keys already gone from `map` (never the reverse).
    order: VecDeque<Digest>,
}

/// Shards keep lock hold times independent across worker threads.
const SHARDS: usize = 16;

pub struct VerdictCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

/// What a lookup found.
pub enum Lookup {
    Hit(Arc<Principal>),
    /// The token was cached but has expired; the entry is gone now.
    Expired,
    Miss,
}

impl VerdictCache {
    pub fn new(max_entries: u64) -> Self {
        let max = usize::try_from(max_entries).unwrap_or(usize::MAX);
        // Digests spread evenly but not exactly: a little room per shard lets `max_entries`
        // tokens fit without evicting (the cache may hold up to ~3% more).
        let even = max.div_ceil(SHARDS).max(1);
        let per_shard = even.saturating_add(even / 32 + 8);
        let shards =
            (0..SHARDS).map(|_| Mutex::new(Shard { map: DigestMap::default(), order: VecDeque::new() })).collect();
        VerdictCache { shards, per_shard }
    }

    fn shard(&self, key: &Digest) -> MutexGuard<'_, Shard> {
        // Other bytes than the map's hash, so every shard's map still sees uniform hashes.
        let i = usize::from(key.0[8]) % SHARDS;
        // A poisoned lock only means a panic elsewhere mid-operation; the map stays consistent
        // because every operation on it is a single call.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached verdict for `key`, if it has not expired at `now`.
    pub fn get(&self, key: &Digest, now: u64) -> Lookup {
        let mut shard = self.shard(key);
        let Some(p) = shard.map.get(key) else { return Lookup::Miss };
        if p.expires_at().saturating_add(LEEWAY_SECS) <= now {
            shard.map.remove(key);
            return Lookup::Expired;
        }
        Lookup::Hit(p.clone())
    }

    pub fn insert(&self, key: Digest, principal: Arc<Principal>, now: u64) {
        let per_shard = self.per_shard;
        let mut guard = self.shard(&key);
        let shard = &mut *guard;
        // Lapsed entries at the front go first, then the oldest while the shard is full.
        while let Some(front) = shard.order.front() {
            let lapsed = shard.map.get(front).is_none_or(|p| p.expires_at().saturating_add(LEEWAY_SECS) <= now);
            if !lapsed && shard.order.len() < per_shard {
                break;
            }
            if let Some(old) = shard.order.pop_front() {
                shard.map.remove(&old);
            }
        }
        if shard.map.insert(key, principal).is_none() {
            shard.order.push_back(key);
        }
    }

    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            s.map = DigestMap::default();
            s.order = VecDeque::new();
        }
    }

    /// Entries held, lapsed ones not yet dropped included (they are never served, and go
    /// when looked up or when they reach the front of their shard's ring).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(jti: &str, expires_at: u64) -> Arc<Principal> {
        Arc::new(Principal::new("svc", "alice", "read write", jti, "k1", "aud", [7; 32], expires_at).unwrap())
    }

    fn key(i: u32) -> Digest {
        Digest(crate::tokens::sha256(&i.to_be_bytes()))
    }

    #[test]
    fn hit_then_expired_then_gone() {
        let c = VerdictCache::new(100);
        c.insert(key(1), principal("j1", 1000), 900);
        match c.get(&key(1), 900) {
            Lookup::Hit(p) => {
                assert_eq!((p.client_id(), p.subject(), p.scope(), p.token_id()), ("svc", "alice", "read write", "j1"));
                assert_eq!(p.user(), Some("alice"));
            }
            _ => panic!("expected a hit"),
        }
        assert!(matches!(c.get(&key(1), 1000 + LEEWAY_SECS), Lookup::Expired));
        assert!(matches!(c.get(&key(1), 900), Lookup::Miss));
        assert!(matches!(c.get(&key(2), 900), Lookup::Miss));
    }

    #[test]
    fn bounded_and_oldest_first() {
        let c = VerdictCache::new(SHARDS as u64 * 10);
        for i in 0..10_000 {
            c.insert(key(i), principal("j", 10_000), 1);
        }
        let cap = SHARDS * c.per_shard;
        assert!(c.len() <= cap, "{} entries, capacity {cap}", c.len());
        assert!(c.len() >= SHARDS * 10);
        // The newest are still there, the oldest are gone.
        assert!(matches!(c.get(&key(9_999), 1), Lookup::Hit(_)));
        assert!(matches!(c.get(&key(0), 1), Lookup::Miss));
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn lapsed_entries_make_room_first() {
        let c = VerdictCache::new(SHARDS as u64);
        for i in 0..1000 {
            c.insert(key(i), principal("old", 10), 1);
        }
        // Everything cached has expired by now: each insert drops lapsed entries.
        for i in 1000..1100 {
            c.insert(key(i), principal("new", 10_000), 100);
        }
        assert!(matches!(c.get(&key(1099), 100), Lookup::Hit(_)));
    }
}
