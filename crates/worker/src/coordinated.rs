//! The coordination backend (`push-dispatch-coordination`: in process, or
//! Redis / Memorystore for a fleet) as the worker uses it: the dedup store
//! ([`crate::dedup::DedupStore`]), the guard's shared window
//! ([`crate::fleet::GuardStore`]) and the fleet rate limit's token source
//! ([`crate::fleet_rate::TokenSource`]), plus the pod's heartbeat (how many
//! pods are alive, for the rate limit's fallback share) and the backend's
//! state for the metric `push_dispatch_coordination_up` (1 up, 0 down, −1
//! in process). The backend logs its own state changes once each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use push_dispatch_config::{Config, RateLimit, RateScope};
use push_dispatch_coordination::{
    BackendState, Claim as StoreClaim, Coordinator, DedupKey, DoneAs, GuardScope, RateKey,
    RedisSettings,
};
use push_dispatch_proto::v1::Platform;
use tokio_util::sync::CancellationToken;

use crate::dedup::{Claim, Dedup, DedupStore, Final, Key, Unavailable};
use crate::fleet::GuardStore;
use crate::fleet_rate::{FleetRate, Grant, TokenSource};
use crate::metrics::Metrics;
use crate::provider::App;

/// How long a heartbeat keeps a pod alive.
const HEARTBEAT_TTL: Duration = Duration::from_secs(15);
/// How often a pod says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// The backend, shared by the worker's parts.
#[derive(Clone, Debug)]
pub struct Coordinated {
    coordinator: Coordinator,
    live_pods: Arc<AtomicU32>,
    pod: String,
}

/// The coordination backend could not be set up (a config problem).
#[derive(Debug, thiserror::Error)]
#[error("coordination: {0}")]
pub struct CoordinationError(#[from] push_dispatch_coordination::CoordError);

impl Coordinated {
    /// From `coordination` and `dedup` in the config: Redis when
    /// `coordination.redis_url` is set (never waits for it: calls fail fast
    /// until it answers), else in process.
    pub fn from_config(config: &Config) -> Result<Coordinated, CoordinationError> {
        let c = &config.coordination;
        let coordinator = match &c.redis_url {
            None => Coordinator::in_process(config.dedup.max_entries),
            Some(url) => {
                let mut settings = RedisSettings::new(url.clone());
                settings.ca_file = c.ca_file.clone();
                settings.prefix = c.prefix.clone();
                settings.timeout = c.timeout;
                Coordinator::redis(&settings)?
            }
        };
        let pod = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("pod-{:016x}", rand::random::<u64>()));
        Ok(Coordinated {
            coordinator,
            live_pods: Arc::new(AtomicU32::new(1)),
            pod,
        })
    }

    /// The in-process backend alone (one replica, tests).
    pub fn in_process(max_entries: usize) -> Coordinated {
        Coordinated {
            coordinator: Coordinator::in_process(max_entries),
            live_pods: Arc::new(AtomicU32::new(1)),
            pod: "local".into(),
        }
    }

    /// Whether the backend is shared with other pods (Redis).
    pub fn is_shared(&self) -> bool {
        matches!(self.coordinator, Coordinator::Redis(_))
    }

    /// Dedup through this backend, when `dedup.window` is set.
    pub fn dedup(&self, config: &Config, metrics: &Metrics) -> Option<Dedup> {
        let window = config.dedup.window?;
        Some(Dedup::new(
            Arc::new(self.clone()),
            window,
            config.dedup.pending,
            metrics.dedup_unavailable.clone(),
        ))
    }

    /// Gives every provider the fleet's guard window (when the backend is
    /// shared) and its fleet rate limit (`rate_limit.scope: fleet`).
    pub fn attach(&self, apps: Vec<App>, config: &Config) -> Vec<App> {
        apps.into_iter()
            .zip(&config.apps)
            .map(|(app, conf)| {
                let apns_rate = conf.apns.as_ref().and_then(|a| {
                    fleet(a.rate_limit).map(|r| (r, RateKey::apns(&a.team_id, &a.topic)))
                });
                let fcm_rate = conf
                    .fcm
                    .as_ref()
                    .and_then(|f| fleet(f.rate_limit).map(|r| (r, RateKey::fcm(&f.project_id))));
                App {
                    apns: app
                        .apns
                        .map(|p| self.attach_one(p, &app.name, Platform::Apns, apns_rate)),
                    fcm: app
                        .fcm
                        .map(|p| self.attach_one(p, &app.name, Platform::Fcm, fcm_rate)),
                    name: app.name,
                }
            })
            .collect()
    }

    fn attach_one(
        &self,
        provider: crate::provider::Provider,
        app: &str,
        platform: Platform,
        rate: Option<(RateLimit, RateKey)>,
    ) -> crate::provider::Provider {
        let mut provider = provider;
        if self.is_shared() {
            provider = provider.with_shared_guard(Arc::new(self.clone()));
        }
        if let Some((limit, key)) = rate {
            let source = Arc::new(FleetTokens {
                backend: self.clone(),
                key,
            });
            provider = provider.with_fleet_rate(FleetRate::new(
                &format!("{app}/{}", platform.label()),
                limit.per_second,
                limit.fallback_per_second,
                source,
            ));
        }
        provider
    }

    /// Keeps the metric `push_dispatch_coordination_up` and this pod's
    /// heartbeat up to date until `stop`.
    pub async fn watch(self, metrics: Arc<Metrics>, stop: CancellationToken) {
        let mut states = self.coordinator.watch_state();
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            metrics.coordination_up.set(match *states.borrow() {
                BackendState::InProcess => -1,
                BackendState::Up => 1,
                _ => 0,
            });
            tokio::select! {
                () = stop.cancelled() => break,
                changed = states.changed() => if changed.is_err() { break },
                _ = beat.tick() => {
                    if let Ok(pods) = self.coordinator.heartbeat(&self.pod, HEARTBEAT_TTL).await {
                        self.live_pods.store(pods.max(1), Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A rate limit declared for the fleet.
fn fleet(limit: Option<RateLimit>) -> Option<RateLimit> {
    limit.filter(|l| l.scope == RateScope::Fleet)
}

fn unavailable(e: push_dispatch_coordination::CoordError) -> Unavailable {
    Unavailable(e.to_string())
}

fn store_key<'a>(k: &Key<'a>) -> DedupKey<'a> {
    DedupKey {
        app: k.app,
        request_id: k.request_id,
        platform: k.platform.label(),
        token: k.token,
    }
}

impl DedupStore for Coordinated {
    fn claim<'a>(
        &'a self,
        keys: &'a [Key<'a>],
        pending: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, Unavailable>> {
        Box::pin(async move {
            let keys: Vec<DedupKey<'_>> = keys.iter().map(store_key).collect();
            let claims = self
                .coordinator
                .claim(&keys, pending)
                .await
                .map_err(unavailable)?;
            Ok(claims
                .into_iter()
                .map(|c| match c {
                    StoreClaim::Mine => Claim::Mine,
                    StoreClaim::Done(done) => Claim::Done(match done {
                        DoneAs::Delivered => Final::Delivered,
                        DoneAs::ReportedDead => Final::Reported,
                        DoneAs::DeadLettered => Final::DeadLettered,
                    }),
                    StoreClaim::PendingElsewhere { expires_in } => Claim::Elsewhere { expires_in },
                })
                .collect())
        })
    }

    fn record<'a>(
        &'a self,
        finals: &'a [(Key<'a>, Final)],
        window: Duration,
        release: &'a [Key<'a>],
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        Box::pin(async move {
            let finals: Vec<(DedupKey<'_>, DoneAs)> = finals
                .iter()
                .map(|(k, f)| {
                    (
                        store_key(k),
                        match f {
                            Final::Delivered => DoneAs::Delivered,
                            Final::Reported => DoneAs::ReportedDead,
                            Final::DeadLettered => DoneAs::DeadLettered,
                        },
                    )
                })
                .collect();
            let release: Vec<DedupKey<'_>> = release.iter().map(store_key).collect();
            self.coordinator
                .record(&finals, window, &release)
                .await
                .map_err(unavailable)
        })
    }
}

impl GuardStore for Coordinated {
    fn record<'a>(
        &'a self,
        app: &'a str,
        platform: Platform,
        window: Duration,
        sends: u64,
        suspicious: u64,
    ) -> BoxFuture<'a, Result<(u64, u64), Unavailable>> {
        Box::pin(async move {
            let scope = GuardScope {
                app,
                platform: platform.label(),
            };
            let counts = self
                .coordinator
                .guard_record(&scope, window, sends, suspicious)
                .await
                .map_err(unavailable)?;
            Ok((counts.sends, counts.suspicious))
        })
    }
}

/// The fleet tokens of one rate key.
#[derive(Debug)]
struct FleetTokens {
    backend: Coordinated,
    key: RateKey,
}

impl TokenSource for FleetTokens {
    fn reserve(&self, per_second: f64, want: u32) -> BoxFuture<'_, Result<Grant, Unavailable>> {
        Box::pin(async move {
            // The shared bucket holds one second of the fleet's rate.
            let burst = per_second.max(1.0);
            let r = self
                .backend
                .coordinator
                .reserve(&self.key, per_second, burst, want)
                .await
                .map_err(unavailable)?;
            Ok(Grant {
                granted: r.granted,
                retry_in: r.retry_in,
            })
        })
    }

    fn live_pods(&self) -> u32 {
        self.backend.live_pods.load(Ordering::Relaxed)
    }
}
