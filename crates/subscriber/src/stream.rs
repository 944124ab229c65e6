//! Several streaming pulls on one subscription, each in its own task.
//!
//! One stream of the emulator delivers at most ~2,000 msg/s (NOTES), and real
//! Pub/Sub also rewards parallel streams, so [`spawn_streams`] opens
//! `pubsub.streams` of them. The flow-control budget
//! (`max_outstanding_messages`, `max_outstanding_bytes`) is for the whole
//! process: each stream gets an equal share, so the process never leases
//! more than the configured total.
//!
//! The budget is also enforced here, in the client: the SDK only tells the
//! server, and the emulator ignores it. A stream takes a message permit
//! before it asks for the next message and that message's bytes once it has
//! it; both are held until the message is settled (its task ends), so
//! messages parked waiting out a Retry-After count against the budget.
//!
//! Each stream runs in its own task and is never raced in a `select!`
//! (cancelling `next()` while a stream opens can lose that pull's messages).
//! Shutdown goes through the SDK's shutdown token: `next()` then returns
//! `None`, the stream task waits for the messages it handed out, and the SDK
//! flushes their acks before the task ends.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use google_cloud_pubsub::subscriber::handler::Handler;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the streams need from the config.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// Full subscription name.
    pub subscription: String,
    /// How many streams to open.
    pub streams: u32,
    /// Messages leased at once, whole process.
    pub max_outstanding_messages: u32,
    /// Bytes leased at once, whole process.
    pub max_outstanding_bytes: u64,
    /// Lease extension step (the subscription's ack deadline).
    pub ack_deadline: Duration,
}

impl StreamSettings {
    /// The share of the budget each stream gets: (messages, bytes).
    pub fn per_stream_budget(&self) -> (i64, i64) {
        let n = u64::from(self.streams.max(1));
        let messages = (u64::from(self.max_outstanding_messages) / n).max(1);
        let bytes = (self.max_outstanding_bytes / n).max(1);
        (
            i64::try_from(messages).unwrap_or(i64::MAX),
            i64::try_from(bytes).unwrap_or(i64::MAX),
        )
    }
}

/// How an ack ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// At-least-once subscription: the ack was queued; Pub/Sub does not confirm it.
    Sent,
    /// Exactly-once subscription: Pub/Sub confirmed the ack; no redelivery.
    Confirmed,
}

/// An exactly-once ack could not be confirmed (the message may be redelivered).
#[derive(Debug, thiserror::Error)]
#[error("ack not confirmed: {0}")]
pub struct AckError(#[from] google_cloud_pubsub::error::AckError);

/// The right to settle one received message: ack it or nack it.
///
/// Dropping a lease without settling it nacks the message (the SDK does).
#[derive(Debug)]
pub struct Lease {
    handler: Handler,
}

impl Lease {
    /// Which delivery this is (1 = first); `None` without a DeadLetterPolicy.
    pub fn delivery_attempt(&self) -> Option<i32> {
        self.handler.delivery_attempt()
    }

    /// Acks; on an exactly-once subscription, waits for Pub/Sub's confirmation.
    pub async fn ack(self) -> Result<AckOutcome, AckError> {
        match self.handler {
            Handler::ExactlyOnce(h) => {
                h.confirmed_ack().await?;
                Ok(AckOutcome::Confirmed)
            }
            other => {
                other.ack();
                Ok(AckOutcome::Sent)
            }
        }
    }

    /// Nacks: Pub/Sub redelivers after the subscription's RetryPolicy backoff.
    pub fn nack(self) {
        self.handler.nack();
    }
}

/// One received message and its lease.
#[derive(Debug)]
pub struct Received {
    /// The message as Pub/Sub delivered it.
    pub message: Message,
    /// Ack or nack it.
    pub lease: Lease,
    /// Index of the stream it came on.
    pub stream: usize,
}

/// Why a stream task ended.
#[derive(Debug)]
pub enum StreamExit {
    /// Shut down on request.
    Closed,
    /// Pub/Sub reported a permanent error (e.g. the subscription was deleted).
    Failed(google_cloud_pubsub::Error),
}

/// Live state of the streams, for readiness and metrics.
#[derive(Debug, Default)]
pub struct StreamStates {
    running: AtomicUsize,
    received: AtomicUsize,
}

impl StreamStates {
    /// Streams whose task is running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Messages received by all streams since start.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

/// Opens `settings.streams` streaming pulls; each received message is passed to
/// `handle` in a task of its own, owned by its stream task.
///
/// The returned set finishes after `cancel` fires (or a stream fails) and every
/// handed-out message was settled and its ack flushed.
pub fn spawn_streams<H, F>(
    subscriber: &Subscriber,
    settings: &StreamSettings,
    cancel: CancellationToken,
    states: Arc<StreamStates>,
    handle: H,
) -> JoinSet<(usize, StreamExit)>
where
    H: Fn(Received) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let (messages, bytes) = settings.per_stream_budget();
    let mut set = JoinSet::new();
    for index in 0..settings.streams.max(1) as usize {
        let stream = subscriber
            .subscribe(settings.subscription.clone())
            .set_max_outstanding_messages(messages)
            .set_max_outstanding_bytes(bytes)
            .set_max_lease_extension(settings.ack_deadline)
            .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
            .build();
        let cancel = cancel.clone();
        let states = states.clone();
        let handle = handle.clone();
        let budget = Budget::new(messages, bytes);
        set.spawn(async move {
            let exit = run_stream(index, stream, cancel, states, budget, handle).await;
            (index, exit)
        });
    }
    set
}

/// One stream's flow-control budget, held by the messages it handed out.
struct Budget {
    messages: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

impl Budget {
    fn new(messages: i64, bytes: i64) -> Budget {
        let messages = usize::try_from(messages).unwrap_or(1).max(1);
        // A message larger than the whole share takes all of it, not more.
        let max_bytes = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Budget {
            messages: Arc::new(Semaphore::new(messages)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
        }
    }

    /// A place for one more message (waits while the budget is spent).
    async fn message(&self) -> Option<OwnedSemaphorePermit> {
        self.messages.clone().acquire_owned().await.ok()
    }

    /// Room for `len` bytes (waits while the budget is spent).
    async fn bytes(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let want = u32::try_from(len)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes);
        self.bytes.clone().acquire_many_owned(want).await.ok()
    }
}

async fn run_stream<H, F>(
    index: usize,
    mut stream: google_cloud_pubsub::subscriber::MessageStream,
    cancel: CancellationToken,
    states: Arc<StreamStates>,
    budget: Budget,
    handle: H,
) -> StreamExit
where
    H: Fn(Received) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    states.running.fetch_add(1, Ordering::Relaxed);
    let token = stream.shutdown_token();
    let ended = CancellationToken::new();
    // Owned helper: turns our cancellation into the SDK's shutdown, which makes
    // `next()` return None; it also runs when the stream ends by itself.
    let shutdown = tokio::spawn({
        let cancel = cancel.clone();
        let ended = ended.clone();
        async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = ended.cancelled() => {}
            }
            token.shutdown().await;
        }
    });

    let mut tasks = JoinSet::new();
    let exit = loop {
        // Settled messages give their place back; wait for one if none is free.
        while let Some(done) = tasks.try_join_next() {
            log_task_end(index, done);
        }
        let place = budget.message().await;
        match stream.next().await {
            Some(Ok((message, handler))) => {
                states.received.fetch_add(1, Ordering::Relaxed);
                let room = budget.bytes(message.data.len()).await;
                let received = Received {
                    message,
                    lease: Lease { handler },
                    stream: index,
                };
                let work = handle(received);
                // Boxed: a task stores its future inline and rewrites that
                // whole slot when it finishes, so a large handler future
                // would be copied several times per message.
                tasks.spawn(Box::pin(async move {
                    let _held = (place, room);
                    work.await;
                }));
            }
            Some(Err(e)) => {
                tracing::error!(stream = index, error = %e, "streaming pull failed permanently");
                break StreamExit::Failed(e);
            }
            None => break StreamExit::Closed,
        }
    };
    ended.cancel();
    while let Some(done) = tasks.join_next().await {
        log_task_end(index, done);
    }
    if let Err(e) = shutdown.await {
        tracing::error!(stream = index, error = %e, "stream shutdown task failed");
    }
    states.running.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(stream = index, "stream closed");
    exit
}

fn log_task_end(stream: usize, result: Result<(), tokio::task::JoinError>) {
    if let Err(e) = result {
        // The lease was dropped with the task, so the message is nacked.
        tracing::error!(stream, error = %e, "message task panicked; its message was nacked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_by_the_streams() {
        let s = StreamSettings {
            subscription: "s".into(),
            streams: 4,
            max_outstanding_messages: 1000,
            max_outstanding_bytes: 64 * 1024 * 1024,
            ack_deadline: Duration::from_secs(60),
        };
        assert_eq!(s.per_stream_budget(), (250, 16 * 1024 * 1024));
        let tiny = StreamSettings {
            streams: 8,
            max_outstanding_messages: 3,
            ..s
        };
        assert_eq!(
            tiny.per_stream_budget().0,
            1,
            "every stream may hold one message"
        );
    }
}
