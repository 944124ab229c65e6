//! The data path, top to bottom, in one place:
//!
//! message in → decode → validate → expiry → dispatch each target (with
//! in-process retries) → classify → feedback → dead-letter what is refused →
//! carry the rest forward → ack or nack.
//!
//! The rules are SPEC §5's; each step below names the guarantee it serves.
//! Providers and transports only report facts ([`Outcome`]); every decision
//! about the message is taken here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use push_dispatch_dispatch::{AppDispatchers, Outcome, Push, RetryCause};
use push_dispatch_feedback::{FeedbackPublisher, event_id, timestamp};
use push_dispatch_proto::v1::{Platform, PushRequest, TokenInvalidated};
use push_dispatch_proto::{
    AppPlatforms, Encoding, check, decode_request, encode_message, redact_token,
};
use push_dispatch_subscriber::publish::{PublishError, publish_confirmed, truncate_utf8};
use push_dispatch_subscriber::pubsub::client::Publisher;
use push_dispatch_subscriber::pubsub::model::Message;
use push_dispatch_subscriber::stream::{AckOutcome, Received};
use push_dispatch_telemetry::propagation;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::circuit::{Admission, Circuit};
use crate::guard::{Guard, Verdict, is_suspicious};
use crate::metrics::{
    AckLabels, FeedbackLabels, MessageResult, Metrics, ReasonLabels, RefreshLabels, SendHandles,
    SendLabels,
};
use crate::rate_limit::RateLimit;
use push_dispatch_config::{CircuitConfig, GuardConfig};

/// Attribute: short error code on dead-lettered messages.
pub const ATTR_PUSH_ERROR: &str = "push_error";
/// Attribute: human-readable error detail (≤ 1 KiB) on dead-lettered messages.
pub const ATTR_PUSH_ERROR_DETAIL: &str = "push_error_detail";
/// Attribute: id of the message a dead letter or republished request came from.
pub const ATTR_SOURCE_MESSAGE_ID: &str = "source_message_id";
/// Attribute: how many times this request was (re)published; absent = 1.
pub const ATTR_PUSH_ATTEMPT: &str = "push_attempt";
/// Attribute: RFC 3339 publish time of the first publish of this request.
pub const ATTR_FIRST_PUBLISH_TIME: &str = "push_first_publish_time";
/// Attribute: Pub/Sub delivery attempt at which we dead-lettered.
pub const ATTR_DELIVERY_ATTEMPT: &str = "push_delivery_attempt";
/// `push_error` when retries ran out.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
/// `push_error` of dead tokens held by the mass-invalidation guard.
pub const INVALIDATION_GUARD: &str = "invalidation_guard";

/// Longest `push_error_detail`, in bytes.
const MAX_DETAIL_BYTES: usize = 1024;
/// First in-process backoff.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest single in-process backoff when the provider gives no Retry-After.
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Worker settings taken from the config.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// `pubsub.max_delivery_attempts`.
    pub max_delivery_attempts: i32,
    /// `dispatch.max_in_process_wait`.
    pub max_in_process_wait: Duration,
    /// `dispatch.max_republish`.
    pub max_republish: u32,
    /// `dispatch.concurrency`.
    pub concurrency: usize,
    /// `dispatch.circuit`.
    pub circuit: CircuitConfig,
    /// `feedback.guard`.
    pub guard: GuardConfig,
}

/// One app as the pipeline sees it: its dispatchers and what feedback events say of it.
#[derive(Clone, Debug)]
pub struct AppRuntime {
    /// Dispatchers by platform.
    pub dispatchers: AppDispatchers,
    /// `apns.topic`.
    pub apns_topic: String,
    /// `production` or `sandbox`, from the APNs endpoint.
    pub apns_environment: String,
    /// `fcm.project_id`.
    pub fcm_project: String,
    /// `apns.rate_limit`, pushes/s for this pod.
    pub apns_rate_limit: Option<f64>,
    /// `fcm.rate_limit`, pushes/s for this pod.
    pub fcm_rate_limit: Option<f64>,
}

/// Circuit, guard, rate limit and metric handles of one app and platform.
#[derive(Debug)]
struct Controls {
    /// Its send metrics, resolved once (no labels built per push).
    handles: SendHandles,
    circuit: Circuit,
    guard: Guard,
    limit: Option<RateLimit>,
    /// Token refreshes already counted in the metric: (ok, failed).
    refreshes_seen: (std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64),
}

/// Where the pipeline publishes.
#[derive(Clone, Debug)]
pub struct Outputs {
    /// Publisher on the dead-letter topic, and its name.
    pub dead_letter: (Publisher, String),
    /// Publisher on the requests topic (republished remainders), and its name.
    pub requests: (Publisher, String),
    /// Feedback events.
    pub feedback: FeedbackPublisher,
}

/// How a message is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Ack it; the result is for the metric.
    Ack(MessageResult),
    /// Nack it: Pub/Sub redelivers after the RetryPolicy backoff.
    Nack,
}

/// The worker: the policy of SPEC §5 applied to each received message.
#[derive(Debug)]
pub struct Worker {
    apps: Vec<AppRuntime>,
    /// Per app: [APNs, FCM].
    controls: Vec<[Controls; 2]>,
    platforms: Vec<AppPlatforms>,
    outputs: Outputs,
    settings: WorkerSettings,
    sends: Semaphore,
    metrics: Arc<Metrics>,
    draining: CancellationToken,
    hard_stop: CancellationToken,
}

/// What we know of a message besides its body.
struct Context<'a> {
    message: &'a Message,
    encoding: Encoding,
    /// The id of the original request (itself, unless republished).
    source_message_id: String,
    first_publish_time: Option<SystemTime>,
    push_attempt: u32,
    delivery_attempt: Option<i32>,
}

/// A group of targets that go to the dead-letter topic together.
struct DeadPart {
    indices: Vec<usize>,
    details: Vec<String>,
}

impl Worker {
    /// Closes every app's provider connections and waits for their tasks
    /// (after the streams drained: nothing is sent any more).
    pub async fn close_dispatchers(&self) {
        for app in &self.apps {
            for dispatcher in [&app.dispatchers.apns, &app.dispatchers.fcm]
                .into_iter()
                .flatten()
            {
                dispatcher.close().await;
            }
        }
    }

    /// A worker over the given apps (in config order: the first is the default).
    pub fn new(
        apps: Vec<AppRuntime>,
        outputs: Outputs,
        settings: WorkerSettings,
        metrics: Arc<Metrics>,
        draining: CancellationToken,
        hard_stop: CancellationToken,
    ) -> Worker {
        let platforms = apps
            .iter()
            .map(|a| AppPlatforms {
                name: a.dispatchers.name.clone(),
                apns: a.dispatchers.apns.is_some(),
                fcm: a.dispatchers.fcm.is_some(),
            })
            .collect();
        let controls = apps
            .iter()
            .map(|a| {
                let make = |platform: Platform, limit: Option<f64>| Controls {
                    handles: metrics.send_handles(platform.label(), &a.dispatchers.name),
                    circuit: Circuit::new(settings.circuit.clone()),
                    guard: Guard::new(settings.guard.clone()),
                    limit: limit.map(RateLimit::new),
                    refreshes_seen: Default::default(),
                };
                [
                    make(Platform::Apns, a.apns_rate_limit),
                    make(Platform::Fcm, a.fcm_rate_limit),
                ]
            })
            .collect();
        Worker {
            apps,
            controls,
            platforms,
            outputs,
            sends: Semaphore::new(settings.concurrency.max(1)),
            settings,
            metrics,
            draining,
            hard_stop,
        }
    }

    /// Processes one received message and settles it (ack or nack).
    ///
    /// If the shutdown grace runs out first (`hard_stop`), the message is
    /// nacked wherever it is (SPEC §5.7).
    pub async fn handle(&self, received: Received) {
        let Received { message, lease, .. } = received;
        // Counted out when this returns, is cancelled or panics.
        let _inflight = InflightGuard::enter(&self.metrics.inflight);
        if let Some(lag) = message.publish_time.and_then(to_system_time)
            && let Ok(d) = SystemTime::now().duration_since(lag)
        {
            self.metrics.pull_lag.observe(d.as_secs_f64());
        }
        let attempt = lease.delivery_attempt();
        if attempt.is_some_and(|a| a > 1) {
            self.metrics.redeliveries.inc();
        }
        // Every received message id is logged (debug), so that a run can be
        // reconciled against what Pub/Sub handed out.
        tracing::debug!(message_id = %message.message_id, delivery_attempt = attempt.unwrap_or(0), "received");
        let span = tracing::info_span!(
            "push.message",
            otel.name = "push-dispatch process",
            otel.kind = "consumer",
            messaging.system = "gcp_pubsub",
            messaging.operation = "process",
            messaging.message.id = %message.message_id,
            messaging.gcp_pubsub.message.delivery_attempt = attempt.unwrap_or(0),
            push.result = tracing::field::Empty,
        );
        // The producer's trace (W3C traceparent, or Google's googclient_ keys).
        let _ = span.set_parent(propagation::extract(&message.attributes));
        let settle = tokio::select! {
            s = self.process(&message, attempt).instrument(span.clone()) => s,
            () = self.hard_stop.cancelled() => {
                self.metrics.duplicate_risk("grace_exceeded");
                tracing::warn!(message_id = %message.message_id, "shutdown grace elapsed; nacking");
                Settle::Nack
            }
        };
        span.record(
            "push.result",
            match settle {
                Settle::Ack(r) => r.label(),
                Settle::Nack => "nacked",
            },
        );
        tracing::debug!(message_id = %message.message_id, settle = ?settle, "settled");
        match settle {
            Settle::Ack(result) => {
                let acked = lease.ack().await;
                if let Ok(kind) = &acked {
                    let kind = match kind {
                        AckOutcome::Confirmed => "confirmed",
                        AckOutcome::Sent => "sent",
                    };
                    self.metrics.acks.get_or_create(&AckLabels { kind }).inc();
                }
                if let Err(e) = acked {
                    self.metrics.ack_failures.inc();
                    self.metrics.duplicate_risk("ack_unconfirmed");
                    tracing::warn!(message_id = %message.message_id, error = %e, "ack not confirmed; Pub/Sub may redeliver");
                }
                self.metrics.message(result);
            }
            Settle::Nack => {
                lease.nack();
                self.metrics.message(MessageResult::Nacked);
            }
        }
    }

    /// Decides what to do with one message; publishes whatever must be
    /// confirmed before the ack (dead letters, feedback, republished remainders).
    pub async fn process(&self, message: &Message, delivery_attempt: Option<i32>) -> Settle {
        let ctx = Context::of(message, delivery_attempt);

        // §5.7 not started yet when draining: hand it back at once.
        if self.draining.is_cancelled() {
            return self.hand_back(&ctx, "the worker was shutting down").await;
        }

        // §5.2 poison fast path: undecodable or invalid as a whole.
        let request = match decode_request(&message.data, &message.attributes) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .dead_letter_message(&ctx, e.code(), &e.to_string())
                    .await;
            }
        };
        let checked = match check(&request, &self.platforms) {
            Ok(c) => c,
            Err(e) => {
                return self
                    .dead_letter_message(&ctx, e.code(), &e.to_string())
                    .await;
            }
        };
        let app = &self.apps[checked.app_index];
        tracing::debug!(message_id = %message.message_id, request_id = %request.request_id, duplicates = checked.duplicates.len(), "decoded");

        // §5.6 expired requests are not sent.
        let deadline = Deadline::of(&request, ctx.first_publish_time);
        if deadline.has_passed() {
            for t in &request.targets {
                match self.controls_of(checked.app_index, t.platform()) {
                    Some(controls) => controls.handles.count("expired"),
                    None => self.count_send(t.platform(), &app.dispatchers.name, "expired"),
                }
            }
            tracing::info!(message_id = %message.message_id, request_id = %request.request_id, "request expired before sending");
            return Settle::Ack(MessageResult::Expired);
        }

        // Targets that alone are invalid are dead-lettered; siblings go on.
        let mut dead: BTreeMap<&'static str, DeadPart> = BTreeMap::new();
        for e in &checked.rejected {
            let part = dead.entry(e.code()).or_insert_with(|| DeadPart {
                indices: Vec::new(),
                details: Vec::new(),
            });
            part.indices.push(e.index());
            part.details.push(e.to_string());
        }

        // Dispatch every sendable target concurrently (bounded by `dispatch.concurrency`).
        let outcomes = futures::future::join_all(checked.sendable.iter().map(|&i| {
            let target = &request.targets[i];
            let span = tracing::info_span!(
                "push.send",
                otel.name = format!("{} send", target.platform().label()),
                otel.kind = "client",
                push.platform = target.platform().label(),
                push.app = %app.dispatchers.name,
                push.token = %redact_token(&target.token),
                push.outcome = tracing::field::Empty,
                push.attempts = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
            );
            self.send_with_retries(checked.app_index, &request, i, deadline)
                .instrument(span)
        }))
        .await;

        // §5.9: feed the guard with this message's final answers.
        let answered: Vec<(Platform, Option<push_dispatch_proto::v1::Reason>)> = checked
            .sendable
            .iter()
            .zip(&outcomes)
            .filter_map(|(&i, o)| {
                let p = request.targets[i].platform();
                match o {
                    Outcome::Delivered | Outcome::Rejected { .. } => Some((p, None)),
                    Outcome::TokenInvalid { reason, .. } => Some((p, Some(*reason))),
                    Outcome::Retryable { .. } | Outcome::Expired => None,
                }
            })
            .collect();
        let verdicts = self.guard_verdicts(checked.app_index, &app.dispatchers.name, &answered);

        let mut finals = 0usize;
        let mut carry: Vec<usize> = Vec::new();
        let mut events: Vec<(usize, TokenInvalidated)> = Vec::new();
        let observed = SystemTime::now();
        for (&index, outcome) in checked.sendable.iter().zip(outcomes) {
            let target = &request.targets[index];
            match outcome {
                // Expired while waiting or retrying: not sent, counted, final (§5.6).
                Outcome::Delivered | Outcome::Expired => finals += 1,
                Outcome::TokenInvalid {
                    reason,
                    provider_reason,
                    invalidated_at,
                } if is_suspicious(reason)
                    && matches!(
                        verdicts[usize::from(target.platform() == Platform::Fcm)],
                        Verdict::Hold
                    ) =>
                {
                    // Held by the guard: dead-letter instead of reporting.
                    if let Some(controls) = self.controls_of(checked.app_index, target.platform()) {
                        controls.handles.guard_held.inc();
                    }
                    let part = dead.entry(INVALIDATION_GUARD).or_insert_with(|| DeadPart {
                        indices: Vec::new(),
                        details: Vec::new(),
                    });
                    part.indices.push(index);
                    part.details.push(format!(
                        "target {index}: {provider_reason} ({}) held by the mass-invalidation guard; invalidated_at {:?}",
                        reason.as_str_name(),
                        invalidated_at
                    ));
                }
                Outcome::TokenInvalid {
                    reason,
                    provider_reason,
                    invalidated_at,
                } => {
                    let platform = target.platform();
                    let (apns_topic, fcm_project, environment) = match platform {
                        Platform::Apns => (
                            app.apns_topic.clone(),
                            String::new(),
                            app.apns_environment.clone(),
                        ),
                        _ => (
                            String::new(),
                            app.fcm_project.clone(),
                            "production".to_string(),
                        ),
                    };
                    events.push((
                        index,
                        TokenInvalidated {
                            event_id: event_id(&ctx.source_message_id, platform, &target.token),
                            platform: platform as i32,
                            token: target.token.clone(),
                            app: app.dispatchers.name.clone(),
                            environment,
                            apns_topic,
                            fcm_project,
                            reason: reason as i32,
                            provider_reason,
                            invalidated_at: Some(timestamp(invalidated_at.unwrap_or(observed))),
                            observed_at: Some(timestamp(observed)),
                            recipient: request.recipient.clone(),
                            request_id: request.request_id.clone(),
                            source_message_id: ctx.source_message_id.clone(),
                        },
                    ));
                }
                Outcome::Rejected { reason } => {
                    let part = dead.entry(reason.code()).or_insert_with(|| DeadPart {
                        indices: Vec::new(),
                        details: Vec::new(),
                    });
                    part.indices.push(index);
                    part.details.push(format!("target {index}: {reason}"));
                }
                Outcome::Retryable { .. } => carry.push(index),
            }
        }

        // §5.5 feedback before ack. A token listed twice is reported once. If
        // Pub/Sub does not confirm, the dead targets are carried forward
        // (resending to a dead token is harmless) rather than resending the
        // delivered siblings.
        if !events.is_empty() {
            events = push_dispatch_feedback::dedup(events, |(_, e)| e);
            let batch: Vec<TokenInvalidated> = events.iter().map(|(_, e)| e.clone()).collect();
            match self.outputs.feedback.publish_all(&batch).await {
                Ok(()) => {
                    finals += events.len();
                    for e in &batch {
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
                    self.count_publish_failure("feedback");
                    tracing::warn!(message_id = %message.message_id, error = %e, "feedback not confirmed; carrying the dead tokens forward");
                    carry.extend(events.iter().map(|(i, _)| *i));
                }
            }
        }

        // Dead-letter the refused targets, one message per error code.
        for (code, part) in dead {
            let detail = part.details.join("; ");
            match self
                .dead_letter_targets(&ctx, &request, &part.indices, code, &detail)
                .await
            {
                Ok(()) => finals += part.indices.len(),
                Err(e) => {
                    self.count_publish_failure("dead_letter");
                    tracing::warn!(message_id = %message.message_id, error = %e, "dead letter not confirmed; carrying targets forward");
                    carry.extend(part.indices);
                }
            }
        }

        if carry.is_empty() {
            self.observe_end_to_end(&ctx);
            return Settle::Ack(MessageResult::Acked);
        }
        carry.sort_unstable();
        carry.dedup();

        // §5.3 nothing reached a final outcome: Pub/Sub retries the whole
        // message, except on the last delivery attempt, where we dead-letter
        // it ourselves so that it carries a reason.
        if finals == 0 {
            return self
                .hand_back(&ctx, "no target reached a final outcome")
                .await;
        }

        // §5.4 some targets are final: carry the rest forward in a new
        // request so that the delivered ones are not sent again.
        let next_attempt = ctx.push_attempt + 1;
        if next_attempt > self.settings.max_republish {
            let detail = format!(
                "targets still failing at push_attempt {} (dispatch.max_republish {}: the original and {} republished remainders)",
                ctx.push_attempt,
                self.settings.max_republish,
                ctx.push_attempt.saturating_sub(1)
            );
            return match self
                .dead_letter_targets(&ctx, &request, &carry, RETRIES_EXHAUSTED, &detail)
                .await
            {
                Ok(()) => {
                    self.observe_end_to_end(&ctx);
                    Settle::Ack(MessageResult::Acked)
                }
                Err(e) => {
                    self.count_publish_failure("dead_letter");
                    tracing::warn!(message_id = %message.message_id, error = %e, "dead letter not confirmed; nacking");
                    Settle::Nack
                }
            };
        }
        match self.republish(&ctx, &request, &carry, next_attempt).await {
            Ok(id) => {
                // `carried` lists the positions (in this message's request) of the
                // targets carried forward, so that a run can be reconciled.
                let carried = carry
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                tracing::info!(message_id = %message.message_id, republished_as = %id, targets = carry.len(), carried = %carried, push_attempt = next_attempt, "carried retryable targets forward");
                Settle::Ack(MessageResult::Republished)
            }
            Err(e) => {
                self.count_publish_failure("republish");
                if self.is_last_attempt(&ctx) {
                    // Nacking now would let Pub/Sub dead-letter the whole message
                    // without a reason; dead-letter only what is left instead.
                    let detail = format!(
                        "targets still failing on delivery attempt {} and their republish was not confirmed ({e})",
                        self.settings.max_delivery_attempts
                    );
                    if self
                        .dead_letter_targets(&ctx, &request, &carry, RETRIES_EXHAUSTED, &detail)
                        .await
                        .is_ok()
                    {
                        self.observe_end_to_end(&ctx);
                        return Settle::Ack(MessageResult::Acked);
                    }
                    self.count_publish_failure("dead_letter");
                }
                // The delivered targets will be sent again on redelivery: one
                // of the duplicate windows of SPEC §5.4.
                self.metrics.duplicate_risk("republish_failed");
                tracing::warn!(message_id = %message.message_id, error = %e, "republish not confirmed; nacking (delivered targets may be resent)");
                Settle::Nack
            }
        }
    }

    /// Whether this is the message's last delivery attempt: a nack now makes
    /// Pub/Sub's DeadLetterPolicy forward it without a `push_error`.
    fn is_last_attempt(&self, ctx: &Context<'_>) -> bool {
        ctx.delivery_attempt
            .is_some_and(|a| a >= self.settings.max_delivery_attempts)
    }

    /// Hands the message back to Pub/Sub (nack; the RetryPolicy backs off),
    /// except on its last delivery attempt: then it is dead-lettered here
    /// with `push_error=retries_exhausted`, so that every dead letter carries
    /// a reason (SPEC §5.3). If that publish fails, nack anyway: the
    /// DeadLetterPolicy still catches it.
    async fn hand_back(&self, ctx: &Context<'_>, why: &str) -> Settle {
        if !self.is_last_attempt(ctx) {
            return Settle::Nack;
        }
        let detail = format!(
            "{why} on the last delivery attempt ({} of {})",
            ctx.delivery_attempt.unwrap_or_default(),
            self.settings.max_delivery_attempts
        );
        self.dead_letter_message(ctx, RETRIES_EXHAUSTED, &detail)
            .await
    }

    /// Sends to one target, retrying in process while the total wait stays
    /// within `dispatch.max_in_process_wait` (SPEC §5.3). Before every
    /// attempt the request's deadline is checked again (SPEC §5.6): a retry
    /// or a wait never sends a push whose `ttl` ran out.
    async fn send_with_retries(
        &self,
        app_index: usize,
        request: &PushRequest,
        index: usize,
        deadline: Deadline,
    ) -> Outcome {
        let app = &self.apps[app_index];
        let target = &request.targets[index];
        let platform = target.platform();
        let shutting_down = Outcome::Retryable {
            after: None,
            cause: RetryCause::ShuttingDown,
        };
        let (Some(dispatcher), Some(controls)) = (
            app.dispatchers.for_platform(platform),
            self.controls_of(app_index, platform),
        ) else {
            // Validation guarantees a dispatcher; keep the target rather than lose it.
            return shutting_down;
        };
        let started = Instant::now();
        let mut retries = 0u32;
        loop {
            if deadline.has_passed() {
                controls.handles.count(Outcome::Expired.label());
                return Outcome::Expired;
            }
            // §5.8: while the circuit is open, nothing is sent; the target is
            // carried forward. A probe given up before its answer (cancelled,
            // draining) is handed back when `admitted` is dropped.
            let admitted = controls.circuit.enter();
            if admitted.admission() == Admission::Rejected {
                controls.handles.count("circuit_open");
                return Outcome::Retryable {
                    after: None,
                    cause: RetryCause::CircuitOpen,
                };
            }
            if let Some(limit) = &controls.limit {
                // Wait for the rate limit only within the in-process budget;
                // a longer wait goes back to Pub/Sub rather than holding the lease.
                let budget = self
                    .settings
                    .max_in_process_wait
                    .saturating_sub(started.elapsed());
                match limit.reserve_within(budget) {
                    Ok(wait) if wait.is_zero() => {}
                    Ok(wait) => tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.draining.cancelled() => return shutting_down,
                    },
                    Err(wait) => {
                        controls.handles.count("rate_limited");
                        return Outcome::Retryable {
                            after: Some(wait),
                            cause: RetryCause::RateLimited,
                        };
                    }
                }
            }
            let permit = tokio::select! {
                p = self.sends.acquire() => p,
                () = self.draining.cancelled() => return shutting_down,
            };
            let Ok(permit) = permit else {
                return shutting_down;
            };
            if deadline.has_passed() {
                // The rate limit or the concurrency limit made it wait past its ttl.
                controls.handles.count(Outcome::Expired.label());
                return Outcome::Expired;
            }
            let t0 = Instant::now();
            let outcome = dispatcher
                .send(Push {
                    request,
                    token: &target.token,
                    expires_at: deadline.expires_at,
                })
                .await;
            drop(permit);
            admitted.record(&outcome);
            self.count_refreshes(
                controls,
                dispatcher.token_refreshes(),
                platform,
                &app.dispatchers.name,
            );
            controls
                .handles
                .circuit_open
                .set(i64::from(controls.circuit.is_open()));
            controls
                .handles
                .send_duration
                .observe(t0.elapsed().as_secs_f64());
            controls.handles.count(outcome.label());
            let current = tracing::Span::current();
            current.record("push.outcome", outcome.label());
            current.record("push.attempts", retries + 1);
            if let Some(status) = provider_status(&outcome) {
                current.record("http.response.status_code", status);
            }
            tracing::debug!(platform = platform.label(), token = %redact_token(&target.token), outcome = outcome.label(), "sent");

            let Outcome::Retryable { after, cause } = &outcome else {
                return outcome;
            };
            if matches!(cause, RetryCause::Timeout | RetryCause::Connection) {
                // The request may have reached the provider: a retry may resend it.
                self.metrics.duplicate_risk("answer_lost");
            }
            let wait = after.unwrap_or_else(|| backoff(retries));
            if self.draining.is_cancelled()
                || started.elapsed() + wait > self.settings.max_in_process_wait
            {
                return outcome;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.draining.cancelled() => return outcome,
            }
            retries += 1;
        }
    }

    /// Adds the refreshes the dispatcher made since last seen to the metric.
    fn count_refreshes(
        &self,
        controls: &Controls,
        now: push_dispatch_dispatch::TokenRefreshes,
        platform: Platform,
        app: &str,
    ) {
        use std::sync::atomic::Ordering;
        for (seen, value, result) in [
            (&controls.refreshes_seen.0, now.ok, "ok"),
            (&controls.refreshes_seen.1, now.failed, "error"),
        ] {
            let before = seen.fetch_max(value, Ordering::Relaxed);
            if value > before {
                self.metrics
                    .token_refreshes
                    .get_or_create(&RefreshLabels {
                        platform: platform.label(),
                        app: app.to_string(),
                        result,
                    })
                    .inc_by(value - before);
            }
        }
    }

    fn controls_of(&self, app_index: usize, platform: Platform) -> Option<&Controls> {
        let pair = self.controls.get(app_index)?;
        match platform {
            Platform::Apns => Some(&pair[0]),
            Platform::Fcm => Some(&pair[1]),
            Platform::Unspecified => None,
        }
    }

    /// §5.9: counts this message's final answers per platform in the guard and
    /// returns, per platform, whether suspicious dead-token reasons are held.
    fn guard_verdicts(
        &self,
        app_index: usize,
        app: &str,
        finals: &[(Platform, Option<push_dispatch_proto::v1::Reason>)],
    ) -> [Verdict; 2] {
        let mut verdicts = [Verdict::Report, Verdict::Report];
        for (slot, platform) in [(0usize, Platform::Apns), (1, Platform::Fcm)] {
            let sends = finals.iter().filter(|(p, _)| *p == platform).count() as u64;
            let suspicious = finals
                .iter()
                .filter(|(p, r)| *p == platform && r.is_some_and(is_suspicious))
                .count() as u64;
            let Some(controls) = self.controls_of(app_index, platform) else {
                continue;
            };
            if sends > 0 {
                controls.guard.record(sends, suspicious);
            }
            let (verdict, changed) = controls.guard.verdict();
            if changed {
                Self::guard_changed(controls, platform, app);
            }
            verdicts[slot] = verdict;
        }
        verdicts
    }

    /// Publishes and logs a change of a guard's tripped state.
    fn guard_changed(controls: &Controls, platform: Platform, app: &str) {
        let tripped = controls.guard.is_tripped();
        controls.handles.guard_tripped.set(i64::from(tripped));
        if tripped {
            tracing::error!(
                app,
                platform = platform.label(),
                "invalidation guard tripped: most tokens look dead (BadDeviceToken, DeviceTokenNotForTopic or SENDER_ID_MISMATCH); check the endpoint, topic and project of this app. Dead-token reports are held and dead-lettered with push_error=invalidation_guard; replay them after the fix"
            );
        } else {
            tracing::warn!(
                app,
                platform = platform.label(),
                "invalidation guard released"
            );
        }
    }

    /// Brings up to date the gauges that otherwise only traffic updates: a
    /// guard whose window slid past the bad period is released, a circuit
    /// whose `open_for` passed stops counting as open, so that alerts on
    /// them resolve even when no more pushes come. `run` calls it every few
    /// seconds.
    pub fn refresh_gauges(&self) {
        for (app, pair) in self.apps.iter().zip(&self.controls) {
            for (controls, platform) in pair.iter().zip([Platform::Apns, Platform::Fcm]) {
                if controls.guard.verdict().1 {
                    Self::guard_changed(controls, platform, &app.dispatchers.name);
                }
                controls
                    .handles
                    .circuit_open
                    .set(i64::from(controls.circuit.is_open()));
            }
        }
    }

    /// Publishes the whole original message to the dead-letter topic, then
    /// acks; if Pub/Sub does not confirm, nacks (the DeadLetterPolicy catches it).
    async fn dead_letter_message(
        &self,
        ctx: &Context<'_>,
        code: &'static str,
        detail: &str,
    ) -> Settle {
        let mut attrs = carried_attributes(&ctx.message.attributes);
        attrs.extend(error_attributes(ctx, code, detail));
        if ctx.encoding == Encoding::Binary {
            // `googclient_schemaencoding` is not carried: say it another way.
            attrs.insert(
                "content-type".into(),
                Encoding::Binary.content_type().into(),
            );
        }
        let (publisher, topic) = &self.outputs.dead_letter;
        match publish_confirmed(publisher, topic, ctx.message.data.to_vec(), attrs).await {
            Ok(_) => {
                self.count_dead_letter(code);
                tracing::warn!(message_id = %ctx.message.message_id, push_error = code, detail = %truncate_utf8(detail, MAX_DETAIL_BYTES), "dead-lettered message");
                self.observe_end_to_end(ctx);
                Settle::Ack(MessageResult::DeadLettered)
            }
            Err(e) => {
                self.count_publish_failure("dead_letter");
                tracing::warn!(message_id = %ctx.message.message_id, error = %e, "dead letter not confirmed; nacking");
                Settle::Nack
            }
        }
    }

    /// Publishes a request holding only `indices` to the dead-letter topic.
    async fn dead_letter_targets(
        &self,
        ctx: &Context<'_>,
        request: &PushRequest,
        indices: &[usize],
        code: &'static str,
        detail: &str,
    ) -> Result<(), PublishError> {
        let part = request.with_targets(indices);
        let body = encode_or_binary(&part, ctx.encoding);
        let mut attrs = carried_attributes(&ctx.message.attributes);
        attrs.extend(error_attributes(ctx, code, detail));
        attrs.insert("content-type".into(), body.1.content_type().into());
        propagation::inject_current(&mut attrs);
        let (publisher, topic) = &self.outputs.dead_letter;
        publish_confirmed(publisher, topic, body.0, attrs).await?;
        self.count_dead_letter(code);
        tracing::warn!(message_id = %ctx.message.message_id, push_error = code, targets = indices.len(), detail = %truncate_utf8(detail, MAX_DETAIL_BYTES), "dead-lettered targets");
        Ok(())
    }

    /// Publishes the still-retryable targets as a new request (SPEC §5.4).
    async fn republish(
        &self,
        ctx: &Context<'_>,
        request: &PushRequest,
        indices: &[usize],
        push_attempt: u32,
    ) -> Result<String, PublishError> {
        let part = request.with_targets(indices);
        let (body, encoding) = encode_or_binary(&part, ctx.encoding);
        let mut attrs = carried_attributes(&ctx.message.attributes);
        attrs.insert(ATTR_PUSH_ATTEMPT.into(), push_attempt.to_string());
        attrs.insert(ATTR_SOURCE_MESSAGE_ID.into(), ctx.source_message_id.clone());
        if let Some(t) = ctx.first_publish_attribute() {
            attrs.insert(ATTR_FIRST_PUBLISH_TIME.into(), t);
        }
        attrs.insert("content-type".into(), encoding.content_type().into());
        propagation::inject_current(&mut attrs);
        let (publisher, topic) = &self.outputs.requests;
        publish_confirmed(publisher, topic, body, attrs).await
    }

    fn count_send(&self, platform: Platform, app: &str, outcome: &'static str) {
        self.metrics
            .sends
            .get_or_create(&SendLabels {
                platform: platform.label(),
                app: app.to_string(),
                outcome,
            })
            .inc();
    }

    fn count_dead_letter(&self, code: &'static str) {
        self.metrics
            .dead_letters
            .get_or_create(&ReasonLabels { reason: code })
            .inc();
    }

    fn count_publish_failure(&self, what: &'static str) {
        self.metrics
            .publish_failures
            .get_or_create(&ReasonLabels { reason: what })
            .inc();
    }

    fn observe_end_to_end(&self, ctx: &Context<'_>) {
        if let Some(first) = ctx.first_publish_time
            && let Ok(d) = SystemTime::now().duration_since(first)
        {
            self.metrics.end_to_end.observe(d.as_secs_f64());
        }
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

impl<'a> Context<'a> {
    /// `push_first_publish_time` as written on what we publish (RFC 3339).
    fn first_publish_attribute(&self) -> Option<String> {
        self.first_publish_time
            .and_then(|t| push_dispatch_subscriber::wkt::Timestamp::try_from(t).ok())
            .map(String::from)
    }

    fn of(message: &'a Message, delivery_attempt: Option<i32>) -> Context<'a> {
        let attrs = &message.attributes;
        let publish_time = message.publish_time.and_then(to_system_time);
        let first_publish_time = attrs
            .get(ATTR_FIRST_PUBLISH_TIME)
            .and_then(|v| push_dispatch_subscriber::wkt::Timestamp::try_from(v.as_str()).ok())
            .and_then(to_system_time)
            .or(publish_time);
        Context {
            message,
            encoding: Encoding::from_attributes(attrs),
            source_message_id: attrs
                .get(ATTR_SOURCE_MESSAGE_ID)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| message.message_id.clone()),
            first_publish_time,
            push_attempt: attrs
                .get(ATTR_PUSH_ATTEMPT)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            delivery_attempt,
        }
    }
}

fn to_system_time(t: push_dispatch_subscriber::wkt::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(t).ok()
}

/// The provider's HTTP status in an outcome, when it carries one.
fn provider_status(outcome: &Outcome) -> Option<u16> {
    match outcome {
        Outcome::Delivered => Some(200),
        Outcome::Retryable {
            cause: RetryCause::Status { status, .. },
            ..
        }
        | Outcome::Rejected {
            reason: push_dispatch_dispatch::RejectReason::Provider { status, .. },
        } => Some(*status),
        _ => None,
    }
}

/// When a request stops being deliverable (SPEC §5.6): first publish + `ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deadline {
    /// First publish + `ttl`, for the providers' own expiry (`apns-expiration`,
    /// FCM `ttl`); `None` without a ttl.
    expires_at: Option<SystemTime>,
    /// Whether a passed `expires_at` makes the request expired: not for a
    /// zero ttl, which means "now or never" to APNs, nor without a known
    /// first publish time.
    enforced: bool,
}

impl Deadline {
    fn of(request: &PushRequest, first_publish: Option<SystemTime>) -> Deadline {
        let none = Deadline {
            expires_at: None,
            enforced: false,
        };
        let Some(ttl) = &request.ttl else {
            return none;
        };
        let ttl = Duration::new(
            u64::try_from(ttl.seconds).unwrap_or(0),
            u32::try_from(ttl.nanos).unwrap_or(0).min(999_999_999),
        );
        // Validation caps the ttl; an unrepresentable deadline still means "no deadline", not a panic.
        let Some(expires_at) = first_publish
            .unwrap_or_else(SystemTime::now)
            .checked_add(ttl)
        else {
            return none;
        };
        Deadline {
            expires_at: Some(expires_at),
            enforced: !ttl.is_zero() && first_publish.is_some(),
        }
    }

    /// Whether the ttl has run out now.
    fn has_passed(&self) -> bool {
        self.enforced
            && self.expires_at.is_some_and(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .is_ok_and(|d| !d.is_zero())
            })
    }
}

/// Jittered exponential backoff: 100 ms, 200 ms, 400 ms, … capped at 2 s,
/// each drawn from [half, full] of its step.
fn backoff(retries: u32) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(1u32 << retries.min(10))
        .min(BACKOFF_CAP);
    let half = step / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Most producer attributes carried onto what we publish: Pub/Sub allows 100
/// per message, and ours (error, attempt, first publish, content type, trace
/// context) take up to 11. Without this cap a producer's message with many
/// attributes could never be dead-lettered or republished, and would be
/// redelivered (and its delivered targets resent) until Pub/Sub gave up.
const MAX_CARRIED_ATTRIBUTES: usize = 100 - 16;

/// Attributes copied from the source message onto what we publish: all but
/// Pub/Sub's reserved `googclient_` keys and our own error attributes, at
/// most [`MAX_CARRIED_ATTRIBUTES`] of them (the first by key).
fn carried_attributes(attrs: &HashMap<String, String>) -> HashMap<String, String> {
    let mut carried: Vec<(&String, &String)> = attrs
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("googclient_")
                && !k.starts_with("CloudPubSubDeadLetter")
                && k.as_str() != ATTR_PUSH_ERROR
                && k.as_str() != ATTR_PUSH_ERROR_DETAIL
                && k.as_str() != ATTR_DELIVERY_ATTEMPT
        })
        .collect();
    if carried.len() > MAX_CARRIED_ATTRIBUTES {
        carried.sort_unstable_by_key(|(k, _)| *k);
        tracing::warn!(
            attributes = carried.len(),
            kept = MAX_CARRIED_ATTRIBUTES,
            "source message has more attributes than fit beside ours; dropping the last by key"
        );
        carried.truncate(MAX_CARRIED_ATTRIBUTES);
    }
    carried
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn error_attributes(ctx: &Context<'_>, code: &str, detail: &str) -> Vec<(String, String)> {
    let mut attrs = vec![
        (ATTR_PUSH_ERROR.to_string(), code.to_string()),
        (
            ATTR_PUSH_ERROR_DETAIL.to_string(),
            truncate_utf8(detail, MAX_DETAIL_BYTES).to_string(),
        ),
        (
            ATTR_SOURCE_MESSAGE_ID.to_string(),
            ctx.source_message_id.clone(),
        ),
    ];
    if let Some(a) = ctx.delivery_attempt {
        attrs.push((ATTR_DELIVERY_ATTEMPT.to_string(), a.to_string()));
    }
    // A replay keeps the request's age: its ttl still counts from the first publish.
    if let Some(t) = ctx.first_publish_attribute() {
        attrs.push((ATTR_FIRST_PUBLISH_TIME.to_string(), t));
    }
    attrs
}

/// Encodes in the source's encoding; falls back to binary if JSON fails (it cannot in practice).
fn encode_or_binary(request: &PushRequest, encoding: Encoding) -> (Vec<u8>, Encoding) {
    match encode_message(request, encoding) {
        Ok(body) => (body, encoding),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode request as JSON; using binary protobuf");
            (
                encode_message(request, Encoding::Binary).unwrap_or_default(),
                Encoding::Binary,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for r in 0..20 {
            let b = backoff(r);
            assert!(b <= BACKOFF_CAP, "{b:?}");
            assert!(b >= BACKOFF_BASE / 2, "{b:?}");
        }
        assert!(backoff(5) >= Duration::from_millis(1000));
    }

    #[test]
    fn expiry_counts_from_the_first_publish() {
        let mut req = PushRequest::default();
        let long_ago = SystemTime::now() - Duration::from_secs(120);
        let expired = |req: &PushRequest, first| Deadline::of(req, first).has_passed();
        assert!(!expired(&req, Some(long_ago)), "no ttl never expires");
        req.ttl = Some(push_dispatch_proto::pbjson_types::Duration {
            seconds: 60,
            nanos: 0,
        });
        assert!(expired(&req, Some(long_ago)));
        assert!(!expired(&req, Some(SystemTime::now())));
        assert!(!expired(&req, None), "no first publish time: not enforced");
        assert_eq!(
            Deadline::of(&req, Some(long_ago)).expires_at,
            Some(long_ago + Duration::from_secs(60))
        );
        req.ttl = Some(push_dispatch_proto::pbjson_types::Duration {
            seconds: 0,
            nanos: 0,
        });
        assert!(
            !expired(&req, Some(long_ago)),
            "ttl 0 is now-or-never, not expired"
        );
        assert_eq!(
            Deadline::of(&req, Some(long_ago)).expires_at,
            Some(long_ago)
        );
    }

    #[test]
    fn a_ttl_beyond_any_clock_is_no_deadline_rather_than_a_panic() {
        let req = PushRequest {
            ttl: Some(push_dispatch_proto::pbjson_types::Duration {
                seconds: i64::MAX,
                nanos: 999_999_999,
            }),
            ..PushRequest::default()
        };
        let d = Deadline::of(&req, Some(SystemTime::now()));
        assert_eq!(d.expires_at, None);
        assert!(!d.has_passed());
    }

    #[test]
    fn reserved_and_error_attributes_are_not_carried() {
        let attrs: HashMap<String, String> = [
            ("googclient_schemaencoding", "BINARY"),
            ("push_error", "x"),
            ("CloudPubSubDeadLetterSourceDeliveryCount", "5"),
            ("trace", "keep"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let carried = carried_attributes(&attrs);
        assert_eq!(carried.len(), 1);
        assert_eq!(carried["trace"], "keep");
    }

    #[test]
    fn a_crowd_of_producer_attributes_leaves_room_for_ours() {
        let attrs: HashMap<String, String> = (0..100)
            .map(|i| (format!("k{i:03}"), "v".to_string()))
            .collect();
        let carried = carried_attributes(&attrs);
        assert_eq!(carried.len(), MAX_CARRIED_ATTRIBUTES);
        assert!(carried.contains_key("k000") && !carried.contains_key("k099"));
        let mut ours = carried;
        for k in [
            ATTR_PUSH_ERROR,
            ATTR_PUSH_ERROR_DETAIL,
            ATTR_SOURCE_MESSAGE_ID,
            ATTR_DELIVERY_ATTEMPT,
            ATTR_FIRST_PUBLISH_TIME,
            ATTR_PUSH_ATTEMPT,
            "content-type",
            "traceparent",
            "tracestate",
            "googclient_traceparent",
            "googclient_tracestate",
        ] {
            ours.insert(k.to_string(), "x".to_string());
        }
        assert!(
            push_dispatch_subscriber::publish::build_message(Vec::new(), ours).is_ok(),
            "fits Pub/Sub's 100 attributes"
        );
    }
}
