//! Every FCM HTTP v1 error code, and what it means for the target.
//!
//! Google's error body: `{"error": {"code", "message", "status", "details":
//! [{"@type": "…FcmError", "errorCode": "UNREGISTERED"}]}}`. The FCM
//! `errorCode` wins over the canonical `status`. `INVALID_ARGUMENT` means a
//! dead token only when the message says the registration token is invalid;
//! otherwise the payload is wrong and the push is rejected.
//!
//! ## `QUOTA_EXCEEDED`: whose quota?
//!
//! FCM's error reference (firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode)
//! documents 429 `QUOTA_EXCEEDED` as "Sending limit exceeded for the message
//! target", with a `google.rpc.QuotaFailure` detail naming the quota, and
//! three causes: the project's message rate, one device's message rate, and
//! a topic's message rate (the Admin SDKs say the same, e.g. the Ruby SDK's
//! `QuotaExceededError`: "exceeded message rate quota, exceeded device
//! message rate quota, or exceeded topic message rate quota"). The error
//! code is the same for all three: what tells them apart is the
//! `QuotaFailure` violations (`subject`, `description`) and the `message`
//! (rails/action_push_native#129 reads the violations for exactly this).
//! - Per device: FCM allows 240 messages a minute and 5,000 an hour to one
//!   Android device (docs/cloud-messaging/throttling-and-quotas, "Maximum
//!   message rate to a single device"). Only that device must wait; GCM
//!   named it `DeviceMessageRateExceeded` and Google's advice was to back off
//!   that registration token only, not all sending.
//! - Per project: the downstream quota (600k messages a minute by default,
//!   per-minute windows not aligned to the clock): FCM answers 429 "until the
//!   quota is refilled in the following minute" (same page). Seen in the
//!   wild with no `FcmError` at all, only `status: RESOURCE_EXHAUSTED`, the
//!   message "Quota exceeded for quota metric 'Send requests' and limit 'Send
//!   requests per minute' …" and a `google.rpc.ErrorInfo` with `reason:
//!   RATE_LIMIT_EXCEEDED`, `quota_metric: fcm.googleapis.com/send_requests`,
//!   `quota_limit: SendsPerMinutePerProject` (firebase/firebase-admin-go#719).
//! - Per topic: topic fan-out; we send to tokens only, and it is not a device's.
//!
//! So [`ErrorBody::quota_scope`] says [`QuotaScope::Device`] when a
//! `QuotaFailure` violation or the message names a device ("Device message
//! rate exceeded"), and [`QuotaScope::Project`] for everything else,
//! unknown shapes included: slowing the whole app down is the safe mistake.
//!
//! FCM's guidance for the project quota is to retry with exponential backoff
//! starting at one minute, so a `QUOTA_EXCEEDED` without `Retry-After`
//! waits `dispatch.quota_wait` (default 60 s). A `Retry-After` that FCM
//! sends is its own word on when the quota refills and is honoured as given,
//! shorter or longer than `quota_wait`.

use std::time::Duration;

use push_dispatch_proto::v1::Reason;
use serde::Deserialize;

use crate::{Outcome, QuotaScope, RejectReason, RetryCause};

/// FCM v1 error codes (`FcmError.errorCode`), and canonical statuses seen without one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FcmErrorCode {
    /// No more information.
    UnspecifiedError,
    /// 400: bad request (a dead token when it is about the registration token).
    InvalidArgument,
    /// 404: the app instance was unregistered.
    Unregistered,
    /// 403: the token belongs to another sender (project).
    SenderIdMismatch,
    /// 429: sending limit exceeded.
    QuotaExceeded,
    /// 503: the server is overloaded.
    Unavailable,
    /// 500: unknown internal error.
    Internal,
    /// 401: the APNs certificate or web push key in Firebase is wrong.
    ThirdPartyAuthError,
    /// 401: our OAuth token was refused.
    Unauthenticated,
    /// 403: our credentials may not send for this project.
    PermissionDenied,
    /// 404: not found without an FCM code (e.g. a wrong project).
    NotFound,
    /// Anything else.
    Other(String),
}

impl FcmErrorCode {
    /// From the FCM `errorCode`, else the canonical `status`.
    pub fn parse(code: &str) -> FcmErrorCode {
        use FcmErrorCode::*;
        match code {
            "UNSPECIFIED_ERROR" => UnspecifiedError,
            "INVALID_ARGUMENT" => InvalidArgument,
            "UNREGISTERED" => Unregistered,
            "SENDER_ID_MISMATCH" => SenderIdMismatch,
            "QUOTA_EXCEEDED" | "RESOURCE_EXHAUSTED" => QuotaExceeded,
            "UNAVAILABLE" => Unavailable,
            "INTERNAL" => Internal,
            "THIRD_PARTY_AUTH_ERROR" => ThirdPartyAuthError,
            "UNAUTHENTICATED" => Unauthenticated,
            "PERMISSION_DENIED" => PermissionDenied,
            "NOT_FOUND" => NotFound,
            other => Other(other.to_string()),
        }
    }
}

/// `{"error": {...}}`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    /// The error.
    #[serde(default)]
    pub error: ErrorStatus,
}

/// Google's `Status` as JSON.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorStatus {
    /// HTTP code.
    #[serde(default)]
    pub code: u16,
    /// Human message.
    #[serde(default)]
    pub message: String,
    /// Canonical status, e.g. `NOT_FOUND`.
    #[serde(default)]
    pub status: String,
    /// Typed details; the FCM one carries `errorCode`.
    #[serde(default)]
    pub details: Vec<Detail>,
}

/// One entry of `details`.
#[derive(Debug, Default, Deserialize)]
pub struct Detail {
    /// `type.googleapis.com/google.firebase.fcm.v1.FcmError`, …
    #[serde(rename = "@type", default)]
    pub kind: String,
    /// The FCM error code.
    #[serde(rename = "errorCode", default)]
    pub error_code: Option<String>,
    /// `BadRequest` field violations.
    #[serde(rename = "fieldViolations", default)]
    pub field_violations: Vec<FieldViolation>,
    /// `QuotaFailure` violations: which quota was exceeded.
    #[serde(default)]
    pub violations: Vec<QuotaViolation>,
    /// `ErrorInfo` reason, e.g. `RATE_LIMIT_EXCEEDED`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A `google.rpc.QuotaFailure.Violation`.
#[derive(Debug, Default, Deserialize)]
pub struct QuotaViolation {
    /// What the quota check failed on, e.g. `project:…`, or a device.
    #[serde(default)]
    pub subject: String,
    /// What was exceeded, e.g. "Device message rate exceeded".
    #[serde(default)]
    pub description: String,
}

/// A `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Default, Deserialize)]
pub struct FieldViolation {
    /// The field, e.g. `message.token`.
    #[serde(default)]
    pub field: String,
    /// What is wrong.
    #[serde(default)]
    pub description: String,
}

impl ErrorBody {
    /// The FCM error code, else the canonical status.
    pub fn code(&self) -> FcmErrorCode {
        let fcm = self.error.details.iter().find_map(|d| d.error_code.clone());
        FcmErrorCode::parse(fcm.as_deref().unwrap_or(&self.error.status))
    }

    /// Whether an INVALID_ARGUMENT is about the registration token.
    pub fn is_about_the_token(&self) -> bool {
        let m = self.error.message.to_ascii_lowercase();
        let in_message = m.contains("registration token") || m.contains("message.token");
        let in_fields = self
            .error
            .details
            .iter()
            .flat_map(|d| &d.field_violations)
            .any(|v| v.field == "message.token");
        in_message || in_fields
    }

    /// Whose quota a `QUOTA_EXCEEDED` is about (see the module docs): a
    /// device's when a `QuotaFailure` violation, an `ErrorInfo` reason or the
    /// message names a device; the project's otherwise, unknown shapes too.
    pub fn quota_scope(&self) -> QuotaScope {
        let names_a_device = |text: &str| text.to_ascii_lowercase().contains("device");
        let in_details = self.error.details.iter().any(|d| {
            d.violations
                .iter()
                .any(|v| names_a_device(&v.subject) || names_a_device(&v.description))
                || d.reason.as_deref().is_some_and(names_a_device)
        });
        if in_details || names_a_device(&self.error.message) {
            QuotaScope::Device
        } else {
            QuotaScope::Project
        }
    }
}

/// Classifies an FCM answer. `retry_after` is the parsed `Retry-After`
/// header; `quota_wait` (`dispatch.quota_wait`) is the wait of a
/// `QUOTA_EXCEEDED` that came without one.
pub fn classify(
    status: u16,
    body: &ErrorBody,
    retry_after: Option<Duration>,
    quota_wait: Duration,
) -> Outcome {
    use FcmErrorCode::*;
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let code = body.code();
    let provider_reason = match &code {
        Other(s) if s.is_empty() => format!("HTTP {status}"),
        _ => {
            let fcm = body.error.details.iter().find_map(|d| d.error_code.clone());
            fcm.unwrap_or_else(|| body.error.status.clone())
        }
    };
    let dead = |r: Reason| Outcome::TokenInvalid {
        reason: r,
        provider_reason: provider_reason.clone(),
        invalidated_at: None,
    };
    let retry = || Outcome::Retryable {
        after: retry_after,
        cause: RetryCause::Status {
            status,
            provider_reason: provider_reason.clone(),
        },
    };
    let reject = || Outcome::Rejected {
        reason: RejectReason::Provider {
            status,
            provider_reason: if body.error.message.is_empty() {
                provider_reason.clone()
            } else {
                format!("{provider_reason}: {}", body.error.message)
            },
        },
    };
    let quota = || Outcome::Retryable {
        // FCM's own Retry-After wins, shorter or longer (see the module docs).
        after: Some(retry_after.unwrap_or(quota_wait)),
        cause: RetryCause::Quota {
            scope: body.quota_scope(),
            provider_reason: provider_reason.clone(),
        },
    };
    match code {
        Unregistered => dead(Reason::Unregistered),
        SenderIdMismatch => dead(Reason::SenderIdMismatch),
        InvalidArgument if body.is_about_the_token() => dead(Reason::InvalidRegistration),
        InvalidArgument | ThirdPartyAuthError | PermissionDenied | NotFound => reject(),
        QuotaExceeded => quota(),
        Unavailable | Internal | Unauthenticated | UnspecifiedError => retry(),
        // Only FCM's own `UNREGISTERED` condemns a token. A bare 404 (a wrong
        // endpoint path, a proxy's error page) would make every token look
        // Unregistered, which the mass-invalidation guard lets through.
        Other(_) => match status {
            429 | 500..=599 => retry(),
            _ => reject(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(status: &str, code: Option<&str>, message: &str) -> ErrorBody {
        let details = code
            .map(|c| {
                vec![Detail {
                    kind: "type.googleapis.com/google.firebase.fcm.v1.FcmError".into(),
                    error_code: Some(c.into()),
                    ..Default::default()
                }]
            })
            .unwrap_or_default();
        ErrorBody {
            error: ErrorStatus {
                code: 0,
                message: message.into(),
                status: status.into(),
                details,
            },
        }
    }

    fn answer(http: u16, status: &str, code: Option<&str>, message: &str) -> Outcome {
        classify(http, &body(status, code, message), None, WAIT)
    }

    const WAIT: Duration = Duration::from_secs(60);

    #[test]
    fn success() {
        assert_eq!(
            classify(200, &ErrorBody::default(), None, WAIT),
            Outcome::Delivered
        );
    }

    #[test]
    fn unregistered_and_sender_id_mismatch_are_dead_tokens() {
        assert!(matches!(
            answer(
                404,
                "NOT_FOUND",
                Some("UNREGISTERED"),
                "Requested entity was not found."
            ),
            Outcome::TokenInvalid {
                reason: Reason::Unregistered,
                ..
            }
        ));
        assert!(matches!(
            answer(
                403,
                "PERMISSION_DENIED",
                Some("SENDER_ID_MISMATCH"),
                "SenderId mismatch"
            ),
            Outcome::TokenInvalid {
                reason: Reason::SenderIdMismatch,
                ..
            }
        ));
    }

    #[test]
    fn invalid_argument_is_a_dead_token_only_when_about_the_token() {
        assert!(matches!(
            answer(
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "The registration token is not a valid FCM registration token"
            ),
            Outcome::TokenInvalid {
                reason: Reason::InvalidRegistration,
                ..
            }
        ));
        let mut by_field = body(
            "INVALID_ARGUMENT",
            None,
            "Request contains an invalid argument.",
        );
        by_field.error.details.push(Detail {
            kind: "type.googleapis.com/google.rpc.BadRequest".into(),
            field_violations: vec![FieldViolation {
                field: "message.token".into(),
                description: "Invalid registration token".into(),
            }],
            ..Default::default()
        });
        assert!(matches!(
            classify(400, &by_field, None, WAIT),
            Outcome::TokenInvalid {
                reason: Reason::InvalidRegistration,
                ..
            }
        ));
        assert!(matches!(
            answer(
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "Invalid value at 'message.android.ttl'"
            ),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn unavailable_internal_are_retryable_and_honour_retry_after() {
        let o = classify(
            503,
            &body("UNAVAILABLE", Some("UNAVAILABLE"), ""),
            Some(Duration::from_secs(30)),
            WAIT,
        );
        let Outcome::Retryable { after, cause } = o else {
            panic!("retryable");
        };
        assert_eq!(after, Some(Duration::from_secs(30)));
        assert!(cause.is_provider_level());
        for (http, status, code) in [
            (503, "UNAVAILABLE", Some("UNAVAILABLE")),
            (500, "INTERNAL", Some("INTERNAL")),
            (500, "UNKNOWN", Some("UNSPECIFIED_ERROR")),
            (401, "UNAUTHENTICATED", None),
            (502, "", None),
        ] {
            assert!(
                matches!(
                    answer(http, status, code, ""),
                    Outcome::Retryable {
                        cause: RetryCause::Status { .. },
                        ..
                    }
                ),
                "{http} {status}"
            );
        }
    }

    fn quota(o: Outcome) -> (Option<Duration>, QuotaScope, String) {
        match o {
            Outcome::Retryable {
                after,
                cause:
                    RetryCause::Quota {
                        scope,
                        provider_reason,
                    },
            } => (after, scope, provider_reason),
            other => panic!("not a quota answer: {other:?}"),
        }
    }

    #[test]
    fn quota_exceeded_waits_quota_wait_unless_fcm_says_otherwise() {
        let b = body("RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "quota");
        let (after, scope, reason) = quota(classify(429, &b, None, WAIT));
        assert_eq!(after, Some(WAIT), "no Retry-After: dispatch.quota_wait");
        assert_eq!(scope, QuotaScope::Project);
        assert_eq!(reason, "QUOTA_EXCEEDED");
        // FCM's Retry-After is honoured as given, longer or shorter.
        for given in [Duration::from_secs(90), Duration::from_secs(10)] {
            let (after, ..) = quota(classify(429, &b, Some(given), WAIT));
            assert_eq!(after, Some(given));
        }
    }

    #[test]
    fn a_device_message_rate_is_the_devices_quota_and_opens_no_circuit() {
        // The QuotaFailure violation names the device.
        let mut by_violation = body("RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "");
        by_violation.error.details.push(Detail {
            kind: "type.googleapis.com/google.rpc.QuotaFailure".into(),
            violations: vec![QuotaViolation {
                subject: "device".into(),
                description: "Device message rate exceeded.".into(),
            }],
            ..Default::default()
        });
        // Only the message does.
        let by_message = body(
            "RESOURCE_EXHAUSTED",
            Some("QUOTA_EXCEEDED"),
            "Device message rate exceeded.",
        );
        for b in [by_violation, by_message] {
            let o = classify(429, &b, None, WAIT);
            let Outcome::Retryable { cause, .. } = &o else {
                panic!("{o:?}");
            };
            assert!(!cause.is_provider_level(), "{o:?}");
            assert_eq!(quota(o).1, QuotaScope::Device);
        }
    }

    #[test]
    fn the_project_quota_and_unknown_quotas_are_the_projects() {
        // As seen from FCM (firebase-admin-go#719): no FcmError, an ErrorInfo.
        let json = r#"{"error":{"code":429,"message":"Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' of service 'fcm.googleapis.com' for consumer 'project_number:1'.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","domain":"googleapis.com","metadata":{"quota_metric":"fcm.googleapis.com/send_requests","quota_limit":"SendsPerMinutePerProject"}}]}}"#;
        let b: ErrorBody = serde_json::from_str(json).expect("json");
        let o = classify(429, &b, None, WAIT);
        let Outcome::Retryable { cause, .. } = &o else {
            panic!("{o:?}");
        };
        assert!(cause.is_provider_level(), "project quota opens the circuit");
        let (after, scope, reason) = quota(o);
        assert_eq!((after, scope), (Some(WAIT), QuotaScope::Project));
        assert_eq!(reason, "RESOURCE_EXHAUSTED");
        for message in ["Sending limit exceeded", "Topic quota exceeded.", ""] {
            let b = body("RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), message);
            assert_eq!(quota(classify(429, &b, None, WAIT)).1, QuotaScope::Project);
        }
    }

    #[test]
    fn configuration_errors_are_rejected() {
        for (http, status, code) in [
            (401, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR")),
            (403, "PERMISSION_DENIED", None),
            (400, "FAILED_PRECONDITION", None),
        ] {
            assert!(
                matches!(answer(http, status, code, "x"), Outcome::Rejected { .. }),
                "{http} {status}"
            );
        }
    }

    #[test]
    fn unknown_codes_fall_back_on_the_status() {
        assert!(
            matches!(answer(404, "", None, ""), Outcome::Rejected { .. }),
            "a bare 404 (wrong path, a proxy's page) does not condemn the token"
        );
        assert!(
            matches!(answer(404, "NOT_FOUND", None, ""), Outcome::Rejected { .. }),
            "a 404 without an FCM code (e.g. a wrong project) does not condemn the token"
        );
        assert!(matches!(
            answer(503, "NEW_THING", None, ""),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            answer(418, "NEW_THING", None, ""),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn parses_googles_error_json() {
        let json = r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        let b: ErrorBody = serde_json::from_str(json).expect("json");
        assert_eq!(b.code(), FcmErrorCode::Unregistered);
    }
}
