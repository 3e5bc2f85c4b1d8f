//! GET/POST /oauth/authorize (RFC 6749 §4.1.1, §4.2.1, RFC 7636): validate the request,
//! log the user in (session cookie), ask for consent, then redirect back with a code or,
//! for clients that opted into the implicit flow, an access token in the fragment.
//!
//! Errors before the client and redirect URI are known to be genuine are shown as a page,
//! never redirected (§4.1.2.1); errors after that go back to the client's redirect URI.
//!
//! CSRF: a form's `csrf` value is an HMAC, under a key derived from the signing key (so
//! every replica with the same keys agrees), of what only this browser holds: before
//! login a random nonce in the CSRF cookie, after login the session id. A cookie planted
//! by a sibling origin or an upstream cannot be paired with a form value without the key,
//! and the pre-login value is worthless at the consent step.

use std::net::IpAddr;
use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as HttpBody;
use subtle::ConstantTimeEq;

use super::BodyError;
use super::grants::{resolve_scopes, sign};
use super::params::Params;
use super::{pages, users};
use crate::config::{Client, GrantType};
use crate::cookies::{self, CSRF_COOKIE, SESSION_COOKIE};
use crate::http::{Body, full};
use crate::ratelimit::{Endpoint, Throttled};
use crate::server::context::{Ctx, Outcome};
use crate::state::{Gateway, Runtime};
use crate::store::{CodeGrant, Session};
use crate::tokens::{now_secs, random_token, sha256};

/// Authorization codes live 60 s (RFC 6749 §4.1.2 recommends at most 10 minutes).
const CODE_LIFETIME_SECS: u64 = 60;
const LOGIN_FAILED: &str = "The username or password is incorrect.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseType {
    Code,
    Token,
}

/// A validated authorization request.
pub(crate) struct AuthRequest {
    pub(crate) client: Arc<Client>,
    pub(crate) response_type: ResponseType,
    pub(crate) redirect_uri: String,
    pub(crate) redirect_uri_given: bool,
    pub(crate) scopes: Vec<String>,
    pub(crate) state: Option<String>,
    pub(crate) code_challenge: Option<String>,
    pub(crate) iss: String,
}

impl AuthRequest {
    /// The way back to this client (query or fragment, with state and iss).
    fn redirect(&self) -> Redirect {
        Redirect {
            uri: self.redirect_uri.clone(),
            fragment: self.response_type == ResponseType::Token,
            state: self.state.clone(),
            iss: self.iss.clone(),
        }
    }
}

/// Why an authorization request was refused, and how to tell the user agent.
pub(crate) enum Refusal {
    /// Show a page: the redirect URI cannot be trusted (or there is none).
    Page(StatusCode, String),
    /// Send the error back to the client (§4.1.2.1, §4.2.2.1).
    Redirect { to: Redirect, error: &'static str, description: String },
}

/// Where and how to return to the client.
pub(crate) struct Redirect {
    uri: String,
    fragment: bool,
    state: Option<String>,
    /// RFC 9207: who answers, so a client talking to several servers detects mix-ups.
    iss: String,
}

impl Redirect {
    fn with(&self, pairs: &[(&str, &str)], status: StatusCode) -> Response<Body> {
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

/// Answer one /authorize request (`ctx.source` is whom the login form's rate limit charges).
pub async fn handle<B>(gw: &Gateway, ctx: &Ctx<'_>, req: Request<B>) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let rt = &*ctx.rt;
    let mut outcome = Outcome::default();
    let post = req.method() == Method::POST;
    if !post && req.method() != Method::GET {
        let mut resp = pages::error(StatusCode::METHOD_NOT_ALLOWED, "Use GET or POST.");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        return (resp, outcome);
    }
    let (parts, body) = req.into_parts();
    let params = if post {
        match read_form(body, &parts.headers, rt).await {
            Ok(p) => p,
            Err(resp) => return (resp, outcome),
        }
    } else {
        match Params::from_form(parts.uri.query().unwrap_or("").as_bytes()) {
            Ok(p) => p,
            Err(_) => return (pages::error(StatusCode::BAD_REQUEST, "The request repeats a parameter."), outcome),
        }
    };
    let request = match parse_request(rt, &params) {
        Ok(r) => r,
        Err(refusal) => return (refuse(refusal, post), outcome),
    };
    outcome.client_id = Some(request.client.id.clone());
    let resp = if post {
        on_post(gw, rt, &parts.headers, &params, request, ctx.source, &mut outcome).await
    } else {
        on_get(gw, rt, &parts.headers, request).await
    };
    (resp, outcome)
}

fn redirect_status(post: bool) -> StatusCode {
    // 303 makes the browser follow a POST with a GET.
    if post { StatusCode::SEE_OTHER } else { StatusCode::FOUND }
}

pub(crate) fn refuse(refusal: Refusal, post: bool) -> Response<Body> {
    match refusal {
        Refusal::Page(status, msg) => pages::error(status, &msg),
        Refusal::Redirect { to, error, description } => {
            to.with(&[("error", error), ("error_description", &description)], redirect_status(post))
        }
    }
}

async fn read_form<B>(body: B, headers: &HeaderMap, rt: &Runtime) -> Result<Params, Response<Body>>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(pages::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "The form was not sent as a form."));
    }
    let bytes = super::read_small_body(body, headers, &rt.config.limits).await.map_err(|e| match e {
        BodyError::TooLarge => pages::error(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."),
        BodyError::Unreadable => pages::error(StatusCode::BAD_REQUEST, "The form could not be read."),
        BodyError::Timeout => pages::error(StatusCode::REQUEST_TIMEOUT, "The form did not arrive in time."),
    })?;
    Params::from_form(&bytes).map_err(|_| pages::error(StatusCode::BAD_REQUEST, "The form repeats a field."))
}

/// RFC 7636 §4.2: the S256 challenge is base64url of 32 bytes: 43 characters.
fn valid_challenge(c: &str) -> bool {
    (43..=128).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

pub(crate) fn parse_request(rt: &Runtime, p: &Params) -> Result<AuthRequest, Refusal> {
    let page = |msg: &str| Refusal::Page(StatusCode::BAD_REQUEST, msg.to_string());
    let client_id = p.get("client_id").ok_or_else(|| page("The request names no client (client_id is missing)."))?;
    let client = match rt.config.clients.get(client_id) {
        Some(c) if c.enabled => c.clone(),
        _ => return Err(page("The application is unknown or disabled.")),
    };
    // §3.1.2.3: exact match against a registered URI; the only one when omitted.
    let (redirect_uri, redirect_uri_given) = match p.get("redirect_uri") {
        Some(given) if client.redirect_uris.iter().any(|r| r == given) => (given.to_string(), true),
        Some(_) => return Err(page("The redirect URI is not registered for this application.")),
        None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
        None => return Err(page("The request must name one of the application's redirect URIs.")),
    };
    let state = p.get("state").map(str::to_string);
    let response_type = p.get("response_type");
    let mut to = Redirect {
        uri: redirect_uri.clone(),
        fragment: response_type == Some("token"),
        state,
        iss: rt.config.issuer.clone(),
    };
    let fail = |to: Redirect, error: &'static str, description: String| Refusal::Redirect { to, error, description };

    let response_type = match response_type {
        None => return Err(fail(to, "invalid_request", "Check the \"response_type\" parameter.".into())),
        Some("code") if client.grants.contains(&GrantType::AuthorizationCode) => ResponseType::Code,
        Some("token") if client.implicit => ResponseType::Token,
        Some("code" | "token") => {
            return Err(fail(
                to,
                "unauthorized_client",
                "The client is not authorized to use this response type.".into(),
            ));
        }
        Some(other) => {
            to.fragment = false;
            let other: String = other.chars().filter(|c| c.is_ascii_graphic()).take(32).collect();
            return Err(fail(
                to,
                "unsupported_response_type",
                format!("The response type \"{other}\" is not supported."),
            ));
        }
    };
    let scopes = match resolve_scopes(&client, p.get("scope")) {
        Ok(s) => s,
        Err(e) => {
            let desc = match e {
                super::error::OAuthError::InvalidScope(s) => {
                    format!("Check the \"{}\" scope.", super::error::printable(&s))
                }
                _ => "Check the \"scope\" parameter.".into(),
            };
            return Err(fail(to, "invalid_scope", desc));
        }
    };
    let code_challenge = if response_type == ResponseType::Code {
        match (p.get("code_challenge"), p.get("code_challenge_method")) {
            (Some(c), Some("S256")) if valid_challenge(c) => Some(c.to_string()),
            (Some(_), Some("S256")) => {
                return Err(fail(to, "invalid_request", "Check the \"code_challenge\" parameter.".into()));
            }
            // RFC 7636 §4.3: no method means "plain", which we refuse (RFC 9700 §2.1.1).
            (Some(_), _) => {
                return Err(fail(
                    to,
                    "invalid_request",
                    "Only the S256 PKCE method is supported. Check the \"code_challenge_method\" parameter.".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(fail(to, "invalid_request", "Check the \"code_challenge\" parameter.".into()));
            }
            (None, None) if client.is_public() => {
                return Err(fail(
                    to,
                    "invalid_request",
                    "PKCE is required for this client. Check the \"code_challenge\" parameter.".into(),
                ));
            }
            (None, None) => None,
        }
    } else {
        None
    };
    Ok(AuthRequest {
        client,
        response_type,
        redirect_uri,
        redirect_uri_given,
        scopes,
        state: to.state,
        code_challenge,
        iss: to.iss,
    })
}

/// The request parameters to carry through the login and consent forms.
fn carried<'a>(p: &'a AuthRequest, raw_scope: &'a str, csrf: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", if p.response_type == ResponseType::Code { "code" } else { "token" }),
        ("client_id", &p.client.id),
        ("redirect_uri", if p.redirect_uri_given { &p.redirect_uri } else { "" }),
        ("scope", raw_scope),
        ("state", p.state.as_deref().unwrap_or("")),
        ("code_challenge", p.code_challenge.as_deref().unwrap_or("")),
        ("code_challenge_method", if p.code_challenge.is_some() { "S256" } else { "" }),
        ("csrf", csrf),
    ]
}

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

fn set_cookie(resp: &mut Response<Body>, name: &str, value: &str, max_age: u64) {
    let c = format!("{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn well_formed(v: &str) -> bool {
    (32..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a CSRF token is bound to.
#[derive(Clone, Copy)]
enum Binding {
    /// The random nonce in the CSRF cookie, before login.
    Nonce = 1,
    /// The login session id (the session cookie).
    Session = 2,
}

/// The form value bound to `value` (a nonce or a session id).
fn csrf_token(rt: &Runtime, binding: Binding, value: &str) -> String {
    let mut ctx = hmac::Context::with_key(rt.keys.csrf_key());
    ctx.update(&[binding as u8]);
    ctx.update(value.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
}

/// Is `given` the CSRF token bound to the cookie that `binding` names? Constant-time;
/// false when the cookie is missing or malformed.
fn csrf_matches(rt: &Runtime, headers: &HeaderMap, binding: Binding, given: Option<&str>) -> bool {
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
fn login_csrf(rt: &Runtime, headers: &HeaderMap) -> (String, Option<String>) {
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
async fn current_user(gw: &Gateway, rt: &Runtime, headers: &HeaderMap) -> Result<Option<(String, String)>, ()> {
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

fn unavailable(req: &AuthRequest, post: bool) -> Response<Body> {
    let to = req.redirect();
    to.with(
        &[
            ("error", "temporarily_unavailable"),
            ("error_description", "The authorization server is temporarily unavailable."),
        ],
        redirect_status(post),
    )
}

/// The login page, with a CSRF token bound to this browser's nonce (set if it has none).
fn login_page(rt: &Runtime, headers: &HeaderMap, req: &AuthRequest, raw_scope: &str) -> Response<Body> {
    let (csrf, new_nonce) = login_csrf(rt, headers);
    let action = &rt.config.authorize_path;
    let mut resp = pages::login(action, &req.client.name, &carried(req, raw_scope, &csrf), None);
    if let Some(nonce) = new_nonce {
        set_cookie(&mut resp, CSRF_COOKIE, &nonce, rt.config.session_lifetime.as_secs());
    }
    resp
}

/// The consent page, with a CSRF token bound to the session `session_id`.
fn consent_page(rt: &Runtime, req: &AuthRequest, raw_scope: &str, user: &str, session_id: &str) -> Response<Body> {
    let csrf = csrf_token(rt, Binding::Session, session_id);
    let action = &rt.config.authorize_path;
    pages::consent(action, &req.client.name, user, &req.scopes, &carried(req, raw_scope, &csrf))
}

async fn on_get(gw: &Gateway, rt: &Runtime, headers: &HeaderMap, req: AuthRequest) -> Response<Body> {
    let user = match current_user(gw, rt, headers).await {
        Ok(u) => u,
        Err(()) => return unavailable(&req, false),
    };
    let raw_scope = req.scopes.join(" ");
    match user {
        None => login_page(rt, headers, &req, &raw_scope),
        Some((user, _)) if req.client.first_party => finish(gw, rt, &req, &user, false).await,
        Some((user, session_id)) => consent_page(rt, &req, &raw_scope, &user, &session_id),
    }
}

async fn on_post(
    gw: &Gateway,
    rt: &Runtime,
    headers: &HeaderMap,
    form: &Params,
    req: AuthRequest,
    source: IpAddr,
    outcome: &mut Outcome,
) -> Response<Body> {
    // CSRF: consent must carry the token bound to the session cookie; every other form
    // (login) the token bound to the pre-login nonce cookie. A value that merely equals a
    // cookie proves nothing.
    let binding = if form.get("action") == Some("consent") { Binding::Session } else { Binding::Nonce };
    if !csrf_matches(rt, headers, binding, form.get("csrf")) {
        return pages::error(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this site. Go back and try again.",
        );
    }
    let csrf = form.get("csrf").unwrap_or_default().to_string();
    let raw_scope = req.scopes.join(" ");
    let action = rt.config.authorize_path.clone();
    match form.get("action") {
        Some("login") => {
            let fields = carried(&req, &raw_scope, &csrf);
            let mut throttled = |t: Throttled| {
                outcome.rate_limited = Some(Endpoint::Login);
                tracing::info!(client_id = %req.client.id, "login rate limited");
                let msg = format!("Too many sign-in attempts. Try again in {} seconds.", t.retry_after_secs());
                let mut resp = pages::login(&action, &req.client.name, &fields, Some(&msg));
                *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after_secs()));
                resp
            };
            let limits = &rt.config.rate_limit;
            if let Err(t) = gw.limiter.admit(limits, Endpoint::Login, source) {
                return throttled(t);
            }
            let (username, password) = (form.get("username").unwrap_or(""), form.get("password").unwrap_or(""));
            let user = match users::authenticate(gw, rt, username, password).await {
                Ok(Some(user)) => user,
                Ok(None) => {
                    tracing::info!(client_id = %req.client.id, "login failed");
                    gw.limiter.failed(limits, Endpoint::Login, source);
                    return pages::login(&action, &req.client.name, &fields, Some(LOGIN_FAILED));
                }
                Err(t) => return throttled(t),
            };
            let session_id = random_token(32);
            let lifetime = rt.config.session_lifetime.as_secs();
            let session = Session { user: user.username.clone(), expires_at: now_secs() + lifetime };
            if let Err(e) = gw.store.put_session(sha256(session_id.as_bytes()), session).await {
                tracing::error!(error = %e, "storing a session failed");
                return unavailable(&req, true);
            }
            // A fresh CSRF token, bound to the new session: the pre-login one is no use from here.
            let mut resp = if req.client.first_party {
                finish(gw, rt, &req, &user.username, true).await
            } else {
                consent_page(rt, &req, &raw_scope, &user.username, &session_id)
            };
            set_cookie(&mut resp, SESSION_COOKIE, &session_id, lifetime);
            resp
        }
        Some("consent") => {
            let user = match current_user(gw, rt, headers).await {
                Ok(Some((u, _))) => u,
                Ok(None) => return login_page(rt, headers, &req, &raw_scope),
                Err(()) => return unavailable(&req, true),
            };
            if form.get("decision") == Some("allow") {
                finish(gw, rt, &req, &user, true).await
            } else {
                let to = req.redirect();
                to.with(
                    &[("error", "access_denied"), ("error_description", "The user denied the request.")],
                    StatusCode::SEE_OTHER,
                )
            }
        }
        _ => pages::error(StatusCode::BAD_REQUEST, "The form is incomplete."),
    }
}

/// Issue the code (or, for the implicit flow, the token) and send the browser back.
async fn finish(gw: &Gateway, rt: &Runtime, req: &AuthRequest, user: &str, post: bool) -> Response<Body> {
    let now = now_secs();
    let to = req.redirect();
    match req.response_type {
        ResponseType::Code => {
            let code = random_token(32);
            let grant = CodeGrant {
                client_id: req.client.id.clone(),
                redirect_uri: req.redirect_uri.clone(),
                redirect_uri_given: req.redirect_uri_given,
                scopes: req.scopes.clone(),
                user: user.to_string(),
                code_challenge: req.code_challenge.clone(),
                expires_at: now + CODE_LIFETIME_SECS,
            };
            if let Err(e) = gw.store.put_code(sha256(code.as_bytes()), grant).await {
                tracing::error!(error = %e, "storing an authorization code failed");
                return unavailable(req, post);
            }
            to.with(&[("code", &code)], redirect_status(post))
        }
        // §4.2.2: the token travels in the fragment; never a refresh token.
        ResponseType::Token => match sign(rt, &req.client, user, &req.scopes, now) {
            Ok(t) => {
                let expires_in = t.expires_in.to_string();
                let pairs = [
                    ("access_token", t.access_token.as_str()),
                    ("token_type", "Bearer"),
                    ("expires_in", &expires_in),
                    ("scope", &t.scope),
                ];
                to.with(&pairs, redirect_status(post))
            }
            Err(_) => {
                to.with(&[("error", "server_error"), ("error_description", "Signing failed.")], redirect_status(post))
            }
        },
    }
}
