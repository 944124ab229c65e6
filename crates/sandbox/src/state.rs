//! The state a sandbox shares: one [`State`] for the whole sandbox (the three
//! stand-ins, the recorder and the fault switch) and one [`ConnState`] per
//! connection (APNs auth, the stream count behind `goaway_every`).
//!
//! Only the router, the control endpoints and the server see these; each
//! service handler is given just the parts it uses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::apns::{self, Apns, ConnAuth};
use crate::faults::{FaultSwitch, Faults};
use crate::fcm::{self, Fcm};
use crate::oauth::OAuth;
use crate::recorder::{Recorder, Stats};

/// Everything the handlers share.
pub(crate) struct State {
    pub apns: Apns,
    pub fcm: Fcm,
    pub oauth: OAuth,
    pub recorder: Recorder,
    pub faults: FaultSwitch,
    /// `blackhole_streams`: APNs and FCM streams are never answered.
    pub blackhole_streams: bool,
    /// Cancelled when the sandbox shuts down (ends hung OAuth requests).
    pub stopping: CancellationToken,
}

impl State {
    pub(crate) fn new(
        apns: Apns,
        fcm: Fcm,
        oauth: OAuth,
        blackhole_streams: bool,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            apns,
            fcm,
            oauth,
            recorder: Recorder::new(apns::LABELS, fcm::LABELS),
            faults: FaultSwitch::default(),
            blackhole_streams,
            stopping,
        }
    }

    /// Stores new flags; fires the one-shot `expire_provider_tokens` and
    /// `revoke_oauth_tokens` triggers.
    pub(crate) fn apply_faults(&self, mut faults: Faults) {
        if faults.revoke_oauth_tokens {
            self.oauth.revoke_all();
            faults.revoke_oauth_tokens = false;
        }
        if faults.expire_provider_tokens {
            let n = self.apns.expire_current_tokens();
            self.recorder
                .provider_tokens_expired
                .fetch_add(n, Ordering::Relaxed);
            faults.expire_provider_tokens = false;
        }
        self.faults.store(faults);
    }

    pub(crate) fn reset(&self) {
        self.recorder.reset();
        self.apns.reset();
    }

    pub(crate) fn stats(&self) -> Stats {
        self.recorder.stats()
    }
}

/// What one connection remembers.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// APNs auth state: the one-stream gate and the current provider token.
    pub apns: ConnAuth,
    streams: AtomicU64,
    goaway_sent: AtomicBool,
    /// Notified once when the connection should send GOAWAY.
    pub goaway: Notify,
}

impl ConnState {
    /// Counts a stream; asks for a GOAWAY after every `every`-th.
    pub(crate) fn count_stream(&self, every: u32, recorder: &Recorder) {
        let n = self.streams.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(u64::from(every)) && !self.goaway_sent.swap(true, Ordering::AcqRel) {
            recorder.goaways.fetch_add(1, Ordering::Relaxed);
            self.goaway.notify_one();
        }
    }
}
