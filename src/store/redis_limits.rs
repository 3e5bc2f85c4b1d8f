//! Rate-limit budgets kept in Redis, so that every replica spends from one budget
//! (issue 14): one atomic script per decision, on one key per budget.
//!
//! The algorithm is GCRA (the generic cell rate algorithm), the same arithmetic as the
//! local limiter's `ratelimit::gcra`: a budget is one timestamp, its theoretical arrival
//! time (TAT). A unit costs `interval`; a request is admitted while the TAT stays within
//! `tolerance` (= burst × interval) of now. The key expires when the TAT passes, so an
//! idle budget costs nothing. The clock is Redis's (`TIME`): one clock for every replica.
//!
//! Layout under the key prefix `P`: `P rl:<kind>:<id>` — the TAT in µs of Redis time,
//! PX until it passes. `<id>` is a source address, or the SHA-256 of a name (a client id
//! may be a secret pasted into the wrong field: it is never written in clear). The script
//! touches KEYS[1] only, so it runs on Redis Cluster as is.

use std::time::Duration;

use redis::Script;

use super::StoreError;
use super::redis::RedisStore;

/// KEYS[1]: the TAT. ARGV: interval (µs), tolerance (µs), cost (units; negative: a
/// refund), mode (1: take — refuse when over; 0: charge — clamp, never refuse).
/// Returns {admitted (1/0), TAT − now after the step (µs), wait until admitted (µs)}.
/// An unreadable TAT fails closed: read as an empty budget.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[1])
local tat = now
if raw then tat = tonumber(raw) or (now + tolerance) end
if tat < now then tat = now end
local new = tat + cost * interval
local admitted, wait = 1, 0
if ARGV[4] == '1' then
  if new - now > tolerance then
    admitted, wait, new = 0, new - now - tolerance, tat
  end
else
  if new > now + tolerance then new = now + tolerance end
  if new < now then new = now end
end
if new > now then
  redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000))
else
  redis.call('DEL', KEYS[1])
end
return {admitted, new - now, wait}
"#;

/// What one shared decision found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub admitted: bool,
    /// How far the TAT is ahead of now after the step: the time until the budget is full.
    pub backlog: Duration,
    /// When refused: how long until the request would be admitted.
    pub wait: Duration,
}

/// Whether a step may refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spend `cost` units if they are there; otherwise refuse, changing nothing.
    Take,
    /// Spend (or, negative, give back) `cost` units, never below empty nor above full.
    Charge,
}

/// The budgets in Redis.
pub struct RedisLimits {
    store: std::sync::Arc<RedisStore>,
    script: Script,
}

impl RedisLimits {
    pub fn new(store: std::sync::Arc<RedisStore>) -> RedisLimits {
        RedisLimits { store, script: Script::new(GCRA_LUA) }
    }

    /// The Redis key of budget `id` of `kind` (`ip:token`, `client`, `quota`...).
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}rl:{kind}:{id}", self.store.key_prefix())
    }

    /// One atomic step on the budget at `key` (from [`Self::key`]): `interval` per unit,
    /// `tolerance` of headroom (burst × interval).
    pub async fn step(
        &self,
        key: String,
        interval: Duration,
        tolerance: Duration,
        cost: i64,
        mode: Mode,
    ) -> Result<Step, StoreError> {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4).max(1);
        let args = [micros(interval), micros(tolerance), cost, i64::from(mode == Mode::Take)];
        let (admitted, backlog, wait): (i64, i64, i64) = self.store.eval(&self.script, &[key], &args).await?;
        let dur = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(Step { admitted: admitted == 1, backlog: dur(backlog), wait: dur(wait) })
    }
}
