//! Upstream connections: HTTP/1.1 kept alive per upstream and driven by the request that
//! uses them; HTTP/2 (`h2c://`, or h2 picked by ALPN) multiplexed on one shared
//! connection per upstream.
//!
//! HTTP/1.1: hyper-util's pooled client runs every connection as a task of its own: each
//! request goes to that task over a channel and its response comes back through a
//! oneshot, two task switches per request on the hot path. Here the request's own task
//! polls the connection — while it waits for the response head, and then, through
//! [`UpstreamBody`], while the response body streams. When the body has ended and hyper
//! says the connection can take another request, it goes back to the idle list.
//!
//! An idle connection is not polled. hyper reads the socket before it writes on an idle
//! connection, so a close by the upstream is seen at the next checkout, and a request
//! that was refused before any byte of it was written is sent again on another one.
//!
//! HTTP/2: many requests share a connection, so no one request can drive it; it runs as
//! a task of its own (as in hyper-util's client) and every request sends on a clone of
//! its handle. A connection the upstream closed is replaced at the next request; a
//! request it refused unwritten (GOAWAY) is sent once more on a new one.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service;

use crate::http::{Body, BoxError};

type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// How often idle connections past their time are closed when no request comes by.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// One upstream, as the idle list is keyed.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    scheme: Scheme,
    authority: Authority,
    /// HTTP/2 with prior knowledge (`h2c://`): never the same connections as `http://`.
    h2c: bool,
}

/// One HTTP/1.1 connection: the handle that sends on it and the state machine doing its
/// I/O, which whoever holds the connection must poll.
struct Conn {
    sender: SendRequest<Body>,
    io: Connection<Stream, Body>,
    idle_since: Instant,
}

impl Conn {
    /// Poll the I/O once. `true` when the connection has finished (closed or failed): it
    /// must then be dropped, which also ends whatever hyper still holds for it (a pending
    /// response gets an error, a response body its end).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.io).poll(cx).is_ready()
    }
}

/// Why no response came from the upstream.
#[derive(Debug, thiserror::Error)]
enum PoolError {
    #[error("upstream connection closed before the response")]
    Closed,
    /// What an HTTP/1.1-only upstream behind an `h2c://` route looks like: it answers the
    /// HTTP/2 preface with an HTTP/1.1 error, or closes.
    #[error("no HTTP/2 answer from an h2c:// upstream (does it speak only HTTP/1.1?)")]
    H2cUnanswered(#[source] hyper::Error),
}

/// A new connection, in the protocol the upstream speaks.
enum Fresh {
    Http1(Box<Conn>),
    Http2(http2::SendRequest<Body>),
}

/// The kept-alive connections to every upstream of one configuration.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// Boxed: a connection moves from here to a request and on into its response body,
    /// and hyper's connection state is several hundred bytes.
    #[allow(clippy::vec_box)]
    idle: Mutex<HashMap<Key, Vec<Box<Conn>>>>,
    /// The shared HTTP/2 connection of each upstream that speaks it.
    h2: Mutex<HashMap<Key, http2::SendRequest<Body>>>,
    idle_timeout: Duration,
    max_idle_per_upstream: usize,
    /// The largest response head (status line, headers) taken from an upstream.
    max_head_bytes: usize,
}

impl Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        idle_timeout: Duration,
        max_idle_per_upstream: usize,
        max_head_bytes: usize,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            connector,
            idle: Mutex::default(),
            h2: Mutex::default(),
            idle_timeout,
            max_idle_per_upstream,
            max_head_bytes: max_head_bytes.max(8192),
        });
        // Outside a runtime (a tool building a config) there is nothing to sweep for.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Send `req` (origin-form target, `Host` set) to the upstream and wait for the head
    /// of its response; the body streams from the same connection as it is read.
    pub async fn send(
        self: &Arc<Self>,
        scheme: &Scheme,
        authority: &Authority,
        h2c: bool,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        let key = Key { scheme: scheme.clone(), authority: authority.clone(), h2c };
        // An upstream that speaks HTTP/2 takes every request on its shared connection
        // (an `http://` one never does: no lookup on that path).
        let maybe_h2 = h2c || key.scheme == Scheme::HTTPS;
        if maybe_h2 && let Some(sender) = self.h2_sender(&key) {
            return self.send_h2(key, sender, true, req).await;
        }
        loop {
            let (mut conn, reused) = match self.checkout(&key) {
                Some(conn) => (conn, true),
                None => match self.connect(&key).await? {
                    Fresh::Http1(conn) => (conn, false),
                    Fresh::Http2(sender) => return self.send_h2(key, sender, false, req).await,
                },
            };
            // `te: trailers` is kept for what may be an HTTP/2 upstream (gRPC); an HTTPS
            // one that picked HTTP/1.1 gets no `te` (RFC 9110 §7.6.1: hop-by-hop).
            if maybe_h2 {
                req.headers_mut().remove(http::header::TE);
            }
            // Drive first: on an idle connection hyper reads the socket, which is where an
            // upstream's close (FIN, close_notify) since the last exchange shows up.
            let ready = poll_fn(|cx| {
                if conn.drive(cx) {
                    return Poll::Ready(false);
                }
                conn.sender.poll_ready(cx).map(|r| r.is_ok())
            })
            .await;
            if !ready {
                if reused {
                    continue;
                }
                return Err(PoolError::Closed.into());
            }

            let mut response = pin!(conn.sender.try_send_request(req));
            let mut conn = Some(conn);
            let result = poll_fn(|cx| {
                if let Poll::Ready(r) = response.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                let Some(c) = conn.as_mut() else { return Poll::Ready(None) };
                if c.drive(cx) {
                    // Finished: dropping it fails the exchange, and hands back a request
                    // that was never written (the upstream closed first), to retry below.
                    conn = None;
                }
                match response.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending if conn.is_none() => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match result {
                Some(Ok(resp)) => {
                    let (parts, body) = resp.into_parts();
                    let mut body = UpstreamBody { body, conn, key, pool: Arc::downgrade(self) };
                    // A body with nothing in it (HEAD, 204, 304, length 0) may never be
                    // polled: the connection is free now.
                    if body.body.is_end_stream() {
                        body.release();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Some(Err(mut e)) => match e.take_message() {
                    // Refused before it was written: a stale idle connection.
                    Some(back) if reused => req = back,
                    _ => return Err(e.into_error().into()),
                },
                None => return Err(PoolError::Closed.into()),
            }
        }
    }

    fn checkout(&self, key: &Key) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(key)?;
        while let Some(conn) = list.pop() {
            if conn.idle_since.elapsed() < self.idle_timeout && !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self, key: &Key) -> Result<Fresh, BoxError> {
        let uri =
            Uri::builder().scheme(key.scheme.clone()).authority(key.authority.clone()).path_and_query("/").build()?;
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await?;
        let stream = connector.call(uri).await?;
        if key.h2c || stream.connected().is_negotiated_h2() {
            let (sender, io) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(self.max_head_bytes).unwrap_or(u32::MAX))
                .handshake(stream)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = io.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            return Ok(Fresh::Http2(sender));
        }
        // A response head beyond the read buffer fails the exchange: a 502, not memory.
        let (sender, io) = http1::Builder::new().max_header_size(self.max_head_bytes).handshake(stream).await?;
        Ok(Fresh::Http1(Box::new(Conn { sender, io, idle_since: Instant::now() })))
    }

    /// The shared HTTP/2 connection to `key`, if one is open.
    fn h2_sender(&self, key: &Key) -> Option<http2::SendRequest<Body>> {
        let mut h2 = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        match h2.get(key) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                h2.remove(key);
                None
            }
            None => None,
        }
    }

    /// Send on an HTTP/2 connection (a shared one when `reused`, else a new one, which
    /// becomes the shared one). A request the connection refused unwritten (closed, or
    /// past a GOAWAY) goes once more on a new connection.
    async fn send_h2(
        self: &Arc<Self>,
        key: Key,
        mut sender: http2::SendRequest<Body>,
        mut reused: bool,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        // HTTP/2 carries the target as :scheme, :authority and :path; hyper takes them
        // from an absolute URI. `Host` would repeat :authority (RFC 9113 §8.3.1).
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(key.scheme.clone());
        parts.authority = Some(key.authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() = Uri::from_parts(parts)?;
        *req.version_mut() = http::Version::HTTP_2;
        req.headers_mut().remove(http::header::HOST);
        if !reused {
            self.h2.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sender.clone());
        }
        loop {
            let sent = match poll_fn(|cx| sender.poll_ready(cx)).await {
                Ok(()) => sender.try_send_request(req).await,
                Err(e) if reused => {
                    tracing::debug!(error = %e, "shared upstream HTTP/2 connection closed");
                    self.forget_h2(&key);
                    match self.connect(&key).await? {
                        Fresh::Http2(s) => sender = s,
                        // The upstream no longer picks h2 by ALPN: this request fails
                        // (502); the next one goes over HTTP/1.1.
                        Fresh::Http1(_) => return Err(e.into()),
                    }
                    self.h2.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sender.clone());
                    reused = false;
                    continue;
                }
                Err(e) => return Err(self.h2_error(&key, e)),
            };
            match sent {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = UpstreamBody { body, conn: None, key, pool: Arc::downgrade(self) };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => {
                        self.forget_h2(&key);
                        req = back;
                        match self.connect(&key).await? {
                            Fresh::Http2(s) => sender = s,
                            Fresh::Http1(_) => return Err(e.into_error().into()),
                        }
                        self.h2.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sender.clone());
                        reused = false;
                    }
                    _ => return Err(self.h2_error(&key, e.into_error())),
                },
            }
        }
    }

    /// Drop the shared connection to `key` if it has closed (a newer one, put there by
    /// another request meanwhile, stays).
    fn forget_h2(&self, key: &Key) {
        let mut h2 = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        if h2.get(key).is_some_and(http2::SendRequest::is_closed) {
            h2.remove(key);
        }
    }

    /// A failed HTTP/2 exchange, named for what it most likely is on an `h2c://` route.
    fn h2_error(&self, key: &Key, e: hyper::Error) -> BoxError {
        if key.h2c && !e.is_timeout() && !e.is_user() { PoolError::H2cUnanswered(e).into() } else { e.into() }
    }

    /// Keep a connection whose exchange is over, if hyper can send another request on it.
    fn put_back(&self, key: Key, mut conn: Box<Conn>) {
        // One poll lets hyper finish the exchange and signal that it wants the next request.
        if conn.drive(&mut Context::from_waker(Waker::noop())) || !conn.sender.is_ready() {
            return;
        }
        let now = Instant::now();
        conn.idle_since = now;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(key).or_default();
        // The oldest are at the front; those past their time go first.
        let stale = list.iter().take_while(|c| now.duration_since(c.idle_since) >= self.idle_timeout).count();
        list.drain(..stale);
        if list.len() < self.max_idle_per_upstream {
            list.push(conn);
        }
    }

    /// Close idle connections past their time or closed by the upstream (one poll each
    /// reads the close), so that they do not linger half-closed.
    fn sweep_idle(&self) {
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        for list in idle.values_mut() {
            list.retain_mut(|c| {
                now.duration_since(c.idle_since) < self.idle_timeout && !c.sender.is_closed() && !c.drive(&mut cx)
            });
        }
        idle.retain(|_, list| !list.is_empty());
        drop(idle);
        self.h2.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, s| !s.is_closed());
    }
}

/// Closes idle connections past their time while nobody sends; ends with the pool.
async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_idle(),
            None => return,
        }
    }
}

/// A response body from an upstream. Reading it drives the connection it comes from;
/// once it has ended, the connection returns to the pool. Dropped early, it closes the
/// connection (HTTP/1.1 cannot abandon a response and keep the connection).
pub struct UpstreamBody {
    body: Incoming,
    conn: Option<Box<Conn>>,
    key: Key,
    /// Weak: a body outliving a reloaded configuration simply closes its connection.
    pool: Weak<Pool>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.upgrade()) {
            pool.put_back(self.key.clone(), conn);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut drove = false;
        loop {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(None) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if this.body.is_end_stream() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {}
            }
            // Nothing buffered: let the connection read more, then look once again.
            match this.conn.as_mut() {
                Some(conn) if !drove => {
                    if conn.drive(cx) {
                        this.conn = None;
                    }
                    drove = true;
                }
                _ => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
