//! POST /oauth/token (RFC 6749 §3.2): read and parse the body, authenticate the client,
//! then hand over to the one grant named by `grant_type`.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Limited};

use super::client_auth;
use super::error::OAuthError;
use super::grants::{self, TokenResponse};
use super::params::Params;
use crate::config::GrantType;
use crate::http::Body;
use crate::ratelimit::Endpoint;
use crate::state::Gateway;
use crate::tokens::now_secs;

/// What the outcome of a token request was, for the access log.
pub struct Outcome {
    pub client_id: Option<String>,
    pub grant: Option<GrantType>,
    /// The RFC 6749 error code of a refusal; `None` when a token was issued.
    pub error: Option<&'static str>,
}

/// Answer one token request from `source` (the caller's address, see
/// [`crate::ratelimit::source_ip`]).
pub async fn handle<B>(gw: &Gateway, req: Request<B>, source: IpAddr) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut outcome = Outcome { client_id: None, grant: None, error: None };
    let result = limited(gw, Endpoint::Token, source, token(gw, req, &mut outcome)).await;
    match result {
        Ok(resp) => (resp.into_response(), outcome),
        Err((e, realm)) => {
            outcome.error = Some(e.code());
            (e.into_response(&realm), outcome)
        }
    }
}

/// Run `work` for a request from `source` at `endpoint` under the per-IP rate limit: refused
/// with 429 when the source is over its budget, and a failed client authentication charged
/// as `failure_cost` requests. On failure, also the realm for the error response.
pub(crate) async fn limited<T>(
    gw: &Gateway,
    endpoint: Endpoint,
    source: IpAddr,
    work: impl Future<Output = Result<T, OAuthError>>,
) -> Result<T, (OAuthError, String)> {
    let (realm, limits) = {
        let rt = gw.runtime();
        (rt.config.realm.clone(), rt.config.rate_limit.clone())
    };
    let result = match gw.limiter.admit(&limits, endpoint, source) {
        Ok(()) => work.await,
        Err(t) => Err(OAuthError::RateLimited(t)),
    };
    result.map_err(|e| {
        tracing::debug!(error = %e, endpoint = endpoint.as_str(), "request refused");
        if e.is_failed_authentication() {
            gw.limiter.failed(&limits, endpoint, source);
        }
        if let OAuthError::RateLimited(_) = e {
            gw.metrics.rate_limited(endpoint.as_str());
        }
        (e, realm)
    })
}

async fn token<B>(gw: &Gateway, req: Request<B>, outcome: &mut Outcome) -> Result<TokenResponse, OAuthError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, params) = read_post(gw, req).await?;

    // Cheap checks first: no argon2 work for a request that names no known grant.
    let grant_name = params.require("grant_type")?;
    let grant = GrantType::parse(grant_name).ok_or_else(|| OAuthError::UnsupportedGrantType(grant_name.to_string()))?;
    outcome.grant = Some(grant);

    let rt = gw.runtime_full();
    let client = client_auth::authenticate(gw, &rt, &parts.headers, &params).await?;
    outcome.client_id = Some(client.id.clone());
    if !client.grants.contains(&grant) {
        return Err(OAuthError::UnauthorizedClient);
    }
    let now = now_secs();
    match grant {
        GrantType::ClientCredentials => grants::client_credentials::grant(gw, &rt, &client, &params, now).await,
        GrantType::Password => grants::password::grant(gw, &rt, &client, &params, now).await,
        GrantType::AuthorizationCode => grants::authorization_code::grant(gw, &rt, &client, &params, now).await,
        GrantType::RefreshToken => grants::refresh_token::grant(gw, &rt, &client, &params, now).await,
    }
}

/// The parameters of a POST to one of our endpoints (token, revoke, introspect):
/// POST only, form or JSON body, within the body size and time limits.
pub(crate) async fn read_post<B>(gw: &Gateway, req: Request<B>) -> Result<(http::request::Parts, Params), OAuthError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if req.method() != Method::POST {
        return Err(OAuthError::MethodNotAllowed);
    }
    let (limit, timeout) = {
        let rt = gw.runtime();
        (rt.config.limits.max_token_body_bytes, rt.config.limits.header_read_timeout)
    };
    let (parts, body) = req.into_parts();
    let kind = body_kind(&parts.headers)?;
    let bytes = read_body(body, &parts.headers, limit, timeout).await?;
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
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(BodyKind::Form),
        "application/json" => Ok(BodyKind::Json),
        _ => Err(OAuthError::InvalidRequest(super::error::BadRequest::ContentType)),
    }
}

/// Read the whole (small) body within the size limit and the time limit.
async fn read_body<B>(body: B, headers: &HeaderMap, limit: usize, timeout: Duration) -> Result<Bytes, OAuthError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(OAuthError::PayloadTooLarge);
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(OAuthError::BodyTimeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(OAuthError::PayloadTooLarge),
        Ok(Err(_)) => Err(OAuthError::InvalidRequest(super::error::BadRequest::BodyUnreadable)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
