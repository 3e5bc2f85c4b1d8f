//! What bounds a served connection in time: the idle timeout, the header read timeout
//! (every HTTP/1.1 request head, and the first request of any connection), the drain and
//! the cut of a shutdown.
//!
//! These are chores of the connection, not of its requests: they are looked at by a tick
//! of the connection's own (a few times per timeout), and polled only when their own
//! waker fired. The request path pays no timer wheel entry and no lock for them: a
//! keep-alive request costs a few uncontended atomic operations here (the head's deadline
//! noted and cleared, the in-service count up and down, an `Arc` clone).

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::Limits;

/// Where a shutdown stands; every connection watches it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    Serving,
    /// Finish the request in progress, take no other.
    Draining,
    /// The grace period is over: drop the connection now.
    Cut,
}

pub(super) type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A connection's clock-free state, written by its I/O and its requests and read by its
/// tick: whether a byte moved since the tick last looked, whether a request arrived, and
/// when the request head being read is due.
pub(super) struct Activity {
    opened: Instant,
    moved: AtomicBool,
    requested: AtomicBool,
    /// Requests whose answer's head is not out yet.
    in_service: AtomicUsize,
    /// Nanoseconds after `opened` + 1 by which the head being read must be complete; 0
    /// when no head is being read (a request is being served, or HTTP/2).
    head_due: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            opened: Instant::now(),
            moved: AtomicBool::new(false),
            requested: AtomicBool::new(false),
            in_service: AtomicUsize::new(0),
            head_due: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Whether anything moved since the last call.
    fn take(&self) -> bool {
        self.moved.swap(false, Ordering::Relaxed)
    }

    /// A request head was read whole (the service is called with it). The connection is
    /// not idle until the guard is dropped (the answer's head is out, or the request was
    /// given up).
    pub(super) fn request_started(self: &Arc<Self>) -> InService {
        self.requested.store(true, Ordering::Relaxed);
        self.head_due.store(0, Ordering::Relaxed);
        self.in_service.fetch_add(1, Ordering::Relaxed);
        InService(self.clone())
    }

    fn head_due_by(&self, deadline: Instant) {
        let after = deadline.saturating_duration_since(self.opened);
        let nanos = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX - 1);
        self.head_due.store(nanos + 1, Ordering::Relaxed);
    }

    /// Whether a head is being read and its time is up.
    fn head_overdue(&self, now: Instant) -> bool {
        match self.head_due.load(Ordering::Relaxed) {
            0 => false,
            due => {
                let elapsed = u64::try_from(now.saturating_duration_since(self.opened).as_nanos()).unwrap_or(u64::MAX);
                elapsed >= due - 1
            }
        }
    }
}

/// A request being served on a connection: see [`Activity::request_started`].
pub(super) struct InService(Arc<Activity>);

impl Drop for InService {
    fn drop(&mut self) {
        self.0.in_service.fetch_sub(1, Ordering::Relaxed);
    }
}

/// hyper's HTTP/1.1 header read timeout, kept by the connection's tick. hyper asks its
/// timer for a new sleep at every request head (a boxed timer wheel entry, registered
/// while the keep-alive connection waits and removed when the head is in, for every
/// request); this timer only notes the deadline, and its sleep never fires: the tick
/// closes an overdue connection, as hyper would (it sends no response on that timeout
/// either).
#[derive(Clone)]
pub(super) struct HeadTimer(pub(super) Arc<Activity>);

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.0.head_due_by(deadline);
        // A unit struct: boxing it allocates nothing.
        Box::pin(LeftToTheTick)
    }

    fn reset(&self, _sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        self.0.head_due_by(new_deadline);
    }
}

/// The sleep `HeadTimer` hands hyper: pending for ever; the tick acts when it is due.
struct LeftToTheTick;

impl Future for LeftToTheTick {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl hyper::rt::Sleep for LeftToTheTick {}

/// The waker of a connection's chores: notes that they have something to look at, then
/// wakes the connection's task.
struct ChoresWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ChoresWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Drive a connection until it ends, closing it when:
/// - no byte has moved either way for `idle_timeout`, and no request is waiting for its
///   answer's head (checked every tick, so between 1 and 1.25 × `idle_timeout` after the
///   last byte);
/// - an HTTP/1.1 request head is not in whole within `header_read_timeout` of hyper
///   starting to read it (hyper's own timeout, kept by the tick: within 1.25 × of it);
/// - no first request has arrived within `header_read_timeout`: nothing else bounds a
///   client that dribbles the HTTP/2 preface, or bytes that never make a request, while
///   staying under the idle timeout (timed from the call: after the TLS handshake);
/// - the shutdown's grace period is over (`Phase::Cut`).
///
/// When the shutdown starts draining, the connection is asked to finish gracefully
/// (HTTP/1.1: no keep-alive; HTTP/2: GOAWAY).
pub(super) async fn drive<C>(
    conn: C,
    activity: &Activity,
    limits: &Limits,
    mut phase: watch::Receiver<Phase>,
) -> ConnResult
where
    C: GracefulConnection,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let idle = limits.idle_timeout;
    let header_read = limits.header_read_timeout;
    let tick = (idle / 4).min(header_read / 4).max(Duration::from_millis(100));
    let drain = AtomicBool::new(false);
    // The first request is timed from here, not from the accept: a TLS handshake has a
    // timeout of its own and does not eat into the time for the first head.
    let started = Instant::now();
    let chores = async {
        let mut sleep = pin!(tokio::time::sleep(tick));
        let mut last_moved = started;
        let mut watching = true;
        loop {
            match *phase.borrow_and_update() {
                Phase::Serving => {}
                Phase::Draining => drain.store(true, Ordering::Relaxed),
                Phase::Cut => return "cut at the end of the shutdown's grace period",
            }
            tokio::select! {
                changed = phase.changed(), if watching => watching = changed.is_ok(),
                () = &mut sleep => {
                    let now = Instant::now();
                    // A connection waiting for an upstream's answer is not idle: the
                    // upstream timeout bounds that wait.
                    if activity.take() || activity.in_service.load(Ordering::Relaxed) > 0 {
                        last_moved = now;
                    } else if now.saturating_duration_since(last_moved) >= idle {
                        return "idle timeout";
                    }
                    if activity.head_overdue(now) {
                        return "request head not read within the header read timeout";
                    }
                    if !activity.requested.load(Ordering::Relaxed)
                        && now.saturating_duration_since(started) >= header_read
                    {
                        return "no request within the header read timeout";
                    }
                    sleep.as_mut().reset((now + tick).into());
                }
            }
        }
    };
    let waker = Arc::new(ChoresWaker { woken: AtomicBool::new(true), task: AtomicWaker::new() });
    let chores_waker = Waker::from(waker.clone());
    let mut chores = pin!(chores);
    let mut conn = pin!(conn);
    let mut drained = false;
    poll_fn(|cx| {
        waker.task.register(cx.waker());
        if waker.woken.swap(false, Ordering::Acquire) {
            if let Poll::Ready(why) = chores.as_mut().poll(&mut Context::from_waker(&chores_waker)) {
                return Poll::Ready(Err(why.into()));
            }
            if !drained && drain.load(Ordering::Relaxed) {
                drained = true;
                conn.as_mut().graceful_shutdown();
            }
        }
        conn.as_mut().poll(cx).map_err(Into::into)
    })
    .await
}

/// A socket that notes that it read or wrote, for the idle timeout.
pub(super) struct ActivityIo {
    pub(super) inner: TcpStream,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_overdue_only_while_it_is_read_and_past_its_deadline() {
        let a = Arc::new(Activity::new());
        let now = a.opened + Duration::from_secs(5);
        assert!(!a.head_overdue(now), "no head being read");
        a.head_due_by(a.opened + Duration::from_secs(3));
        assert!(a.head_overdue(now));
        assert!(!a.head_overdue(a.opened + Duration::from_secs(2)));
        drop(a.request_started());
        assert!(!a.head_overdue(now), "the head came in");
        // A deadline before the connection opened (a clock the timer read earlier).
        a.head_due_by(a.opened.checked_sub(Duration::from_secs(1)).unwrap_or(a.opened));
        assert!(a.head_overdue(a.opened));
    }
}
