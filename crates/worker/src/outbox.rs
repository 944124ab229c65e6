//! Where the plan's publishes go: the [`Outbox`] trait (feedback events,
//! dead letters, republished remainders, delivery results, each returning
//! only once Pub/Sub confirmed it), with the Pub/Sub implementation ([`PubsubOutbox`]) and an
//! in-memory one ([`MemoryOutbox`]) that records what it was given and can
//! be told to refuse, so that every guarantee of SPEC §5 can be tested in
//! process.

use std::future::Future;
use std::sync::Mutex;

use push_dispatch_feedback::{FeedbackError, FeedbackPublisher};
use push_dispatch_proto::Encoding;
use push_dispatch_proto::v1::{PushResult, TokenInvalidated};
use push_dispatch_subscriber::publish::{PublishError, publish_confirmed};
use push_dispatch_subscriber::pubsub::client::Publisher;
use push_dispatch_telemetry::propagation;

use crate::labels::PublishPurpose;
use crate::letters::Outgoing;

/// A publish that Pub/Sub did not confirm.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Feedback events.
    #[error(transparent)]
    Feedback(#[from] FeedbackError),
    /// A dead letter or a republished request.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A `PushResult` could not be encoded.
    #[error("cannot encode a PushResult: {0}")]
    Encode(#[from] push_dispatch_proto::EncodeError),
    /// A result was asked for while `results.topic` is not set.
    #[error("results.topic is not set: no result is published")]
    NoResultsTopic,
    /// The in-memory outbox was told to refuse this kind of publish.
    #[error("the in-memory outbox refuses {0:?} publishes (test)")]
    Refused(PublishPurpose),
}

/// Publishes what a plan calls for; each call returns once Pub/Sub confirmed.
pub trait Outbox: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes every event; fails if any one was not confirmed.
    fn feedback(
        &self,
        events: &[TokenInvalidated],
    ) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// Publishes a message to the dead-letter topic.
    fn dead_letter(
        &self,
        message: Outgoing,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// Publishes a request to the requests topic; returns its message id.
    fn republish(
        &self,
        message: Outgoing,
    ) -> impl Future<Output = Result<String, OutboxError>> + Send;

    /// Publishes a delivery result to `results.topic`, with the attributes
    /// of [`crate::results::attributes`].
    fn result(&self, result: PushResult) -> impl Future<Output = Result<(), OutboxError>> + Send;
}

/// The results topic: its publisher, full name and body encoding.
#[derive(Clone, Debug)]
pub struct ResultsTopic {
    /// Publisher on `results.topic`.
    pub publisher: Publisher,
    /// Its full name.
    pub topic: String,
    /// `results.encoding`.
    pub encoding: Encoding,
}

/// The Outbox on Pub/Sub: one publisher per topic; trace context is added
/// to every message so that what we publish continues the message's trace.
#[derive(Clone, Debug)]
pub struct PubsubOutbox {
    /// Publisher on the dead-letter topic, and its name.
    pub dead_letter: (Publisher, String),
    /// Publisher on the requests topic (republished remainders), and its name.
    pub requests: (Publisher, String),
    /// Feedback events.
    pub feedback: FeedbackPublisher,
    /// Delivery results, when `results.topic` is set.
    pub results: Option<ResultsTopic>,
}

impl PubsubOutbox {
    async fn publish(
        (publisher, topic): &(Publisher, String),
        mut message: Outgoing,
    ) -> Result<String, OutboxError> {
        propagation::inject_current(&mut message.attributes);
        Ok(publish_confirmed(publisher, topic, message.data, message.attributes).await?)
    }
}

impl Outbox for PubsubOutbox {
    async fn feedback(&self, events: &[TokenInvalidated]) -> Result<(), OutboxError> {
        Ok(self.feedback.publish_all(events).await?)
    }

    async fn dead_letter(&self, message: Outgoing) -> Result<(), OutboxError> {
        Self::publish(&self.dead_letter, message).await.map(drop)
    }

    async fn republish(&self, message: Outgoing) -> Result<String, OutboxError> {
        Self::publish(&self.requests, message).await
    }

    async fn result(&self, result: PushResult) -> Result<(), OutboxError> {
        let Some(results) = &self.results else {
            return Err(OutboxError::NoResultsTopic);
        };
        let data = crate::results::encode(&result, results.encoding)?;
        let mut attributes =
            crate::results::attributes(&result, crate::results::outcome(&result), results.encoding);
        propagation::inject_current(&mut attributes);
        publish_confirmed(&results.publisher, &results.topic, data, attributes).await?;
        Ok(())
    }
}

/// What the in-memory outbox holds.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// Confirmed feedback events, in order.
    pub feedback: Vec<TokenInvalidated>,
    /// Confirmed dead letters, in order.
    pub dead_letters: Vec<Outgoing>,
    /// Confirmed republished requests, in order.
    pub republished: Vec<Outgoing>,
    /// Confirmed delivery results, in order.
    pub results: Vec<PushResult>,
    /// Refused publishes, in order.
    pub refused: Vec<PublishPurpose>,
}

/// An Outbox in memory, for tests: records what it confirms; refuses the
/// purposes it is told to.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    state: Mutex<(Published, Vec<PublishPurpose>)>,
}

impl MemoryOutbox {
    /// An outbox that confirms everything.
    pub fn new() -> MemoryOutbox {
        MemoryOutbox::default()
    }

    /// From now on, refuses publishes for `purpose` (as Pub/Sub would by
    /// timing out).
    pub fn refuse(&self, purpose: PublishPurpose) {
        self.lock().1.push(purpose);
    }

    /// Confirms publishes for every purpose again.
    pub fn accept_all(&self) {
        self.lock().1.clear();
    }

    /// What was published (and refused) so far.
    pub fn published(&self) -> Published {
        self.lock().0.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Published, Vec<PublishPurpose>)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admit(&self, purpose: PublishPurpose) -> Result<(), OutboxError> {
        let mut state = self.lock();
        if state.1.contains(&purpose) {
            state.0.refused.push(purpose);
            return Err(OutboxError::Refused(purpose));
        }
        Ok(())
    }
}

impl Outbox for MemoryOutbox {
    async fn feedback(&self, events: &[TokenInvalidated]) -> Result<(), OutboxError> {
        self.admit(PublishPurpose::Feedback)?;
        self.lock().0.feedback.extend_from_slice(events);
        Ok(())
    }

    async fn dead_letter(&self, message: Outgoing) -> Result<(), OutboxError> {
        self.admit(PublishPurpose::DeadLetter)?;
        self.lock().0.dead_letters.push(message);
        Ok(())
    }

    async fn republish(&self, message: Outgoing) -> Result<String, OutboxError> {
        self.admit(PublishPurpose::Republish)?;
        let mut state = self.lock();
        state.0.republished.push(message);
        Ok(format!("republished-{}", state.0.republished.len()))
    }

    async fn result(&self, result: PushResult) -> Result<(), OutboxError> {
        self.admit(PublishPurpose::Result)?;
        self.lock().0.results.push(result);
        Ok(())
    }
}
