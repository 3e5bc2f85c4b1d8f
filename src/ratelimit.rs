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

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use http::HeaderMap;
use moka::Expiry;
use moka::ops::compute::Op;
use moka::sync::Cache;

use crate::config::{Config, Quota, RateLimits};

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
}

/// A request refused for its rate; the caller may retry after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

impl Throttled {
    /// Whole seconds for the `Retry-After` header, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let whole = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        whole.max(1)
    }
}

/// Every bucket the gateway keeps; outlives configuration reloads (the quotas are read
/// from the configuration in force on each call).
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
        }
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

    /// One request from `ip` at `endpoint`: takes a unit, or refuses.
    pub fn admit(&self, cfg: &RateLimits, endpoint: Endpoint, ip: IpAddr) -> Result<(), Throttled> {
        if !cfg.enabled {
            return Ok(());
        }
        // Logged once per throttled spell, not per refusal (a flood would flood the log too);
        // every refusal is still counted in the metrics.
        self.ip_buckets(endpoint).take_noting(ip_key(ip), cfg.ip, 1.0, |t| tracing::warn!(security_event = "rate_limited", endpoint = endpoint.as_str(), source = %ip, retry_after_secs = t.retry_after_secs(), "per-IP rate limit tripped"))
    }

    /// A failed authentication from `ip`: charge the rest of `failure_cost`.
    pub fn failed(&self, cfg: &RateLimits, endpoint: Endpoint, ip: IpAddr) {
        if cfg.enabled {
            self.ip_buckets(endpoint).charge(ip_key(ip), cfg.ip, f64::from(cfg.failure_cost) - 1.0);
        }
    }

    /// Before verifying `client_id`'s secret presented from `source`: reserve one failure,
    /// or refuse. Unknown ids are tracked too (keyed as given, within `max_tracked`), so a
    /// 429 says nothing about which ids exist.
    pub fn reserve_client(&self, cfg: &RateLimits, source: IpAddr, client_id: &str) -> Result<(), Throttled> {
        if !cfg.enabled {
            return Ok(());
        }
        // The id is not logged: it may be a secret pasted into the wrong field.
        self.clients.take_noting(client_key(source, client_id), cfg.client_failures, 1.0, |t| {
            tracing::warn!(
                security_event = "client_lockout",
                retry_after_secs = t.retry_after_secs(),
                "client id locked out after repeated authentication failures"
            )
        })
    }

    /// The secret verified: give the reserved failure back.
    pub fn release_client(&self, cfg: &RateLimits, source: IpAddr, client_id: &str) {
        if cfg.enabled {
            self.clients.charge(client_key(source, client_id), cfg.client_failures, -1.0);
        }
    }

    /// Before verifying `username`'s password: reserve one failure, or refuse. Every name
    /// is tracked, known or not, so a refusal says nothing about who exists.
    pub fn reserve_user(&self, cfg: &RateLimits, username: &str) -> Result<(), Throttled> {
        if !cfg.enabled {
            return Ok(());
        }
        // The name is not logged: it may be a password typed into the wrong field.
        self.users.take_noting(name_key(username), cfg.user_failures, 1.0, |t| {
            tracing::warn!(
                security_event = "user_lockout",
                retry_after_secs = t.retry_after_secs(),
                "username locked out after repeated failed logins"
            )
        })
    }

    /// Before checking an admin API key from `source`: reserve one failure (of the
    /// `client_failures` quota), or refuse.
    pub fn reserve_admin(&self, cfg: &RateLimits, source: IpAddr) -> Result<(), Throttled> {
        if !cfg.enabled {
            return Ok(());
        }
        self.admin_keys.take_noting(ip_key(source), cfg.client_failures, 1.0, |t| {
            tracing::warn!(
                security_event = "admin_key_lockout",
                source = %source,
                retry_after_secs = t.retry_after_secs(),
                "admin API locked out for this source after repeated wrong keys"
            )
        })
    }

    /// The admin API key verified: give the reserved failure back.
    pub fn release_admin(&self, cfg: &RateLimits, source: IpAddr) {
        if cfg.enabled {
            self.admin_keys.charge(ip_key(source), cfg.client_failures, -1.0);
        }
    }

    /// The password verified: give the reserved failure back.
    pub fn release_user(&self, cfg: &RateLimits, username: &str) {
        if cfg.enabled {
            self.users.charge(name_key(username), cfg.user_failures, -1.0);
        }
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
/// included). Empty when the peer is not trusted or names nobody.
pub fn forwarded_chain(config: &Config, peer: IpAddr, headers: &HeaderMap) -> Vec<IpAddr> {
    let peer = peer.to_canonical();
    let mut chain = Vec::new();
    if !config.is_trusted_proxy(peer) {
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

/// One bucket: `level` units were available at `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
    /// How long until the bucket is full again; the cache forgets it then.
    full_in: Duration,
    /// The last take was refused: the next refusal is not news.
    throttled: bool,
}

impl Bucket {
    fn refilled(self, quota: Quota, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.level + elapsed * quota.refill_per_sec).min(f64::from(quota.burst))
    }

    fn at_level(level: f64, quota: Quota, now: Instant) -> Bucket {
        let missing = (f64::from(quota.burst) - level).max(0.0);
        let full_in = Duration::from_secs_f64((missing / quota.refill_per_sec).min(1e9)).max(Duration::from_secs(1));
        Bucket { level, at: now, full_in, throttled: false }
    }
}

struct UntilFull;

impl<K> Expiry<K, Bucket> for UntilFull {
    fn expire_after_create(&self, _: &K, b: &Bucket, _: Instant) -> Option<Duration> {
        Some(b.full_in)
    }
    fn expire_after_update(&self, _: &K, b: &Bucket, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(b.full_in)
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

    /// As `take`, calling `entered` on the refusal that throttles the key (the first after
    /// an admitted take, or after the bucket was forgotten), not on the ones after it.
    fn take_noting(&self, key: K, quota: Quota, n: f64, entered: impl FnOnce(&Throttled)) -> Result<(), Throttled> {
        let now = Instant::now();
        let mut verdict = Ok(());
        let mut first = false;
        self.cache.entry(key).and_compute_with(|entry| {
            let (level, was) = entry.map_or((f64::from(quota.burst), false), |e| {
                let b = e.into_value();
                (b.refilled(quota, now), b.throttled)
            });
            if level < n {
                let wait = (n - level) / quota.refill_per_sec;
                verdict = Err(Throttled { retry_after: Duration::from_secs_f64(wait.min(1e9)) });
                first = !was;
                return Op::Put(Bucket { throttled: true, ..Bucket::at_level(level, quota, now) });
            }
            Op::Put(Bucket::at_level(level - n, quota, now))
        });
        if let Err(t) = &verdict
            && first
        {
            entered(t);
        }
        verdict
    }

    /// Remove `n` more units (never below empty), or give `-n` back (never above full).
    fn charge(&self, key: K, quota: Quota, n: f64) {
        let now = Instant::now();
        self.cache.entry(key).and_compute_with(|entry| {
            let (level, throttled) = entry.map_or((f64::from(quota.burst), false), |e| {
                let b = e.into_value();
                (b.refilled(quota, now), b.throttled)
            });
            let level = (level - n).clamp(0.0, f64::from(quota.burst));
            Op::Put(Bucket { throttled, ..Bucket::at_level(level, quota, now) })
        });
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

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let t = |ms| Throttled { retry_after: Duration::from_millis(ms) }.retry_after_secs();
        assert_eq!((t(0), t(1), t(1000), t(1001)), (1, 1, 1, 2));
    }
}
