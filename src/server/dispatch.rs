//! One request: build its context, run the endpoint or the proxy phases, then the logging
//! phase (metrics and the access line), then the finishing touches every answer gets.

use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::context::{Ctx, Outcome};
use super::peer::Peer;
use crate::authority::Authority;
use crate::http::Body;
use crate::metrics;
use crate::oauth::cors::{self, Cors};
use crate::proxy::error::ProxyError;
use crate::ratelimit;
use crate::state::Gateway;

/// The endpoints we answer ourselves, matched by exact path before any proxy route.
enum Endpoint {
    Token,
    Authorize,
    Revoke,
    Introspect,
    Metadata,
    Jwks,
    /// RFC 9728 metadata of the protected resource (an audience) the path names.
    ResourceMetadata(serde_json::Value),
    /// A CORS preflight (`OPTIONS`) at an endpoint that answers browsers on other origins.
    Preflight(Cors),
    Proxy,
    /// A Host or `:authority` that is missing (HTTP/1.1, HTTP/2), repeated, invalid, or
    /// that names two hosts: 400 at every endpoint.
    BadHost,
    /// A request the gateway cannot read safely (a transfer coding besides a lone chunked):
    /// 501 whatever its path.
    Unsupported,
}

/// Dispatch one request: our OAuth endpoints, or the proxy phases; then the logging phase.
pub(super) async fn dispatch(gw: &Gateway, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: a query string may carry credentials and never reaches the log.
    // (A clone of the parsed URI shares its bytes.)
    let uri = req.uri().clone();
    let path = uri.path();
    let rt = gw.runtime_full();
    let authority = Authority::of_request(&req);
    let c = &rt.config;
    // `[tls] hsts`, for every answer on a TLS connection (ours and proxied).
    let hsts = if peer.tls { c.tls.as_ref().and_then(|t| t.hsts.clone()) } else { None };
    // RFC 8414 §3.1: with an issuer path (`https://host/tenant1`), the endpoints are also
    // served under it, where the metadata says they are; the plain paths keep working.
    // The path as it is first, then without the issuer's path (a configured endpoint path
    // may itself begin with the issuer's).
    let local = match c.issuer_path() {
        "" => None,
        prefix => path.strip_prefix(prefix).filter(|rest| rest.starts_with('/')),
    };
    let ours = oauth_endpoint(c, path).or_else(|| local.and_then(|p| oauth_endpoint(c, p)));
    let endpoint = match ours {
        // Before any endpoint reads a body: a coding besides a lone chunked is 501.
        _ if crate::http::unsupported_transfer_coding(req.headers()) => Endpoint::Unsupported,
        // Every endpoint: a Host (or `:authority`) that is not one valid authority is 400.
        _ if authority.is_err() => Endpoint::BadHost,
        Some(endpoint) => endpoint,
        // The path-inserted well-known form: /.well-known/oauth-authorization-server/tenant1.
        _ if is_inserted_metadata(path, &c.metadata_path, c.issuer_path()) => Endpoint::Metadata,
        _ if path.starts_with(crate::oauth::metadata::RESOURCE_METADATA_PATH) => {
            let host = authority.as_ref().ok().and_then(Option::as_ref).map(Authority::host);
            match crate::oauth::metadata::protected_resource(c, host, path) {
                Some(doc) => Endpoint::ResourceMetadata(doc),
                None => Endpoint::Proxy,
            }
        }
        _ => Endpoint::Proxy,
    };
    let cors = match endpoint {
        Endpoint::Token | Endpoint::Revoke => Some(Cors::Post),
        Endpoint::Metadata | Endpoint::Jwks | Endpoint::ResourceMetadata(_) => Some(Cors::Discovery),
        _ => None,
    };
    let endpoint = match cors {
        Some(kind) if method == http::Method::OPTIONS => Endpoint::Preflight(kind),
        _ => endpoint,
    };
    // Only the Origin is kept for the CORS answer: the request itself moves into its handler.
    let mut origin = http::HeaderMap::new();
    if cors.is_some() {
        for v in req.headers().get_all(http::header::ORIGIN) {
            origin.append(http::header::ORIGIN, v.clone());
        }
    }
    let source = match endpoint {
        Endpoint::Token | Endpoint::Authorize | Endpoint::Revoke | Endpoint::Introspect => {
            ratelimit::source_ip(c, peer.addr.ip(), req.headers())
        }
        _ => peer.addr.ip(),
    };
    let (bad_host, authority) = match authority {
        Ok(a) => (None, a),
        Err(why) => (Some(why), None),
    };
    let ctx = Ctx { rt, peer, source, started, authority };
    // The route the metrics and the log name: ours by endpoint, a proxied one by its prefix.
    let (resp, outcome, label): (_, Outcome, Option<&'static str>) = match endpoint {
        Endpoint::Token => {
            let (resp, outcome) = crate::oauth::token::handle(gw, &ctx, req).await;
            (resp, outcome, Some("oauth:token"))
        }
        Endpoint::Authorize => {
            let (resp, outcome) = crate::oauth::authorize::handle(gw, &ctx, req).await;
            (resp, outcome, Some("oauth:authorize"))
        }
        Endpoint::Revoke => {
            let (resp, outcome) = crate::oauth::revoke::handle(gw, &ctx, req).await;
            (resp, outcome, Some("oauth:revoke"))
        }
        Endpoint::Introspect => {
            let (resp, outcome) = crate::oauth::introspect::handle(gw, &ctx, req).await;
            (resp, outcome, Some("oauth:introspect"))
        }
        Endpoint::Metadata => (crate::oauth::metadata::handle(&ctx, &req), Outcome::default(), Some("oauth:metadata")),
        Endpoint::Jwks => (crate::oauth::jwks::handle(&ctx, &req), Outcome::default(), Some("oauth:jwks")),
        Endpoint::ResourceMetadata(ref doc) => {
            (crate::oauth::metadata::handle_resource(&req, doc), Outcome::default(), Some("oauth:resource_metadata"))
        }
        Endpoint::Preflight(kind) => {
            (cors::preflight(&ctx.rt.config, kind, req.headers()), Outcome::default(), Some("oauth:preflight"))
        }
        Endpoint::BadHost => (
            ProxyError::BadHost(bad_host.unwrap_or("bad Host")).into_response(&ctx.rt.config.realm),
            Outcome::default(),
            Some(metrics::UNMATCHED),
        ),
        Endpoint::Unsupported => (
            ProxyError::NotImplemented.into_response(&ctx.rt.config.realm),
            Outcome::default(),
            Some(metrics::UNMATCHED),
        ),
        Endpoint::Proxy => {
            let (resp, outcome) = crate::proxy::handle(gw, &ctx, req).await;
            (resp, outcome, None)
        }
    };
    let mut resp = resp;
    if let Some(kind) = cors.filter(|_| !matches!(endpoint, Endpoint::Preflight(_))) {
        cors::decorate(&ctx.rt.config, kind, &origin, outcome.client_id(), &mut resp);
    }
    let route = label.or(outcome.route_prefix()).unwrap_or(metrics::UNMATCHED);
    let status = resp.status().as_u16();
    log(
        gw,
        &ctx,
        &outcome,
        &Line { method: method.as_str(), path, route, status, token: matches!(endpoint, Endpoint::Token) },
    );
    let mut resp = if method == http::Method::HEAD { headers_only(resp) } else { resp };
    if let Some(value) = hsts {
        resp.headers_mut().insert(http::header::STRICT_TRANSPORT_SECURITY, value);
    }
    resp
}

/// The OAuth endpoint configured at exactly `path`, if any.
fn oauth_endpoint(c: &crate::config::Config, path: &str) -> Option<Endpoint> {
    Some(match path {
        p if p == c.token_path => Endpoint::Token,
        p if p == c.authorize_path => Endpoint::Authorize,
        p if p == c.revoke_path => Endpoint::Revoke,
        p if p == c.introspect_path => Endpoint::Introspect,
        p if p == c.metadata_path => Endpoint::Metadata,
        p if p == c.jwks_path => Endpoint::Jwks,
        _ => return None,
    })
}

/// RFC 8414 §3.1: the metadata of issuer `https://host/tenant1` is at
/// `/.well-known/oauth-authorization-server/tenant1` (the well-known path, then the issuer's).
fn is_inserted_metadata(path: &str, metadata_path: &str, issuer_path: &str) -> bool {
    !issuer_path.is_empty() && path.strip_prefix(metadata_path) == Some(issuer_path)
}

/// What the access line names besides the outcome, borrowed from the request.
struct Line<'a> {
    method: &'a str,
    path: &'a str,
    route: &'a str,
    status: u16,
    /// A token endpoint request, counted by grant and result.
    token: bool,
}

/// The logging phase: every metric a request moves, and its access line, in one place.
fn log(gw: &Gateway, ctx: &Ctx<'_>, outcome: &Outcome, line: &Line<'_>) {
    let m = &gw.metrics;
    if line.token {
        let grant = outcome.grant.map_or(metrics::NO_GRANT, |g| g.as_str());
        m.token_request(grant, outcome.error.unwrap_or(metrics::ISSUED));
    }
    if let Some(endpoint) = outcome.rate_limited {
        m.rate_limited(endpoint.as_str());
    }
    if let (Some(route), Some(elapsed)) = (outcome.route_prefix(), outcome.upstream_latency) {
        m.upstream_latency(route, elapsed);
    }
    m.request(line.route, line.status);
    crate::logging::access(&crate::logging::Access {
        peer: ctx.peer.ip_text(),
        method: line.method,
        path: line.path,
        route: line.route,
        status: line.status,
        latency_us: u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        client_id: outcome.client_id().unwrap_or("-"),
    });
}

/// The answer to a HEAD request: the head of what GET would send, and no body. hyper drops
/// the body itself on HTTP/1.1 but sends it in DATA frames on HTTP/2 (a protocol error the
/// client sees), so every answer we build is emptied here. A proxied answer to HEAD is
/// already empty and left alone.
fn headers_only(mut resp: Response<Body>) -> Response<Body> {
    use http_body::Body as _;
    if resp.body().is_end_stream() {
        return resp;
    }
    if !resp.headers().contains_key(http::header::CONTENT_LENGTH)
        && let Some(len) = resp.body().size_hint().exact()
    {
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
    *resp.body_mut() = crate::http::full(bytes::Bytes::new());
    resp
}
