//! RFC 6749 §4.4: the client acts on its own behalf (or as the user linked to it).

use super::resolve_scopes;
use crate::config::Client;
use crate::oauth::error::OAuthError;
use crate::oauth::params::Params;
use crate::oauth::token::TokenResponse;
use crate::state::Runtime;
use crate::tokens::issue::{Grant, issue};

/// §4.4.2: only `scope` is read; the client is already authenticated as confidential.
pub fn grant(rt: &Runtime, client: &Client, params: &Params, now: u64) -> Result<TokenResponse, OAuthError> {
    if client.secret_hash.is_none() {
        return Err(OAuthError::UnauthorizedClient);
    }
    let scopes = resolve_scopes(client, params.get("scope"))?;
    let subject = client.user.as_deref().unwrap_or(&client.id);
    let grant = Grant {
        issuer: &rt.config.issuer,
        audience: &rt.config.audience,
        client_id: &client.id,
        subject,
        scopes: &scopes,
        lifetime_secs: client.token_lifetime.as_secs(),
    };
    let token = issue(&rt.keys, &grant, now).map_err(|e| {
        tracing::error!(error = %e, "signing an access token failed");
        OAuthError::ServerError
    })?;
    Ok(TokenResponse::new(token, None))
}
