//! One configured app ([`App`]) and, per platform, the [`Provider`] that
//! sends its pushes: the dispatcher (APNs or FCM client, or the stub), the
//! sender identity that feedback events name, and the controls of SPEC §5
//! that belong to one app and platform: circuit (§5.8), mass-invalidation
//! guard (§5.9), rate limit, and metric handles resolved once.
//!
//! [`Provider::send`] is the send loop of one target: ttl check before every
//! attempt (§5.6), circuit admission, rate limit within the in-process
//! budget, a process-wide send slot, the dispatcher's answer, and in-process
//! retries with jittered backoff honouring `Retry-After` (§5.3). It runs in
//! the caller's task, inside the caller's span.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use push_dispatch_config::{CircuitConfig, GuardConfig};
use push_dispatch_dispatch::{Dispatcher, Outcome, Push, QuotaScope, RejectReason, RetryCause};
use push_dispatch_feedback::Sender;
use push_dispatch_proto::v1::{Platform, PushRequest};
use push_dispatch_proto::{ConfiguredApp, redact_token};
use tokio::sync::Semaphore;

use crate::circuit::{Admission, Circuit, Transition};
use crate::context::Deadline;
use crate::fleet::{GuardStore, SharedGuard};
use crate::fleet_rate::FleetRate;
use crate::guard::{Guard, Verdict};
use crate::labels::{DuplicateWindow, RefreshResult, SendOutcome};
use crate::metrics::{Metrics, SendHandles};
use crate::rate_limit::{AdaptiveRate, Cut};
use crate::shutdown::Shutdown;
use crate::target::{NotSent, TargetResult, outcome_label};

/// First in-process backoff.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest single in-process backoff when the provider gives no Retry-After.
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// One configured app: its name and its provider per platform.
#[derive(Debug)]
pub struct App {
    /// The app's configured name.
    pub name: String,
    /// APNs, when the app has an `apns` block.
    pub apns: Option<Provider>,
    /// FCM, when the app has an `fcm` block.
    pub fcm: Option<Provider>,
}

impl App {
    /// The provider for `platform`, if the app has one.
    pub fn provider(&self, platform: Platform) -> Option<&Provider> {
        match platform {
            Platform::Apns => self.apns.as_ref(),
            Platform::Fcm => self.fcm.as_ref(),
            Platform::Unspecified => None,
        }
    }

    /// Its providers, APNs first.
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.apns.iter().chain(self.fcm.iter())
    }
}

impl ConfiguredApp for App {
    fn name(&self) -> &str {
        &self.name
    }

    fn serves(&self, platform: Platform) -> bool {
        self.provider(platform).is_some()
    }
}

/// What every provider's send loop shares: the process-wide send slots
/// (`dispatch.concurrency`), the in-process wait budget, the shutdown state
/// and the process-wide metrics.
#[derive(Debug)]
pub struct SendLimits {
    /// One permit per send in flight, whole process.
    pub slots: Semaphore,
    /// `dispatch.max_in_process_wait`.
    pub max_in_process_wait: Duration,
    /// Draining ends every wait.
    pub shutdown: Shutdown,
    /// Process-wide metrics (duplicate risks).
    pub metrics: Arc<Metrics>,
}

/// The sending side of one app and platform.
#[derive(Debug)]
pub struct Provider {
    app: String,
    dispatcher: Arc<dyn Dispatcher>,
    /// Its bulkhead: sends in flight for this app and platform, so that a
    /// stuck provider holds only its share of `dispatch.concurrency`.
    bulkhead: Semaphore,
    /// Messages parked waiting on this provider (SPEC §9), capped.
    parked: Arc<Semaphore>,
    sender: Sender,
    circuit: Circuit,
    guard: Guard,
    /// This pod's send rate: the configured `rate_limit`, cut in half on
    /// an FCM project quota and recovered additively (AIMD).
    rate: AdaptiveRate,
    handles: SendHandles,
    metrics: Arc<Metrics>,
    /// Token refreshes already counted in the metric: (ok, failed).
    refreshes_seen: (AtomicU64, AtomicU64),
    /// The last answer that was not a delivery or a dead token, and when.
    last_error: std::sync::Mutex<Option<(SystemTime, String)>>,
    /// The guard's window shared with the fleet (issue 16), if coordinated.
    shared_guard: Option<SharedGuard>,
    /// The rate limit shared with the fleet (`scope: fleet`), if any.
    fleet_rate: Option<FleetRate>,
}

/// How a provider is set up, besides its dispatcher.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// Who sends, as feedback events name it.
    pub sender: Sender,
    /// `rate_limit`, pushes per second for this pod.
    pub rate_limit: Option<f64>,
    /// `dispatch.circuit`.
    pub circuit: CircuitConfig,
    /// `feedback.guard`.
    pub guard: GuardConfig,
    /// Sends in flight at most for this app and platform (its bulkhead).
    pub bulkhead: usize,
    /// Messages parked at most waiting on this app and platform.
    pub max_parked: usize,
}

impl ProviderSettings {
    /// One app and platform's share of a budget (its bulkhead of
    /// `dispatch.concurrency`, its park slots of `max_outstanding_messages`):
    /// `share` of `concurrency`, at least `min`, at most `concurrency` (SPEC §9).
    pub fn share_of(concurrency: u32, share: f64, min: u32) -> usize {
        let concurrency = concurrency.max(1);
        let share = (f64::from(concurrency) * share).ceil();
        // `share` is at most `concurrency` (a u32), so the cast cannot wrap.
        let share = if share.is_finite() && share > 0.0 {
            share as u32
        } else {
            1
        };
        share.max(min).min(concurrency) as usize
    }
}

impl Provider {
    /// A provider of `app` sending through `dispatcher`; its metric handles
    /// are resolved here, once.
    pub fn new(
        app: &str,
        dispatcher: Arc<dyn Dispatcher>,
        settings: ProviderSettings,
        metrics: Arc<Metrics>,
    ) -> Provider {
        let platform = settings.sender.platform();
        let handles = metrics.send_handles(platform.label(), app);
        Provider {
            app: app.to_string(),
            rate: AdaptiveRate::new(settings.rate_limit, Instant::now())
                .with_gauge(handles.send_rate_limit.clone()),
            handles,
            dispatcher,
            bulkhead: Semaphore::new(settings.bulkhead.max(1)),
            parked: Arc::new(Semaphore::new(settings.max_parked)),
            sender: settings.sender,
            circuit: Circuit::new(settings.circuit),
            guard: Guard::new(settings.guard),
            metrics,
            refreshes_seen: Default::default(),
            last_error: std::sync::Mutex::new(None),
            shared_guard: None,
            fleet_rate: None,
        }
    }

    /// Shares the guard's window with the fleet through `store`.
    pub fn with_shared_guard(mut self, store: Arc<dyn GuardStore>) -> Provider {
        let window = self.guard.config().window;
        self.shared_guard = Some(SharedGuard::new(store, &self.app, self.platform(), window));
        self
    }

    /// Limits sends with the fleet's rate (`rate_limit.scope: fleet`).
    pub fn with_fleet_rate(mut self, rate: FleetRate) -> Provider {
        self.fleet_rate = Some(rate);
        self
    }

    /// Adds the guard's batched answers to the fleet's window (periodic).
    pub async fn flush_shared(&self) {
        if let Some(shared) = &self.shared_guard {
            shared.flush().await;
        }
    }

    /// The platform it sends to.
    pub fn platform(&self) -> Platform {
        self.sender.platform()
    }

    /// Who sends, as feedback events name it.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// Its dispatcher.
    pub fn dispatcher(&self) -> &Arc<dyn Dispatcher> {
        &self.dispatcher
    }

    /// A place to park a message waiting on this provider, if one is free.
    pub fn try_park(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.parked.clone().try_acquire_owned().ok()
    }

    /// Counts one target under `outcome` without sending it.
    pub fn count(&self, outcome: SendOutcome) {
        self.handles.count(outcome);
    }

    /// Counts a suspicious dead-token report held by the guard.
    pub fn count_held(&self) {
        self.handles.guard_held.inc();
    }

    /// §5.9: counts this message's final answers (`sends`, of which
    /// `suspicious`) in the guard and returns its verdict; logs and
    /// publishes a change of its state.
    ///
    /// With a fleet guard, a message with suspicious answers adds them to the
    /// fleet's window and is judged on the fleet's totals, read back in the
    /// same round trip, before its events are published.
    pub async fn judge(&self, sends: u64, suspicious: u64) -> Verdict {
        if sends > 0 {
            self.guard.record(sends, suspicious);
        }
        let fleet = match &self.shared_guard {
            Some(shared) => shared.judge(sends, suspicious).await,
            None => None,
        };
        let (verdict, changed) = match fleet {
            Some((sends, suspicious)) => self.guard.judge_counts(sends, suspicious),
            None if self.shared_guard.is_some() && self.guard.is_tripped() => {
                // Tripped by the fleet; keep holding until the fleet says otherwise.
                (Verdict::Hold, false)
            }
            None => self.guard.verdict(),
        };
        if changed {
            self.guard_changed();
        }
        verdict
    }

    /// Brings up to date the gauges that otherwise only traffic updates: a
    /// guard whose window slid past the bad period is released, a circuit
    /// whose `open_for` passed stops counting as open.
    pub fn refresh_gauges(&self) {
        // A fleet guard is judged on the fleet's window, at the next
        // suspicious answer; this pod's window alone does not release it.
        if self.shared_guard.is_none() && self.guard.verdict().1 {
            self.guard_changed();
        }
        self.handles
            .circuit_open
            .set(i64::from(self.circuit.is_open()));
    }

    fn guard_changed(&self) {
        let tripped = self.guard.is_tripped();
        self.handles.guard_tripped.set(i64::from(tripped));
        let platform = self.platform().label();
        let (sends, suspicious) = self.guard.counts();
        let config = self.guard.config();
        if tripped {
            tracing::error!(
                app = %self.app,
                platform,
                sends,
                suspicious,
                ratio = config.ratio,
                min_samples = config.min_samples,
                window = ?config.window,
                "invalidation guard tripped: {suspicious} of {sends} answers in the window are BadDeviceToken, DeviceTokenNotForTopic or SENDER_ID_MISMATCH (over {}); check the endpoint, topic and project of this app. Dead-token reports are held and dead-lettered with push_error=invalidation_guard; replay them after the fix",
                config.ratio
            );
        } else {
            tracing::warn!(
                app = %self.app,
                platform,
                sends,
                suspicious,
                ratio = config.ratio,
                "invalidation guard released: {suspicious} of {sends} answers in the window are suspicious"
            );
        }
    }

    /// Logs a change of the circuit's state, with the numbers that decided it.
    fn circuit_changed(&self, change: Transition) {
        let platform = self.platform().label();
        let config = self.circuit.config();
        match change {
            Transition::Opened { requests, failures } => tracing::warn!(
                app = %self.app,
                platform,
                requests,
                failures,
                failure_ratio = config.failure_ratio,
                open_for = ?config.open_for,
                "circuit opened: {failures} of {requests} requests failed at the provider (5xx, timeouts, connection or credential failures, FCM project quota); nothing is sent for {:?}, targets are carried forward",
                config.open_for
            ),
            Transition::Reopened => tracing::warn!(
                app = %self.app,
                platform,
                open_for = ?config.open_for,
                "circuit probe failed: open again for {:?}",
                config.open_for
            ),
            Transition::Closed => tracing::info!(
                app = %self.app,
                platform,
                "circuit closed: the probe succeeded, sending again"
            ),
        }
    }

    /// Sends to one target, retrying in process while the total wait stays
    /// within `dispatch.max_in_process_wait` (SPEC §5.3). Before every
    /// attempt the request's deadline is checked again (SPEC §5.6): a retry
    /// or a wait never sends a push whose `ttl` ran out.
    pub async fn send(
        &self,
        limits: &SendLimits,
        request: &PushRequest,
        token: &str,
        deadline: Deadline,
    ) -> TargetResult {
        self.send_counted(limits, request, token, deadline).await.0
    }

    /// [`Provider::send`], and how many requests it made to the provider
    /// (in-process retries included), for `PushResult.attempts`.
    pub async fn send_counted(
        &self,
        limits: &SendLimits,
        request: &PushRequest,
        token: &str,
        deadline: Deadline,
    ) -> (TargetResult, u32) {
        let mut attempts = 0;
        let result = self
            .send_loop(limits, request, token, deadline, &mut attempts)
            .await;
        (result, attempts)
    }

    async fn send_loop(
        &self,
        limits: &SendLimits,
        request: &PushRequest,
        token: &str,
        deadline: Deadline,
        attempts: &mut u32,
    ) -> TargetResult {
        let started = Instant::now();
        let shutdown = &limits.shutdown;
        let mut retries = 0u32;
        loop {
            if deadline.has_passed() {
                return self.not_sent(NotSent::Expired);
            }
            // §5.8: while the circuit is open, nothing is sent; the target is
            // carried forward. A probe given up before its answer (cancelled,
            // draining) is handed back when `admitted` is dropped.
            let admitted = self.circuit.enter();
            if admitted.admission() == Admission::Rejected {
                return self.not_sent(NotSent::CircuitOpen {
                    wait: self.circuit.reopens_in(),
                });
            }
            // A stuck provider (every connection or its credential in a
            // failure backoff) would fail at once: hand the target back
            // without queueing for a send slot.
            if let Some(wait) = self.dispatcher.backoff() {
                return self.not_sent(NotSent::Backoff { wait });
            }
            // Wait for the rate limit only within the in-process budget; a
            // longer wait goes back to Pub/Sub rather than holding the lease.
            // Asked on every attempt, unlimited too: it measures the send rate.
            let budget = limits.max_in_process_wait.saturating_sub(started.elapsed());
            if let Some(fleet) = &self.fleet_rate {
                let waited = tokio::select! {
                    w = fleet.acquire(budget) => w,
                    () = shutdown.draining() => return TargetResult::NotSent(NotSent::ShuttingDown),
                };
                if let Err(wait) = waited {
                    return self.not_sent(NotSent::RateLimited { wait });
                }
            }
            let budget = limits.max_in_process_wait.saturating_sub(started.elapsed());
            match self.rate.reserve_within(Instant::now(), budget) {
                Ok(wait) if wait.is_zero() => {}
                Ok(wait) => tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.draining() => return TargetResult::NotSent(NotSent::ShuttingDown),
                },
                Err(wait) => return self.not_sent(NotSent::RateLimited { wait }),
            }
            // Its own share first, then a process-wide slot: a provider
            // that hangs holds at most its bulkhead.
            let permits = tokio::select! {
                p = async {
                    let own = self.bulkhead.acquire().await?;
                    let any = limits.slots.acquire().await?;
                    Ok::<_, tokio::sync::AcquireError>((own, any))
                } => p,
                () = shutdown.draining() => return TargetResult::NotSent(NotSent::ShuttingDown),
            };
            let Ok(permits) = permits else {
                return TargetResult::NotSent(NotSent::ShuttingDown);
            };
            if deadline.has_passed() {
                // The rate limit or the concurrency limit made it wait past its ttl.
                return self.not_sent(NotSent::Expired);
            }
            let t0 = Instant::now();
            *attempts += 1;
            let outcome = self
                .dispatcher
                .send(Push {
                    request,
                    token,
                    expires_at: deadline.expires_at,
                    give_up: Some(limits.shutdown.draining_ref()),
                })
                .await;
            drop(permits);
            if let Some(change) = admitted.record(&outcome) {
                self.circuit_changed(change);
            }
            self.adapt_rate(&outcome);
            self.observe(&outcome, t0.elapsed(), retries + 1, token);

            let Outcome::Retryable { after, cause } = &outcome else {
                return TargetResult::Answered(outcome);
            };
            if matches!(cause, RetryCause::Timeout | RetryCause::Connection) {
                // The request may have reached the provider: a retry may resend it.
                self.metrics.duplicate_risk(DuplicateWindow::AnswerLost);
            }
            // `Retry-After: 0` (or a date in the past) still waits a jittered minimum.
            let wait = after.map_or_else(|| backoff(retries), |a| a.max(backoff(retries)));
            if shutdown.is_draining() || started.elapsed() + wait > limits.max_in_process_wait {
                return TargetResult::Answered(outcome);
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.draining() => return TargetResult::Answered(outcome),
            }
            retries += 1;
        }
    }

    /// AIMD on the send rate: an FCM project quota halves it (at most once
    /// a second), deliveries recover it additively.
    fn adapt_rate(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Delivered => self.rate.on_success(Instant::now()),
            Outcome::Retryable {
                cause:
                    RetryCause::Quota {
                        scope: QuotaScope::Project,
                        ..
                    },
                ..
            } => {
                if let Cut::Cut { from, to } = self.rate.on_quota(Instant::now()) {
                    tracing::warn!(
                        app = %self.app,
                        platform = self.platform().label(),
                        from,
                        to,
                        "FCM project quota exceeded: this pod's send rate cut from {from:.1} to {to:.1} pushes/s; it recovers additively while sends succeed"
                    );
                }
            }
            _ => {}
        }
    }

    /// Counts a target the worker did not send (draining is not counted).
    pub fn not_sent(&self, why: NotSent) -> TargetResult {
        let label = match why {
            NotSent::Expired => Some(SendOutcome::Expired),
            NotSent::CircuitOpen { .. } => Some(SendOutcome::CircuitOpen),
            NotSent::Backoff { .. } => Some(SendOutcome::ProviderBackoff),
            NotSent::RateLimited { .. } => Some(SendOutcome::RateLimited),
            NotSent::Duplicate => Some(SendOutcome::DuplicateSuppressed),
            NotSent::ClaimedElsewhere { .. } => Some(SendOutcome::ClaimedElsewhere),
            NotSent::ShuttingDown => None,
        };
        if let Some(label) = label {
            self.handles.count(label);
        }
        TargetResult::NotSent(why)
    }

    /// What `/statusz` shows of this provider: circuit, guard, rate limit,
    /// credential refreshes and the last error.
    pub fn status(&self) -> serde_json::Value {
        let (sends, suspicious) = self.guard.counts();
        let refreshes = self.dispatcher.token_refreshes();
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        serde_json::json!({
            "app": self.app,
            "platform": self.platform().label(),
            "circuit": self.circuit.state_label(),
            "guard": {
                "tripped": self.guard.is_tripped(),
                "sends": sends,
                "suspicious": suspicious,
                "window_seconds": self.guard.config().window.as_secs(),
            },
            "rate_limit": self.rate.current(),
            "rate_limit_configured": self.rate.configured(),
            "credentials": {
                "refreshed": refreshes.ok,
                "failed": refreshes.failed,
                "age_seconds": refreshes
                    .last
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .map(|age| age.as_secs()),
            },
            "last_error": last_error.map(|(at, error)| serde_json::json!({
                "at": humantime::format_rfc3339_seconds(at).to_string(),
                "error": error,
            })),
        })
    }

    /// Metrics, span fields and the debug line of one answer.
    fn observe(&self, outcome: &Outcome, took: Duration, attempts: u32, token: &str) {
        if let Some(error) = describe_failure(outcome) {
            *self
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((SystemTime::now(), error));
        }
        self.count_refreshes();
        self.handles
            .circuit_open
            .set(i64::from(self.circuit.is_open()));
        self.handles.send_duration.observe(took.as_secs_f64());
        let label = outcome_label(outcome);
        self.handles.count(label);
        let current = tracing::Span::current();
        current.record("push.outcome", label.as_str());
        current.record("push.attempts", attempts);
        if let Some(status) = provider_status(outcome) {
            current.record("http.response.status_code", status);
        }
        tracing::debug!(platform = self.platform().label(), token = %redact_token(token), outcome = label.as_str(), "sent");
    }

    /// Adds the refreshes the dispatcher made since last seen to the metric.
    fn count_refreshes(&self) {
        let now = self.dispatcher.token_refreshes();
        for (seen, value, result) in [
            (&self.refreshes_seen.0, now.ok, RefreshResult::Ok),
            (&self.refreshes_seen.1, now.failed, RefreshResult::Error),
        ] {
            let before = seen.fetch_max(value, Ordering::Relaxed);
            if value > before {
                self.metrics.token_refreshes(
                    self.platform().label(),
                    &self.app,
                    result,
                    value - before,
                );
            }
        }
    }
}

/// A failed answer in words, for `/statusz` (None for deliveries and dead tokens).
fn describe_failure(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Delivered | Outcome::TokenInvalid { .. } => None,
        Outcome::Rejected { reason } => Some(format!("refused: {reason}")),
        Outcome::Retryable { cause, .. } => Some(match cause {
            RetryCause::Status {
                status,
                provider_reason,
            } => format!("{status} {provider_reason}"),
            RetryCause::Timeout => "no answer within dispatch.request_timeout".to_string(),
            RetryCause::Connection => "the connection broke with the request in flight".to_string(),
            RetryCause::Unsent => {
                "not sent: the stream was refused, or it was still queued when its time ran out"
                    .to_string()
            }
            RetryCause::Credentials { problem } => problem.clone(),
            RetryCause::Connect { problem } => format!("no connection: {problem}"),
            RetryCause::Quota {
                scope,
                provider_reason,
            } => format!("429 {provider_reason} ({scope:?} quota)"),
        }),
    }
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
            reason: RejectReason::Provider { status, .. },
        } => Some(*status),
        Outcome::Retryable {
            cause: RetryCause::Quota { .. },
            ..
        } => Some(429),
        _ => None,
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
}
