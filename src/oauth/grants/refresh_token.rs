//! RFC 6749 §6 with rotation (RFC 9700 §4.14.2): every use spends the refresh token and
//! returns a new one; presenting a spent one revokes the whole family.

use super::sign;
use crate::config::{Client, split_scopes};
use crate::oauth::error::OAuthError;
use crate::oauth::params::Params;
use crate::oauth::token::TokenResponse;
use crate::oauth::users;
use crate::state::{Gateway, Runtime};
use crate::store::{IssuedAccess, Rotate};
use crate::tokens::{random_token, sha256};

fn invalid() -> OAuthError {
    OAuthError::InvalidGrant("The refresh token is invalid.".into())
}

pub async fn grant(
    gw: &Gateway,
    rt: &Runtime,
    client: &Client,
    params: &Params,
    now: u64,
) -> Result<TokenResponse, OAuthError> {
    let presented = sha256(params.require("refresh_token")?.as_bytes());
    let Some(current) = gw.store.get_refresh(presented, now).await? else { return Err(invalid()) };
    let current = current.grant;
    if current.client_id != client.id {
        return Err(invalid());
    }
    // §6: the requested scope may narrow the original grant, never widen it; and a scope the
    // operator has since taken from the client is gone from its refresh tokens too.
    let allowed: Vec<String> = current.scopes.iter().filter(|s| client.scopes.contains(s)).cloned().collect();
    let scopes = match params.get("scope").map(split_scopes) {
        None => allowed.clone(),
        Some(requested) if requested.is_empty() => allowed.clone(),
        Some(requested) => {
            if let Some(bad) = requested.iter().find(|s| !allowed.contains(s)) {
                return Err(OAuthError::InvalidScope(bad.clone()));
            }
            requested
        }
    };
    if current.user.as_deref().is_some_and(|u| !users::is_active(rt, u)) {
        // The user was disabled or removed: the family dies for good (re-enabling the user
        // does not bring back a refresh token that met the block), its access tokens too.
        let revoked = gw.store.revoke_family(&current.family).await?;
        tracing::info!(client_id = %client.id, revoked = revoked.len(), "refresh token of an inactive user; its family is revoked");
        gw.revoke_access(&revoked).await;
        gw.metrics.revoked("refresh_family", "user_inactive", 1);
        gw.metrics.revoked("access_token", "user_inactive", revoked.len() as u64);
        return Err(invalid());
    }
    // Sign first: rotation and linking the new access token to the family are one atomic
    // store step, so nothing after it can fail and strand the client with a spent token.
    let token = sign(rt, client, &current.subject, &scopes, now)?;
    let next = random_token(32);
    let next_expiry = now + rt.config.refresh_token_lifetime.as_secs();
    let access = IssuedAccess { jti: token.jti.clone(), expires_at: token.expires_at };
    match gw.store.rotate_refresh(presented, &client.id, sha256(next.as_bytes()), next_expiry, access, now).await? {
        Rotate::Rotated(_) => Ok(TokenResponse::new(token, Some(next))),
        Rotate::Reused { revoked } => {
            tracing::warn!(client_id = %client.id, revoked = revoked.len(), "refresh token reused; its family is revoked");
            gw.revoke_access(&revoked).await;
            gw.metrics.revoked("refresh_family", "refresh_reuse", 1);
            gw.metrics.revoked("access_token", "refresh_reuse", revoked.len() as u64);
            Err(invalid())
        }
        Rotate::Invalid => Err(invalid()),
    }
}
