//! Every FCM HTTP v1 error code, and what it means for the target.
//!
//! Google's error body: `{"error": {"code", "message", "status", "details":
//! [{"@type": "…FcmError", "errorCode": "UNREGISTERED"}]}}`. The FCM
//! `errorCode` wins over the canonical `status`. `INVALID_ARGUMENT` means a
//! dead token only when the message says the registration token is invalid;
//! otherwise the payload is wrong and the push is rejected.

use std::time::Duration;

use push_dispatch_proto::v1::Reason;
use serde::Deserialize;

use crate::{Outcome, RejectReason, RetryCause};

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
}

/// Classifies an FCM answer. `retry_after` is the parsed `Retry-After` header.
pub fn classify(status: u16, body: &ErrorBody, retry_after: Option<Duration>) -> Outcome {
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
    match code {
        Unregistered => dead(Reason::Unregistered),
        SenderIdMismatch => dead(Reason::SenderIdMismatch),
        InvalidArgument if body.is_about_the_token() => dead(Reason::InvalidRegistration),
        InvalidArgument | ThirdPartyAuthError | PermissionDenied | NotFound => reject(),
        QuotaExceeded | Unavailable | Internal | Unauthenticated | UnspecifiedError => retry(),
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
                    field_violations: vec![],
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
        classify(http, &body(status, code, message), None)
    }

    #[test]
    fn success() {
        assert_eq!(
            classify(200, &ErrorBody::default(), None),
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
            error_code: None,
            field_violations: vec![FieldViolation {
                field: "message.token".into(),
                description: "Invalid registration token".into(),
            }],
        });
        assert!(matches!(
            classify(400, &by_field, None),
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
    fn quota_unavailable_internal_are_retryable_and_honour_retry_after() {
        let o = classify(
            429,
            &body("RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "quota"),
            Some(Duration::from_secs(30)),
        );
        let Outcome::Retryable { after, cause } = o else {
            panic!("retryable");
        };
        assert_eq!(after, Some(Duration::from_secs(30)));
        assert!(cause.is_provider_level(), "quota opens the circuit");
        for (http, status, code) in [
            (503, "UNAVAILABLE", Some("UNAVAILABLE")),
            (500, "INTERNAL", Some("INTERNAL")),
            (500, "UNKNOWN", Some("UNSPECIFIED_ERROR")),
            (401, "UNAUTHENTICATED", None),
            (502, "", None),
        ] {
            assert!(
                matches!(answer(http, status, code, ""), Outcome::Retryable { .. }),
                "{http} {status}"
            );
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
