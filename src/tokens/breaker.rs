//! The revocation check's breaker: a store that does not answer (a hung Redis) would cost
//! every uncached token the store timeout. After a failed check the store is not asked
//! for a second; then one request a second probes it (it claims the next second) while the
//! others are answered at once, as a failed check would be, until a probe gets an answer
//! (or `/metrics`'s health probe sees the store healthy). Only slow failures open it.
//! The same shape as the rate limiter's fallback (`ratelimit.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A failed check that took at least this long opens the breaker (a timeout); one that
/// failed sooner does not.
pub const SLOW_FAILURE: Duration = Duration::from_millis(100);

/// How long after a failed check no check is tried.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct Breaker {
    epoch: Instant,
    /// Milliseconds after `epoch` before which the store is not asked.
    retry_at: AtomicU64,
    /// The last check failed and no probe has been answered since.
    open: AtomicBool,
    /// Checks not tried because the store was known not to answer.
    skipped: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            epoch: Instant::now(),
            retry_at: AtomicU64::new(0),
            open: AtomicBool::new(false),
            skipped: AtomicU64::new(0),
        }
    }
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// May the store be asked now? `false` (counted): it is known not to answer, and this
    /// request is not the second's probe. One atomic load while the store answers.
    pub fn admit(&self) -> bool {
        let at = self.retry_at.load(Ordering::Acquire);
        if at == 0 && !self.open.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now_ms();
        let claimed = now >= at && {
            let next = now.saturating_add(RETRY_AFTER.as_millis() as u64);
            self.retry_at.compare_exchange(at, next, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        };
        if !claimed {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        claimed
    }

    /// The store answered a check: closed again. `true` for the answer that ended an
    /// outage (the caller logs it, once).
    pub fn answered(&self) -> bool {
        if !self.open.load(Ordering::Acquire) {
            return false;
        }
        let recovered = self.open.swap(false, Ordering::AcqRel);
        if recovered {
            self.retry_at.store(0, Ordering::Release);
        }
        recovered
    }

    /// A check failed: no check for the next second. `true` when this opened the breaker.
    pub fn failed(&self) -> bool {
        self.retry_at.store(self.now_ms().saturating_add(RETRY_AFTER.as_millis() as u64), Ordering::Release);
        !self.open.swap(true, Ordering::AcqRel)
    }

    /// For `/metrics`: checks skipped so far, and whether the breaker is open now.
    pub fn stats(&self) -> (u64, bool) {
        (self.skipped.load(Ordering::Relaxed), self.open.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_opens_it_for_a_second_then_one_probe_a_second_until_an_answer() {
        let b = Breaker::default();
        assert!(b.admit() && b.admit(), "closed: every check is tried");
        assert!(b.failed(), "the first failure opens it");
        assert!(!b.failed(), "a second failure does not open it again");
        assert!(!b.admit() && !b.admit(), "within the second: answered at once");
        assert_eq!(b.stats(), (2, true));
        // Past the second: one probe, the others skip.
        b.retry_at.store(1, Ordering::Release);
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.admit(), "the probe");
        assert!(!b.admit(), "not two probes in one second");
        // The probe failed: a second more.
        assert!(!b.failed());
        assert!(!b.admit());
        // A probe answered: closed, logged once.
        b.retry_at.store(1, Ordering::Release);
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.admit());
        assert!(b.answered(), "the recovery");
        assert!(!b.answered(), "only once");
        assert!(b.admit() && b.admit());
        assert_eq!(b.stats(), (4, false));
    }
}
