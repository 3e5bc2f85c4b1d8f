//! The one place where an OAuth failure becomes a wire response (RFC 6749 §5.2): status,
//! `error`, `error_description` and headers are all decided by [`OAuthError::into_response`]
//! from typed reasons; call sites never write wire text.

use std::borrow::Cow;

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::http::{Body, json};
use crate::ratelimit::Throttled;

/// RFC 9449 §8.1: where the server's nonce travels.
pub const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

/// An OAuth endpoint's refusal. Its `Display` is the wire `error` and `error_description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    /// A parameter is missing, repeated, malformed, or the request itself is (§5.2).
    InvalidRequest(BadRequest),
    /// Unknown client, wrong secret, disabled client, or no authentication at all.
    /// `basic` says whether the client tried HTTP Basic (for logs); every 401 carries a
    /// `WWW-Authenticate: Basic` challenge either way (RFC 9110 §15.5.2).
    InvalidClient { basic: bool },
    /// The grant (code, refresh token) is invalid.
    InvalidGrant(BadGrant),
    /// The password grant's username and password do not match an enabled user; an
    /// `invalid_grant` that counts as a failed authentication for the rate limits.
    InvalidUserCredentials,
    /// The client may not use this grant type.
    UnauthorizedClient,
    /// A grant type this server does not implement; carries the type as given.
    UnsupportedGrantType(String),
    /// A requested scope the client may not have; carries the first offending scope.
    InvalidScope(String),
    /// RFC 8707 §2: `resource` is not an absolute URI without fragment, or names no
    /// audience this gateway serves, or one the grant does not allow.
    InvalidTarget,
    /// The body exceeded the configured limit.
    PayloadTooLarge,
    /// The body did not arrive in time.
    BodyTimeout,
    /// A POST-only endpoint called with another method.
    MethodNotAllowed,
    /// Something on our side failed (signing, a panic-free internal error); details are logged.
    ServerError,
    /// The store cannot be reached; the client may retry later.
    TemporarilyUnavailable,
    /// Too many requests from this source, or too many failed authentications of this
    /// client or user; answered 429 with `Retry-After`.
    RateLimited(Throttled),
    /// RFC 9449 §5: the `DPoP` proof is missing where required, or invalid (the reason is logged).
    InvalidDpopProof,
    /// RFC 9449 §8: the proof lacks a current server nonce; carries a fresh one for `DPoP-Nonce`.
    UseDpopNonce(String),
}

/// Why a request is `invalid_request` (§5.2). Names given by the caller are kept as given
/// and made printable only when rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequest {
    /// A required parameter is absent or empty (§3.1: empty counts as absent).
    Missing(&'static str),
    /// A parameter's value is unusable: a JSON value that is not a scalar, or a body
    /// `client_id` that disagrees with the one in HTTP Basic.
    Invalid(String),
    /// §3.1: a parameter must not appear more than once.
    Repeated(String),
    /// A field that may appear once (RFC 9110 §5.3: `Authorization`, `Content-Type`)
    /// appears more than once: which one the client meant is unknowable, so neither is used.
    RepeatedHeader(&'static str),
    /// A JSON body that is not one flat object.
    NotJsonObject,
    /// §2.3: Basic and `client_secret` in the body at once.
    TwoClientAuthMethods,
    /// Neither form-urlencoded nor JSON.
    ContentType,
    /// The body stream failed before its end.
    BodyUnreadable,
    /// RFC 7009 §2.1: a client may revoke only its own tokens.
    NotYourToken,
    /// The client's tokens are certificate-bound (`token_binding = "mtls"`) and the
    /// connection presented no client certificate (RFC 8705 §3).
    ClientCertificateRequired,
    /// The client's tokens are DPoP-bound and the request carries no usable proof.
    DpopProofRequired,
}

/// Why a grant is `invalid_grant` (§5.2). The refresh and code answers deliberately do not
/// say which check failed (unknown, expired, replayed, other client, inactive user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadGrant {
    /// The code is unknown, spent, expired, of another client, of an inactive user, or was
    /// issued without PKCE to a public client.
    Code,
    /// §4.1.3: `redirect_uri` differs from the authorization request's.
    RedirectUri,
    /// RFC 7636 §4.6: the verifier is absent, malformed or does not match the challenge.
    CodeVerifier,
    /// RFC 9700 §2.1.1: a verifier for a code issued without a challenge (a downgrade attempt).
    UnexpectedVerifier,
    /// The refresh token is unknown, expired, spent, of another client or of an inactive user.
    RefreshToken,
    /// client_credentials for a client whose linked `user` is disabled or not configured:
    /// the client may not act as a user who may not hold tokens.
    LinkedUser,
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.description())
    }
}

impl std::error::Error for OAuthError {}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match &e {
            // An outage: the store logs it once when it starts and once when it ends; one
            // line per refused request would flood the log (the access log has each 503).
            StoreError::Unavailable(_) | StoreError::Io(_) => tracing::debug!(error = %e, "store operation failed"),
            StoreError::Corrupt(_) => tracing::error!(error = %e, "store operation failed"),
        }
        OAuthError::TemporarilyUnavailable
    }
}

impl From<BadRequest> for OAuthError {
    fn from(r: BadRequest) -> Self {
        OAuthError::InvalidRequest(r)
    }
}

impl From<BadGrant> for OAuthError {
    fn from(r: BadGrant) -> Self {
        OAuthError::InvalidGrant(r)
    }
}

impl OAuthError {
    /// A failed authentication (client secret or user password): costs more in the
    /// per-IP rate limit than other requests.
    pub fn is_failed_authentication(&self) -> bool {
        matches!(self, OAuthError::InvalidClient { .. } | OAuthError::InvalidUserCredentials)
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
            OAuthError::InvalidTarget => "invalid_target",
            OAuthError::ServerError => "server_error",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
            // RFC 8628 §3.5's code for "poll less often"; the status and Retry-After say the rest.
            OAuthError::RateLimited(_) => "slow_down",
            OAuthError::InvalidDpopProof => "invalid_dpop_proof",
            OAuthError::UseDpopNonce(_) => "use_dpop_nonce",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            OAuthError::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
            OAuthError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            OAuthError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            OAuthError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            OAuthError::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            OAuthError::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            OAuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            OAuthError::InvalidRequest(_)
            | OAuthError::InvalidGrant(_)
            | OAuthError::InvalidUserCredentials
            | OAuthError::UnauthorizedClient
            | OAuthError::UnsupportedGrantType(_)
            | OAuthError::InvalidScope(_)
            | OAuthError::InvalidTarget
            | OAuthError::InvalidDpopProof
            | OAuthError::UseDpopNonce(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The `error_description`: every wire text lives here. Only %x20-21 / %x23-5B / %x5D-7E
    /// (§5.2), so names are quoted with `'` and caller input goes through [`printable`].
    fn description(&self) -> Cow<'static, str> {
        let check = |what: &str, param: &str| -> Cow<'static, str> {
            format!("{what} Check the '{}' parameter.", printable(param)).into()
        };
        match self {
            OAuthError::InvalidRequest(r) => match r {
                BadRequest::Missing(p) => check("The request is missing a required parameter.", p),
                BadRequest::Invalid(p) => check("The request includes an invalid parameter value.", p),
                BadRequest::Repeated(p) => check("The request includes a parameter more than once.", p),
                BadRequest::RepeatedHeader(h) => {
                    format!("The request includes the '{h}' header more than once.").into()
                }
                BadRequest::NotJsonObject => "The request body is not a JSON object of parameters.".into(),
                BadRequest::TwoClientAuthMethods => {
                    check("The request uses more than one client authentication method.", "client_secret")
                }
                BadRequest::ContentType => "The request body must be application/x-www-form-urlencoded or application/json. Check the 'Content-Type' header.".into(),
                BadRequest::BodyUnreadable => "The request body could not be read.".into(),
                BadRequest::NotYourToken => check("The token was not issued to this client.", "token"),
                BadRequest::ClientCertificateRequired => {
                    "This client's tokens are bound to its TLS client certificate; none was presented.".into()
                }
                BadRequest::DpopProofRequired => "This client's tokens need a valid DPoP proof.".into(),
            },
            OAuthError::InvalidClient { .. } => "Client authentication failed.".into(),
            OAuthError::InvalidGrant(g) => match g {
                BadGrant::Code => check("The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.", "code"),
                BadGrant::RedirectUri => check("The redirect URI does not match.", "redirect_uri"),
                BadGrant::CodeVerifier => check("The PKCE code verifier does not match.", "code_verifier"),
                BadGrant::UnexpectedVerifier => check("No PKCE challenge was made for this code.", "code_verifier"),
                BadGrant::RefreshToken => "The refresh token is invalid.".into(),
                BadGrant::LinkedUser => "The user this client acts as is not active.".into(),
            },
            OAuthError::InvalidUserCredentials => "The user credentials were incorrect.".into(),
            OAuthError::UnauthorizedClient => check(
                "The client is not authorized to request an access token using this method.",
                "grant_type",
            ),
            OAuthError::UnsupportedGrantType(g) => format!(
                "The authorization grant type '{}' is not supported by the authorization server.",
                printable(g)
            )
            .into(),
            OAuthError::InvalidScope(s) => format!(
                "The requested scope is invalid, unknown, or malformed. Check the '{}' scope.",
                printable(s)
            )
            .into(),
            OAuthError::InvalidTarget => check("The requested resource is invalid, unknown, or not allowed for this grant.", "resource"),
            OAuthError::PayloadTooLarge => "The request body is too large.".into(),
            OAuthError::BodyTimeout => "The request body did not arrive in time.".into(),
            OAuthError::MethodNotAllowed => "This endpoint accepts POST only.".into(),
            OAuthError::ServerError => "The authorization server encountered an unexpected condition.".into(),
            OAuthError::TemporarilyUnavailable => {
                "The authorization server is temporarily unable to handle the request.".into()
            }
            OAuthError::RateLimited(t) => format!("Too many requests. Retry after {} seconds.", t.retry_after_secs()).into(),
            OAuthError::InvalidDpopProof => "The DPoP proof is missing or invalid. Check the 'DPoP' header.".into(),
            OAuthError::UseDpopNonce(_) => "A DPoP proof with the server-provided nonce is required. Check the 'DPoP-Nonce' header.".into(),
        }
    }

    pub fn into_response(self, realm: &str) -> Response<Body> {
        let mut resp = json(self.status(), &json!({ "error": self.code(), "error_description": self.description() }));
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        match self {
            // RFC 9110 §15.5.2: a 401 must carry a challenge, also when the credentials came
            // in the body (RFC 6749 §5.2 only demands it for Basic; the stricter rule wins).
            OAuthError::InvalidClient { .. } => {
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
            OAuthError::UseDpopNonce(nonce) => {
                if let Ok(v) = HeaderValue::from_str(&nonce) {
                    h.insert(DPOP_NONCE, v);
                }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;

    use super::*;

    /// Every reason, each echoing hostile input where it echoes any.
    fn every_error() -> Vec<OAuthError> {
        let hostile = "a\"b\\c d\u{e9}\n".repeat(20);
        let mut all: Vec<OAuthError> = [
            BadRequest::Missing("grant_type"),
            BadRequest::Invalid(hostile.clone()),
            BadRequest::Repeated(hostile.clone()),
            BadRequest::RepeatedHeader("Authorization"),
            BadRequest::NotJsonObject,
            BadRequest::TwoClientAuthMethods,
            BadRequest::ContentType,
            BadRequest::BodyUnreadable,
            BadRequest::NotYourToken,
        ]
        .into_iter()
        .map(OAuthError::from)
        .collect();
        all.extend(
            [
                BadGrant::Code,
                BadGrant::RedirectUri,
                BadGrant::CodeVerifier,
                BadGrant::UnexpectedVerifier,
                BadGrant::RefreshToken,
                BadGrant::LinkedUser,
            ]
            .into_iter()
            .map(OAuthError::from),
        );
        all.extend([
            OAuthError::InvalidClient { basic: true },
            OAuthError::InvalidClient { basic: false },
            OAuthError::InvalidUserCredentials,
            OAuthError::UnauthorizedClient,
            OAuthError::UnsupportedGrantType(hostile.clone()),
            OAuthError::InvalidScope(hostile),
            OAuthError::InvalidTarget,
            OAuthError::PayloadTooLarge,
            OAuthError::BodyTimeout,
            OAuthError::MethodNotAllowed,
            OAuthError::ServerError,
            OAuthError::TemporarilyUnavailable,
            OAuthError::RateLimited(Throttled { retry_after: Duration::from_millis(1500) }),
            OAuthError::InvalidDpopProof,
            OAuthError::UseDpopNonce("n".into()),
        ]);
        all
    }

    #[test]
    fn every_description_is_in_the_rfc_6749_character_set() {
        for e in every_error() {
            let d = e.description();
            assert!(!d.is_empty(), "{e:?}");
            let bad = d.bytes().find(|&b| !matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E));
            assert_eq!(bad, None, "{e:?}: {d}");
        }
    }

    #[test]
    fn descriptions_name_what_to_check() {
        let d = |e: OAuthError| e.description().into_owned();
        assert_eq!(
            d(BadRequest::Missing("grant_type").into()),
            "The request is missing a required parameter. Check the 'grant_type' parameter."
        );
        assert_eq!(
            d(BadRequest::Repeated("scope".into()).into()),
            "The request includes a parameter more than once. Check the 'scope' parameter."
        );
        assert_eq!(d(BadGrant::RefreshToken.into()), "The refresh token is invalid.");
        assert_eq!(d(OAuthError::InvalidUserCredentials), "The user credentials were incorrect.");
        assert!(d(OAuthError::UnsupportedGrantType("magic".into())).contains("'magic'"));
        assert!(d(OAuthError::InvalidScope("root".into())).contains("'root'"));
        assert!(d(BadGrant::CodeVerifier.into()).contains("code_verifier"));
        assert!(d(BadRequest::ContentType.into()).contains("Content-Type"));
        assert_eq!(
            d(OAuthError::RateLimited(Throttled { retry_after: Duration::from_millis(1500) })),
            "Too many requests. Retry after 2 seconds."
        );
    }

    #[test]
    fn status_and_code_of_each_kind() {
        let cases = [
            (OAuthError::from(BadRequest::NotJsonObject), 400, "invalid_request"),
            (OAuthError::InvalidClient { basic: false }, 401, "invalid_client"),
            (BadGrant::Code.into(), 400, "invalid_grant"),
            (OAuthError::InvalidUserCredentials, 400, "invalid_grant"),
            (OAuthError::UnauthorizedClient, 400, "unauthorized_client"),
            (OAuthError::UnsupportedGrantType("x".into()), 400, "unsupported_grant_type"),
            (OAuthError::InvalidScope("x".into()), 400, "invalid_scope"),
            (OAuthError::PayloadTooLarge, 413, "invalid_request"),
            (OAuthError::BodyTimeout, 408, "invalid_request"),
            (OAuthError::MethodNotAllowed, 405, "invalid_request"),
            (OAuthError::ServerError, 500, "server_error"),
            (OAuthError::TemporarilyUnavailable, 503, "temporarily_unavailable"),
            (OAuthError::RateLimited(Throttled { retry_after: Duration::ZERO }), 429, "slow_down"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{e:?}");
        }
    }

    #[tokio::test]
    async fn the_response_carries_code_description_and_no_store() {
        let resp = OAuthError::from(BadRequest::Missing("token")).into_response("r");
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(resp.headers()[header::PRAGMA], "no-cache");
        assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_none());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "invalid_request");
        assert_eq!(v["error_description"], "The request is missing a required parameter. Check the 'token' parameter.");
    }

    #[test]
    fn every_401_carries_a_basic_challenge_also_for_body_credentials() {
        for basic in [true, false] {
            let resp = OAuthError::InvalidClient { basic }.into_response("portcullis");
            assert_eq!(resp.status(), 401);
            assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Basic realm=\"portcullis\", charset=\"UTF-8\"");
        }
        for e in every_error().into_iter().filter(|e| e.status() != StatusCode::UNAUTHORIZED) {
            assert!(e.into_response("r").headers().get(header::WWW_AUTHENTICATE).is_none());
        }
    }

    #[test]
    fn method_and_rate_limit_headers() {
        let resp = OAuthError::MethodNotAllowed.into_response("r");
        assert_eq!(resp.headers()[header::ALLOW], "POST");
        let resp = OAuthError::RateLimited(Throttled { retry_after: Duration::from_millis(1500) }).into_response("r");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn only_wrong_secrets_and_passwords_are_failed_authentications() {
        for e in every_error() {
            let expected = matches!(e, OAuthError::InvalidClient { .. } | OAuthError::InvalidUserCredentials);
            assert_eq!(e.is_failed_authentication(), expected, "{e:?}");
        }
    }
}
