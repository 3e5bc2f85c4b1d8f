//! Phase 2, authenticate: the bearer token (RFC 6750 §2.1) through the validator.

use std::sync::Arc;

use http::{HeaderMap, header};

use super::error::ProxyError;
use crate::state::{Gateway, Runtime};
use crate::tokens::validate::{Principal, TokenError};

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
pub fn bearer(headers: &HeaderMap) -> Result<&str, ProxyError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Err(ProxyError::MissingToken) };
    if values.next().is_some() {
        return Err(ProxyError::MalformedRequest("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| ProxyError::MalformedRequest("Authorization header is not ASCII"))?;
    let (scheme, token) = value.trim_start().split_once(' ').ok_or(ProxyError::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ProxyError::MissingToken);
    }
    let token = token.trim();
    // RFC 6750 b64token; anything else cannot be one of ours: an invalid token (401).
    if token.is_empty() || !token.bytes().all(|b| B64TOKEN[usize::from(b)]) {
        return Err(ProxyError::InvalidToken(TokenError::Malformed));
    }
    Ok(token)
}

pub async fn authenticate(gw: &Gateway, rt: &Runtime, headers: &HeaderMap) -> Result<Arc<Principal>, ProxyError> {
    let token = bearer(headers)?;
    gw.validator.validate(token, &rt.keys, &rt.config, gw.store.as_ref()).await.map_err(ProxyError::InvalidToken)
}
