//! Upstream connections: HTTP/1.1 over TCP or rustls, kept alive per upstream and driven
//! by the request that uses them.
//!
//! hyper-util's pooled client runs every connection as a task of its own: each request
//! goes to that task over a channel and its response comes back through a oneshot, two
//! task switches per request on the hot path. Here the request's own task polls the
//! connection — while it waits for the response head, and then, through
//! [`UpstreamBody`], while the response body streams. When the body has ended and hyper
//! says the connection can take another request, it goes back to the idle list.
//!
//! An idle connection is not polled. hyper reads the socket before it writes on an idle
//! connection, so a close by the upstream is seen at the next checkout, and a request
//! that was refused before any byte of it was written is sent again on another one.

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
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
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
}

/// The kept-alive connections to every upstream of one configuration.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// Boxed: a connection moves from here to a request and on into its response body,
    /// and hyper's connection state is several hundred bytes.
    #[allow(clippy::vec_box)]
    idle: Mutex<HashMap<Key, Vec<Box<Conn>>>>,
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
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        let key = Key { scheme: scheme.clone(), authority: authority.clone() };
        loop {
            let (mut conn, reused) = match self.checkout(&key) {
                Some(conn) => (conn, true),
                None => (self.connect(&key).await?, false),
            };
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

    async fn connect(&self, key: &Key) -> Result<Box<Conn>, BoxError> {
        let uri =
            Uri::builder().scheme(key.scheme.clone()).authority(key.authority.clone()).path_and_query("/").build()?;
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await?;
        let stream = connector.call(uri).await?;
        // A response head beyond the read buffer fails the exchange: a 502, not memory.
        let (sender, io) = http1::Builder::new().max_header_size(self.max_head_bytes).handshake(stream).await?;
        Ok(Box::new(Conn { sender, io, idle_since: Instant::now() }))
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
