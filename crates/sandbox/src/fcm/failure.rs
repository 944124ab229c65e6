//! The answers the FCM stand-in gives besides 200: each [`Failure`] with its
//! HTTP status, google.rpc status, FCM `errorCode` and stats label, and a
//! [`Rejection`] (a failure with its message and, for payload errors, the
//! offending field).

use std::borrow::Cow;

use http::StatusCode;

/// Every non-200 outcome the FCM stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Unauthenticated,
    PermissionDenied,
    NotFound,
    InvalidArgument,
    InvalidToken,
    Unregistered,
    SenderIdMismatch,
    /// The project's quota (`quota-`).
    QuotaExceeded,
    /// One device's message rate (`quota-device-`): the same 429
    /// `QUOTA_EXCEEDED`, told apart by its message and `QuotaFailure`.
    DeviceQuotaExceeded,
    Unavailable,
    Internal,
}

impl Failure {
    /// Every failure, in discriminant order.
    pub(crate) const ALL: &'static [Failure] = &[
        Failure::Unauthenticated,
        Failure::PermissionDenied,
        Failure::NotFound,
        Failure::InvalidArgument,
        Failure::InvalidToken,
        Failure::Unregistered,
        Failure::SenderIdMismatch,
        Failure::QuotaExceeded,
        Failure::DeviceQuotaExceeded,
        Failure::Unavailable,
        Failure::Internal,
    ];

    pub(super) fn status(self) -> StatusCode {
        match self {
            Failure::Unauthenticated => StatusCode::UNAUTHORIZED,
            Failure::PermissionDenied | Failure::SenderIdMismatch => StatusCode::FORBIDDEN,
            Failure::NotFound | Failure::Unregistered => StatusCode::NOT_FOUND,
            Failure::InvalidArgument | Failure::InvalidToken => StatusCode::BAD_REQUEST,
            Failure::QuotaExceeded | Failure::DeviceQuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            Failure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The google.rpc status name.
    pub(super) fn rpc_status(self) -> &'static str {
        match self {
            Failure::Unauthenticated => "UNAUTHENTICATED",
            Failure::PermissionDenied | Failure::SenderIdMismatch => "PERMISSION_DENIED",
            Failure::NotFound | Failure::Unregistered => "NOT_FOUND",
            Failure::InvalidArgument | Failure::InvalidToken => "INVALID_ARGUMENT",
            Failure::QuotaExceeded | Failure::DeviceQuotaExceeded => "RESOURCE_EXHAUSTED",
            Failure::Unavailable => "UNAVAILABLE",
            Failure::Internal => "INTERNAL",
        }
    }

    /// The FcmError `errorCode`, for failures FCM itself reports.
    pub(super) fn error_code(self) -> Option<&'static str> {
        match self {
            Failure::Unauthenticated | Failure::PermissionDenied | Failure::NotFound => None,
            Failure::InvalidArgument | Failure::InvalidToken => Some("INVALID_ARGUMENT"),
            Failure::Unregistered => Some("UNREGISTERED"),
            Failure::SenderIdMismatch => Some("SENDER_ID_MISMATCH"),
            Failure::QuotaExceeded | Failure::DeviceQuotaExceeded => Some("QUOTA_EXCEEDED"),
            Failure::Unavailable => Some("UNAVAILABLE"),
            Failure::Internal => Some("INTERNAL"),
        }
    }

    pub(super) fn default_message(self) -> &'static str {
        match self {
            Failure::Unauthenticated => {
                "Request had invalid authentication credentials. Expected OAuth 2 access token, \
                 login cookie or other valid authentication credential. See \
                 https://developers.google.com/identity/sign-in/web/devconsole-project."
            }
            Failure::PermissionDenied => "Request had insufficient authentication scopes.",
            Failure::NotFound => "Method not found.",
            Failure::InvalidArgument => "Request contains an invalid argument.",
            Failure::InvalidToken => "The registration token is not a valid FCM registration token",
            Failure::Unregistered => "Requested entity was not found.",
            Failure::SenderIdMismatch => "SenderId mismatch",
            Failure::QuotaExceeded => "Quota exceeded for sending messages.",
            Failure::DeviceQuotaExceeded => "Device message rate exceeded.",
            Failure::Unavailable => "The service is currently unavailable.",
            Failure::Internal => "Internal error encountered.",
        }
    }

    /// The `google.rpc.QuotaFailure` violation (subject, description) of a
    /// quota answer that names whose quota it is.
    pub(super) fn quota_violation(self) -> Option<(&'static str, &'static str)> {
        match self {
            Failure::DeviceQuotaExceeded => Some(("device", "Device message rate exceeded.")),
            _ => None,
        }
    }

    /// Where [`LABELS`] holds this failure's label.
    pub(crate) fn index(self) -> usize {
        1 + self as usize
    }

    /// `"<status> <errorCode or status>"`, the stats label.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Failure::Unauthenticated => "401 UNAUTHENTICATED",
            Failure::PermissionDenied => "403 PERMISSION_DENIED",
            Failure::NotFound => "404 NOT_FOUND",
            Failure::InvalidArgument => "400 INVALID_ARGUMENT",
            Failure::InvalidToken => "400 INVALID_ARGUMENT (token)",
            Failure::Unregistered => "404 UNREGISTERED",
            Failure::SenderIdMismatch => "403 SENDER_ID_MISMATCH",
            Failure::QuotaExceeded => "429 QUOTA_EXCEEDED",
            Failure::DeviceQuotaExceeded => "429 QUOTA_EXCEEDED (device)",
            Failure::Unavailable => "503 UNAVAILABLE",
            Failure::Internal => "500 INTERNAL",
        }
    }
}

/// The stats labels: `"200"`, then one per failure in [`Failure::ALL`] order.
pub(crate) const LABELS: &[&str] = &labels();

const fn labels() -> [&'static str; Failure::ALL.len() + 1] {
    let mut out = ["200"; Failure::ALL.len() + 1];
    let mut i = 0;
    while i < Failure::ALL.len() {
        out[i + 1] = Failure::ALL[i].label();
        i += 1;
    }
    out
}

/// A failure with its message and, for payload errors, the offending field.
#[derive(Debug)]
pub(super) struct Rejection {
    pub failure: Failure,
    pub message: Cow<'static, str>,
    pub field: Option<String>,
}

impl From<Failure> for Rejection {
    fn from(failure: Failure) -> Self {
        Rejection {
            failure,
            message: Cow::Borrowed(failure.default_message()),
            field: None,
        }
    }
}

pub(super) fn invalid(field: impl Into<String>, message: String) -> Rejection {
    Rejection {
        failure: Failure::InvalidArgument,
        message: Cow::Owned(message),
        field: Some(field.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_in_index_order() {
        assert_eq!(LABELS[0], "200");
        assert_eq!(LABELS.len(), Failure::ALL.len() + 1);
        for failure in Failure::ALL {
            assert_eq!(LABELS[failure.index()], failure.label());
        }
        assert_eq!(
            Failure::InvalidToken.label(),
            "400 INVALID_ARGUMENT (token)"
        );
    }
}
