//! RFC 6749 §4.4: the client acts on its own behalf (or as the user linked to it).
//!
//! A linked user must be an active `[[user]]`: a disabled or removed one stops the client
//! getting tokens that act as them (as their own tokens stop working). The tokens carry
//! `gty: client_credentials` either way, so they are never mistaken for a user's consent.

use super::{CLIENT_CREDENTIALS, Issue, TokenResponse, issue_tokens, new_family, resolve_scopes};
use crate::config::Client;
use crate::oauth::error::{BadGrant, OAuthError};
use crate::oauth::params::Params;
use crate::oauth::users;
use crate::state::{Gateway, Runtime};
use crate::tokens::binding::Binding;

/// §4.4.2: only `scope` is read; the client is already authenticated.
pub async fn grant(
    gw: &Gateway,
    rt: &Runtime,
    client: &Client,
    params: &Params,
    binding: Option<&Binding>,
    now: u64,
) -> Result<TokenResponse, OAuthError> {
    let scopes = resolve_scopes(client, params.get("scope"))?;
    let audience = crate::oauth::audience::requested(&rt.config, params)?;
    if let Some(user) = client.user.as_deref()
        && !users::is_active(rt, user)
    {
        tracing::warn!(client_id = %client.id, "client_credentials refused: the client's linked user is disabled or not configured");
        return Err(BadGrant::LinkedUser.into());
    }
    let subject = client.user.as_deref().unwrap_or(&client.id);
    // §4.4.3 says a refresh token SHOULD NOT be issued here; only on explicit opt-in.
    let family = client.refresh_on_client_credentials.then(new_family);
    let what = Issue {
        client,
        subject,
        // The linked user is who the token speaks for, not a resource owner who logged in:
        // its refresh tokens must not depend on a [[user]] entry.
        user: None,
        scopes: &scopes,
        refresh_scopes: &scopes,
        family: family.as_deref(),
        new_refresh: family.is_some(),
        audience: audience.as_deref(),
        gty: Some(CLIENT_CREDENTIALS),
        binding,
    };
    issue_tokens(gw, rt, what, now).await
}
