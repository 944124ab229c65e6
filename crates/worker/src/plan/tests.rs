//! Unit tests of the pure plan and settlement (SPEC §5), one per rule.

use std::time::{Duration, SystemTime};

use push_dispatch_dispatch::{Outcome, RejectReason, RetryCause};
use push_dispatch_feedback::Sender;
use push_dispatch_proto::attributes as attr;
use push_dispatch_proto::v1::{Platform, PushRequest, Reason, Target};
use push_dispatch_proto::{PushError, TargetError};
use push_dispatch_subscriber::pubsub::model::Message;

use super::*;
use crate::target::{NotSent, TargetResult};

const POLICY: Policy = Policy {
    max_delivery_attempts: 5,
    max_republish: 3,
    max_park: Duration::from_secs(60),
    max_deferrals: 2,
};

fn apns() -> Sender {
    Sender::Apns {
        topic: "com.example".into(),
        environment: "sandbox".into(),
    }
}

fn fcm() -> Sender {
    Sender::Fcm {
        project: "proj".into(),
    }
}

fn request(tokens: &[(Platform, &str)]) -> PushRequest {
    PushRequest {
        request_id: "r1".into(),
        targets: tokens
            .iter()
            .map(|(p, t)| Target {
                platform: *p as i32,
                token: t.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn message(push_attempt: u32) -> Message {
    Message::new()
        .set_message_id("m1")
        .set_attributes([(attr::PUSH_ATTEMPT, push_attempt.to_string())])
}

fn delivered() -> TargetResult {
    TargetResult::Answered(Outcome::Delivered)
}

fn dead(reason: Reason) -> TargetResult {
    TargetResult::Answered(Outcome::TokenInvalid {
        reason,
        provider_reason: format!("{reason:?}"),
        invalidated_at: None,
    })
}

fn failing() -> TargetResult {
    TargetResult::Answered(Outcome::Retryable {
        after: None,
        cause: RetryCause::Status {
            status: 503,
            provider_reason: "ServiceUnavailable".into(),
        },
    })
}

fn refused() -> TargetResult {
    TargetResult::Answered(Outcome::Rejected {
        reason: RejectReason::Provider {
            status: 400,
            provider_reason: "BadTopic".into(),
        },
    })
}

struct Case {
    request: PushRequest,
    message: Message,
    apns: Sender,
    fcm: Sender,
}

impl Case {
    fn new(tokens: &[(Platform, &str)]) -> Case {
        Case {
            request: request(tokens),
            message: message(1),
            apns: apns(),
            fcm: fcm(),
        }
    }

    fn plan(&self, sent: &[(usize, TargetResult)], verdicts: Verdicts, attempt: i32) -> Plan {
        self.plan_with(&[], sent, verdicts, attempt)
    }

    fn plan_with(
        &self,
        rejected: &[TargetError],
        sent: &[(usize, TargetResult)],
        verdicts: Verdicts,
        attempt: i32,
    ) -> Plan {
        let ctx = MessageContext::of(&self.message, Some(attempt));
        let app = AppIdentity {
            name: "main",
            apns: Some(&self.apns),
            fcm: Some(&self.fcm),
        };
        plan(
            &self.request,
            rejected,
            sent,
            verdicts,
            app,
            &ctx,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1),
        )
    }

    fn with_attributes(mut self, attributes: &[(&str, &str)]) -> Case {
        self.message = Message::new().set_message_id("m1").set_attributes(
            attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        self
    }

    fn settle(&self, plan: &Plan, report: &OutboxReport, attempt: i32) -> Settlement {
        let ctx = MessageContext::of(&self.message, Some(attempt));
        settle(plan, report, &ctx, POLICY)
    }
}

/// Follows a settlement with every publish confirmed (or refused): the
/// letters published, in order, and the ending.
fn walk(mut s: Settlement, confirm: bool) -> (Vec<Letter>, Settlement) {
    let mut letters = Vec::new();
    loop {
        match s {
            Settlement::Publish {
                letter,
                confirmed,
                unconfirmed,
            } => {
                letters.push(letter);
                s = if confirm { *confirmed } else { *unconfirmed };
            }
            end => return (letters, end),
        }
    }
}

#[test]
fn every_target_final_is_acked_with_nothing_to_publish() {
    let case = Case::new(&[(Platform::Apns, "a"), (Platform::Fcm, "b")]);
    let expired = TargetResult::NotSent(NotSent::Expired);
    let plan = case.plan(&[(0, delivered()), (1, expired)], Verdicts::REPORT, 1);
    assert_eq!(plan.finals, 2);
    assert!(plan.events.is_empty() && plan.dead_letters.is_empty() && plan.retry.is_empty());
    let s = case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1);
    assert_eq!(s, Settlement::Ack(MessageResult::Acked));
}

#[test]
fn dead_tokens_become_one_event_each_naming_the_sender() {
    let case = Case::new(&[
        (Platform::Apns, "dead1"),
        (Platform::Fcm, "gone"),
        (Platform::Apns, "ok"),
    ]);
    let plan = case.plan(
        &[
            (0, dead(Reason::Unregistered)),
            (1, dead(Reason::Unregistered)),
            (2, delivered()),
        ],
        Verdicts::REPORT,
        1,
    );
    assert_eq!(plan.events.len(), 2);
    let (i, apns_event) = &plan.events[0];
    assert_eq!(*i, 0);
    assert_eq!(apns_event.apns_topic, "com.example");
    assert_eq!(apns_event.source_message_id, "m1");
    assert_eq!(plan.events[1].1.fcm_project, "proj");
    // §5.5: confirmed feedback makes them final.
    let s = case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1);
    assert_eq!(s, Settlement::Ack(MessageResult::Acked));
}

#[test]
fn unconfirmed_feedback_carries_the_dead_tokens_forward_never_the_delivered() {
    let case = Case::new(&[(Platform::Apns, "dead1"), (Platform::Apns, "ok")]);
    let plan = case.plan(
        &[(0, dead(Reason::Unregistered)), (1, delivered())],
        Verdicts::REPORT,
        1,
    );
    let report = OutboxReport {
        feedback_confirmed: false,
        dead_letters_confirmed: vec![],
    };
    let (letters, end) = walk(case.settle(&plan, &report, 1), true);
    assert_eq!(
        letters,
        vec![Letter::Republish {
            indices: vec![0],
            push_attempt: 2,
            wait: None,
            deferrals: 0,
        }]
    );
    assert_eq!(end, Settlement::Ack(MessageResult::Republished));
}

#[test]
fn refused_targets_are_dead_lettered_by_code_and_siblings_still_count() {
    let case = Case::new(&[
        (Platform::Apns, "x"),
        (Platform::Apns, "ok"),
        (Platform::Fcm, ""),
    ]);
    let rejected = [TargetError::UnspecifiedPlatform { index: 2 }];
    let plan = case.plan_with(
        &rejected,
        &[(0, refused()), (1, delivered())],
        Verdicts::REPORT,
        1,
    );
    let codes: Vec<PushError> = plan.dead_letters.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        vec![PushError::UnspecifiedPlatform, PushError::ProviderRejected]
    );
    assert_eq!(plan.dead_letters[1].targets, Targets::Only(vec![0]));
    assert!(plan.dead_letters[1].detail.contains("BadTopic"));
    assert_eq!(
        case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1),
        Settlement::Ack(MessageResult::Acked)
    );
    // A dead letter not confirmed: its targets are carried forward.
    let report = OutboxReport {
        feedback_confirmed: true,
        dead_letters_confirmed: vec![true, false],
    };
    let (letters, _) = walk(case.settle(&plan, &report, 1), true);
    assert_eq!(
        letters,
        vec![Letter::Republish {
            indices: vec![0],
            push_attempt: 2,
            wait: None,
            deferrals: 0,
        }]
    );
}

#[test]
fn nothing_final_hands_the_message_back_and_on_the_last_attempt_dead_letters_it() {
    let case = Case::new(&[(Platform::Apns, "a"), (Platform::Fcm, "b")]);
    let sent = [
        (0, failing()),
        (1, TargetResult::NotSent(NotSent::ShuttingDown)),
    ];
    let plan = case.plan(&sent, Verdicts::REPORT, 1);
    assert_eq!(plan.retry, vec![0, 1]);
    let report = OutboxReport::all_confirmed(&plan);
    assert_eq!(
        case.settle(&plan, &report, 4),
        Settlement::Nack(NackCause::NothingFinal)
    );
    let (letters, end) = walk(case.settle(&plan, &report, 5), true);
    match &letters[..] {
        [Letter::DeadLetter(d)] => {
            assert_eq!(d.code, PushError::RetriesExhausted);
            assert_eq!(d.targets, Targets::All);
            assert!(
                d.detail.contains("last delivery attempt (5 of 5)"),
                "{}",
                d.detail
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(end, Settlement::Ack(MessageResult::DeadLettered));
    // That dead letter unconfirmed: nack, the DeadLetterPolicy catches it.
    let (_, end) = walk(case.settle(&plan, &report, 5), false);
    assert_eq!(end, Settlement::Nack(NackCause::DeadLetterUnconfirmed));
}

#[test]
fn a_partial_success_republishes_the_rest_once_confirmed_then_acks() {
    let case = Case::new(&[(Platform::Apns, "ok"), (Platform::Apns, "flaky")]);
    let plan = case.plan(&[(0, delivered()), (1, failing())], Verdicts::REPORT, 1);
    let s = case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1);
    let (letters, end) = walk(s.clone(), true);
    assert_eq!(
        letters,
        vec![Letter::Republish {
            indices: vec![1],
            push_attempt: 2,
            wait: None,
            deferrals: 0,
        }]
    );
    assert_eq!(end, Settlement::Ack(MessageResult::Republished));
    // Not confirmed: nack (the delivered target may be resent: counted).
    let (_, end) = walk(s, false);
    assert_eq!(end, Settlement::Nack(NackCause::RepublishUnconfirmed));
}

#[test]
fn an_unconfirmed_republish_on_the_last_attempt_dead_letters_the_rest() {
    let case = Case::new(&[(Platform::Apns, "ok"), (Platform::Apns, "flaky")]);
    let plan = case.plan(&[(0, delivered()), (1, failing())], Verdicts::REPORT, 5);
    let Settlement::Publish { unconfirmed, .. } =
        case.settle(&plan, &OutboxReport::all_confirmed(&plan), 5)
    else {
        panic!("a republish first");
    };
    let (letters, end) = walk(*unconfirmed, true);
    match &letters[..] {
        [Letter::DeadLetter(d)] => {
            assert_eq!(d.code, PushError::RetriesExhausted);
            assert_eq!(d.targets, Targets::Only(vec![1]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(end, Settlement::Ack(MessageResult::Acked));
}

#[test]
fn past_max_republish_the_rest_is_dead_lettered_as_retries_exhausted() {
    let mut case = Case::new(&[(Platform::Apns, "ok"), (Platform::Apns, "flaky")]);
    case.message = message(POLICY.max_republish);
    let plan = case.plan(&[(0, delivered()), (1, failing())], Verdicts::REPORT, 1);
    let (letters, end) = walk(
        case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1),
        true,
    );
    match &letters[..] {
        [Letter::DeadLetter(d)] => {
            assert_eq!(d.code, PushError::RetriesExhausted);
            assert!(d.detail.contains("push_attempt 3"), "{}", d.detail);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(end, Settlement::Ack(MessageResult::Acked));
}

#[test]
fn a_held_guard_dead_letters_suspicious_reports_but_unregistered_flows() {
    let case = Case::new(&[
        (Platform::Fcm, "mismatch"),
        (Platform::Fcm, "gone"),
        (Platform::Apns, "bad"),
    ]);
    let verdicts = Verdicts {
        apns: Verdict::Report,
        fcm: Verdict::Hold,
    };
    let plan = case.plan(
        &[
            (0, dead(Reason::SenderIdMismatch)),
            (1, dead(Reason::Unregistered)),
            (2, dead(Reason::BadDeviceToken)),
        ],
        verdicts,
        1,
    );
    let reported: Vec<usize> = plan.events.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        reported,
        vec![1, 2],
        "Unregistered and the other platform flow"
    );
    assert_eq!(plan.dead_letters.len(), 1);
    assert_eq!(plan.dead_letters[0].code, PushError::InvalidationGuard);
    assert_eq!(plan.dead_letters[0].targets, Targets::Only(vec![0]));
}

#[test]
fn a_token_listed_twice_is_reported_once() {
    let case = Case::new(&[(Platform::Apns, "dead1"), (Platform::Apns, "dead1")]);
    let plan = case.plan(
        &[
            (0, dead(Reason::Unregistered)),
            (1, dead(Reason::Unregistered)),
        ],
        Verdicts::REPORT,
        1,
    );
    assert_eq!(plan.events.len(), 1);
}

#[test]
fn poison_and_a_drain_before_the_start_settle_the_whole_message() {
    let (letters, end) = walk(poison(PushError::DecodeJson, "bad".into()), true);
    assert!(matches!(
        &letters[..],
        [Letter::DeadLetter(DeadLetter {
            code: PushError::DecodeJson,
            targets: Targets::All,
            ..
        })]
    ));
    assert_eq!(end, Settlement::Ack(MessageResult::DeadLettered));
    let (_, end) = walk(poison(PushError::DecodeJson, "bad".into()), false);
    assert_eq!(end, Settlement::Nack(NackCause::DeadLetterUnconfirmed));

    let m = message(1);
    let ctx = MessageContext::of(&m, Some(2));
    assert_eq!(
        hand_back(&ctx, POLICY, NackCause::NotStarted),
        Settlement::Nack(NackCause::NotStarted)
    );
    let ctx = MessageContext::of(&m, Some(5));
    let (letters, _) = walk(hand_back(&ctx, POLICY, NackCause::NotStarted), true);
    match &letters[..] {
        [Letter::DeadLetter(d)] => assert!(d.detail.contains("shutting down"), "{}", d.detail),
        other => panic!("{other:?}"),
    }
    // Without a DeadLetterPolicy there is no last attempt.
    let ctx = MessageContext::of(&m, None);
    assert_eq!(
        hand_back(&ctx, POLICY, NackCause::NothingFinal),
        Settlement::Nack(NackCause::NothingFinal)
    );
}

#[test]
fn a_push_attempt_beyond_any_count_is_dead_lettered_not_overflowed() {
    let mut case = Case::new(&[(Platform::Apns, "ok"), (Platform::Apns, "flaky")]);
    case.message = Message::new()
        .set_message_id("m1")
        .set_attributes([(attr::PUSH_ATTEMPT, "99999999999")]);
    let plan = case.plan(&[(0, delivered()), (1, failing())], Verdicts::REPORT, 1);
    let (letters, end) = walk(
        case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1),
        true,
    );
    match &letters[..] {
        [Letter::DeadLetter(d)] => assert_eq!(d.code, PushError::RetriesExhausted),
        other => panic!("{other:?}"),
    }
    assert_eq!(end, Settlement::Ack(MessageResult::Acked));
}

fn limited(secs: u64) -> TargetResult {
    TargetResult::NotSent(NotSent::RateLimited {
        wait: Duration::from_secs(secs),
    })
}

fn told_to_wait(secs: u64) -> TargetResult {
    TargetResult::Answered(Outcome::Retryable {
        after: Some(Duration::from_secs(secs)),
        cause: RetryCause::Status {
            status: 429,
            provider_reason: "TooManyRequests".into(),
        },
    })
}

fn unavailable_for(secs: u64) -> TargetResult {
    TargetResult::Answered(Outcome::Retryable {
        after: Some(Duration::from_secs(secs)),
        cause: RetryCause::Status {
            status: 503,
            provider_reason: "ServiceUnavailable".into(),
        },
    })
}

#[test]
fn the_longest_known_wait_is_kept_and_a_zero_retry_after_still_waits_the_minimum() {
    let case = Case::new(&[(Platform::Apns, "a"), (Platform::Fcm, "b")]);
    let plan = case.plan(
        &[(0, told_to_wait(3)), (1, limited(7))],
        Verdicts::REPORT,
        1,
    );
    assert_eq!(
        plan.wait,
        Some(Wait {
            duration: Duration::from_secs(7),
            platform: Platform::Fcm
        })
    );
    assert!(plan.only_waiting);
    let plan = case.plan(&[(0, told_to_wait(0)), (1, failing())], Verdicts::REPORT, 1);
    assert_eq!(plan.wait.map(|w| w.duration), Some(MIN_WAIT));
    assert!(!plan.only_waiting, "a 503 is a failure, not a wait");
}

#[test]
fn nothing_final_with_a_short_wait_parks_then_nacks_or_carries_forward_when_no_slot_is_free() {
    let case = Case::new(&[(Platform::Fcm, "a")]);
    let plan = case.plan(&[(0, told_to_wait(20))], Verdicts::REPORT, 1);
    let s = case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1);
    let Settlement::Park { wait, parked, full } = s else {
        panic!("{s:?}");
    };
    assert_eq!(wait.duration, Duration::from_secs(20));
    assert_eq!(*parked, Settlement::Nack(NackCause::Waited));
    // No park slot: carried forward with push_not_before, attempt unchanged.
    let (letters, end) = walk(*full, true);
    assert_eq!(
        letters,
        vec![Letter::Republish {
            indices: vec![0],
            push_attempt: 1,
            wait: Some(Duration::from_secs(20)),
            deferrals: 1,
        }]
    );
    assert_eq!(end, Settlement::Ack(MessageResult::Republished));
}

#[test]
fn a_wait_beyond_max_park_is_republished_with_not_before_and_a_failure_uses_a_republish() {
    let case = Case::new(&[(Platform::Apns, "a")]);
    let plan = case.plan(&[(0, limited(120))], Verdicts::REPORT, 1);
    let (letters, _) = walk(
        case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1),
        true,
    );
    assert_eq!(
        letters,
        vec![Letter::Republish {
            indices: vec![0],
            push_attempt: 1,
            wait: Some(Duration::from_secs(120)),
            deferrals: 1,
        }]
    );
    // A 503 with a long Retry-After is a failure: it uses up a republish.
    let plan = case.plan(&[(0, unavailable_for(120))], Verdicts::REPORT, 1);
    let (letters, _) = walk(
        case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1),
        true,
    );
    assert_eq!(
        letters,
        vec![Letter::Republish {
            indices: vec![0],
            push_attempt: 2,
            wait: Some(Duration::from_secs(120)),
            deferrals: 0,
        }]
    );
}

#[test]
fn a_wait_on_the_last_delivery_attempt_is_put_off_not_dead_lettered() {
    let case = Case::new(&[(Platform::Apns, "a")]);
    let plan = case.plan(&[(0, limited(10))], Verdicts::REPORT, 5);
    let report = OutboxReport::all_confirmed(&plan);
    let (letters, end) = walk(case.settle(&plan, &report, 5), true);
    assert_eq!(
        letters,
        vec![Letter::Republish {
            indices: vec![0],
            push_attempt: 1,
            wait: Some(Duration::from_secs(10)),
            deferrals: 1,
        }]
    );
    assert_eq!(end, Settlement::Ack(MessageResult::Republished));
    // Its deferral unconfirmed: dead-lettered with a reason, never a bare nack.
    let (letters, end) = walk(case.settle(&plan, &report, 5), false);
    assert!(
        matches!(&letters[1], Letter::DeadLetter(d) if d.code == PushError::RetriesExhausted),
        "{letters:?}"
    );
    assert_eq!(end, Settlement::Nack(NackCause::DeadLetterUnconfirmed));
}

#[test]
fn past_max_deferrals_a_waiting_target_is_dead_lettered() {
    let case = Case::new(&[(Platform::Apns, "ok"), (Platform::Apns, "a")])
        .with_attributes(&[(attr::DEFERRALS, "2")]);
    let plan = case.plan(&[(0, delivered()), (1, limited(10))], Verdicts::REPORT, 1);
    let (letters, end) = walk(
        case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1),
        true,
    );
    match &letters[..] {
        [Letter::DeadLetter(d)] => {
            assert_eq!(d.code, PushError::RetriesExhausted);
            assert_eq!(d.targets, Targets::Only(vec![1]));
            assert!(d.detail.contains("max_deferrals"), "{}", d.detail);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(end, Settlement::Ack(MessageResult::Acked));
}

#[test]
fn a_partial_success_with_a_wait_republishes_the_rest_not_before_the_wait() {
    let case = Case::new(&[(Platform::Apns, "ok"), (Platform::Fcm, "q")]);
    let plan = case.plan(
        &[(0, delivered()), (1, told_to_wait(30))],
        Verdicts::REPORT,
        1,
    );
    let (letters, end) = walk(
        case.settle(&plan, &OutboxReport::all_confirmed(&plan), 1),
        true,
    );
    assert_eq!(
        letters,
        vec![Letter::Republish {
            indices: vec![1],
            push_attempt: 1,
            wait: Some(Duration::from_secs(30)),
            deferrals: 1,
        }]
    );
    assert_eq!(end, Settlement::Ack(MessageResult::Republished));
}

#[test]
fn a_handed_back_wait_nacks_and_on_the_last_attempt_puts_the_request_off() {
    let case = Case::new(&[(Platform::Apns, "a"), (Platform::Apns, "b")]);
    let wait = Wait {
        duration: Duration::from_secs(90),
        platform: Platform::Apns,
    };
    let ctx = MessageContext::of(&case.message, Some(2));
    assert_eq!(
        wait_hand_back(&ctx, POLICY, 2, wait),
        Settlement::Nack(NackCause::Waited)
    );
    let ctx = MessageContext::of(&case.message, Some(5));
    let (letters, _) = walk(wait_hand_back(&ctx, POLICY, 2, wait), true);
    assert_eq!(
        letters,
        vec![Letter::Republish {
            indices: vec![0, 1],
            push_attempt: 1,
            wait: Some(Duration::from_secs(90)),
            deferrals: 1,
        }]
    );
}

// ── Delivery results (`results.topic`) ───────────────────────────────────

use crate::results::{ResultBasis, ResultLetter, with_results};
use push_dispatch_proto::v1::TargetOutcome;

impl Case {
    fn with_results(&self, s: Settlement, basis: &ResultBasis, attempt: i32) -> Settlement {
        let ctx = MessageContext::of(&self.message, Some(attempt));
        with_results(s, basis, &ctx, POLICY)
    }
}

/// The (position, outcome, reason) of each target a result letter lists.
fn listed(letter: &Letter) -> (Vec<(usize, TargetOutcome, String)>, bool) {
    let Letter::Result(ResultLetter { targets, complete }) = letter else {
        panic!("not a result: {letter:?}");
    };
    (
        targets
            .iter()
            .map(|t| (t.index, t.outcome, t.reason.clone()))
            .collect(),
        *complete,
    )
}

#[test]
fn a_result_lists_every_target_settled_with_its_outcome_and_reason_before_the_ack() {
    let case = Case::new(&[
        (Platform::Apns, "ok"),
        (Platform::Apns, "dead1"),
        (Platform::Apns, "x"),
        (Platform::Fcm, ""),
        (Platform::Apns, "late"),
    ]);
    let rejected = [TargetError::UnspecifiedPlatform { index: 3 }];
    let plan = case.plan_with(
        &rejected,
        &[
            (0, delivered()),
            (1, dead(Reason::Unregistered)),
            (2, refused()),
            (4, TargetResult::NotSent(NotSent::Expired)),
        ],
        Verdicts::REPORT,
        1,
    );
    let report = OutboxReport::all_confirmed(&plan);
    let settled = case.settle(&plan, &report, 1);
    assert_eq!(settled, Settlement::Ack(MessageResult::Acked));
    let basis = ResultBasis::of_plan(&plan, &report, 5);
    let (letters, end) = walk(case.with_results(settled, &basis, 1), true);
    assert_eq!(end, Settlement::Ack(MessageResult::Acked));
    assert_eq!(letters.len(), 1, "one result, before the ack");
    let (targets, complete) = listed(&letters[0]);
    assert!(complete);
    assert_eq!(
        targets,
        vec![
            (0, TargetOutcome::Delivered, String::new()),
            (1, TargetOutcome::TokenInvalid, "Unregistered".into()),
            (2, TargetOutcome::Rejected, "BadTopic".into()),
            (3, TargetOutcome::Rejected, "unspecified_platform".into()),
            (4, TargetOutcome::Expired, String::new()),
        ]
    );
    let Letter::Result(letter) = &letters[0] else {
        unreachable!()
    };
    assert_eq!(
        letter
            .targets
            .iter()
            .map(|t| t.attempts)
            .collect::<Vec<_>>(),
        [1, 1, 1, 0, 0],
        "answered once each in this plan; the refused-by-validation and expired were not sent"
    );
    // Unconfirmed: something was delivered, so the ack stands (counted, not retried).
    let (_, end) = walk(
        case.with_results(settled_again(&case, &plan), &basis, 1),
        false,
    );
    assert_eq!(end, Settlement::Ack(MessageResult::Acked));
}

fn settled_again(case: &Case, plan: &Plan) -> Settlement {
    case.settle(plan, &OutboxReport::all_confirmed(plan), 1)
}

#[test]
fn an_unconfirmed_result_nacks_only_when_nothing_was_delivered_nor_carried_nor_last() {
    let case = Case::new(&[(Platform::Apns, "dead1"), (Platform::Apns, "x")]);
    let plan = case.plan(
        &[(0, dead(Reason::Unregistered)), (1, refused())],
        Verdicts::REPORT,
        1,
    );
    let report = OutboxReport::all_confirmed(&plan);
    let basis = ResultBasis::of_plan(&plan, &report, 2);
    let s = case.with_results(case.settle(&plan, &report, 1), &basis, 1);
    let (letters, end) = walk(s.clone(), true);
    assert_eq!(end, Settlement::Ack(MessageResult::Acked));
    assert_eq!(listed(&letters[0]).0.len(), 2);
    let (_, end) = walk(s, false);
    assert_eq!(
        end,
        Settlement::Nack(NackCause::ResultUnconfirmed),
        "nothing delivered: a retry sends nothing twice"
    );
    // On the last delivery attempt a nack would dead-letter without a reason: ack.
    let s = case.with_results(case.settle(&plan, &report, 5), &basis, 5);
    assert_eq!(walk(s, false).1, Settlement::Ack(MessageResult::Acked));
}

#[test]
fn a_carried_remainder_makes_the_result_incomplete_and_an_unconfirmed_one_still_acks() {
    let case = Case::new(&[(Platform::Apns, "ok"), (Platform::Apns, "flaky")]);
    let plan = case.plan(&[(0, delivered()), (1, failing())], Verdicts::REPORT, 1);
    let report = OutboxReport::all_confirmed(&plan);
    let basis = ResultBasis::of_plan(&plan, &report, 2);
    let s = case.with_results(case.settle(&plan, &report, 1), &basis, 1);
    let (letters, end) = walk(s.clone(), true);
    assert!(matches!(letters[0], Letter::Republish { .. }));
    let (targets, complete) = listed(&letters[1]);
    assert_eq!(targets, vec![(0, TargetOutcome::Delivered, String::new())]);
    assert!(!complete, "target 1 was carried forward");
    assert_eq!(end, Settlement::Ack(MessageResult::Republished));
    // Republish refused: nacked as before, no result (the redelivery settles it).
    let (letters, end) = walk(s, false);
    assert_eq!(letters.len(), 1);
    assert_eq!(end, Settlement::Nack(NackCause::RepublishUnconfirmed));

    // Only the remainder failing, nothing delivered, but carried: an
    // unconfirmed result must not nack (the remainder would be republished twice).
    let case = Case::new(&[(Platform::Apns, "x"), (Platform::Apns, "flaky")]);
    let plan = case.plan(&[(0, refused()), (1, failing())], Verdicts::REPORT, 1);
    let report = OutboxReport::all_confirmed(&plan);
    let basis = ResultBasis::of_plan(&plan, &report, 2);
    let s = case.with_results(case.settle(&plan, &report, 1), &basis, 1);
    let mut s = s;
    // Confirm the republish, refuse the result.
    let mut published = Vec::new();
    let end = loop {
        match s {
            Settlement::Publish {
                letter,
                confirmed,
                unconfirmed,
            } => {
                let is_result = matches!(letter, Letter::Result(_));
                published.push(letter);
                s = if is_result { *unconfirmed } else { *confirmed };
            }
            end => break end,
        }
    };
    assert_eq!(
        listed(&published[1]).0,
        vec![(0, TargetOutcome::Rejected, "BadTopic".into())]
    );
    assert_eq!(end, Settlement::Ack(MessageResult::Republished));
}

#[test]
fn targets_dead_lettered_by_the_settlement_itself_are_listed_as_dead_lettered() {
    // Past max_republish the remainder is dead-lettered as retries_exhausted.
    let case = Case::new(&[(Platform::Apns, "ok"), (Platform::Apns, "flaky")])
        .with_attributes(&[(attr::PUSH_ATTEMPT, "3")]);
    let plan = case.plan(&[(0, delivered()), (1, failing())], Verdicts::REPORT, 1);
    let report = OutboxReport::all_confirmed(&plan);
    let basis = ResultBasis::of_plan(&plan, &report, 2);
    let (letters, end) = walk(
        case.with_results(case.settle(&plan, &report, 1), &basis, 1),
        true,
    );
    assert!(matches!(letters[0], Letter::DeadLetter(_)));
    let (targets, complete) = listed(&letters[1]);
    assert!(complete);
    assert_eq!(
        targets,
        vec![
            (0, TargetOutcome::Delivered, String::new()),
            (1, TargetOutcome::DeadLettered, "retries_exhausted".into()),
        ]
    );
    assert_eq!(end, Settlement::Ack(MessageResult::Acked));

    // Held by the guard: dead-lettered as invalidation_guard, not token_invalid.
    let case = Case::new(&[(Platform::Apns, "bad0")]);
    let held = Verdicts {
        apns: Verdict::Hold,
        fcm: Verdict::Report,
    };
    let plan = case.plan(&[(0, dead(Reason::BadDeviceToken))], held, 1);
    let report = OutboxReport::all_confirmed(&plan);
    let basis = ResultBasis::of_plan(&plan, &report, 1);
    let (letters, _) = walk(
        case.with_results(case.settle(&plan, &report, 1), &basis, 1),
        true,
    );
    assert_eq!(
        listed(&letters[0]).0,
        vec![(0, TargetOutcome::DeadLettered, "invalidation_guard".into())]
    );
}

#[test]
fn a_request_dead_lettered_as_a_whole_lists_every_target_and_unconfirmed_publishes_list_none() {
    let case = Case::new(&[(Platform::Apns, "a"), (Platform::Fcm, "b")]);
    let s = poison(PushError::UnknownApp, "app `x` is not configured".into());
    let s = case.with_results(s, &ResultBasis::unsent(2), 1);
    let (letters, end) = walk(s.clone(), true);
    assert_eq!(end, Settlement::Ack(MessageResult::DeadLettered));
    assert_eq!(
        listed(&letters[1]).0,
        vec![
            (0, TargetOutcome::DeadLettered, "unknown_app".into()),
            (1, TargetOutcome::DeadLettered, "unknown_app".into()),
        ]
    );
    // The dead letter refused: nacked, and nothing settled, so no result.
    let (letters, end) = walk(s, false);
    assert_eq!(letters.len(), 1);
    assert_eq!(end, Settlement::Nack(NackCause::DeadLetterUnconfirmed));

    // Unconfirmed feedback: the dead token is carried, not listed.
    let case = Case::new(&[(Platform::Apns, "dead1"), (Platform::Apns, "ok")]);
    let plan = case.plan(
        &[(0, dead(Reason::Unregistered)), (1, delivered())],
        Verdicts::REPORT,
        1,
    );
    let report = OutboxReport {
        feedback_confirmed: false,
        dead_letters_confirmed: vec![],
    };
    let basis = ResultBasis::of_plan(&plan, &report, 2);
    let (letters, _) = walk(
        case.with_results(case.settle(&plan, &report, 1), &basis, 1),
        true,
    );
    let (targets, complete) = listed(&letters[1]);
    assert_eq!(targets, vec![(1, TargetOutcome::Delivered, String::new())]);
    assert!(!complete);
}

#[test]
fn a_settlement_that_settles_nothing_publishes_no_result_and_an_expired_request_lists_every_target()
{
    let case = Case::new(&[(Platform::Apns, "a")]);
    let plan = case.plan(&[(0, limited(5))], Verdicts::REPORT, 1);
    let report = OutboxReport::all_confirmed(&plan);
    let basis = ResultBasis::of_plan(&plan, &report, 1);
    let settled = case.settle(&plan, &report, 1);
    // Nothing settled: the settlement is unchanged.
    assert_eq!(case.with_results(settled.clone(), &basis, 1), settled);
    // Expired: every target listed.
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(9);
    let s = case.with_results(
        Settlement::Ack(MessageResult::Expired),
        &ResultBasis::expired(1, at),
        1,
    );
    let (letters, end) = walk(s, true);
    assert_eq!(end, Settlement::Ack(MessageResult::Expired));
    assert_eq!(
        listed(&letters[0]).0,
        vec![(0, TargetOutcome::Expired, String::new())]
    );
}
