//! Listeners and connections: accept, TLS, HTTP/1.1 or HTTP/2 (by ALPN on TLS, by the first
//! bytes on plaintext), limits and timeouts, graceful shutdown, and the dispatch of each
//! request.

mod connection;
pub mod context;
mod dispatch;
mod listen;
pub mod peer;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::sync::watch;

use crate::config::{Config, Limits};
use crate::reload::Reloader;
use crate::state::{Gateway, StartError};
use crate::tls::{self, TlsError};
use connection::{Activity, ActivityIo, HeadTimer, Phase};
pub use listen::{Layout, RuntimeModel};
pub use peer::Peer;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start worker thread {index}: {source}")]
    Worker { index: usize, source: io::Error },
}

/// A bound, not yet running gateway.
pub struct Server {
    gateway: Arc<Gateway>,
    listeners: Vec<(TcpListener, bool)>,
    admin: Option<TcpListener>,
    /// Swapped by a reload; each new connection takes the one in force.
    tls: Arc<ArcSwapOption<tls::Acceptor>>,
    reloader: Reloader,
    /// The other worker threads of the per-core model (none in the shared model).
    workers: Vec<Worker>,
    /// Connections accepted by each worker (index 0: the caller's runtime).
    accepted: Arc<[AtomicU64]>,
}

impl Server {
    /// Load keys and certificates and bind every listener (port 0 picks a free port); the
    /// gateway runs on the caller's runtime.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        Server::bind_with(config, Layout::shared()).await
    }

    /// Like `bind`, with the listeners spread as `layout` says. Per core, every listener
    /// is bound once per worker (`SO_REUSEPORT`) and the workers' threads are started
    /// here, so a socket or a thread that cannot be had fails the start, not the run.
    pub async fn bind_with(config: Config, layout: Layout) -> Result<Server, ServeError> {
        crate::install_crypto_provider();
        let n_workers = layout.workers();
        let tls = match &config.tls {
            Some(files) => {
                tls::ensure_dev_certificate(files)?;
                Some(tls::acceptor(files)?)
            }
            None => None,
        };
        let mut listeners = Vec::new();
        let mut per_worker: Vec<Vec<(std::net::TcpListener, bool)>> = (1..n_workers).map(|_| Vec::new()).collect();
        for l in &config.listeners {
            let (listener, rest) = listen::bind(l.address, n_workers)
                .await
                .map_err(|source| ServeError::Bind { addr: l.address, source })?;
            listeners.push((listener, l.tls));
            for (own, socket) in per_worker.iter_mut().zip(rest) {
                own.push((socket, l.tls));
            }
        }
        let admin = match &config.admin {
            Some(a) => Some(
                TcpListener::bind(a.address).await.map_err(|source| ServeError::Bind { addr: a.address, source })?,
            ),
            None => None,
        };
        let gateway = Gateway::new(config)?;
        gateway.store.check_config().await.map_err(crate::state::StartError::Store)?;
        let tls_addrs = listeners.iter().filter(|(_, tls)| *tls).filter_map(|(l, _)| l.local_addr().ok()).collect();
        gateway.metrics.tls_listeners(tls_addrs);
        gateway.metrics.certificate(gateway.runtime().config.tls.as_ref().map(|t| t.cert.as_path()));
        gateway.restore_client_resets().await;
        gateway.restore_blocks().await;
        let tls = Arc::new(ArcSwapOption::from(tls.map(Arc::new)));
        // Now, not in `run`: from here on SIGHUP reloads instead of ending the process.
        let reloader = Reloader::new(gateway.clone(), tls.clone());
        let mut workers = Vec::with_capacity(per_worker.len());
        for (i, own) in per_worker.into_iter().enumerate() {
            let index = i + 1;
            workers.push(Worker::start(index, own).await.map_err(|source| ServeError::Worker { index, source })?);
        }
        let accepted = (0..n_workers).map(|_| AtomicU64::new(0)).collect();
        Ok(Server { gateway, listeners, admin, tls, reloader, workers, accepted })
    }

    /// Connections accepted so far by each worker thread (one entry in the shared model);
    /// a live view, readable while the server runs.
    pub fn accepted_per_worker(&self) -> AcceptedPerWorker {
        AcceptedPerWorker(self.accepted.clone())
    }

    /// The bound addresses, in config order, with whether each speaks TLS.
    pub fn local_addrs(&self) -> Vec<(SocketAddr, bool)> {
        self.listeners.iter().filter_map(|(l, tls)| l.local_addr().ok().map(|a| (a, *tls))).collect()
    }

    /// The bound admin address, unless `[admin]` is disabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serve until `shutdown` completes, then drain: /readyz answers 503 at once, the
    /// listeners keep accepting for `[limits] drain_delay` (so balancers notice first), then
    /// stop; in-flight requests get `shutdown_grace` to finish, and those still running
    /// after it are cut off, logged and counted. `hurry` (a second stop signal) ends the
    /// drain delay and the grace period at once: an operator who asks twice means now.
    pub async fn run(self, shutdown: impl Future<Output = ()>, hurry: impl Future<Output = ()>) {
        let limits = self.gateway.runtime().config.limits.clone();
        // Every connection watches the phase; the drain waits for all of them to end.
        let (phase, _) = watch::channel(Phase::Serving);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // One connection limit, one drain and one cut for every worker thread.
        let shared = Shared {
            gateway: self.gateway.clone(),
            tls: self.tls.clone(),
            phase: phase.clone(),
            slots,
            accepted: self.accepted.clone(),
        };
        let accept_tasks = spawn_accept_loops(self.listeners, &shared, 0, &stop_rx);
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let mut workers = Vec::with_capacity(self.workers.len());
        for w in self.workers {
            let job = WorkerJob { shared: shared.clone(), stop: stop_rx.clone(), done: done_rx.clone() };
            workers.push(w.go(job));
        }
        drop(shared);
        let sweeper = tokio::spawn(sweep_store(self.gateway.clone()));
        let follower = {
            let gw = self.gateway.clone();
            tokio::spawn(async move { gw.follow_revocations().await })
        };
        // The admin listener outlives the gateway listeners, so /readyz can say "draining".
        let admin = self.admin.map(|l| tokio::spawn(crate::admin::serve(l, self.gateway.clone())));
        let mut stop = stop_rx.clone();
        let reloader = tokio::spawn(self.reloader.run(async move {
            let _ = stop.changed().await;
        }));
        self.gateway.set_serving(true);
        shutdown.await;
        self.gateway.set_serving(false);
        // Read now, not at start: a reload may have changed it.
        let drain = self.gateway.runtime().config.limits.drain_delay;
        tokio::pin!(hurry);
        let mut hurried = false;
        if !drain.is_zero() {
            tracing::info!(drain_delay = %humantime::format_duration(drain), "draining: /readyz answers 503; still accepting until the drain delay ends");
            tokio::select! {
                _ = tokio::time::sleep(drain) => {}
                _ = &mut hurry => {
                    hurried = true;
                    tracing::warn!("second stop signal: ending the drain delay and the grace period now");
                }
            }
        }
        sweeper.abort();
        follower.abort();
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(true);
        let _ = reloader.await;
        for t in accept_tasks {
            let _ = t.await;
        }
        for w in &mut workers {
            let _ = (&mut w.stopped).await;
        }
        // No accept loop is left to start a connection: each one open holds a receiver.
        phase.send_replace(Phase::Draining);
        let grace = if hurried { Duration::ZERO } else { limits.shutdown_grace };
        let finished = tokio::select! {
            done = tokio::time::timeout(grace, phase.closed()) => done.is_ok(),
            _ = &mut hurry, if !hurried => {
                tracing::warn!("second stop signal: ending the grace period now");
                false
            }
        };
        if !finished {
            let cut = self.gateway.in_flight();
            self.gateway.cut(cut);
            tracing::warn!(
                requests = cut,
                grace = %humantime::format_duration(grace),
                "grace period over; cutting the requests still running"
            );
            phase.send_replace(Phase::Cut);
        }
        let _ = done_tx.send(true);
        for w in workers {
            let _ = w.exited.await;
        }
        if let Some(admin) = admin {
            admin.abort();
        }
    }
}

/// Remove expired codes, refresh tokens, revocations and sessions now and then.
async fn sweep_store(gw: Arc<Gateway>) {
    loop {
        let every = gw.runtime().config.store_sweep_interval;
        tokio::time::sleep(every).await;
        match gw.store.sweep(crate::tokens::now_secs()).await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "store sweep"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "store sweep failed"),
        }
    }
}

/// A live view of the connections each worker thread has accepted.
#[derive(Clone)]
pub struct AcceptedPerWorker(Arc<[AtomicU64]>);

impl AcceptedPerWorker {
    pub fn counts(&self) -> Vec<u64> {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }
}

/// What every worker's accept loops share: the connection limit (`max_connections` stays
/// one global limit), the drain, the cut, and the TLS acceptor a reload swaps.
#[derive(Clone)]
struct Shared {
    gateway: Arc<Gateway>,
    tls: Arc<ArcSwapOption<tls::Acceptor>>,
    phase: watch::Sender<Phase>,
    slots: Arc<Semaphore>,
    accepted: Arc<[AtomicU64]>,
}

/// One accept loop task per listener on the current runtime, each ended by `stop`; the
/// connections it accepts are spawned on the same runtime.
fn spawn_accept_loops(
    listeners: Vec<(TcpListener, bool)>,
    shared: &Shared,
    worker: usize,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(listeners.len());
    for (listener, use_tls) in listeners {
        let ctx = AcceptCtx {
            gateway: shared.gateway.clone(),
            tls: use_tls.then(|| shared.tls.clone()),
            phase: shared.phase.clone(),
            slots: shared.slots.clone(),
            accepted: shared.accepted.clone(),
            worker,
        };
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = accept_loop(listener, ctx) => {}
                _ = stop.changed() => {}
            }
        }));
    }
    tasks
}

/// The work `Server::run` hands a worker thread.
struct WorkerJob {
    shared: Shared,
    /// Turns true when the listeners stop accepting.
    stop: tokio::sync::watch::Receiver<bool>,
    /// Turns true when the connections are finished (or cut): the thread may end.
    done: tokio::sync::watch::Receiver<bool>,
}

/// A worker thread of the per-core model: its own current-thread runtime, its own socket
/// for every listener. Started by `bind_with`, it waits for `run` to hand it a job; if the
/// server is dropped instead, it ends.
struct Worker {
    go: tokio::sync::oneshot::Sender<WorkerJob>,
    stopped: tokio::sync::oneshot::Receiver<()>,
    exited: tokio::sync::oneshot::Receiver<()>,
}

/// A worker that was handed its job.
struct Running {
    /// Its accept loops are over (it holds no more handles on the shared state).
    stopped: tokio::sync::oneshot::Receiver<()>,
    /// Its thread has ended.
    exited: tokio::sync::oneshot::Receiver<()>,
}

impl Worker {
    async fn start(index: usize, listeners: Vec<(std::net::TcpListener, bool)>) -> io::Result<Worker> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<io::Result<()>>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<WorkerJob>();
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        let (exited_tx, exited_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name(format!("portcullis-w{index}")).spawn(move || {
            crate::upstream::set_worker(index);
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut own = Vec::with_capacity(listeners.len());
                for (socket, use_tls) in listeners {
                    match TcpListener::from_std(socket) {
                        Ok(l) => own.push((l, use_tls)),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                let Ok(WorkerJob { shared, stop, mut done }) = go_rx.await else { return };
                for t in spawn_accept_loops(own, &shared, index, &stop) {
                    let _ = t.await;
                }
                drop(shared);
                let _ = stopped_tx.send(());
                // Its connections run on this runtime until they end or are cut.
                let _ = done.wait_for(|d| *d).await;
            });
            // A blocking task (a password hash, a store write) is not waited for forever.
            runtime.shutdown_timeout(Duration::from_secs(1));
            let _ = exited_tx.send(());
        })?;
        match ready_rx.await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("the worker thread ended while starting")),
        }
        Ok(Worker { go: go_tx, stopped: stopped_rx, exited: exited_rx })
    }

    fn go(self, job: WorkerJob) -> Running {
        // A worker that is gone already reports `stopped` and `exited` as closed.
        let _ = self.go.send(job);
        Running { stopped: self.stopped, exited: self.exited }
    }
}

struct AcceptCtx {
    gateway: Arc<Gateway>,
    tls: Option<Arc<ArcSwapOption<tls::Acceptor>>>,
    /// The drain and the cut: every connection holds a receiver until it ends.
    phase: watch::Sender<Phase>,
    slots: Arc<Semaphore>,
    accepted: Arc<[AtomicU64]>,
    worker: usize,
}

async fn accept_loop(listener: TcpListener, ctx: AcceptCtx) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        if let Some(n) = ctx.accepted.get(ctx.worker) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let _ = stream.set_nodelay(true);
        let gateway = ctx.gateway.clone();
        let tls = match &ctx.tls {
            None => None,
            Some(slot) => match slot.load_full() {
                Some(acceptor) => Some(acceptor),
                None => {
                    // A TLS listener never falls back to plaintext.
                    tracing::error!(peer = %addr, "no TLS certificate loaded; closing connection");
                    continue;
                }
            },
        };
        let phase = ctx.phase.subscribe();
        tokio::spawn(async move {
            serve_connection(gateway, stream, addr, tls, phase).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    gw: Arc<Gateway>,
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<Arc<tls::Acceptor>>,
    mut phase: watch::Receiver<Phase>,
) {
    let _open = gw.metrics.connection_opened();
    let limits = gw.runtime().config.limits.clone();
    let activity = Arc::new(Activity::new());
    let io = ActivityIo { inner: stream, activity: activity.clone() };
    let seen = activity.clone();
    // Made once the peer is known: on TLS, after the handshake (the client certificate).
    let service = move |peer: Peer| {
        service_fn(move |req: Request<Incoming>| {
            // Until its answer's head is out, the connection is waiting for the upstream
            // (bounded by upstream_timeout), not idle.
            let waiting = seen.request_started();
            let gw = gw.clone();
            let peer = peer.clone();
            // dispatch counts the request in flight until its response is sent in full or
            // dropped (a streamed answer is still running after its head went out).
            // Not boxed here: hyper keeps a service's future in a box of its own (one per
            // HTTP/1.1 connection, reused for every request; a task per HTTP/2 stream), so
            // a box here was a second allocation per request (docs/performance.md).
            async move {
                let resp = dispatch::dispatch(&gw, req, &peer).await;
                drop(waiting);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let served = match tls {
        Some(acceptor) => match handshake(&acceptor, io, &limits, &mut phase).await {
            Ok(Ok(tls_stream)) => {
                // The same for every request of the connection, HTTP/1.1 or HTTP/2.
                let cert = acceptor.client_cert(tls_stream.get_ref().1);
                let svc = service(Peer::new(addr, true).with_client_cert(cert));
                // ALPN decides, not the first bytes: an h2 connection is never served
                // HTTP/1.1, and one that chose http/1.1 (or nothing) never HTTP/2.
                let protocol = match tls_stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Protocol::Http2,
                    _ => Protocol::Http1,
                };
                let builder = conn_builder(&limits, protocol, &activity);
                match protocol {
                    // HTTP/2 upgrades (RFC 8441 extended CONNECT) need no `with_upgrades`.
                    Protocol::Http2 => {
                        let conn = builder.serve_connection(TokioIo::new(tls_stream), svc).into_owned();
                        connection::drive(conn, &activity, &limits, phase).await
                    }
                    // hyper-util's `serve_connection_with_upgrades` sniffs the first bytes
                    // whatever the builder was told, so the HTTP/2 preface is refused here.
                    _ => {
                        let io = TokioIo::new(NoH2Preface::new(tls_stream));
                        let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
                        connection::drive(conn, &activity, &limits, phase).await
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                return;
            }
            Err(why) => {
                tracing::debug!(peer = %addr, "TLS handshake {why}");
                return;
            }
        },
        None => {
            let svc = service(Peer::new(addr, false));
            // Plaintext has no ALPN: the first bytes tell HTTP/1.1 from h2c prior knowledge.
            let builder = conn_builder(&limits, Protocol::Sniff, &activity);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc).into_owned();
            connection::drive(conn, &activity, &limits, phase).await
        }
    };
    if let Err(e) = served {
        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}

/// The TLS handshake, within `tls_handshake_timeout` and until the shutdown's cut.
async fn handshake(
    acceptor: &tls::Acceptor,
    io: ActivityIo,
    limits: &Limits,
    phase: &mut watch::Receiver<Phase>,
) -> Result<io::Result<tokio_rustls::server::TlsStream<ActivityIo>>, &'static str> {
    tokio::select! {
        done = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.tls.accept(io)) => {
            done.map_err(|_| "timed out")
        }
        _ = phase.wait_for(|p| *p == Phase::Cut) => Err("cut at the end of the shutdown's grace period"),
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection that must speak HTTP/1.1 (ALPN said so) fails as soon as its first bytes
/// are the whole HTTP/2 preface, before the version sniffing of hyper-util's upgradeable
/// connection could take it for HTTP/2. Every later byte passes untouched.
struct NoH2Preface<I> {
    inner: I,
    /// Leading bytes that matched the preface so far; `None` once one did not.
    matched: Option<usize>,
}

impl<I> NoH2Preface<I> {
    fn new(inner: I) -> Self {
        NoH2Preface { inner, matched: Some(0) }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for NoH2Preface<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(mut matched) = self.matched {
            for &b in &buf.filled()[before..] {
                if H2_PREFACE.get(matched) != Some(&b) {
                    self.matched = None;
                    return r;
                }
                matched += 1;
                if matched == H2_PREFACE.len() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the HTTP/2 preface on a connection that chose HTTP/1.1",
                    )));
                }
            }
            self.matched = Some(matched);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for NoH2Preface<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// Which HTTP a connection speaks.
#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
    /// Decided by the first bytes (plaintext only).
    Sniff,
}

fn conn_builder(limits: &Limits, protocol: Protocol, activity: &Arc<Activity>) -> auto::Builder<TokioExecutor> {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
        Protocol::Sniff => builder,
    };
    builder
        .http1()
        .timer(HeadTimer(activity.clone()))
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // RFC 8441: WebSocket over HTTP/2 (extended CONNECT with `:protocol`).
        .enable_connect_protocol();
    builder
}
