//! Building the Pub/Sub clients once per process.
//!
//! With an emulator host (from `pubsub.emulator_host`, which defaults to
//! `PUBSUB_EMULATOR_HOST`) the clients target `http://HOST` with anonymous
//! credentials, as every Google SDK does; otherwise they use Application
//! Default Credentials (Workload Identity on GKE). Admin calls get a bounded
//! retry budget so that a wrong endpoint fails in seconds, not minutes.

use std::time::Duration;

use google_cloud_auth::credentials::anonymous;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_pubsub::client::{
    Publisher, SchemaService, Subscriber, SubscriptionAdmin, TopicAdmin,
};

/// The Pub/Sub clients of one process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Clients {
    /// Topic admin (REST).
    pub topics: TopicAdmin,
    /// Subscription admin (REST).
    pub subscriptions: SubscriptionAdmin,
    /// Streaming-pull client (gRPC).
    pub subscriber: Subscriber,
    /// Schema service: only for `testIamPermissions` (see [`crate::iam`]).
    pub schemas: SchemaService,
    endpoint: Option<String>,
}

/// The clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Building a client failed (usually: no Application Default Credentials).
    #[error(
        "cannot build the Pub/Sub {client} client: {source}. On GKE use Workload Identity; locally run `gcloud auth application-default login` or set PUBSUB_EMULATOR_HOST"
    )]
    Build {
        /// Which client.
        client: &'static str,
        /// The SDK's error.
        #[source]
        source: google_cloud_gax::client_builder::Error,
    },
}

/// Total time an admin call may spend retrying.
const ADMIN_RETRY_LIMIT: Duration = Duration::from_secs(20);
/// Time one admin attempt may take.
const ADMIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

impl Clients {
    /// Builds every client. `emulator_host` is `host:port` of the emulator, if any.
    pub async fn connect(emulator_host: Option<&str>) -> Result<Clients, ConnectError> {
        let endpoint = emulator_host.map(|h| format!("http://{h}"));
        let mut topics = TopicAdmin::builder()
            .with_retry_policy(Aip194Strict.with_time_limit(ADMIN_RETRY_LIMIT))
            .with_attempt_timeout(ADMIN_ATTEMPT_TIMEOUT);
        let mut subscriptions = SubscriptionAdmin::builder()
            .with_retry_policy(Aip194Strict.with_time_limit(ADMIN_RETRY_LIMIT))
            .with_attempt_timeout(ADMIN_ATTEMPT_TIMEOUT);
        let mut subscriber = Subscriber::builder();
        let mut schemas = SchemaService::builder()
            .with_retry_policy(Aip194Strict.with_time_limit(ADMIN_RETRY_LIMIT))
            .with_attempt_timeout(ADMIN_ATTEMPT_TIMEOUT);
        if let Some(ep) = &endpoint {
            let creds = anonymous::Builder::new().build();
            topics = topics.with_endpoint(ep).with_credentials(creds.clone());
            subscriptions = subscriptions
                .with_endpoint(ep)
                .with_credentials(creds.clone());
            schemas = schemas.with_endpoint(ep).with_credentials(creds.clone());
            subscriber = subscriber.with_endpoint(ep).with_credentials(creds);
        }
        let build = |client: &'static str| move |source| ConnectError::Build { client, source };
        Ok(Clients {
            topics: topics.build().await.map_err(build("topic admin"))?,
            subscriptions: subscriptions
                .build()
                .await
                .map_err(build("subscription admin"))?,
            subscriber: subscriber.build().await.map_err(build("subscriber"))?,
            schemas: schemas.build().await.map_err(build("schema service"))?,
            endpoint,
        })
    }

    /// A publisher for `topic` (a full name), batching as configured by the caller.
    ///
    /// `retry_limit` bounds how long one publish keeps retrying before it
    /// reports an error (the SDK's default is 10 minutes).
    pub async fn publisher(
        &self,
        topic: &str,
        retry_limit: Duration,
        batch_delay: Duration,
    ) -> Result<Publisher, ConnectError> {
        let mut builder = Publisher::builder(topic)
            .with_retry_policy(
                google_cloud_pubsub::retry_policy::RetryableErrors.with_time_limit(retry_limit),
            )
            .set_delay_threshold(batch_delay);
        if let Some(ep) = &self.endpoint {
            builder = builder
                .with_endpoint(ep)
                .with_credentials(anonymous::Builder::new().build());
        }
        builder.build().await.map_err(|source| ConnectError::Build {
            client: "publisher",
            source,
        })
    }

    /// `http://host:port` when talking to the emulator.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }
}
