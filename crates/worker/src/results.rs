//! Delivery results for producers (`results.topic`): one `push.v1.PushResult`
//! per settlement of a request, listing the targets that settlement made
//! final. Pure, like [`crate::plan`]:
//!
//! * [`ResultBasis`] is what a message's targets ended as before its
//!   settlement's own publishes: from a [`Plan`] and what the Outbox
//!   confirmed of it ([`ResultBasis::of_plan`]), or nothing (a request never
//!   sent: [`ResultBasis::unsent`]), or every target expired
//!   ([`ResultBasis::expired`]).
//! * [`with_results`] walks a [`Settlement`] and puts, before every ack, a
//!   publish of the result that ack settles ([`Letter::Result`]): the
//!   targets final on that path (dead letters confirmed on the way count;
//!   a confirmed republish makes it incomplete). Its confirmed ending is the
//!   ack; its unconfirmed one is the same ack (counted as a publish
//!   failure, never a resend) unless nothing was delivered or carried
//!   forward and this is not the last delivery attempt: then a nack, since
//!   a retry sends nothing twice.
//! * [`push_result`], [`encode`] and [`attributes`] build the message itself.
//!
//! With `results.topic` unset the worker never calls [`with_results`]: no
//! publish, no cost.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use push_dispatch_feedback::timestamp;
use push_dispatch_proto::v1::{PushRequest, PushResult, TargetOutcome};
use push_dispatch_proto::{Encoding, PushError, encode_message};

use crate::context::MessageContext;
use crate::labels::ResultOutcome;
use crate::plan::{DeadLetter, Letter, NackCause, OutboxReport, Plan, Policy, Settlement, Targets};

/// The `event_type` attribute of every result.
pub const EVENT_TYPE: &str = "push.v1.PushResult";

/// One target made final, as a result reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// Its position in the request.
    pub index: usize,
    /// What it ended as.
    pub outcome: TargetOutcome,
    /// The provider's reason string or the `push_error` code; empty when
    /// delivered or expired.
    pub reason: String,
    /// Sends to the provider during this delivery (0: not sent).
    pub attempts: u32,
    /// When the outcome was known; `None`: when the result is published
    /// (a dead letter of the settlement itself).
    pub at: Option<SystemTime>,
}

/// The result a settlement publishes before its ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultLetter {
    /// The targets this settlement made final, in request order.
    pub targets: Vec<Settled>,
    /// Nothing of the request was carried forward.
    pub complete: bool,
}

/// The request-level `outcome` attribute of a result: `delivered` when
/// every target it lists was delivered, `failed` when none was, `partial`
/// otherwise.
pub fn outcome(result: &PushResult) -> ResultOutcome {
    let delivered = result
        .targets
        .iter()
        .filter(|t| t.outcome() == TargetOutcome::Delivered)
        .count();
    if delivered == result.targets.len() {
        ResultOutcome::Delivered
    } else if delivered == 0 {
        ResultOutcome::Failed
    } else {
        ResultOutcome::Partial
    }
}

/// Encodes a result. JSON timestamps are written `Z`-normalized, as in
/// feedback events ([`push_dispatch_feedback::encode_event`]).
pub fn encode(
    result: &PushResult,
    encoding: Encoding,
) -> Result<Vec<u8>, push_dispatch_proto::EncodeError> {
    if encoding == Encoding::Binary {
        return encode_message(result, encoding);
    }
    let mut json = serde_json::to_value(result)?;
    let utc = |v: &mut serde_json::Value, field: &str| {
        if let Some(serde_json::Value::String(t)) = v.get_mut(field)
            && let Some(t0) = t.strip_suffix("+00:00")
        {
            *t = format!("{t0}Z");
        }
    };
    utc(&mut json, "settledTime");
    if let Some(serde_json::Value::Array(targets)) = json.get_mut("targets") {
        for t in targets {
            utc(t, "finalTime");
        }
    }
    Ok(serde_json::to_vec(&json)?)
}

/// What a message's targets ended as before its settlement's publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultBasis {
    /// How many targets the request has.
    pub targets: usize,
    /// Final already, by position.
    pub settled: BTreeMap<usize, Settled>,
    /// Sends to the provider per position (absent: 0).
    pub attempts: BTreeMap<usize, u32>,
}

impl ResultBasis {
    /// A request of `targets` targets of which nothing was sent.
    pub fn unsent(targets: usize) -> ResultBasis {
        ResultBasis {
            targets,
            ..ResultBasis::default()
        }
    }

    /// A request of `targets` targets, every one expired (§5.6) at `at`.
    pub fn expired(targets: usize, at: SystemTime) -> ResultBasis {
        let settled = (0..targets)
            .map(|index| {
                let s = Settled {
                    index,
                    outcome: TargetOutcome::Expired,
                    reason: String::new(),
                    attempts: 0,
                    at: Some(at),
                };
                (index, s)
            })
            .collect();
        ResultBasis {
            targets,
            settled,
            attempts: BTreeMap::new(),
        }
    }

    /// What is final after `plan`'s publishes, as `report` confirmed them:
    /// delivered and expired targets; dead tokens if their feedback was
    /// confirmed; refused or held targets if their dead letter was.
    pub fn of_plan(plan: &Plan, report: &OutboxReport, targets: usize) -> ResultBasis {
        let mut basis = ResultBasis {
            targets,
            settled: BTreeMap::new(),
            attempts: plan.attempts.clone(),
        };
        let outcomes: BTreeMap<usize, &Settled> =
            plan.outcomes.iter().map(|s| (s.index, s)).collect();
        for s in &plan.outcomes {
            let is_final = match s.outcome {
                TargetOutcome::Delivered
                | TargetOutcome::Expired
                | TargetOutcome::DuplicateSuppressed => true,
                TargetOutcome::TokenInvalid => report.feedback_confirmed,
                // Final once their dead letter is confirmed (below).
                _ => false,
            };
            if is_final {
                basis.settled.insert(s.index, s.clone());
            }
        }
        for (i, letter) in plan.dead_letters.iter().enumerate() {
            if !report
                .dead_letters_confirmed
                .get(i)
                .copied()
                .unwrap_or(false)
            {
                continue;
            }
            let Targets::Only(indices) = &letter.targets else {
                continue;
            };
            for &index in indices {
                let s = match outcomes.get(&index) {
                    Some(s) if s.outcome == TargetOutcome::Rejected => (*s).clone(),
                    _ => basis.dead_lettered(index, letter.code),
                };
                basis.settled.insert(index, s);
            }
        }
        basis
    }

    fn dead_lettered(&self, index: usize, code: PushError) -> Settled {
        Settled {
            index,
            outcome: TargetOutcome::DeadLettered,
            reason: code.as_str().to_string(),
            attempts: self.attempts.get(&index).copied().unwrap_or(0),
            at: None,
        }
    }

    /// The basis after `letter` was confirmed, and whether it carried
    /// targets forward.
    fn after(&self, letter: &Letter) -> (ResultBasis, bool) {
        let mut next = self.clone();
        match letter {
            Letter::DeadLetter(DeadLetter { code, targets, .. }) => {
                let indices: Vec<usize> = match targets {
                    Targets::All => (0..self.targets).collect(),
                    Targets::Only(indices) => indices.clone(),
                };
                for index in indices {
                    if !next.settled.contains_key(&index) {
                        let s = next.dead_lettered(index, *code);
                        next.settled.insert(index, s);
                    }
                }
                (next, false)
            }
            Letter::Republish { .. } => (next, true),
            Letter::Result(_) => (next, false),
        }
    }
}

/// Puts a result publish before every ack of `settlement` (SPEC §9
/// "Results"); see the module doc for its endings. An ack that settles no
/// target (the whole request put off to wait) publishes none.
pub fn with_results(
    settlement: Settlement,
    basis: &ResultBasis,
    ctx: &MessageContext<'_>,
    policy: Policy,
) -> Settlement {
    let last = ctx.is_last_attempt(policy.max_delivery_attempts);
    walk(settlement, basis, false, last)
}

fn walk(settlement: Settlement, basis: &ResultBasis, carried: bool, last: bool) -> Settlement {
    match settlement {
        Settlement::Ack(result) => {
            if basis.settled.is_empty() {
                return Settlement::Ack(result);
            }
            let letter = ResultLetter {
                targets: basis.settled.values().cloned().collect(),
                complete: !carried,
            };
            let delivered = letter
                .targets
                .iter()
                .any(|t| t.outcome == TargetOutcome::Delivered);
            // A nack would resend what was delivered or carried forward;
            // on the last attempt it would dead-letter without a reason.
            let unconfirmed = if delivered || carried || last {
                Settlement::Ack(result)
            } else {
                Settlement::Nack(NackCause::ResultUnconfirmed)
            };
            Settlement::Publish {
                letter: Letter::Result(letter),
                confirmed: Box::new(Settlement::Ack(result)),
                unconfirmed: Box::new(unconfirmed),
            }
        }
        nack @ Settlement::Nack(_) => nack,
        Settlement::Park { wait, parked, full } => Settlement::Park {
            wait,
            parked: Box::new(walk(*parked, basis, carried, last)),
            full: Box::new(walk(*full, basis, carried, last)),
        },
        Settlement::Publish {
            letter,
            confirmed,
            unconfirmed,
        } => {
            let (after, carries) = basis.after(&letter);
            Settlement::Publish {
                confirmed: Box::new(walk(*confirmed, &after, carried || carries, last)),
                unconfirmed: Box::new(walk(*unconfirmed, basis, carried, last)),
                letter,
            }
        }
    }
}

/// The `PushResult` of `letter` for `request`, sent for the app named
/// `app`, published at `now`.
pub fn push_result(
    letter: &ResultLetter,
    request: &PushRequest,
    app: &str,
    ctx: &MessageContext<'_>,
    now: SystemTime,
) -> PushResult {
    let targets = letter
        .targets
        .iter()
        .filter_map(|s| {
            let target = request.targets.get(s.index)?;
            Some(push_dispatch_proto::v1::TargetResult {
                platform: target.platform,
                token: target.token.clone(),
                outcome: s.outcome as i32,
                reason: s.reason.clone(),
                attempts: s.attempts,
                final_time: Some(timestamp(s.at.unwrap_or(now))),
            })
        })
        .collect();
    PushResult {
        request_id: request.request_id.clone(),
        app: app.to_string(),
        recipient: request.recipient.clone(),
        source_message_id: ctx.source_message_id.clone(),
        push_attempt: ctx.push_attempt,
        targets,
        complete: letter.complete,
        settled_time: Some(timestamp(now)),
    }
}

/// The Pub/Sub attributes of a result, for subscription filters:
/// `event_type`, `app`, `outcome` (the request-level [`ResultOutcome`]),
/// `request_id`, `complete` and `content-type`, each cut to Pub/Sub's
/// 1,024 bytes.
pub fn attributes(
    result: &PushResult,
    outcome: ResultOutcome,
    encoding: Encoding,
) -> HashMap<String, String> {
    use push_dispatch_proto::attributes as attr;
    let cut = |v: &str| {
        push_dispatch_subscriber::publish::truncate_utf8(v, attr::MAX_ATTRIBUTE_BYTES).to_string()
    };
    HashMap::from([
        (attr::EVENT_TYPE.to_string(), EVENT_TYPE.to_string()),
        (attr::APP.to_string(), cut(&result.app)),
        (attr::OUTCOME.to_string(), outcome.as_str().to_string()),
        (attr::REQUEST_ID.to_string(), cut(&result.request_id)),
        (attr::COMPLETE.to_string(), result.complete.to_string()),
        (
            attr::CONTENT_TYPE.to_string(),
            encoding.content_type().to_string(),
        ),
    ])
}
