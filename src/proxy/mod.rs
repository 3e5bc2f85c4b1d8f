//! The proxy path, one phase per file, run in order by [`handle`]:
//! route → authenticate → authorize → forward.

pub mod access_token;
pub mod authenticate;
pub mod authorize;
pub mod dpop;
pub mod error;
pub mod forward;
pub mod multipart;
pub mod route;

use std::sync::Arc;

use http::{Request, Response};
use http_body::Body as HttpBody;

use crate::authority::Authority;
use crate::config::Access;
use crate::http::{Body, BoxError};
use crate::server::context::{Ctx, Outcome};
use crate::state::Gateway;
use error::ProxyError;

/// Run the proxy phases for `req`; `dispatch` has already parsed and checked its authority.
pub async fn handle<B>(gw: &Gateway, ctx: &Ctx<'_>, req: Request<B>) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let mut outcome = Outcome::default();
    let result = run(gw, ctx, req, &mut outcome).await;
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            match &e {
                ProxyError::BadGateway(detail) => {
                    tracing::warn!(route = outcome.route_prefix().unwrap_or("-"), detail = %detail, "upstream failed")
                }
                ProxyError::GatewayTimeout => {
                    tracing::warn!(route = outcome.route_prefix().unwrap_or("-"), "upstream timed out")
                }
                other => tracing::debug!(error = %other, "request refused"),
            }
            e.into_response_with(&ctx.rt.config.realm, &ctx.rt.config.dpop_algs())
        }
    };
    (resp, outcome)
}

async fn run<B>(
    gw: &Gateway,
    ctx: &Ctx<'_>,
    req: Request<B>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError>
where
    B: HttpBody<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path();
    if !route::is_safe_path(path) {
        return Err(ProxyError::UnsafePath);
    }
    // Methods are case-sensitive (RFC 9110 §9.1) and every route's are upper case, but many
    // upstreams read `delete` as DELETE: a lower-case spelling would slip past a route's
    // method filter to a broader route. Refused before routing.
    if req.method().as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(ProxyError::MethodNotAllowed);
    }
    let rt = &*ctx.rt;
    let host = ctx.authority.as_ref().map(Authority::host);
    let route: &Arc<_> = route::route(&rt.config.routes, host, req.method(), path).ok_or(ProxyError::NoRoute)?;
    outcome.route = Some(route.clone());
    // TRACE (and IIS's TRACK) reflects the request (cookies, tokens) back; CONNECT makes a
    // tunnel. None goes through unless the route names it.
    if matches!(req.method().as_str(), "TRACE" | "TRACK" | "CONNECT")
        && !route.methods.as_ref().is_some_and(|ms| ms.contains(req.method()))
    {
        return Err(ProxyError::MethodNotAllowed);
    }

    let principal = match &route.access {
        Access::Public => None,
        Access::Scopes(scopes) => {
            let request = dpop::Request {
                headers: req.headers(),
                method: req.method().as_str(),
                path,
                peer: ctx.peer,
                authority: ctx.authority.as_ref(),
            };
            let p = authenticate::authenticate(gw, rt, route, &request).await?;
            outcome.principal = Some(p.clone());
            // RFC 8707 / RFC 9700 §2.3: a token is for one API; another route's audience
            // (or the default on a route without one) is an invalid token here. A trusted
            // issuer's token was held to that issuer's `audience` by the validator.
            if p.is_own() && p.audience() != rt.config.route_audience(route) {
                return Err(ProxyError::InvalidToken(crate::tokens::validate::TokenError::WrongAudience));
            }
            authorize::authorize(scopes, route.claim_rules(), &p)?;
            Some(p)
        }
    };
    let started = std::time::Instant::now();
    let result =
        forward::forward(rt, &rt.upstreams, route, principal.as_deref(), req, ctx.peer, ctx.authority.as_ref()).await;
    // Only attempts that reached the upstream: a refused body never left the gateway.
    if matches!(result, Ok(_) | Err(ProxyError::BadGateway(_) | ProxyError::GatewayTimeout)) {
        outcome.upstream_latency = Some(started.elapsed());
    }
    result
}
