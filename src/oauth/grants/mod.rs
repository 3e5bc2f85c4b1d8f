//! One file per grant; each validates its request, then issues through [`issue_tokens`].

pub mod authorization_code;
pub mod client_credentials;
pub mod password;
pub mod refresh_token;

use super::error::OAuthError;
use super::token::TokenResponse;
use crate::config::{Client, split_scopes};
use crate::state::{Gateway, Runtime};
use crate::store::{IssuedAccess, RefreshGrant};
use crate::tokens::issue::{Grant, IssuedToken, issue};
use crate::tokens::{random_token, sha256};

/// RFC 6749 §3.3: the requested scopes (space or comma separated), or the client's
/// defaults when absent; each one must be among the client's allowed scopes.
pub fn resolve_scopes(client: &Client, requested: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested else { return Ok(client.default_scopes.clone()) };
    let scopes = split_scopes(requested);
    if scopes.is_empty() {
        return Ok(client.default_scopes.clone());
    }
    if let Some(bad) = scopes.iter().find(|s| !client.scopes.contains(s)) {
        return Err(OAuthError::InvalidScope(bad.clone()));
    }
    Ok(scopes)
}

/// Sign an access token for `subject`.
pub fn sign(
    rt: &Runtime,
    client: &Client,
    subject: &str,
    scopes: &[String],
    now: u64,
) -> Result<IssuedToken, OAuthError> {
    let grant = Grant {
        issuer: &rt.config.issuer,
        audience: &rt.config.audience,
        client_id: &client.id,
        subject,
        scopes,
        lifetime_secs: client.token_lifetime.as_secs(),
    };
    issue(&rt.keys, &grant, now).map_err(|e| {
        tracing::error!(error = %e, "signing an access token failed");
        OAuthError::ServerError
    })
}

/// What a grant decided to issue.
pub struct Issue<'a> {
    pub client: &'a Client,
    pub subject: &'a str,
    pub user: Option<&'a str>,
    /// Scopes of the access token.
    pub scopes: &'a [String],
    /// Scopes the refresh token may later ask for (the original grant's).
    pub refresh_scopes: &'a [String],
    /// The refresh family the tokens belong to, if any.
    pub family: Option<&'a str>,
    /// Issue a new refresh token in `family`.
    pub new_refresh: bool,
    /// A refresh token already stored by rotation, to return as is.
    pub rotated_refresh: Option<String>,
}

/// Sign the access token, store a new refresh token if asked, link the access token to
/// its family (so revoking the family revokes it) and build the response.
pub async fn issue_tokens(gw: &Gateway, rt: &Runtime, what: Issue<'_>, now: u64) -> Result<TokenResponse, OAuthError> {
    let token = sign(rt, what.client, what.subject, what.scopes, now)?;
    let mut refresh = what.rotated_refresh;
    if let Some(family) = what.family {
        if what.new_refresh {
            let secret = random_token(32);
            let grant = RefreshGrant {
                family: family.to_string(),
                client_id: what.client.id.clone(),
                subject: what.subject.to_string(),
                user: what.user.map(str::to_string),
                scopes: what.refresh_scopes.to_vec(),
                expires_at: now + rt.config.refresh_token_lifetime.as_secs(),
            };
            gw.store.put_refresh(sha256(secret.as_bytes()), grant).await?;
            refresh = Some(secret);
        }
        gw.store.add_access(family, IssuedAccess { jti: token.jti.clone(), expires_at: token.expires_at }).await?;
    }
    Ok(TokenResponse::new(token, refresh))
}

/// A new random refresh family id.
pub fn new_family() -> String {
    random_token(16)
}
