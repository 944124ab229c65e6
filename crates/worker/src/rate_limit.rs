//! Token-bucket rate limit per app and provider, for this pod
//! (`apps[].apns.rate_limit`, `apps[].fcm.rate_limit`, pushes per second).
//!
//! FCM's quota (600k messages/minute per project by default) is per project,
//! not per pod: give each replica `quota ÷ replicas`, with headroom (see
//! docs/operations.md). The bucket holds one second's worth of tokens, so a
//! short burst goes through at once and a sustained rate is smoothed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `rate` pushes per second; the bucket starts full.
    pub fn new(rate: f64) -> RateLimit {
        let burst = rate.max(1.0);
        RateLimit {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token; returns how long to wait before sending (zero if none).
    ///
    /// The token is reserved even when a wait is returned, so callers that
    /// wait and then send keep the rate.
    pub fn reserve(&self) -> Duration {
        self.reserve_at(Instant::now())
    }

    fn reserve_at(&self, now: Instant) -> Duration {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now;
        s.0 -= 1.0;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let r = RateLimit::new(10.0);
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(r.reserve_at(t), Duration::ZERO);
        }
        let wait = r.reserve_at(t);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        let wait = r.reserve_at(t);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
        // After a second the bucket has refilled what was used beyond the burst.
        assert_eq!(
            r.reserve_at(t + Duration::from_millis(1300)),
            Duration::ZERO
        );
    }

    #[test]
    fn slow_rates_still_allow_one_push() {
        let r = RateLimit::new(0.5);
        let t = Instant::now();
        assert_eq!(r.reserve_at(t), Duration::ZERO);
        assert!((r.reserve_at(t).as_secs_f64() - 2.0).abs() < 1e-6);
    }
}
