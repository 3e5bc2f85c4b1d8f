//! Operator blocks in force in this process (issue 16.5): a `jti` or a `sub`, of one issuer
//! or of any, refused on every request, cached verdict or not. The store holds the blocks
//! (so they survive a restart) and tells the other replicas; this is the copy each request
//! reads. Blocks are few (an operator makes each by hand), so the whole set is held; when
//! there is none, the check is one atomic load.

use crate::metrics::BlockStats;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::store::{Block, BlockKey, BlockKind};

/// Lapsed blocks are forgotten when one is added while more values than this are held.
const PRUNE_ABOVE: usize = 1024;

/// One block of a value: its issuer (`None`: any) and when it lapses (`u64::MAX`: never).
type Entries = Vec<(Option<Box<str>>, u64)>;

#[derive(Default)]
struct Maps {
    jti: HashMap<Box<str>, Entries>,
    sub: HashMap<Box<str>, Entries>,
}

impl Maps {
    fn of(&mut self, kind: BlockKind) -> &mut HashMap<Box<str>, Entries> {
        match kind {
            BlockKind::Jti => &mut self.jti,
            BlockKind::Sub => &mut self.sub,
        }
    }

    fn insert(&mut self, b: &Block) {
        let until = b.expires_at.unwrap_or(u64::MAX);
        let entries = self.of(b.key.kind).entry(b.key.value.as_str().into()).or_default();
        let iss = b.key.iss.as_deref();
        match entries.iter_mut().find(|(i, _)| i.as_deref() == iss) {
            Some(entry) => entry.1 = until,
            None => entries.push((iss.map(Into::into), until)),
        }
    }

    fn remove(&mut self, key: &BlockKey) {
        let map = self.of(key.kind);
        if let Some(entries) = map.get_mut(key.value.as_str()) {
            entries.retain(|(i, _)| i.as_deref() != key.iss.as_deref());
            if entries.is_empty() {
                map.remove(key.value.as_str());
            }
        }
    }

    /// Forget lapsed blocks.
    fn prune(&mut self, now: u64) {
        for map in [&mut self.jti, &mut self.sub] {
            map.retain(|_, entries| {
                entries.retain(|(_, until)| *until > now);
                !entries.is_empty()
            });
        }
    }

    fn is_empty(&self) -> bool {
        self.jti.is_empty() && self.sub.is_empty()
    }
}

/// Does a block in `entries` cover a token of issuer `iss` at `now`?
fn covers(entries: Option<&Entries>, iss: &str, now: u64) -> bool {
    entries.is_some_and(|e| e.iter().any(|(i, until)| *until > now && i.as_deref().is_none_or(|i| i == iss)))
}

/// The blocks this process enforces, and how many requests they refused.
#[derive(Default)]
pub(super) struct Blocks {
    maps: RwLock<Maps>,
    /// Whether `maps` may hold anything: lets every request skip the lock in the usual case.
    any: AtomicBool,
    refused_jti: AtomicU64,
    refused_sub: AtomicU64,
}

impl Blocks {
    /// Which block, if any, stops a token of `iss` with `jti` for `sub` at `now`; counted.
    pub(super) fn check(&self, iss: &str, jti: &str, sub: &str, now: u64) -> Option<BlockKind> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        if covers(maps.jti.get(jti), iss, now) {
            self.refused_jti.fetch_add(1, Ordering::Relaxed);
            return Some(BlockKind::Jti);
        }
        if covers(maps.sub.get(sub), iss, now) {
            self.refused_sub.fetch_add(1, Ordering::Relaxed);
            return Some(BlockKind::Sub);
        }
        None
    }

    /// Is a token of `iss` with `jti` for `sub` blocked at `now`? Not counted (introspection).
    pub(super) fn covers(&self, iss: &str, jti: &str, sub: &str, now: u64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        covers(maps.jti.get(jti), iss, now) || covers(maps.sub.get(sub), iss, now)
    }

    /// Add or replace one block; lapsed ones are dropped first once there are many.
    pub(super) fn insert(&self, b: &Block, now: u64) {
        let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
        if maps.jti.len() + maps.sub.len() >= PRUNE_ABOVE {
            maps.prune(now);
        }
        maps.insert(b);
        self.any.store(true, Ordering::Release);
    }

    pub(super) fn remove(&self, key: &BlockKey) {
        let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
        maps.remove(key);
        self.any.store(!maps.is_empty(), Ordering::Release);
    }

    /// Put exactly `all` in force (a load from the store), lapsed ones left out.
    pub(super) fn replace(&self, all: &[Block], now: u64) {
        let mut fresh = Maps::default();
        for b in all.iter().filter(|b| b.live(now)) {
            fresh.insert(b);
        }
        let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
        *maps = fresh;
        self.any.store(!maps.is_empty(), Ordering::Release);
    }

    pub(super) fn stats(&self, now: u64) -> BlockStats {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        let live = |m: &HashMap<Box<str>, Entries>| {
            m.values().flat_map(|e| e.iter()).filter(|(_, until)| *until > now).count() as u64
        };
        BlockStats {
            refused_jti: self.refused_jti.load(Ordering::Relaxed),
            refused_sub: self.refused_sub.load(Ordering::Relaxed),
            jti_blocks: live(&maps.jti),
            sub_blocks: live(&maps.sub),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(kind: BlockKind, value: &str, iss: Option<&str>, expires_at: Option<u64>) -> Block {
        Block {
            key: BlockKey { kind, value: value.into(), iss: iss.map(Into::into) },
            expires_at,
            created_at: 0,
            reason: None,
        }
    }

    #[test]
    fn blocks_match_by_kind_value_issuer_and_time() {
        let b = Blocks::default();
        assert_eq!(b.check("https://a", "j1", "alice", 10), None, "empty: nothing blocked");
        b.insert(&block(BlockKind::Jti, "j1", None, Some(100)), 10);
        b.insert(&block(BlockKind::Sub, "alice", Some("https://a"), None), 10);
        assert_eq!(b.check("https://a", "j1", "bob", 10), Some(BlockKind::Jti));
        assert_eq!(b.check("https://b", "j1", "bob", 10), Some(BlockKind::Jti), "any issuer");
        assert_eq!(b.check("https://a", "j1", "bob", 100), None, "lapsed");
        assert_eq!(b.check("https://a", "j2", "alice", 10), Some(BlockKind::Sub));
        assert_eq!(b.check("https://b", "j2", "alice", 10), None, "scoped to another issuer");
        assert_eq!(b.check("https://a", "j2", "Alice", 10), None, "byte for byte");
        assert_eq!(b.check("https://a", "alice", "j1", 10), None, "a jti block is not a sub block");
        assert_eq!(b.stats(10).refused_jti, 2);
        assert_eq!(b.stats(10).refused_sub, 1);

        // A second block of the same value for another issuer; removing one keeps the other.
        b.insert(&block(BlockKind::Sub, "alice", Some("https://b"), None), 10);
        b.remove(&BlockKey { kind: BlockKind::Sub, value: "alice".into(), iss: Some("https://a".into()) });
        assert_eq!(b.check("https://a", "j2", "alice", 10), None);
        assert_eq!(b.check("https://b", "j2", "alice", 10), Some(BlockKind::Sub));
        assert_eq!((b.stats(10).jti_blocks, b.stats(10).sub_blocks), (1, 1));

        b.replace(&[block(BlockKind::Jti, "j9", None, Some(5))], 10);
        assert!(!b.any.load(Ordering::Acquire), "only lapsed blocks: nothing held");
        assert!(!b.covers("https://b", "j2", "alice", 10));
    }

    #[test]
    fn lapsed_blocks_are_forgotten_once_there_are_many() {
        let b = Blocks::default();
        for i in 0..PRUNE_ABOVE {
            b.insert(&block(BlockKind::Jti, &format!("j{i}"), None, Some(20)), 10);
        }
        b.insert(&block(BlockKind::Sub, "alice", None, None), 30);
        let maps = b.maps.read().unwrap();
        assert_eq!((maps.jti.len(), maps.sub.len()), (0, 1));
    }
}
