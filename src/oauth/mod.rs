//! The OAuth 2.0 endpoints the gateway answers itself.

pub mod audience;
pub mod authorize;
pub mod binding;
pub mod client_auth;
pub mod cors;
pub mod dpop;
pub mod error;
pub mod grants;
pub mod introspect;
pub mod jwks;
pub mod metadata;
pub mod pages;
pub mod params;
pub mod revoke;
pub mod token;
pub mod users;

use bytes::Bytes;
use http::{HeaderMap, Response, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Limited};

use crate::config::Limits;
use crate::http::Body;
use crate::ratelimit::Endpoint;
use crate::server::context::{Ctx, Outcome};
use crate::state::Gateway;
use error::OAuthError;

/// Why a form body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Longer than `max_token_body_bytes`, declared or sent.
    TooLarge,
    /// Not all there within `header_read_timeout`.
    Timeout,
    Unreadable,
}

/// Read the whole body of a token, revocation, introspection or login request: one size
/// limit and one time limit for every form we read, refused before reading when the
/// declared length is already over.
pub(crate) async fn read_small_body<B>(body: B, headers: &HeaderMap, limits: &Limits) -> Result<Bytes, BodyError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limit = limits.max_token_body_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    match tokio::time::timeout(limits.header_read_timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Run `work` for a request at `endpoint` under the per-IP rate limit of `ctx.source`:
/// refused with 429 when the source is over its budget, and a failed client
/// authentication charged as `failure_cost` requests.
pub(crate) async fn limited<T>(
    gw: &Gateway,
    ctx: &Ctx<'_>,
    endpoint: Endpoint,
    work: impl Future<Output = Result<T, OAuthError>>,
) -> Result<T, OAuthError> {
    let limits = &ctx.rt.config.rate_limit;
    let result = match gw.limiter.admit(limits, endpoint, ctx.source).await {
        Ok(()) => work.await,
        Err(t) => Err(OAuthError::RateLimited(t)),
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, endpoint = endpoint.as_str(), "request refused");
        if e.is_failed_authentication() {
            gw.limiter.failed(limits, endpoint, ctx.source).await;
        }
    }
    result
}

/// The answer to a refused request at `endpoint`, noted in `outcome` for the logging phase.
pub(crate) fn refused(ctx: &Ctx<'_>, endpoint: Endpoint, e: OAuthError, outcome: &mut Outcome) -> Response<Body> {
    outcome.error = Some(e.code());
    if let OAuthError::RateLimited(_) = e {
        outcome.rate_limited = Some(endpoint);
    }
    e.into_response(&ctx.rt.config.realm)
}
