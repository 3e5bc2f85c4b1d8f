//! GET/POST /oauth/authorize (RFC 6749 §4.1.1, §4.2.1, RFC 7636): validate the request
//! ([`request`]), log the user in (session cookie, [`session`]), ask for consent, then
//! redirect back with a code or, for clients that opted into the implicit flow, an access
//! token in the fragment. Every refusal is an [`AuthorizeError`], rendered in one place.

mod error;
mod request;
mod session;

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as HttpBody;

use super::BodyError;
use super::grants::sign;
use super::params::Params;
use super::{pages, users};
use crate::cookies::{CSRF_COOKIE, SESSION_COOKIE};
use crate::http::Body;
use crate::ratelimit::{Endpoint, Throttled};
use crate::server::context::{Ctx, Outcome};
use crate::state::{Gateway, Runtime};
use crate::store::{CodeGrant, Session};
use crate::tokens::{now_secs, random_token, sha256};
pub(crate) use error::{AuthorizeError, Reason, redirect_status};
pub(crate) use request::{AuthRequest, ResponseType, parse_request};
use session::{Binding, csrf_matches, csrf_token, current_user, login_csrf, set_cookie};

/// Authorization codes live 60 s (RFC 6749 §4.1.2 recommends at most 10 minutes).
const CODE_LIFETIME_SECS: u64 = 60;
const LOGIN_FAILED: &str = "The username or password is incorrect.";

/// A page, or why the request was refused.
type Answer = Result<Response<Body>, AuthorizeError>;

/// Answer one /authorize request (`ctx.source` is whom the login form's rate limit charges).
pub async fn handle<B>(gw: &Gateway, ctx: &Ctx<'_>, req: Request<B>) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut outcome = Outcome::default();
    let post = req.method() == Method::POST;
    let resp = match run(gw, ctx, req, post, &mut outcome).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(post),
    };
    (resp, outcome)
}

async fn run<B>(gw: &Gateway, ctx: &Ctx<'_>, req: Request<B>, post: bool, outcome: &mut Outcome) -> Answer
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let rt = &*ctx.rt;
    if !post && req.method() != Method::GET {
        return Err(AuthorizeError::MethodNotAllowed);
    }
    let (parts, body) = req.into_parts();
    let params = if post {
        read_form(body, &parts.headers, rt).await?
    } else {
        Params::from_form(parts.uri.query().unwrap_or("").as_bytes()).map_err(|_| AuthorizeError::RepeatedParameter)?
    };
    let request = parse_request(rt, &params)?;
    outcome.client_id = Some(request.client.id.clone());
    if post {
        on_post(gw, rt, &parts.headers, &params, request, ctx.source, outcome).await
    } else {
        on_get(gw, rt, &parts.headers, request).await
    }
}

/// The error that sends the browser back with `temporarily_unavailable`.
fn unavailable(req: &AuthRequest) -> AuthorizeError {
    AuthorizeError::Redirect { to: req.redirect(), reason: Reason::TemporarilyUnavailable }
}

async fn read_form<B>(body: B, headers: &HeaderMap, rt: &Runtime) -> Result<Params, AuthorizeError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    // One Content-Type, in a charset where the form's bytes are its text.
    let readable =
        headers.get_all(header::CONTENT_TYPE).iter().nth(1).is_none() && crate::http::ascii_charsets_only(headers);
    if !readable || !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return Err(AuthorizeError::NotAForm);
    }
    let bytes = super::read_small_body(body, headers, &rt.config.limits).await.map_err(|e| match e {
        BodyError::TooLarge => AuthorizeError::FormTooLarge,
        BodyError::Unreadable => AuthorizeError::FormUnreadable,
        BodyError::Timeout => AuthorizeError::FormTimeout,
    })?;
    Params::from_form(&bytes).map_err(|_| AuthorizeError::RepeatedField)
}

/// Where the login and consent forms post: the authorize endpoint under the issuer's
/// path, as the metadata advertises it (RFC 8414 §3.1).
fn action_path(rt: &Runtime) -> String {
    format!("{}{}", rt.config.issuer_path(), rt.config.authorize_path)
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
        ("resource", p.audience.as_deref().unwrap_or("")),
        ("csrf", csrf),
    ]
}

/// The login page, with a CSRF token bound to this browser's nonce (set if it has none).
fn login_page(rt: &Runtime, headers: &HeaderMap, req: &AuthRequest, raw_scope: &str) -> Response<Body> {
    let (csrf, new_nonce) = login_csrf(rt, headers);
    let action = &action_path(rt);
    let mut resp = pages::login(action, &req.client.name, &carried(req, raw_scope, &csrf), None);
    if let Some(nonce) = new_nonce {
        set_cookie(&mut resp, CSRF_COOKIE, &nonce, rt.config.session_lifetime.as_secs());
    }
    resp
}

/// The consent page, with a CSRF token bound to the session `session_id`.
fn consent_page(rt: &Runtime, req: &AuthRequest, raw_scope: &str, user: &str, session_id: &str) -> Response<Body> {
    let csrf = csrf_token(rt, Binding::Session, session_id);
    let action = &action_path(rt);
    pages::consent(action, &req.client.name, user, &req.scopes, &carried(req, raw_scope, &csrf))
}

async fn on_get(gw: &Gateway, rt: &Runtime, headers: &HeaderMap, req: AuthRequest) -> Answer {
    let user = match current_user(gw, rt, headers).await {
        Ok(u) => u,
        Err(()) => return Err(unavailable(&req)),
    };
    let raw_scope = req.scopes.join(" ");
    match user {
        None => Ok(login_page(rt, headers, &req, &raw_scope)),
        Some((user, _)) if req.client.first_party => finish(gw, rt, &req, &user, false).await,
        Some((user, session_id)) => Ok(consent_page(rt, &req, &raw_scope, &user, &session_id)),
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
) -> Answer {
    // CSRF: consent must carry the token bound to the session cookie; every other form
    // (login) the token bound to the pre-login nonce cookie. A value that merely equals a
    // cookie proves nothing.
    let binding = if form.get("action") == Some("consent") { Binding::Session } else { Binding::Nonce };
    if !csrf_matches(rt, headers, binding, form.get("csrf")) {
        tracing::warn!(security_event = "csrf_failure", client_id = %req.client.id, "login or consent form without a valid CSRF token");
        return Err(AuthorizeError::Csrf);
    }
    let csrf = form.get("csrf").unwrap_or_default().to_string();
    let raw_scope = req.scopes.join(" ");
    let action = action_path(rt);
    match form.get("action") {
        Some("login") => {
            let fields = carried(&req, &raw_scope, &csrf);
            let mut throttled = |t: Throttled| {
                outcome.rate_limited = Some(Endpoint::Login);
                tracing::debug!(client_id = %req.client.id, "login rate limited");
                let msg = format!("Too many sign-in attempts. Try again in {} seconds.", t.retry_after_secs());
                let mut resp = pages::login(&action, &req.client.name, &fields, Some(&msg));
                *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after_secs()));
                resp
            };
            let limits = &rt.config.rate_limit;
            if let Err(t) = gw.limiter.admit(limits, Endpoint::Login, source).await {
                return Ok(throttled(t));
            }
            let (username, password) = (form.get("username").unwrap_or(""), form.get("password").unwrap_or(""));
            let user = match users::authenticate(gw, rt, username, password).await {
                Ok(Some(user)) => user,
                Ok(None) => {
                    tracing::info!(client_id = %req.client.id, "login failed");
                    gw.limiter.failed(limits, Endpoint::Login, source).await;
                    return Ok(pages::login(&action, &req.client.name, &fields, Some(LOGIN_FAILED)));
                }
                Err(t) => return Ok(throttled(t)),
            };
            let session_id = random_token(32);
            let lifetime = rt.config.session_lifetime.as_secs();
            let session = Session { user: user.username.clone(), expires_at: now_secs() + lifetime };
            if let Err(e) = gw.store.put_session(sha256(session_id.as_bytes()), session).await {
                tracing::error!(error = %e, "storing a session failed");
                return Err(unavailable(&req));
            }
            // A fresh CSRF token, bound to the new session: the pre-login one is no use from here.
            // The session holds even when the code cannot be stored: its cookie goes out
            // with the error redirect too.
            let mut resp = if req.client.first_party {
                finish(gw, rt, &req, &user.username, true).await.unwrap_or_else(|e| e.into_response(true))
            } else {
                consent_page(rt, &req, &raw_scope, &user.username, &session_id)
            };
            set_cookie(&mut resp, SESSION_COOKIE, &session_id, lifetime);
            Ok(resp)
        }
        Some("consent") => {
            let user = match current_user(gw, rt, headers).await {
                Ok(Some((u, _))) => u,
                Ok(None) => return Ok(login_page(rt, headers, &req, &raw_scope)),
                Err(()) => return Err(unavailable(&req)),
            };
            if form.get("decision") == Some("allow") {
                finish(gw, rt, &req, &user, true).await
            } else {
                Err(AuthorizeError::Redirect { to: req.redirect(), reason: Reason::AccessDenied })
            }
        }
        _ => Err(AuthorizeError::IncompleteForm),
    }
}

/// Issue the code (or, for the implicit flow, the token) and send the browser back.
async fn finish(gw: &Gateway, rt: &Runtime, req: &AuthRequest, user: &str, post: bool) -> Answer {
    let now = now_secs();
    let to = req.redirect();
    match req.response_type {
        ResponseType::Code => {
            let code = random_token(32);
            // Issued after the client's not-before, as tokens are: a code of the second of
            // a reset is not void from birth, and one from before it is (at the exchange).
            let issued_at = gw.validator.issue_time(&req.client.id, now);
            let grant = CodeGrant {
                client_id: req.client.id.clone(),
                redirect_uri: req.redirect_uri.clone(),
                redirect_uri_given: req.redirect_uri_given,
                scopes: req.scopes.clone(),
                user: user.to_string(),
                code_challenge: req.code_challenge.clone(),
                expires_at: now + CODE_LIFETIME_SECS,
                audience: req.audience.clone(),
                issued_at,
            };
            if let Err(e) = gw.store.put_code(sha256(code.as_bytes()), grant).await {
                tracing::error!(error = %e, "storing an authorization code failed");
                return Err(unavailable(req));
            }
            Ok(to.with(&[("code", &code)], redirect_status(post)))
        }
        // §4.2.2: the token travels in the fragment; never a refresh token.
        // Issued after the client's not-before, as at the token endpoint: a token minted in
        // the second of a reset is not void from birth.
        ResponseType::Token => match sign(
            rt,
            &req.client,
            user,
            &req.scopes,
            req.audience.as_deref(),
            gw.validator.issue_time(&req.client.id, now),
        ) {
            Ok(t) => {
                let expires_in = t.expires_in.to_string();
                let pairs = [
                    ("access_token", t.access_token.as_str()),
                    ("token_type", "Bearer"),
                    ("expires_in", &expires_in),
                    ("scope", &t.scope),
                ];
                Ok(to.with(&pairs, redirect_status(post)))
            }
            Err(_) => Err(AuthorizeError::Redirect { to, reason: Reason::SigningFailed }),
        },
    }
}
