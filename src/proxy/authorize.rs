//! Phase 3, authorize: the token must carry every scope the route requires.

use super::error::ProxyError;
use crate::config::Route;
use crate::tokens::validate::Principal;

pub fn authorize(route: &Route, principal: &Principal) -> Result<(), ProxyError> {
    if route.scopes.iter().all(|s| principal.has_scope(s)) {
        Ok(())
    } else {
        Err(ProxyError::InsufficientScope(route.scopes.join(" ")))
    }
}
