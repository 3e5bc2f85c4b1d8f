//! The one place where a proxy-path failure becomes a wire response:
//! RFC 6750 §3 for token problems, JSON bodies for everything else.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::http::{Body, json};
use crate::tokens::validate::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route covers the request.
    #[error("no route")]
    NoRoute,
    /// The path would mean something else upstream (dot segments, encoded separators).
    #[error("unsafe path")]
    UnsafePath,
    /// No bearer token was presented (§3.1: no error code, just the challenge).
    #[error("no bearer token")]
    MissingToken,
    /// The Authorization header is present but cannot hold a token.
    #[error("malformed request: {0}")]
    MalformedRequest(&'static str),
    /// The Host header or request authority is not one authority we can route on.
    #[error("bad host: {0}")]
    BadHost(&'static str),
    /// TRACE or CONNECT on a route that does not name it.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A transfer coding other than a lone, final `chunked`.
    #[error("transfer coding not implemented")]
    NotImplemented,
    /// A token was presented and refused.
    #[error("invalid token: {0}")]
    InvalidToken(TokenError),
    /// The token lacks a scope the route requires; carries the required scopes.
    #[error("insufficient scope")]
    InsufficientScope(String),
    /// The token lacks a claim value the route's rules require (or the claim itself);
    /// carries the route's scopes for the challenge.
    #[error("claim rule not met")]
    ClaimNotMet(String),
    /// The declared request body exceeds the proxy limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The caller's body broke off or was badly framed (e.g. an invalid chunk size)
    /// while it was being forwarded: the caller's fault, not the upstream's.
    #[error("request body unreadable")]
    BadRequestBody,
    /// A multipart body names an `access_token` field (it is never forwarded).
    #[error("access_token field in a multipart body")]
    TokenInBody,
    /// The upstream refused, reset or broke the connection.
    #[error("upstream unavailable: {0}")]
    BadGateway(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    GatewayTimeout,
    /// RFC 9449 §7.1: a DPoP request's proof is missing or invalid.
    #[error("invalid DPoP proof: {0}")]
    InvalidDpopProof(crate::tokens::dpop::DpopError),
    /// RFC 9449 §9: the proof lacks a current server nonce; carries a fresh one.
    #[error("DPoP nonce required")]
    UseDpopNonce(String),
    /// A token sent with the DPoP scheme was refused (RFC 9449 §7.1: the DPoP challenge).
    #[error("invalid DPoP-bound token: {0}")]
    InvalidDpopToken(TokenError),
    /// The replay memory of DPoP proofs cannot be reached: no proof can be accepted.
    #[error("DPoP replay memory unavailable")]
    DpopUnavailable,
}

/// What a route without a `methods` list allows: everything but TRACE and CONNECT.
const ALLOWED_BY_DEFAULT: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

impl ProxyError {
    /// `realm` for the Bearer challenge; `dpop_algs` (space-separated) for the DPoP one.
    pub fn into_response_with(self, realm: &str, dpop_algs: &str) -> Response<Body> {
        let dpop = |error: &str| -> Option<HeaderValue> {
            HeaderValue::from_str(&format!("DPoP error=\"{error}\", algs=\"{dpop_algs}\"")).ok()
        };
        let (body, www, nonce) = match &self {
            ProxyError::InvalidDpopProof(_) => (
                json!({"error": "invalid_dpop_proof", "error_description": "The DPoP proof is missing or invalid."}),
                dpop("invalid_dpop_proof"),
                None,
            ),
            ProxyError::UseDpopNonce(n) => (
                json!({"error": "use_dpop_nonce", "error_description": "A DPoP proof with the server-provided nonce is required."}),
                dpop("use_dpop_nonce"),
                HeaderValue::from_str(n).ok(),
            ),
            ProxyError::InvalidDpopToken(e) => {
                (json!({"error": "invalid_token", "error_description": e.description()}), dpop("invalid_token"), None)
            }
            ProxyError::DpopUnavailable => {
                let mut resp = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "temporarily_unavailable", "error_description": "DPoP proofs cannot be checked right now."}),
                );
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            }
            _ => return self.into_response(realm),
        };
        let mut resp = json(StatusCode::UNAUTHORIZED, &body);
        let h = resp.headers_mut();
        if let Some(v) = www {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        if let Some(n) = nonce {
            h.insert(http::HeaderName::from_static("dpop-nonce"), n);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    pub fn into_response(self, realm: &str) -> Response<Body> {
        let challenge = |extra: &str| -> Option<HeaderValue> {
            HeaderValue::from_str(&format!("Bearer realm=\"{realm}\"{extra}")).ok()
        };
        let (status, body, www) = match &self {
            ProxyError::InvalidDpopProof(_)
            | ProxyError::UseDpopNonce(_)
            | ProxyError::InvalidDpopToken(_)
            | ProxyError::DpopUnavailable => return self.into_response_with(realm, "ES256 EdDSA RS256 PS256"),
            ProxyError::NoRoute => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "error_description": "No route matches this request."}),
                None,
            ),
            ProxyError::UnsafePath => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "The request path is not allowed."}),
                None,
            ),
            ProxyError::MissingToken => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "error_description": "A bearer token is required."}),
                challenge(""),
            ),
            ProxyError::MalformedRequest(_) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "The Authorization header is malformed."}),
                challenge(", error=\"invalid_request\""),
            ),
            ProxyError::BadHost(_) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "The Host header or request authority is invalid."}),
                None,
            ),
            ProxyError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed", "error_description": "This method is not allowed on this route."}),
                None,
            ),
            ProxyError::NotImplemented => (
                StatusCode::NOT_IMPLEMENTED,
                json!({"error": "not_implemented", "error_description": "Only the chunked transfer coding is supported."}),
                None,
            ),
            ProxyError::InvalidToken(e) => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "invalid_token", "error_description": e.description()}),
                challenge(&format!(", error=\"invalid_token\", error_description=\"{}\"", e.description())),
            ),
            ProxyError::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                json!({"error": "insufficient_scope", "error_description": "The access token lacks a required scope.", "scope": scope}),
                challenge(&format!(", error=\"insufficient_scope\", scope=\"{scope}\"")),
            ),
            ProxyError::ClaimNotMet(scope) if scope.is_empty() => (
                StatusCode::FORBIDDEN,
                json!({"error": "insufficient_scope", "error_description": "The access token lacks a claim value this route requires."}),
                challenge(", error=\"insufficient_scope\""),
            ),
            ProxyError::ClaimNotMet(scope) => (
                StatusCode::FORBIDDEN,
                json!({"error": "insufficient_scope", "error_description": "The access token lacks a claim value this route requires.", "scope": scope}),
                challenge(&format!(", error=\"insufficient_scope\", scope=\"{scope}\"")),
            ),
            ProxyError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload_too_large", "error_description": "The request body is too large."}),
                None,
            ),
            ProxyError::TokenInBody => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "An access token must be sent in the Authorization header, not in a multipart body."}),
                None,
            ),
            ProxyError::BadRequestBody => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "The request body could not be read."}),
                None,
            ),
            ProxyError::BadGateway(_) => (
                StatusCode::BAD_GATEWAY,
                json!({"error": "bad_gateway", "error_description": "The upstream service is unavailable."}),
                None,
            ),
            ProxyError::GatewayTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                json!({"error": "gateway_timeout", "error_description": "The upstream service did not answer in time."}),
                None,
            ),
        };
        let mut resp = json(status, &body);
        if let Some(v) = www {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOWED_BY_DEFAULT));
            }
            // The request body was not read: the connection cannot carry another request.
            StatusCode::NOT_IMPLEMENTED => {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        resp
    }
}
