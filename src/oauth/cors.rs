//! CORS (Fetch standard) for browser clients on another origin: the token and revocation
//! endpoints and the discovery documents answer an `Origin` the operator listed in a
//! client's `cors_origins`, echoing it exactly. No wildcard, no
//! `Access-Control-Allow-Credentials`: these endpoints take no cookies, so a page never
//! needs ambient credentials here. An unlisted or absent origin gets no CORS header at
//! all, which the browser enforces as a refusal (fail closed).

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::config::Config;
use crate::http::{Body, full};

/// Which CORS policy an endpoint follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cors {
    /// `/token`, `/revoke`: POST, with `Authorization` (HTTP Basic) and `Content-Type`.
    /// Once the client is known, only its own origins.
    Post,
    /// The metadata and JWKS documents: GET from any origin any client lists.
    Discovery,
}

/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: &str = "600";

impl Cors {
    fn methods(self) -> &'static str {
        match self {
            Cors::Post => "POST",
            Cors::Discovery => "GET, HEAD",
        }
    }
}

/// The request's `Origin`, if it is one any enabled client lists (for `client_id`, when
/// given and known, that client only).
fn allowed(config: &Config, headers: &HeaderMap, client_id: Option<&str>) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    // One Origin header, compared byte for byte with the serialised form the config holds.
    if headers.get_all(header::ORIGIN).iter().count() != 1 {
        return None;
    }
    let text = origin.to_str().ok()?;
    let listed = |c: &crate::config::Client| c.enabled && c.cors_origins.iter().any(|o| o == text);
    let ok = match client_id.and_then(|id| config.clients.get(id)) {
        Some(client) => listed(client),
        None => config.clients.values().any(|c| listed(c)),
    };
    ok.then(|| origin.clone())
}

/// The answer to a CORS preflight (`OPTIONS`): 204 with the allowed method and headers for
/// a listed origin; 204 without any CORS header otherwise (the browser then refuses).
pub fn preflight(config: &Config, kind: Cors, headers: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Ok(allow) = HeaderValue::from_str(&format!("OPTIONS, {}", kind.methods())) {
        h.insert(header::ALLOW, allow);
    }
    if let Some(origin) = allowed(config, headers, None) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(kind.methods()));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type, dpop"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    }
    resp
}

/// Add the CORS headers to an answer of an endpoint under `kind`, for the request's
/// `origin` header and the client the endpoint identified (if any).
pub fn decorate(config: &Config, kind: Cors, origin: &HeaderMap, client_id: Option<&str>, resp: &mut Response<Body>) {
    let client_id = if kind == Cors::Post { client_id } else { None };
    let h = resp.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed(config, origin, client_id) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if kind == Cors::Post {
            // Let the page read why it was refused, and when to retry.
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("www-authenticate, retry-after, dpop-nonce"),
            );
        }
    }
}
