//! The data path, top to bottom, in one place:
//!
//! message in → decode → check → expiry → send every target (each through
//! its app's [`Provider`]) → guard verdicts → [`plan`] (pure) → the
//! [`Outbox`] publishes (feedback, dead letters) → [`settle`] (pure) →
//! republish or dead-letter the rest → the `PushResult` when
//! `results.topic` is set ([`crate::results`]) → ack or nack.
//!
//! The decisions are [`crate::plan`]'s; this module carries them out and
//! keeps the books (metrics, logs, spans). Providers only report facts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use push_dispatch_proto::v1::{Platform, PushRequest};
use push_dispatch_proto::{Checked, check, decode_request, redact_token};
use push_dispatch_subscriber::pubsub::model::Message;
use push_dispatch_subscriber::stream::{AckOutcome, Received};
use push_dispatch_telemetry::propagation;
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::context::{Deadline, MessageContext, to_system_time};
use crate::dedup::{Claim, Dedup, Final, Key};
use crate::guard::{Verdict, is_suspicious};
use crate::labels::{AckKind, DuplicateWindow, MessageResult, PublishPurpose, SendOutcome};
use crate::letters::compose;
use crate::metrics::{AckLabels, FeedbackLabels, Metrics, SendLabels};
use crate::outbox::Outbox;
use crate::plan::{
    AppIdentity, DeadLetter, Letter, NackCause, OutboxReport, Plan, Policy, Settlement, Targets,
    Verdicts, Wait, hand_back, plan, poison, settle, wait_hand_back,
};
use crate::provider::{App, SendLimits};
use crate::results::{ResultBasis, ResultLetter, push_result, with_results};
use crate::shutdown::Shutdown;
use crate::target::{NotSent, TargetResult};

/// Worker settings taken from the config.
#[derive(Clone, Copy, Debug)]
pub struct WorkerSettings {
    /// `pubsub.max_delivery_attempts`, `dispatch.max_republish`,
    /// `dispatch.max_park` and `dispatch.max_deferrals`.
    pub policy: Policy,
    /// `dispatch.max_in_process_wait`.
    pub max_in_process_wait: Duration,
    /// `dispatch.concurrency`.
    pub concurrency: usize,
    /// Whether `results.topic` is set: publish a `PushResult` before each ack.
    pub results: bool,
}

/// How a message was settled with Pub/Sub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Acked; the result is for the metric.
    Ack(MessageResult),
    /// Nacked: Pub/Sub redelivers after the RetryPolicy backoff.
    Nack,
}

impl Settle {
    /// The `result` label of the settled message.
    pub fn result(self) -> MessageResult {
        match self {
            Settle::Ack(r) => r,
            Settle::Nack => MessageResult::Nacked,
        }
    }
}

/// The worker: the policy of SPEC §5 applied to each received message.
#[derive(Debug)]
pub struct Worker<O: Outbox> {
    apps: Vec<App>,
    outbox: O,
    dedup: Option<Dedup>,
    policy: Policy,
    limits: SendLimits,
    metrics: Arc<Metrics>,
    results: bool,
}

impl<O: Outbox> Worker<O> {
    /// A worker over the given apps (in config order: the first is the default).
    pub fn new(
        apps: Vec<App>,
        outbox: O,
        settings: WorkerSettings,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Worker<O> {
        Worker {
            apps,
            outbox,
            dedup: None,
            policy: settings.policy,
            limits: SendLimits {
                slots: Semaphore::new(settings.concurrency.max(1)),
                max_in_process_wait: settings.max_in_process_wait,
                shutdown,
                metrics: metrics.clone(),
            },
            metrics,
            results: settings.results,
        }
    }

    /// With idempotent requests (`dedup.window`, see [`crate::dedup`]).
    pub fn with_dedup(mut self, dedup: Dedup) -> Worker<O> {
        self.dedup = Some(dedup);
        self
    }

    /// Its outbox.
    pub fn outbox(&self) -> &O {
        &self.outbox
    }

    /// Its apps, in config order.
    pub fn apps(&self) -> &[App] {
        &self.apps
    }

    /// Closes every provider connection and waits for their tasks (after
    /// the streams drained: nothing is sent any more).
    pub async fn close_dispatchers(&self) {
        for provider in self.apps.iter().flat_map(App::providers) {
            provider.dispatcher().close().await;
        }
    }

    /// Every provider's status, for `/statusz`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.apps
                .iter()
                .flat_map(App::providers)
                .map(crate::provider::Provider::status)
                .collect(),
        )
    }

    /// Adds the guards' batched answers to the fleet's windows (periodic).
    pub async fn flush_shared(&self) {
        for provider in self.apps.iter().flat_map(App::providers) {
            provider.flush_shared().await;
        }
    }

    /// Brings up to date the gauges that otherwise only traffic updates
    /// (guard release, circuit past `open_for`), so that alerts on them
    /// resolve when no more pushes come. `run` calls it every few seconds.
    pub fn refresh_gauges(&self) {
        for provider in self.apps.iter().flat_map(App::providers) {
            provider.refresh_gauges();
        }
    }

    /// Processes one received message and settles it with its lease.
    ///
    /// If the shutdown grace runs out first, the message is nacked wherever
    /// it is (SPEC §5.7).
    pub async fn handle(&self, received: Received) {
        let Received { message, lease, .. } = received;
        // Counted out when this returns, is cancelled or panics.
        let _inflight = InflightGuard::enter(&self.metrics.inflight);
        let attempt = lease.delivery_attempt();
        self.observe_receipt(&message, attempt);
        let settle = tokio::select! {
            s = self.process(&message, attempt) => s,
            () = self.limits.shutdown.forced() => {
                self.metrics.duplicate_risk(DuplicateWindow::GraceExceeded);
                tracing::warn!(message_id = %message.message_id, "shutdown grace elapsed; nacking");
                Settle::Nack
            }
        };
        let result = settle.result();
        tracing::debug!(message_id = %message.message_id, settle = ?settle, "settled");
        if settle == Settle::Nack {
            lease.nack();
        } else {
            match lease.ack().await {
                Ok(kind) => {
                    let kind = match kind {
                        AckOutcome::Confirmed => AckKind::Confirmed,
                        AckOutcome::Sent => AckKind::Sent,
                    };
                    self.metrics.acks.get_or_create(&AckLabels { kind }).inc();
                }
                Err(e) => {
                    self.metrics.ack_failures.inc();
                    self.metrics.duplicate_risk(DuplicateWindow::AckUnconfirmed);
                    tracing::warn!(message_id = %message.message_id, error = %e, "ack not confirmed; Pub/Sub may redeliver");
                }
            }
        }
        self.metrics.message(result);
    }

    fn observe_receipt(&self, message: &Message, attempt: Option<i32>) {
        if let Some(published) = message.publish_time.and_then(to_system_time)
            && let Ok(d) = SystemTime::now().duration_since(published)
        {
            self.metrics.pull_lag.observe(d.as_secs_f64());
        }
        if attempt.is_some_and(|a| a > 1) {
            self.metrics.redeliveries.inc();
        }
        // Every received message id is logged (debug), so that a run can be
        // reconciled against what Pub/Sub handed out.
        tracing::debug!(message_id = %message.message_id, delivery_attempt = attempt.unwrap_or(0), "received");
    }

    /// Decides what to do with one message and publishes whatever must be
    /// confirmed before the ack; returns how to settle it. Everything runs
    /// in the message's span, which carries its id, its `request_id` and
    /// `app` once decoded, and its result: every log line written meanwhile
    /// carries them.
    pub async fn process(&self, message: &Message, delivery_attempt: Option<i32>) -> Settle {
        let span = message_span(message, delivery_attempt);
        let settle = self
            .decide(message, delivery_attempt)
            .instrument(span.clone())
            .await;
        span.record("push.result", settle.result().as_str());
        settle
    }

    async fn decide(&self, message: &Message, delivery_attempt: Option<i32>) -> Settle {
        let ctx = MessageContext::of(message, delivery_attempt);

        // §5.7 not started yet when draining: hand it back at once.
        if self.limits.shutdown.is_draining() {
            let settlement = hand_back(&ctx, self.policy, NackCause::NotStarted);
            return self.carry_out(settlement, &ctx, None, None).await;
        }
        // A `push_attempt` no republish of ours can have reached (a producer
        // or a replay wrote it): dead-lettered with the reason, not sent.
        if ctx.push_attempt > self.policy.max_republish.max(1) {
            let settlement = poison(
                push_dispatch_proto::PushError::RetriesExhausted,
                format!(
                    "push_attempt {} is above dispatch.max_republish {}: producers must not set push_attempt; replay with `push-dispatch dlq replay`, which clears it",
                    ctx.push_attempt, self.policy.max_republish
                ),
            );
            return self.carry_out(settlement, &ctx, None, None).await;
        }
        // §5.2 poison fast path: undecodable or invalid as a whole.
        let request = match decode_request(&message.data, &message.attributes) {
            Ok(r) => r,
            Err(e) => {
                let settlement = poison(e.code(), e.to_string());
                return self.carry_out(settlement, &ctx, None, None).await;
            }
        };
        let checked = match check(&request, &self.apps) {
            Ok(c) => c,
            Err(e) => {
                let settlement = poison(e.code(), e.to_string());
                let settlement = self.with_results(settlement, &ctx, || {
                    ResultBasis::unsent(request.targets.len())
                });
                return self.carry_out(settlement, &ctx, Some(&request), None).await;
            }
        };
        let app = &self.apps[checked.app_index];
        let span = tracing::Span::current();
        // Display, not Debug: the values read the same in text and JSON logs.
        span.record("request_id", tracing::field::display(&request.request_id));
        span.record("app", tracing::field::display(&app.name));
        // `request_id` also on this line: `make chaos` reconciles runs by it.
        tracing::debug!(message_id = %ctx.message_id, request_id = %request.request_id, duplicates = checked.duplicates.len(), "decoded");

        // §5.6 expired requests are not sent.
        let deadline = Deadline::of(&request, ctx.first_publish_time);
        if deadline.has_passed() {
            self.count_expired(app, &request);
            tracing::info!(message_id = %ctx.message_id, "request expired before sending");
            return self.expired(&ctx, &request, app).await;
        }
        // A ttl of zero is now or never: only the first delivery sends it.
        if deadline.is_now_or_never() && !ctx.is_first_delivery() {
            self.count_expired(app, &request);
            tracing::info!(message_id = %ctx.message_id, "ttl 0 request delivered again: expired (now or never)");
            return self.expired(&ctx, &request, app).await;
        }
        // A wait carried across a republish (`push_not_before`).
        if let Some(settle) = self
            .honour_not_before(app, &request, &checked, &ctx, deadline)
            .await
        {
            return settle;
        }

        let claims = self.claim(app, &request, &checked).await;
        let (sent, attempts) = self
            .send_all(app, &request, &checked, deadline, claims.as_deref())
            .await;
        let sent = self.expire_unsendable(app, &request, sent, deadline);
        let verdicts = judge(app, &request, &sent).await;
        let identity = AppIdentity {
            name: &app.name,
            apns: app.apns.as_ref().map(|p| p.sender()),
            fcm: app.fcm.as_ref().map(|p| p.sender()),
        };
        let mut plan = plan(
            &request,
            &checked.rejected,
            &sent,
            verdicts,
            identity,
            &ctx,
            SystemTime::now(),
        );
        plan.count_attempts(&attempts);
        self.count_held(app, &request, &plan);
        let report = self.publish_plan(&plan, &ctx, &request).await;
        if let (Some(dedup), Some(claims)) = (&self.dedup, &claims) {
            record_finals(
                dedup, app, &request, &checked, claims, &sent, &plan, &report,
            )
            .await;
        }
        let settlement = settle(&plan, &report, &ctx, self.policy);
        let settlement = self.with_results(settlement, &ctx, || {
            ResultBasis::of_plan(&plan, &report, request.targets.len())
        });
        self.carry_out(settlement, &ctx, Some(&request), Some(app))
            .await
    }

    // ── Delivery results (`results.topic`) ──────────────────────────────
    // Everything about results goes through these three methods; with
    // `results.topic` unset `with_results` returns the settlement as is.

    /// Adds the publish of its `PushResult` before each ack of `settlement`
    /// when results are on; `basis` is only computed then.
    fn with_results(
        &self,
        settlement: Settlement,
        ctx: &MessageContext<'_>,
        basis: impl FnOnce() -> ResultBasis,
    ) -> Settlement {
        if !self.results {
            return settlement;
        }
        with_results(settlement, &basis(), ctx, self.policy)
    }

    /// Settles a request that expired before it was sent (§5.6): acked as
    /// `expired`, after its result (every target expired) when results are on.
    async fn expired(&self, ctx: &MessageContext<'_>, request: &PushRequest, app: &App) -> Settle {
        let settlement = self.with_results(Settlement::Ack(MessageResult::Expired), ctx, || {
            ResultBasis::expired(request.targets.len(), SystemTime::now())
        });
        self.carry_out(settlement, ctx, Some(request), Some(app))
            .await
    }

    /// Publishes the `PushResult` of `letter`; counts a failure (never
    /// retried: the settlement's unconfirmed ending decides). Tokens are
    /// never logged.
    async fn post_result(
        &self,
        letter: &ResultLetter,
        ctx: &MessageContext<'_>,
        request: Option<&PushRequest>,
        app: Option<&App>,
    ) -> bool {
        // Results exist only for decoded requests (the plan makes none without).
        let Some(request) = request else {
            return true;
        };
        let name = match app {
            Some(app) => app.name.as_str(),
            None if request.app.is_empty() => self.apps.first().map_or("", |a| a.name.as_str()),
            None => request.app.as_str(),
        };
        let result = push_result(letter, request, name, ctx, SystemTime::now());
        let outcome = crate::results::outcome(&result);
        let (targets, complete) = (result.targets.len(), result.complete);
        match self.outbox.result(result).await {
            Ok(()) => {
                tracing::debug!(message_id = %ctx.message_id, outcome = outcome.as_str(), targets, complete, "result published");
                true
            }
            Err(e) => {
                self.metrics.publish_failure(PublishPurpose::Result);
                tracing::warn!(message_id = %ctx.message_id, error = %e, "result not confirmed; counted, not retried");
                false
            }
        }
    }

    /// Waits until the request's `push_not_before`: in process within
    /// `dispatch.max_in_process_wait`, parked (lease kept) within
    /// `dispatch.max_park` if a park slot is free; otherwise hands the
    /// message back. Returns how it was settled, or `None` to send it now.
    async fn honour_not_before(
        &self,
        app: &App,
        request: &PushRequest,
        checked: &Checked,
        ctx: &MessageContext<'_>,
        deadline: Deadline,
    ) -> Option<Settle> {
        let now = SystemTime::now();
        let remaining = ctx.not_before?.duration_since(now).ok()?;
        if remaining.is_zero() {
            return None;
        }
        if deadline.passes_during(now, remaining) {
            self.count_expired(app, request);
            tracing::info!(message_id = %ctx.message_id, "request would expire before its push_not_before: expired");
            return Some(self.expired(ctx, request, app).await);
        }
        let platform = checked
            .sendable
            .first()
            .map_or(Platform::Unspecified, |&i| request.targets[i].platform());
        let wait = Wait {
            duration: remaining,
            platform,
        };
        let permit = if remaining <= self.limits.max_in_process_wait {
            None
        } else if remaining <= self.policy.max_park
            && let Some(permit) = app.provider(platform).and_then(|p| p.try_park())
        {
            Some(permit)
        } else {
            tracing::debug!(message_id = %ctx.message_id, wait = ?remaining, "push_not_before is later than the worker parks for; handing back");
            let settlement = wait_hand_back(ctx, self.policy, request.targets.len(), wait);
            let settlement = self.with_results(settlement, ctx, || {
                ResultBasis::unsent(request.targets.len())
            });
            return Some(
                self.carry_out(settlement, ctx, Some(request), Some(app))
                    .await,
            );
        };
        let _parked = permit.map(|p| (p, ParkedGuard::enter(&self.metrics.parked)));
        tracing::debug!(message_id = %ctx.message_id, wait = ?remaining, "waiting for push_not_before");
        tokio::select! {
            () = tokio::time::sleep(remaining) => None,
            () = self.limits.shutdown.draining() => {
                let settlement = wait_hand_back(ctx, self.policy, request.targets.len(), wait);
                let settlement = self.with_results(settlement, ctx, || {
                    ResultBasis::unsent(request.targets.len())
                });
                Some(self.carry_out(settlement, ctx, Some(request), Some(app)).await)
            }
        }
    }

    /// Counts as expired the targets that cannot be sent in time any more:
    /// with a ttl of zero, whatever is not final after the first delivery;
    /// otherwise a target whose known wait outlasts the ttl.
    fn expire_unsendable(
        &self,
        app: &App,
        request: &PushRequest,
        mut sent: Vec<(usize, TargetResult)>,
        deadline: Deadline,
    ) -> Vec<(usize, TargetResult)> {
        let now = SystemTime::now();
        for (i, result) in &mut sent {
            if !result.is_retryable()
                || matches!(result, TargetResult::NotSent(NotSent::ShuttingDown))
                    && !deadline.is_now_or_never()
            {
                continue;
            }
            let wait = result.wait().map(|w| w.max(crate::plan::MIN_WAIT));
            if deadline.is_now_or_never() || wait.is_some_and(|w| deadline.passes_during(now, w)) {
                if let Some(p) = app.provider(request.targets[*i].platform()) {
                    p.count(SendOutcome::Expired);
                }
                *result = TargetResult::NotSent(NotSent::Expired);
            }
        }
        sent
    }

    /// Claims the sendable targets for dedup (one round trip), when dedup
    /// is on and the request has a `request_id`; aligned with
    /// `checked.sendable`. `None`: send them all.
    async fn claim(
        &self,
        app: &App,
        request: &PushRequest,
        checked: &Checked,
    ) -> Option<Vec<Claim>> {
        let dedup = self.dedup.as_ref()?;
        if request.request_id.is_empty() {
            return None;
        }
        let keys: Vec<Key<'_>> = checked
            .sendable
            .iter()
            .map(|&i| dedup_key(app, request, i))
            .collect();
        dedup.claim(&keys).await
    }

    /// Sends every sendable target concurrently (bounded by the send slots),
    /// but for those a dedup claim says not to send (already final, or
    /// claimed by another copy of the request).
    async fn send_all(
        &self,
        app: &App,
        request: &PushRequest,
        checked: &Checked,
        deadline: Deadline,
        claims: Option<&[Claim]>,
    ) -> (Vec<(usize, TargetResult)>, BTreeMap<usize, u32>) {
        let sends = checked.sendable.iter().enumerate().map(|(k, &i)| {
            let claim = claims
                .and_then(|c| c.get(k))
                .copied()
                .unwrap_or(Claim::Mine);
            let target = &request.targets[i];
            let platform = target.platform();
            let span = tracing::info_span!(
                "push.send",
                otel.name = format!("{} send", platform.label()),
                otel.kind = "client",
                push.platform = platform.label(),
                push.app = %app.name,
                push.token = %redact_token(&target.token),
                push.outcome = tracing::field::Empty,
                push.attempts = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
            );
            async move {
                let (result, attempts) = match (app.provider(platform), claim) {
                    (Some(p), Claim::Done(_)) => (p.not_sent(NotSent::Duplicate), 0),
                    (Some(p), Claim::Elsewhere { expires_in }) => (
                        p.not_sent(NotSent::ClaimedElsewhere { wait: expires_in }),
                        0,
                    ),
                    (Some(p), Claim::Mine) => {
                        p.send_counted(&self.limits, request, &target.token, deadline)
                            .await
                    }
                    // Validation guarantees a provider; keep the target rather than lose it.
                    (None, _) => (TargetResult::NotSent(NotSent::ShuttingDown), 0),
                };
                (i, result, attempts)
            }
            .instrument(span)
        });
        let mut attempts = BTreeMap::new();
        let sent = futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|(i, result, n)| {
                if n > 0 {
                    attempts.insert(i, n);
                }
                (i, result)
            })
            .collect();
        (sent, attempts)
    }

    /// §5.5 and §5.2: publishes the plan's feedback events, then its dead
    /// letters; reports what Pub/Sub confirmed.
    async fn publish_plan(
        &self,
        plan: &Plan,
        ctx: &MessageContext<'_>,
        request: &PushRequest,
    ) -> OutboxReport {
        let mut report = OutboxReport {
            feedback_confirmed: true,
            dead_letters_confirmed: Vec::with_capacity(plan.dead_letters.len()),
        };
        if !plan.events.is_empty() {
            let events: Vec<_> = plan.events.iter().map(|(_, e)| e.clone()).collect();
            match self.outbox.feedback(&events).await {
                Ok(()) => {
                    for e in &events {
                        self.metrics
                            .feedback_events
                            .get_or_create(&FeedbackLabels {
                                platform: e.platform().label(),
                                reason: e.reason().as_str_name(),
                            })
                            .inc();
                    }
                }
                Err(e) => {
                    self.metrics.publish_failure(PublishPurpose::Feedback);
                    tracing::warn!(message_id = %ctx.message_id, error = %e, "feedback not confirmed; carrying the dead tokens forward");
                    report.feedback_confirmed = false;
                }
            }
        }
        for letter in &plan.dead_letters {
            let confirmed = self
                .post(&Letter::DeadLetter(letter.clone()), ctx, Some(request))
                .await;
            report.dead_letters_confirmed.push(confirmed);
        }
        report
    }

    /// Walks a settlement: publishes its letters, following the branch that
    /// Pub/Sub's answer selects, to the final ack or nack.
    async fn carry_out(
        &self,
        mut settlement: Settlement,
        ctx: &MessageContext<'_>,
        request: Option<&PushRequest>,
        app: Option<&App>,
    ) -> Settle {
        loop {
            settlement = match settlement {
                Settlement::Ack(result) => {
                    if matches!(result, MessageResult::Acked | MessageResult::DeadLettered) {
                        self.observe_end_to_end(ctx);
                    }
                    return Settle::Ack(result);
                }
                Settlement::Nack(cause) => {
                    if cause == NackCause::ResultUnconfirmed {
                        tracing::warn!(message_id = %ctx.message_id, "result not confirmed and nothing delivered; nacking");
                    }
                    if cause == NackCause::RepublishUnconfirmed {
                        // The delivered targets will be sent again on redelivery.
                        self.metrics
                            .duplicate_risk(DuplicateWindow::RepublishFailed);
                        tracing::warn!(message_id = %ctx.message_id, "republish not confirmed; nacking (delivered targets may be resent)");
                    }
                    return Settle::Nack;
                }
                Settlement::Park { wait, parked, full } => {
                    let permit = app
                        .and_then(|a| a.provider(wait.platform))
                        .and_then(|p| p.try_park());
                    let Some(permit) = permit else {
                        tracing::debug!(message_id = %ctx.message_id, "no park slot free; carrying the targets forward instead");
                        settlement = *full;
                        continue;
                    };
                    let _parked = (permit, ParkedGuard::enter(&self.metrics.parked));
                    let wait = jittered(wait.duration);
                    tracing::debug!(message_id = %ctx.message_id, wait = ?wait, "parked until the wait ends");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => *parked,
                        // Parked messages are handed back at once on drain.
                        () = self.limits.shutdown.draining() => Settlement::Nack(NackCause::Waited),
                    }
                }
                Settlement::Publish {
                    letter,
                    confirmed,
                    unconfirmed,
                } => {
                    let posted = match &letter {
                        Letter::Result(result) => self.post_result(result, ctx, request, app).await,
                        _ => self.post(&letter, ctx, request).await,
                    };
                    if posted { *confirmed } else { *unconfirmed }
                }
            };
        }
    }

    /// Publishes one letter through the outbox; counts and logs it. Returns
    /// whether Pub/Sub confirmed it.
    async fn post(
        &self,
        letter: &Letter,
        ctx: &MessageContext<'_>,
        request: Option<&PushRequest>,
    ) -> bool {
        let message = compose(letter, ctx, request);
        match letter {
            // Published by `post_result`, which `carry_out` calls instead.
            Letter::Result(_) => false,
            Letter::DeadLetter(DeadLetter {
                code,
                targets,
                detail,
            }) => match self.outbox.dead_letter(message).await {
                Ok(()) => {
                    self.metrics.dead_letter(*code);
                    let detail = push_dispatch_subscriber::publish::truncate_utf8(
                        detail,
                        push_dispatch_proto::attributes::MAX_DETAIL_BYTES,
                    );
                    match targets {
                        Targets::All => {
                            tracing::warn!(message_id = %ctx.message_id, push_error = %code, detail = %detail, "dead-lettered message");
                        }
                        Targets::Only(indices) => {
                            tracing::warn!(message_id = %ctx.message_id, push_error = %code, targets = indices.len(), detail = %detail, "dead-lettered targets");
                        }
                    }
                    true
                }
                Err(e) => {
                    self.metrics.publish_failure(PublishPurpose::DeadLetter);
                    tracing::warn!(message_id = %ctx.message_id, error = %e, "dead letter not confirmed");
                    false
                }
            },
            Letter::Republish {
                indices,
                push_attempt,
                wait,
                deferrals,
            } => match self.outbox.republish(message).await {
                Ok(id) => {
                    // `carried` lists the positions (in this message's request) of the
                    // targets carried forward, so that a run can be reconciled.
                    let carried = indices
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(",");
                    tracing::info!(message_id = %ctx.message_id, republished_as = %id, targets = indices.len(), carried = %carried, push_attempt, push_deferrals = deferrals, not_before_in = ?wait, "carried retryable targets forward");
                    true
                }
                Err(e) => {
                    self.metrics.publish_failure(PublishPurpose::Republish);
                    tracing::warn!(message_id = %ctx.message_id, error = %e, "republish not confirmed");
                    false
                }
            },
        }
    }

    /// Counts every target of an expired request (§5.6).
    fn count_expired(&self, app: &App, request: &PushRequest) {
        for t in &request.targets {
            match app.provider(t.platform()) {
                Some(p) => p.count(SendOutcome::Expired),
                None => {
                    self.metrics
                        .sends
                        .get_or_create(&SendLabels {
                            platform: t.platform().label(),
                            app: app.name.clone(),
                            outcome: SendOutcome::Expired,
                        })
                        .inc();
                }
            }
        }
    }

    /// Counts the dead-token reports the guard held, per provider.
    fn count_held(&self, app: &App, request: &PushRequest, plan: &Plan) {
        for letter in &plan.dead_letters {
            if let (push_dispatch_proto::PushError::InvalidationGuard, Targets::Only(indices)) =
                (letter.code, &letter.targets)
            {
                for &i in indices {
                    if let Some(p) = app.provider(request.targets[i].platform()) {
                        p.count_held();
                    }
                }
            }
        }
    }

    fn observe_end_to_end(&self, ctx: &MessageContext<'_>) {
        if let Some(first) = ctx.first_publish_time
            && let Ok(d) = SystemTime::now().duration_since(first)
        {
            self.metrics.end_to_end.observe(d.as_secs_f64());
        }
    }
}

/// The dedup key of target `i`.
fn dedup_key<'a>(app: &'a App, request: &'a PushRequest, i: usize) -> Key<'a> {
    let target = &request.targets[i];
    Key {
        app: &app.name,
        request_id: &request.request_id,
        platform: target.platform(),
        token: &target.token,
    }
}

/// Records, for dedup, the targets this worker claimed that ended final —
/// delivered, reported dead with the feedback confirmed, dead-lettered by the
/// plan with the letter confirmed — and releases its other claims.
#[allow(clippy::too_many_arguments)]
async fn record_finals(
    dedup: &Dedup,
    app: &App,
    request: &PushRequest,
    checked: &Checked,
    claims: &[Claim],
    sent: &[(usize, TargetResult)],
    plan: &Plan,
    report: &OutboxReport,
) {
    let reported: std::collections::HashSet<usize> = if report.feedback_confirmed {
        plan.events.iter().map(|(i, _)| *i).collect()
    } else {
        Default::default()
    };
    let dead_lettered: std::collections::HashSet<usize> = plan
        .dead_letters
        .iter()
        .zip(&report.dead_letters_confirmed)
        .filter(|(_, confirmed)| **confirmed)
        .filter_map(|(letter, _)| match &letter.targets {
            Targets::Only(indices) => Some(indices.iter().copied()),
            Targets::All => None,
        })
        .flatten()
        .collect();
    let delivered: std::collections::HashSet<usize> = sent
        .iter()
        .filter(|(_, r)| {
            matches!(
                r,
                TargetResult::Answered(push_dispatch_dispatch::Outcome::Delivered)
            )
        })
        .map(|(i, _)| *i)
        .collect();
    let mut finals = Vec::new();
    let mut release = Vec::new();
    for (k, &i) in checked.sendable.iter().enumerate() {
        if claims.get(k) != Some(&Claim::Mine) {
            continue;
        }
        let key = dedup_key(app, request, i);
        if delivered.contains(&i) {
            finals.push((key, Final::Delivered));
        } else if reported.contains(&i) {
            finals.push((key, Final::Reported));
        } else if dead_lettered.contains(&i) {
            finals.push((key, Final::DeadLettered));
        } else {
            release.push(key);
        }
    }
    dedup.record(&finals, &release).await;
}

/// §5.9: feeds each provider's guard with this message's final answers and
/// returns its verdicts.
async fn judge(app: &App, request: &PushRequest, sent: &[(usize, TargetResult)]) -> Verdicts {
    let mut verdicts = Verdicts::REPORT;
    for provider in app.providers() {
        let platform = provider.platform();
        let (mut sends, mut suspicious) = (0u64, 0u64);
        for (i, result) in sent {
            if request.targets[*i].platform() != platform {
                continue;
            }
            match result {
                TargetResult::Answered(push_dispatch_dispatch::Outcome::TokenInvalid {
                    reason,
                    ..
                }) => {
                    sends += 1;
                    suspicious += u64::from(is_suspicious(*reason));
                }
                TargetResult::Answered(
                    push_dispatch_dispatch::Outcome::Delivered
                    | push_dispatch_dispatch::Outcome::Rejected { .. },
                ) => sends += 1,
                _ => {}
            }
        }
        let verdict: Verdict = provider.judge(sends, suspicious).await;
        match platform {
            Platform::Apns => verdicts.apns = verdict,
            _ => verdicts.fcm = verdict,
        }
    }
    verdicts
}

/// The span of one message, child of the producer's trace when it carries one.
fn message_span(message: &Message, attempt: Option<i32>) -> tracing::Span {
    let span = tracing::info_span!(
        "push.message",
        otel.name = "push-dispatch process",
        otel.kind = "consumer",
        messaging.system = "gcp_pubsub",
        messaging.operation = "process",
        messaging.message.id = %message.message_id,
        messaging.gcp_pubsub.message.delivery_attempt = attempt.unwrap_or(0),
        request_id = tracing::field::Empty,
        app = tracing::field::Empty,
        push.result = tracing::field::Empty,
    );
    // The producer's trace (W3C traceparent, or Google's googclient_ keys).
    let _ = span.set_parent(propagation::extract(&message.attributes));
    span
}

/// A park of `wait` plus up to a tenth of it (at most 5 s) of jitter, so
/// that messages parked together do not come back together.
fn jittered(wait: Duration) -> Duration {
    let spread = (wait / 10).min(Duration::from_secs(5));
    wait + spread.mul_f64(rand::random::<f64>())
}

/// One message in `push_dispatch_parked_messages`, while parked.
struct ParkedGuard(prometheus_client::metrics::gauge::Gauge);

impl ParkedGuard {
    fn enter(gauge: &prometheus_client::metrics::gauge::Gauge) -> ParkedGuard {
        gauge.inc();
        ParkedGuard(gauge.clone())
    }
}

impl Drop for ParkedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One message in `push_dispatch_inflight_messages`, for as long as it lives.
struct InflightGuard(prometheus_client::metrics::gauge::Gauge);

impl InflightGuard {
    fn enter(gauge: &prometheus_client::metrics::gauge::Gauge) -> InflightGuard {
        gauge.inc();
        InflightGuard(gauge.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
