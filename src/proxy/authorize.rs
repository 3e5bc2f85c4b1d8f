//! Phase 3, authorize: the token must carry every scope the route requires.

use super::error::ProxyError;
use crate::tokens::validate::Principal;

pub fn authorize(scopes: &[String], principal: &Principal) -> Result<(), ProxyError> {
    if scopes.iter().all(|s| principal.has_scope(s)) {
        Ok(())
    } else {
        Err(ProxyError::InsufficientScope(scopes.join(" ")))
    }
}
