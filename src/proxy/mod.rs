//! The proxy path, one phase per file, run in order by [`handle`]:
//! route → authenticate → authorize → forward.

pub mod authenticate;
pub mod authorize;
pub mod error;
pub mod forward;
mod pool;
pub mod route;

use std::sync::Arc;

use http::{HeaderValue, Request, Response, header};
use http_body::Body as HttpBody;

use crate::config::Route;
use crate::http::{Body, BoxError};
use crate::state::Gateway;
use crate::tokens::validate::Principal;
use error::ProxyError;
use forward::Peer;

/// What the access log records about a proxied request.
#[derive(Default)]
pub struct Outcome {
    pub route: Option<Arc<Route>>,
    pub principal: Option<Arc<Principal>>,
}

impl Outcome {
    /// The matched route's prefix.
    pub fn route_prefix(&self) -> Option<&str> {
        self.route.as_deref().map(|r| r.prefix.as_str())
    }

    pub fn client_id(&self) -> Option<&str> {
        self.principal.as_deref().map(Principal::client_id)
    }
}

pub async fn handle<B>(gw: &Gateway, req: Request<B>, peer: &Peer) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let rt = gw.runtime_full();
    let mut outcome = Outcome::default();
    let result = run(gw, &rt, req, peer, &mut outcome).await;
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            match &e {
                ProxyError::BadGateway(detail) => {
                    tracing::warn!(route = ?outcome.route_prefix(), detail = %detail, "upstream failed")
                }
                ProxyError::GatewayTimeout => tracing::warn!(route = ?outcome.route_prefix(), "upstream timed out"),
                other => tracing::debug!(error = %other, "request refused"),
            }
            e.into_response(&rt.config.realm)
        }
    };
    (resp, outcome)
}

async fn run<B>(
    gw: &Gateway,
    rt: &crate::state::Runtime,
    req: Request<B>,
    peer: &Peer,
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
    let authority = request_authority(&req)?;
    let host = authority.as_ref().and_then(|a| a.to_str().ok()).map(strip_port);
    let route: &Arc<_> = route::route(&rt.config.routes, host, req.method(), path).ok_or(ProxyError::NoRoute)?;
    outcome.route = Some(route.clone());

    let principal = if route.public {
        None
    } else {
        let p = authenticate::authenticate(gw, rt, req.headers()).await?;
        outcome.principal = Some(p.clone());
        authorize::authorize(route, &p)?;
        Some(p)
    };
    let started = std::time::Instant::now();
    let result = forward::forward(rt, &rt.upstreams, route, principal.as_deref(), req, peer, authority).await;
    // Only attempts that reached the upstream: a refused body never left the gateway.
    if matches!(result, Ok(_) | Err(ProxyError::BadGateway(_) | ProxyError::GatewayTimeout)) {
        gw.metrics.upstream_latency(&route.prefix, started.elapsed());
    }
    result
}

/// The authority the caller addressed: `:authority` (HTTP/2) or the absolute-form target,
/// else the Host header. When both are present they must name the same host (RFC 9113
/// §8.3.1, RFC 9112 §3.2.2), so routing and `X-Forwarded-Host` cannot disagree.
/// Always valid ASCII text.
fn request_authority<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let from_uri = req.uri().authority();
    let from_header = match req.headers().get(header::HOST) {
        Some(h) => Some((h, h.to_str().map_err(|_| ProxyError::MalformedRequest("Host header is not ASCII"))?)),
        None => None,
    };
    match (from_uri, from_header) {
        (Some(u), Some((_, h))) if !strip_port(u.as_str()).eq_ignore_ascii_case(strip_port(h)) => {
            Err(ProxyError::MalformedRequest("Host header differs from the request target"))
        }
        (Some(u), _) => HeaderValue::from_str(u.as_str())
            .map(Some)
            .map_err(|_| ProxyError::MalformedRequest("request target authority is not valid")),
        // The header as received: cloning it shares its bytes.
        (None, Some((h, _))) => Ok(Some(h.clone())),
        (None, None) => Ok(None),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &host[..h.len() + 1]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}
