//! The one place where a proxy-path failure becomes a wire response:
//! RFC 6750 §3 for token problems, JSON bodies for everything else.

use http::{HeaderName, HeaderValue, Response, StatusCode, header};
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
    /// A form body the gateway cannot read to take out `access_token`: compressed, or in
    /// a charset that is not ASCII-compatible.
    #[error("form body compressed or in a non-ASCII charset")]
    UnreadableForm,
    /// The `access_token` query parameter of a WebSocket handshake is repeated, not a
    /// b64token, or sent beside an Authorization header (RFC 6750 §2: one method only).
    #[error("bad access_token query parameter: {0}")]
    BadQueryToken(&'static str),
    /// A WebSocket upgrade on a route without `websocket = true`.
    #[error("WebSocket not enabled on this route")]
    WebSocketNotEnabled,
    /// A WebSocket handshake that RFC 6455 / RFC 8441 does not allow.
    #[error("bad WebSocket handshake: {0}")]
    BadHandshake(&'static str),
    /// As many upgraded (WebSocket) connections are open as `max_connections`.
    #[error("too many upgraded connections")]
    TooManyConnections,
    /// The upstream refused, reset or broke the connection.
    #[error("upstream unavailable: {0}")]
    BadGateway(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    GatewayTimeout,
    /// The route's quota for this caller is spent (issue 14): retry after this many seconds.
    #[error("route quota exceeded")]
    QuotaExceeded { retry_after: u64, headers: QuotaHeaders },
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

/// The IETF httpapi draft's fields (draft-ietf-httpapi-ratelimit-headers-09), set by the
/// quota phase (`quota.rs`); defined here because a refusal carries them.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The two fields of one quota decision.
#[derive(Debug, Clone)]
pub struct QuotaHeaders {
    pub(super) policy: HeaderValue,
    pub(super) state: HeaderValue,
}

impl QuotaHeaders {
    /// Added to what the upstream sent (an upstream's own policies stay listed).
    pub fn apply(self, headers: &mut http::HeaderMap) {
        headers.append(RATELIMIT_POLICY, self.policy);
        headers.append(RATELIMIT, self.state);
    }
}

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
                json!({"error": "invalid_request", "error_description": "An access token must be sent in the Authorization header, not in the request body."}),
                None,
            ),
            ProxyError::UnreadableForm => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": "invalid_request", "error_description": "A form body must be sent uncompressed and in UTF-8: the gateway reads it to take out access_token."}),
                None,
            ),
            ProxyError::BadRequestBody => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "The request body could not be read."}),
                None,
            ),
            ProxyError::BadQueryToken(_) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "The access_token query parameter is malformed, repeated, or sent beside an Authorization header."}),
                challenge(", error=\"invalid_request\""),
            ),
            ProxyError::WebSocketNotEnabled => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "This route does not accept WebSocket connections."}),
                None,
            ),
            ProxyError::BadHandshake(why) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": format!("Bad WebSocket handshake: {why}.")}),
                None,
            ),
            ProxyError::TooManyConnections => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "temporarily_unavailable", "error_description": "Too many WebSocket connections are open; try again later."}),
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
            ProxyError::QuotaExceeded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "too_many_requests", "error_description": "The request quota for this route is spent; retry later."}),
                None,
            ),
        };
        let mut resp = json(status, &body);
        if let Some(v) = www {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        let bad_handshake = matches!(self, ProxyError::BadHandshake(_));
        if let ProxyError::QuotaExceeded { retry_after, headers } = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            headers.apply(resp.headers_mut());
        }
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOWED_BY_DEFAULT));
            }
            // RFC 6455 §4.4: the version the gateway speaks.
            StatusCode::BAD_REQUEST if bad_handshake => {
                resp.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("13"));
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

/// Is this a gRPC request (`application/grpc`, `application/grpc+proto`, ...; gRPC over
/// HTTP/2 spec)? gRPC-Web (`application/grpc-web…`) is not: its status travels in the
/// body, and its callers are browsers that read an HTTP status as well as any.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The refusal status behind a gRPC answer (whose HTTP status is 200), for the access log
/// and metrics; set as a response extension.
#[derive(Debug, Clone, Copy)]
pub struct GrpcRefusal(pub StatusCode);

impl ProxyError {
    /// The gRPC status code for this refusal (gRPC `Code`), by what went wrong.
    fn grpc_code(&self) -> u8 {
        match self {
            ProxyError::MissingToken
            | ProxyError::MalformedRequest(_)
            | ProxyError::InvalidToken(_)
            | ProxyError::BadQueryToken(_)
            | ProxyError::InvalidDpopProof(_)
            | ProxyError::UseDpopNonce(_)
            | ProxyError::InvalidDpopToken(_) => 16,
            ProxyError::DpopUnavailable => 14,
            ProxyError::InsufficientScope(_) | ProxyError::ClaimNotMet(_) => 7,
            ProxyError::NoRoute
            | ProxyError::MethodNotAllowed
            | ProxyError::NotImplemented
            | ProxyError::WebSocketNotEnabled => 12,
            ProxyError::BadHandshake(_) => 3,
            ProxyError::TooManyConnections => 14,
            ProxyError::QuotaExceeded { .. } => 8,
            ProxyError::UnsafePath
            | ProxyError::BadHost(_)
            | ProxyError::BadRequestBody
            | ProxyError::TokenInBody
            | ProxyError::UnreadableForm => 3,
            ProxyError::PayloadTooLarge => 8,
            ProxyError::BadGateway(_) => 14,
            ProxyError::GatewayTimeout => 4,
        }
    }

    /// The answer on the wire: [`ProxyError::into_response`], or for a gRPC caller a
    /// trailers-only gRPC answer (HTTP 200, `grpc-status`, a percent-encoded
    /// `grpc-message`, no body), which gRPC clients decode into a status where an HTTP
    /// error would be a generic one. `WWW-Authenticate` and `Cache-Control` stay.
    pub fn into_wire(self, realm: &str, dpop_algs: &str, grpc: bool) -> Response<Body> {
        if !grpc {
            return self.into_response_with(realm, dpop_algs);
        }
        let code = self.grpc_code();
        let message = grpc_message(&self);
        let resp = self.into_response_with(realm, dpop_algs);
        let (mut parts, _) = resp.into_parts();
        parts.extensions.insert(GrpcRefusal(parts.status));
        parts.status = StatusCode::OK;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        parts.headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
        if let Ok(v) = HeaderValue::from_str(&message) {
            parts.headers.insert("grpc-message", v);
        }
        Response::from_parts(parts, crate::http::full(bytes::Bytes::new()))
    }
}

/// What a gRPC caller is told, percent-encoded as `grpc-message` wants (every byte outside
/// printable ASCII, and `%`).
fn grpc_message(e: &ProxyError) -> String {
    let text = match e {
        ProxyError::MissingToken => "a bearer token is required",
        ProxyError::MalformedRequest(_) => "the authorization metadata is malformed",
        ProxyError::InvalidToken(e) => e.description(),
        ProxyError::InsufficientScope(_) => "the access token lacks a required scope",
        ProxyError::ClaimNotMet(_) => "the access token lacks a claim value this route requires",
        ProxyError::NoRoute => "no route matches this request",
        ProxyError::MethodNotAllowed => "this method is not allowed on this route",
        ProxyError::NotImplemented => "only the chunked transfer coding is supported",
        ProxyError::UnsafePath => "the request path is not allowed",
        ProxyError::BadHost(_) => "the request authority is invalid",
        ProxyError::BadRequestBody => "the request body could not be read",
        ProxyError::TokenInBody => "an access token must be sent in the authorization metadata",
        ProxyError::UnreadableForm => "a form body must be sent uncompressed and in UTF-8",
        ProxyError::PayloadTooLarge => "the request body is too large",
        ProxyError::BadGateway(_) => "the upstream service is unavailable",
        ProxyError::GatewayTimeout => "the upstream service did not answer in time",
        ProxyError::BadQueryToken(_) => "the access_token query parameter is malformed or repeated",
        ProxyError::WebSocketNotEnabled => "this route does not accept WebSocket connections",
        ProxyError::BadHandshake(_) => "bad WebSocket handshake",
        ProxyError::TooManyConnections => "too many connections are open",
        ProxyError::QuotaExceeded { .. } => "the request quota for this route is spent",
        ProxyError::InvalidDpopProof(_) => "the DPoP proof is missing or invalid",
        ProxyError::UseDpopNonce(_) => "a DPoP proof with the server-provided nonce is required",
        ProxyError::InvalidDpopToken(e) => e.description(),
        ProxyError::DpopUnavailable => "DPoP proofs cannot be checked right now",
    };
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_recognised_and_grpc_web_is_not() {
        let is = |ct: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc(&h)
        };
        for ct in ["application/grpc", "application/grpc+proto", "Application/GRPC+json", "application/grpc;x=1"] {
            assert!(is(ct), "{ct}");
        }
        for ct in ["application/grpc-web", "application/grpc-web+proto", "application/grpcx", "text/plain", ""] {
            assert!(!is(ct), "{ct}");
        }
        assert!(!is_grpc(&http::HeaderMap::new()));
    }

    #[test]
    fn refusals_become_trailers_only_grpc_answers() {
        let resp = ProxyError::MissingToken.into_wire("r", "ES256", true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "16");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"r\"");
        assert_eq!(resp.headers()["grpc-message"], "a bearer token is required");
        assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
        assert_eq!(resp.extensions().get::<GrpcRefusal>().map(|r| r.0), Some(StatusCode::UNAUTHORIZED));
        assert!(http_body::Body::is_end_stream(resp.body()));
        let code =
            |e: ProxyError| e.into_wire("r", "ES256", true).headers()["grpc-status"].to_str().unwrap().to_string();
        assert_eq!(code(ProxyError::InsufficientScope("a".into())), "7");
        assert_eq!(code(ProxyError::BadGateway("x".into())), "14");
        assert_eq!(code(ProxyError::GatewayTimeout), "4");
        assert_eq!(code(ProxyError::PayloadTooLarge), "8");
        // Not gRPC: the usual answer.
        assert_eq!(ProxyError::GatewayTimeout.into_wire("r", "ES256", false).status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        for e in [ProxyError::InvalidToken(crate::tokens::validate::TokenError::Expired), ProxyError::NoRoute] {
            let m = grpc_message(&e);
            assert!(m.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{m}");
        }
    }
}
