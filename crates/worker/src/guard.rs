//! The mass-invalidation guard (SPEC §5.9), per app and platform.
//!
//! A wrong endpoint, topic or Firebase project makes every token look dead
//! (`BadDeviceToken`, `DeviceTokenNotForTopic`, `SENDER_ID_MISMATCH`), and a
//! routing service that believed it would delete the whole user base. The
//! guard counts, in a sliding `window`, the final answers of an app's sends
//! for a platform and how many carry one of those *suspicious* reasons.
//!
//! * The guard **trips** when suspicious answers are more than `ratio` of
//!   the sends, with at least `min_samples` sends in the window. While
//!   tripped, suspicious reasons are **held**: no `TokenInvalidated` is
//!   emitted for them; the worker dead-letters their requests with
//!   `push_error=invalidation_guard`, to be replayed once the configuration
//!   is fixed. The metric `push_dispatch_invalidation_guard_tripped` is 1 and
//!   an error is logged once.
//! * Below `min_samples` it does not judge: a quiet app's few genuinely bad
//!   tokens are reported, not held forever (a replay in a quiet hour would be
//!   held again). `min_samples` is thus the most suspicious reports a wrong
//!   configuration can emit per pod and window before the guard trips.
//!
//! `Unregistered` (and FCM `UNREGISTERED`) always flows: it is the
//! provider's word that the app was removed.

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
    /// The guard is tripped: hold them (dead-letter with `invalidation_guard`).
    Hold,
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
        let (sends, suspicious) = {
            let mut inner = self.lock();
            self.expire(&mut inner, now);
            inner
                .buckets
                .iter()
                .fold((0u64, 0u64), |(s, x), b| (s + b.1, x + b.2))
        };
        self.judge_counts(sends, suspicious)
    }

    /// The verdict for a window holding `sends` final answers of which
    /// `suspicious` are suspicious: the fleet's counts, read back from the
    /// shared store (issue 16), instead of this pod's. Returns the verdict and
    /// whether the tripped state changed.
    pub fn judge_counts(&self, sends: u64, suspicious: u64) -> (Verdict, bool) {
        let mut inner = self.lock();
        let over = sends > 0 && (suspicious as f64) / (sends as f64) > self.config.ratio;
        let tripped = over && sends >= u64::from(self.config.min_samples);
        let changed = tripped != inner.tripped;
        inner.tripped = tripped;
        let verdict = if tripped {
            Verdict::Hold
        } else {
            Verdict::Report
        };
        (verdict, changed)
    }

    /// Sends and suspicious answers in the window now (for the log line that
    /// says why the guard tripped or released).
    pub fn counts(&self) -> (u64, u64) {
        let mut inner = self.lock();
        self.expire(&mut inner, Instant::now());
        inner
            .buckets
            .iter()
            .fold((0u64, 0u64), |(s, x), b| (s + b.1, x + b.2))
    }

    /// Its settings.
    pub fn config(&self) -> &GuardConfig {
        &self.config
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
    fn the_fleets_counts_decide_even_when_this_pod_saw_few() {
        let g = guard();
        g.record(3, 3);
        assert_eq!(
            g.verdict(),
            (Verdict::Report, false),
            "below min_samples here"
        );
        // The fleet's window, read back from the shared store, trips it.
        assert_eq!(g.judge_counts(150, 120), (Verdict::Hold, true));
        assert!(g.is_tripped());
        assert_eq!(g.judge_counts(400, 100), (Verdict::Report, true));
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
    fn reports_below_min_samples_and_holds_once_tripped() {
        let g = guard();
        let t = Instant::now();
        g.record_at(t, 1, 1);
        assert_eq!(
            g.verdict_at(t),
            (Verdict::Report, false),
            "a quiet app's one bad token is reported"
        );
        g.record_at(t, 98, 98);
        assert_eq!(
            g.verdict_at(t),
            (Verdict::Report, false),
            "99 < min_samples"
        );
        g.record_at(t, 1, 1);
        assert_eq!(g.verdict_at(t), (Verdict::Hold, true));
        assert!(g.is_tripped());
        assert_eq!(g.verdict_at(t), (Verdict::Hold, false), "changed once");
    }

    #[test]
    fn recovers_when_the_window_slides_past_the_bad_period() {
        let g = guard();
        let t = Instant::now();
        g.record_at(t, 200, 200);
        assert_eq!(g.verdict_at(t).0, Verdict::Hold);
        let later = t + Duration::from_secs(61);
        g.record_at(later, 200, 2);
        assert_eq!(g.verdict_at(later), (Verdict::Report, true));
        assert!(!g.is_tripped());
    }
}
