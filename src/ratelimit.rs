//! Rate limits on the token, revocation and introspection endpoints and the login form (DESIGN: "429 + Retry-After").
//!
//! Token buckets — a burst, then a steady refill — keyed by source IP, client id and
//! username, each kept in a bounded moka cache. An entry expires once its bucket would be
//! full again, so forgetting it changes nothing.
//!
//! Failed authentications cost more than successful ones. Per source IP, every request
//! takes one unit and a failed authentication `failure_cost` units in all. Per client and
//! per username only failures count: one unit is reserved *before* a secret is verified
//! (so concurrent guesses are bounded too) and refunded when it verifies. A brute force
//! against one client or user throttles that name and that source, nobody else. Client
//! failures are counted per (source, client id): a stranger who knows a client id locks out
//! only their own guesses, never the client itself calling from elsewhere.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderMap;
use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache;

use crate::config::{Config, Quota, QuotaPer, RateLimits, RouteQuota};
use crate::store::redis::RedisStore;
use crate::store::redis_limits::{Mode, RedisLimits};

/// Which endpoint a per-IP bucket belongs to; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Login,
    /// RFC 7009 revocation: authenticates clients like the token endpoint, so it is limited like it.
    Revoke,
    /// RFC 7662 introspection: likewise.
    Introspect,
    /// The admin listener's blocks API, which checks an API key.
    Admin,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::Login => "login",
            Endpoint::Revoke => "revoke",
            Endpoint::Introspect => "introspect",
            Endpoint::Admin => "admin",
        }
    }

    /// The kind of its per-IP budgets in the shared store.
    fn budget(self) -> &'static str {
        match self {
            Endpoint::Token => "ip:token",
            Endpoint::Login => "ip:login",
            Endpoint::Revoke => "ip:revoke",
            Endpoint::Introspect => "ip:introspect",
            Endpoint::Admin => "ip:admin",
        }
    }
}

/// A request refused for its rate; the caller may retry after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

impl Throttled {
    /// Whole seconds for the `Retry-After` header, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        whole_secs(self.retry_after).max(1)
    }
}

/// `d` in whole seconds, rounded up.
pub fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A route quota's decision, with what the `RateLimit` header reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaVerdict {
    /// `None`: admitted; else refused, retry after this long.
    pub refused: Option<Duration>,
    /// Whole units left after this request.
    pub remaining: u32,
    /// Until the budget is full again.
    pub full_in: Duration,
}

/// Every bucket the gateway keeps; outlives configuration reloads (the quotas are read
/// from the configuration in force on each call). With the Redis store the budgets live
/// in Redis ([`crate::store::redis_limits`]), so N replicas do not give N times the
/// budget; the local buckets serve the embedded store, and any decision Redis does not
/// answer within the store timeout (see [`Shared`]).
pub struct RateLimiter {
    token_ip: Buckets<IpAddr>,
    login_ip: Buckets<IpAddr>,
    revoke_ip: Buckets<IpAddr>,
    introspect_ip: Buckets<IpAddr>,
    admin_ip: Buckets<IpAddr>,
    clients: Buckets<String>,
    users: Buckets<String>,
    /// Wrong admin API keys per source, with the client-failure quota.
    admin_keys: Buckets<IpAddr>,
    /// Route quotas (issue 14), keyed by route and caller.
    quotas: Buckets<String>,
    shared: Option<Shared>,
}

impl RateLimiter {
    /// `max_tracked` bounds each of the caches.
    pub fn new(max_tracked: u64) -> Self {
        RateLimiter {
            token_ip: Buckets::new(max_tracked),
            login_ip: Buckets::new(max_tracked),
            revoke_ip: Buckets::new(max_tracked),
            introspect_ip: Buckets::new(max_tracked),
            admin_ip: Buckets::new(max_tracked),
            clients: Buckets::new(max_tracked),
            users: Buckets::new(max_tracked),
            admin_keys: Buckets::new(max_tracked),
            quotas: Buckets::new(max_tracked),
            shared: None,
        }
    }

    /// Keep the budgets in `redis`, falling back to the local buckets for any decision it
    /// does not answer within `timeout`.
    pub fn shared(mut self, redis: Arc<RedisStore>, timeout: Duration) -> Self {
        self.shared = Some(Shared::new(RedisLimits::new(redis), timeout));
        self
    }

    /// How the shared budgets are doing, for `/metrics`; `None` with the local limiter only.
    pub fn stats(&self) -> Option<SharedStats> {
        self.shared.as_ref().map(|s| SharedStats {
            fallbacks: s.fallbacks.load(Ordering::Relaxed),
            local: s.local.load(Ordering::Relaxed),
        })
    }

    fn ip_buckets(&self, endpoint: Endpoint) -> &Buckets<IpAddr> {
        match endpoint {
            Endpoint::Token => &self.token_ip,
            Endpoint::Login => &self.login_ip,
            Endpoint::Revoke => &self.revoke_ip,
            Endpoint::Introspect => &self.introspect_ip,
            Endpoint::Admin => &self.admin_ip,
        }
    }

    /// One decision on the budget `key` of `kind`: in Redis when shared and answering,
    /// else locally. `entered` is called on the refusal that starts a throttled spell.
    async fn step<K: BudgetKey>(
        &self,
        local: &Buckets<K>,
        kind: &'static str,
        key: K,
        quota: Quota,
        op: Step,
        entered: impl FnOnce(&Throttled),
    ) -> Verdict {
        if let Some(shared) = &self.shared
            && let Some(v) = shared.step(kind, &key, quota, op).await
        {
            if let Some(t) = v.refused
                && shared.first_refusal(kind, &key)
            {
                entered(&t);
            }
            return v;
        }
        local.step(key, quota, op, entered)
    }

    /// One request from `ip` at `endpoint`: takes a unit, or refuses.
    pub async fn admit(&self, cfg: &RateLimits, endpoint: Endpoint, ip: IpAddr) -> Result<(), Throttled> {
        if !cfg.enabled {
            return Ok(());
        }
        // Logged once per throttled spell, not per refusal (a flood would flood the log too);
        // every refusal is still counted in the metrics.
        let note = |t: &Throttled| tracing::warn!(security_event = "rate_limited", endpoint = endpoint.as_str(), source = %ip, retry_after_secs = t.retry_after_secs(), "per-IP rate limit tripped");
        self.step(self.ip_buckets(endpoint), endpoint.budget(), ip_key(ip), cfg.ip, Step::Take(1), note).await.result()
    }

    /// A failed authentication from `ip`: charge the rest of `failure_cost`.
    pub async fn failed(&self, cfg: &RateLimits, endpoint: Endpoint, ip: IpAddr) {
        // A failure that costs no more than a request needs no second step (nor round trip).
        if cfg.enabled && cfg.failure_cost > 1 {
            let rest = Step::Charge(i64::from(cfg.failure_cost) - 1);
            self.step(self.ip_buckets(endpoint), endpoint.budget(), ip_key(ip), cfg.ip, rest, |_| {}).await;
        }
    }

    /// Before verifying `client_id`'s secret presented from `source`: reserve one failure,
    /// or refuse. Unknown ids are tracked too (keyed as given, within `max_tracked`), so a
    /// 429 says nothing about which ids exist.
    pub async fn reserve_client(&self, cfg: &RateLimits, source: IpAddr, client_id: &str) -> Result<(), Throttled> {
        if !cfg.enabled {
            return Ok(());
        }
        // The id is not logged: it may be a secret pasted into the wrong field.
        let note = |t: &Throttled| {
            tracing::warn!(
                security_event = "client_lockout",
                retry_after_secs = t.retry_after_secs(),
                "client id locked out after repeated authentication failures"
            )
        };
        let key = client_key(source, client_id);
        self.step(&self.clients, "client", key, cfg.client_failures, Step::Take(1), note).await.result()
    }

    /// The secret verified: give the reserved failure back.
    pub async fn release_client(&self, cfg: &RateLimits, source: IpAddr, client_id: &str) {
        if cfg.enabled {
            let key = client_key(source, client_id);
            self.step(&self.clients, "client", key, cfg.client_failures, Step::Charge(-1), |_| {}).await;
        }
    }

    /// Before verifying `username`'s password: reserve one failure, or refuse. Every name
    /// is tracked, known or not, so a refusal says nothing about who exists.
    pub async fn reserve_user(&self, cfg: &RateLimits, username: &str) -> Result<(), Throttled> {
        if !cfg.enabled {
            return Ok(());
        }
        // The name is not logged: it may be a password typed into the wrong field.
        let note = |t: &Throttled| {
            tracing::warn!(
                security_event = "user_lockout",
                retry_after_secs = t.retry_after_secs(),
                "username locked out after repeated failed logins"
            )
        };
        self.step(&self.users, "user", name_key(username), cfg.user_failures, Step::Take(1), note).await.result()
    }

    /// The password verified: give the reserved failure back.
    pub async fn release_user(&self, cfg: &RateLimits, username: &str) {
        if cfg.enabled {
            self.step(&self.users, "user", name_key(username), cfg.user_failures, Step::Charge(-1), |_| {}).await;
        }
    }

    /// Before checking an admin API key from `source`: reserve one failure (of the
    /// `client_failures` quota), or refuse.
    pub async fn reserve_admin(&self, cfg: &RateLimits, source: IpAddr) -> Result<(), Throttled> {
        if !cfg.enabled {
            return Ok(());
        }
        let note = |t: &Throttled| {
            tracing::warn!(
                security_event = "admin_key_lockout",
                source = %source,
                retry_after_secs = t.retry_after_secs(),
                "admin API locked out for this source after repeated wrong keys"
            )
        };
        self.step(&self.admin_keys, "adminkey", ip_key(source), cfg.client_failures, Step::Take(1), note).await.result()
    }

    /// The admin API key verified: give the reserved failure back.
    pub async fn release_admin(&self, cfg: &RateLimits, source: IpAddr) {
        if cfg.enabled {
            let refund = Step::Charge(-1);
            self.step(&self.admin_keys, "adminkey", ip_key(source), cfg.client_failures, refund, |_| {}).await;
        }
    }

    /// One request on a route with `quota`, from `caller` (see [`quota_caller`]): takes a
    /// unit, or refuses. Refusals are counted in the metrics by route, not logged.
    pub async fn quota(&self, quota: &RouteQuota, caller: &str) -> QuotaVerdict {
        let key = name_key(&format!("{}\n{caller}", quota.id));
        let v = self.step(&self.quotas, "quota", key, quota.bucket(), Step::Take(1), |_| {}).await;
        QuotaVerdict { refused: v.refused.map(|t| t.retry_after), remaining: v.remaining, full_in: v.full_in }
    }
}

/// Whose budget a request on a route with `quota` spends: the client or user of its token
/// (with the issuer's name, so two issuers' `alice` differ), or its source address.
pub fn quota_caller(
    quota: &RouteQuota,
    principal: Option<&crate::tokens::validate::Principal>,
    source: IpAddr,
) -> String {
    let ip = || format!("ip {}", ip_key(source));
    let Some(p) = principal else { return ip() };
    let client = || {
        // A trusted issuer's token may name no client: its subject stands in.
        let id = if p.client_id().is_empty() { p.subject() } else { p.client_id() };
        format!("client {} {id}", p.issuer_name())
    };
    match quota.per {
        QuotaPer::Ip => ip(),
        QuotaPer::Client => client(),
        // A token without a user (client_credentials) spends its client's budget.
        QuotaPer::User => match p.user() {
            Some(user) => format!("user {} {user}", p.issuer_name()),
            None => client(),
        },
    }
}

/// What a step asks of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Take this many units if they are there; otherwise refuse, changing nothing.
    Take(i64),
    /// Take (or give back, negative) this many, never below empty nor above full.
    Charge(i64),
}

/// The outcome of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    refused: Option<Throttled>,
    remaining: u32,
    full_in: Duration,
}

impl Verdict {
    fn result(self) -> Result<(), Throttled> {
        self.refused.map_or(Ok(()), Err)
    }

    /// From a budget `backlog` ahead of now after the step.
    fn of(quota: Quota, backlog: Duration, refused: Option<Duration>) -> Verdict {
        let (interval, tolerance) = gcra_params(quota);
        let left = tolerance.saturating_sub(backlog).as_nanos() / interval.as_nanos().max(1);
        Verdict {
            refused: refused.map(|retry_after| Throttled { retry_after }),
            remaining: u32::try_from(left).unwrap_or(u32::MAX),
            full_in: backlog,
        }
    }
}

/// The GCRA form of a token bucket: the time one unit takes to come back, and the
/// headroom of a full bucket (burst × that).
fn gcra_params(quota: Quota) -> (Duration, Duration) {
    let per_sec =
        if quota.refill_per_sec.is_finite() && quota.refill_per_sec > 0.0 { quota.refill_per_sec } else { 1e-9 };
    let interval = Duration::try_from_secs_f64(1.0 / per_sec).unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
    let interval = interval.max(Duration::from_micros(1));
    (interval, interval.saturating_mul(quota.burst))
}

/// One GCRA step, the arithmetic of the Redis script (`store::redis_limits`) in
/// nanoseconds: `backlog` is how far the theoretical arrival time is ahead of now.
/// Returns the backlog after the step and, when refused, how long until it would pass.
fn gcra(backlog: u128, interval: u128, tolerance: u128, step: Step) -> (u128, Option<u128>) {
    match step {
        Step::Take(n) => {
            let after = backlog + interval * u128::from(n.unsigned_abs());
            if after > tolerance { (backlog, Some(after - tolerance)) } else { (after, None) }
        }
        Step::Charge(n) if n >= 0 => ((backlog + interval * u128::from(n.unsigned_abs())).min(tolerance), None),
        Step::Charge(n) => (backlog.saturating_sub(interval * u128::from(n.unsigned_abs())), None),
    }
}

/// A key of a budget, locally and in Redis.
trait BudgetKey: Hash + Eq + Send + Sync + 'static {
    /// Its id in Redis: an address as written, a name as its SHA-256.
    fn shared_id(&self) -> String;
}

impl BudgetKey for IpAddr {
    fn shared_id(&self) -> String {
        self.to_string()
    }
}

impl BudgetKey for String {
    fn shared_id(&self) -> String {
        sha256_hex(self)
    }
}

fn sha256_hex(s: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// How the shared budgets are doing: `portcullis_ratelimit_fallback_total` and
/// `portcullis_ratelimit_shared`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedStats {
    /// Decisions made locally because Redis did not answer in time.
    pub fallbacks: u64,
    /// Limiting locally right now.
    pub local: bool,
}

/// How long after a failed call decisions stay local without asking Redis: a dead
/// Redis costs one timeout a second, not one per request.
const RETRY_SHARED_AFTER: Duration = Duration::from_secs(1);

/// The shared budgets and the fallback state. Neither fail-open nor fail-closed: when
/// Redis does not answer within the store timeout, the decision is made by the local
/// buckets (each replica then grants the budget on its own), counted, and logged once
/// per outage.
struct Shared {
    redis: RedisLimits,
    timeout: Duration,
    epoch: Instant,
    /// Milliseconds after `epoch` before which no call is tried.
    retry_at: AtomicU64,
    fallbacks: AtomicU64,
    local: AtomicBool,
    /// Budgets refused lately, so a refused spell is logged once, as the local buckets do.
    spells: Cache<String, ()>,
}

impl Shared {
    fn new(redis: RedisLimits, timeout: Duration) -> Shared {
        Shared {
            redis,
            timeout,
            epoch: Instant::now(),
            retry_at: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            local: AtomicBool::new(false),
            spells: Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(60)).build(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The decision in Redis, or `None` (counted) for the local buckets to make.
    async fn step<K: BudgetKey>(&self, kind: &str, key: &K, quota: Quota, step: Step) -> Option<Verdict> {
        let (now, at) = (self.now_ms(), self.retry_at.load(Ordering::Acquire));
        // While limiting locally, one request a second asks Redis again (it claims the next
        // second); the others decide locally meanwhile instead of waiting with it.
        let probe_claimed = || {
            let next = now + RETRY_SHARED_AFTER.as_millis() as u64;
            self.retry_at.compare_exchange(at, next, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        };
        if now < at || (self.local.load(Ordering::Acquire) && !probe_claimed()) {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let (interval, tolerance) = gcra_params(quota);
        let (cost, mode) = match step {
            Step::Take(n) => (n, Mode::Take),
            Step::Charge(n) => (n, Mode::Charge),
        };
        let call = self.redis.step(self.redis.key(kind, &key.shared_id()), interval, tolerance, cost, mode);
        let why = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(s)) => {
                if self.local.swap(false, Ordering::AcqRel) {
                    // The probe's claim on the next second is void: shared from now on.
                    self.retry_at.store(0, Ordering::Release);
                    tracing::warn!("Redis answers the rate limiter again: budgets are shared across replicas");
                }
                return Some(Verdict::of(quota, s.backlog, (!s.admitted).then_some(s.wait)));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within the store timeout ({:?})", self.timeout),
        };
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.retry_at.store(self.now_ms() + RETRY_SHARED_AFTER.as_millis() as u64, Ordering::Relaxed);
        if !self.local.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error = %why,
                "Redis does not answer the rate limiter: each replica limits on its own until it does (N replicas allow N times the budgets)"
            );
        }
        None
    }

    /// Is this refusal of `key` the first of a spell (none logged in the last minute)?
    fn first_refusal<K: BudgetKey>(&self, kind: &str, key: &K) -> bool {
        self.spells.entry(format!("{kind} {}", key.shared_id())).or_insert(()).is_fresh()
    }
}

/// IPv4 (and IPv4-mapped IPv6) addresses count alone; IPv6 by /64, the block one
/// subscriber usually holds.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The key of a per-name bucket. Names come from callers, known or not (so that a 429
/// tells nothing about which exist): a long one is kept as its SHA-256, so a tracked
/// entry costs at most 64 bytes of name whatever was sent.
fn name_key(name: &str) -> String {
    const MAX_KEPT: usize = 128;
    if name.len() <= MAX_KEPT {
        return name.to_string();
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of a per-client failure bucket: the source (as [`ip_key`]) and the id.
fn client_key(source: IpAddr, client_id: &str) -> String {
    name_key(&format!("{} {client_id}", ip_key(source)))
}

/// The address a request comes from: the peer, or — when the peer is a trusted proxy —
/// the nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn source_ip(config: &Config, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    forwarded_chain(config, peer, headers).first().copied().unwrap_or_else(|| peer.to_canonical())
}

/// The part of `X-Forwarded-For` the trusted proxies vouch for, in order: the source
/// address [`source_ip`] names first, then the trusted hops after it (the peer itself not
/// included). Empty when the peer is not trusted, names nobody, or makes its
/// X-Forwarded-For hop-by-hop.
pub fn forwarded_chain(config: &Config, peer: IpAddr, headers: &HeaderMap) -> Vec<IpAddr> {
    let peer = peer.to_canonical();
    let mut chain = Vec::new();
    if !config.is_trusted_proxy(peer) {
        return chain;
    }
    // An X-Forwarded-For the message's `Connection` names is hop-by-hop: the gateway does
    // not forward it (`forward::upstream_headers`), so it vouches for none of it either —
    // the source, `X-Real-IP` and `Forwarded` are the peer's, as the upstream's
    // X-Forwarded-For then says.
    if crate::http::connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"x-forwarded-for")) {
        return chain;
    }
    // A line that is not text stays in the list as a hop that cannot be read (`None`), so
    // the walk below stops there instead of skipping to what came before it.
    let hops: Vec<Option<&str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| match v.to_str() {
            Ok(text) => text.split(',').map(|h| Some(h.trim())).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    for hop in hops.iter().rev() {
        // A value we cannot read was written by someone we do not trust: stop at the last
        // address we could vouch for.
        let Some(ip) = hop.and_then(hop_address) else { break };
        let ip = ip.to_canonical();
        chain.push(ip);
        if !config.is_trusted_proxy(ip) {
            break;
        }
    }
    chain.reverse();
    chain
}

/// The address of one `X-Forwarded-For` item: an address alone, or with the port some
/// proxies add (Azure Application Gateway, IIS ARR): `1.2.3.4:5678`, `[2001:db8::1]:443`,
/// and a bracketed IPv6 address without a port. Anything else is unreadable.
fn hop_address(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip = v6.parse::<std::net::Ipv6Addr>().ok()?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)).then_some(IpAddr::V6(ip));
    }
    let (v4, port) = hop.split_once(':')?;
    let ip = v4.parse::<std::net::Ipv4Addr>().ok()?;
    valid_port(port).then_some(IpAddr::V4(ip))
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
}

/// One local budget in GCRA form: the theoretical arrival time `tat` (the bucket is full
/// again then; it was never older than now when stored).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tat: Instant,
    /// The last take was refused: the next refusal is not news.
    throttled: bool,
}

impl Bucket {
    /// How long until the bucket is full again; the cache forgets it then (at least a
    /// second later, so a refused spell is remembered).
    fn full_in(&self) -> Duration {
        self.tat.saturating_duration_since(Instant::now()).max(Duration::from_secs(1))
    }
}

struct UntilFull;

impl<K> Expiry<K, Bucket> for UntilFull {
    fn expire_after_create(&self, _: &K, b: &Bucket, _: Instant) -> Option<Duration> {
        Some(b.full_in())
    }
    fn expire_after_update(&self, _: &K, b: &Bucket, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(b.full_in())
    }
}

/// Buckets of one kind of key.
struct Buckets<K> {
    cache: Cache<K, Bucket>,
}

impl<K: std::hash::Hash + Eq + Send + Sync + 'static> Buckets<K> {
    fn new(max_tracked: u64) -> Self {
        Buckets { cache: Cache::builder().max_capacity(max_tracked).expire_after(UntilFull).build() }
    }

    /// Take `n` units if that many are available; otherwise say when they will be.
    #[cfg(test)]
    fn take(&self, key: K, quota: Quota, n: f64) -> Result<(), Throttled> {
        self.take_noting(key, quota, n, |_| {})
    }

    #[cfg(test)]
    fn take_noting(&self, key: K, quota: Quota, n: f64, entered: impl FnOnce(&Throttled)) -> Result<(), Throttled> {
        self.step(key, quota, Step::Take(n as i64), entered).result()
    }

    #[cfg(test)]
    fn charge(&self, key: K, quota: Quota, n: f64) {
        self.step(key, quota, Step::Charge(n as i64), |_| {});
    }

    /// One step on `key`'s bucket ([`gcra`]); `entered` is called on the refusal that
    /// throttles the key (the first after an admitted take, or after the bucket was
    /// forgotten), not on the ones after it.
    fn step(&self, key: K, quota: Quota, step: Step, entered: impl FnOnce(&Throttled)) -> Verdict {
        let now = Instant::now();
        let (interval, tolerance) = gcra_params(quota);
        let mut verdict = Verdict { refused: None, remaining: 0, full_in: Duration::ZERO };
        let mut first = false;
        self.cache.entry(key).and_compute_with(|entry| {
            let (backlog, was) = entry.map_or((0, false), |e| {
                let b = e.into_value();
                (b.tat.saturating_duration_since(now).as_nanos(), b.throttled)
            });
            let (after, wait) = gcra(backlog, interval.as_nanos(), tolerance.as_nanos(), step);
            let after_d = Duration::from_nanos(u64::try_from(after).unwrap_or(u64::MAX));
            let wait = wait.map(|w| Duration::from_nanos(u64::try_from(w).unwrap_or(u64::MAX)));
            verdict = Verdict::of(quota, after_d, wait);
            let throttled = match step {
                Step::Take(_) => wait.is_some(),
                Step::Charge(_) => was,
            };
            first = wait.is_some() && !was;
            Op::Put(Bucket { tat: now + after_d, throttled })
        });
        if let Some(t) = &verdict.refused
            && first
        {
            entered(t);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(burst: u32, per_sec: f64) -> Quota {
        Quota { burst, refill_per_sec: per_sec }
    }

    #[test]
    fn a_burst_then_refusal_with_a_retry_time() {
        let b = Buckets::new(100);
        let q = quota(3, 1.0 / 60.0);
        for _ in 0..3 {
            assert_eq!(b.take("k", q, 1.0), Ok(()));
        }
        let t = b.take("k", q, 1.0).unwrap_err();
        assert!(t.retry_after > Duration::from_secs(55) && t.retry_after <= Duration::from_secs(60), "{t:?}");
        assert_eq!(t.retry_after_secs(), 60);
        assert_eq!(b.take("other", q, 1.0), Ok(()), "keys are independent");
    }

    #[test]
    fn a_refund_restores_and_a_charge_never_overflows() {
        let b = Buckets::new(100);
        let q = quota(2, 1e-6);
        b.take("k", q, 1.0).unwrap();
        b.take("k", q, 1.0).unwrap();
        b.charge("k", q, -1.0);
        b.take("k", q, 1.0).unwrap();
        b.charge("k", q, -5.0);
        b.take("k", q, 1.0).unwrap();
        b.take("k", q, 1.0).unwrap();
        assert!(b.take("k", q, 1.0).is_err(), "refunds never fill above the burst");
        b.charge("k", q, 10.0);
        b.charge("k", q, -1.0);
        assert!(b.take("k", q, 1.0).is_ok(), "charges never go below empty");
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_prefix_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        assert_eq!(ip_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn long_names_are_tracked_by_their_digest() {
        assert_eq!(name_key("svc"), "svc");
        let long = "x".repeat(16 * 1024);
        assert_eq!(name_key(&long).len(), 64);
        assert_ne!(name_key(&long), name_key(&"y".repeat(16 * 1024)));
        assert_eq!(name_key(&long), name_key(&long));
    }

    #[test]
    fn source_ip_follows_forwarded_for_only_through_trusted_proxies() {
        let text = "issuer = \"https://a.example\"\n[[listener]]\naddress = \"127.0.0.1:1\"\ntls = false\n\
                    [[key]]\nid = \"k\"\nfile = \"k.pem\"\n[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\n";
        let config = Config::parse(text, std::path::Path::new("gw.toml")).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            h
        };
        let h = xff(&["203.0.113.9, 10.0.0.2"]);
        assert_eq!(source_ip(&config, ip("192.0.2.1"), &h), ip("192.0.2.1"), "untrusted peer: its own address");
        assert_eq!(source_ip(&config, ip("10.0.0.1"), &h), ip("203.0.113.9"), "through two trusted hops");
        let h = xff(&["6.6.6.6", "203.0.113.9"]);
        assert_eq!(source_ip(&config, ip("10.0.0.1"), &h), ip("203.0.113.9"), "a caller's own prefix is ignored");
        let h = xff(&["garbage, 10.0.0.3"]);
        assert_eq!(source_ip(&config, ip("10.0.0.1"), &h), ip("10.0.0.3"), "stop at what cannot be read");
        assert_eq!(source_ip(&config, ip("::ffff:10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // Review 23.11: items with ports (Azure Application Gateway) do not stop the walk.
        let h = xff(&["203.0.113.9:5678, 10.0.0.2:443"]);
        assert_eq!(source_ip(&config, ip("10.0.0.1"), &h), ip("203.0.113.9"));
        let h = xff(&["[2001:db8::9]:5678, [10::1]"]);
        assert_eq!(source_ip(&config, ip("10.0.0.1"), &h), ip("10::1"), "10::1 is not in 10.0.0.0/8");
        let h = xff(&["[2001:db8::9]:5678, 10.0.0.2"]);
        assert_eq!(source_ip(&config, ip("10.0.0.1"), &h), ip("2001:db8::9"));
        // Named in `Connection` (any case, any line, beside a byte that is not text): not
        // forwarded, so not vouched for either.
        for connection in
            [&["X-Forwarded-For"][..], &["close", "keep-alive, x-forwarded-FOR"], &["\u{e9}, x-forwarded-for"]]
        {
            let mut h = xff(&["203.0.113.9, 10.0.0.2"]);
            for c in connection {
                h.append("connection", http::HeaderValue::from_bytes(c.as_bytes()).unwrap());
            }
            assert_eq!(source_ip(&config, ip("10.0.0.1"), &h), ip("10.0.0.1"), "{connection:?}");
        }
        for bad in
            ["203.0.113.9:", "203.0.113.9:99999", "[2001:db8::9", "[2001:db8::9]x", "2001:db8::9:x", "1.2.3.4:+5"]
        {
            let h = xff(&[&format!("{bad}, 10.0.0.3")]);
            assert_eq!(source_ip(&config, ip("10.0.0.1"), &h), ip("10.0.0.3"), "{bad}");
        }
    }

    /// Review 23.12: a flood of refusals is logged once per throttled spell.
    #[test]
    fn entering_the_throttled_state_is_noted_once_per_spell() {
        // A slow refill: nothing comes back during the test.
        let b: Buckets<&str> = Buckets::new(100);
        let q = quota(1, 1.0 / 3600.0);
        let noted = std::cell::Cell::new(0);
        let note = || noted.set(noted.get() + 1);
        assert!(b.take("k", q, 1.0).is_ok());
        for _ in 0..100 {
            assert!(b.take_noting("k", q, 1.0, |_| note()).is_err());
        }
        assert_eq!(noted.get(), 1, "one note for a long flood");
        // A unit given back (a verified secret): admitted, and the next spell is noted again.
        b.charge("k", q, -1.0);
        assert!(b.take_noting("k", q, 1.0, |_| note()).is_ok());
        for _ in 0..10 {
            assert!(b.take_noting("k", q, 1.0, |_| note()).is_err());
        }
        assert_eq!(noted.get(), 2, "a new spell");
        assert!(b.take_noting("other", q, 1.0, |_| note()).is_ok(), "keys are independent");
    }

    /// The arithmetic both the local buckets and the Redis script follow.
    #[test]
    fn gcra_admits_a_burst_refuses_with_the_wait_and_clamps_charges() {
        let (t, tol) = (10u128, 30u128); // a unit every 10, a burst of 3
        let mut b = 0;
        for _ in 0..3 {
            let (after, wait) = gcra(b, t, tol, Step::Take(1));
            assert_eq!(wait, None);
            b = after;
        }
        assert_eq!(b, 30);
        assert_eq!(gcra(b, t, tol, Step::Take(1)), (30, Some(10)), "refused: nothing changes, one unit away");
        assert_eq!(gcra(25, t, tol, Step::Take(1)), (25, Some(5)), "half a unit came back: half the wait");
        assert_eq!(gcra(20, t, tol, Step::Take(1)), (30, None));
        assert_eq!(gcra(0, t, tol, Step::Take(4)), (0, Some(10)), "more than the burst at once: never now");
        assert_eq!(gcra(10, t, tol, Step::Charge(4)), (30, None), "a charge stops at empty");
        assert_eq!(gcra(10, t, tol, Step::Charge(-4)), (0, None), "a refund stops at full");
        assert_eq!(gcra(30, t, tol, Step::Charge(-1)), (20, None));
    }

    fn route_quota(rate: u32, burst: u32, window_secs: u64) -> RouteQuota {
        RouteQuota { per: QuotaPer::Client, rate, burst, window: Duration::from_secs(window_secs), id: "|/a|".into() }
    }

    #[tokio::test]
    async fn a_local_quota_reports_what_is_left_and_refuses_past_the_burst() {
        let limiter = RateLimiter::new(100);
        let q = route_quota(2, 3, 60); // 3 at once, then 2 a minute
        let v = limiter.quota(&q, "client self svc").await;
        assert_eq!((v.refused, v.remaining), (None, 2));
        assert!(v.full_in > Duration::from_secs(29) && v.full_in <= Duration::from_secs(30), "{v:?}");
        limiter.quota(&q, "client self svc").await;
        let v = limiter.quota(&q, "client self svc").await;
        assert_eq!((v.refused, v.remaining), (None, 0));
        let v = limiter.quota(&q, "client self svc").await;
        let wait = v.refused.expect("the fourth is refused");
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(v.remaining, 0);
        assert!(v.full_in > Duration::from_secs(89), "{v:?}");
        assert_eq!(limiter.quota(&q, "client self other").await.refused, None, "callers are apart");
        let other_route = RouteQuota { id: "|/b|".into(), ..q.clone() };
        assert_eq!(limiter.quota(&other_route, "client self svc").await.refused, None, "routes are apart");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let t = |ms| Throttled { retry_after: Duration::from_millis(ms) }.retry_after_secs();
        assert_eq!((t(0), t(1), t(1000), t(1001)), (1, 1, 1, 2));
    }
}
