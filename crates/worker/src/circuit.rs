//! Circuit breaker per provider and app (SPEC §5.8).
//!
//! It opens on provider-level failures only — 5xx, timeouts, connection
//! errors, FCM quota — never on per-device answers (APNs 429 TooManyRequests
//! is about one device). Closed: requests flow and results are counted in a
//! sliding window; when at least `min_requests` were seen and the share of
//! provider-level failures reaches `failure_ratio`, it opens. Open: nothing is
//! sent for `open_for`; targets are carried forward as retryable. Then one
//! probe is let through (half-open): success closes the circuit, failure
//! opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use push_dispatch_config::CircuitConfig;
use push_dispatch_dispatch::{Outcome, RetryCause};

/// Buckets of the sliding window.
const BUCKETS: usize = 10;

/// What the circuit allows now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send.
    Allowed,
    /// Send: this is the half-open probe.
    Probe,
    /// Do not send: the circuit is open.
    Rejected,
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// (bucket start, requests, provider failures)
    window: [(Option<Instant>, u32, u32); BUCKETS],
}

/// One circuit.
#[derive(Debug)]
pub struct Circuit {
    config: CircuitConfig,
    bucket: Duration,
    inner: Mutex<Inner>,
}

/// Whether an outcome is a provider-level failure.
pub fn is_provider_failure(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Retryable { cause, .. } => cause.is_provider_level(),
        _ => false,
    }
}

impl Circuit {
    /// A closed circuit; the window spans `open_for` (at least 10 s).
    pub fn new(config: CircuitConfig) -> Circuit {
        let span = config.open_for.max(Duration::from_secs(10));
        Circuit {
            bucket: span / BUCKETS as u32,
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                window: [(None, 0, 0); BUCKETS],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// May a request be sent now?
    pub fn admit(&self) -> Admission {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Admission {
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Admission::Allowed,
            State::Open { until } if now < until => Admission::Rejected,
            State::Open { .. } => {
                inner.state = State::HalfOpen { probing: true };
                Admission::Probe
            }
            State::HalfOpen { probing: true } => Admission::Rejected,
            State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                Admission::Probe
            }
        }
    }

    /// Records the outcome of an admitted request.
    pub fn record(&self, admission: Admission, outcome: &Outcome) {
        self.record_at(Instant::now(), admission, outcome);
    }

    fn record_at(&self, now: Instant, admission: Admission, outcome: &Outcome) {
        if matches!(
            outcome,
            Outcome::Retryable {
                cause: RetryCause::CircuitOpen | RetryCause::ShuttingDown,
                ..
            }
        ) {
            return;
        }
        let failed = is_provider_failure(outcome);
        let mut inner = self.lock();
        if admission == Admission::Probe {
            inner.state = if failed {
                State::Open {
                    until: now + self.config.open_for,
                }
            } else {
                inner.window = [(None, 0, 0); BUCKETS];
                State::Closed
            };
            return;
        }
        // Count in the current bucket.
        let slot = (now_index(now, self.bucket)) % BUCKETS;
        let start = bucket_start(now, self.bucket);
        let entry = &mut inner.window[slot];
        if entry.0 != Some(start) {
            *entry = (Some(start), 0, 0);
        }
        entry.1 += 1;
        if failed {
            entry.2 += 1;
        }
        if matches!(inner.state, State::Closed) {
            let horizon = self.bucket * BUCKETS as u32;
            let (requests, failures) = inner
                .window
                .iter()
                .filter(|(s, _, _)| s.is_some_and(|s| now.saturating_duration_since(s) < horizon))
                .fold((0u32, 0u32), |(r, f), (_, rr, ff)| (r + rr, f + ff));
            if requests >= self.config.min_requests
                && f64::from(failures) / f64::from(requests) >= self.config.failure_ratio
            {
                inner.state = State::Open {
                    until: now + self.config.open_for,
                };
            }
        }
    }

    /// Whether the circuit is open or probing (for the gauge).
    pub fn is_open(&self) -> bool {
        !matches!(self.lock().state, State::Closed)
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_index(now: Instant, bucket: Duration) -> usize {
    let nanos = now.saturating_duration_since(epoch()).as_nanos();
    usize::try_from(nanos / bucket.as_nanos().max(1)).unwrap_or(0)
}

fn bucket_start(now: Instant, bucket: Duration) -> Instant {
    let index = now_index(now, bucket) as u32;
    epoch() + bucket * index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitConfig {
        CircuitConfig {
            failure_ratio: 0.5,
            min_requests: 10,
            open_for: Duration::from_secs(30),
        }
    }

    fn server_error() -> Outcome {
        Outcome::Retryable {
            after: None,
            cause: RetryCause::Status {
                status: 503,
                provider_reason: "ServiceUnavailable".into(),
            },
        }
    }

    fn too_many_requests() -> Outcome {
        Outcome::Retryable {
            after: None,
            cause: RetryCause::Status {
                status: 429,
                provider_reason: "TooManyRequests".into(),
            },
        }
    }

    #[test]
    fn opens_on_provider_failures_after_min_requests() {
        let c = Circuit::new(config());
        let t = Instant::now();
        for _ in 0..9 {
            assert_eq!(c.admit_at(t), Admission::Allowed);
            c.record_at(t, Admission::Allowed, &server_error());
        }
        assert!(!c.is_open(), "fewer than min_requests");
        c.record_at(t, Admission::Allowed, &server_error());
        assert!(c.is_open());
        assert_eq!(c.admit_at(t + Duration::from_secs(1)), Admission::Rejected);
    }

    #[test]
    fn per_device_answers_never_open_it() {
        let c = Circuit::new(config());
        let t = Instant::now();
        for _ in 0..100 {
            c.record_at(t, Admission::Allowed, &too_many_requests());
            c.record_at(
                t,
                Admission::Allowed,
                &Outcome::TokenInvalid {
                    reason: push_dispatch_proto::v1::Reason::BadDeviceToken,
                    provider_reason: "BadDeviceToken".into(),
                    invalidated_at: None,
                },
            );
        }
        assert!(!c.is_open());
    }

    #[test]
    fn a_healthy_share_keeps_it_closed() {
        let c = Circuit::new(config());
        let t = Instant::now();
        for i in 0..100 {
            let o = if i % 4 == 0 {
                server_error()
            } else {
                Outcome::Delivered
            };
            c.record_at(t, Admission::Allowed, &o);
        }
        assert!(!c.is_open(), "25% < 50%");
    }

    #[test]
    fn half_open_probe_closes_on_success_and_reopens_on_failure() {
        let c = Circuit::new(config());
        let t = Instant::now();
        for _ in 0..10 {
            c.record_at(t, Admission::Allowed, &server_error());
        }
        let later = t + Duration::from_secs(31);
        assert_eq!(c.admit_at(later), Admission::Probe);
        assert_eq!(
            c.admit_at(later),
            Admission::Rejected,
            "one probe at a time"
        );
        c.record_at(later, Admission::Probe, &server_error());
        assert!(c.is_open());
        assert_eq!(
            c.admit_at(later + Duration::from_secs(1)),
            Admission::Rejected
        );
        let much_later = later + Duration::from_secs(31);
        assert_eq!(c.admit_at(much_later), Admission::Probe);
        c.record_at(much_later, Admission::Probe, &Outcome::Delivered);
        assert!(!c.is_open());
        assert_eq!(c.admit_at(much_later), Admission::Allowed);
    }
}
