//! The client side: kept-alive connections to the upstreams, built from the config in force.
//!
//! hyper-util's pooled `Client` for every request/response exchange: HTTP/1.1 kept alive
//! per upstream, HTTP/2 multiplexed on one connection per upstream (by ALPN over TLS, with
//! prior knowledge for `h2c://` on a client of its own), a request the upstream refused
//! before any byte of it was written (a stale idle connection, a GOAWAY) sent once more on
//! another connection. It replaced a hand-written pool that drove each HTTP/1.1
//! connection from the request's own task: measured, that pool cost more CPU per request
//! than this client (docs/performance.md, "The cache-hit path").
//! Upgrades (WebSocket) go on fresh HTTP/1.1 connections of their own ([`upgrade`]).

mod h1;
mod upgrade;

pub use h1::UpstreamBody;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::Config;
use crate::http::{Body, BoxError};

/// How long an idle kept-alive connection is kept, and how many per upstream.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub(super) const MAX_IDLE_PER_UPSTREAM: usize = 256;

/// No response head from the upstream within `[limits] upstream_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no answer from the upstream within the upstream timeout")]
pub struct UpstreamTimeout;

/// Why no response came from the upstream, where the client's own error would not say.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    /// What an HTTP/1.1-only upstream behind an `h2c://` route looks like: it answers the
    /// HTTP/2 preface with an HTTP/1.1 error, or closes.
    #[error("no HTTP/2 answer from an h2c:// upstream (does it speak only HTTP/1.1?)")]
    H2cUnanswered(#[source] hyper_util::client::legacy::Error),
    #[error("upstream response head over max_upstream_header_bytes")]
    HeadTooLarge,
}

/// Pools kept apart per worker thread (a worker index past it shares one modulo this).
const MAX_WORKER_POOLS: usize = 64;

thread_local! {
    /// The worker thread this is, in the per-core runtime model; 0 everywhere else.
    static WORKER: Cell<usize> = const { Cell::new(0) };
    /// The same, not reduced modulo `MAX_WORKER_POOLS`: tells two runtimes sharing a pool
    /// apart.
    static RUNTIME: Cell<usize> = const { Cell::new(0) };
}

/// Which runtime this thread runs (0: the shared one, or the first per-core worker).
fn runtime_index() -> usize {
    RUNTIME.with(Cell::get)
}

/// Called by a per-core worker thread when it starts: its requests then go over pools of
/// its own. A connection is driven by the runtime that opened it, so a pool shared by two
/// current-thread runtimes makes one wake the other on every reuse (measured: eventfd
/// writes per request, docs/performance.md "Both cores"). The shared multi-thread runtime
/// keeps one pool (index 0): its workers steal each other's tasks anyway.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index % MAX_WORKER_POOLS));
    RUNTIME.with(|r| r.set(index));
}

/// Which requests may share an upstream connection. HTTP/1.1 has no request ids: an
/// upstream that answers out of turn (a request body it never read, taken as the next
/// request; bytes past a response's end) hands the next request on that connection
/// someone else's answer. Requests on public routes, which anyone can send, never share a
/// connection with authenticated ones, so no caller without a token can make an upstream
/// answer it with what it meant for a token holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Authenticated = 0,
    Public = 1,
}

/// One worker's clients.
struct Pools {
    /// `http://` and `https://` upstreams; over TLS, h2 or http/1.1 as ALPN picks.
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// `h2c://` upstreams: HTTP/2 with prior knowledge.
    h2c: Client<HttpConnector, Body>,
    /// `http://` upstreams (HTTP/1.1), on hyper's connections directly ([`h1`]).
    h1: Arc<h1::H1Pool>,
}

/// The kept-alive connections to every upstream, HTTP and HTTPS (rustls, platform roots
/// plus an optional operator CA).
pub struct Upstreams {
    /// Per worker thread and per [`Traffic`] class, made on its first request.
    pools: Box<[OnceLock<Pools>]>,
    /// Makes a worker's [`Pools`] (the connectors and the client settings).
    make: Box<dyn Fn() -> Pools + Send + Sync>,
    /// The `https://` upstreams that have answered, and whether their last answer came
    /// over HTTP/2 (ALPN decides per connection). `te` is hop-by-hop (RFC 9110 §7.6.1):
    /// `te: trailers` goes only where HTTP/2 carries it (RFC 9113 §8.2.2), for gRPC.
    https_h2: RwLock<HashMap<Authority, bool>>,
    /// HTTP/1.1 only (ALPN `http/1.1`): upgrades (WebSocket) each get a fresh connection.
    upgrades: upgrade::Upgrades,
    /// `max_upstream_header_bytes`: hyper's read buffer bounds the head only roughly (its
    /// reads grow, so a head up to about twice this fits), so it is held to this exactly.
    max_head: usize,
}

impl Upstreams {
    pub fn new(config: &Config) -> Result<Upstreams, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &config.upstream_ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("upstream_ca {}: {e}", ca.display()))?;
            // A file with no certificate would trust only the system roots: not what the
            // operator meant, and upstreams on a private CA would fail later, per request.
            if certs.is_empty() {
                return Err(format!(
                    "upstream_ca {}: no certificate in the file (PEM `BEGIN CERTIFICATE`)",
                    ca.display()
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("upstream_ca {}: {e}", ca.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.limits.upstream_connect_timeout));
        // Upgrades offer only http/1.1 by ALPN: a WebSocket handshake is an HTTP/1.1
        // request, and an upstream that picked h2 would fail it.
        let http1_only = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http.clone());
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http.clone());
        // A response head beyond the read buffer fails the exchange (a 502, not memory):
        // on HTTP/1.1 the buffer's bound is the head's, on HTTP/2 the header list's.
        let max_head = config.limits.max_upstream_header_bytes.max(8192);
        let max_list = u32::try_from(max_head).unwrap_or(u32::MAX);
        let upgrades = upgrade::Upgrades::new(http1_only, max_head);
        let builder = move |h2_only: bool| {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(IDLE_TIMEOUT)
                .pool_max_idle_per_host(MAX_IDLE_PER_UPSTREAM)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http1_max_buf_size(max_head)
                .http2_max_header_list_size(max_list)
                .http2_only(h2_only);
            b
        };
        let connect_timeout = config.limits.upstream_connect_timeout;
        let make = move || Pools {
            client: builder(false).build(https.clone()),
            h2c: builder(true).build(http.clone()),
            h1: h1::H1Pool::new(connect_timeout, max_head),
        };
        Ok(Upstreams {
            pools: (0..MAX_WORKER_POOLS * 2).map(|_| OnceLock::new()).collect(),
            make: Box::new(make),
            https_h2: RwLock::default(),
            upgrades,
            max_head,
        })
    }

    /// Does a caller's `te: trailers` go to this upstream? Over `h2c://`, and to an
    /// `https://` one whose last answer came over HTTP/2. One that has not answered yet gets
    /// it only on a gRPC request (`grpc`), which needs it and which an HTTP/1.1-only
    /// upstream cannot serve anyway: a plain request never carries it to HTTP/1.1.
    pub(crate) fn sends_te(&self, scheme: &Scheme, authority: &Authority, h2c: bool, grpc: bool) -> bool {
        if h2c {
            return true;
        }
        if *scheme != Scheme::HTTPS {
            return false;
        }
        let seen = self.https_h2.read().unwrap_or_else(PoisonError::into_inner).get(authority).copied();
        seen.unwrap_or(grpc)
    }

    /// Send `req` (origin-form target, `Host` set) to `authority` over a kept-alive
    /// connection of its [`Traffic`] class, or a new one: HTTP/2 with prior knowledge when
    /// `h2c`, over TLS what ALPN picks (h2 or http/1.1), else HTTP/1.1. Fails with
    /// [`UpstreamTimeout`] when no response head came within `timeout`.
    pub(crate) async fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        h2c: bool,
        traffic: Traffic,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        // The usual case: plain HTTP/1.1, origin-form (a CONNECT's authority-form is
        // hyper-util's to write). Its pool keeps one timer per connection.
        if *scheme == Scheme::HTTP && !h2c && req.method() != http::Method::CONNECT {
            let resp = self.pools(traffic).h1.send(authority, req, timeout).await?;
            return self.bounded(resp);
        }
        match tokio::time::timeout(timeout, self.send_by_client(scheme, authority, h2c, traffic, req)).await {
            Ok(sent) => sent,
            Err(_) => Err(UpstreamTimeout.into()),
        }
    }

    /// `send` through hyper-util's client: h2c, https, CONNECT.
    async fn send_by_client(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        h2c: bool,
        traffic: Traffic,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        // The client takes the upstream from an absolute URI; an HTTP/1.1 connection gets
        // the origin-form back, an HTTP/2 one :scheme, :authority and :path.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() = Uri::from_parts(parts)?;
        if h2c {
            // `Host` would repeat :authority (RFC 9113 §8.3.1). Over TLS the version is
            // known only once ALPN has picked it: `Host` stays, equal to :authority, which
            // an intermediary may send (§8.3.1) and an HTTP/1.1 connection needs.
            req.headers_mut().remove(http::header::HOST);
            *req.version_mut() = Version::HTTP_2;
            let resp = self.pools(traffic).h2c.request(req).await.map_err(|e| -> BoxError {
                if e.is_connect() { e.into() } else { UpstreamError::H2cUnanswered(e).into() }
            })?;
            return self.bounded(resp.map(UpstreamBody::from));
        }
        let resp = self.pools(traffic).client.request(req).await?;
        if *scheme == Scheme::HTTPS {
            self.learn(authority, resp.version() == Version::HTTP_2);
        }
        self.bounded(resp.map(UpstreamBody::from))
    }

    /// This worker thread's clients for this class of traffic.
    fn pools(&self, traffic: Traffic) -> &Pools {
        let index = WORKER.with(Cell::get) * 2 + traffic as usize;
        self.pools.get(index).unwrap_or(&self.pools[traffic as usize]).get_or_init(&self.make)
    }

    /// A response whose head (as HTTP/1.1 would spell it) is over `max_head` fails the
    /// exchange: a 502, as if hyper had refused it.
    fn bounded<B>(&self, resp: Response<B>) -> Result<Response<B>, BoxError> {
        let head = resp.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>();
        if head + "HTTP/1.1 200 OK\r\n\r\n".len() > self.max_head {
            return Err(UpstreamError::HeadTooLarge.into());
        }
        Ok(resp)
    }

    /// Remember whether an `https://` upstream answered over HTTP/2 (a write only when
    /// that changed).
    fn learn(&self, authority: &Authority, h2: bool) {
        let known = self.https_h2.read().unwrap_or_else(PoisonError::into_inner).get(authority).copied();
        if known != Some(h2) {
            self.https_h2.write().unwrap_or_else(PoisonError::into_inner).insert(authority.clone(), h2);
        }
    }

    /// Send an upgrade request (a WebSocket handshake) on a fresh HTTP/1.1 connection of
    /// its own, never a pooled one; an upgraded answer's connection is taken with
    /// `hyper::upgrade::on`, any other answer's body streams from it and then it closes.
    pub(crate) async fn send_upgrade(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, BoxError> {
        self.upgrades.send(scheme, authority, req).await
    }
}
