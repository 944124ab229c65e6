//! Sending one push to one device, and saying what came of it.
//!
//! The [`Dispatcher`] trait is the seam between the worker's policy and the
//! providers: a dispatcher takes a request and one token, talks to its
//! provider, and reports an [`Outcome`] — a fact, never a decision. Whether
//! that means ack, nack, republish or dead-letter is the worker's business.
//!
//! [`stub::StubDispatcher`] lives beside the real clients and answers in
//! process by token prefix, exactly as the sandbox of SPEC §7 scripts it. It
//! is selected by the endpoint `stub:` and serves pipeline tests and dry runs.

pub mod apns;
pub mod fcm;
pub mod outcome;
pub mod retry_after;
pub mod stub;
pub mod transport;

use std::time::SystemTime;

use push_dispatch_proto::v1::{Platform, PushRequest};

pub use outcome::{Outcome, RejectReason, RetryCause};

/// One push to one device.
#[derive(Clone, Copy, Debug)]
pub struct Push<'a> {
    /// The request (shared by all its targets).
    pub request: &'a PushRequest,
    /// The device token.
    pub token: &'a str,
    /// When the request stops being deliverable (first publish + ttl), if it has a ttl.
    pub expires_at: Option<SystemTime>,
}

/// Provider credentials refreshed since start (APNs provider tokens signed,
/// FCM OAuth tokens fetched), and refreshes that failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenRefreshes {
    /// Successful refreshes.
    pub ok: u64,
    /// Failed refreshes.
    pub failed: u64,
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

    /// Sends the push and classifies the answer. Never fails: transport
    /// errors are [`Outcome::Retryable`].
    async fn send(&self, push: Push<'_>) -> Outcome;

    /// Closes the provider connections and waits for their tasks. Called
    /// once nothing is sent any more; a later send dials anew.
    async fn close(&self) {}
}
