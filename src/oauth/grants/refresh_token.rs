//! RFC 6749 §6 with rotation (RFC 9700 §4.14.2): every use spends the refresh token and
//! returns a new one; presenting a spent one revokes the whole family.

use super::{Issue, issue_tokens};
use crate::config::{Client, split_scopes};
use crate::oauth::error::OAuthError;
use crate::oauth::params::Params;
use crate::oauth::token::TokenResponse;
use crate::oauth::users;
use crate::state::{Gateway, Runtime};
use crate::store::Rotate;
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
    if current.client_id != client.id {
        return Err(invalid());
    }
    // §6: the requested scope may narrow the original grant, never widen it.
    let scopes = match params.get("scope") {
        None => current.scopes.clone(),
        Some(s) => {
            let requested = split_scopes(s);
            if let Some(bad) = requested.iter().find(|s| !current.scopes.contains(s)) {
                return Err(OAuthError::InvalidScope(bad.clone()));
            }
            if requested.is_empty() { current.scopes.clone() } else { requested }
        }
    };
    if current.user.as_deref().is_some_and(|u| !users::is_active(rt, u)) {
        return Err(invalid());
    }
    let next = random_token(32);
    let next_expiry = now + rt.config.refresh_token_lifetime.as_secs();
    let spent = match gw.store.rotate_refresh(presented, &client.id, sha256(next.as_bytes()), next_expiry, now).await? {
        Rotate::Rotated(spent) => spent,
        Rotate::Reused { revoked } => {
            tracing::warn!(client_id = %client.id, revoked = revoked.len(), "refresh token reused; its family is revoked");
            gw.revoke_access(&revoked).await;
            gw.metrics.revoked("refresh_family", "refresh_reuse", 1);
            gw.metrics.revoked("access_token", "refresh_reuse", revoked.len() as u64);
            return Err(invalid());
        }
        Rotate::Invalid => return Err(invalid()),
    };
    let what = Issue {
        client,
        subject: &spent.subject,
        user: spent.user.as_deref(),
        scopes: &scopes,
        refresh_scopes: &spent.scopes,
        family: Some(&spent.family),
        new_refresh: false,
        rotated_refresh: Some(next),
    };
    issue_tokens(gw, rt, what, now).await
}
