//! POST /oauth/token (RFC 6749 §3.2): read and parse the body, authenticate the client,
//! then hand over to the one grant named by `grant_type`.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body::Body as HttpBody;

use super::error::OAuthError;
use super::grants::{self, TokenResponse};
use super::params::Params;
use super::{BodyError, limited, refused};
use super::{binding, client_auth};
use crate::config::{GrantType, Limits};
use crate::http::Body;
use crate::ratelimit::Endpoint;
use crate::server::context::{Ctx, Outcome};
use crate::state::Gateway;
use crate::tokens::now_secs;

/// Answer one token request.
pub async fn handle<B>(gw: &Gateway, ctx: &Ctx<'_>, req: Request<B>) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut outcome = Outcome::default();
    // The body first, so that a request the rate limit refuses is counted under its grant.
    let read = read_post(ctx, req).await;
    if let Ok((_, params)) = &read {
        outcome.grant = params.get("grant_type").and_then(GrantType::parse);
    }
    let work = async {
        let (parts, params) = read?;
        // Boxed: the grants nest deep enough (client auth, shared rate limits, the store)
        // that the compiler's layout of the whole future would pass its recursion limit.
        Box::pin(token(gw, ctx, parts, params, &mut outcome)).await
    };
    let result = limited(gw, ctx, Endpoint::Token, work).await;
    match result {
        Ok(resp) => (resp.into_response(), outcome),
        Err(e) => {
            let resp = refused(ctx, Endpoint::Token, e, &mut outcome);
            (resp, outcome)
        }
    }
}

async fn token(
    gw: &Gateway,
    ctx: &Ctx<'_>,
    parts: http::request::Parts,
    params: Params,
    outcome: &mut Outcome,
) -> Result<TokenResponse, OAuthError> {
    // Cheap checks first: no argon2 work for a request that names no known grant.
    let grant_name = params.require("grant_type")?;
    let grant = GrantType::parse(grant_name).ok_or_else(|| OAuthError::UnsupportedGrantType(grant_name.to_string()))?;
    outcome.grant = Some(grant);

    let rt = &ctx.rt;
    let client = client_auth::authenticate(gw, rt, ctx.source, &parts.headers, &params, ctx.peer.client_cert()).await?;
    outcome.client_id = Some(client.id.clone());
    if !client.grants.contains(&grant) {
        return Err(OAuthError::UnauthorizedClient);
    }
    let dpop_jkt = super::dpop::proof(gw, ctx, &parts.headers, parts.uri.path()).await?;
    let binding = binding::requested(&client, ctx.peer, dpop_jkt)?;
    let binding = binding.as_ref();
    // After the client's not-before (issue 19.8), so a token of the same second is not void.
    let now = gw.validator.issue_time(&client.id, now_secs());
    match grant {
        GrantType::ClientCredentials => grants::client_credentials::grant(gw, rt, &client, &params, binding, now).await,
        GrantType::Password => grants::password::grant(gw, rt, &client, &params, binding, now).await,
        GrantType::AuthorizationCode => grants::authorization_code::grant(gw, rt, &client, &params, binding, now).await,
        GrantType::RefreshToken => grants::refresh_token::grant(gw, rt, &client, &params, binding, now).await,
    }
}

/// The parameters of a POST to one of our endpoints (token, revoke, introspect):
/// POST only, form or JSON body, within the body size and time limits.
pub(crate) async fn read_post<B>(ctx: &Ctx<'_>, req: Request<B>) -> Result<(http::request::Parts, Params), OAuthError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if req.method() != Method::POST {
        return Err(OAuthError::MethodNotAllowed);
    }
    let limits = &ctx.rt.config.limits;
    let (parts, body) = req.into_parts();
    let kind = body_kind(&parts.headers)?;
    let bytes = read_body(body, &parts.headers, limits).await?;
    let params = match kind {
        BodyKind::Form => Params::from_form(&bytes)?,
        BodyKind::Json => Params::from_json(&bytes)?,
    };
    Ok((parts, params))
}

pub(crate) enum BodyKind {
    Form,
    Json,
}

pub(crate) fn body_kind(headers: &HeaderMap) -> Result<BodyKind, OAuthError> {
    // Two Content-Types: the body is one or the other, and which is unknowable.
    if headers.get_all(header::CONTENT_TYPE).iter().nth(1).is_some() {
        return Err(OAuthError::InvalidRequest(super::error::BadRequest::RepeatedHeader("Content-Type")));
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    // The parameters are read as bytes of ASCII: a body declared UTF-16 (or UTF-7, EBCDIC)
    // is not what the client meant once read so, and is refused rather than misread.
    if !crate::http::ascii_charsets_only(headers) {
        return Err(OAuthError::InvalidRequest(super::error::BadRequest::ContentType));
    }
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(BodyKind::Form),
        "application/json" => Ok(BodyKind::Json),
        _ => Err(OAuthError::InvalidRequest(super::error::BadRequest::ContentType)),
    }
}

/// Read the whole (small) body with the reader the login form shares.
async fn read_body<B>(body: B, headers: &HeaderMap, limits: &Limits) -> Result<Bytes, OAuthError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    super::read_small_body(body, headers, limits).await.map_err(|e| match e {
        BodyError::TooLarge => OAuthError::PayloadTooLarge,
        BodyError::Timeout => OAuthError::BodyTimeout,
        BodyError::Unreadable => OAuthError::InvalidRequest(super::error::BadRequest::BodyUnreadable),
    })
}
