//! Resource-owner authentication, shared by the password grant and the login form.

use std::sync::Arc;

use super::client_auth::{Kind, SecretCache};
use crate::config::User;
use crate::state::Runtime;

/// A valid argon2id hash of a random string, verified against when the user does not
/// exist, so that "no such user" and "wrong password" take the same time.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$bfvdNrf2I4dnZKtN8XZqIA$cVSC4XrogpedQjyCA0MATCnO225EByVri6brmsYzpJ4";

/// The user if `username` exists, is enabled and `password` is theirs; `None` otherwise,
/// without saying which of these failed.
pub async fn authenticate(secrets: &SecretCache, rt: &Runtime, username: &str, password: &str) -> Option<Arc<User>> {
    match rt.config.users.get(username) {
        Some(user) if user.enabled => {
            secrets.verify(Kind::User, &user.username, password, &user.password_hash).await.then(|| user.clone())
        }
        _ => {
            secrets.verify_uncached(password, DUMMY_HASH).await;
            None
        }
    }
}

/// Is `username` still someone who may hold tokens (exists and enabled)?
pub fn is_active(rt: &Runtime, username: &str) -> bool {
    rt.config.users.get(username).is_some_and(|u| u.enabled)
}
