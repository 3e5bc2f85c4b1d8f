//! The one place where an OAuth failure becomes a wire response (RFC 6749 §5.2).

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::http::{Body, json};
use crate::ratelimit::Throttled;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// A parameter is missing, repeated, malformed, or the request itself is (§5.2).
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// Unknown client, wrong secret, disabled client, or no authentication at all.
    /// `basic` says whether the client tried HTTP Basic, which earns a `WWW-Authenticate`.
    #[error("invalid_client")]
    InvalidClient { basic: bool },
    /// The grant (code, refresh token) is invalid.
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    /// The password grant's username and password do not match an enabled user; an
    /// `invalid_grant` that counts as a failed authentication for the rate limits.
    #[error("invalid_grant: wrong user credentials")]
    InvalidUserCredentials,
    /// The client may not use this grant type.
    #[error("unauthorized_client")]
    UnauthorizedClient,
    /// A grant type this server does not implement; carries the type as given.
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(String),
    /// A requested scope the client may not have; carries the first offending scope.
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    /// The body exceeded the configured limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The body did not arrive in time.
    #[error("request body timed out")]
    BodyTimeout,
    /// A POST-only endpoint called with another method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Something on our side failed (signing, a panic-free internal error); details are logged.
    #[error("server_error")]
    ServerError,
    /// The store cannot be reached; the client may retry later.
    #[error("temporarily_unavailable")]
    TemporarilyUnavailable,
    /// Too many requests from this source, or too many failed authentications of this
    /// client or user; answered 429 with `Retry-After`.
    #[error("slow_down")]
    RateLimited(Throttled),
}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store operation failed");
        OAuthError::TemporarilyUnavailable
    }
}

impl OAuthError {
    /// A failed authentication (client secret or user password): costs more in the
    /// per-IP rate limit than other requests.
    pub fn is_failed_authentication(&self) -> bool {
        matches!(self, OAuthError::InvalidClient { .. } | OAuthError::InvalidUserCredentials)
    }

    pub fn missing(param: &str) -> Self {
        OAuthError::InvalidRequest(format!(
            "The request is missing a required parameter. Check the \"{}\" parameter.",
            printable(param)
        ))
    }

    pub fn invalid_param(param: &str) -> Self {
        OAuthError::InvalidRequest(format!(
            "The request includes an invalid parameter value. Check the \"{}\" parameter.",
            printable(param)
        ))
    }

    pub fn repeated(param: &str) -> Self {
        OAuthError::InvalidRequest(format!(
            "The request includes a parameter more than once. Check the \"{}\" parameter.",
            printable(param)
        ))
    }

    /// The `error` code as registered in RFC 6749.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_)
            | OAuthError::PayloadTooLarge
            | OAuthError::BodyTimeout
            | OAuthError::MethodNotAllowed => "invalid_request",
            OAuthError::InvalidClient { .. } => "invalid_client",
            OAuthError::InvalidGrant(_) | OAuthError::InvalidUserCredentials => "invalid_grant",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::ServerError => "server_error",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
            // RFC 8628 §3.5's code for "poll less often"; the status and Retry-After say the rest.
            OAuthError::RateLimited(_) => "slow_down",
        }
    }

    pub fn into_response(self, realm: &str) -> Response<Body> {
        let (status, description) = match &self {
            OAuthError::InvalidRequest(d) => (StatusCode::BAD_REQUEST, d.clone()),
            OAuthError::InvalidClient { .. } => (StatusCode::UNAUTHORIZED, "Client authentication failed.".to_string()),
            OAuthError::InvalidGrant(d) => (StatusCode::BAD_REQUEST, d.clone()),
            OAuthError::InvalidUserCredentials => {
                (StatusCode::BAD_REQUEST, "The user credentials were incorrect.".to_string())
            }
            OAuthError::UnauthorizedClient => (
                StatusCode::BAD_REQUEST,
                "The client is not authorized to request an access token using this method. Check the \"grant_type\" parameter."
                    .to_string(),
            ),
            OAuthError::UnsupportedGrantType(g) => (
                StatusCode::BAD_REQUEST,
                format!("The authorization grant type \"{}\" is not supported by the authorization server.", printable(g)),
            ),
            OAuthError::InvalidScope(s) => (
                StatusCode::BAD_REQUEST,
                format!("The requested scope is invalid, unknown, or malformed. Check the \"{}\" scope.", printable(s)),
            ),
            OAuthError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "The request body is too large.".to_string()),
            OAuthError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "The request body did not arrive in time.".to_string()),
            OAuthError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "This endpoint accepts POST only.".to_string()),
            OAuthError::ServerError => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The authorization server encountered an unexpected condition.".to_string(),
            ),
            OAuthError::TemporarilyUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The authorization server is temporarily unable to handle the request.".to_string(),
            ),
            OAuthError::RateLimited(t) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many requests. Retry after {} seconds.", t.retry_after_secs()),
            ),
        };
        let mut resp = json(status, &json!({ "error": self.code(), "error_description": description }));
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        match self {
            OAuthError::InvalidClient { basic: true } => {
                if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            OAuthError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            OAuthError::RateLimited(t) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after_secs()));
            }
            _ => {}
        }
        resp
    }
}

/// Echo caller input into a description safely: bounded, printable ASCII, no quotes
/// (RFC 6749 §5.2 restricts error_description to %x20-21 / %x23-5B / %x5D-7E).
pub(crate) fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\').take(64).collect()
}
