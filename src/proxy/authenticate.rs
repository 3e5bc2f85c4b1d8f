//! Phase 2, authenticate: the bearer token (RFC 6750 §2.1) through the validator, then
//! its binding (RFC 8705 §3, RFC 9449 §7) against what the request proves.

use std::sync::Arc;

use http::{HeaderMap, header};

use subtle::ConstantTimeEq;

use super::error::ProxyError;
use crate::config::Route;
use crate::server::peer::Peer;
use crate::state::{Gateway, Runtime};
use crate::tokens::binding::Binding;
use crate::tokens::validate::{Principal, TokenError};

/// The bytes of an RFC 6750 b64token before its trailing `=`s, as the grammar lists them:
/// the reference the request path's [`is_b64`] is tested against.
#[cfg(test)]
const B64TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    t
};

#[cfg(test)]
#[test]
fn the_vectorised_byte_test_is_the_table() {
    for b in 0..=255u8 {
        assert_eq!(is_b64(b), B64TOKEN[usize::from(b)], "{b:#04x}");
    }
}

/// The token from `Authorization: Bearer <token>`; the scheme is case-insensitive.
/// Exactly one Authorization header is accepted.
///
/// RFC 6750 §3.1: no header, or another scheme, is a request without a token (401, no
/// error code); a Bearer header that cannot hold a token (`Bearer` alone, `Bearer a b`,
/// bytes outside b64token, `=` before the end) is `invalid_request` (400). RFC 6750 §2.1
/// allows one or more spaces after the scheme, so `Bearer  t` is read as `t`.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ProxyError> {
    match credentials(headers)? {
        (Scheme::Bearer, token) => Ok(token),
        (Scheme::Dpop, _) => Err(ProxyError::MissingToken),
    }
}

/// The token and its scheme from `Authorization: Bearer <token>` or `Authorization: DPoP
/// <token>` (RFC 9449 §7.1, the same token68 syntax), by the rules of [`bearer`].
pub fn credentials(headers: &HeaderMap) -> Result<(Scheme, &str), ProxyError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Err(ProxyError::MissingToken) };
    if values.next().is_some() {
        return Err(ProxyError::MalformedRequest("more than one Authorization header"));
    }
    // A header value holds no control byte, so ASCII is what `to_str` would check; these
    // two scan a word at a time (a token is hundreds of bytes, on every request).
    let value = Some(value.as_bytes())
        .filter(|b| b.is_ascii())
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or(ProxyError::MalformedRequest("Authorization header is not ASCII"))?;
    let value = value.trim_matches([' ', '\t']);
    // The scheme is the leading run of tchars (RFC 9110 §5.6.2); `Bearerx` is another
    // scheme, but `Bearer` followed by anything other than SP (a tab, a comma...) is a
    // Bearer header written wrong (RFC 7235 §2.1: `auth-scheme [ 1*SP ... ]`).
    let scheme_len = value.bytes().position(|b| !is_tchar(b)).unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_len);
    let kind = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(ProxyError::MissingToken);
    };
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
    Ok((kind, token))
}

/// b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    // Every byte looked at (no early exit), a chunk at a time: the compiler turns this into
    // vector compares, where a table lookup per byte of a long token was not.
    !body.is_empty() && body.as_bytes().chunks(64).all(|chunk| chunk.iter().fold(true, |ok, &b| ok & is_b64(b)))
}

/// A byte of [`B64TOKEN`], as comparisons the compiler can vectorise.
fn is_b64(b: u8) -> bool {
    (b | 0x20).wrapping_sub(b'a') < 26
        || b.wrapping_sub(b'0') < 10
        || b == b'-'
        || b == b'.'
        || b == b'_'
        || b == b'~'
        || b == b'+'
        || b == b'/'
}

/// RFC 6750 §2.3: the token of a WebSocket handshake in the `access_token` query
/// parameter, on a route with `websocket_query_token` (browsers cannot set
/// `Authorization` on a WebSocket). `None` when the query has none. Refused: two of
/// them, one that is not a b64token once decoded, or one beside an Authorization header
/// (RFC 6750 §2: a client uses one method only).
pub fn query_token(query: Option<&str>, headers: &HeaderMap) -> Result<Option<String>, ProxyError> {
    let Some(query) = query else { return Ok(None) };
    // Every name some framework reads as `access_token` counts (they are all taken out
    // before forwarding): one look-alike beside the real one is a second token, and a
    // look-alike alone is not the parameter RFC 6750 names.
    let mut found =
        form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| super::access_token::is_access_token_name(k));
    let Some((name, token)) = found.next() else { return Ok(None) };
    if found.next().is_some() {
        return Err(ProxyError::BadQueryToken("repeated"));
    }
    if name != "access_token" {
        return Err(ProxyError::BadQueryToken("spelled otherwise"));
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

/// How the token was presented: the `Authorization` scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer` (RFC 6750), also how a certificate-bound token is sent (RFC 8705 §3).
    Bearer,
    /// `DPoP` (RFC 9449 §7.1).
    Dpop,
}

/// What a request offers as proof that it holds the key a bound token names.
pub struct Proof<'a> {
    pub scheme: Scheme,
    /// The `x5t#S256` thumbprint of the certificate the connection's TLS handshake proved
    /// possession of, if any.
    pub client_cert: Option<&'a str>,
    /// The request's `DPoP` header(s), unparsed: every value, so two of them can be refused.
    pub dpop: http::header::GetAll<'a, http::HeaderValue>,
}

impl<'a> Proof<'a> {
    pub fn of(scheme: Scheme, headers: &'a HeaderMap, peer: &'a Peer) -> Proof<'a> {
        Proof { scheme, client_cert: peer.client_cert().map(|c| &*c.thumbprint), dpop: headers.get_all("dpop") }
    }
}

/// The one place a token's binding is enforced on the proxy path, for every request,
/// cache hit or not, whoever issued the token (ours, a trusted issuer's `cnf`, an
/// introspection answer's `cnf`): a bound token is honoured only with proof of
/// possession of its key. Without a binding, the token is a bearer token and only the
/// `Bearer` scheme carries it.
pub fn enforce_binding(p: &Principal, proof: &Proof<'_>) -> Result<(), TokenError> {
    match (p.binding(), proof.scheme) {
        (None, Scheme::Bearer) => Ok(()),
        // RFC 8705 §3: sent as a bearer token, on a connection presenting the certificate
        // (the thumbprint is public; the handshake proved the key).
        (Some(Binding::Mtls { x5t_s256 }), Scheme::Bearer) => match proof.client_cert {
            Some(presented) if bool::from(presented.as_bytes().ct_eq(x5t_s256.as_bytes())) => Ok(()),
            _ => Err(TokenError::BindingMismatch),
        },
        // RFC 9449 §7.1: a DPoP-bound token only with the DPoP scheme, and that scheme only
        // for a DPoP-bound token; the proof itself is checked by `proxy::dpop` (it needs the
        // store), after this.
        (Some(Binding::Dpop { .. }), Scheme::Dpop) => Ok(()),
        (Some(Binding::Dpop { .. }), Scheme::Bearer) | (_, Scheme::Dpop) => Err(TokenError::BindingMismatch),
    }
}

/// The route's accepted issuers decide whose tokens are verified at all: a token of
/// another issuer is `invalid_token`, never a fetch. The binding is enforced after the
/// validator, on its verdict whether cached or new ([`enforce_binding`]).
pub async fn authenticate(
    gw: &Gateway,
    rt: &Runtime,
    route: &Route,
    req: &super::dpop::Request<'_>,
) -> Result<Arc<Principal>, ProxyError> {
    let (scheme, token) = credentials(req.headers)?;
    authenticate_token(gw, rt, route, req, scheme, token).await
}

/// Validate `token` (from the Authorization header, or a WebSocket handshake's query,
/// which is always a bearer token) for `route`, then its binding.
pub async fn authenticate_token(
    gw: &Gateway,
    rt: &Runtime,
    route: &Route,
    req: &super::dpop::Request<'_>,
    scheme: Scheme,
    token: &str,
) -> Result<Arc<Principal>, ProxyError> {
    let (headers, peer) = (req.headers, req.peer);
    let accepts = |name: &str| route.accepts(name);
    // A token refused for the DPoP scheme gets the DPoP challenge (RFC 9449 §7.1).
    let refused = |e: TokenError| {
        gw.metrics.bearer_refused(e.label());
        match scheme {
            Scheme::Bearer => ProxyError::InvalidToken(e),
            Scheme::Dpop => ProxyError::InvalidDpopToken(e),
        }
    };
    let principal = gw
        .validator
        .validate_for(token, &rt.keys, Some(&rt.issuers), &accepts, &rt.config, gw.store.as_ref())
        .await
        .map_err(refused)?;
    enforce_binding(&principal, &Proof::of(scheme, headers, peer)).map_err(refused)?;
    // The DPoP proof for this request, on every request (the verdict may be cached; the
    // proof never is).
    if scheme == Scheme::Dpop
        && let Some(jkt) = principal.binding().and_then(Binding::jkt)
    {
        // Boxed: a bearer hit's future need not be the size of the proof's store calls.
        Box::pin(super::dpop::verify(gw, rt, req, token, jkt)).await?;
    }
    Ok(principal)
}
