//! What one app and platform shares with the rest of the fleet through the
//! coordination store (issue 16): the mass-invalidation guard's window
//! ([`SharedGuard`]) and the rate limit (`crate::fleet_rate`).
//!
//! **The fleet guard.** Every pod adds its final answers (sends, and how
//! many were suspicious) to a shared window and reads the fleet's totals
//! back in the same round trip; the guard judges from those, so the fleet's
//! first `min_samples` answers decide for every pod (SPEC §9: a suspicious
//! answer is counted and the verdict read back *before* its event is
//! published). Answers without a suspicious reason are batched: they wait in
//! the pod until the next suspicious answer or the next periodic flush
//! ([`SharedGuard::flush`], every few seconds), so an app with no
//! suspicious answers costs no round trip per message. When the store
//! cannot be reached, the pod's own window decides (one log line).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use push_dispatch_proto::v1::Platform;

use crate::dedup::Unavailable;

/// Where the guard's shared window lives (the coordination backend).
pub trait GuardStore: Send + Sync + std::fmt::Debug {
    /// Adds `sends` answers, `suspicious` of them suspicious, to the window
    /// of `app` and `platform`, and returns the window's totals (sends,
    /// suspicious), in one round trip.
    fn record<'a>(
        &'a self,
        app: &'a str,
        platform: Platform,
        window: Duration,
        sends: u64,
        suspicious: u64,
    ) -> BoxFuture<'a, Result<(u64, u64), Unavailable>>;
}

/// One app and platform's side of the fleet guard.
#[derive(Debug)]
pub struct SharedGuard {
    store: Arc<dyn GuardStore>,
    app: String,
    platform: Platform,
    window: Duration,
    /// Answers not yet added to the shared window: (sends, suspicious).
    pending: Mutex<(u64, u64)>,
    degraded: AtomicBool,
}

impl SharedGuard {
    /// The shared window of `app` and `platform`, `window` long.
    pub fn new(
        store: Arc<dyn GuardStore>,
        app: &str,
        platform: Platform,
        window: Duration,
    ) -> SharedGuard {
        SharedGuard {
            store,
            app: app.to_string(),
            platform,
            window,
            pending: Mutex::new((0, 0)),
            degraded: AtomicBool::new(false),
        }
    }

    /// Adds this message's answers; when some are suspicious, sends them
    /// (with what waited) and returns the fleet's window totals, else
    /// `None` (batched; judge locally: nothing to hold). `None` as well when
    /// the store is unavailable.
    pub async fn judge(&self, sends: u64, suspicious: u64) -> Option<(u64, u64)> {
        let (sends, suspicious) = {
            let mut pending = self.lock();
            pending.0 += sends;
            pending.1 += suspicious;
            if suspicious == 0 {
                return None;
            }
            std::mem::take(&mut *pending)
        };
        self.send(sends, suspicious).await
    }

    /// Sends the answers that waited (the periodic flush).
    pub async fn flush(&self) {
        let (sends, suspicious) = std::mem::take(&mut *self.lock());
        if sends > 0 {
            self.send(sends, suspicious).await;
        }
    }

    async fn send(&self, sends: u64, suspicious: u64) -> Option<(u64, u64)> {
        match self
            .store
            .record(&self.app, self.platform, self.window, sends, suspicious)
            .await
        {
            Ok(totals) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(app = %self.app, platform = self.platform.label(), "fleet guard available again");
                }
                Some(totals)
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(app = %self.app, platform = self.platform.label(), error = %e, "fleet guard unavailable: this pod's own window decides until the coordination store is back");
                }
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Window {
        totals: Mutex<(u64, u64)>,
        calls: std::sync::atomic::AtomicU32,
    }

    impl GuardStore for Window {
        fn record<'a>(
            &'a self,
            _app: &'a str,
            _platform: Platform,
            _window: Duration,
            sends: u64,
            suspicious: u64,
        ) -> BoxFuture<'a, Result<(u64, u64), Unavailable>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut t = self.totals.lock().expect("lock");
            t.0 += sends;
            t.1 += suspicious;
            let totals = *t;
            Box::pin(async move { Ok(totals) })
        }
    }

    #[tokio::test]
    async fn plain_answers_are_batched_and_a_suspicious_one_reads_the_fleets_window() {
        let store = Arc::new(Window::default());
        let pod_a = SharedGuard::new(
            store.clone(),
            "app",
            Platform::Apns,
            Duration::from_secs(60),
        );
        let pod_b = SharedGuard::new(
            store.clone(),
            "app",
            Platform::Apns,
            Duration::from_secs(60),
        );
        assert_eq!(pod_a.judge(5, 0).await, None);
        assert_eq!(store.calls.load(Ordering::SeqCst), 0, "batched");
        assert_eq!(pod_b.judge(2, 2).await, Some((2, 2)));
        // Pod A's batch goes with its next suspicious answer.
        assert_eq!(pod_a.judge(1, 1).await, Some((8, 3)));
        pod_b.flush().await;
        assert_eq!(store.calls.load(Ordering::SeqCst), 2, "nothing waited in b");
        pod_a.judge(4, 0).await;
        pod_a.flush().await;
        assert_eq!(*store.totals.lock().expect("lock"), (12, 3));
    }
}
