//! The values of the worker's metric labels, as closed sets.
//!
//! Each enum here is one label's every value: a dashboard, an alert or a
//! test that names a value finds it here, and the code cannot count under a
//! misspelt label. Values are written in snake case (prometheus-client's
//! derive would write the variant names verbatim, so [`label_values!`]
//! implements `EncodeLabelValue` from the listed strings).

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use push_dispatch_proto::PushError;

/// Declares a label enum: its variants, each with its label value, `ALL`,
/// `as_str` and the `EncodeLabelValue` impl.
macro_rules! label_values {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $value:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values! {
    /// `result` of `push_dispatch_messages_total`: how a message was settled.
    pub enum MessageResult {
        /// Every target reached a final outcome; acked.
        Acked => "acked",
        /// Nacked for Pub/Sub to redeliver.
        Nacked => "nacked",
        /// The whole message went to the dead-letter topic; acked.
        DeadLettered => "dead_lettered",
        /// The request's ttl had elapsed; acked unsent.
        Expired => "expired",
        /// Retryable targets were republished as a new request; acked.
        Republished => "republished",
    }
}

label_values! {
    /// `outcome` of `push_dispatch_sends_total`: the provider's answer, or
    /// why the worker did not ask.
    pub enum SendOutcome {
        /// The provider accepted the push.
        Delivered => "delivered",
        /// The token is dead.
        TokenInvalid => "token_invalid",
        /// The provider (or the connection) said: not now.
        Retryable => "retryable",
        /// Refused for good.
        Rejected => "rejected",
        /// The ttl ran out before the send (not sent).
        Expired => "expired",
        /// The circuit was open (not sent).
        CircuitOpen => "circuit_open",
        /// The rate limit would have waited too long (not sent).
        RateLimited => "rate_limited",
        /// Every connection, or the credential, was in a failure backoff
        /// (not sent: the provider is unreachable for now).
        ProviderBackoff => "provider_backoff",
        /// Already final within `dedup.window` (not sent again).
        DuplicateSuppressed => "duplicate_suppressed",
        /// Another copy of the request held a pending claim (carried forward).
        ClaimedElsewhere => "claimed_elsewhere",
    }
}

label_values! {
    /// `window` of `push_dispatch_duplicate_risk_total`: which duplicate
    /// window of SPEC §5.4 an event falls in.
    pub enum DuplicateWindow {
        /// A request was written and its answer lost (timeout, broken
        /// connection): a retry may resend it.
        AnswerLost => "answer_lost",
        /// A remainder's republish was not confirmed: the message is nacked
        /// and its delivered targets will be sent again.
        RepublishFailed => "republish_failed",
        /// The shutdown grace ran out mid-message.
        GraceExceeded => "grace_exceeded",
        /// An exactly-once ack was not confirmed.
        AckUnconfirmed => "ack_unconfirmed",
    }
}

label_values! {
    /// `reason` of `push_dispatch_publish_failures_total`: what the
    /// unconfirmed publish was for.
    pub enum PublishPurpose {
        /// TokenInvalidated events.
        Feedback => "feedback",
        /// A dead letter.
        DeadLetter => "dead_letter",
        /// A republished remainder.
        Republish => "republish",
        /// A `PushResult` on `results.topic` (counted, never retried).
        Result => "result",
    }
}

label_values! {
    /// The `outcome` attribute of a `PushResult`: how the targets it lists
    /// ended, taken together.
    pub enum ResultOutcome {
        /// Every target it lists was delivered.
        Delivered => "delivered",
        /// Some were delivered, some not.
        Partial => "partial",
        /// None was delivered.
        Failed => "failed",
    }
}

label_values! {
    /// `kind` of `push_dispatch_acks_total`.
    pub enum AckKind {
        /// Confirmed by Pub/Sub (exactly-once subscriptions).
        Confirmed => "confirmed",
        /// Sent, unconfirmed by design (at-least-once).
        Sent => "sent",
    }
}

label_values! {
    /// `result` of `push_dispatch_token_refreshes_total`.
    pub enum RefreshResult {
        /// A credential was signed or fetched.
        Ok => "ok",
        /// Signing or fetching failed.
        Error => "error",
    }
}

/// A `push_error` code as a label value (`push_dispatch_dead_letters_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub PushError);

impl EncodeLabelValue for ErrorCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_snake_case_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for v in SendOutcome::ALL.iter().map(|o| o.as_str()).chain(
            MessageResult::ALL
                .iter()
                .map(|r| r.as_str())
                .chain(DuplicateWindow::ALL.iter().map(|w| w.as_str())),
        ) {
            assert!(v.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{v}");
            assert!(seen.insert(v) || v == "expired", "{v} twice");
        }
    }
}
