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
