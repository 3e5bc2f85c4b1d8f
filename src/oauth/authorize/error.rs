//! Why /authorize refused, and the one place that tells the user agent: a page while the
//! client or its redirect URI cannot be trusted (RFC 6749 §4.1.2.1), a redirect back to
//! the client after that.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::http::{Body, full};
use crate::oauth::pages;

/// A refused authorization request.
pub(crate) enum AuthorizeError {
    /// Neither GET nor POST.
    MethodNotAllowed,
    /// The query string repeats a parameter.
    RepeatedParameter,
    /// A POST whose body is not `application/x-www-form-urlencoded`.
    NotAForm,
    FormTooLarge,
    FormUnreadable,
    FormTimeout,
    RepeatedField,
    NoClient,
    /// Unknown or disabled: the two are not told apart.
    UnknownClient,
    UnregisteredRedirectUri,
    /// No `redirect_uri`, and the client registered more than one.
    NoRedirectUri,
    /// A form without the CSRF token bound to this browser's cookie.
    Csrf,
    /// A form whose `action` is neither login nor consent.
    IncompleteForm,
    /// Sent back to the client (§4.1.2.1, §4.2.2.1).
    Redirect {
        to: Redirect,
        reason: Reason,
    },
}

/// Why a request went back to the client with an error.
pub(crate) enum Reason {
    MissingResponseType,
    /// `code` or `token`, which this client may not use.
    UnauthorizedResponseType,
    /// Another response type, as printable text (at most 32 characters).
    UnsupportedResponseType(String),
    /// The scope refused, as printable text, when one scope was at fault.
    InvalidScope(Option<String>),
    BadChallenge,
    /// A challenge with no method or another than S256 (RFC 9700 §2.1.1).
    NotS256,
    /// A public client without a challenge.
    PkceRequired,
    /// RFC 8707 §2: `resource` is malformed or names no audience this gateway serves.
    InvalidTarget,
    AccessDenied,
    TemporarilyUnavailable,
    SigningFailed,
}

impl Reason {
    /// The RFC 6749 `error` code and `error_description`; the description stays within
    /// %x20-21 / %x23-5B / %x5D-7E (§4.1.2.1), so names are quoted with `'`.
    fn wire(&self) -> (&'static str, Cow<'static, str>) {
        match self {
            Reason::MissingResponseType => ("invalid_request", "Check the 'response_type' parameter.".into()),
            Reason::UnauthorizedResponseType => {
                ("unauthorized_client", "The client is not authorized to use this response type.".into())
            }
            Reason::UnsupportedResponseType(other) => {
                ("unsupported_response_type", format!("The response type '{other}' is not supported.").into())
            }
            Reason::InvalidScope(Some(scope)) => ("invalid_scope", format!("Check the '{scope}' scope.").into()),
            Reason::InvalidScope(None) => ("invalid_scope", "Check the 'scope' parameter.".into()),
            Reason::BadChallenge => ("invalid_request", "Check the 'code_challenge' parameter.".into()),
            Reason::NotS256 => (
                "invalid_request",
                "Only the S256 PKCE method is supported. Check the 'code_challenge_method' parameter.".into(),
            ),
            Reason::PkceRequired => {
                ("invalid_request", "PKCE is required for this client. Check the 'code_challenge' parameter.".into())
            }
            Reason::InvalidTarget => ("invalid_target", "Check the 'resource' parameter.".into()),
            Reason::AccessDenied => ("access_denied", "The user denied the request.".into()),
            Reason::TemporarilyUnavailable => {
                ("temporarily_unavailable", "The authorization server is temporarily unavailable.".into())
            }
            Reason::SigningFailed => ("server_error", "Signing failed.".into()),
        }
    }
}

impl AuthorizeError {
    /// The page or redirect that tells the user agent; `post` picks the redirect status.
    pub(crate) fn into_response(self, post: bool) -> Response<Body> {
        let (status, message) = match self {
            AuthorizeError::Redirect { to, reason } => {
                let (error, description) = reason.wire();
                return to.with(&[("error", error), ("error_description", &description)], redirect_status(post));
            }
            AuthorizeError::MethodNotAllowed => {
                let mut resp = pages::error(StatusCode::METHOD_NOT_ALLOWED, "Use GET or POST.");
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                return resp;
            }
            AuthorizeError::RepeatedParameter => (StatusCode::BAD_REQUEST, "The request repeats a parameter."),
            AuthorizeError::NotAForm => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "The form was not sent as a form."),
            AuthorizeError::FormTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."),
            AuthorizeError::FormUnreadable => (StatusCode::BAD_REQUEST, "The form could not be read."),
            AuthorizeError::FormTimeout => (StatusCode::REQUEST_TIMEOUT, "The form did not arrive in time."),
            AuthorizeError::RepeatedField => (StatusCode::BAD_REQUEST, "The form repeats a field."),
            AuthorizeError::NoClient => {
                (StatusCode::BAD_REQUEST, "The request names no client (client_id is missing).")
            }
            AuthorizeError::UnknownClient => (StatusCode::BAD_REQUEST, "The application is unknown or disabled."),
            AuthorizeError::UnregisteredRedirectUri => {
                (StatusCode::BAD_REQUEST, "The redirect URI is not registered for this application.")
            }
            AuthorizeError::NoRedirectUri => {
                (StatusCode::BAD_REQUEST, "The request must name one of the application's redirect URIs.")
            }
            AuthorizeError::Csrf => {
                (StatusCode::FORBIDDEN, "This form has expired or did not come from this site. Go back and try again.")
            }
            AuthorizeError::IncompleteForm => (StatusCode::BAD_REQUEST, "The form is incomplete."),
        };
        pages::error(status, message)
    }
}

/// 303 makes the browser follow a POST with a GET.
pub(crate) fn redirect_status(post: bool) -> StatusCode {
    if post { StatusCode::SEE_OTHER } else { StatusCode::FOUND }
}

/// Where and how to return to the client.
pub(crate) struct Redirect {
    pub(super) uri: String,
    pub(super) fragment: bool,
    pub(super) state: Option<String>,
    /// RFC 9207: who answers, so a client talking to several servers detects mix-ups.
    pub(super) iss: String,
}

impl Redirect {
    pub(super) fn with(&self, pairs: &[(&str, &str)], status: StatusCode) -> Response<Body> {
        let mut all: Vec<(&str, &str)> = pairs.to_vec();
        if let Some(state) = &self.state {
            all.push(("state", state));
        }
        all.push(("iss", &self.iss));
        let location = if self.fragment {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            ser.extend_pairs(all);
            format!("{}#{}", self.uri, ser.finish())
        } else {
            match url::Url::parse(&self.uri) {
                Ok(mut url) => {
                    url.query_pairs_mut().extend_pairs(all);
                    url.to_string()
                }
                Err(_) => self.uri.clone(),
            }
        };
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = status;
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn back() -> Redirect {
        Redirect {
            uri: "https://app.test/cb".into(),
            fragment: false,
            state: Some("s1".into()),
            iss: "https://gw".into(),
        }
    }

    #[test]
    fn a_redirect_carries_code_state_and_issuer_with_the_status_of_the_method() {
        for (post, status) in [(false, StatusCode::FOUND), (true, StatusCode::SEE_OTHER)] {
            let resp = AuthorizeError::Redirect { to: back(), reason: Reason::AccessDenied }.into_response(post);
            assert_eq!(resp.status(), status);
            let location = resp.headers()[header::LOCATION].to_str().unwrap();
            assert!(location.starts_with("https://app.test/cb?error=access_denied&"), "{location}");
            assert!(location.contains("&state=s1&iss=https%3A%2F%2Fgw"), "{location}");
        }
    }

    #[test]
    fn an_implicit_refusal_goes_in_the_fragment() {
        let to = Redirect { fragment: true, ..back() };
        let resp = AuthorizeError::Redirect { to, reason: Reason::InvalidScope(None) }.into_response(false);
        let location = resp.headers()[header::LOCATION].to_str().unwrap();
        assert!(location.starts_with("https://app.test/cb#error=invalid_scope&"), "{location}");
    }

    #[test]
    fn error_descriptions_stay_within_the_rfc6749_charset() {
        let hostile = crate::oauth::error::printable("a\"b\\c d\u{e9}\n'");
        let all = [
            Reason::MissingResponseType,
            Reason::UnauthorizedResponseType,
            Reason::UnsupportedResponseType(hostile.clone()),
            Reason::InvalidScope(Some(hostile)),
            Reason::InvalidScope(None),
            Reason::BadChallenge,
            Reason::NotS256,
            Reason::PkceRequired,
            Reason::InvalidTarget,
            Reason::AccessDenied,
            Reason::TemporarilyUnavailable,
            Reason::SigningFailed,
        ];
        for reason in all {
            let (error, description) = reason.wire();
            assert!(
                description
                    .bytes()
                    .all(|b| b == 0x20 || b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)),
                "{error}: {description}"
            );
        }
    }

    #[test]
    fn pages_never_redirect() {
        let resp = AuthorizeError::MethodNotAllowed.into_response(false);
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET, POST");
        for (e, status) in [
            (AuthorizeError::Csrf, StatusCode::FORBIDDEN),
            (AuthorizeError::UnknownClient, StatusCode::BAD_REQUEST),
            (AuthorizeError::FormTimeout, StatusCode::REQUEST_TIMEOUT),
        ] {
            let resp = e.into_response(true);
            assert_eq!(resp.status(), status);
            assert!(!resp.headers().contains_key(header::LOCATION));
        }
    }
}
