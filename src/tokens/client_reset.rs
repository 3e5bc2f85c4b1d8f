//! Client not-befores (issue 19.8): a client disabled, removed or (opted-in) secret-rotated
//! voids the tokens it held, and enabling it again does not revive them. The validator keeps
//! the times; the gateway sets them from configuration changes and persists them.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Config;

/// Per client, the time at or before which its tokens are void: set when the client is
/// disabled, removed or (optionally) its secret rotated, so enabling it again does not
/// revive what it held before (issue 19.8). Empty in the usual case, and then free.
#[derive(Default)]
pub(super) struct ClientNotBefore {
    map: RwLock<HashMap<Box<str>, u64>>,
    any: AtomicBool,
}

impl ClientNotBefore {
    pub(super) fn get(&self, client_id: &str) -> Option<u64> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(client_id).copied()
    }

    /// Returns whether this raised the time already known (or is the first for the client).
    pub(super) fn set(&self, client_id: &str, at: u64) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let raised = match map.get_mut(client_id) {
            Some(slot) if *slot >= at => false,
            Some(slot) => {
                *slot = at;
                true
            }
            None => {
                map.insert(client_id.into(), at);
                true
            }
        };
        self.any.store(true, Ordering::Release);
        raised
    }
}

/// A not-before read from the store, as this process may use it: never after `now`. One in
/// the future (a replica's clock far ahead, a hand-edited record) would void every token
/// the client is issued until then, and `u64::MAX` would overflow the next issue time, so
/// it is clamped (with an ERROR: the record or a clock needs fixing). `known` is what this
/// process already holds for the client: a future record read again (every re-read) is
/// clamped only the first time, or the not-before would keep moving with the clock and
/// void the client's new tokens at every re-read.
pub fn clamp_not_before(client_id: &str, at: u64, now: u64, known: Option<u64>) -> Option<u64> {
    if at <= now {
        return Some(at);
    }
    if known.is_some() {
        return None;
    }
    tracing::error!(client_id, not_before = at, now, "stored client not-before lies in the future; clamped to now");
    Some(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review 23.8: a stored not-before in the future (or at `u64::MAX`) is clamped to now
    /// once, and not moved again by later re-reads.
    #[test]
    fn a_future_not_before_is_clamped_to_now_once() {
        assert_eq!(clamp_not_before("c", 90, 100, None), Some(90));
        assert_eq!(clamp_not_before("c", 100, 100, Some(50)), Some(100));
        assert_eq!(clamp_not_before("c", u64::MAX, 100, None), Some(100));
        assert_eq!(clamp_not_before("c", u64::MAX, 130, Some(100)), None, "kept as first clamped");
        let nb = ClientNotBefore::default();
        nb.set("c", u64::MAX);
        assert_eq!(nb.get("c"), Some(u64::MAX));
        // Were one set anyway, the next issue time does not overflow.
        let v = crate::tokens::validate::Validator::new(10);
        v.set_client_not_before("c", u64::MAX);
        assert_eq!(v.issue_time("c", 100), u64::MAX);
    }
}

/// What a configuration change means for outstanding tokens (issue 19.8).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientResets {
    /// Clients whose tokens issued until now become void: disabled or removed, or their
    /// secret changed where `secret_rotation_revokes` is set.
    pub void: Vec<String>,
    /// Cached verdicts must go: a client that may hold a cached verdict from before its
    /// reset is (again) enabled, or an enabled client was voided.
    pub clear_cache: bool,
}

/// Compare the client lists of the configuration in force (`None` at start) and the new
/// one. At start every disabled client is voided again (harmless: it has no newer tokens),
/// so a client disabled in a run that the store does not remember stays consistent.
pub fn client_resets(old: Option<&Config>, new: &Config) -> ClientResets {
    let mut out = ClientResets::default();
    let was_enabled = |id: &str| old.and_then(|o| o.clients.get(id)).is_some_and(|c| c.enabled);
    for (id, client) in &new.clients {
        let before = old.and_then(|o| o.clients.get(id));
        let rotated = client.secret_rotation_revokes && before.is_some_and(|b| b.auth != client.auth);
        if !client.enabled && (was_enabled(id) || old.is_none()) {
            out.void.push(id.clone());
        } else if client.enabled && rotated {
            out.void.push(id.clone());
            out.clear_cache = true;
        } else if client.enabled && old.is_some() && !was_enabled(id) {
            out.clear_cache = true;
        }
    }
    if let Some(old) = old {
        out.void.extend(
            old.clients.iter().filter(|(id, c)| c.enabled && !new.clients.contains_key(*id)).map(|(id, _)| id.clone()),
        );
    }
    out.void.sort();
    out
}
