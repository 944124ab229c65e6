//! Sending one push to one device, and saying what came of it.
//!
//! What it is: the [`Dispatcher`] trait, the seam between the worker's
//! policy and the providers. A dispatcher takes a request and one token,
//! talks to its provider, and reports an [`Outcome`] — a fact, never a
//! decision. Behind it:
//! - [`apns`] and [`fcm`], the two provider clients, in identical folders:
//!   `settings`, `credentials`, `request` (`build`: a [`Push`] → the
//!   provider request), `error` (every documented answer → [`Outcome`]) and
//!   `client` (`new(settings, credentials)`, the wire);
//! - [`transport`], the HTTP/2 connection pool both clients share (h2 over
//!   rustls, or h2c for local stand-ins), which keeps the facts that say
//!   whether a resend can duplicate a push;
//! - [`stub::StubDispatcher`], beside the real clients: it answers in
//!   process by token prefix, exactly as the sandbox of SPEC §7 scripts it
//!   (a test holds the two together). It is selected by the endpoint
//!   `stub:` and serves pipeline tests and dry runs;
//! - [`outcome`] and [`retry_after`], the vocabulary of answers.
//!
//! What it is not: the worker's policy. Whether an outcome means ack, nack,
//! republish, dead-letter or a feedback event, retries and their backoff,
//! circuits, rate limits and metrics all live in the worker; a dispatcher
//! retries only what HTTP/2 proves unsent, and an `ExpiredProviderToken` or
//! a 401 once with fresh credentials. Nor does it load the config: the
//! worker maps each app's parsed block to settings (`*Settings::from_config`)
//! and loads the credentials the settings name.

pub mod apns;
pub mod fcm;
pub mod outcome;
pub mod retry_after;
pub mod stub;
pub mod transport;

use std::time::{Duration, SystemTime};

use push_dispatch_proto::v1::{Platform, PushRequest};

pub use outcome::{Outcome, QuotaScope, RejectReason, RetryCause};
pub use tokio_util::sync::CancellationToken;

/// One push to one device.
#[derive(Clone, Copy, Debug)]
pub struct Push<'a> {
    /// The request (shared by all its targets).
    pub request: &'a PushRequest,
    /// The device token.
    pub token: &'a str,
    /// When the request stops being deliverable (first publish + ttl), if it has a ttl.
    pub expires_at: Option<SystemTime>,
    /// While the send is still queued locally (for a connection, a stream or
    /// a credential) and nothing was written, it gives up at once when this
    /// is cancelled (the worker drains); once the request is written it
    /// runs to its answer or its timeout.
    pub give_up: Option<&'a CancellationToken>,
}

/// Provider credentials refreshed since start (APNs provider tokens signed,
/// FCM OAuth tokens fetched), and refreshes that failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenRefreshes {
    /// Successful refreshes.
    pub ok: u64,
    /// Failed refreshes.
    pub failed: u64,
    /// When the credential in use was signed or fetched (its age, on
    /// `/statusz`), if one was.
    pub last: Option<SystemTime>,
}

/// Sends a push to one device of one provider.
#[async_trait::async_trait]
pub trait Dispatcher: Send + Sync + std::fmt::Debug {
    /// The platform this dispatcher serves.
    fn platform(&self) -> Platform;

    /// Credential refreshes so far (none for dispatchers without credentials).
    fn token_refreshes(&self) -> TokenRefreshes {
        TokenRefreshes::default()
    }

    /// `Some(remaining)` while the dispatcher is stuck: every connection
    /// slot, or the credential, is in its failure backoff, so a send now
    /// would fail at once without reaching the provider. The worker hands
    /// such targets back without queueing them.
    fn backoff(&self) -> Option<Duration> {
        None
    }

    /// Sends the push and classifies the answer. Never fails: transport
    /// errors are [`Outcome::Retryable`]. The whole send, time queued for a
    /// connection or a credential included, ends within the request timeout.
    async fn send(&self, push: Push<'_>) -> Outcome;

    /// Closes the provider connections and waits for their tasks. Called
    /// once nothing is sent any more; a later send dials anew.
    async fn close(&self) {}
}
