//! The decisions of SPEC §5 as two pure steps, with no I/O and no metrics:
//!
//! 1. [`plan`]: once a message's sends are done, from the request, each
//!    target's result, the guard's verdicts and the message's context, what
//!    must be published before the ack: feedback events (§5.5), dead letters
//!    by error code (§5.2, §5.9), and which targets are still to be tried
//!    (§5.3).
//! 2. The [`Outbox`](crate::outbox::Outbox) publishes that and reports what
//!    Pub/Sub confirmed ([`OutboxReport`]).
//! 3. [`settle`]: from the plan and the report, how the message ends: ack,
//!    nack, or a further publish (a republished remainder, §5.4, or a dead
//!    letter of `retries_exhausted`) whose confirmation decides between two
//!    endings ([`Settlement`]).
//!
//! [`poison`] and [`hand_back`] settle a message that is never sent (bad
//! input; draining or nothing final). Every path that ends a message on its
//! last delivery attempt dead-letters it with a reason rather than nacking.
//!
//! With `results.topic` set, [`crate::results::with_results`] adds to a
//! settlement the publish of its `PushResult` before each ack; the plan
//! records for it what each target ends as ([`Plan::outcomes`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use push_dispatch_dispatch::Outcome;
use push_dispatch_feedback::{DeadToken, Sender, token_invalidated};
use push_dispatch_proto::v1::{Platform, PushRequest, TargetOutcome, TokenInvalidated};
use push_dispatch_proto::{PushError, TargetError};

use crate::context::MessageContext;
use crate::guard::{Verdict, is_suspicious};
use crate::labels::MessageResult;
use crate::results::{ResultLetter, Settled};
use crate::target::TargetResult;

/// Limits of the policy, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `pubsub.max_delivery_attempts`.
    pub max_delivery_attempts: i32,
    /// `dispatch.max_republish`.
    pub max_republish: u32,
    /// `dispatch.max_park`: longest wait a message is parked for.
    pub max_park: Duration,
    /// `dispatch.max_deferrals`: how often a request may be put off only to wait.
    pub max_deferrals: u32,
}

/// The shortest wait honoured for a known wait (a `Retry-After: 0`, or a
/// date in the past, still waits this much; the worker adds jitter).
pub const MIN_WAIT: Duration = Duration::from_secs(1);

/// A wait the carried targets must honour before their next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    /// The longest known wait among them, at least [`MIN_WAIT`].
    pub duration: Duration,
    /// The platform of the target that waits longest: a parked message
    /// takes one of that provider's park slots.
    pub platform: Platform,
}

/// Which targets a dead letter holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// The whole message, as received.
    All,
    /// A request holding only these targets (positions in the request).
    Only(Vec<usize>),
}

/// One message to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// `push_error`.
    pub code: PushError,
    /// What it holds.
    pub targets: Targets,
    /// `push_error_detail` (cut to 1 KiB when written).
    pub detail: String,
}

/// A publish that settles a message or part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Letter {
    /// To the dead-letter topic.
    DeadLetter(DeadLetter),
    /// The still-retryable targets as a new request on the requests topic
    /// (SPEC §5.4), with this `push_attempt`.
    Republish {
        /// Positions in the request.
        indices: Vec<usize>,
        /// The new request's `push_attempt`.
        push_attempt: u32,
        /// Not to be sent before now + this (`push_not_before`).
        wait: Option<Duration>,
        /// The new request's `push_deferrals`.
        deferrals: u32,
    },
    /// A `PushResult` to the results topic (only with `results.topic` set).
    Result(ResultLetter),
}

/// Why a message is nacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackCause {
    /// The worker was draining before it started the message (§5.7).
    NotStarted,
    /// No target reached a final outcome: Pub/Sub retries the whole message (§5.3).
    NothingFinal,
    /// A dead letter was not confirmed: the DeadLetterPolicy still catches it.
    DeadLetterUnconfirmed,
    /// A remainder's republish was not confirmed: the delivered targets will
    /// be sent again on redelivery (a duplicate window of §5.4).
    RepublishUnconfirmed,
    /// The message waited (parked, or its `push_not_before` is later than
    /// the worker parks for): Pub/Sub redelivers it after its backoff.
    Waited,
    /// Its `PushResult` was not confirmed and nothing was delivered or
    /// carried forward: a redelivery sends nothing twice.
    ResultUnconfirmed,
}

/// How a message ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Ack it.
    Ack(MessageResult),
    /// Nack it: Pub/Sub redelivers after the RetryPolicy backoff.
    Nack(NackCause),
    /// Park the message for `wait` (keep its lease) if one of `platform`'s
    /// park slots is free, then settle as `parked`; otherwise as `full`.
    Park {
        /// How long.
        wait: Wait,
        /// The ending after the wait.
        parked: Box<Settlement>,
        /// The ending when no park slot is free.
        full: Box<Settlement>,
    },
    /// Publish `letter`; then settle as `confirmed` or `unconfirmed`.
    Publish {
        /// What to publish.
        letter: Letter,
        /// The ending once Pub/Sub confirmed it.
        confirmed: Box<Settlement>,
        /// The ending if it did not.
        unconfirmed: Box<Settlement>,
    },
}

impl Settlement {
    fn publish(letter: Letter, confirmed: Settlement, unconfirmed: Settlement) -> Settlement {
        Settlement::Publish {
            letter,
            confirmed: Box::new(confirmed),
            unconfirmed: Box::new(unconfirmed),
        }
    }
}

/// The guard's verdict for each platform of the app (§5.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdicts {
    /// For APNs.
    pub apns: Verdict,
    /// For FCM.
    pub fcm: Verdict,
}

impl Verdicts {
    /// Report everything.
    pub const REPORT: Verdicts = Verdicts {
        apns: Verdict::Report,
        fcm: Verdict::Report,
    };

    fn of(self, platform: Platform) -> Verdict {
        match platform {
            Platform::Apns => self.apns,
            Platform::Fcm => self.fcm,
            Platform::Unspecified => Verdict::Report,
        }
    }
}

/// The app a request went to, as feedback events name it.
#[derive(Clone, Copy, Debug)]
pub struct AppIdentity<'a> {
    /// The app's name.
    pub name: &'a str,
    /// Its APNs sender, if it has APNs.
    pub apns: Option<&'a Sender>,
    /// Its FCM sender, if it has FCM.
    pub fcm: Option<&'a Sender>,
}

impl AppIdentity<'_> {
    fn sender(&self, platform: Platform) -> Option<&Sender> {
        match platform {
            Platform::Apns => self.apns,
            Platform::Fcm => self.fcm,
            Platform::Unspecified => None,
        }
    }
}

/// What must be published before the message can be acked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Feedback events, one per dead token, with the target they report.
    pub events: Vec<(usize, TokenInvalidated)>,
    /// Dead letters, one per `push_error` code, in code order.
    pub dead_letters: Vec<DeadLetter>,
    /// Targets to try again (carried forward), in request order.
    pub retry: Vec<usize>,
    /// How many targets are final already (delivered, expired).
    pub finals: usize,
    /// The wait the targets to retry must honour, if any is known.
    pub wait: Option<Wait>,
    /// Whether every target to retry was held back only to wait (rate
    /// limit, open circuit, 429): no failure, so no attempt is used up.
    pub only_waiting: bool,
    /// For results: what each target ends as once its publish (feedback,
    /// dead letter) is confirmed — delivered, expired, token invalid,
    /// rejected — in the order met. Targets dead-lettered for another
    /// reason are not listed (their dead letter's code says it).
    pub outcomes: Vec<Settled>,
    /// For results: sends to the provider per target (answered: 1; the
    /// provider's in-process retries are not seen here). Absent: not sent.
    pub attempts: BTreeMap<usize, u32>,
}

impl Plan {
    /// Puts the provider requests each target really cost (in-process
    /// retries included) in place of the plan's own count, which only knows
    /// whether the provider answered.
    pub fn count_attempts(&mut self, attempts: &BTreeMap<usize, u32>) {
        for (index, n) in self.attempts.iter_mut() {
            if let Some(&real) = attempts.get(index) {
                *n = real;
            }
        }
        for s in &mut self.outcomes {
            if s.attempts > 0
                && let Some(&real) = attempts.get(&s.index)
            {
                s.attempts = real;
            }
        }
    }
}

/// What the Outbox confirmed of a [`Plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxReport {
    /// Whether every feedback event was confirmed (true when there were none).
    pub feedback_confirmed: bool,
    /// Per dead letter of the plan, in order: confirmed?
    pub dead_letters_confirmed: Vec<bool>,
}

impl OutboxReport {
    /// Everything confirmed.
    pub fn all_confirmed(plan: &Plan) -> OutboxReport {
        OutboxReport {
            feedback_confirmed: true,
            dead_letters_confirmed: vec![true; plan.dead_letters.len()],
        }
    }
}

/// Plans what a message's results call for. `sent` holds each sendable
/// target's position and result; `rejected` the targets that alone were
/// invalid (§5.2); `observed` is the time feedback events give as observed.
pub fn plan(
    request: &PushRequest,
    rejected: &[TargetError],
    sent: &[(usize, TargetResult)],
    verdicts: Verdicts,
    app: AppIdentity<'_>,
    ctx: &MessageContext<'_>,
    observed: SystemTime,
) -> Plan {
    let mut dead: BTreeMap<PushError, (Vec<usize>, Vec<String>)> = BTreeMap::new();
    let mut add = |code: PushError, index: usize, detail: String| {
        let part = dead.entry(code).or_default();
        part.0.push(index);
        part.1.push(detail);
    };
    let mut plan = Plan::default();
    for e in rejected {
        add(e.code(), e.index(), e.to_string());
        plan.outcomes.push(Settled {
            index: e.index(),
            outcome: TargetOutcome::Rejected,
            reason: e.code().as_str().to_string(),
            attempts: 0,
            at: Some(observed),
        });
    }
    let mut waiting = true;
    let mut reported = std::collections::HashSet::new();
    for (index, result) in sent {
        let index = *index;
        let attempts = u32::from(matches!(result, TargetResult::Answered(_)));
        if attempts > 0 {
            plan.attempts.insert(index, attempts);
        }
        let settled = |outcome: TargetOutcome, reason: &str| Settled {
            index,
            outcome,
            reason: reason.to_string(),
            attempts,
            at: Some(observed),
        };
        if result.is_final_as_is() {
            plan.finals += 1;
            let outcome = match result {
                TargetResult::Answered(_) => TargetOutcome::Delivered,
                TargetResult::NotSent(crate::target::NotSent::Duplicate) => {
                    TargetOutcome::DuplicateSuppressed
                }
                TargetResult::NotSent(_) => TargetOutcome::Expired,
            };
            plan.outcomes.push(settled(outcome, ""));
            continue;
        }
        if result.is_retryable() {
            plan.retry.push(index);
            waiting &= result.is_only_waiting();
            if let Some(w) = result.wait() {
                let w = w.max(MIN_WAIT);
                if plan.wait.is_none_or(|current| w > current.duration) {
                    plan.wait = Some(Wait {
                        duration: w,
                        platform: request.targets[index].platform(),
                    });
                }
            }
            continue;
        }
        let TargetResult::Answered(outcome) = result else {
            continue;
        };
        let target = &request.targets[index];
        let platform = target.platform();
        match outcome {
            Outcome::TokenInvalid {
                reason,
                provider_reason,
                invalidated_at,
            } => {
                let sender = app.sender(platform);
                match sender {
                    Some(_) if is_suspicious(*reason) && verdicts.of(platform) == Verdict::Hold => {
                        // Held by the guard: dead-letter instead of reporting.
                        add(
                            PushError::InvalidationGuard,
                            index,
                            format!(
                                "target {index}: {provider_reason} ({}) held by the mass-invalidation guard; invalidated_at {invalidated_at:?}",
                                reason.as_str_name()
                            ),
                        );
                    }
                    Some(sender) => {
                        plan.outcomes
                            .push(settled(TargetOutcome::TokenInvalid, provider_reason));
                        // A token listed twice is reported once.
                        if reported.insert((platform, target.token.as_str())) {
                            let dead = DeadToken {
                                token: &target.token,
                                reason: *reason,
                                provider_reason,
                                invalidated_at: *invalidated_at,
                            };
                            plan.events.push((
                                index,
                                token_invalidated(
                                    app.name,
                                    sender,
                                    dead,
                                    request,
                                    &ctx.source_message_id,
                                    observed,
                                ),
                            ));
                        }
                    }
                    // Validation guarantees a sender; keep the target rather than lose it.
                    None => plan.retry.push(index),
                }
            }
            Outcome::Rejected { reason } => {
                add(reason.code(), index, format!("target {index}: {reason}"));
                let (why, attempts) = match reason {
                    push_dispatch_dispatch::RejectReason::Provider {
                        provider_reason, ..
                    } => (provider_reason.as_str(), attempts),
                    // Refused before it was sent.
                    _ => (reason.code().as_str(), 0),
                };
                plan.outcomes.push(Settled {
                    attempts,
                    ..settled(TargetOutcome::Rejected, why)
                });
            }
            Outcome::Delivered | Outcome::Retryable { .. } => {}
        }
    }
    plan.only_waiting = waiting && !plan.retry.is_empty();
    plan.dead_letters = dead
        .into_iter()
        .map(|(code, (indices, details))| DeadLetter {
            code,
            targets: Targets::Only(indices),
            detail: details.join("; "),
        })
        .collect();
    plan
}

/// Settles a message from its plan and what the Outbox confirmed.
///
/// Targets whose feedback or dead letter was not confirmed are carried
/// forward with the retryable ones (resending to a dead token is harmless;
/// resending to a delivered one is not). Nothing left: ack. Nothing final:
/// hand the whole message back. Otherwise the rest is republished as a new
/// request, or dead-lettered past `dispatch.max_republish`.
pub fn settle(
    plan: &Plan,
    report: &OutboxReport,
    ctx: &MessageContext<'_>,
    policy: Policy,
) -> Settlement {
    let mut finals = plan.finals;
    let mut carry = plan.retry.clone();
    if !plan.events.is_empty() {
        if report.feedback_confirmed {
            finals += plan.events.len();
        } else {
            carry.extend(plan.events.iter().map(|(i, _)| *i));
        }
    }
    for (i, letter) in plan.dead_letters.iter().enumerate() {
        let Targets::Only(indices) = &letter.targets else {
            continue;
        };
        if report
            .dead_letters_confirmed
            .get(i)
            .copied()
            .unwrap_or(false)
        {
            finals += indices.len();
        } else {
            carry.extend(indices);
        }
    }
    if carry.is_empty() {
        return Settlement::Ack(MessageResult::Acked);
    }
    // Only the targets held back to wait are carried: nothing failed.
    let only_waiting = plan.only_waiting && carry.len() == plan.retry.len();
    carry.sort_unstable();
    carry.dedup();

    if finals == 0 {
        // §5.3 nothing reached a final outcome: Pub/Sub retries the whole
        // message, after the wait if one is known.
        let Some(wait) = plan.wait else {
            return hand_back(ctx, policy, NackCause::NothingFinal);
        };
        if ctx.is_last_attempt(policy.max_delivery_attempts) {
            if !only_waiting {
                return hand_back(ctx, policy, NackCause::NothingFinal);
            }
            // A wait is no failure: put it off rather than dead-letter it.
            let whole = exhausted_whole(ctx, policy);
            return carry_forward(carry, Some(wait), true, ctx, policy, whole);
        }
        let unconfirmed = Settlement::Nack(NackCause::RepublishUnconfirmed);
        let carried = carry_forward(carry, Some(wait), only_waiting, ctx, policy, unconfirmed);
        if wait.duration <= policy.max_park {
            return Settlement::Park {
                wait,
                parked: Box::new(Settlement::Nack(NackCause::Waited)),
                full: Box::new(carried),
            };
        }
        return carried;
    }

    // §5.4 some targets are final: carry the rest forward in a new request so
    // that the delivered ones are not sent again (not before the wait, if
    // one is known; only a known wait is accounted as a deferral).
    let only_waiting = only_waiting && plan.wait.is_some();
    let unconfirmed = if ctx.is_last_attempt(policy.max_delivery_attempts) {
        // Nacking now would let Pub/Sub dead-letter the whole message
        // without a reason; dead-letter only what is left instead.
        let detail = format!(
            "targets still {} on delivery attempt {} and their republish was not confirmed",
            if only_waiting { "waiting" } else { "failing" },
            policy.max_delivery_attempts
        );
        Settlement::publish(
            exhausted(&carry, detail),
            Settlement::Ack(MessageResult::Acked),
            Settlement::Nack(NackCause::RepublishUnconfirmed),
        )
    } else {
        Settlement::Nack(NackCause::RepublishUnconfirmed)
    };
    carry_forward(carry, plan.wait, only_waiting, ctx, policy, unconfirmed)
}

/// A dead letter of `retries_exhausted` holding `carry`.
fn exhausted(carry: &[usize], detail: String) -> Letter {
    Letter::DeadLetter(DeadLetter {
        code: PushError::RetriesExhausted,
        targets: Targets::Only(carry.to_vec()),
        detail,
    })
}

/// The whole message dead-lettered as `retries_exhausted` because a
/// deferral could not be published on its last delivery attempt.
fn exhausted_whole(ctx: &MessageContext<'_>, policy: Policy) -> Settlement {
    poison(
        PushError::RetriesExhausted,
        format!(
            "still waiting on the last delivery attempt ({} of {}) and its deferral was not confirmed",
            ctx.delivery_attempt.unwrap_or_default(),
            policy.max_delivery_attempts
        ),
    )
}

/// Carries `carry` forward in a republished request, not to be tried before
/// `wait` (`push_not_before`) when one is known. A carry that only waited
/// keeps its `push_attempt` and counts a deferral (dead-lettered past
/// `dispatch.max_deferrals`); one that failed uses up a republish
/// (dead-lettered past `dispatch.max_republish`). `unconfirmed` is the
/// ending when Pub/Sub does not confirm the republish.
fn carry_forward(
    carry: Vec<usize>,
    wait: Option<Wait>,
    only_waiting: bool,
    ctx: &MessageContext<'_>,
    policy: Policy,
    unconfirmed: Settlement,
) -> Settlement {
    let (push_attempt, deferrals) = if only_waiting {
        (ctx.push_attempt, ctx.deferrals.saturating_add(1))
    } else {
        (ctx.push_attempt.saturating_add(1), ctx.deferrals)
    };
    let given_up = if only_waiting && deferrals > policy.max_deferrals {
        Some(format!(
            "targets put off {} times only to wait (rate limit, open circuit or Retry-After; dispatch.max_deferrals {})",
            ctx.deferrals, policy.max_deferrals
        ))
    } else if !only_waiting && push_attempt > policy.max_republish {
        Some(format!(
            "targets still failing at push_attempt {} (dispatch.max_republish {}: the original and {} republished remainders)",
            ctx.push_attempt,
            policy.max_republish,
            ctx.push_attempt.saturating_sub(1)
        ))
    } else {
        None
    };
    if let Some(detail) = given_up {
        return Settlement::publish(
            exhausted(&carry, detail),
            Settlement::Ack(MessageResult::Acked),
            Settlement::Nack(NackCause::DeadLetterUnconfirmed),
        );
    }
    Settlement::publish(
        Letter::Republish {
            indices: carry,
            push_attempt,
            wait: wait.map(|w| w.duration),
            deferrals,
        },
        Settlement::Ack(MessageResult::Republished),
        unconfirmed,
    )
}

/// Hands back a message that must wait `wait` before it is sent (its
/// `push_not_before` lies beyond what the worker parks for, no park slot is
/// free, or the worker drains while it is parked): nacked, so that Pub/Sub
/// redelivers it after its backoff; on its last delivery attempt it is put
/// off instead (republished with `push_deferrals` + 1 and the same
/// `push_attempt`), never dead-lettered for a wait — past
/// `dispatch.max_deferrals` it is.
pub fn wait_hand_back(
    ctx: &MessageContext<'_>,
    policy: Policy,
    targets: usize,
    wait: Wait,
) -> Settlement {
    if !ctx.is_last_attempt(policy.max_delivery_attempts) {
        return Settlement::Nack(NackCause::Waited);
    }
    let whole = exhausted_whole(ctx, policy);
    carry_forward((0..targets).collect(), Some(wait), true, ctx, policy, whole)
}

/// Settles a message that cannot be a request at all (SPEC §5.2): the whole
/// message to the dead-letter topic, acked once confirmed; nacked otherwise
/// (the DeadLetterPolicy catches it).
pub fn poison(code: PushError, detail: String) -> Settlement {
    Settlement::publish(
        Letter::DeadLetter(DeadLetter {
            code,
            targets: Targets::All,
            detail,
        }),
        Settlement::Ack(MessageResult::DeadLettered),
        Settlement::Nack(NackCause::DeadLetterUnconfirmed),
    )
}

/// Hands the message back to Pub/Sub (nack; the RetryPolicy backs off),
/// except on its last delivery attempt: then it is dead-lettered with
/// `push_error=retries_exhausted`, so that every dead letter carries a
/// reason (SPEC §5.3).
pub fn hand_back(ctx: &MessageContext<'_>, policy: Policy, why: NackCause) -> Settlement {
    if !ctx.is_last_attempt(policy.max_delivery_attempts) {
        return Settlement::Nack(why);
    }
    let what = match why {
        NackCause::NotStarted => "the worker was shutting down",
        _ => "no target reached a final outcome",
    };
    poison(
        PushError::RetriesExhausted,
        format!(
            "{what} on the last delivery attempt ({} of {})",
            ctx.delivery_attempt.unwrap_or_default(),
            policy.max_delivery_attempts
        ),
    )
}

#[cfg(test)]
mod tests;
