//! The mass-invalidation guard (SPEC §5.9), per app and platform.
//!
//! A wrong endpoint, topic or Firebase project makes every token look dead
//! (`BadDeviceToken`, `DeviceTokenNotForTopic`, `SENDER_ID_MISMATCH`), and a
//! routing service that believed it would delete the whole user base. The
//! guard counts, in a sliding `window`, the final answers of an app's sends
//! for a platform and how many carry one of those *suspicious* reasons.
//!
//! * While suspicious answers are more than `ratio` of the sends, they are
//!   **held**: no `TokenInvalidated` is emitted for them; the worker
//!   dead-letters their requests with `push_error=invalidation_guard`, to be
//!   replayed once the configuration is fixed.
//! * The guard is **tripped** (metric `push_dispatch_invalidation_guard_tripped`
//!   = 1, an error in the log) when that holds with at least `min_samples`
//!   sends in the window.
//!
//! Below `min_samples` the guard already holds suspicious reasons whose share
//! is above the ratio, without raising the alarm: holding costs a replay,
//! emitting costs deleted tokens, so the guard errs on the side of holding.
//! `Unregistered` (and FCM `UNREGISTERED`) always flows: it is the provider's
//! word that the app was removed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use push_dispatch_config::GuardConfig;
use push_dispatch_proto::v1::Reason;

/// Buckets of the sliding window.
const BUCKETS: u32 = 12;

/// Whether a dead-token reason is one that misconfiguration also produces.
pub fn is_suspicious(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::BadDeviceToken | Reason::DeviceTokenNotForTopic | Reason::SenderIdMismatch
    )
}

/// The guard's verdict for suspicious reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Report dead tokens as usual.
    Report,
    /// Hold them (dead-letter with `invalidation_guard`).
    Hold {
        /// True when the guard is tripped (enough samples to be sure).
        tripped: bool,
    },
}

#[derive(Debug)]
struct Inner {
    /// (bucket start, sends, suspicious)
    buckets: VecDeque<(Instant, u64, u64)>,
    tripped: bool,
}

/// One guard (one app, one platform).
#[derive(Debug)]
pub struct Guard {
    config: GuardConfig,
    bucket: Duration,
    inner: Mutex<Inner>,
}

impl Guard {
    /// A guard with nothing counted.
    pub fn new(config: GuardConfig) -> Guard {
        Guard {
            bucket: (config.window / BUCKETS).max(Duration::from_millis(1)),
            config,
            inner: Mutex::new(Inner {
                buckets: VecDeque::new(),
                tripped: false,
            }),
        }
    }

    /// Counts final answers: `sends` of them, `suspicious` with a suspicious reason.
    pub fn record(&self, sends: u64, suspicious: u64) {
        self.record_at(Instant::now(), sends, suspicious);
    }

    fn record_at(&self, now: Instant, sends: u64, suspicious: u64) {
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        match inner.buckets.back_mut() {
            Some(b) if now.saturating_duration_since(b.0) < self.bucket => {
                b.1 += sends;
                b.2 += suspicious;
            }
            _ => inner.buckets.push_back((now, sends, suspicious)),
        }
    }

    /// What to do with suspicious reasons now. Returns the verdict and whether
    /// the tripped state changed with this call (for logging once).
    pub fn verdict(&self) -> (Verdict, bool) {
        self.verdict_at(Instant::now())
    }

    fn verdict_at(&self, now: Instant) -> (Verdict, bool) {
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let (sends, suspicious) = inner
            .buckets
            .iter()
            .fold((0u64, 0u64), |(s, x), b| (s + b.1, x + b.2));
        let over = sends > 0 && (suspicious as f64) / (sends as f64) > self.config.ratio;
        let tripped = over && sends >= u64::from(self.config.min_samples);
        let changed = tripped != inner.tripped;
        inner.tripped = tripped;
        let verdict = if over {
            Verdict::Hold { tripped }
        } else {
            Verdict::Report
        };
        (verdict, changed)
    }

    /// Whether the guard is tripped (for the gauge).
    pub fn is_tripped(&self) -> bool {
        self.lock().tripped
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while inner
            .buckets
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.0) >= self.config.window)
        {
            inner.buckets.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(GuardConfig {
            ratio: 0.5,
            min_samples: 100,
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn suspicious_reasons_are_the_misconfiguration_ones() {
        assert!(is_suspicious(Reason::BadDeviceToken));
        assert!(is_suspicious(Reason::DeviceTokenNotForTopic));
        assert!(is_suspicious(Reason::SenderIdMismatch));
        assert!(!is_suspicious(Reason::Unregistered));
        assert!(!is_suspicious(Reason::ExpiredToken));
    }

    #[test]
    fn a_healthy_share_reports() {
        let g = guard();
        let t = Instant::now();
        g.record_at(t, 1000, 20);
        assert_eq!(g.verdict_at(t).0, Verdict::Report);
    }

    #[test]
    fn holds_from_the_first_suspicious_answers_and_trips_at_min_samples() {
        let g = guard();
        let t = Instant::now();
        g.record_at(t, 1, 1);
        assert_eq!(
            g.verdict_at(t),
            (Verdict::Hold { tripped: false }, false),
            "held before min_samples, without the alarm"
        );
        g.record_at(t, 99, 99);
        assert_eq!(g.verdict_at(t), (Verdict::Hold { tripped: true }, true));
        assert!(g.is_tripped());
        assert_eq!(
            g.verdict_at(t),
            (Verdict::Hold { tripped: true }, false),
            "changed once"
        );
    }

    #[test]
    fn recovers_when_the_window_slides_past_the_bad_period() {
        let g = guard();
        let t = Instant::now();
        g.record_at(t, 200, 200);
        assert!(matches!(g.verdict_at(t).0, Verdict::Hold { tripped: true }));
        let later = t + Duration::from_secs(61);
        g.record_at(later, 200, 2);
        assert_eq!(g.verdict_at(later), (Verdict::Report, true));
        assert!(!g.is_tripped());
    }
}
