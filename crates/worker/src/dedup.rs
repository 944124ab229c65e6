//! Idempotent requests (`dedup.window`, issue 16, SPEC §9 "Dedup"): a target
//! — (app, `request_id`, platform, token) — that already reached a final
//! outcome within the window is not sent again, even when two replicas get
//! two copies of a request at the same moment.
//!
//! Before sending, the worker *claims* every sendable target of a message in
//! one round trip ([`DedupStore::claim`]): a claim is set only if absent,
//! with a short pending expiry (`dedup.pending`, longer than the longest
//! send). A target already recorded final is suppressed
//! (`sends_total{outcome="duplicate_suppressed"}`); one whose claim is pending
//! elsewhere is carried forward as a wait, never suppressed (the other copy
//! may still fail). After the message's publishes are confirmed, the worker
//! *records* in one more round trip ([`DedupStore::record`]) the targets that
//! ended final — delivered, reported dead (feedback confirmed), dead-lettered
//! by the plan (confirmed) — for the window, and releases the claims of the
//! rest, so that their retry is not held back.
//!
//! A request without `request_id` is never deduplicated. When the store is
//! unavailable the worker sends without dedup (a warning once, and
//! `push_dispatch_dedup_unavailable_total`): dedup narrows a duplicate
//! window, it never holds pushes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use push_dispatch_proto::v1::Platform;

/// One target as dedup knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key<'a> {
    /// The app's name.
    pub app: &'a str,
    /// The request's `request_id` (never empty here).
    pub request_id: &'a str,
    /// The platform.
    pub platform: Platform,
    /// The device token.
    pub token: &'a str,
}

/// What a claim found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Claimed now: send it.
    Mine,
    /// Already final within the window: do not send it again.
    Done(Final),
    /// Another copy holds a pending claim: carry it forward, try again after.
    Elsewhere {
        /// Until that claim expires.
        expires_in: Duration,
    },
}

/// How a target ended, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Final {
    /// The provider accepted it.
    Delivered,
    /// Its token was reported dead.
    Reported,
    /// It was dead-lettered.
    DeadLettered,
}

/// The store could not be asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the dedup store is unavailable: {0}")]
pub struct Unavailable(pub String);

/// Where claims and final outcomes are kept (the coordination backend).
pub trait DedupStore: Send + Sync + std::fmt::Debug {
    /// Claims every key for `pending`, in one round trip; one [`Claim`] per key.
    fn claim<'a>(
        &'a self,
        keys: &'a [Key<'a>],
        pending: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, Unavailable>>;

    /// Records `finals` for `window` and releases our pending claims of
    /// `release`, in one round trip.
    fn record<'a>(
        &'a self,
        finals: &'a [(Key<'a>, Final)],
        window: Duration,
        release: &'a [Key<'a>],
    ) -> BoxFuture<'a, Result<(), Unavailable>>;
}

/// Dedup as the worker runs it: the store, the window, the pending expiry.
#[derive(Debug)]
pub struct Dedup {
    store: Arc<dyn DedupStore>,
    window: Duration,
    pending: Duration,
    degraded: AtomicBool,
    unavailable: prometheus_client::metrics::counter::Counter,
}

impl Dedup {
    /// Dedup through `store` for `window` (`dedup.window`), claims pending
    /// for `pending` (`dedup.pending`); `unavailable` counts the messages
    /// sent without dedup because the store could not be asked.
    pub fn new(
        store: Arc<dyn DedupStore>,
        window: Duration,
        pending: Duration,
        unavailable: prometheus_client::metrics::counter::Counter,
    ) -> Dedup {
        Dedup {
            store,
            window,
            pending,
            degraded: AtomicBool::new(false),
            unavailable,
        }
    }

    /// Claims `keys`; `None` when the store is unavailable (send them all,
    /// record nothing).
    pub async fn claim(&self, keys: &[Key<'_>]) -> Option<Vec<Claim>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        match self.store.claim(keys, self.pending).await {
            Ok(claims) if claims.len() == keys.len() => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("dedup store available again: duplicates are suppressed again");
                }
                Some(claims)
            }
            Ok(claims) => {
                self.down(&Unavailable(format!(
                    "{} claims for {} keys",
                    claims.len(),
                    keys.len()
                )));
                None
            }
            Err(e) => {
                self.down(&e);
                None
            }
        }
    }

    /// Records what ended final and releases the rest (best effort: a
    /// failure only widens the duplicate window again).
    pub async fn record(&self, finals: &[(Key<'_>, Final)], release: &[Key<'_>]) {
        if finals.is_empty() && release.is_empty() {
            return;
        }
        if let Err(e) = self.store.record(finals, self.window, release).await {
            self.down(&e);
        }
    }

    fn down(&self, why: &Unavailable) {
        self.unavailable.inc();
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %why, "dedup skipped: the coordination store is unavailable; a request published twice may be sent twice until it is back");
        }
    }
}
