//! One file per grant; each validates its request, then issues through [`issue_tokens`].

pub mod authorization_code;
pub mod client_credentials;
pub mod password;
pub mod refresh_token;
pub mod revocation;

use http::{HeaderValue, Response, header};
use serde::Serialize;

use super::error::OAuthError;
use crate::config::{Client, split_scopes};
use crate::http::{Body, full};
use crate::state::{Gateway, Runtime};
use crate::store::{IssuedAccess, RefreshGrant};
use crate::tokens::binding::Binding;
use crate::tokens::issue::{Grant, IssuedToken, issue_with_gty};
use crate::tokens::{random_token, sha256};

/// The successful token response (RFC 6749 §5.1), plus `expires` (unix time) for clients that want it.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    expires: u64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

impl TokenResponse {
    pub fn new(token: IssuedToken, refresh_token: Option<String>) -> Self {
        TokenResponse {
            access_token: token.access_token,
            token_type: token.token_type,
            expires_in: token.expires_in,
            expires: token.expires_at,
            scope: token.scope,
            refresh_token,
        }
    }

    /// §5.1: JSON, never cached.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = Response::new(full(body));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        resp
    }
}

/// RFC 6749 §3.3: the requested scopes (space or comma separated), or the client's
/// defaults when absent; each one must be among the client's allowed scopes.
pub fn resolve_scopes(client: &Client, requested: Option<&str>) -> Result<Vec<String>, OAuthError> {
    scopes_within(&client.scopes, &client.default_scopes, requested)
}

/// The requested scopes if every one is in `allowed` (else the first that is not, as
/// `invalid_scope`), or `default` when none are requested. New grants pass the client's
/// scopes and defaults; a refresh passes what its grant still allows for both (§6: narrow,
/// never widen).
pub fn scopes_within(
    allowed: &[String],
    default: &[String],
    requested: Option<&str>,
) -> Result<Vec<String>, OAuthError> {
    let requested = requested.map(split_scopes).unwrap_or_default();
    if requested.is_empty() {
        return Ok(default.to_vec());
    }
    match requested.iter().find(|s| !allowed.contains(s)) {
        Some(bad) => Err(OAuthError::InvalidScope(bad.clone())),
        None => Ok(requested),
    }
}

/// The `gty` claim of tokens no user consented to: client_credentials, also when `sub` is
/// the client's linked user. RFC 9068 §2.2 wants `sub` to name the client there; a linked
/// user breaks that on purpose, so the token says how it was minted and a resource server
/// can tell it from one a user authorized (RFC 9700 §4.15). Not `act` (RFC 8693): that
/// claims the subject delegated to the actor, and no user consented here.
pub const CLIENT_CREDENTIALS: &str = "client_credentials";

/// Sign an access token for `subject`, who consented (or is the client itself).
pub fn sign(
    rt: &Runtime,
    client: &Client,
    subject: &str,
    scopes: &[String],
    audience: Option<&str>,
    now: u64,
) -> Result<IssuedToken, OAuthError> {
    sign_with(rt, client, subject, scopes, audience, Extra::default(), now)
}

/// The claims beyond who, what and for whom: how the token was minted, what it is bound to.
#[derive(Default, Clone, Copy)]
pub struct Extra<'a> {
    /// The `gty` claim ([`CLIENT_CREDENTIALS`] or none).
    pub gty: Option<&'static str>,
    /// The key the token is bound to (`cnf`).
    pub binding: Option<&'a Binding>,
}

/// As [`sign`], with the `gty` claim and the binding.
pub fn sign_with(
    rt: &Runtime,
    client: &Client,
    subject: &str,
    scopes: &[String],
    audience: Option<&str>,
    extra: Extra<'_>,
    now: u64,
) -> Result<IssuedToken, OAuthError> {
    let grant = Grant {
        issuer: &rt.config.issuer,
        audience: audience.unwrap_or(&rt.config.audience),
        client_id: &client.id,
        subject,
        scopes,
        lifetime_secs: client.token_lifetime.as_secs(),
        binding: extra.binding,
    };
    issue_with_gty(&rt.keys, &grant, extra.gty, now).map_err(|e| {
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
    /// The audience of the access token and the bound of the refresh token (RFC 8707).
    pub audience: Option<&'a str>,
    /// The `gty` claim ([`CLIENT_CREDENTIALS`] or none).
    pub gty: Option<&'static str>,
    /// The key the access token (and a public client's refresh token) is bound to.
    pub binding: Option<&'a Binding>,
}

/// Sign the access token, store a new refresh token if asked, link the access token to
/// its family (so revoking the family revokes it) and build the response.
pub async fn issue_tokens(gw: &Gateway, rt: &Runtime, what: Issue<'_>, now: u64) -> Result<TokenResponse, OAuthError> {
    let extra = Extra { gty: what.gty, binding: what.binding };
    let token = sign_with(rt, what.client, what.subject, what.scopes, what.audience, extra, now)?;
    let mut refresh = None;
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
                audience: what.audience.map(str::to_string),
                issued_at: now,
                // RFC 8705 §4 / RFC 9449 §5: a public client's refresh token is bound to the
                // same key; a confidential client's is bound to its authentication already.
                binding: what.binding.filter(|_| what.client.is_public()).cloned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_scope_requested_gets_the_default() {
        let (allowed, default) = (strings(&["read", "write"]), strings(&["read"]));
        assert_eq!(scopes_within(&allowed, &default, None), Ok(default.clone()));
        assert_eq!(scopes_within(&allowed, &default, Some("")), Ok(default.clone()));
        assert_eq!(scopes_within(&allowed, &default, Some(" , ")), Ok(default));
    }

    #[test]
    fn requested_scopes_are_kept_in_order_without_duplicates() {
        let allowed = strings(&["read", "write"]);
        assert_eq!(scopes_within(&allowed, &[], Some("write,read write")), Ok(strings(&["write", "read"])));
    }

    #[test]
    fn a_scope_outside_the_allowed_set_is_named() {
        let allowed = strings(&["read"]);
        assert_eq!(
            scopes_within(&allowed, &allowed, Some("read root admin")),
            Err(OAuthError::InvalidScope("root".into()))
        );
        assert_eq!(scopes_within(&[], &[], Some("read")), Err(OAuthError::InvalidScope("read".into())));
    }
}
