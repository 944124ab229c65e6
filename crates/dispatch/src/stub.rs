//! An in-process stand-in for APNs and FCM that answers by token prefix,
//! with the same script as the sandbox (SPEC §7):
//!
//! | APNs token starts | answer | FCM token starts | answer |
//! |---|---|---|---|
//! | `dead` | 410 Unregistered | `unregistered-` | 404 UNREGISTERED |
//! | `bad0` | 400 BadDeviceToken | `invalid-` | 400 INVALID_ARGUMENT |
//! | `0429` | 429 TooManyRequests | `mismatch-` | 403 SENDER_ID_MISMATCH |
//! | `0500` | 500 InternalServerError | `quota-` | 429 QUOTA_EXCEEDED (project) + Retry-After |
//! | `0503` | 503 ServiceUnavailable | `unavailable-` | 503 UNAVAILABLE |
//! | `f1a0` | 503 twice per token, then 200 | `flaky-` | 503 twice, then 200 |
//! | | | `quota-device-` | 429 QUOTA_EXCEEDED (device message rate), no Retry-After |
//!
//! `quota-device-` is matched before `quota-`. FCM answers are as the FCM
//! client classifies them: `quota-` is `RetryCause::Quota { scope: Project }`
//! after [`QUOTA_RETRY_AFTER`]; `quota-device-` is `Quota { scope: Device }`
//! after `dispatch.quota_wait` ([`StubDispatcher::with_quota_wait`], default
//! [`DEFAULT_QUOTA_WAIT`]), since it comes without a Retry-After.
//!
//! Anything else is delivered. It does no I/O, so pipeline tests exercise the
//! worker's policy against the real Pub/Sub emulator without a provider.
//! Selected by the endpoint `stub:` (`stub:latency=2s` adds latency to every
//! answer, for drain and timeout tests); never meant for production.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use push_dispatch_proto::v1::{Platform, Reason};

use crate::apns::error::TOO_MANY_REQUESTS_DELAY;
pub use crate::fcm::DEFAULT_QUOTA_WAIT;
use crate::{Dispatcher, Outcome, Push, QuotaScope, RetryCause};

/// Endpoints with this prefix select the stub (e.g. `stub:latency=50ms`).
pub const STUB_SCHEME: &str = "stub:";

/// A `stub:` endpoint whose options cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StubEndpointError {
    /// `latency=` is not a duration.
    #[error(
        "`{endpoint}`: latency `{value}` is not a duration ({problem}); write e.g. stub:latency=200ms"
    )]
    Latency {
        /// The endpoint as configured.
        endpoint: String,
        /// The value after `latency=`.
        value: String,
        /// humantime's complaint.
        problem: String,
    },
    /// An option other than `latency=`.
    #[error("`{endpoint}`: unknown stub option `{option}`; the only option is latency=DURATION")]
    UnknownOption {
        /// The endpoint as configured.
        endpoint: String,
        /// The option.
        option: String,
    },
}

/// Whether `endpoint` selects the stub.
pub fn is_stub(endpoint: &str) -> bool {
    endpoint.starts_with(STUB_SCHEME)
}

/// `Retry-After` the stub gives with FCM `QUOTA_EXCEEDED` (`quota-`).
pub const QUOTA_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Token prefix of FCM's project quota answer.
pub const FCM_QUOTA_PREFIX: &str = "quota-";
/// Token prefix of FCM's per-device message-rate answer; it also starts
/// with [`FCM_QUOTA_PREFIX`], so it is matched first.
pub const FCM_DEVICE_QUOTA_PREFIX: &str = "quota-device-";

/// Answers by token prefix; counts what it delivered.
#[derive(Debug)]
pub struct StubDispatcher {
    platform: Platform,
    flaky_failures: Mutex<HashMap<String, u32>>,
    delivered: AtomicU64,
    latency: Duration,
    quota_wait: Duration,
}

impl StubDispatcher {
    /// A stub for `platform`.
    pub fn new(platform: Platform) -> StubDispatcher {
        StubDispatcher {
            platform,
            flaky_failures: Mutex::new(HashMap::new()),
            delivered: AtomicU64::new(0),
            latency: Duration::ZERO,
            quota_wait: DEFAULT_QUOTA_WAIT,
        }
    }

    /// The stub an endpoint selects: `None` unless it starts with `stub:`;
    /// its options (`latency=DURATION`) follow the colon, comma separated.
    pub fn from_endpoint(
        endpoint: &str,
        platform: Platform,
    ) -> Option<Result<StubDispatcher, StubEndpointError>> {
        let options = endpoint.strip_prefix(STUB_SCHEME)?;
        let mut stub = StubDispatcher::new(platform);
        for option in options.split(',').filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("latency", value)) => match humantime::parse_duration(value) {
                    Ok(latency) => stub = stub.with_latency(latency),
                    Err(e) => {
                        return Some(Err(StubEndpointError::Latency {
                            endpoint: endpoint.to_string(),
                            value: value.to_string(),
                            problem: e.to_string(),
                        }));
                    }
                },
                _ => {
                    return Some(Err(StubEndpointError::UnknownOption {
                        endpoint: endpoint.to_string(),
                        option: option.to_string(),
                    }));
                }
            }
        }
        Some(Ok(stub))
    }

    /// Delays every answer by `latency`.
    pub fn with_latency(mut self, latency: Duration) -> StubDispatcher {
        self.latency = latency;
        self
    }

    /// The wait of a `QUOTA_EXCEEDED` without Retry-After
    /// (`dispatch.quota_wait`), as the FCM client has it.
    pub fn with_quota_wait(mut self, quota_wait: Duration) -> StubDispatcher {
        self.quota_wait = quota_wait;
        self
    }

    /// Pushes delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn flaky(&self, token: &str) -> Outcome {
        // A poisoned lock only means another send panicked; the map is still usable.
        let mut failures = self
            .flaky_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = failures.entry(token.to_string()).or_insert(0);
        if *seen < 2 {
            *seen += 1;
            let reason = match self.platform {
                Platform::Fcm => "UNAVAILABLE",
                _ => "ServiceUnavailable",
            };
            retry(503, reason, None)
        } else {
            Outcome::Delivered
        }
    }

    fn apns(&self, token: &str) -> Outcome {
        let prefix = token.get(..4).unwrap_or("").to_ascii_lowercase();
        match prefix.as_str() {
            "dead" => dead(
                Reason::Unregistered,
                "Unregistered",
                Some(SystemTime::now()),
            ),
            "bad0" => dead(Reason::BadDeviceToken, "BadDeviceToken", None),
            // As the APNs client classifies it: Apple sends no Retry-After.
            "0429" => retry(429, "TooManyRequests", Some(TOO_MANY_REQUESTS_DELAY)),
            "0500" => retry(500, "InternalServerError", None),
            "0503" => retry(503, "ServiceUnavailable", None),
            "f1a0" => self.flaky(token),
            _ => Outcome::Delivered,
        }
    }

    fn fcm(&self, token: &str) -> Outcome {
        if token.starts_with("unregistered-") {
            dead(Reason::Unregistered, "UNREGISTERED", None)
        } else if token.starts_with("invalid-") {
            dead(Reason::InvalidRegistration, "INVALID_ARGUMENT", None)
        } else if token.starts_with("mismatch-") {
            dead(Reason::SenderIdMismatch, "SENDER_ID_MISMATCH", None)
        } else if token.starts_with(FCM_DEVICE_QUOTA_PREFIX) {
            quota(QuotaScope::Device, self.quota_wait)
        } else if token.starts_with(FCM_QUOTA_PREFIX) {
            quota(QuotaScope::Project, QUOTA_RETRY_AFTER)
        } else if token.starts_with("unavailable-") {
            retry(503, "UNAVAILABLE", None)
        } else if token.starts_with("flaky-") {
            self.flaky(token)
        } else {
            Outcome::Delivered
        }
    }
}

fn dead(reason: Reason, provider_reason: &str, at: Option<SystemTime>) -> Outcome {
    Outcome::TokenInvalid {
        reason,
        provider_reason: provider_reason.to_string(),
        invalidated_at: at,
    }
}

fn retry(status: u16, provider_reason: &str, after: Option<Duration>) -> Outcome {
    Outcome::Retryable {
        after,
        cause: RetryCause::Status {
            status,
            provider_reason: provider_reason.to_string(),
        },
    }
}

fn quota(scope: QuotaScope, after: Duration) -> Outcome {
    Outcome::Retryable {
        after: Some(after),
        cause: RetryCause::Quota {
            scope,
            provider_reason: "QUOTA_EXCEEDED".to_string(),
        },
    }
}

#[async_trait::async_trait]
impl Dispatcher for StubDispatcher {
    fn platform(&self) -> Platform {
        self.platform
    }

    async fn send(&self, push: Push<'_>) -> Outcome {
        let token = push.token;
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let outcome = match self.platform {
            Platform::Apns => self.apns(token),
            Platform::Fcm => self.fcm(token),
            Platform::Unspecified => Outcome::Rejected {
                reason: crate::RejectReason::Provider {
                    status: 400,
                    provider_reason: "no platform".into(),
                },
            },
        };
        if outcome == Outcome::Delivered {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use push_dispatch_proto::v1::PushRequest;

    fn push<'a>(request: &'a PushRequest, token: &'a str) -> Push<'a> {
        Push {
            request,
            token,
            expires_at: None,
            give_up: None,
        }
    }

    async fn answer(platform: Platform, token: &str) -> Outcome {
        StubDispatcher::new(platform)
            .send(push(&PushRequest::default(), token))
            .await
    }

    #[tokio::test]
    async fn apns_script() {
        assert_eq!(answer(Platform::Apns, "abcd").await, Outcome::Delivered);
        assert!(matches!(
            answer(Platform::Apns, "dead00").await,
            Outcome::TokenInvalid {
                reason: Reason::Unregistered,
                invalidated_at: Some(_),
                ..
            }
        ));
        assert!(matches!(
            answer(Platform::Apns, "bad000").await,
            Outcome::TokenInvalid {
                reason: Reason::BadDeviceToken,
                ..
            }
        ));
        for (token, status) in [("0429ab", 429), ("0500ab", 500), ("0503ab", 503)] {
            match answer(Platform::Apns, token).await {
                Outcome::Retryable {
                    cause: RetryCause::Status { status: s, .. },
                    ..
                } => {
                    assert_eq!(s, status);
                }
                other => panic!("{token}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn fcm_script() {
        assert!(matches!(
            answer(Platform::Fcm, "unregistered-1").await,
            Outcome::TokenInvalid {
                reason: Reason::Unregistered,
                ..
            }
        ));
        assert!(matches!(
            answer(Platform::Fcm, "invalid-1").await,
            Outcome::TokenInvalid {
                reason: Reason::InvalidRegistration,
                ..
            }
        ));
        assert!(matches!(
            answer(Platform::Fcm, "mismatch-1").await,
            Outcome::TokenInvalid {
                reason: Reason::SenderIdMismatch,
                ..
            }
        ));
        assert_eq!(
            answer(Platform::Fcm, "quota-1").await,
            quota(QuotaScope::Project, QUOTA_RETRY_AFTER)
        );
        assert_eq!(
            answer(Platform::Fcm, "quota-device-1").await,
            quota(QuotaScope::Device, DEFAULT_QUOTA_WAIT),
            "matched before quota-"
        );
        let short = StubDispatcher::new(Platform::Fcm).with_quota_wait(Duration::from_secs(2));
        assert_eq!(
            short
                .send(push(&PushRequest::default(), "quota-device-2"))
                .await,
            quota(QuotaScope::Device, Duration::from_secs(2))
        );
        assert_eq!(answer(Platform::Fcm, "ok-1").await, Outcome::Delivered);
    }

    #[tokio::test]
    async fn flaky_tokens_fail_twice_then_succeed() {
        let stub = StubDispatcher::new(Platform::Fcm);
        let req = PushRequest::default();
        assert!(matches!(
            stub.send(push(&req, "flaky-1")).await,
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            stub.send(push(&req, "flaky-1")).await,
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            stub.send(push(&req, "flaky-2")).await,
            Outcome::Retryable { .. }
        ));
        assert_eq!(stub.send(push(&req, "flaky-1")).await, Outcome::Delivered);
        assert_eq!(stub.delivered(), 1);
    }

    #[test]
    fn stub_endpoints_are_parsed_here_and_their_mistakes_named() {
        assert!(
            StubDispatcher::from_endpoint("https://fcm.googleapis.com", Platform::Fcm).is_none()
        );
        let stub = StubDispatcher::from_endpoint("stub:latency=5ms", Platform::Apns)
            .expect("a stub")
            .expect("valid");
        assert_eq!(stub.latency, Duration::from_millis(5));
        let bad = StubDispatcher::from_endpoint("stub:latency=soon", Platform::Apns)
            .expect("a stub")
            .expect_err("not a duration");
        assert!(bad.to_string().contains("stub:latency=200ms"), "{bad}");
        let unknown = StubDispatcher::from_endpoint("stub:speed=1", Platform::Apns)
            .expect("a stub")
            .expect_err("unknown");
        assert!(unknown.to_string().contains("`speed=1`"), "{unknown}");
    }
}
