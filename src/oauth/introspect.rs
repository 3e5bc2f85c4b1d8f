//! POST /oauth/introspect (RFC 7662): a confidential client asks whether a token is active.
//!
//! Who may read what (§4: the endpoint must not become a token-scanning oracle): a client
//! flagged `introspect = true` — a resource server — may introspect every client's access
//! tokens; any other confidential client only the tokens issued to itself; refresh tokens
//! only ever to their own client. A token the caller may not read is `{"active": false}`,
//! exactly like an invalid, expired, revoked or foreign one (§2.2 asks this answer for "not
//! allowed to introspect this particular token"), so the answer tells a stranger nothing. A
//! public or unauthenticated caller gets 401 `invalid_client` (§2.1).

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body as HttpBody;
use serde_json::{Value, json};

use super::client_auth;
use super::error::OAuthError;
use super::token::read_post;
use super::{limited, refused};
use crate::config::Client;
use crate::http::{Body, json};
use crate::ratelimit::Endpoint;
use crate::server::context::{Ctx, Outcome};
use crate::state::{Gateway, Runtime};
use crate::tokens::validate::{check_holder, inspect};
use crate::tokens::{now_secs, sha256};

/// Answer one introspection request (rate limited per IP like the token endpoint).
pub async fn handle<B>(gw: &Gateway, ctx: &Ctx<'_>, req: Request<B>) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut outcome = Outcome::default();
    match limited(gw, ctx, Endpoint::Introspect, introspect(gw, ctx, req, &mut outcome)).await {
        Ok(v) => {
            let mut resp = json(StatusCode::OK, &v);
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            (resp, outcome)
        }
        Err(e) => {
            let resp = refused(ctx, Endpoint::Introspect, e, &mut outcome);
            (resp, outcome)
        }
    }
}

fn inactive() -> Value {
    json!({ "active": false })
}

async fn introspect<B>(gw: &Gateway, ctx: &Ctx<'_>, req: Request<B>, outcome: &mut Outcome) -> Result<Value, OAuthError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, params) = read_post(ctx, req).await?;
    let rt = ctx.rt.clone();
    let client =
        client_auth::authenticate(gw, &rt, ctx.source, &parts.headers, &params, ctx.peer.client_cert()).await?;
    outcome.client_id = Some(client.id.clone());
    // §2.1: the endpoint must be protected; a public client proves nothing.
    if client.is_public() {
        return Err(OAuthError::InvalidClient { basic: false });
    }
    let token = params.require("token")?;
    let now = now_secs();
    if let Some(v) = access_token(gw, &rt, &client, token, now).await? {
        return Ok(v);
    }
    // Refresh tokens are shown only to the client they were issued to.
    // A spent (rotated) refresh token is not active: presenting it would revoke its family.
    if let Some(stored) = gw.store.get_refresh(sha256(token.as_bytes()), now).await?
        && !stored.spent
        && stored.grant.client_id == client.id
        // No user in the grant: it came from client_credentials (a linked user's, if any).
        && check_holder(&rt.config, &stored.grant.client_id, &stored.grant.subject, stored.grant.user.is_none()).is_ok()
        && gw.validator.check_not_before(&stored.grant.client_id, stored.grant.issued_at).is_ok()
        // A blocked subject's refresh token is as inactive as its access tokens (a refresh
        // token has no jti; block values are never empty).
        && !gw.validator.is_blocked(&rt.config.issuer, "", &stored.grant.subject)
    {
        let grant = stored.grant;
        let mut v = json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": grant.client_id,
            "sub": grant.subject,
            "scope": grant.scopes.join(" "),
            "exp": grant.expires_at,
            "iss": rt.config.issuer,
        });
        match grant.user {
            Some(user) => v["username"] = Value::String(user),
            None => v["gty"] = Value::String(crate::oauth::grants::CLIENT_CREDENTIALS.into()),
        }
        return Ok(v);
    }
    Ok(inactive())
}

async fn access_token(
    gw: &Gateway,
    rt: &Runtime,
    caller: &Client,
    token: &str,
    now: u64,
) -> Result<Option<Value>, OAuthError> {
    let Ok(c) = inspect(token, &rt.keys, now) else { return Ok(None) };
    if c.client_id != caller.id && !caller.introspect {
        return Ok(Some(inactive()));
    }
    // The same holder rule as the proxy path: client enabled, user (if any) enabled.
    let holder_ok = check_holder(&rt.config, &c.client_id, &c.sub, c.gty.is_some()).is_ok()
        && gw.validator.check_not_before(&c.client_id, c.iat).is_ok();
    // An operator block (issue 16.5) makes it inactive too, as on the proxy path.
    let blocked = gw.validator.is_blocked(&c.iss, &c.jti, &c.sub);
    if !holder_ok || blocked || gw.validator.is_revoked_locally(&c.jti) || gw.store.is_revoked(&c.jti).await? {
        return Ok(Some(inactive()));
    }
    let mut v = json!({
        "active": true,
        "token_type": "Bearer",
        "scope": c.scope,
        "client_id": c.client_id,
        "sub": c.sub,
        "exp": c.exp,
        "iat": c.iat,
        "iss": c.iss,
        "aud": c.aud,
        "jti": c.jti,
    });
    // RFC 8705 §3.2, RFC 9449 §6.2: a resource server asking learns the binding too.
    if let Some(cnf) = &c.cnf {
        v["cnf"] = serde_json::to_value(cnf).unwrap_or(Value::Null);
        if cnf.jkt().is_some() {
            v["token_type"] = Value::String("DPoP".into());
        }
    }
    // RFC 7662 `username` is the resource owner who authorized the token: none did for a
    // client_credentials token, also one acting as its linked user; `gty` says so instead.
    match c.gty {
        Some(gty) => v["gty"] = Value::String(gty),
        None if c.sub != c.client_id => v["username"] = Value::String(c.sub),
        None => {}
    }
    Ok(Some(v))
}
