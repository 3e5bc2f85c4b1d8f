//! A connection lives no longer than its authorisation: an upgraded WebSocket or a
//! streamed response body is ended when the token it was let in with expires, is revoked
//! (here, or on a replica: revocations reach the validator's set either way), is blocked
//! by an operator, or its client or user is disabled, removed or reset.
//!
//! A [`Lease`] re-checks the principal against the validator's in-memory state — the
//! revocation set, the blocks, the client not-befores — and the configuration in force,
//! never the signature: a few hash lookups, every [`CHECK_EVERY`]. The expiry is known in
//! advance and waited for exactly ([`Lease::expires_in`]). [`EndsWithToken`] is the
//! response-body side: no lease check until [`QUIET_START`] after its request was forwarded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::http::{Body, BoxError};
use crate::state::Gateway;
use crate::tokens::now_secs;
use crate::tokens::validate::{LEEWAY_SECS, Principal, TokenError, check_holder};

/// How often a held connection's token is checked again: within a second of a revocation.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// A response body is not watched before this long after its request was forwarded
/// (the upstream's wait counts too, so a slow upstream's body is watched sooner).
pub const QUIET_START: Duration = Duration::from_secs(1);

/// Why a held connection was ended; the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Expired,
    Revoked,
    Blocked,
    ClientDisabled,
    UserDisabled,
    ClientReset,
}

impl Ended {
    pub fn label(self) -> &'static str {
        match self {
            Ended::Expired => "expired",
            Ended::Revoked => "revoked",
            Ended::Blocked => "blocked",
            Ended::ClientDisabled => "client_disabled",
            Ended::UserDisabled => "user_disabled",
            Ended::ClientReset => "client_reset",
        }
    }

    /// The close reason a WebSocket client gets (RFC 6455 §7.4.1, code 1008): short, fixed.
    pub fn close_reason(self) -> &'static str {
        match self {
            Ended::Expired => "token expired",
            Ended::Revoked => "token revoked",
            Ended::Blocked => "token blocked",
            Ended::ClientDisabled => "client disabled",
            Ended::UserDisabled => "user disabled",
            Ended::ClientReset => "client reset",
        }
    }
}

/// The authorisation a long connection holds: who, and what was known when it was let in.
pub struct Lease {
    gw: Arc<Gateway>,
    principal: Arc<Principal>,
    /// The client's not-before when the connection was let in: any later raise (a
    /// disable, a removal, a rotated secret that revokes) voids the token.
    not_before: Option<u64>,
    /// Whole seconds since the epoch after which the validator refuses the token.
    refused_from: u64,
}

impl Lease {
    /// The lease of a request let in with `principal`. Taken for every proxied request
    /// with a token on a route that ends connections with it: two reference counts and
    /// one lookup (none while no client was ever reset), no allocation.
    pub fn new(gw: &Arc<Gateway>, principal: &Arc<Principal>) -> Lease {
        Lease {
            gw: gw.clone(),
            principal: principal.clone(),
            not_before: gw.validator.client_not_before(principal.client_id()),
            refused_from: principal.lease_until().saturating_add(LEEWAY_SECS),
        }
    }

    /// How long until the token expires (as the validator counts it, with its leeway).
    pub fn expires_in(&self) -> Duration {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Duration::from_secs(self.refused_from).saturating_sub(now)
    }

    /// Is the token still good? `Some(why)` once it is not; counted in the metric once
    /// per call that says so (callers stop at the first).
    pub fn check(&self) -> Option<Ended> {
        let ended = self.why_ended()?;
        self.count(ended);
        Some(ended)
    }

    /// [`Lease::check`] without counting: for a watcher that leaves the counting to
    /// whoever ends the connection ([`Lease::count`]).
    pub fn lapsed(&self) -> Option<Ended> {
        self.why_ended()
    }

    /// Count a connection ended for `why` in the metric.
    pub fn count(&self, why: Ended) {
        self.gw.metrics.connection_ended(why.label());
    }

    /// Wait until the lease lapses (checked every [`CHECK_EVERY`] and at expiry); never
    /// without a lease. Does not count in the metric.
    pub async fn lapses(lease: Option<&Lease>) -> Ended {
        let Some(lease) = lease else { return std::future::pending().await };
        loop {
            if let Some(why) = lease.lapsed() {
                return why;
            }
            tokio::time::sleep(CHECK_EVERY.min(lease.expires_in())).await;
        }
    }

    fn why_ended(&self) -> Option<Ended> {
        let p = &*self.principal;
        let v = &self.gw.validator;
        if now_secs() >= self.refused_from {
            return Some(Ended::Expired);
        }
        if !p.token_id().is_empty() && v.is_revoked_locally(p.token_id()) {
            return Some(Ended::Revoked);
        }
        let rt = self.gw.runtime();
        // Blocks name the `iss` of the token: ours, or its trusted issuer's.
        let iss = if p.is_own() {
            Some(rt.config.issuer())
        } else {
            rt.issuers.by_name(p.issuer_name()).map(|i| i.config.issuer.as_str())
        };
        if v.is_blocked(iss.unwrap_or_default(), p.token_id(), p.subject()) {
            return Some(Ended::Blocked);
        }
        if p.is_own() {
            match check_holder(&rt.config, p.client_id(), p.subject(), p.without_user_consent()) {
                Ok(()) => {}
                Err(TokenError::UserInactive) => return Some(Ended::UserDisabled),
                Err(_) => return Some(Ended::ClientDisabled),
            }
            if v.client_not_before(p.client_id()) > self.not_before {
                return Some(Ended::ClientReset);
            }
        }
        None
    }
}

/// A streamed response body that ends with its token: once the body has been open for
/// [`QUIET_START`], the lease is checked every [`CHECK_EVERY`] while the body waits for
/// the upstream, and at expiry. A gRPC answer then ends with trailers `grpc-status: 16`
/// (UNAUTHENTICATED); any other with an error, which hyper turns into an aborted chunked
/// body on HTTP/1.1 (the connection closes without the last chunk) and a stream reset on
/// HTTP/2: a client never takes a cut stream for a complete one.
pub struct EndsWithToken {
    inner: Body,
    lease: Lease,
    opened: Instant,
    grpc: bool,
    /// A request body (what goes upstream): ended with an error, never with trailers.
    request: bool,
    /// Armed at the first wait past [`QUIET_START`]; reset, not reallocated, after.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    state: BodyState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Streaming,
    /// gRPC: the trailers are sent; the body ends at the next poll.
    TrailersSent,
    Done,
}

/// The error a body ended by its token fails with.
#[derive(Debug, thiserror::Error)]
#[error("stream ended: {}", .0.close_reason())]
pub struct StreamEnded(pub Ended);

impl EndsWithToken {
    /// `client_h2`: the client speaks HTTP/2. Only then can it get the gRPC trailers
    /// (HTTP/1.1 drops trailers, gRPC-Web carries them in the body): anything else is cut
    /// with an error, never an end that looks complete.
    /// `opened`: when the exchange began (a clock read the caller already made).
    pub fn wrap(inner: Body, lease: Lease, headers: &HeaderMap, client_h2: bool, opened: Instant) -> Body {
        use http_body_util::BodyExt;
        let grpc = client_h2 && is_grpc(headers) && !is_grpc_web(headers);
        let request = false;
        EndsWithToken { inner, lease, opened, grpc, request, timer: None, state: BodyState::Streaming }.boxed()
    }

    /// The request side: a streamed request body (gRPC client or bidi streaming, RFC 8441)
    /// ends with its token too, so that the client→upstream direction stops even when the
    /// response side is not polled (HTTP/2 polls no body without a flow-control window).
    /// It ends with an error: the upstream sees a reset, never a complete body.
    pub fn wrap_request(inner: Body, lease: Lease) -> Body {
        use http_body_util::BodyExt;
        let opened = Instant::now();
        EndsWithToken { inner, lease, opened, grpc: false, request: true, timer: None, state: BodyState::Streaming }
            .boxed()
    }

    /// The next moment to look: the next check, or the expiry if sooner.
    fn next_deadline(&self) -> tokio::time::Instant {
        let now = Instant::now();
        let start = self.opened + QUIET_START;
        let next = if now < start { start } else { now + CHECK_EVERY };
        tokio::time::Instant::from_std(sooner(next, now, self.lease.expires_in()))
    }

    fn end(&mut self, why: Ended) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        tracing::info!(reason = why.label(), "stream ended with its token");
        if self.grpc && !self.request {
            self.state = BodyState::TrailersSent;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("16"));
            trailers.insert("grpc-message", HeaderValue::from_static(why.close_reason()));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        self.state = BodyState::Done;
        Poll::Ready(Some(Err(Box::new(StreamEnded(why)))))
    }
}

/// `next`, or `now + expires_in` if sooner. A trusted issuer's token may carry a huge
/// `exp`: an expiry past what an `Instant` can hold is no sooner than anything.
fn sooner(next: Instant, now: Instant, expires_in: Duration) -> Instant {
    now.checked_add(expires_in).map_or(next, |expiry| next.min(expiry))
}

/// `application/grpc-web`, `application/grpc-web-text`...: trailers travel in the body.
fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..20).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc-web")))
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc-web`...
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")))
}

impl HttpBody for EndsWithToken {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.state {
            BodyState::Streaming => {}
            BodyState::TrailersSent | BodyState::Done => {
                this.state = BodyState::Done;
                return Poll::Ready(None);
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => {
                // A body that streams without ever waiting is checked between frames too,
                // once past its quiet start (a clock read per frame, no timer).
                let due = match &this.timer {
                    None => this.opened.elapsed() >= QUIET_START,
                    Some(t) => t.is_elapsed(),
                };
                if due {
                    if let Some(why) = this.lease.check() {
                        return this.end(why);
                    }
                    let at = this.next_deadline();
                    match this.timer.as_mut() {
                        Some(t) => t.as_mut().reset(at),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            other => {
                this.state = BodyState::Done;
                return other;
            }
        }
        // Waiting for the upstream: make sure something wakes us to look again.
        loop {
            match this.timer.as_mut() {
                None => {
                    let at = this.next_deadline();
                    this.timer = Some(Box::pin(tokio::time::sleep_until(at)));
                }
                Some(t) => match t.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        if let Some(why) = this.lease.check() {
                            return this.end(why);
                        }
                        let at = this.next_deadline();
                        if let Some(t) = this.timer.as_mut() {
                            t.as_mut().reset(at);
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            BodyState::Streaming => self.inner.is_end_stream(),
            BodyState::TrailersSent => false,
            BodyState::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Streaming => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_web_is_told_apart_from_grpc() {
        let h = |ct: &'static str| HeaderMap::from_iter([(http::header::CONTENT_TYPE, HeaderValue::from_static(ct))]);
        assert!(is_grpc(&h("application/grpc+proto")) && !is_grpc_web(&h("application/grpc+proto")));
        assert!(is_grpc_web(&h("application/grpc-web-text")) && is_grpc_web(&h("APPLICATION/GRPC-WEB")));
    }

    #[test]
    fn an_expiry_past_any_instant_does_not_panic() {
        let now = Instant::now();
        let next = now + CHECK_EVERY;
        assert_eq!(sooner(next, now, Duration::from_secs(u64::MAX)), next);
        assert_eq!(sooner(next, now, Duration::from_secs(10_000_000_000_000_000_000)), next);
        assert_eq!(sooner(next, now, Duration::from_millis(10)), now + Duration::from_millis(10));
    }
}
