//! Resource-owner authentication, shared by the password grant and the login form.

use std::sync::Arc;

use super::client_auth::Kind;
use crate::config::User;
use crate::ratelimit::Throttled;
use crate::state::{Gateway, Runtime};

/// The user if `username` exists, is enabled and `password` is theirs; `None` otherwise,
/// without saying which of these failed. Refused unchecked while `username` has too many
/// recent failures (known or not, so a refusal tells nothing about who exists).
pub async fn authenticate(
    gw: &Gateway,
    rt: &Runtime,
    username: &str,
    password: &str,
) -> Result<Option<Arc<User>>, Throttled> {
    let limits = &rt.config.rate_limit;
    gw.limiter.reserve_user(limits, username).await?;
    let user = match rt.config.users.get(username) {
        Some(user)
            if user.enabled
                && let Some(hash) = &user.password_hash =>
        {
            gw.secrets.verify(Kind::User, &user.username, password, hash).await.then(|| user.clone())
        }
        _ => {
            // "No such user", a linked-only user (no password) and "wrong password" take
            // the same time.
            gw.secrets.verify_dummy(password).await;
            None
        }
    };
    if user.is_some() {
        gw.limiter.release_user(limits, username).await;
    }
    Ok(user)
}

/// Is `username` still someone who may hold tokens (exists and enabled)?
pub fn is_active(rt: &Runtime, username: &str) -> bool {
    rt.config.users.get(username).is_some_and(|u| u.enabled)
}
