//! Prometheus metrics. The request path only touches atomics (and a lock-free map
//! lookup for labelled series); text is built only when the admin listener's
//! `/metrics` is scraped.

use std::borrow::Borrow;
use std::fmt::Write;
use std::hash::Hash;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

/// How well the validation cache is doing, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

/// Blocked requests and blocks held, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockStats {
    pub refused_jti: u64,
    pub refused_sub: u64,
    pub jti_blocks: u64,
    pub sub_blocks: u64,
}

/// The last finite upstream latency bucket; a longer `upstream_timeout` is warned about by
/// the config (its timeouts would be counted in `+Inf` only).
pub const LONGEST_LATENCY_BUCKET: std::time::Duration = std::time::Duration::from_secs(600);

/// Upper bounds (seconds) of the upstream latency buckets: up to [`LONGEST_LATENCY_BUCKET`],
/// so the default `upstream_timeout` (30 s) and any up to 10 minutes has a bucket of its own.
const LATENCY_BUCKETS: [f64; 18] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Route label of a request that matched no route (and of refusals before routing).
pub const UNMATCHED: &str = "unmatched";

/// Grant label of a token request whose `grant_type` was missing or unknown.
pub const NO_GRANT: &str = "none";

/// Token request outcome label of a success; failures use their RFC 6749 error code.
pub const ISSUED: &str = "issued";

/// Every metric the gateway exports.
pub struct Metrics {
    requests: Family<String, StatusCounters>,
    upstream_latency: Family<String, Histogram>,
    token_requests: Family<(&'static str, &'static str), AtomicU64>,
    revocations: Family<(&'static str, &'static str), AtomicU64>,
    rate_limited: Family<&'static str, AtomicU64>,
    bearer_refusals: Family<&'static str, AtomicU64>,
    /// Long connections (WebSocket, streamed bodies) ended because their token stopped being valid.
    connections_ended: Family<&'static str, AtomicU64>,
    /// Requests refused by a route quota, by route prefix (issue 14).
    quota_rejections: Family<String, AtomicU64>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_success: AtomicU64,
    /// 1 while the last reload attempt (or the start) put its configuration in force.
    last_reload_ok: AtomicU64,
    open_connections: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    /// The TLS listeners and the `notAfter` (Unix time) of the certificate they serve.
    certificates: Mutex<(Vec<SocketAddr>, Option<i64>)>,
}

/// Holds one unit of a gauge (an open connection, a request in flight) until dropped.
/// Taking one clones an `Arc` and bumps an atomic: no allocation on the request path.
pub struct GaugeGuard(Arc<AtomicU64>);

impl GaugeGuard {
    fn new(gauge: &Arc<AtomicU64>) -> GaugeGuard {
        gauge.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            requests: Family::default(),
            upstream_latency: Family::default(),
            token_requests: Family::default(),
            revocations: Family::default(),
            rate_limited: Family::default(),
            bearer_refusals: Family::default(),
            connections_ended: Family::default(),
            quota_rejections: Family::default(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_success: AtomicU64::new(crate::tokens::now_secs()),
            last_reload_ok: AtomicU64::new(1),
            open_connections: Arc::default(),
            in_flight: Arc::default(),
            certificates: Mutex::new((Vec::new(), None)),
        }
    }

    /// One accepted connection on a gateway listener, open until the guard drops.
    pub fn connection_opened(&self) -> GaugeGuard {
        GaugeGuard::new(&self.open_connections)
    }

    /// One request being answered (until its response body is sent), until the guard drops.
    pub fn request_started(&self) -> GaugeGuard {
        GaugeGuard::new(&self.in_flight)
    }

    /// Requests started whose guard is still alive.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The bound addresses of the TLS listeners, which label the certificate series.
    pub fn tls_listeners(&self, listeners: Vec<SocketAddr>) {
        self.certificates.lock().unwrap_or_else(|e| e.into_inner()).0 = listeners;
    }

    /// Record the certificate the TLS listeners now serve (read again from `cert`, the file
    /// just loaded), at start and after each reload that put one in force. A file that
    /// cannot be read or parsed drops the series, which the expiry alert treats as absent.
    pub fn certificate(&self, cert: Option<&Path>) {
        let not_after = cert.and_then(|p| match certificate_not_after(p) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(cert = %p.display(), error = %e, "cannot read the certificate's expiry for the metrics");
                None
            }
        });
        self.certificates.lock().unwrap_or_else(|e| e.into_inner()).1 = not_after;
    }

    /// One answered request on the gateway listeners.
    pub fn request(&self, route: &str, status: u16) {
        self.requests.with(route, |c| c.inc(status));
    }

    /// Time from sending a request upstream to its response head (or failure).
    pub fn upstream_latency(&self, route: &str, elapsed: Duration) {
        self.upstream_latency.with(route, |h| h.observe(elapsed));
    }

    /// One token endpoint request: the grant asked for and `ISSUED` or the error code.
    pub fn token_request(&self, grant: &'static str, outcome: &'static str) {
        self.token_requests.with(&(grant, outcome), |c| {
            c.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// `n` tokens of `kind` (access_token, refresh_family) revoked for `reason`
    /// (revoke_endpoint, code_replay, refresh_reuse).
    pub fn revoked(&self, kind: &'static str, reason: &'static str, n: u64) {
        self.revocations.with(&(kind, reason), |c| {
            c.fetch_add(n, Ordering::Relaxed);
        });
    }

    /// One request refused with 429 at `endpoint` (`token` or `login`).
    pub fn rate_limited(&self, endpoint: &'static str) {
        self.rate_limited.with(&endpoint, |c| {
            c.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A bearer token refused on the proxy path, by reason (a fixed set of labels).
    pub fn bearer_refused(&self, reason: &'static str) {
        self.bearer_refusals.with(&reason, |c| {
            c.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A long connection ended because its token stopped being valid, or idle, by reason (a fixed set).
    pub fn connection_ended(&self, reason: &'static str) {
        self.connections_ended.with(&reason, |c| {
            c.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A request refused with 429 by the quota of the route with this prefix.
    pub fn quota_rejected(&self, route: &str) {
        self.quota_rejections.with(route, |c| {
            c.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
            self.last_reload_success.store(crate::tokens::now_secs(), Ordering::Relaxed);
            self.last_reload_ok.store(1, Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
            self.last_reload_ok.store(0, Ordering::Relaxed);
        }
    }

    /// (successful, refused) reloads so far.
    pub fn reloads(&self) -> (u64, u64) {
        (self.reloads_ok.load(Ordering::Relaxed), self.reloads_failed.load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, cache: &CacheStats) -> String {
        let mut out = String::with_capacity(4096);
        header(&mut out, "portcullis_build_info", "gauge", "Always 1; the version label names the running build.");
        let _ = writeln!(out, "portcullis_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));

        header(
            &mut out,
            "portcullis_requests_total",
            "counter",
            "Requests answered on the gateway listeners, by route and status.",
        );
        for (route, counters) in self.requests.snapshot() {
            for (status, n) in counters.nonzero() {
                let _ =
                    writeln!(out, "portcullis_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(&route));
            }
        }

        header(
            &mut out,
            "portcullis_upstream_latency_seconds",
            "histogram",
            "Time from forwarding a request upstream to its response head, by route.",
        );
        for (route, h) in self.upstream_latency.snapshot() {
            let route = escape(&route);
            let mut cumulative = 0;
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "portcullis_upstream_latency_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += h.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "portcullis_upstream_latency_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "portcullis_upstream_latency_seconds_sum{{route=\"{route}\"}} {sum}");
            let _ = writeln!(out, "portcullis_upstream_latency_seconds_count{{route=\"{route}\"}} {cumulative}");
        }

        header(
            &mut out,
            "portcullis_token_requests_total",
            "counter",
            "Token endpoint requests, by grant type and outcome (issued or the OAuth error code).",
        );
        for ((grant, outcome), n) in self.token_requests.snapshot() {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "portcullis_token_requests_total{{grant=\"{grant}\",outcome=\"{outcome}\"}} {n}");
        }

        header(
            &mut out,
            "portcullis_revocations_total",
            "counter",
            "Revoked access tokens and refresh families, by kind and reason.",
        );
        for ((kind, reason), n) in self.revocations.snapshot() {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "portcullis_revocations_total{{kind=\"{kind}\",reason=\"{reason}\"}} {n}");
        }

        header(
            &mut out,
            "portcullis_rate_limited_total",
            "counter",
            "Requests refused with 429 by the rate limits, by endpoint (token or login).",
        );
        for (endpoint, n) in self.rate_limited.snapshot() {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "portcullis_rate_limited_total{{endpoint=\"{endpoint}\"}} {n}");
        }

        header(
            &mut out,
            "portcullis_quota_rejections_total",
            "counter",
            "Proxied requests refused with 429 by their route's quota, by route prefix.",
        );
        for (route, n) in self.quota_rejections.snapshot() {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "portcullis_quota_rejections_total{{route=\"{}\"}} {n}", escape(&route));
        }

        header(
            &mut out,
            "portcullis_bearer_refusals_total",
            "counter",
            "Bearer tokens refused on the proxy path (401 invalid_token), by reason.",
        );
        for (reason, n) in self.bearer_refusals.snapshot() {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "portcullis_bearer_refusals_total{{reason=\"{reason}\"}} {n}");
        }

        header(
            &mut out,
            "portcullis_connections_ended_total",
            "counter",
            "WebSocket connections and streamed responses ended because their token stopped being valid, or idle, by reason.",
        );
        for (reason, n) in self.connections_ended.snapshot() {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "portcullis_connections_ended_total{{reason=\"{reason}\"}} {n}");
        }

        header(
            &mut out,
            "portcullis_validation_cache_hits_total",
            "counter",
            "Bearer tokens answered from the validation cache.",
        );
        let _ = writeln!(out, "portcullis_validation_cache_hits_total {}", cache.hits);
        header(
            &mut out,
            "portcullis_validation_cache_misses_total",
            "counter",
            "Bearer tokens that needed a full signature verification.",
        );
        let _ = writeln!(out, "portcullis_validation_cache_misses_total {}", cache.misses);
        header(&mut out, "portcullis_validation_cache_entries", "gauge", "Verified tokens currently cached.");
        let _ = writeln!(out, "portcullis_validation_cache_entries {}", cache.entries);

        header(
            &mut out,
            "portcullis_config_reloads_total",
            "counter",
            "Configuration reloads, by result (ok: in force; failed: refused, the previous one kept serving).",
        );
        let (ok, failed) = self.reloads();
        let _ = writeln!(out, "portcullis_config_reloads_total{{result=\"ok\"}} {ok}");
        let _ = writeln!(out, "portcullis_config_reloads_total{{result=\"failed\"}} {failed}");
        header(
            &mut out,
            "portcullis_config_last_reload_success_timestamp_seconds",
            "gauge",
            "When the configuration in force was loaded (start or last successful reload), as Unix time.",
        );
        let _ = writeln!(
            out,
            "portcullis_config_last_reload_success_timestamp_seconds {}",
            self.last_reload_success.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "portcullis_config_last_reload_successful",
            "gauge",
            "1 if the last reload (or the start) put its configuration in force, 0 if it was refused.",
        );
        let _ =
            writeln!(out, "portcullis_config_last_reload_successful {}", self.last_reload_ok.load(Ordering::Relaxed));

        header(&mut out, "portcullis_open_connections", "gauge", "Connections open on the gateway listeners.");
        let _ = writeln!(out, "portcullis_open_connections {}", self.open_connections.load(Ordering::Relaxed));
        header(
            &mut out,
            "portcullis_requests_in_flight",
            "gauge",
            "Requests received on the gateway listeners whose response is not yet fully sent.",
        );
        let _ = writeln!(out, "portcullis_requests_in_flight {}", self.in_flight.load(Ordering::Relaxed));

        let (listeners, not_after) = self.certificates.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let certificates: Vec<(SocketAddr, i64)> =
            not_after.map(|t| listeners.iter().map(|l| (*l, t)).collect()).unwrap_or_default();
        header(
            &mut out,
            "portcullis_tls_cert_not_after_timestamp_seconds",
            "gauge",
            "When the certificate a TLS listener serves expires, as Unix time.",
        );
        for (listener, not_after) in &certificates {
            let _ =
                writeln!(out, "portcullis_tls_cert_not_after_timestamp_seconds{{listener=\"{listener}\"}} {not_after}");
        }
        header(
            &mut out,
            "portcullis_tls_cert_expiry_seconds",
            "gauge",
            "Seconds until the certificate a TLS listener serves expires (negative: expired).",
        );
        let now = i64::try_from(crate::tokens::now_secs()).unwrap_or(i64::MAX);
        for (listener, not_after) in &certificates {
            let left = not_after.saturating_sub(now);
            let _ = writeln!(out, "portcullis_tls_cert_expiry_seconds{{listener=\"{listener}\"}} {left}");
        }
        process::render(&mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `notAfter` of the first (leaf) certificate in a PEM file, as Unix time.
pub fn certificate_not_after(path: &Path) -> Result<i64, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no certificate in file")?
        .map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

/// The standard `process_*` metrics of Prometheus client libraries, from `/proc/self`
/// (Linux). Elsewhere, or when a file cannot be read, the series are left out.
mod process {
    use std::fmt::Write;

    /// Linux reports CPU times in clock ticks of `USER_HZ`, 100 on every architecture.
    const TICKS_PER_SEC: f64 = 100.0;

    pub(super) fn render(out: &mut String) {
        // Fields after the parenthesised command name, which may itself hold spaces.
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields: Vec<&str> = stat
            .as_deref()
            .and_then(|s| s.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // stat(5): utime is field 14, stime 15, starttime 22; `fields[0]` is field 3.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            super::header(
                out,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
            );
            let _ = writeln!(out, "process_cpu_seconds_total {}", (utime + stime) / TICKS_PER_SEC);
        }
        if let Some(kib) = status_kib("VmRSS:") {
            super::header(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
            let _ = writeln!(out, "process_resident_memory_bytes {}", kib * 1024);
        }
        if let Some(kib) = status_kib("VmSize:") {
            super::header(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
            let _ = writeln!(out, "process_virtual_memory_bytes {}", kib * 1024);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            super::header(out, "process_open_fds", "gauge", "Number of open file descriptors.");
            let _ = writeln!(out, "process_open_fds {}", dir.count());
        }
        if let Some(max) = max_fds() {
            super::header(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
            let _ = writeln!(out, "process_max_fds {max}");
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time()) {
            super::header(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
            );
            let _ = writeln!(out, "process_start_time_seconds {}", boot + start / TICKS_PER_SEC);
        }
    }

    fn status_kib(key: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    }

    /// The soft limit of `Max open files`; "unlimited" is left out.
    fn max_fds() -> Option<u64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..].split_whitespace().next()?.parse().ok()
    }

    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
    }
}

/// Store health and shutdown cuts: read from the store and the gateway when `/metrics` is
/// scraped (nothing to count on the request path), appended after [`Metrics::render`].
pub struct Lifecycle<'a> {
    /// The `store` label: `embedded` or `redis`.
    pub store: &'a str,
    pub store_up: bool,
    pub store_reopens: u64,
    pub requests_cut: u64,
}

pub fn render_lifecycle(out: &mut String, l: &Lifecycle<'_>) {
    let store = escape(l.store);
    header(
        out,
        "portcullis_store_up",
        "gauge",
        "1 while the store answers; 0 while it is degraded (grants, revocation and logins answer 503; the proxy path keeps serving).",
    );
    let _ = writeln!(out, "portcullis_store_up{{store=\"{store}\"}} {}", u8::from(l.store_up));
    header(
        out,
        "portcullis_store_reopens_total",
        "counter",
        "Times the store reopened its file by itself after an I/O failure.",
    );
    let _ = writeln!(out, "portcullis_store_reopens_total{{store=\"{store}\"}} {}", l.store_reopens);
    header(
        out,
        "portcullis_requests_cut_total",
        "counter",
        "Requests still running when a shutdown's grace period ended, and so cut off.",
    );
    let _ = writeln!(out, "portcullis_requests_cut_total {}", l.requests_cut);
}

/// Operator blocks (issue 16.5): requests they refused and blocks held, read from the
/// validator when `/metrics` is scraped.
pub fn render_blocks(out: &mut String, b: &BlockStats) {
    header(
        out,
        "portcullis_blocked_requests_total",
        "counter",
        "Bearer tokens refused because an operator blocked their jti or subject, by kind.",
    );
    let _ = writeln!(out, "portcullis_blocked_requests_total{{kind=\"jti\"}} {}", b.refused_jti);
    let _ = writeln!(out, "portcullis_blocked_requests_total{{kind=\"sub\"}} {}", b.refused_sub);
    header(out, "portcullis_blocks", "gauge", "Operator blocks this replica enforces, by kind.");
    let _ = writeln!(out, "portcullis_blocks{{kind=\"jti\"}} {}", b.jti_blocks);
    let _ = writeln!(out, "portcullis_blocks{{kind=\"sub\"}} {}", b.sub_blocks);
}

/// The shared rate limits (issue 14, Redis store only): decisions made locally because
/// Redis did not answer in time, and whether the replica limits locally right now.
pub fn render_ratelimit(out: &mut String, fallbacks: u64, local: bool) {
    header(
        out,
        "portcullis_ratelimit_fallback_total",
        "counter",
        "Rate-limit and quota decisions made by this replica alone because Redis did not answer within the store timeout.",
    );
    let _ = writeln!(out, "portcullis_ratelimit_fallback_total {fallbacks}");
    header(
        out,
        "portcullis_ratelimit_shared",
        "gauge",
        "1 while the rate limits and quotas are shared through Redis, 0 while this replica limits on its own.",
    );
    let _ = writeln!(out, "portcullis_ratelimit_shared {}", u8::from(!local));
}

/// The revocation check's breaker (`tokens/breaker.rs`): uncached tokens judged without
/// asking the store because it was known not to answer, and whether it is open now.
pub fn render_revocation_breaker(out: &mut String, skipped: u64, open: bool) {
    header(
        out,
        "portcullis_revocation_check_skipped_total",
        "counter",
        "Revocation checks of uncached tokens not sent to the store because it was known not to answer (the breaker was open).",
    );
    let _ = writeln!(out, "portcullis_revocation_check_skipped_total {skipped}");
    header(
        out,
        "portcullis_revocation_check_breaker_open",
        "gauge",
        "1 while the revocation check is skipped because the store does not answer (one probe a second), else 0.",
    );
    let _ = writeln!(out, "portcullis_revocation_check_breaker_open {}", u8::from(open));
}

/// One trusted issuer's key fetching, read when `/metrics` is scraped.
pub struct IssuerStats {
    pub name: String,
    /// Fetch attempts by outcome label (`ok`, `timeout`, ...), every label present.
    pub fetches: Vec<(&'static str, u64)>,
    /// Keys in the set in force.
    pub keys: u64,
    /// Unix seconds of the last successful fetch; 0 for never (the series is then left out).
    pub last_success: u64,
}

pub fn render_issuers(out: &mut String, issuers: &[IssuerStats]) {
    if issuers.is_empty() {
        return;
    }
    header(
        out,
        "portcullis_issuer_jwks_fetches_total",
        "counter",
        "JWKS (and discovery) fetch attempts per trusted issuer, by outcome.",
    );
    for i in issuers {
        let name = escape(&i.name);
        for (outcome, n) in &i.fetches {
            let _ =
                writeln!(out, "portcullis_issuer_jwks_fetches_total{{issuer=\"{name}\",outcome=\"{outcome}\"}} {n}");
        }
    }
    header(out, "portcullis_issuer_keys", "gauge", "Keys in force per trusted issuer (0: its tokens are refused).");
    for i in issuers {
        let _ = writeln!(out, "portcullis_issuer_keys{{issuer=\"{}\"}} {}", escape(&i.name), i.keys);
    }
    header(
        out,
        "portcullis_issuer_jwks_last_success_timestamp_seconds",
        "gauge",
        "When the trusted issuer's key set was last fetched successfully (absent: never).",
    );
    for i in issuers.iter().filter(|i| i.last_success > 0) {
        let _ = writeln!(
            out,
            "portcullis_issuer_jwks_last_success_timestamp_seconds{{issuer=\"{}\"}} {}",
            escape(&i.name),
            i.last_success
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values may hold `\`, `"` and newlines only escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A set of series sharing a metric name, one per label value. Reads are a lock-free
/// snapshot lookup; only the first use of a new label value takes the lock. Keyed with
/// FxHash: every label value is the operator's (a route prefix) or ours, never a caller's,
/// so there is no flooding to defend against, and SipHash was a share of every request.
struct Family<K, V> {
    series: ArcSwap<FxHashMap<K, Arc<V>>>,
    grow: Mutex<()>,
}

impl<K, V> Default for Family<K, V> {
    fn default() -> Self {
        Family { series: ArcSwap::from_pointee(FxHashMap::default()), grow: Mutex::new(()) }
    }
}

impl<K: Hash + Eq + Clone + Ord, V: Default> Family<K, V> {
    fn with<Q>(&self, key: &Q, f: impl FnOnce(&V))
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(v) = self.series.load().get(key) {
            return f(v);
        }
        // A poisoned lock only means another thread panicked while adding a series.
        let _guard = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.series.load_full();
        if let Some(v) = current.get(key) {
            return f(v);
        }
        let mut next = (*current).clone();
        let v = Arc::new(V::default());
        next.insert(key.to_owned(), v.clone());
        self.series.store(Arc::new(next));
        f(&v)
    }

    /// Every series, sorted by label so the output is stable.
    fn snapshot(&self) -> Vec<(K, Arc<V>)> {
        let mut all: Vec<_> = self.series.load().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Request counts of one route, indexed by status code 100..=599.
struct StatusCounters(Box<[AtomicU64]>);

impl Default for StatusCounters {
    fn default() -> Self {
        StatusCounters((100..=599).map(|_| AtomicU64::new(0)).collect())
    }
}

impl StatusCounters {
    fn inc(&self, status: u16) {
        // http::StatusCode guarantees 100..=999; codes above 599 are counted as 599.
        let i = usize::from(status.clamp(100, 599) - 100);
        if let Some(c) = self.0.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn nonzero(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.0.iter().enumerate().map(|(i, c)| (i + 100, c.load(Ordering::Relaxed))).filter(|(_, n)| *n > 0)
    }
}

/// Bucket counts (not cumulative; the last one is +Inf) and the sum of observations.
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_nanos: AtomicU64::new(0) }
    }
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|le| secs <= *le).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_created_once_and_rendered_sorted() {
        let m = Metrics::new();
        m.request("/b", 200);
        m.request("/a", 404);
        m.request("/b", 200);
        m.token_request("client_credentials", ISSUED);
        m.rate_limited("login");
        m.rate_limited("login");
        m.upstream_latency("/b", Duration::from_millis(3));
        m.upstream_latency("/b", Duration::from_secs(60));
        let text = m.render(&CacheStats { hits: 1, misses: 2, entries: 3 });
        let a = text.find("route=\"/a\",status=\"404\"} 1").unwrap();
        let b = text.find("route=\"/b\",status=\"200\"} 2").unwrap();
        assert!(a < b);
        assert!(text.contains("portcullis_upstream_latency_seconds_bucket{route=\"/b\",le=\"0.0025\"} 0"));
        assert!(text.contains("portcullis_upstream_latency_seconds_bucket{route=\"/b\",le=\"0.005\"} 1"));
        assert!(text.contains("portcullis_upstream_latency_seconds_bucket{route=\"/b\",le=\"10\"} 1"));
        assert!(text.contains("portcullis_upstream_latency_seconds_bucket{route=\"/b\",le=\"+Inf\"} 2"));
        assert!(text.contains("portcullis_upstream_latency_seconds_count{route=\"/b\"} 2"));
        assert!(text.contains("portcullis_token_requests_total{grant=\"client_credentials\",outcome=\"issued\"} 1"));
        assert!(text.contains("portcullis_validation_cache_entries 3"));
        assert!(text.contains("portcullis_rate_limited_total{endpoint=\"login\"} 2"));
    }

    #[test]
    fn gauges_follow_their_guards_and_the_reload_state_flips() {
        let m = Metrics::new();
        let text = m.render(&CacheStats { hits: 0, misses: 0, entries: 0 });
        assert!(text.contains("\nportcullis_config_last_reload_successful 1\n"), "{text}");
        let (c, r1, r2) = (m.connection_opened(), m.request_started(), m.request_started());
        let text = m.render(&CacheStats { hits: 0, misses: 0, entries: 0 });
        assert!(
            text.contains("\nportcullis_open_connections 1\n") && text.contains("\nportcullis_requests_in_flight 2\n")
        );
        drop((c, r1, r2));
        m.reload(false);
        let text = m.render(&CacheStats { hits: 0, misses: 0, entries: 0 });
        assert!(
            text.contains("\nportcullis_open_connections 0\n") && text.contains("\nportcullis_requests_in_flight 0\n")
        );
        assert!(text.contains("\nportcullis_config_last_reload_successful 0\n"), "{text}");
        m.reload(true);
        let text = m.render(&CacheStats { hits: 0, misses: 0, entries: 0 });
        assert!(text.contains("\nportcullis_config_last_reload_successful 1\n"), "{text}");
    }

    #[test]
    fn certificate_series_name_each_tls_listener_and_go_when_the_file_is_unreadable() {
        let dir = std::env::temp_dir().join(format!("portcullis-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        let m = Metrics::new();
        m.tls_listeners(vec!["127.0.0.1:8443".parse().unwrap(), "[::1]:8443".parse().unwrap()]);
        m.certificate(Some(&cert));
        let text = m.render(&CacheStats { hits: 0, misses: 0, entries: 0 });
        let not_after = certificate_not_after(&cert).unwrap();
        assert!(text.contains(&format!(
            "portcullis_tls_cert_not_after_timestamp_seconds{{listener=\"[::1]:8443\"}} {not_after}"
        )));
        assert!(text.contains("portcullis_tls_cert_expiry_seconds{listener=\"127.0.0.1:8443\"} "), "{text}");
        m.certificate(Some(&dir.join("missing.pem")));
        let text = m.render(&CacheStats { hits: 0, misses: 0, entries: 0 });
        assert!(!text.contains("listener="), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let mut out = String::new();
        process::render(&mut out);
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(out.contains(&format!("\n{name}")), "{name}: {out}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn out_of_range_statuses_do_not_panic() {
        let c = StatusCounters::default();
        c.inc(999);
        c.inc(0);
        assert_eq!(c.nonzero().collect::<Vec<_>>(), vec![(100, 1), (599, 1)]);
    }
}
