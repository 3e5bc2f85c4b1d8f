//! Phase 2, authenticate: the bearer token (RFC 6750 §2.1) through the validator.

use std::sync::Arc;

use http::{HeaderMap, header};

use super::error::ProxyError;
use crate::config::Route;
use crate::state::{Gateway, Runtime};
use crate::tokens::validate::Principal;

/// The bytes of an RFC 6750 b64token, as a table: a token is checked byte by byte on
/// every request.
const B64TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
        b += 1;
    }
    t
};

/// The token from `Authorization: Bearer <token>`; the scheme is case-insensitive.
/// Exactly one Authorization header is accepted.
///
/// RFC 6750 §3.1: no header, or another scheme, is a request without a token (401, no
/// error code); a Bearer header that cannot hold a token (`Bearer` alone, `Bearer a b`,
/// bytes outside b64token, `=` before the end) is `invalid_request` (400). RFC 6750 §2.1
/// allows one or more spaces after the scheme, so `Bearer  t` is read as `t`.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ProxyError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Err(ProxyError::MissingToken) };
    if values.next().is_some() {
        return Err(ProxyError::MalformedRequest("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| ProxyError::MalformedRequest("Authorization header is not ASCII"))?;
    let value = value.trim_matches([' ', '\t']);
    // The scheme is the leading run of tchars (RFC 9110 §5.6.2); `Bearerx` is another
    // scheme, but `Bearer` followed by anything other than SP (a tab, a comma...) is a
    // Bearer header written wrong (RFC 7235 §2.1: `auth-scheme [ 1*SP ... ]`).
    let scheme_len = value.bytes().position(|b| !is_tchar(b)).unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_len);
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ProxyError::MissingToken);
    }
    let Some(rest) = rest.strip_prefix(' ').or(rest.is_empty().then_some("")) else {
        return Err(ProxyError::MalformedRequest("Bearer must be followed by a space"));
    };
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(ProxyError::MalformedRequest("Bearer without a token"));
    }
    if !is_b64token(token) {
        return Err(ProxyError::MalformedRequest("the bearer token is not a b64token"));
    }
    Ok(token)
}

/// b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| b != b'=' && B64TOKEN[usize::from(b)])
}

/// RFC 6750 §2.3: the token of a WebSocket handshake in the `access_token` query
/// parameter, on a route with `websocket_query_token` (browsers cannot set
/// `Authorization` on a WebSocket). `None` when the query has none. Refused: two of
/// them, one that is not a b64token once decoded, or one beside an Authorization header
/// (RFC 6750 §2: a client uses one method only).
pub fn query_token(query: Option<&str>, headers: &HeaderMap) -> Result<Option<String>, ProxyError> {
    let Some(query) = query else { return Ok(None) };
    let mut found = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == "access_token").map(|(_, v)| v);
    let Some(token) = found.next() else { return Ok(None) };
    if found.next().is_some() {
        return Err(ProxyError::BadQueryToken("repeated"));
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(ProxyError::BadQueryToken("beside an Authorization header"));
    }
    if !is_b64token(&token) {
        return Err(ProxyError::BadQueryToken("not a b64token"));
    }
    Ok(Some(token.into_owned()))
}

/// RFC 9110 §5.6.2 tchar: the bytes of a token such as an auth-scheme.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The route's accepted issuers decide whose tokens are verified at all: a token of
/// another issuer is `invalid_token`, never a fetch.
pub async fn authenticate(
    gw: &Gateway,
    rt: &Runtime,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Arc<Principal>, ProxyError> {
    authenticate_token(gw, rt, route, bearer(headers)?).await
}

/// Validate `token` (from the header, or a WebSocket handshake's query) for `route`.
pub async fn authenticate_token(
    gw: &Gateway,
    rt: &Runtime,
    route: &Route,
    token: &str,
) -> Result<Arc<Principal>, ProxyError> {
    let accepts = |name: &str| route.accepts(name);
    gw.validator
        .validate_for(token, &rt.keys, Some(&rt.issuers), &accepts, &rt.config, gw.store.as_ref())
        .await
        .map_err(|e| {
            gw.metrics.bearer_refused(e.label());
            ProxyError::InvalidToken(e)
        })
}
