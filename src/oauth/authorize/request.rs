//! Reading an authorization request (RFC 6749 §4.1.1, §4.2.1, RFC 7636 §4.3): pure, so
//! it can be fuzzed. Errors before the client and its redirect URI are known to be
//! genuine are pages, never redirects (§4.1.2.1).

use std::sync::Arc;

use super::error::{AuthorizeError, Reason, Redirect};
use crate::config::{Client, GrantType};
use crate::oauth::error::{OAuthError, printable};
use crate::oauth::grants::resolve_scopes;
use crate::oauth::params::Params;
use crate::state::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseType {
    Code,
    Token,
}

/// A validated authorization request.
pub(crate) struct AuthRequest {
    pub(crate) client: Arc<Client>,
    pub(crate) response_type: ResponseType,
    pub(crate) redirect_uri: String,
    pub(crate) redirect_uri_given: bool,
    pub(crate) scopes: Vec<String>,
    pub(crate) state: Option<String>,
    pub(crate) code_challenge: Option<String>,
    pub(crate) iss: String,
    /// RFC 8707 `resource`: the audience the code (or implicit token) is bound to.
    pub(crate) audience: Option<String>,
}

impl AuthRequest {
    /// The way back to this client (query or fragment, with state and iss).
    pub(super) fn redirect(&self) -> Redirect {
        Redirect {
            uri: self.redirect_uri.clone(),
            fragment: self.response_type == ResponseType::Token,
            state: self.state.clone(),
            iss: self.iss.clone(),
        }
    }
}

/// RFC 7636 §4.2: the S256 challenge is base64url of 32 bytes: 43 characters.
fn valid_challenge(c: &str) -> bool {
    (43..=128).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

pub(crate) fn parse_request(rt: &Runtime, p: &Params) -> Result<AuthRequest, AuthorizeError> {
    let client_id = p.get("client_id").ok_or(AuthorizeError::NoClient)?;
    let client = match rt.config.clients.get(client_id) {
        Some(c) if c.enabled => c.clone(),
        _ => return Err(AuthorizeError::UnknownClient),
    };
    // §3.1.2.3: exact match against a registered URI; the only one when omitted.
    let (redirect_uri, redirect_uri_given) = match p.get("redirect_uri") {
        Some(given) if client.redirect_uris.iter().any(|r| r == given) => (given.to_string(), true),
        Some(_) => return Err(AuthorizeError::UnregisteredRedirectUri),
        None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
        None => return Err(AuthorizeError::NoRedirectUri),
    };
    let state = p.get("state").map(str::to_string);
    let response_type = p.get("response_type");
    let mut to = Redirect {
        uri: redirect_uri.clone(),
        fragment: response_type == Some("token"),
        state,
        iss: rt.config.issuer.clone(),
    };
    let fail = |to: Redirect, reason: Reason| AuthorizeError::Redirect { to, reason };

    let response_type = match response_type {
        None => return Err(fail(to, Reason::MissingResponseType)),
        Some("code") if client.grants.contains(&GrantType::AuthorizationCode) => ResponseType::Code,
        Some("token") if client.implicit => ResponseType::Token,
        Some("code" | "token") => {
            return Err(fail(to, Reason::UnauthorizedResponseType));
        }
        Some(other) => {
            to.fragment = false;
            let other: String = other.chars().filter(|c| c.is_ascii_graphic()).take(32).collect();
            return Err(fail(to, Reason::UnsupportedResponseType(other)));
        }
    };
    let scopes = match resolve_scopes(&client, p.get("scope")) {
        Ok(s) => s,
        Err(e) => {
            let scope = match e {
                OAuthError::InvalidScope(s) => Some(printable(&s)),
                _ => None,
            };
            return Err(fail(to, Reason::InvalidScope(scope)));
        }
    };
    let audience = match crate::oauth::audience::requested(&rt.config, p) {
        Ok(a) => a,
        Err(_) => return Err(fail(to, Reason::InvalidTarget)),
    };
    let code_challenge = if response_type == ResponseType::Code {
        match (p.get("code_challenge"), p.get("code_challenge_method")) {
            (Some(c), Some("S256")) if valid_challenge(c) => Some(c.to_string()),
            (Some(_), Some("S256")) => {
                return Err(fail(to, Reason::BadChallenge));
            }
            // RFC 7636 §4.3: no method means "plain", which we refuse (RFC 9700 §2.1.1).
            (Some(_), _) => {
                return Err(fail(to, Reason::NotS256));
            }
            (None, Some(_)) => {
                return Err(fail(to, Reason::BadChallenge));
            }
            (None, None) if client.is_public() => {
                return Err(fail(to, Reason::PkceRequired));
            }
            (None, None) => None,
        }
    } else {
        None
    };
    Ok(AuthRequest {
        client,
        response_type,
        redirect_uri,
        redirect_uri_given,
        scopes,
        state: to.state,
        code_challenge,
        iss: to.iss,
        audience,
    })
}
