//! The browser's side of /authorize: the login session cookie and CSRF.
//!
//! A form's `csrf` value is an HMAC, under a key derived from the signing key (so every
//! replica with the same keys agrees), of what only this browser holds: before login a
//! random nonce in the CSRF cookie, after login the session id. A cookie planted by a
//! sibling origin or an upstream cannot be paired with a form value without the key, and
//! the pre-login value is worthless at the consent step.

use aws_lc_rs::hmac;
use base64::Engine;
use http::{HeaderMap, HeaderValue, Response, header};
use subtle::ConstantTimeEq;

use crate::cookies::{self, CSRF_COOKIE, SESSION_COOKIE};
use crate::http::Body;
use crate::oauth::users;
use crate::state::{Gateway, Runtime};
use crate::tokens::{now_secs, random_token, sha256};

/// The value of our cookie `name`, read as bytes (another cookie's non-ASCII value must not
/// hide ours), matched exactly. Absent when the name appears more than once: which copy a
/// browser sends first is not ours to choose, so an ambiguous pair proves nothing.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for (k, v) in headers.get_all(header::COOKIE).iter().flat_map(|h| cookies::pairs(h.as_bytes())) {
        if k == name.as_bytes() {
            if found.is_some() {
                return None;
            }
            found = Some(v);
        }
    }
    found.and_then(|v| std::str::from_utf8(v).ok())
}

pub(super) fn set_cookie(resp: &mut Response<Body>, name: &str, value: &str, max_age: u64) {
    let c = format!("{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub(super) fn well_formed(v: &str) -> bool {
    (32..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a CSRF token is bound to.
#[derive(Clone, Copy)]
pub(super) enum Binding {
    /// The random nonce in the CSRF cookie, before login.
    Nonce = 1,
    /// The login session id (the session cookie).
    Session = 2,
}

/// The form value bound to `value` (a nonce or a session id).
pub(super) fn csrf_token(rt: &Runtime, binding: Binding, value: &str) -> String {
    let mut ctx = hmac::Context::with_key(rt.keys.csrf_key());
    ctx.update(&[binding as u8]);
    ctx.update(value.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
}

/// Is `given` the CSRF token bound to the cookie that `binding` names? Constant-time;
/// false when the cookie is missing or malformed.
pub(super) fn csrf_matches(rt: &Runtime, headers: &HeaderMap, binding: Binding, given: Option<&str>) -> bool {
    let name = match binding {
        Binding::Nonce => CSRF_COOKIE,
        Binding::Session => SESSION_COOKIE,
    };
    match (cookie(headers, name).filter(|v| well_formed(v)), given) {
        (Some(value), Some(given)) => bool::from(csrf_token(rt, binding, value).as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    }
}

/// The pre-login CSRF token for this browser, and the nonce to set as its cookie when it
/// has none yet.
pub(super) fn login_csrf(rt: &Runtime, headers: &HeaderMap) -> (String, Option<String>) {
    match cookie(headers, CSRF_COOKIE).filter(|v| well_formed(v)) {
        Some(nonce) => (csrf_token(rt, Binding::Nonce, nonce), None),
        None => {
            let nonce = random_token(32);
            (csrf_token(rt, Binding::Nonce, &nonce), Some(nonce))
        }
    }
}

/// The logged-in user and their session id, if the session cookie names a live session
/// of an active user.
pub(super) async fn current_user(
    gw: &Gateway,
    rt: &Runtime,
    headers: &HeaderMap,
) -> Result<Option<(String, String)>, ()> {
    let Some(id) = cookie(headers, SESSION_COOKIE).filter(|v| well_formed(v)) else { return Ok(None) };
    match gw.store.get_session(sha256(id.as_bytes()), now_secs()).await {
        Ok(Some(s)) if users::is_active(rt, &s.user) => Ok(Some((s.user, id.to_string()))),
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "session lookup failed");
            Err(())
        }
    }
}
