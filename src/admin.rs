//! The admin listener: plaintext HTTP/1.1 on its own address (loopback by default), apart
//! from the gateway listeners so probes and scrapes neither compete with traffic nor
//! widen the public surface.
//! - `/healthz`: the process answers.
//! - `/readyz`: "send me traffic". 200 while config and keys are loaded and the listeners
//!   serve; 503 while starting or draining (shutdown began). It fails only when this replica
//!   cannot do its main job, the proxy path: a store outage (Redis down, the embedded file
//!   failed) only degrades grants, revocation and logins, so it does not fail readiness —
//!   otherwise one Redis outage would take every replica out of the balancer at once.
//! - `/readyz?verbose` (or `Accept: application/json`): the same status with a JSON body of
//!   per-check results (config, keys, listeners, draining, store, and each trusted
//!   issuer's key state — never required: one IdP's outage refuses only its tokens), for
//!   a human or a stricter probe.
//! - `/metrics`: Prometheus text.
//! - `/blocks`: the operator blocks API, authenticated by an API key ([`blocks`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::http::{Body, full};
use crate::state::{Gateway, Phase};
use crate::store::Health;

mod blocks;

/// Probes and scrapers are few; more than this at once is a misbehaving client.
const MAX_CONNECTIONS: usize = 64;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an admin request was not answered with 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("not found")]
    NotFound,
    /// The probes and `/metrics` only read.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Starting up or draining: load balancers should send traffic elsewhere.
    #[error("not ready")]
    NotReady(Phase),
}

impl AdminError {
    /// The one place an admin failure becomes a response.
    fn into_response(self) -> Response<Body> {
        let (status, text) = match self {
            AdminError::NotFound => (StatusCode::NOT_FOUND, "not found\n"),
            AdminError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            AdminError::NotReady(Phase::Draining) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n"),
            AdminError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n"),
        };
        let mut resp = text_response(status, text.to_string(), "text/plain; charset=utf-8");
        if self == AdminError::MethodNotAllowed {
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}

fn text_response(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Accept admin connections until the task is dropped. The connections are owned by this
/// task too, so dropping it closes them: none keeps the gateway (and its store file) alive
/// after shutdown.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, "admin connection limit reached; closing new connection");
            continue;
        };
        let gw = gw.clone();
        let peer = addr.ip();
        connections.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let gw = gw.clone();
                async move {
                    if req.uri().path() == blocks::PATH {
                        return Ok::<_, Infallible>(blocks::handle(&gw, req, peer).await);
                    }
                    Ok(handle(&gw, &req).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(peer = %addr, error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}

pub async fn handle<B>(gw: &Gateway, req: &Request<B>) -> Response<Body> {
    let resp = match route(gw, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    // Scrapes and probes come every few seconds: not worth an info line each.
    tracing::debug!(
        target: "portcullis::admin",
        method = %req.method(),
        path = %req.uri().path(),
        status = resp.status().as_u16(),
    );
    resp
}

async fn route<B>(gw: &Gateway, req: &Request<B>) -> Result<Response<Body>, AdminError> {
    let path = req.uri().path();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return Err(AdminError::NotFound);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(AdminError::MethodNotAllowed);
    }
    let plain = "text/plain; charset=utf-8";
    match path {
        "/healthz" => Ok(text_response(StatusCode::OK, "ok\n".into(), plain)),
        "/readyz" if wants_detail(req) => Ok(readiness_detail(gw).await),
        "/readyz" if !gw.is_ready() => Err(AdminError::NotReady(gw.phase())),
        "/readyz" => Ok(text_response(StatusCode::OK, "ready\n".into(), plain)),
        _ => {
            let stats = gw.validator.stats().await;
            let mut text = gw.metrics.render(&stats);
            crate::metrics::render_issuers(&mut text, &gw.runtime().issuers.stats());
            gw.runtime().issuers.render_introspection_metrics(&mut text);
            let store_up = gw.store.health().await == Health::Healthy;
            let _ = gw.validator.store_answered(store_up);
            crate::metrics::render_lifecycle(
                &mut text,
                &crate::metrics::Lifecycle {
                    store: gw.store.kind(),
                    store_up,
                    store_reopens: gw.store.reopens(),
                    requests_cut: gw.requests_cut(),
                },
            );
            crate::metrics::render_blocks(&mut text, &gw.validator.block_stats());
            let (skipped, open) = gw.validator.revocation_breaker_stats();
            crate::metrics::render_revocation_breaker(&mut text, skipped, open);
            if let Some(s) = gw.limiter.stats() {
                crate::metrics::render_ratelimit(&mut text, s.fallbacks, s.local);
            }
            Ok(text_response(StatusCode::OK, text, "text/plain; version=0.0.4; charset=utf-8"))
        }
    }
}

/// `?verbose` (any value but `0` or `false`), or a client that accepts JSON.
fn wants_detail<B>(req: &Request<B>) -> bool {
    let verbose = req
        .uri()
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "verbose" && v != "0" && v != "false"));
    let json = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("application/json")));
    verbose || json
}

/// The readiness answer with its reasons: the status is exactly the plain probe's, and a
/// check that is not `required` (the store) is reported without failing it.
async fn readiness_detail(gw: &Gateway) -> Response<Body> {
    let phase = gw.phase();
    let check = |ok: bool, required: bool, detail: &str| {
        let mut c = serde_json::json!({ "ok": ok, "required": required });
        if !detail.is_empty() {
            c["detail"] = detail.into();
        }
        c
    };
    let listeners = match phase {
        Phase::Starting => check(false, true, "not yet accepting"),
        Phase::Serving => check(true, true, ""),
        Phase::Draining => check(true, true, "closing after the drain delay"),
    };
    let draining = match phase {
        Phase::Draining => check(false, true, "shutting down: send traffic elsewhere"),
        _ => check(true, true, ""),
    };
    let health = gw.store.health().await;
    let _ = gw.validator.store_answered(health == Health::Healthy);
    let mut store = match health {
        Health::Healthy => check(true, false, ""),
        Health::Degraded(why) => {
            // The store logs its own transitions; a probe every few seconds adds nothing.
            tracing::debug!(error = %why, "readiness: store degraded");
            check(false, false, &format!("{why}; grants, revocation and logins answer 503, the proxy path serves"))
        }
    };
    store["kind"] = gw.store.kind().into();
    // Not required, like the store: until loaded, blocked tokens are accepted here.
    let blocks = match gw.blocks_loaded() {
        true => check(true, false, ""),
        false => check(false, false, "operator blocks not yet loaded from the store; retrying"),
    };
    let ready = gw.is_ready();
    // Reported, never required: an IdP outage refuses only that IdP's tokens, and must not
    // take every replica out of the balancer at once.
    let issuers: serde_json::Map<String, serde_json::Value> =
        gw.runtime().issuers.iter().map(|i| (i.name().to_string(), i.readiness())).collect();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {
            // A Gateway exists only once its config and keys loaded; a reload that fails
            // keeps the previous ones in force.
            "config": check(true, true, ""),
            "keys": check(true, true, ""),
            "listeners": listeners,
            "draining": draining,
            "store": store,
            "blocks": blocks,
            "issuers": issuers,
            // Until read once, a re-enabled client's old tokens would pass (fails open).
            "client_resets": if gw.client_resets_loaded() {
                check(true, true, "")
            } else {
                check(false, true, "client not-befores not yet loaded from the store")
            },
        },
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text_response(status, format!("{body}\n"), "application/json")
}
