//! Phase 3b, quota: a route's request quota (issue 14), spent after authentication and
//! authorization, so an anonymous flood or a token the route refuses never spends a
//! client's budget. Routes without a quota never get here.
//!
//! Answers carry the fields of the IETF httpapi draft "RateLimit header fields for HTTP"
//! (draft-ietf-httpapi-ratelimit-headers-09), on admitted responses as on the 429:
//! `RateLimit-Policy: "default";q=<burst>;w=<seconds to refill it>` and
//! `RateLimit: "default";r=<units left>;t=<seconds until full again>`.

use http::HeaderValue;

use super::error::ProxyError;
pub use super::error::{QuotaHeaders, RATELIMIT, RATELIMIT_POLICY};
use crate::config::{Route, RouteQuota};
use crate::ratelimit::{quota_caller, whole_secs};
use crate::state::Gateway;
use crate::tokens::validate::Principal;

/// Spend one unit of `route`'s quota for this request, if it has one.
pub async fn check(
    gw: &Gateway,
    route: &Route,
    principal: Option<&Principal>,
    source: std::net::IpAddr,
) -> Result<Option<QuotaHeaders>, ProxyError> {
    let Some(quota) = &route.quota else { return Ok(None) };
    let v = gw.limiter.quota(quota, &quota_caller(quota, principal, source)).await;
    let headers = fields(quota, v.remaining, whole_secs(v.full_in));
    match v.refused {
        None => Ok(Some(headers)),
        Some(wait) => {
            gw.metrics.quota_rejected(&route.prefix);
            Err(ProxyError::QuotaExceeded { retry_after: whole_secs(wait).max(1), headers })
        }
    }
}

fn fields(quota: &RouteQuota, remaining: u32, reset: u64) -> QuotaHeaders {
    // Digits and a fixed name only: always a valid header value.
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("\"default\""));
    QuotaHeaders {
        policy: value(format!("\"default\";q={};w={}", quota.burst, quota.policy_window_secs())),
        state: value(format!("\"default\";r={remaining};t={reset}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QuotaPer;
    use std::time::Duration;

    #[test]
    fn the_fields_are_structured_field_items() {
        let q = |rate, burst, window| RouteQuota {
            per: QuotaPer::Client,
            rate,
            burst,
            window: Duration::from_secs(window),
            id: String::new(),
        };
        let h = fields(&q(100, 100, 1), 99, 1);
        assert_eq!(h.policy, "\"default\";q=100;w=1");
        assert_eq!(h.state, "\"default\";r=99;t=1");
        // 200 at once, refilled at 100/s: the whole burst takes 2 s.
        assert_eq!(fields(&q(100, 200, 1), 0, 2).policy, "\"default\";q=200;w=2");
        // Rounded up: 150 at 100 per second is 1.5 s.
        assert_eq!(fields(&q(100, 150, 1), 0, 2).policy, "\"default\";q=150;w=2");
        assert_eq!(fields(&q(10, 10, 60), 3, 42).state, "\"default\";r=3;t=42");
    }
}
