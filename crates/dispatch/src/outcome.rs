//! What became of one send: the per-target outcomes of SPEC §5.

use std::time::{Duration, SystemTime};

use push_dispatch_proto::PushError;
use push_dispatch_proto::v1::Reason;

/// The outcome of sending to one device.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The provider accepted the push.
    Delivered,
    /// The device token is dead: report it on the feedback topic.
    TokenInvalid {
        /// Normalised reason.
        reason: Reason,
        /// The provider's own reason string, e.g. `Unregistered`.
        provider_reason: String,
        /// When the provider says the token stopped being valid (APNs `timestamp`).
        invalidated_at: Option<SystemTime>,
    },
    /// Not now: try again later.
    Retryable {
        /// Provider's `Retry-After`, if it gave one.
        after: Option<Duration>,
        /// Why.
        cause: RetryCause,
    },
    /// The provider (or our own check) refuses this push for good.
    Rejected {
        /// Why.
        reason: RejectReason,
    },
}

/// Why a send may succeed later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryCause {
    /// The provider answered with this HTTP status (429, 5xx).
    Status {
        /// HTTP status code.
        status: u16,
        /// The provider's reason string.
        provider_reason: String,
    },
    /// No answer within `dispatch.request_timeout`.
    Timeout,
    /// The connection broke while the request was in flight: the provider
    /// may have delivered it.
    Connection,
    /// The provider provably never saw the request: HTTP/2 refused the
    /// stream (`REFUSED_STREAM`, or above the last stream id of a `GOAWAY`),
    /// or the request was still queued locally (never written) when its
    /// deadline passed or it was given up. A resend cannot duplicate the push.
    Unsent,
    /// A credential could not be obtained locally (the APNs key cannot sign
    /// a provider token, no FCM OAuth token, or the credential is in its
    /// failure backoff): nothing was sent.
    Credentials {
        /// What failed, without key material.
        problem: String,
    },
    /// No connection could be set up (TCP, TLS or the HTTP/2 handshake
    /// failed or did not complete in time), or the connection slot is in its
    /// failure backoff: nothing was sent.
    Connect {
        /// What failed.
        problem: String,
    },
    /// The provider said a quota is exceeded (FCM `QUOTA_EXCEEDED`).
    Quota {
        /// Whose quota.
        scope: QuotaScope,
        /// The provider's reason string.
        provider_reason: String,
    },
}

/// Which quota a provider said was exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaScope {
    /// One device's message rate: only that device must wait.
    Device,
    /// The sender's (project's) quota: every send of the app must slow down.
    Project,
}

impl RetryCause {
    /// Whether this failure is the provider's (opens circuits), not the device's.
    pub fn is_provider_level(&self) -> bool {
        match self {
            RetryCause::Status {
                status,
                provider_reason,
            } => *status >= 500 || provider_reason == "QUOTA_EXCEEDED",
            RetryCause::Timeout
            | RetryCause::Connection
            | RetryCause::Unsent
            | RetryCause::Credentials { .. }
            | RetryCause::Connect { .. } => true,
            RetryCause::Quota { scope, .. } => *scope == QuotaScope::Project,
        }
    }
}

/// Why a push is refused for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The payload is over the provider's limit (checked before sending).
    PayloadTooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The provider refused the request with this status and reason.
    Provider {
        /// HTTP status code.
        status: u16,
        /// The provider's reason string, e.g. `BadTopic`.
        provider_reason: String,
    },
    /// We cannot build a valid request for the provider from this push (a
    /// payload that does not encode, a header value the config makes
    /// invalid): it was not sent.
    Unsendable {
        /// What is wrong.
        problem: String,
    },
}

impl RejectReason {
    /// Short machine-readable code for `push_error`.
    pub fn code(&self) -> PushError {
        match self {
            RejectReason::PayloadTooLarge { .. } | RejectReason::Provider { status: 413, .. } => {
                PushError::PayloadTooLarge
            }
            RejectReason::Provider { .. } | RejectReason::Unsendable { .. } => {
                PushError::ProviderRejected
            }
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::PayloadTooLarge { bytes, max } => {
                write!(
                    f,
                    "payload is {bytes} bytes, over the provider's {max}-byte limit"
                )
            }
            RejectReason::Provider {
                status,
                provider_reason,
            } => write!(f, "provider refused the push: {status} {provider_reason}"),
            RejectReason::Unsendable { problem } => {
                write!(f, "cannot build a provider request: {problem}")
            }
        }
    }
}

impl Outcome {
    /// The metric label of this outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::TokenInvalid { .. } => "token_invalid",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Rejected { .. } => "rejected",
        }
    }
}
