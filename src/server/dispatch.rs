//! One request: build its context, run the endpoint or the proxy phases, then the logging
//! phase (metrics at the response head, the access line once the body is sent), then the
//! finishing touches every answer gets.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::context::{Ctx, Outcome};
use super::peer::Peer;
use crate::authority::Authority;
use crate::http::{Body, BoxError, X_REQUEST_ID};
use crate::metrics::{self, GaugeGuard};
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
pub(super) async fn dispatch(gw: &Arc<Gateway>, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    let started = Instant::now();
    let in_flight = gw.metrics.request_started();
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
    // The address the gateway acts on: the peer, or behind trusted proxies the nearest
    // address they vouch for (no allocation unless the peer is a trusted proxy).
    let trusted = c.is_trusted_proxy(peer.addr.ip());
    let source = ratelimit::source_ip(c, peer.addr.ip(), req.headers());
    let request_id = request_id(trusted, req.headers());
    let (bad_host, authority) = match authority {
        Ok(a) => (None, a),
        Err(why) => (Some(why), None),
    };
    // Counted as the handler reads it; the access line reads the count once the answer is sent.
    // None for a request without a body (a GET): nothing to count, no allocation.
    let received = (!HttpBody::is_end_stream(req.body())).then(|| Arc::new(AtomicU64::new(0)));
    let (mut parts, body) = req.into_parts();
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    let req = Request::from_parts(parts, Counted { inner: body, count: received.clone() });
    let host = authority.as_ref().map(|a| a.header_value().clone());
    // The access line is armed before the handler runs: a request never answered (the
    // client went away, or shutdown cut it while the upstream was still thinking) is
    // logged too, as 499 (nginx's "client closed request"), when its future is dropped.
    let mut unanswered = Unanswered(
        Some(Pending {
            _in_flight: in_flight,
            peer: peer.ip_header().clone(),
            // As the text above shows it (an IPv4-mapped address as IPv4).
            peer_ip: peer.addr.ip().to_canonical(),
            client: source,
            method: method.clone(),
            uri: uri.clone(),
            label: None,
            outcome: Outcome::default(),
            status: CLIENT_CLOSED,
            latency_us: 0,
            host,
            request_id: request_id.clone(),
            received,
        }),
        started,
    );
    let ctx = Ctx { rt, peer, source, started, authority };
    // The route the metrics and the log name: ours by endpoint, a proxied one by its prefix.
    // The OAuth endpoints' futures are boxed: this one is moved whole into the server's box
    // for every request, and the proxy path (the hot one) should not pay for their size.
    let (resp, outcome, label): (_, Outcome, Option<&'static str>) = match endpoint {
        Endpoint::Token => {
            let (resp, outcome) = Box::pin(crate::oauth::token::handle(gw, &ctx, req)).await;
            (resp, outcome, Some("oauth:token"))
        }
        Endpoint::Authorize => {
            let (resp, outcome) = Box::pin(crate::oauth::authorize::handle(gw, &ctx, req)).await;
            (resp, outcome, Some("oauth:authorize"))
        }
        Endpoint::Revoke => {
            let (resp, outcome) = Box::pin(crate::oauth::revoke::handle(gw, &ctx, req)).await;
            (resp, outcome, Some("oauth:revoke"))
        }
        Endpoint::Introspect => {
            let (resp, outcome) = Box::pin(crate::oauth::introspect::handle(gw, &ctx, req)).await;
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
    // A gRPC refusal is HTTP 200 on the wire; the log and metrics count what it refused.
    let status = match resp.extensions().get::<crate::proxy::error::GrpcRefusal>() {
        Some(refused) => refused.0.as_u16(),
        None => resp.status().as_u16(),
    };
    metrics_phase(gw, &outcome, label, status, matches!(endpoint, Endpoint::Token));
    let mut resp = if method == http::Method::HEAD { headers_only(resp) } else { resp };
    if let Some(value) = hsts {
        resp.headers_mut().insert(http::header::STRICT_TRANSPORT_SECURITY, value);
    }
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    let line = unanswered.0.take().map(|mut line| {
        line.label = label;
        line.outcome = outcome;
        line.status = status;
        line.latency_us = u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        line
    });
    resp.map(|body| Logged { inner: body, sent: 0, line }.boxed())
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

/// The metrics part of the logging phase, at the response head: every metric a request
/// moves, in one place.
fn metrics_phase(gw: &Gateway, outcome: &Outcome, label: Option<&'static str>, status: u16, token: bool) {
    let m = &gw.metrics;
    if token {
        let grant = outcome.grant.map_or(metrics::NO_GRANT, |g| g.as_str());
        m.token_request(grant, outcome.error.unwrap_or(metrics::ISSUED));
    }
    if let Some(endpoint) = outcome.rate_limited {
        m.rate_limited(endpoint.as_str());
    }
    if let (Some(route), Some(elapsed)) = (outcome.route_prefix(), outcome.upstream_latency) {
        m.upstream_latency(route, elapsed);
    }
    m.request(label.or(outcome.route_prefix()).unwrap_or(metrics::UNMATCHED), status);
}

/// The longest request id accepted from a trusted proxy.
const MAX_REQUEST_ID: usize = 128;

/// The request's id: a trusted proxy's `X-Request-Id` when it is exactly one value of 1 to
/// 128 letters, digits, `-`, `_`, `.` or `:` (a UUID, a hex or base64url id); a fresh one in
/// every other case, so an id in the log or upstream is never text a caller chose.
fn request_id(trusted: bool, headers: &HeaderMap) -> HeaderValue {
    if trusted {
        let mut values = headers.get_all(X_REQUEST_ID).iter();
        if let (Some(v), None) = (values.next(), values.next()) {
            let b = v.as_bytes();
            if (1..=MAX_REQUEST_ID).contains(&b.len())
                && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
            {
                return v.clone();
            }
        }
    }
    fresh_request_id()
}

/// 32 hex digits: 64 random bits drawn once per process, then a counter passed through
/// SipHash under a per-process random key. Unique across replicas and requests (up to
/// the odds of a 64-bit collision), and unpredictable — a plain counter would let a caller
/// guess the ids of other people's requests — without a call to the system's random
/// source per request (that cost showed in the hit path's profile).
fn fresh_request_id() -> HeaderValue {
    use std::hash::BuildHasher;
    /// The process's 64 random bits as hex digits, and the key of the counter's mixer.
    static KEYED: OnceLock<([u8; 16], std::collections::hash_map::RandomState)> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (prefix, mixer) = KEYED.get_or_init(|| {
        let mut b = [0u8; 8];
        // Without the system's randomness, the clock still tells processes apart.
        if aws_lc_rs::rand::fill(&mut b).is_err() {
            b = u64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos() & u128::from(u64::MAX))
                .unwrap_or(0)
                .to_be_bytes();
        }
        (hex16(u64::from_be_bytes(b)), std::collections::hash_map::RandomState::new())
    });
    let n = mixer.hash_one(NEXT.fetch_add(1, Ordering::Relaxed));
    // Hex digits, written without the formatting machinery; always valid header text.
    let mut hex = [0u8; 32];
    hex[..16].copy_from_slice(prefix);
    hex[16..].copy_from_slice(&hex16(n));
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `word` as 16 lower-case hex digits, most significant first.
fn hex16(word: u64) -> [u8; 16] {
    let mut hex = [0u8; 16];
    for (i, d) in hex.iter_mut().enumerate() {
        let nibble = (word >> (4 * (15 - i))) & 0xf;
        *d = b"0123456789abcdef"[nibble as usize];
    }
    hex
}

/// A request body that counts the bytes read from it (for `bytes_in`).
struct Counted {
    inner: Incoming,
    /// None: the body was empty from the start (it is never counted).
    count: Option<Arc<AtomicU64>>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Some(count) = &self.count
        {
            count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The status logged for a request whose future was dropped before it had an answer.
const CLIENT_CLOSED: u16 = 499;

/// The access line of a request still in its handler: written on drop, unless the handler
/// finished and took it (it then travels with the response body, [`Logged`]).
struct Unanswered(Option<Pending>, Instant);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(mut line) = self.0.take() {
            line.latency_us = u64::try_from(self.1.elapsed().as_micros()).unwrap_or(u64::MAX);
            line.write(0, false);
        }
    }
}

/// What the access line says, kept until the response body has been sent (or dropped).
struct Pending {
    /// The in-flight gauge counts the request until its line is written.
    _in_flight: GaugeGuard,
    /// The peer's address as text (one reference count, not the whole connection's `Peer`).
    peer: HeaderValue,
    peer_ip: IpAddr,
    client: IpAddr,
    method: Method,
    /// The path is logged, never the query string (it may carry credentials).
    uri: Uri,
    label: Option<&'static str>,
    outcome: Outcome,
    status: u16,
    latency_us: u64,
    host: Option<HeaderValue>,
    request_id: HeaderValue,
    received: Option<Arc<AtomicU64>>,
}

impl Pending {
    /// The access-log part of the logging phase.
    fn write(&self, sent: u64, complete: bool) {
        let o = &self.outcome;
        let upstream = o.route.as_deref().map(|r| r.upstream.authority.as_str());
        crate::logging::access(&crate::logging::Access {
            request_id: self.request_id.to_str().unwrap_or("-"),
            peer: self.peer.to_str().unwrap_or("unknown"),
            peer_ip: self.peer_ip,
            client: self.client,
            method: self.method.as_str(),
            host: self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            path: self.uri.path(),
            // A request left in its handler was not yet routed, as far as the line knows.
            route: self.label.or(o.route_prefix()).unwrap_or(if self.status == CLIENT_CLOSED {
                "-"
            } else {
                metrics::UNMATCHED
            }),
            status: self.status,
            latency_us: self.latency_us,
            bytes_in: self.received.as_ref().map_or(0, |n| n.load(Ordering::Relaxed)),
            bytes_out: sent,
            complete,
            upstream: upstream.unwrap_or("-"),
            client_id: o.client_id().unwrap_or("-"),
        });
    }
}

/// The response body, counted; the access line is written when it ends, fails, or is
/// dropped unfinished (the client went away).
struct Logged {
    inner: Body,
    sent: u64,
    line: Option<Pending>,
}

impl Logged {
    fn finish(&mut self, complete: bool) {
        if let Some(line) = self.line.take() {
            line.write(self.sent, complete);
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // An empty body may never be polled: it is complete when it is empty.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ids(ids: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for id in ids {
            h.append(X_REQUEST_ID, HeaderValue::from_bytes(id).unwrap());
        }
        h
    }

    fn is_fresh(v: &HeaderValue) -> bool {
        v.len() == 32 && v.as_bytes().iter().all(u8::is_ascii_hexdigit)
    }

    #[test]
    fn a_request_id_is_taken_only_from_a_trusted_proxy_and_only_when_well_formed() {
        let uuid = b"0f8c2a4e-7b1d-4c3e-9a55-1e2f3a4b5c6d";
        assert_eq!(request_id(true, &with_ids(&[uuid])).as_bytes(), uuid);
        assert_eq!(request_id(true, &with_ids(&[b"a.b_c:d-1"])).as_bytes(), b"a.b_c:d-1");
        let max = [b'a'; MAX_REQUEST_ID];
        assert_eq!(request_id(true, &with_ids(&[&max])).as_bytes(), max);
        assert!(is_fresh(&request_id(false, &with_ids(&[uuid]))), "untrusted");
        let long = [b'a'; MAX_REQUEST_ID + 1];
        for bad in [&b""[..], &long, b"a b", b"a,b", b"a/b", b"\xe9", b"a\tb", b"%2F"] {
            assert!(is_fresh(&request_id(true, &with_ids(&[bad]))), "{bad:?}");
        }
        assert!(is_fresh(&request_id(true, &with_ids(&[b"a", b"b"]))), "two values");
        assert!(is_fresh(&request_id(true, &HeaderMap::new())), "none");
    }

    #[test]
    fn hex16_is_the_word_in_lower_case_hex() {
        assert_eq!(&hex16(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&hex16(0), b"0000000000000000");
        assert_eq!(&hex16(u64::MAX), b"ffffffffffffffff");
    }

    #[test]
    fn fresh_ids_differ() {
        let (a, b) = (fresh_request_id(), fresh_request_id());
        assert!(is_fresh(&a) && is_fresh(&b) && a != b);
    }
}
