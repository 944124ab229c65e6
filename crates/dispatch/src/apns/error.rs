//! Every answer APNs documents, and what it means for the target.
//!
//! Apple's table ("Handling notification responses from APNs"): the HTTP
//! status and a `reason` string in a JSON body. Each reason is a variant of
//! [`ApnsReason`]; [`classify`] turns (status, reason) into an [`Outcome`].
//! Reasons we do not know fall back on the status: 410 → dead token, 429 and
//! 5xx → retryable, other 4xx → rejected.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use push_dispatch_proto::v1::Reason;
use serde::Deserialize;

use crate::{Outcome, RejectReason, RetryCause};

/// A reason string from an APNs error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApnsReason {
    /// 400: the collapse identifier exceeds 64 bytes.
    BadCollapseId,
    /// 400: the device token is invalid (also: a sandbox token sent to production).
    BadDeviceToken,
    /// 400: `apns-expiration` is bad.
    BadExpirationDate,
    /// 400: `apns-id` is bad.
    BadMessageId,
    /// 400: `apns-priority` is bad.
    BadPriority,
    /// 400: `apns-topic` is invalid.
    BadTopic,
    /// 400: the token does not match the topic.
    DeviceTokenNotForTopic,
    /// 400: a header was repeated.
    DuplicateHeaders,
    /// 400: idle time out.
    IdleTimeout,
    /// 400: `apns-push-type` is bad.
    InvalidPushType,
    /// 400: no device token in the path.
    MissingDeviceToken,
    /// 400: `apns-topic` missing but required.
    MissingTopic,
    /// 400: the payload is empty.
    PayloadEmpty,
    /// 400: pushing to this topic is not allowed.
    TopicDisallowed,
    /// 403: the certificate is bad.
    BadCertificate,
    /// 403: the certificate is for the wrong environment.
    BadCertificateEnvironment,
    /// 403: the provider token is stale.
    ExpiredProviderToken,
    /// 403: the action is not allowed.
    Forbidden,
    /// 403: the provider token is not valid or its signature does not verify.
    InvalidProviderToken,
    /// 403: no certificate or provider token.
    MissingProviderToken,
    /// 403: the key cannot send to this team's topic.
    UnrelatedKeyIdInToken,
    /// 404: the path is bad.
    BadPath,
    /// 405: the method is not POST.
    MethodNotAllowed,
    /// 410: the device token expired.
    ExpiredToken,
    /// 410: the device token is inactive for the topic (app removed).
    Unregistered,
    /// 413: the payload is too large.
    PayloadTooLarge,
    /// 429: the provider token is being updated too often.
    TooManyProviderTokenUpdates,
    /// 429: too many requests to the same device token.
    TooManyRequests,
    /// 500: internal server error.
    InternalServerError,
    /// 503: the service is unavailable.
    ServiceUnavailable,
    /// 503: the APNs server is shutting down.
    Shutdown,
    /// A reason Apple added after this table was written.
    Other(String),
}

impl ApnsReason {
    /// Parses Apple's reason string.
    pub fn parse(reason: &str) -> ApnsReason {
        use ApnsReason::*;
        match reason {
            "BadCollapseId" => BadCollapseId,
            "BadDeviceToken" => BadDeviceToken,
            "BadExpirationDate" => BadExpirationDate,
            "BadMessageId" => BadMessageId,
            "BadPriority" => BadPriority,
            "BadTopic" => BadTopic,
            "DeviceTokenNotForTopic" => DeviceTokenNotForTopic,
            "DuplicateHeaders" => DuplicateHeaders,
            "IdleTimeout" => IdleTimeout,
            "InvalidPushType" => InvalidPushType,
            "MissingDeviceToken" => MissingDeviceToken,
            "MissingTopic" => MissingTopic,
            "PayloadEmpty" => PayloadEmpty,
            "TopicDisallowed" => TopicDisallowed,
            "BadCertificate" => BadCertificate,
            "BadCertificateEnvironment" => BadCertificateEnvironment,
            "ExpiredProviderToken" => ExpiredProviderToken,
            "Forbidden" => Forbidden,
            "InvalidProviderToken" => InvalidProviderToken,
            "MissingProviderToken" => MissingProviderToken,
            "UnrelatedKeyIdInToken" => UnrelatedKeyIdInToken,
            "BadPath" => BadPath,
            "MethodNotAllowed" => MethodNotAllowed,
            "ExpiredToken" => ExpiredToken,
            "Unregistered" => Unregistered,
            "PayloadTooLarge" => PayloadTooLarge,
            "TooManyProviderTokenUpdates" => TooManyProviderTokenUpdates,
            "TooManyRequests" => TooManyRequests,
            "InternalServerError" => InternalServerError,
            "ServiceUnavailable" => ServiceUnavailable,
            "Shutdown" => Shutdown,
            other => Other(other.to_string()),
        }
    }
}

/// The JSON body of an APNs error answer.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    /// Apple's reason string.
    #[serde(default)]
    pub reason: String,
    /// For 410: when the token stopped being valid, in ms since the epoch.
    #[serde(default)]
    pub timestamp: Option<u64>,
}

/// First retry delay when APNs says nothing (TooManyRequests is per device:
/// back off a little more than for a server error).
pub const TOO_MANY_REQUESTS_DELAY: Duration = Duration::from_secs(1);

/// Classifies an answer. `retry_after` is the parsed `Retry-After` header.
pub fn classify(status: u16, body: &ErrorBody, retry_after: Option<Duration>) -> Outcome {
    use ApnsReason::*;
    if status == 200 {
        return Outcome::Delivered;
    }
    let reason = ApnsReason::parse(&body.reason);
    let provider_reason = if body.reason.is_empty() {
        format!("HTTP {status}")
    } else {
        body.reason.clone()
    };
    let dead = |r: Reason| Outcome::TokenInvalid {
        reason: r,
        provider_reason: provider_reason.clone(),
        invalidated_at: body
            .timestamp
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .filter(|t| *t <= SystemTime::now() + Duration::from_secs(86_400)),
    };
    let retry = |after: Option<Duration>| Outcome::Retryable {
        after: retry_after.or(after),
        cause: RetryCause::Status {
            status,
            provider_reason: provider_reason.clone(),
        },
    };
    let reject = || Outcome::Rejected {
        reason: RejectReason::Provider {
            status,
            provider_reason: provider_reason.clone(),
        },
    };
    match reason {
        BadDeviceToken => dead(Reason::BadDeviceToken),
        DeviceTokenNotForTopic => dead(Reason::DeviceTokenNotForTopic),
        Unregistered => dead(Reason::Unregistered),
        ExpiredToken => dead(Reason::ExpiredToken),
        PayloadTooLarge => reject(),
        TooManyRequests => retry(Some(TOO_MANY_REQUESTS_DELAY)),
        ExpiredProviderToken
        | TooManyProviderTokenUpdates
        | InternalServerError
        | ServiceUnavailable
        | Shutdown
        | IdleTimeout => retry(None),
        BadCollapseId
        | BadExpirationDate
        | BadMessageId
        | BadPriority
        | BadTopic
        | DuplicateHeaders
        | InvalidPushType
        | MissingDeviceToken
        | MissingTopic
        | PayloadEmpty
        | TopicDisallowed
        | BadCertificate
        | BadCertificateEnvironment
        | Forbidden
        | InvalidProviderToken
        | MissingProviderToken
        | UnrelatedKeyIdInToken
        | BadPath
        | MethodNotAllowed => reject(),
        Other(_) => match status {
            410 => dead(Reason::Unspecified),
            429 | 500..=599 => retry(None),
            _ => reject(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, reason: &str) -> Outcome {
        classify(
            status,
            &ErrorBody {
                reason: reason.into(),
                timestamp: None,
            },
            None,
        )
    }

    fn is_dead(o: &Outcome, want: Reason) -> bool {
        matches!(o, Outcome::TokenInvalid { reason, .. } if *reason == want)
    }

    fn is_retry(o: &Outcome) -> bool {
        matches!(o, Outcome::Retryable { .. })
    }

    fn is_reject(o: &Outcome) -> bool {
        matches!(o, Outcome::Rejected { .. })
    }

    #[test]
    fn success() {
        assert_eq!(answer(200, ""), Outcome::Delivered);
    }

    #[test]
    fn dead_token_reasons() {
        assert!(is_dead(
            &answer(400, "BadDeviceToken"),
            Reason::BadDeviceToken
        ));
        assert!(is_dead(
            &answer(400, "DeviceTokenNotForTopic"),
            Reason::DeviceTokenNotForTopic
        ));
        assert!(is_dead(&answer(410, "Unregistered"), Reason::Unregistered));
        assert!(is_dead(&answer(410, "ExpiredToken"), Reason::ExpiredToken));
        assert!(is_dead(&answer(410, "SomethingNew"), Reason::Unspecified));
    }

    #[test]
    fn unregistered_carries_apples_timestamp() {
        let o = classify(
            410,
            &ErrorBody {
                reason: "Unregistered".into(),
                timestamp: Some(1_700_000_000_000),
            },
            None,
        );
        let Outcome::TokenInvalid {
            invalidated_at,
            provider_reason,
            ..
        } = o
        else {
            panic!("not dead: {o:?}");
        };
        assert_eq!(provider_reason, "Unregistered");
        assert_eq!(
            invalidated_at,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn rejected_reasons() {
        for (status, reason) in [
            (400, "BadCollapseId"),
            (400, "BadExpirationDate"),
            (400, "BadMessageId"),
            (400, "BadPriority"),
            (400, "BadTopic"),
            (400, "DuplicateHeaders"),
            (400, "InvalidPushType"),
            (400, "MissingDeviceToken"),
            (400, "MissingTopic"),
            (400, "PayloadEmpty"),
            (400, "TopicDisallowed"),
            (403, "BadCertificate"),
            (403, "BadCertificateEnvironment"),
            (403, "Forbidden"),
            (403, "InvalidProviderToken"),
            (403, "MissingProviderToken"),
            (403, "UnrelatedKeyIdInToken"),
            (404, "BadPath"),
            (405, "MethodNotAllowed"),
            (400, "SomethingNew"),
        ] {
            assert!(is_reject(&answer(status, reason)), "{status} {reason}");
        }
    }

    #[test]
    fn payload_too_large_is_rejected_as_such() {
        let Outcome::Rejected { reason } = answer(413, "PayloadTooLarge") else {
            panic!("rejected");
        };
        assert_eq!(reason.code().as_str(), "payload_too_large");
    }

    #[test]
    fn retryable_reasons() {
        for (status, reason) in [
            (403, "ExpiredProviderToken"),
            (429, "TooManyProviderTokenUpdates"),
            (429, "TooManyRequests"),
            (500, "InternalServerError"),
            (503, "ServiceUnavailable"),
            (503, "Shutdown"),
            (400, "IdleTimeout"),
            (502, "SomethingNew"),
            (429, "SomethingNew"),
            (500, ""),
        ] {
            assert!(is_retry(&answer(status, reason)), "{status} {reason}");
        }
    }

    #[test]
    fn too_many_requests_is_per_device_not_provider_level() {
        let Outcome::Retryable { cause, after } = answer(429, "TooManyRequests") else {
            panic!("retryable");
        };
        assert!(!cause.is_provider_level());
        assert_eq!(after, Some(TOO_MANY_REQUESTS_DELAY));
        let Outcome::Retryable { cause, .. } = answer(503, "ServiceUnavailable") else {
            panic!("retryable");
        };
        assert!(cause.is_provider_level());
    }

    #[test]
    fn retry_after_header_wins() {
        let o = classify(
            503,
            &ErrorBody {
                reason: "ServiceUnavailable".into(),
                timestamp: None,
            },
            Some(Duration::from_secs(7)),
        );
        assert!(
            matches!(o, Outcome::Retryable { after: Some(d), .. } if d == Duration::from_secs(7))
        );
    }
}
