//! A rate limit for the whole fleet (`rate_limit: { per_second, scope:
//! fleet }`, issue 16, SPEC §9 "Fleet rate limit").
//!
//! The fleet's tokens live in the shared store (a GCRA there); a pod takes
//! them in batches ([`TokenSource::reserve`], one round trip per batch,
//! never one per push) and spends them locally. A batch is a tenth of a
//! second of the fleet rate (at least 1, at most [`MAX_BATCH`]), so a pod
//! holds little that others could have used.
//!
//! When the store cannot be reached, sending goes on at this pod's share:
//! `fallback_per_second` when configured, else the fleet rate divided by
//! the pods last seen alive ([`TokenSource::live_pods`]); one log line when
//! it starts and one when it ends, and [`FleetRate::is_degraded`] for the
//! metric. The store is tried again at every refill, so the shared limit
//! comes back by itself with the store.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::rate_limit::Bucket;

/// Most tokens asked for at once.
pub const MAX_BATCH: u32 = 100;

/// What the shared store granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Tokens granted now (0 = none left).
    pub granted: u32,
    /// When none were granted: when to ask again.
    pub retry_in: Duration,
}

pub use crate::dedup::Unavailable;

/// Where the fleet's tokens come from (the coordination backend).
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    /// Asks for up to `want` tokens of `per_second` (burst: one second).
    fn reserve(
        &self,
        per_second: f64,
        want: u32,
    ) -> futures::future::BoxFuture<'_, Result<Grant, Unavailable>>;

    /// Pods seen alive lately (at least 1).
    fn live_pods(&self) -> u32;
}

/// The fleet-wide limit of one app and platform, as one pod spends it.
#[derive(Debug)]
pub struct FleetRate {
    name: String,
    per_second: f64,
    fallback: Option<f64>,
    batch: u32,
    source: Arc<dyn TokenSource>,
    /// Tokens of the last batch not yet spent, and when to ask again.
    local: tokio::sync::Mutex<Local>,
    /// This pod's share while the store is unavailable.
    share: Mutex<Option<Bucket>>,
    degraded: AtomicBool,
}

#[derive(Debug, Default)]
struct Local {
    tokens: u32,
    retry_at: Option<tokio::time::Instant>,
}

impl FleetRate {
    /// `per_second` for the whole fleet of `name` (an app and platform, for
    /// the log line), with this pod's `fallback` rate when the store is
    /// down (None: the fleet rate ÷ live pods).
    pub fn new(
        name: &str,
        per_second: f64,
        fallback: Option<f64>,
        source: Arc<dyn TokenSource>,
    ) -> FleetRate {
        let batch = (per_second / 10.0).ceil().clamp(1.0, f64::from(MAX_BATCH));
        FleetRate {
            name: name.to_string(),
            per_second,
            fallback,
            // Within 1..=MAX_BATCH: the cast is exact.
            batch: batch as u32,
            source,
            local: tokio::sync::Mutex::new(Local::default()),
            share: Mutex::new(None),
            degraded: AtomicBool::new(false),
        }
    }

    /// Whether the store is unavailable and this pod sends at its share.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// The fleet rate.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Takes one token, waiting at most `max_wait` for it: `Ok(waited)`, or
    /// `Err(wait)` when it would have to wait longer (nothing is taken).
    pub async fn acquire(&self, max_wait: Duration) -> Result<Duration, Duration> {
        let started = tokio::time::Instant::now();
        let mut waited = Duration::ZERO;
        let mut local = self.local.lock().await;
        loop {
            if local.tokens > 0 {
                local.tokens -= 1;
                return Ok(waited);
            }
            if let Some(at) = local.retry_at {
                let now = tokio::time::Instant::now();
                if at > now {
                    let wait = at - now;
                    let budget = max_wait.saturating_sub(started.elapsed());
                    if wait > budget {
                        return Err(wait + started.elapsed());
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
                local.retry_at = None;
            }
            match self.source.reserve(self.per_second, self.batch).await {
                Ok(grant) => {
                    self.recovered();
                    if grant.granted > 0 {
                        local.tokens = grant.granted;
                    } else {
                        local.retry_at = Some(
                            tokio::time::Instant::now()
                                + grant.retry_in.max(Duration::from_millis(1)),
                        );
                    }
                }
                Err(e) => {
                    drop(local);
                    let wait = self.pod_share(&e, started, max_wait)?;
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    return Ok(waited + wait);
                }
            }
        }
    }

    /// Spends this pod's share of the fleet rate while the store is down:
    /// how long to wait for the token (within the budget).
    fn pod_share(
        &self,
        why: &Unavailable,
        started: tokio::time::Instant,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        let pods = self.source.live_pods().max(1);
        let rate = self.fallback.unwrap_or(self.per_second / f64::from(pods));
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = %self.name,
                error = %why,
                rate,
                pods,
                "fleet rate limit unavailable: sending at this pod's share ({rate:.1}/s) until the coordination store is back"
            );
        }
        let now = Instant::now();
        let mut share = self
            .share
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = share.get_or_insert_with(|| Bucket::new(rate, now));
        bucket.set_rate(now, rate);
        let budget = max_wait.saturating_sub(started.elapsed());
        bucket.reserve_within(now, budget)
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(limit = %self.name, "fleet rate limit available again");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// A store with `left` tokens; `up` says whether it answers.
    #[derive(Debug)]
    struct Store {
        left: Mutex<u32>,
        calls: AtomicU32,
        up: AtomicBool,
        pods: u32,
    }

    impl Store {
        fn new(left: u32, pods: u32) -> Arc<Store> {
            Arc::new(Store {
                left: Mutex::new(left),
                calls: AtomicU32::new(0),
                up: AtomicBool::new(true),
                pods,
            })
        }
    }

    impl TokenSource for Store {
        fn reserve(
            &self,
            _per_second: f64,
            want: u32,
        ) -> futures::future::BoxFuture<'_, Result<Grant, Unavailable>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let up = self.up.load(Ordering::SeqCst);
            let mut left = self.left.lock().expect("lock");
            let granted = want.min(*left);
            *left -= granted;
            Box::pin(async move {
                if !up {
                    return Err(Unavailable("connection refused".into()));
                }
                Ok(Grant {
                    granted,
                    retry_in: Duration::from_millis(500),
                })
            })
        }

        fn live_pods(&self) -> u32 {
            self.pods
        }
    }

    #[tokio::test]
    async fn tokens_come_in_batches_one_round_trip_each() {
        let store = Store::new(1000, 1);
        let rate = FleetRate::new("app/fcm", 100.0, None, store.clone());
        for _ in 0..35 {
            assert_eq!(rate.acquire(Duration::ZERO).await, Ok(Duration::ZERO));
        }
        // Batches of a tenth of a second: 10 tokens each.
        assert_eq!(store.calls.load(Ordering::SeqCst), 4);
        assert!(!rate.is_degraded());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_fleet_bucket_waits_within_the_budget_or_hands_back() {
        let store = Store::new(0, 1);
        let rate = FleetRate::new("app/fcm", 10.0, None, store.clone());
        // Nothing left: asking again in 500 ms is beyond a 100 ms budget.
        let err = rate.acquire(Duration::from_millis(100)).await;
        assert!(
            matches!(err, Err(w) if w >= Duration::from_millis(400)),
            "{err:?}"
        );
        *store.left.lock().expect("lock") = 5;
        // Within a 1 s budget it waits for the retry time, then gets a batch.
        let waited = rate.acquire(Duration::from_secs(1)).await.expect("a token");
        assert!(waited <= Duration::from_millis(500), "{waited:?}");
    }

    #[tokio::test]
    async fn a_store_that_is_down_falls_back_to_the_pods_share_and_recovers() {
        let store = Store::new(1000, 4);
        store.up.store(false, Ordering::SeqCst);
        let rate = FleetRate::new("app/fcm", 40.0, None, store.clone());
        // 40/s for 4 pods: 10/s here, a burst of 10, then a wait.
        for _ in 0..10 {
            assert_eq!(rate.acquire(Duration::ZERO).await, Ok(Duration::ZERO));
        }
        assert!(rate.acquire(Duration::ZERO).await.is_err());
        assert!(rate.is_degraded(), "never stops sending, but says so");
        // With a fallback rate configured, that one is used.
        let fixed = FleetRate::new("app/apns", 40.0, Some(2.0), store.clone());
        assert!(fixed.acquire(Duration::ZERO).await.is_ok());
        assert!(fixed.acquire(Duration::ZERO).await.is_ok());
        assert!(fixed.acquire(Duration::ZERO).await.is_err());
        // The store is back: the shared limit is used again.
        store.up.store(true, Ordering::SeqCst);
        assert_eq!(rate.acquire(Duration::ZERO).await, Ok(Duration::ZERO));
        assert!(!rate.is_degraded());
    }
}
