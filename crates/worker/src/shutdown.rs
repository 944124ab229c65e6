//! The two stages of a graceful stop (SPEC §5.7), as one small type handed
//! to everything that must react to them.
//!
//! * **Draining**: readiness goes false and pulling stops; a message not yet
//!   started is handed back at once; waits (backoff, rate limit, a send
//!   slot) end at once, and what is in flight finishes.
//! * **Forced**: the shutdown grace ran out; every message still being
//!   handled is nacked wherever it is.
//!
//! Forcing also drains. Cloning shares the state.

use tokio_util::sync::CancellationToken;

/// The shutdown state of the worker; see the module doc.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    draining: CancellationToken,
    forced: CancellationToken,
}

impl Shutdown {
    /// Running: neither draining nor forced.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the drain.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    /// The grace ran out: nack what is left (and drain, if not yet).
    pub fn force(&self) {
        self.draining.cancel();
        self.forced.cancel();
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Completes when the drain starts.
    pub async fn draining(&self) {
        self.draining.cancelled().await;
    }

    /// Completes when the grace runs out.
    pub async fn forced(&self) {
        self.forced.cancelled().await;
    }

    /// The drain as a token, for APIs that take one (the streams stop pulling on it).
    pub fn draining_token(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// The drain as a borrowed token (a send's `give_up`).
    pub fn draining_ref(&self) -> &CancellationToken {
        &self.draining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forcing_also_drains_and_clones_share_the_state() {
        let shutdown = Shutdown::new();
        let seen = shutdown.clone();
        assert!(!seen.is_draining());
        shutdown.force();
        assert!(seen.is_draining());
        // Both complete at once now.
        seen.draining().await;
        seen.forced().await;
        assert!(shutdown.draining_token().is_cancelled());
    }
}
