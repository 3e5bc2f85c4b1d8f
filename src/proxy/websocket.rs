//! WebSocket through the gateway (RFC 6455; RFC 8441 over HTTP/2), on routes with
//! `websocket = true`. The handshake has been routed, authenticated and authorised like
//! any request by then; here it is checked, sent upstream on a fresh HTTP/1.1 connection
//! with the same header hygiene and identity headers as any request, and on a correct
//! `101` the two upgraded connections are spliced.
//!
//! An HTTP/2 client's extended CONNECT (`:protocol websocket`) is bridged to an HTTP/1.1
//! upgrade upstream: the gateway makes the `Sec-WebSocket-Key` and checks the answer's
//! `Sec-WebSocket-Accept` itself, and answers the client `200`.
//!
//! The splice copies bytes, not frames. Upstream to client, a small parser follows the
//! frame boundaries, so that when the token behind the connection stops being valid
//! ([`super::lifetime`]) the gateway can write its own close frame (1008) between two
//! frames, never inside one; client to upstream is a plain copy (the upstream just sees
//! the connection close).
//!
//! An upgraded connection has left its listener's slot and idle check, so the splice has
//! its own: no byte either way for the route's `websocket_idle_timeout` closes both sides
//! (1001 to the client at a frame boundary). An HTTP/2 client's `RST_STREAM` reads as an
//! end of stream; the splice tells it from a half-close by its dead send side and ends
//! at once.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::ProxyError;
use super::forward::{self, Peer};
use super::lifetime::{CHECK_EVERY, Ended, Lease};
use crate::authority::Authority;
use crate::config::Route;
use crate::http::{Body, BoxError};
use crate::state::{Gateway, Runtime};
use crate::tokens::validate::Principal;

/// RFC 6455 §1.3: appended to the key before hashing it into `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// How long, once the token has lapsed, the gateway lets the upstream finish the frame it
/// is in the middle of before it closes the connection without a close frame.
const FINISH_FRAME_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// One place among the upgraded connections ([`Gateway::upgraded`]), held until the
/// splice ends.
struct Open(Arc<Gateway>);

impl Open {
    fn take(gw: &Arc<Gateway>, max: usize) -> Option<Open> {
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        if gw.upgraded.fetch_add(1, Ordering::AcqRel) >= max {
            gw.upgraded.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Open(gw.clone()))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.upgraded.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the client asked for, once checked.
pub enum Handshake {
    /// HTTP/1.1 `Upgrade: websocket`, with the client's key.
    Upgrade { key: HeaderValue },
    /// HTTP/2 extended CONNECT (RFC 8441).
    ExtendedConnect,
}

/// Does the request ask for a WebSocket: an `Upgrade` naming `websocket` with a
/// `Connection` naming `upgrade` (without it, RFC 9110 §7.8, `Upgrade` is just a stray
/// hop-by-hop field), or an HTTP/2 CONNECT with `:protocol websocket`? Other `Upgrade`
/// values (h2c...) are not asked for here; the forward phase strips them as hop-by-hop.
pub fn requested<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return is_extended_connect(req);
    }
    let h = req.headers();
    h.contains_key(header::UPGRADE)
        && lists_token(h, &header::UPGRADE, b"websocket")
        && lists_token(h, &header::CONNECTION, b"upgrade")
}

/// An HTTP/2 CONNECT with `:protocol websocket` (RFC 8441 §4).
pub fn is_extended_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req.extensions().get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Does some field `name` list `token` (comma-separated, case-insensitive)?
fn lists_token(headers: &HeaderMap, name: &header::HeaderName, token: &[u8]) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| crate::cookies::trim(t).eq_ignore_ascii_case(token))
}

/// The one value of `name`, if there is exactly one.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

/// Check a WebSocket handshake on `route` (RFC 6455 §4.2.1, RFC 8441 §5). Anything
/// malformed is 400; a route without `websocket` refuses every one.
pub fn check<B: HttpBody>(req: &Request<B>, route: &Route) -> Result<Handshake, ProxyError> {
    if !route.websocket {
        return Err(ProxyError::WebSocketNotEnabled);
    }
    let h = req.headers();
    if single(h, "sec-websocket-version").is_none_or(|v| v.as_bytes() != b"13") {
        return Err(ProxyError::BadHandshake("Sec-WebSocket-Version must be 13"));
    }
    if is_extended_connect(req) {
        return Ok(Handshake::ExtendedConnect);
    }
    if req.method() != Method::GET {
        return Err(ProxyError::BadHandshake("a WebSocket handshake is a GET"));
    }
    if req.version() != Version::HTTP_11 {
        return Err(ProxyError::BadHandshake("a WebSocket upgrade needs HTTP/1.1"));
    }
    let key = single(h, "sec-websocket-key")
        .filter(|k| STANDARD.decode(k.as_bytes()).is_ok_and(|raw| raw.len() == 16))
        .ok_or(ProxyError::BadHandshake("Sec-WebSocket-Key must be the base64 of 16 bytes"))?;
    // The bytes after the head are frames once upgraded: a handshake has no body.
    if !req.body().is_end_stream() || h.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::BadHandshake("a WebSocket handshake has no body"));
    }
    Ok(Handshake::Upgrade { key: key.clone() })
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
fn accept_for(key: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(ACCEPT_GUID);
    STANDARD.encode(ctx.finish().as_ref())
}

/// A fresh `Sec-WebSocket-Key` for the upstream of an extended CONNECT.
fn fresh_key() -> Result<HeaderValue, ProxyError> {
    let mut raw = [0u8; 16];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| ProxyError::BadGateway("no randomness for a WebSocket key".into()))?;
    HeaderValue::try_from(STANDARD.encode(raw)).map_err(|_| ProxyError::BadGateway("WebSocket key".into()))
}

/// Is this a correct `101` to a handshake sent with `key`?
fn upgraded_correctly(resp: &Response<hyper::body::Incoming>, key: &HeaderValue) -> bool {
    let h = resp.headers();
    resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && lists_token(h, &header::UPGRADE, b"websocket")
        && lists_token(h, &header::CONNECTION, b"upgrade")
        && single(h, "sec-websocket-accept").is_some_and(|a| a.as_bytes() == accept_for(key.as_bytes()).as_bytes())
}

/// Send the handshake upstream and, on a correct `101`, answer the client and splice.
#[allow(clippy::too_many_arguments)] // the forward phase's inputs, and the handshake
pub async fn proxy<B>(
    gw: &Arc<Gateway>,
    rt: &Runtime,
    route: &Route,
    principal: Option<&Principal>,
    lease: Option<Lease>,
    mut req: Request<B>,
    peer: &Peer,
    authority: Option<&Authority>,
    handshake: Handshake,
) -> Result<Response<Body>, ProxyError>
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let Some(open) = Open::take(gw, rt.config.limits.max_connections) else {
        tracing::warn!(route = %route.prefix, "WebSocket refused: as many upgraded connections open as max_connections");
        return Err(ProxyError::TooManyConnections);
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _empty) = req.into_parts();
    let h2 = matches!(handshake, Handshake::ExtendedConnect);
    let key = match handshake {
        Handshake::Upgrade { key } => key,
        Handshake::ExtendedConnect => fresh_key()?,
    };
    let uri = forward::upstream_target(route, &parts.uri)?;
    forward::upstream_headers(&mut parts.headers, rt, route, principal, peer, authority, forward::Purpose::WebSocket)?;
    let hs = &mut parts.headers;
    hs.insert(header::HOST, route.upstream.host.clone());
    hs.remove(header::CONTENT_LENGTH);
    hs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert("sec-websocket-key", key.clone());
    hs.insert("sec-websocket-version", HeaderValue::from_static("13"));
    let mut upstream_req = Request::new(crate::http::full(Bytes::new()));
    *upstream_req.method_mut() = Method::GET;
    *upstream_req.uri_mut() = uri;
    *upstream_req.version_mut() = Version::HTTP_11;
    *upstream_req.headers_mut() = parts.headers;

    let upstream = &route.upstream;
    let sent = rt.upstreams.send_upgrade(&upstream.scheme, &upstream.authority, upstream_req);
    let mut resp = match tokio::time::timeout(rt.config.limits.upstream_timeout, sent).await {
        Err(_) => return Err(ProxyError::GatewayTimeout),
        Ok(Err(e)) => return Err(ProxyError::BadGateway(format!("WebSocket handshake: {e}"))),
        Ok(Ok(resp)) => resp,
    };
    if !upgraded_correctly(&resp, &key) {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProxyError::BadGateway("the upstream's 101 is not a correct WebSocket answer".into()));
        }
        // A 2xx to an extended CONNECT would open the client's stream as a tunnel.
        if h2 && resp.status().is_success() {
            return Err(ProxyError::BadGateway(
                "the upstream answered the WebSocket handshake without upgrading".into(),
            ));
        }
        // Refused (401, 403, 426...): its answer goes back as any answer does.
        let (mut parts, body) = resp.into_parts();
        parts.version = Version::HTTP_11;
        forward::response_hygiene(&mut parts.headers);
        return Ok(Response::from_parts(parts, body.map_err(BoxError::from).boxed()));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    forward::response_hygiene(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    if h2 {
        // RFC 8441 §5: no Sec-WebSocket-Accept over HTTP/2; 200 opens the stream.
        parts.headers.remove("sec-websocket-accept");
        parts.status = StatusCode::OK;
        parts.version = Version::HTTP_2;
    } else {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        parts.version = Version::HTTP_11;
    }
    let route_prefix = route.prefix.clone();
    // Silent both ways this long ends the splice; a side that has closed waits for the
    // other at most as long.
    let idle = route.websocket_idle(&rt.config.limits);
    tokio::spawn(async move {
        let open = open;
        let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(client = c.is_ok(), upstream = u.is_ok(), "WebSocket upgrade did not complete");
                return;
            }
        };
        let client_side = if h2 { ClientSide::H2Stream } else { ClientSide::Connection };
        match splice(TokioIo::new(client), TokioIo::new(upstream), lease, idle, client_side).await {
            Ok(Some(Closed::Token(why))) => {
                tracing::info!(route = %route_prefix, reason = why.label(), "WebSocket closed: its token ended")
            }
            Ok(Some(Closed::Idle)) => {
                open.0.metrics.connection_ended(IDLE_LABEL);
                tracing::debug!(route = %route_prefix, idle = ?idle, "WebSocket closed: idle");
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(route = %route_prefix, error = %e, "WebSocket splice ended with an error"),
        }
    });
    Ok(Response::from_parts(parts, crate::http::full(Bytes::new())))
}

/// The `reason` label of `portcullis_connections_ended_total` for a splice closed idle.
pub const IDLE_LABEL: &str = "idle";

/// Why the gateway closed a splice itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The token behind it stopped being valid (counted by the lease).
    Token(Ended),
    /// No byte either way for the idle timeout.
    Idle,
}

/// What the client's side of the splice is: an RFC 8441 stream reads a peer's
/// `RST_STREAM (CANCEL)` as a plain end of stream (hyper maps it so), which only a write
/// side that has died tells apart from a half-close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientSide {
    Connection,
    H2Stream,
}

/// After an HTTP/2 client's end of stream, when to look whether its stream was reset
/// rather than half-closed (hyper notices the reset on the stream's send side, a task of
/// its own): soon, then every second while the other direction lingers.
const RESET_PROBES: [std::time::Duration; 4] = [
    std::time::Duration::ZERO,
    std::time::Duration::from_millis(20),
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(400),
];

/// What the splice's watcher tells the upstream-to-client copy (which alone knows the
/// frame boundaries and holds the client's write side).
#[derive(Default)]
struct Signals {
    /// Idle: write a close frame (1001) if at a frame boundary, and end.
    idle: tokio::sync::Notify,
    /// The HTTP/2 client's stream ended: look whether it was reset.
    client_eof: tokio::sync::Notify,
}

/// Copy both ways until both sides have closed (a side that half-closes has its FIN
/// passed on, and the other direction goes on, for at most `idle`), either fails, no byte
/// has moved either way for `idle` (the client then gets a close frame 1001 if a frame
/// boundary allows it), or the lease ends (close frame 1008); then both connections are
/// dropped. Idleness is checked every quarter of `idle`, as the listener's is, so the
/// close comes between 1 and 1.25 × `idle` after the last byte.
async fn splice<C, U>(
    client: C,
    upstream: U,
    lease: Option<Lease>,
    idle: std::time::Duration,
    client_side: ClientSide,
) -> io::Result<Option<Closed>>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let moved = AtomicBool::new(false);
    let (mut client_rd, mut client_wr) = tokio::io::split(Moving { inner: client, moved: &moved });
    let (mut upstream_rd, mut upstream_wr) = tokio::io::split(Moving { inner: upstream, moved: &moved });
    let signals = Signals::default();
    let up = async {
        tokio::io::copy(&mut client_rd, &mut upstream_wr).await?;
        upstream_wr.shutdown().await
    };
    let down = downstream(&mut upstream_rd, &mut client_wr, lease.as_ref(), &signals);
    tokio::pin!(up, down);
    let tick = (idle / 4).max(std::time::Duration::from_millis(50));
    let mut last_moved = tokio::time::Instant::now();
    let mut up_done: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = &mut up, if up_done.is_none() => {
                r?;
                let now = tokio::time::Instant::now();
                up_done = Some(now.checked_add(idle).unwrap_or(now + std::time::Duration::from_secs(86_400 * 365)));
                if client_side == ClientSide::H2Stream {
                    signals.client_eof.notify_one();
                }
            }
            _ = sleep_until(up_done) => return Ok(None),
            // Outside both directions, as the lease: a client that stops reading (the write
            // to it blocks) moves no byte either.
            _ = tokio::time::sleep(tick) => {
                if moved.swap(false, Ordering::Relaxed) {
                    last_moved = tokio::time::Instant::now();
                } else if last_moved.elapsed() >= idle {
                    signals.idle.notify_one();
                    let _ = tokio::time::timeout(CLOSE_WITHIN * 3, &mut down).await;
                    return Ok(Some(Closed::Idle));
                }
            }
            // Outside both directions: a client that stops reading (the write to it blocks)
            // or keeps sending cannot keep the connection past its token. `down` may still
            // write the close frame, within its bounds; then both halves are dropped.
            why = Lease::lapses(lease.as_ref()) => {
                let graceful = FINISH_FRAME_WITHIN + CLOSE_WITHIN * 3;
                match tokio::time::timeout(graceful, &mut down).await {
                    Ok(Ok(Some(Closed::Token(_)))) => {}
                    _ => {
                        if let Some(lease) = &lease {
                            lease.count(why);
                        }
                    }
                }
                return Ok(Some(Closed::Token(why)));
            }
            r = &mut down => {
                let ended = r?;
                // The upstream closed (its FIN is passed on): what the client still sends
                // goes on until it closes too, within `idle`; a lapsed token stops
                // everything now.
                if ended.is_none() && up_done.is_none() {
                    let _ = tokio::time::timeout(idle, &mut up).await;
                }
                return Ok(ended);
            }
        }
    }
}

/// Upstream to client, frame-aware, checking the lease every [`CHECK_EVERY`] and at
/// expiry, and following the watcher's [`Signals`]. `Some(why)` when the gateway ended
/// it (the close frame is written where a frame boundary allowed it).
async fn downstream<R, W>(
    from: &mut R,
    to: &mut W,
    lease: Option<&Lease>,
    signals: &Signals,
) -> io::Result<Option<Closed>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut frames = Frames::default();
    let next_check = |lease: &Lease| tokio::time::Instant::now() + CHECK_EVERY.min(lease.expires_in());
    let mut check_at = lease.map(next_check);
    // After an HTTP/2 client's end of stream: the next look at its send side.
    let mut probes = RESET_PROBES.iter();
    let mut probe_at: Option<tokio::time::Instant> = None;
    let mut client_eof = false;
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => r?,
            _ = sleep_until(check_at) => {
                let Some(lease) = lease else { continue };
                match lease.check() {
                    None => {
                        check_at = Some(next_check(lease));
                        continue;
                    }
                    Some(why) => {
                        finish_frame(from, to, &mut frames, &mut buf).await?;
                        if frames.at_boundary() {
                            bounded(to.write_all(&close_frame(1008, why.close_reason()))).await?;
                        }
                        bounded(to.flush()).await?;
                        let _ = bounded(to.shutdown()).await;
                        return Ok(Some(Closed::Token(why)));
                    }
                }
            }
            () = signals.idle.notified() => {
                // Nothing moved for the idle timeout: a frame cut short stays cut (a close
                // frame inside it would be payload), the connection just closes.
                if frames.at_boundary() {
                    bounded(to.write_all(&close_frame(1001, "idle timeout"))).await?;
                    bounded(to.flush()).await?;
                }
                let _ = bounded(to.shutdown()).await;
                return Ok(Some(Closed::Idle));
            }
            () = signals.client_eof.notified(), if !client_eof => {
                client_eof = true;
                probe_at = Some(tokio::time::Instant::now());
                continue;
            }
            _ = sleep_until(probe_at) => {
                // A reset stream's send side has failed: flushing says so.
                bounded(to.flush()).await?;
                let wait = probes.next().copied().unwrap_or(std::time::Duration::from_secs(1));
                probe_at = Some(tokio::time::Instant::now() + wait);
                continue;
            }
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(None);
        }
        frames.feed(&buf[..n]);
        to.write_all(&buf[..n]).await?;
    }
}

/// One side of the splice, noting that a byte moved (read or written) for the idle check:
/// a flag, not a clock read per I/O.
struct Moving<'a, T> {
    inner: T,
    moved: &'a AtomicBool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Moving<'_, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Moving<'_, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.moved.store(true, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long one write of the closing handshake may wait for a client that does not read.
const CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// A write on the way out, within [`CLOSE_WITHIN`]: a client that stops reading cannot
/// hold the close.
async fn bounded<T>(write: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(CLOSE_WITHIN, write).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "client did not read the close")),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Pass on the rest of the frame the upstream is in the middle of, for at most
/// [`FINISH_FRAME_WITHIN`]; what comes after it is not sent.
async fn finish_frame<R, W>(from: &mut R, to: &mut W, frames: &mut Frames, buf: &mut [u8]) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + FINISH_FRAME_WITHIN;
    while !frames.at_boundary() {
        let n = match tokio::time::timeout_at(deadline, from.read(buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let take = frames.advance(&buf[..n]);
        bounded(to.write_all(&buf[..take])).await?;
    }
    Ok(())
}

/// A close frame from the server side (unmasked, RFC 6455 §5.5.1): the status code, then a
/// reason of at most 123 bytes.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x88); // FIN, opcode 8 (close)
    frame.push(u8::try_from(2 + reason.len()).unwrap_or(125));
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// Where the byte stream is relative to frame boundaries (RFC 6455 §5.2): only lengths
/// are read, never payloads.
#[derive(Default)]
pub struct Frames {
    /// The header bytes read so far of the frame being started (at most 14).
    head: [u8; 14],
    have: usize,
    /// Payload bytes still to come of the current frame.
    payload_left: u64,
}

impl Frames {
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.advance(data);
            data = &data[n..];
        }
    }

    /// Take bytes of `data` up to the end of the current frame (or all of them);
    /// returns how many. A frame whose header is complete and payload empty ends there.
    pub fn advance(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            if self.payload_left > 0 {
                let take = usize::try_from(self.payload_left).unwrap_or(usize::MAX).min(data.len() - i);
                i += take;
                self.payload_left -= take as u64;
                if self.payload_left == 0 {
                    return i;
                }
                continue;
            }
            self.head[self.have] = data[i];
            self.have += 1;
            i += 1;
            if self.have >= 2 && self.have == self.head_len() {
                self.payload_left = self.payload_len();
                self.have = 0;
                if self.payload_left == 0 {
                    return i;
                }
            }
        }
        i
    }

    /// The length of this frame's header, once its first two bytes are known.
    fn head_len(&self) -> usize {
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => u64::from_be_bytes([
                self.head[2],
                self.head[3],
                self.head[4],
                self.head[5],
                self.head[6],
                self.head[7],
                self.head[8],
                self.head[9],
            ]),
            n => u64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn frame_boundaries_are_followed_byte_by_byte_and_in_chunks() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (len, masked) in [(0, false), (5, false), (125, true), (126, false), (70_000, true), (1, false)] {
            stream.extend(frame(len, masked));
            ends.push(stream.len());
        }
        // Byte by byte: at a boundary exactly at each frame's end.
        let mut f = Frames::default();
        for (i, b) in stream.iter().enumerate() {
            f.feed(std::slice::from_ref(b));
            assert_eq!(f.at_boundary(), ends.contains(&(i + 1)), "after byte {i}");
        }
        // In odd chunks, `advance` stops at each boundary.
        let mut f = Frames::default();
        let mut at = 0;
        let mut seen = Vec::new();
        while at < stream.len() {
            let chunk = &stream[at..(at + 333).min(stream.len())];
            let n = f.advance(chunk);
            at += n;
            if f.at_boundary() {
                seen.push(at);
            }
        }
        assert_eq!(seen, ends);
    }

    #[test]
    fn the_close_frame_is_unmasked_with_code_and_bounded_reason() {
        assert_eq!(close_frame(1008, "token revoked"), [&[0x88, 15, 0x03, 0xf0][..], b"token revoked"].concat());
        let long = "x".repeat(300);
        let f = close_frame(1008, &long);
        assert_eq!(f[1], 125);
        assert_eq!(f.len(), 2 + 125);
    }

    #[test]
    fn accept_matches_the_rfc_example() {
        assert_eq!(accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
