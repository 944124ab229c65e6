//! Circuit breaker per provider and app (SPEC §5.8).
//!
//! It opens on provider-level failures only — 5xx, timeouts, connection
//! errors, FCM's project quota — never on per-device answers (APNs 429
//! TooManyRequests and FCM's per-device message rate, `RetryCause::Quota {
//! scope: Device }`, are about one device). Closed: requests flow and results are counted in a
//! sliding window; when at least `min_requests` were seen and the share of
//! provider-level failures reaches `failure_ratio`, it opens. Open: nothing is
//! sent for `open_for`; targets are carried forward as retryable. Then one
//! probe is let through (half-open): success closes the circuit, failure
//! opens it again.
//!
//! Only the provider's answers are recorded ([`Outcome`]); a request the
//! worker did not send (draining, rate limited) is never recorded, and a
//! probe admitted but not sent is handed back when its [`Admitted`] drops.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use push_dispatch_config::CircuitConfig;
use push_dispatch_dispatch::Outcome;

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

/// A change of a circuit's state, for the log line that says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Provider failures reached `failure_ratio` of at least `min_requests`
    /// requests in the window: nothing is sent for `open_for`.
    Opened {
        /// Requests in the window.
        requests: u32,
        /// Provider-level failures among them.
        failures: u32,
    },
    /// The half-open probe failed: open again for `open_for`.
    Reopened,
    /// The half-open probe succeeded: requests flow again.
    Closed,
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

    /// Records the outcome of an admitted request; returns the change of
    /// state it caused, if any.
    pub fn record(&self, admission: Admission, outcome: &Outcome) -> Option<Transition> {
        self.record_at(Instant::now(), admission, outcome)
    }

    fn record_at(
        &self,
        now: Instant,
        admission: Admission,
        outcome: &Outcome,
    ) -> Option<Transition> {
        let failed = is_provider_failure(outcome);
        let mut inner = self.lock();
        if admission == Admission::Probe {
            return Some(if failed {
                inner.state = State::Open {
                    until: now + self.config.open_for,
                };
                Transition::Reopened
            } else {
                inner.window = [(None, 0, 0); BUCKETS];
                inner.state = State::Closed;
                Transition::Closed
            });
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
                return Some(Transition::Opened { requests, failures });
            }
        }
        None
    }

    /// Admits a request, like [`Circuit::admit`], as a guard that gives a
    /// half-open probe back when it is dropped without an outcome (the send
    /// was cancelled, or never made): otherwise the circuit would wait
    /// forever for a probe result and refuse every request.
    pub fn enter(&self) -> Admitted<'_> {
        Admitted {
            circuit: self,
            admission: self.admit(),
            recorded: false,
        }
    }

    /// A probe admitted but not sent: the next request may probe.
    fn abandon(&self, admission: Admission) {
        if admission != Admission::Probe {
            return;
        }
        let mut inner = self.lock();
        if matches!(inner.state, State::HalfOpen { probing: true }) {
            inner.state = State::HalfOpen { probing: false };
        }
    }

    /// Its state now, as `/statusz` shows it: `closed`, `open` or
    /// `half_open` (probing, or ready to probe).
    pub fn state_label(&self) -> &'static str {
        match self.lock().state {
            State::Closed => "closed",
            State::Open { until } if Instant::now() < until => "open",
            State::Open { .. } | State::HalfOpen { .. } => "half_open",
        }
    }

    /// Its settings.
    pub fn config(&self) -> &CircuitConfig {
        &self.config
    }

    /// Whether the circuit refuses requests now: open and within `open_for`,
    /// or half-open with its probe out (for the gauge). Once `open_for` has
    /// passed it is ready to probe and no longer counts as open, even if no
    /// request came to probe it.
    pub fn is_open(&self) -> bool {
        match self.lock().state {
            State::Closed | State::HalfOpen { probing: false } => false,
            State::Open { until } => Instant::now() < until,
            State::HalfOpen { probing: true } => true,
        }
    }

    /// How long until a refused request may be tried again: the rest of
    /// `open_for`, or while a probe is out, a short while (its answer).
    pub fn reopens_in(&self) -> Duration {
        match self.lock().state {
            State::Open { until } => until.saturating_duration_since(Instant::now()),
            State::HalfOpen { probing: true } => PROBE_WAIT,
            State::Closed | State::HalfOpen { probing: false } => Duration::ZERO,
        }
    }
}

/// How long a request refused while the half-open probe is out waits.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// One admitted (or refused) request of a [`Circuit`]; see [`Circuit::enter`].
#[derive(Debug)]
pub struct Admitted<'a> {
    circuit: &'a Circuit,
    admission: Admission,
    recorded: bool,
}

impl Admitted<'_> {
    /// What the circuit allowed.
    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// Records the outcome of the request that was sent; returns the change
    /// of state it caused, if any.
    pub fn record(mut self, outcome: &Outcome) -> Option<Transition> {
        self.recorded = true;
        self.circuit.record(self.admission, outcome)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.circuit.abandon(self.admission);
        }
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
    use push_dispatch_dispatch::{QuotaScope, RetryCause};

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

    fn quota(scope: QuotaScope) -> Outcome {
        Outcome::Retryable {
            after: Some(Duration::from_secs(60)),
            cause: RetryCause::Quota {
                scope,
                provider_reason: "QUOTA_EXCEEDED".into(),
            },
        }
    }

    #[test]
    fn a_device_quota_never_opens_it_and_a_project_quota_does() {
        let c = Circuit::new(config());
        let t = Instant::now();
        for _ in 0..100 {
            assert_eq!(
                c.record_at(t, Admission::Allowed, &quota(QuotaScope::Device)),
                None
            );
        }
        assert!(
            !c.is_open(),
            "one device's message rate is not the provider's failure"
        );
        let c = Circuit::new(config());
        let changes: Vec<_> = (0..10)
            .filter_map(|_| c.record_at(t, Admission::Allowed, &quota(QuotaScope::Project)))
            .collect();
        assert!(c.is_open(), "the project's quota is");
        assert!(
            matches!(changes[..], [Transition::Opened { failures: 10, .. }]),
            "{changes:?}"
        );
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

    #[test]
    fn a_probe_dropped_unsent_lets_the_next_request_probe() {
        let c = Circuit::new(CircuitConfig {
            open_for: Duration::ZERO,
            ..config()
        });
        let t = Instant::now();
        for _ in 0..10 {
            c.record_at(t, Admission::Allowed, &server_error());
        }
        assert!(!c.is_open(), "open_for 0: ready to probe at once");
        {
            let probe = c.enter();
            assert!(c.is_open(), "probing");
            assert_eq!(probe.admission(), Admission::Probe);
            assert_eq!(c.admit(), Admission::Rejected, "one probe at a time");
            // Dropped here without an outcome: e.g. the send was cancelled.
        }
        let probe = c.enter();
        assert_eq!(probe.admission(), Admission::Probe, "not wedged");
        // A probe that learnt nothing (the worker did not send it: draining,
        // rate limited) is dropped unrecorded, and also gives it back.
        drop(probe);
        let probe = c.enter();
        assert_eq!(probe.admission(), Admission::Probe);
        probe.record(&Outcome::Delivered);
        assert!(!c.is_open());
        assert_eq!(c.enter().admission(), Admission::Allowed);
    }

    #[test]
    fn each_change_of_state_is_reported_once_with_its_numbers() {
        let c = Circuit::new(CircuitConfig {
            open_for: Duration::ZERO,
            ..config()
        });
        let t = Instant::now();
        let changes: Vec<_> = (0..10)
            .filter_map(|_| c.record_at(t, Admission::Allowed, &server_error()))
            .collect();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            matches!(changes[0], Transition::Opened { requests, failures } if requests == failures && requests >= 1)
        );
        let probe = c.enter();
        assert_eq!(probe.record(&server_error()), Some(Transition::Reopened));
        let probe = c.enter();
        assert_eq!(probe.record(&Outcome::Delivered), Some(Transition::Closed));
        assert_eq!(c.enter().record(&Outcome::Delivered), None);
    }
}
