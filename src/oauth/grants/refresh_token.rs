//! RFC 6749 §6 with rotation (RFC 9700 §4.14.2): every use spends the refresh token and
//! returns a new one; presenting a spent one revokes the whole family — unless it was spent
//! less than the client's `refresh_reuse_interval` ago (two threads, or a retry after a
//! lost answer), which gets a sibling: a new refresh token in the same family. Only hashes
//! are stored, so the successor itself cannot be handed out again; a sibling is as good to
//! the client, and revoking the family still revokes both. A confidential client may opt
//! out of rotation (`rotate_refresh_tokens = false`): its refresh token then keeps working
//! until it expires.

use super::revocation::{Reason, Revoke, revoke};
use super::{CLIENT_CREDENTIALS, Extra, TokenResponse, scopes_within, sign_with};
use crate::config::Client;
use crate::oauth::error::{BadGrant, OAuthError};
use crate::oauth::params::Params;
use crate::oauth::users;
use crate::state::{Gateway, Runtime};
use crate::store::{IssuedAccess, Rotate, Rotation};
use crate::tokens::binding::Binding;
use crate::tokens::validate::check_holder;
use crate::tokens::{random_token, sha256};

fn invalid() -> OAuthError {
    OAuthError::InvalidGrant(BadGrant::RefreshToken)
}

/// §6: the requested scope may narrow the original grant, never widen it; and a scope the
/// operator has since taken from the client is gone from its refresh tokens too. No scope
/// requested means all the grant still allows.
pub fn refreshed_scopes(
    granted: &[String],
    client_scopes: &[String],
    requested: Option<&str>,
) -> Result<Vec<String>, OAuthError> {
    let allowed: Vec<String> = granted.iter().filter(|s| client_scopes.contains(s)).cloned().collect();
    scopes_within(&allowed, &allowed, requested)
}

pub async fn grant(
    gw: &Gateway,
    rt: &Runtime,
    client: &Client,
    params: &Params,
    binding: Option<&Binding>,
    now: u64,
) -> Result<TokenResponse, OAuthError> {
    let presented = sha256(params.require("refresh_token")?.as_bytes());
    let Some(stored) = gw.store.get_refresh(presented, now).await? else { return Err(invalid()) };
    let current = &stored.grant;
    if current.client_id != client.id {
        return Err(invalid());
    }
    // A bound refresh token (a public client's) is honoured only with its key.
    if !crate::oauth::binding::refresh_allowed(current.binding.as_ref(), binding) {
        tracing::warn!(security_event = "refresh_binding_mismatch", client_id = %client.id, "bound refresh token presented without its key");
        return Err(invalid());
    }
    let scopes = refreshed_scopes(&current.scopes, &client.scopes, params.get("scope"))?;
    let audience = crate::oauth::audience::within_grant(&rt.config, current.audience.as_deref(), params)?;
    // The holder rule of the proxy path and introspection: the user enabled, and for a
    // client_credentials grant (no user in it) acting as a linked user, the link in force.
    let holder = check_holder(&rt.config, &client.id, &current.subject, current.user.is_none());
    // Issued before the client was disabled or its secret rotated: void for good.
    let client_reset = gw.validator.check_not_before(&client.id, current.issued_at).is_err();
    if client_reset {
        let revoked = revoke(gw, Revoke::Family(&current.family), Reason::ClientReset).await?;
        tracing::warn!(security_event = "refresh_family_revoked", client_id = %client.id, revoked, "refresh token issued before its client was reset; its family is revoked");
        return Err(invalid());
    }
    if holder.is_err() || current.user.as_deref().is_some_and(|u| !users::is_active(rt, u)) {
        // The user was disabled or removed: the family dies for good (re-enabling the user
        // does not bring back a refresh token that met the block), its access tokens too.
        let revoked = revoke(gw, Revoke::Family(&current.family), Reason::UserInactive).await?;
        tracing::warn!(security_event = "refresh_family_revoked", client_id = %client.id, revoked, "refresh token of an inactive user; its family is revoked");
        return Err(invalid());
    }
    // Sign first: rotation and linking the new access token to the family are one atomic
    // store step, so nothing after it can fail and strand the client with a spent token.
    // No user in the grant: it came from client_credentials, and so does this token.
    let gty = current.user.is_none().then_some(CLIENT_CREDENTIALS);
    let token = sign_with(rt, client, &current.subject, &scopes, audience.as_deref(), Extra { gty, binding }, now)?;
    let access = IssuedAccess { jti: token.jti.clone(), expires_at: token.expires_at };
    if !client.rotate_refresh_tokens && !client.is_public() && !stored.spent {
        // RFC 6749 §6: no new refresh token; the presented one stays the client's. Linking
        // revokes the access token at once if the family was revoked meanwhile.
        gw.store.add_access(&current.family, access).await?;
        return Ok(TokenResponse::new(token, None));
    }
    let next = random_token(32);
    let rotation = Rotation {
        new: sha256(next.as_bytes()),
        new_expires_at: now + rt.config.refresh_token_lifetime.as_secs(),
        access,
        reuse_interval: client.refresh_reuse_interval.as_secs(),
    };
    match gw.store.rotate_refresh(presented, &client.id, rotation, now).await? {
        Rotate::Rotated(_) => Ok(TokenResponse::new(token, Some(next))),
        Rotate::Sibling(_) => {
            tracing::info!(client_id = %client.id, "spent refresh token presented within the reuse interval; a sibling is issued");
            Ok(TokenResponse::new(token, Some(next)))
        }
        Rotate::Reused { revoked } => {
            tracing::warn!(security_event = "refresh_token_reuse", client_id = %client.id, revoked = revoked.len(), "refresh token reused; its family is revoked");
            revoke(gw, Revoke::Revoked(revoked), Reason::RefreshReuse).await?;
            Err(invalid())
        }
        Rotate::ClientReset => {
            // The store knows of a reset this replica has not heard of yet.
            let revoked = revoke(gw, Revoke::Family(&current.family), Reason::ClientReset).await?;
            tracing::warn!(security_event = "refresh_family_revoked", client_id = %client.id, revoked, "refresh token issued before its client was reset; its family is revoked");
            Err(invalid())
        }
        Rotate::Invalid => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &str) -> Vec<String> {
        v.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn a_refresh_may_narrow_but_not_widen() {
        let (granted, client) = (strings("read write"), strings("read write admin"));
        assert_eq!(refreshed_scopes(&granted, &client, None), Ok(granted.clone()));
        assert_eq!(refreshed_scopes(&granted, &client, Some("")), Ok(granted.clone()));
        assert_eq!(refreshed_scopes(&granted, &client, Some("write")), Ok(strings("write")));
        // The client may have admin, but this grant never had it.
        assert_eq!(
            refreshed_scopes(&granted, &client, Some("read admin")),
            Err(OAuthError::InvalidScope("admin".into()))
        );
    }

    #[test]
    fn a_scope_taken_from_the_client_is_gone_from_its_refresh_tokens() {
        let (granted, client) = (strings("read write"), strings("read"));
        assert_eq!(refreshed_scopes(&granted, &client, None), Ok(strings("read")));
        assert_eq!(refreshed_scopes(&granted, &client, Some("write")), Err(OAuthError::InvalidScope("write".into())));
    }
}
