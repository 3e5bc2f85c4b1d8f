//! RFC 6749 §4.3: resource owner password credentials, for confidential clients that
//! the operator allowed to use it.

use super::{Issue, TokenResponse, issue_tokens, new_family, resolve_scopes};
use crate::config::{Client, GrantType};
use crate::oauth::error::OAuthError;
use crate::oauth::params::Params;
use crate::oauth::users;
use crate::state::{Gateway, Runtime};
use crate::tokens::binding::Binding;

pub async fn grant(
    gw: &Gateway,
    rt: &Runtime,
    client: &Client,
    params: &Params,
    binding: Option<&Binding>,
    now: u64,
) -> Result<TokenResponse, OAuthError> {
    let username = params.require("username")?;
    let password = params.require("password")?;
    let scopes = resolve_scopes(client, params.get("scope"))?;
    let audience = crate::oauth::audience::requested(&rt.config, params)?;
    let user = users::authenticate(gw, rt, username, password).await.map_err(OAuthError::RateLimited)?;
    let Some(user) = user else {
        return Err(OAuthError::InvalidUserCredentials);
    };
    let family = client.grants.contains(&GrantType::RefreshToken).then(new_family);
    let what = Issue {
        client,
        subject: &user.username,
        user: Some(&user.username),
        scopes: &scopes,
        refresh_scopes: &scopes,
        family: family.as_deref(),
        new_refresh: family.is_some(),
        audience: audience.as_deref(),
        gty: None,
        binding,
    };
    issue_tokens(gw, rt, what, now).await
}
