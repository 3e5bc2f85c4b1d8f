//! What `dispatch` decides once per request and every handler reads ([`Ctx`]), and what a
//! handler reports back for the logging phase ([`Outcome`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::authority::Authority;
use crate::config::{GrantType, Route};
use crate::ratelimit::Endpoint;
use crate::server::peer::Peer;
use crate::state::Runtime;
use crate::tokens::validate::Principal;

/// One request's view of the gateway, built once by `dispatch`.
pub struct Ctx<'a> {
    /// The runtime in force when the request arrived. Loaded once, so a reload landing
    /// mid-request cannot mix the rate limits of one config with the clients of another.
    pub rt: Arc<Runtime>,
    pub peer: &'a Peer,
    /// The address the gateway acts on ([`crate::ratelimit::source_ip`]): the peer, or
    /// behind trusted proxies the client they vouch for. The per-IP rate limits charge it
    /// and the access log names it beside the peer.
    pub source: IpAddr,
    pub started: Instant,
    /// The request's authority, parsed and checked once ([`Authority::of_request`]).
    pub authority: Option<Authority>,
}

/// What a handler did, for the metrics and the access log written after the response.
#[derive(Default)]
pub struct Outcome {
    /// The proxy route that matched.
    pub route: Option<Arc<Route>>,
    /// Who the bearer token on the proxy path named.
    pub principal: Option<Arc<Principal>>,
    /// The client an OAuth endpoint request authenticated as, or named.
    pub client_id: Option<String>,
    /// The token endpoint's grant, once `grant_type` named a known one.
    pub grant: Option<GrantType>,
    /// The RFC 6749 error code of a refused OAuth request.
    pub error: Option<&'static str>,
    /// The per-IP budget that refused the request.
    pub rate_limited: Option<Endpoint>,
    /// How long the upstream took, when the request reached it.
    pub upstream_latency: Option<Duration>,
}

impl Outcome {
    /// The matched route's prefix.
    pub fn route_prefix(&self) -> Option<&str> {
        self.route.as_deref().map(|r| r.prefix.as_str())
    }

    /// The client the request came from, for the log line.
    pub fn client_id(&self) -> Option<&str> {
        // A trusted issuer's token may name no client.
        self.client_id
            .as_deref()
            .or_else(|| self.principal.as_deref().map(Principal::client_id).filter(|c| !c.is_empty()))
    }
}
