//! The proxy path, one phase per file, run in order by [`handle`]:
//! route → authenticate → authorize → forward.

pub mod authenticate;
pub mod authorize;
pub mod error;
pub mod forward;
pub mod route;

use std::sync::Arc;

use http::{Request, Response, header};
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

pub async fn handle<B>(gw: &Gateway, req: Request<B>, peer: Peer) -> (Response<Body>, Outcome)
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
    peer: Peer,
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
    let route: &Arc<_> =
        route::route(&rt.config.routes, request_host(&req), req.method(), path).ok_or(ProxyError::NoRoute)?;
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
    let result = forward::forward(rt, &gw.upstreams, route, principal.as_deref(), req, peer).await;
    // Only attempts that reached the upstream: a refused body never left the gateway.
    if matches!(result, Ok(_) | Err(ProxyError::BadGateway(_) | ProxyError::GatewayTimeout)) {
        gw.metrics.upstream_latency(&route.prefix, started.elapsed());
    }
    result
}

/// The host the caller addressed, without port (routes compare it case-insensitively):
/// `:authority` for HTTP/2, the Host header for HTTP/1.1.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.host())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(strip_port))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &host[..h.len() + 1]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}
