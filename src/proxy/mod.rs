//! The proxy path, one phase per file, run in order by [`handle`]:
//! route → authenticate → authorize → forward.

pub mod authenticate;
pub mod authorize;
pub mod error;
pub mod forward;
pub mod route;

use std::sync::Arc;

use http::{Request, Response};
use http_body::Body as HttpBody;

use crate::authority::Authority;
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

/// Run the proxy phases for `req`, whose authority `dispatch` has already parsed and
/// checked ([`Authority::of_request`]).
pub async fn handle<B>(
    gw: &Gateway,
    req: Request<B>,
    peer: &Peer,
    authority: Option<Authority>,
) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let rt = gw.runtime_full();
    let mut outcome = Outcome::default();
    let result = run(gw, &rt, req, peer, authority, &mut outcome).await;
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
    authority: Option<Authority>,
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
    let host = authority.as_ref().map(Authority::host);
    let route: &Arc<_> = route::route(&rt.config.routes, host, req.method(), path).ok_or(ProxyError::NoRoute)?;
    outcome.route = Some(route.clone());
    // TRACE (and IIS's TRACK) reflects the request (cookies, tokens) back; CONNECT makes a
    // tunnel. None goes through unless the route names it.
    if matches!(req.method().as_str(), "TRACE" | "TRACK" | "CONNECT")
        && !route.methods.as_ref().is_some_and(|ms| ms.contains(req.method()))
    {
        return Err(ProxyError::MethodNotAllowed);
    }

    let principal = if route.public {
        None
    } else {
        let p = authenticate::authenticate(gw, rt, req.headers()).await?;
        outcome.principal = Some(p.clone());
        authorize::authorize(route, &p)?;
        Some(p)
    };
    let started = std::time::Instant::now();
    let result = forward::forward(rt, &rt.upstreams, route, principal.as_deref(), req, peer, authority.as_ref()).await;
    // Only attempts that reached the upstream: a refused body never left the gateway.
    if matches!(result, Ok(_) | Err(ProxyError::BadGateway(_) | ProxyError::GatewayTimeout)) {
        gw.metrics.upstream_latency(&route.prefix, started.elapsed());
    }
    result
}
