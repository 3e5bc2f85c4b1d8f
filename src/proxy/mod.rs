//! The proxy path, one phase per file, run in order by [`handle`]:
//! route → authenticate → authorize → quota → forward.

pub mod access_token;
pub mod authenticate;
pub mod authorize;
pub mod dpop;
pub mod error;
pub mod forward;
pub mod lifetime;
pub mod multipart;
pub mod quota;
pub mod route;
pub mod websocket;

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
pub async fn handle<B>(gw: &Arc<Gateway>, ctx: &Ctx<'_>, req: Request<B>) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let mut outcome = Outcome::default();
    let grpc = error::is_grpc(req.headers());
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
            e.into_wire(&ctx.rt.config.realm, &ctx.rt.config.dpop_algs(), grpc)
        }
    };
    (resp, outcome)
}

async fn run<B>(
    gw: &Arc<Gateway>,
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
    // An HTTP/2 WebSocket (extended CONNECT, RFC 8441) is routed as the GET it stands for.
    let extended_connect = websocket::is_extended_connect(&req);
    let method = if extended_connect { &http::Method::GET } else { req.method() };
    let route: &Arc<_> = route::route(&rt.config.routes, host, method, path).ok_or(ProxyError::NoRoute)?;
    outcome.route = Some(route.clone());
    // TRACE (and IIS's TRACK) reflects the request (cookies, tokens) back; CONNECT makes a
    // tunnel. None goes through unless the route names it.
    if matches!(method.as_str(), "TRACE" | "TRACK" | "CONNECT")
        && !route.methods.as_ref().is_some_and(|ms| ms.contains(method))
    {
        return Err(ProxyError::MethodNotAllowed);
    }
    let wants_websocket = websocket::requested(&req);

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
            // RFC 6750 §2.3, opt-in per route, for WebSocket handshakes only.
            let from_query = match wants_websocket && route.websocket && route.websocket_query_token {
                true => authenticate::query_token(req.uri().query(), req.headers())?,
                false => None,
            };
            let p = match from_query {
                Some(token) => {
                    let bearer = authenticate::Scheme::Bearer;
                    Box::pin(authenticate::authenticate_token(gw, rt, route, &request, bearer, &token)).await?
                }
                None => authenticate::authenticate(gw, rt, route, &request).await?,
            };
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
    // The lease that ends a long connection with its token (none on a public route).
    let lease = principal.as_ref().filter(|_| route.end_with_token).map(|p| lifetime::Lease::new(gw, p));
    // The handshake is validated before the quota is spent on it.
    let handshake = if wants_websocket { Some(websocket::check(&req, route)?) } else { None };
    // Routes without a quota do not touch the limiter. The limiter's future is boxed, as
    // are the other cold paths' below: this future is moved whole (a memcpy of every
    // byte) into the box the server keeps it in, for every request, so it stays as small
    // as the hit path needs.
    let quota = match &route.quota {
        Some(_) => Box::pin(quota::check(gw, route, principal.as_deref(), ctx.source)).await?,
        None => None,
    };
    let started = std::time::Instant::now();
    // gRPC trailers reach only an HTTP/2 client: a stream cut on HTTP/1.1 aborts instead.
    let client_h2 = req.version() == http::Version::HTTP_2;
    let result = if let Some(handshake) = handshake {
        let (peer, authority) = (ctx.peer, ctx.authority.as_ref());
        Box::pin(websocket::proxy(gw, rt, route, principal.as_deref(), lease, req, peer, authority, handshake)).await
    } else {
        // A streamed request body ends with the token as the response body does; an empty
        // one (a GET) needs no lease.
        let streamed = !http_body::Body::is_end_stream(req.body());
        let request_lease =
            principal.as_ref().filter(|_| lease.is_some() && streamed).map(|p| lifetime::Lease::new(gw, p));
        let (peer, authority) = (ctx.peer, ctx.authority.as_ref());
        let result =
            forward::forward(rt, &rt.upstreams, route, principal.as_deref(), req, peer, authority, request_lease).await;
        match (result, lease) {
            (Ok(resp), Some(lease)) if !http_body::Body::is_end_stream(resp.body()) => {
                let (parts, body) = resp.into_parts();
                let body = lifetime::EndsWithToken::wrap(body, lease, &parts.headers, client_h2, started);
                Ok(Response::from_parts(parts, body))
            }
            (result, _) => result,
        }
    };
    // Only attempts that reached the upstream: a refused body never left the gateway.
    if matches!(result, Ok(_) | Err(ProxyError::BadGateway(_) | ProxyError::GatewayTimeout)) {
        outcome.upstream_latency = Some(started.elapsed());
    }
    match (result, quota) {
        (Ok(mut resp), Some(fields)) => {
            fields.apply(resp.headers_mut());
            Ok(resp)
        }
        (result, _) => result,
    }
}
