//! What became of one target in this message: the provider's answer, or
//! why the worker did not ask it.
//!
//! The provider's [`Outcome`] is a fact about the provider; the worker's own
//! reasons for not sending (the ttl ran out, the circuit is open, the rate
//! limit would wait too long, the worker is draining) are a separate type,
//! so that nothing fed to the circuit or the guard has to filter them out.

use std::time::Duration;

use push_dispatch_dispatch::{Outcome, RetryCause};

use crate::labels::SendOutcome;

/// What became of one target.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetResult {
    /// The provider answered (after any in-process retries): its last answer.
    Answered(Outcome),
    /// The worker did not send it.
    NotSent(NotSent),
}

/// Why the worker did not send a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotSent {
    /// The request's `ttl` ran out (SPEC §5.6): final, counted as expired.
    Expired,
    /// The circuit of this provider and app is open (SPEC §5.8): carried
    /// forward, not before it may close.
    CircuitOpen {
        /// Until the circuit lets a request through again.
        wait: Duration,
    },
    /// The provider is stuck: every connection, or its credential, is in a
    /// failure backoff, so a send would fail at once. Handed back without
    /// queueing for a send slot.
    Backoff {
        /// Until the next connection or credential attempt.
        wait: Duration,
    },
    /// This pod's rate limit would have made it wait longer than
    /// `dispatch.max_in_process_wait`: carried forward.
    RateLimited {
        /// How long the rate limit would have made it wait.
        wait: Duration,
    },
    /// The worker is draining and did not send it: carried forward.
    ShuttingDown,
    /// Already final within `dedup.window` (another copy of the request
    /// delivered it, reported it or dead-lettered it): final, not sent again.
    Duplicate,
    /// Another copy of the request holds a pending claim on it: carried
    /// forward, never suppressed (that copy may still fail).
    ClaimedElsewhere {
        /// Until that claim expires.
        wait: Duration,
    },
}

impl TargetResult {
    /// Whether the target is final without any publish (delivered, or expired).
    pub fn is_final_as_is(&self) -> bool {
        matches!(
            self,
            TargetResult::Answered(Outcome::Delivered)
                | TargetResult::NotSent(NotSent::Expired | NotSent::Duplicate)
        )
    }

    /// Whether the target must be tried again later (carried forward).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TargetResult::Answered(Outcome::Retryable { .. })
                | TargetResult::NotSent(
                    NotSent::CircuitOpen { .. }
                        | NotSent::Backoff { .. }
                        | NotSent::RateLimited { .. }
                        | NotSent::ClaimedElsewhere { .. }
                        | NotSent::ShuttingDown
                )
        )
    }

    /// How long a carried target must wait before its next attempt, when
    /// known: the provider's `Retry-After`, the rate limit's wait, the rest of
    /// an open circuit or of a connection or credential backoff.
    pub fn wait(&self) -> Option<Duration> {
        match self {
            TargetResult::Answered(Outcome::Retryable { after, .. }) => *after,
            TargetResult::NotSent(
                NotSent::CircuitOpen { wait }
                | NotSent::Backoff { wait }
                | NotSent::RateLimited { wait }
                | NotSent::ClaimedElsewhere { wait },
            ) => Some(*wait),
            _ => None,
        }
    }

    /// Whether the target was held back only to wait — this pod's rate
    /// limit, an open circuit, or the provider's 429 — rather than by a
    /// failure. Such waits use up neither `dispatch.max_republish` nor
    /// delivery attempts (they count as deferrals).
    pub fn is_only_waiting(&self) -> bool {
        match self {
            TargetResult::NotSent(
                NotSent::CircuitOpen { .. }
                | NotSent::RateLimited { .. }
                | NotSent::ClaimedElsewhere { .. },
            ) => true,
            TargetResult::Answered(Outcome::Retryable { cause, .. }) => matches!(
                cause,
                RetryCause::Quota { .. } | RetryCause::Status { status: 429, .. }
            ),
            _ => false,
        }
    }
}

/// The `outcome` label of a provider's answer.
pub fn outcome_label(outcome: &Outcome) -> SendOutcome {
    match outcome {
        Outcome::Delivered => SendOutcome::Delivered,
        Outcome::TokenInvalid { .. } => SendOutcome::TokenInvalid,
        Outcome::Retryable { .. } => SendOutcome::Retryable,
        Outcome::Rejected { .. } => SendOutcome::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_and_retryable_are_exclusive_and_cover_what_needs_no_publish() {
        let retry = TargetResult::Answered(Outcome::Retryable {
            after: None,
            cause: RetryCause::Timeout,
        });
        assert!(retry.is_retryable() && !retry.is_final_as_is());
        for r in [
            TargetResult::Answered(Outcome::Delivered),
            TargetResult::NotSent(NotSent::Expired),
        ] {
            assert!(r.is_final_as_is() && !r.is_retryable(), "{r:?}");
        }
        for n in [
            NotSent::CircuitOpen {
                wait: Duration::from_secs(1),
            },
            NotSent::ShuttingDown,
            NotSent::RateLimited {
                wait: Duration::from_secs(1),
            },
        ] {
            let r = TargetResult::NotSent(n);
            assert!(r.is_retryable() && !r.is_final_as_is(), "{r:?}");
        }
    }
}
