//! `[limits]` and `[rate_limit]`: sizes, timeouts and token buckets.

use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{Limits, Quota, RateLimits};
use crate::config::raw::{RawLimits, RawRateLimit};

impl Validator<'_> {
    pub(super) fn limits(&self, rl: &RawLimits) -> Result<Limits, ConfigError> {
        let max_proxy_body_bytes = self.number(&rl.max_proxy_body_bytes, 10 * 1024 * 1024)?;
        let max_proxy_form_bytes = self.number(&rl.max_proxy_form_bytes, (1024 * 1024).min(max_proxy_body_bytes))?;
        if max_proxy_form_bytes > max_proxy_body_bytes
            && let Some(v) = &rl.max_proxy_form_bytes
        {
            return Err(self.err(v.span(), "max_proxy_form_bytes must not exceed max_proxy_body_bytes"));
        }
        let limits = Limits {
            max_header_bytes: self.number(&rl.max_header_bytes, 16 * 1024)? as usize,
            max_upstream_header_bytes: self.number(&rl.max_upstream_header_bytes, 64 * 1024)? as usize,
            max_token_body_bytes: self.number(&rl.max_token_body_bytes, 16 * 1024)? as usize,
            max_proxy_body_bytes,
            max_proxy_form_bytes: usize::try_from(max_proxy_form_bytes).unwrap_or(usize::MAX),
            header_read_timeout: self.duration(&rl.header_read_timeout, Duration::from_secs(10))?,
            idle_timeout: self.duration(&rl.idle_timeout, Duration::from_secs(60))?,
            upstream_connect_timeout: self.duration(&rl.upstream_connect_timeout, Duration::from_secs(5))?,
            upstream_timeout: self.duration(&rl.upstream_timeout, Duration::from_secs(30))?,
            tls_handshake_timeout: self.duration(&rl.tls_handshake_timeout, Duration::from_secs(10))?,
            shutdown_grace: self.duration(&rl.shutdown_grace, Duration::from_secs(30))?,
            drain_delay: self.duration_or_zero(&rl.drain_delay, Duration::ZERO)?,
            max_connections: self.number(&rl.max_connections, 10_000)? as usize,
        };
        if limits.max_header_bytes < 8192
            && let Some(v) = &rl.max_header_bytes
        {
            return Err(self.err(v.span(), "max_header_bytes must be at least 8192"));
        }
        if limits.max_upstream_header_bytes < 8192
            && let Some(v) = &rl.max_upstream_header_bytes
        {
            return Err(self.err(v.span(), "max_upstream_header_bytes must be at least 8192"));
        }
        if limits.upstream_timeout > crate::metrics::LONGEST_LATENCY_BUCKET
            && let Some(v) = &rl.upstream_timeout
        {
            self.warn(
                v.span(),
                "upstream_timeout is longer than 10m, the last bucket of portcullis_upstream_latency_seconds: slower answers are counted in +Inf only",
            );
        }
        // A balancer notices a failing health check within seconds to a minute; a longer
        // delay only keeps a stopping process alive (a second signal still ends it).
        if limits.drain_delay > Duration::from_secs(600)
            && let Some(v) = &rl.drain_delay
        {
            self.warn(
                v.span(),
                "drain_delay is longer than 10m: a stop waits that long before it closes the listeners (a second SIGTERM or ctrl-c ends it)",
            );
        }
        Ok(limits)
    }

    /// `[rate_limit]`, defaulting to: per IP a burst of 60 then 20/s, a failure counting
    /// as 5 requests; 20 failed authentications per client a minute; 10 failed logins per
    /// username in 5 minutes.
    pub(super) fn rate_limit(&self, r: &RawRateLimit) -> Result<RateLimits, ConfigError> {
        const MAX: u64 = 1_000_000;
        let count = |v: &Option<Spanned<u64>>, default: u64| -> Result<u32, ConfigError> {
            let n = self.number(v, default)?;
            match v {
                Some(s) if n > MAX => Err(self.err(s.span(), format!("must be at most {MAX}"))),
                _ => Ok(u32::try_from(n.min(MAX)).unwrap_or(u32::MAX)),
            }
        };
        let quota = |burst: u32, rate: u32, window: Duration| Quota {
            burst,
            refill_per_sec: f64::from(rate) / window.as_secs_f64(),
        };
        let ip_burst = count(&r.ip_burst, 60)?;
        let ip = quota(ip_burst, count(&r.ip_rate, 20)?, self.duration(&r.ip_window, Duration::from_secs(1))?);
        let failure_cost = count(&r.failure_cost, 5)?;
        if failure_cost > ip_burst
            && let Some(v) = r.failure_cost.as_ref().or(r.ip_burst.as_ref())
        {
            return Err(
                self.err(v.span(), format!("failure_cost ({failure_cost}) must not exceed ip_burst ({ip_burst})"))
            );
        }
        let failures = |n: &Option<Spanned<u64>>, default_n: u64, w: &Option<Spanned<String>>, default_w: u64| {
            let n = count(n, default_n)?;
            Ok::<_, ConfigError>(quota(n, n, self.duration(w, Duration::from_secs(default_w))?))
        };
        Ok(RateLimits {
            enabled: r.enabled.unwrap_or(true),
            ip,
            failure_cost,
            client_failures: failures(&r.client_failures, 20, &r.client_failures_window, 60)?,
            user_failures: failures(&r.user_failures, 10, &r.user_failures_window, 300)?,
            max_tracked: self.number(&r.max_tracked, 100_000)?,
        })
    }
}
