//! The answers the APNs stand-in gives besides 200: Apple's reasons (plus
//! the sandbox's own `BadPayload`), each with its status, its JSON body and
//! its stats label (`"410 Unregistered"`).

use http::StatusCode;

macro_rules! reasons {
    ($($name:ident => $status:ident $code:literal,)*) => {
        /// Apple's error reasons the sandbox answers (plus `BadPayload`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Reason { $($name,)* }

        impl Reason {
            /// Every reason, in discriminant order.
            pub(crate) const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            pub(crate) fn status(self) -> StatusCode {
                match self { $(Reason::$name => StatusCode::$status,)* }
            }

            /// `"<status> <reason>"`, the stats label.
            pub(crate) const fn label(self) -> &'static str {
                match self { $(Reason::$name => concat!($code, " ", stringify!($name)),)* }
            }

            /// Where [`LABELS`] holds this reason's label.
            pub(crate) fn index(self) -> usize {
                1 + self as usize
            }

            /// `{"reason": "<name>"}`, the answer's body.
            pub(crate) fn body(self) -> &'static str {
                match self { $(Reason::$name => concat!("{\"reason\":\"", stringify!($name), "\"}"),)* }
            }
        }
    };
}

reasons! {
    BadCollapseId => BAD_REQUEST "400",
    BadDeviceToken => BAD_REQUEST "400",
    BadExpirationDate => BAD_REQUEST "400",
    BadMessageId => BAD_REQUEST "400",
    BadPriority => BAD_REQUEST "400",
    BadTopic => BAD_REQUEST "400",
    DeviceTokenNotForTopic => BAD_REQUEST "400",
    DuplicateHeaders => BAD_REQUEST "400",
    InvalidPushType => BAD_REQUEST "400",
    MissingDeviceToken => BAD_REQUEST "400",
    MissingTopic => BAD_REQUEST "400",
    PayloadEmpty => BAD_REQUEST "400",
    BadPayload => BAD_REQUEST "400",
    ExpiredProviderToken => FORBIDDEN "403",
    InvalidProviderToken => FORBIDDEN "403",
    MissingProviderToken => FORBIDDEN "403",
    BadPath => NOT_FOUND "404",
    MethodNotAllowed => METHOD_NOT_ALLOWED "405",
    Unregistered => GONE "410",
    PayloadTooLarge => PAYLOAD_TOO_LARGE "413",
    TooManyProviderTokenUpdates => TOO_MANY_REQUESTS "429",
    TooManyRequests => TOO_MANY_REQUESTS "429",
    InternalServerError => INTERNAL_SERVER_ERROR "500",
    ServiceUnavailable => SERVICE_UNAVAILABLE "503",
}

/// The stats labels: `"200"`, then one per reason in [`Reason::ALL`] order.
pub(crate) const LABELS: &[&str] = &labels();

const fn labels() -> [&'static str; Reason::ALL.len() + 1] {
    let mut out = ["200"; Reason::ALL.len() + 1];
    let mut i = 0;
    while i < Reason::ALL.len() {
        out[i + 1] = Reason::ALL[i].label();
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_carry_status_and_reason() {
        assert_eq!(Reason::Unregistered.label(), "410 Unregistered");
        assert_eq!(Reason::Unregistered.status(), StatusCode::GONE);
        assert_eq!(Reason::BadTopic.body(), r#"{"reason":"BadTopic"}"#);
        assert_eq!(
            Reason::ALL[Reason::ServiceUnavailable as usize],
            Reason::ServiceUnavailable
        );
    }

    #[test]
    fn labels_are_in_index_order() {
        assert_eq!(LABELS[0], "200");
        for reason in Reason::ALL {
            assert_eq!(LABELS[reason.index()], reason.label());
        }
    }
}
