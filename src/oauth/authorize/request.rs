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

/// Does `given` name the registered redirect URI `registered`? Byte-for-byte equality,
/// except that for `http://127.0.0.1` and `http://[::1]` the port may differ (RFC 8252
/// §7.3: native apps listen on an ephemeral port). Compared as text, not as a parsed URL,
/// so no spelling a parser would normalise (`127.1`, `%31`, upper case, userinfo, a longer
/// host) can pass for the loopback address. `localhost` is not a loopback literal here
/// (RFC 8252 §8.3): it matches exactly or not at all.
pub(crate) fn redirect_matches(registered: &str, given: &str) -> bool {
    if registered == given {
        return true;
    }
    ["http://127.0.0.1", "http://[::1]"].iter().any(|host| {
        match (registered.strip_prefix(host).and_then(without_port), given.strip_prefix(host).and_then(without_port)) {
            (Some(r), Some(g)) => r == g,
            _ => false,
        }
    })
}

/// What follows a loopback host: an optional `:port` (1-65535, digits only), then the
/// path and query, which must start with `/` or `?` (or be empty).
fn without_port(rest: &str) -> Option<&str> {
    let rest = match rest.strip_prefix(':') {
        Some(port_and_rest) => {
            let digits = port_and_rest.bytes().take_while(u8::is_ascii_digit).count();
            let port = port_and_rest.get(..digits)?;
            if !(1..=5).contains(&digits) || !port.parse::<u16>().is_ok_and(|p| p > 0) {
                return None;
            }
            &port_and_rest[digits..]
        }
        None => rest,
    };
    (rest.is_empty() || rest.starts_with(['/', '?'])).then_some(rest)
}

pub(crate) fn parse_request(rt: &Runtime, p: &Params) -> Result<AuthRequest, AuthorizeError> {
    let client_id = p.get("client_id").ok_or(AuthorizeError::NoClient)?;
    let client = match rt.config.clients.get(client_id) {
        Some(c) if c.enabled => c.clone(),
        _ => return Err(AuthorizeError::UnknownClient),
    };
    // §3.1.2.3: exact match against a registered URI (any port for a loopback IP literal,
    // RFC 8252 §7.3); the only one when omitted.
    let (redirect_uri, redirect_uri_given) = match p.get("redirect_uri") {
        Some(given) if client.redirect_uris.iter().any(|r| redirect_matches(r, given)) => (given.to_string(), true),
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
            // Printable, without `"` or `\` (RFC 6749 §4.1.2.1's error_description charset).
            let other: String = printable(other).chars().take(32).collect();
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

#[cfg(test)]
mod tests {
    use super::redirect_matches;

    #[test]
    fn loopback_ip_literals_match_any_port_and_nothing_else() {
        for (registered, given) in [
            ("http://127.0.0.1/cb", "http://127.0.0.1:51234/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1/cb"),
            ("http://127.0.0.1:9/cb?x=1", "http://127.0.0.1:65535/cb?x=1"),
            ("http://[::1]/cb", "http://[::1]:8080/cb"),
            ("http://127.0.0.1", "http://127.0.0.1:8080"),
        ] {
            assert!(redirect_matches(registered, given), "{registered} {given}");
        }
        for (registered, given) in [
            ("http://127.0.0.1/cb", "http://127.0.0.1.evil.com:1234/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:1234@evil.com/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1@evil.com/cb"),
            ("http://127.0.0.1/cb", "http://127.1:1234/cb"),
            ("http://127.0.0.1/cb", "http://%31%32%37.0.0.1:1234/cb"),
            ("http://127.0.0.1/cb", "HTTP://127.0.0.1:1234/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:1234/CB"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:1234/cb/"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:1234/cb?x"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:0/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:65536/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:+80/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:/cb"),
            ("http://127.0.0.1/cb", "http://127.0.0.1:80\\@evil.com/cb"),
            ("http://127.0.0.1/cb", "https://127.0.0.1:1234/cb"),
            ("http://127.0.0.1/cb", "http://[::1]:1234/cb"),
            ("http://localhost/cb", "http://localhost:1234/cb"),
            ("https://app.test/cb", "https://app.test:8443/cb"),
        ] {
            assert!(!redirect_matches(registered, given), "{registered} {given}");
        }
    }
}
