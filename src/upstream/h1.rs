//! Plain `http://` upstreams: HTTP/1.1 connections kept alive per worker, on hyper's
//! connection API directly.
//!
//! This is the cache hit's usual exchange, and hyper-util's pooled client cost more than
//! the exchange itself around it: a SipHash of the pool key for every checkout and every
//! return, boxed futures, and a task spawned per request to wait for the connection to be
//! idle again (docs/performance.md, "A direct HTTP/1.1 pool"). Here each worker thread has
//! its own idle list per upstream and traffic class (no other thread touches it: the lock
//! is never contended), a connection is driven by a task of its own as hyper-util's are
//! (an earlier hand-written pool drove it from the request's task and paid for that in
//! system time), and it goes back to the list when its response body has ended, found by
//! the body itself, and its request body had been sent whole (docs/security.md).
//!
//! Kept from hyper-util's client: the connect timeout, the idle timeout and the number of
//! idle connections per upstream, the response head bound (`max_buf_size`), and one more
//! try on another connection for a request a reused connection refused before writing any
//! of it (it was closed by the upstream while idle).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::{IDLE_TIMEOUT, MAX_IDLE_PER_UPSTREAM, UpstreamTimeout};
use crate::http::{Body, BoxError};

/// Why no connection was made, where the socket's own error would not say.
#[derive(Debug, thiserror::Error)]
#[error("connect to the upstream timed out")]
struct ConnectTimeout;

/// A connection waiting for its next request, and since when.
struct Idle {
    conn: Pooled,
    since: Instant,
}

/// A connection and the timer that bounds its exchanges: one timer wheel entry for the
/// connection's life, moved to each request's deadline (tokio extends an entry to a later
/// deadline without the wheel's lock), where a timer per request put an entry on the
/// wheel and took it off again, each under the lock.
struct Pooled {
    sender: SendRequest<Body>,
    timer: Pin<Box<Sleep>>,
    /// The runtime whose timer wheel `timer` is on: past 64 per-core workers, two runtimes
    /// share a pool, and a sleep polled from another runtime than its own fails once that
    /// one has shut down.
    runtime: usize,
}

/// One worker's idle HTTP/1.1 connections, per upstream authority.
pub(super) struct H1Pool {
    idle: Mutex<HashMap<Authority, VecDeque<Idle>, rustc_hash::FxBuildHasher>>,
    connect_timeout: Duration,
    max_buf: usize,
}

impl H1Pool {
    /// A pool for this worker, with a task (on this worker's runtime, when there is one)
    /// that closes connections idle longer than [`IDLE_TIMEOUT`] while no request comes.
    pub(super) fn new(connect_timeout: Duration, max_buf: usize) -> Arc<H1Pool> {
        let pool = Arc::new(H1Pool { idle: Mutex::default(), connect_timeout, max_buf });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Send `req` (origin-form target, `Host` set) to `authority` on an idle connection,
    /// or a new one. A request a reused connection gave back unwritten goes on another.
    /// Fails with [`UpstreamTimeout`] when no response head came within `timeout`
    /// (connecting, sending and any retry included).
    pub(super) async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, BoxError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // A connection is reused only once both directions are done: an upstream may answer
        // before it has read the request body (and read it later, or never), and a
        // connection still carrying an upload would hold the next request until it ends.
        let (req, sent) = if req.body().is_end_stream() {
            (req, None)
        } else {
            let sent = Arc::new(AtomicBool::new(false));
            let req = req.map(|inner| http_body_util::BodyExt::boxed(Uploaded { inner, sent: sent.clone() }));
            (req, Some(sent))
        };
        let mut req = req;
        loop {
            let (mut conn, reused) = match self.checkout(authority) {
                Some(conn) => (conn, true),
                // Rare (a new connection): a timer of its own for the connect.
                None => match tokio::time::timeout_at(deadline, self.connect(authority, deadline)).await {
                    Ok(conn) => (conn?, false),
                    Err(_) => return Err(UpstreamTimeout.into()),
                },
            };
            let here = super::runtime_index();
            if conn.runtime == here {
                conn.timer.as_mut().reset(deadline);
            } else {
                conn.timer = Box::pin(tokio::time::sleep_until(deadline));
                conn.runtime = here;
            }
            // A returned connection may not have finished its last exchange yet (its task
            // reads the response's end); one that closes instead is dropped.
            if reused {
                let ready = tokio::select! {
                    biased;
                    ready = conn.sender.ready() => ready,
                    () = conn.timer.as_mut() => return Err(UpstreamTimeout.into()),
                };
                if ready.is_err() {
                    continue;
                }
            }
            let answered = tokio::select! {
                biased;
                answered = conn.sender.try_send_request(req) => answered,
                () = conn.timer.as_mut() => return Err(UpstreamTimeout.into()),
            };
            match answered {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let mut body = UpstreamBody { inner: body, back: None };
                    let back = Returning { pool: self.clone(), authority: authority.clone(), conn, sent: sent.clone() };
                    if body.inner.is_end_stream() {
                        back.give();
                    } else {
                        body.back = Some(back);
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The most recently returned live connection to `authority` (the others age out).
    fn checkout(&self, authority: &Authority) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(authority)?;
        while let Some(conn) = list.pop_back() {
            if !conn.conn.sender.is_closed() {
                return Some(conn.conn);
            }
        }
        None
    }

    /// Back to the idle list, newest last; the oldest go past [`IDLE_TIMEOUT`] or the cap.
    fn checkin(&self, authority: &Authority, conn: Pooled) {
        if conn.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = match idle.get_mut(authority) {
            Some(list) => list,
            None => idle.entry(authority.clone()).or_default(),
        };
        while list.front().is_some_and(|c| now.duration_since(c.since) > IDLE_TIMEOUT)
            || list.len() >= MAX_IDLE_PER_UPSTREAM
        {
            list.pop_front();
        }
        list.push_back(Idle { conn, since: now });
    }

    async fn connect(&self, authority: &Authority, deadline: tokio::time::Instant) -> Result<Pooled, BoxError> {
        let port = authority.port_u16().unwrap_or(80);
        // `[::1]` is the URI's spelling of an IPv6 host; the socket wants the address.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| ConnectTimeout)??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::Builder::new().max_buf_size(self.max_buf).handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(Pooled { sender, timer: Box::pin(tokio::time::sleep_until(deadline)), runtime: super::runtime_index() })
    }

    fn sweep_expired(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        for list in idle.values_mut() {
            while list.front().is_some_and(|c| c.conn.sender.is_closed() || now.duration_since(c.since) > IDLE_TIMEOUT)
            {
                list.pop_front();
            }
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// Close idle connections past their time while the pool lives.
async fn sweep(pool: Weak<H1Pool>) {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_expired(),
            None => return,
        }
    }
}

/// The connection a response came on, given back to its pool when the body has ended.
struct Returning {
    pool: Arc<H1Pool>,
    authority: Authority,
    conn: Pooled,
    /// Set once the request body has been sent whole (`None`: the request had none).
    sent: Option<Arc<AtomicBool>>,
}

impl Returning {
    /// Back to the idle list if the request went out whole; otherwise dropped, and hyper
    /// closes the connection once it is done with it.
    fn give(self) {
        if self.sent.is_none_or(|sent| sent.load(Ordering::Acquire)) {
            self.pool.checkin(&self.authority, self.conn);
        }
    }
}

/// A request body that says when it has been read to its end.
struct Uploaded {
    inner: Body,
    sent: Arc<AtomicBool>,
}

impl HttpBody for Uploaded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            self.sent.store(true, Ordering::Release);
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

/// An upstream response body. On a pooled HTTP/1.1 connection it returns the connection
/// when it ends; dropped before its end, the connection is not reused (hyper closes it).
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<Returning>,
}

impl From<Incoming> for UpstreamBody {
    fn from(inner: Incoming) -> UpstreamBody {
        UpstreamBody { inner, back: None }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
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

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.give();
        }
    }
}
