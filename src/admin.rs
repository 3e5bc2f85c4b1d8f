//! The admin listener: plaintext HTTP/1.1 on its own address (loopback by default), apart
//! from the gateway listeners so probes and scrapes neither compete with traffic nor
//! widen the public surface. `/healthz`: the process answers. `/readyz`: config and keys
//! are loaded, the listeners serve (not draining) and the store answers. `/metrics`: Prometheus text.

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
use crate::state::Gateway;

/// Probes and scrapers are few; more than this at once is a misbehaving client.
const MAX_CONNECTIONS: usize = 64;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an admin request was not answered with 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("not found")]
    NotFound,
    /// The admin endpoints only read.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Starting up or draining: load balancers should send traffic elsewhere.
    #[error("not ready")]
    NotReady,
    /// The store (codes, refresh tokens, sessions) cannot be reached.
    #[error("store unavailable")]
    StoreDown,
}

impl AdminError {
    /// The one place an admin failure becomes a response.
    fn into_response(self) -> Response<Body> {
        let (status, text) = match self {
            AdminError::NotFound => (StatusCode::NOT_FOUND, "not found\n"),
            AdminError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            AdminError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            AdminError::StoreDown => (StatusCode::SERVICE_UNAVAILABLE, "not ready: store unavailable\n"),
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

/// Accept admin connections until the task is dropped.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
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
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(handle(&gw, &req).await) }
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
        "/readyz" if !gw.is_ready() => Err(AdminError::NotReady),
        "/readyz" => match gw.store.ping().await {
            Ok(()) => Ok(text_response(StatusCode::OK, "ready\n".into(), plain)),
            Err(e) => {
                tracing::warn!(error = %e, "not ready: store unavailable");
                Err(AdminError::StoreDown)
            }
        },
        _ => {
            let stats = gw.validator.stats().await;
            let text = gw.metrics.render(&stats);
            Ok(text_response(StatusCode::OK, text, "text/plain; version=0.0.4; charset=utf-8"))
        }
    }
}
