//! Fault flags for chaos runs: random failures and 429s, added latency, GOAWAY
//! every N streams, forced expiry of APNs provider tokens, a hung OAuth token
//! endpoint, revoked OAuth access tokens, and black holes (connections or
//! streams never answered) switched on and off at run time.
//!
//! The flags are a small `Copy` value behind a lock, read once per request, so
//! changing them at run time (`POST /sandbox/faults`, [`crate::Sandbox::set_faults`])
//! costs the hot path nothing but a read lock.

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest added latency accepted (keeps shutdown drains bounded).
pub(crate) const MAX_LATENCY: Duration = Duration::from_secs(30);

/// Fault flags. The default injects nothing.
///
/// Serialized as JSON/YAML with humane durations: `{"failure_rate": 0.1,
/// "latency": "20ms", "goaway_every": 1000}`. Unknown keys are refused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability (0..=1) that a request that would be accepted answers 500 or
    /// 503 instead (APNs `InternalServerError`/`ServiceUnavailable`, FCM
    /// `INTERNAL`/`UNAVAILABLE`), half each.
    pub failure_rate: f64,
    /// Probability (0..=1) that a request that would be accepted answers 429
    /// instead: APNs `TooManyRequests` (Apple sends no `Retry-After`, nor does
    /// the sandbox), FCM `QUOTA_EXCEEDED` with `Retry-After: retry_after_secs`.
    pub retry_after_rate: f64,
    /// `Retry-After` seconds on FCM 429s, both random and scripted (`quota-`).
    /// Default 30: longer than the worker's in-process wait, so quota answers
    /// exercise the hand-back-to-Pub/Sub path without slowing tests down.
    pub retry_after_secs: u32,
    /// Delay added before answering every APNs, FCM and OAuth request (at most 30 s).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Send an HTTP/2 GOAWAY (graceful: in-flight streams finish) after every N
    /// requests on a connection; `None` never.
    pub goaway_every: Option<u32>,
    /// One-shot trigger: when set (at start or at run time), every APNs provider
    /// token verified so far answers 403 `ExpiredProviderToken` from then on, as
    /// an expired token does at Apple; tokens minted afterwards are accepted,
    /// and replacing an expired token does not count as a too-early update.
    /// The stored flag reads `false` again right after it fired.
    pub expire_provider_tokens: bool,
    /// The OAuth token endpoint (`POST /token`) accepts each request and never
    /// answers (until the sandbox shuts down), as a hung identity provider
    /// does; APNs and FCM are unaffected.
    pub oauth_hang: bool,
    /// One-shot trigger: when set, every OAuth access token issued so far is
    /// forgotten, so FCM answers 401 `UNAUTHENTICATED` to it (as to a revoked
    /// token); tokens issued afterwards are accepted. The stored flag reads
    /// `false` again right after it fired.
    pub revoke_oauth_tokens: bool,
    /// Like `--blackhole`, switchable at run time: connections accepted while
    /// it is set are held and never get a byte (closed when the client gives
    /// up); connections made before keep working unless `blackhole_streams`
    /// is set too. A chaos run sets both for a black-hole phase.
    pub blackhole: bool,
    /// Like `--blackhole-streams`, switchable at run time: APNs and FCM
    /// requests that arrive while it is set are never answered.
    pub blackhole_streams: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            failure_rate: 0.0,
            retry_after_rate: 0.0,
            retry_after_secs: 30,
            latency: Duration::ZERO,
            goaway_every: None,
            expire_provider_tokens: false,
            oauth_hang: false,
            revoke_oauth_tokens: false,
            blackhole: false,
            blackhole_streams: false,
        }
    }
}

/// A fault flag out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    /// A probability outside 0..=1 (or not a number).
    #[error("`{field}` must be between 0 and 1, got {value}")]
    Rate {
        /// `failure_rate` or `retry_after_rate`.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// Latency above the limit.
    #[error("`latency` must be at most 30s, got {0:?}")]
    Latency(Duration),
    /// `goaway_every: 0`.
    #[error("`goaway_every` must be at least 1 (or null for never)")]
    GoawayEvery,
}

impl Faults {
    /// Checks every flag's range.
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (field, value) in [
            ("failure_rate", self.failure_rate),
            ("retry_after_rate", self.retry_after_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultsError::Rate { field, value });
            }
        }
        if self.latency > MAX_LATENCY {
            return Err(FaultsError::Latency(self.latency));
        }
        if self.goaway_every == Some(0) {
            return Err(FaultsError::GoawayEvery);
        }
        Ok(())
    }

    /// The same flags forced into range.
    pub(crate) fn clamped(mut self) -> Self {
        let clamp = |v: f64| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
        self.failure_rate = clamp(self.failure_rate);
        self.retry_after_rate = clamp(self.retry_after_rate);
        self.latency = self.latency.min(MAX_LATENCY);
        self.goaway_every = self.goaway_every.filter(|n| *n > 0);
        self
    }

    /// Rolls the random faults for a request that would be accepted.
    pub(crate) fn roll(&self) -> Option<InjectedFault> {
        if self.failure_rate <= 0.0 && self.retry_after_rate <= 0.0 {
            return None;
        }
        let r: f64 = rand::random();
        if r < self.failure_rate {
            return Some(if rand::random::<bool>() {
                InjectedFault::Internal
            } else {
                InjectedFault::Unavailable
            });
        }
        let r: f64 = rand::random();
        (r < self.retry_after_rate).then_some(InjectedFault::TooManyRequests)
    }
}

/// A random failure chosen by [`Faults::roll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InjectedFault {
    Internal,
    Unavailable,
    TooManyRequests,
}

/// The flags in force, shared by all connections.
#[derive(Debug, Default)]
pub(crate) struct FaultSwitch {
    current: RwLock<Faults>,
}

impl FaultSwitch {
    pub(crate) fn current(&self) -> Faults {
        *self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn store(&self, faults: Faults) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = faults;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_injects_nothing() {
        let f = Faults::default();
        assert!(f.validate().is_ok());
        for _ in 0..1000 {
            assert_eq!(f.roll(), None);
        }
    }

    #[test]
    fn parses_humane_latency_and_rejects_unknown_keys() {
        let f: Faults = serde_json::from_str(r#"{"latency":"20ms","goaway_every":3}"#).unwrap();
        assert_eq!(f.latency, Duration::from_millis(20));
        assert_eq!(f.goaway_every, Some(3));
        assert_eq!(f.retry_after_secs, 30);
        assert!(serde_json::from_str::<Faults>(r#"{"failure":1}"#).is_err());
    }

    #[test]
    fn validate_and_clamp_bound_the_flags() {
        let f = Faults {
            failure_rate: 1.5,
            goaway_every: Some(0),
            latency: Duration::from_secs(100),
            ..Faults::default()
        };
        assert!(f.validate().is_err());
        let c = f.clamped();
        assert!(c.validate().is_ok());
        assert_eq!(c.failure_rate, 1.0);
        assert_eq!(c.goaway_every, None);
    }

    #[test]
    fn certain_failure_always_fails() {
        let f = Faults {
            failure_rate: 1.0,
            ..Faults::default()
        };
        for _ in 0..100 {
            assert!(matches!(
                f.roll(),
                Some(InjectedFault::Internal | InjectedFault::Unavailable)
            ));
        }
    }
}
