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

    /// Pushes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes one token when the wait for it is at most `max_wait`:
    /// `Ok(wait)` with the token reserved (zero: send now; callers that wait
    /// and then send keep the rate), or `Err(wait)` with nothing taken, so
    /// that a caller whose budget is shorter hands the push back instead of
    /// holding its lease through a long wait.
    pub fn reserve_within(&self, max_wait: Duration) -> Result<Duration, Duration> {
        self.reserve_within_at(Instant::now(), max_wait)
    }

    fn reserve_within_at(&self, now: Instant, max_wait: Duration) -> Result<Duration, Duration> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now;
        let after = s.0 - 1.0;
        let wait = if after >= 0.0 {
            Duration::ZERO
        } else {
            // A tiny rate can make this huge: saturate rather than panic.
            Duration::try_from_secs_f64(-after / self.rate).unwrap_or(Duration::MAX)
        };
        if wait > max_wait {
            return Err(wait);
        }
        s.0 = after;
        Ok(wait)
    }

    #[cfg(test)]
    fn reserve_at(&self, now: Instant) -> Duration {
        match self.reserve_within_at(now, Duration::MAX) {
            Ok(wait) | Err(wait) => wait,
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

    #[test]
    fn a_wait_longer_than_the_budget_takes_nothing() {
        let r = RateLimit::new(2.0);
        let t = Instant::now();
        assert_eq!(r.reserve_within_at(t, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(r.reserve_within_at(t, Duration::ZERO), Ok(Duration::ZERO));
        // The third push would wait 0.5 s: refused with a budget of 0.1 s ...
        let refused = r.reserve_within_at(t, Duration::from_millis(100));
        assert!(
            matches!(refused, Err(w) if (w.as_secs_f64() - 0.5).abs() < 1e-6),
            "{refused:?}"
        );
        // ... and nothing was taken: the same wait is offered again.
        let again = r.reserve_within_at(t, Duration::from_secs(1));
        assert!(
            matches!(again, Ok(w) if (w.as_secs_f64() - 0.5).abs() < 1e-6),
            "{again:?}"
        );
    }

    #[test]
    fn a_tiny_rate_saturates_instead_of_panicking() {
        let r = RateLimit::new(1e-300);
        let t = Instant::now();
        assert_eq!(r.reserve_at(t), Duration::ZERO);
        assert_eq!(r.reserve_at(t), Duration::MAX);
    }
}
