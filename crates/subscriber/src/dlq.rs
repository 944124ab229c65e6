//! Unary pull, acknowledge and release over Pub/Sub's REST API (`v1`), for
//! `push-dispatch dlq peek` and `dlq replay`.
//!
//! The official crate offers only streaming pull; a one-shot command wants
//! "give me up to N messages now", and closing a streaming pull on the
//! emulator leaves a zombie stream that eats later messages (NOTES). Against
//! real Pub/Sub the calls carry the Application Default Credentials' headers;
//! against the emulator, none.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::json;

/// Time one REST call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Credentials could not be built or refreshed.
    #[error(
        "cannot get Google credentials: {0}; on GKE use Workload Identity, locally `gcloud auth application-default login`, or set PUBSUB_EMULATOR_HOST"
    )]
    Credentials(String),
    /// The HTTP call failed.
    #[error("Pub/Sub REST call {call} failed: {source}")]
    Http {
        /// Which call.
        call: &'static str,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// Pub/Sub answered with an error.
    #[error("Pub/Sub REST call {call} answered {status}: {body}")]
    Status {
        /// Which call.
        call: &'static str,
        /// HTTP status.
        status: u16,
        /// The answer, for the operator.
        body: String,
    },
    /// A message's data was not base64.
    #[error("message {message_id} has malformed data: {source}")]
    Data {
        /// The message.
        message_id: String,
        /// The decoder's error.
        #[source]
        source: base64::DecodeError,
    },
}

/// A pulled message and its ack id.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// Use it to ack or release.
    pub ack_id: String,
    /// Pub/Sub's message id.
    pub message_id: String,
    /// The body.
    pub data: Vec<u8>,
    /// The attributes.
    pub attributes: HashMap<String, String>,
    /// RFC 3339 publish time.
    pub publish_time: String,
    /// Delivery attempt on this subscription, when it has a DeadLetterPolicy.
    pub delivery_attempt: Option<i32>,
}

#[derive(Deserialize)]
struct PullResponse {
    #[serde(default, rename = "receivedMessages")]
    received: Vec<Received>,
}

#[derive(Deserialize)]
struct Received {
    #[serde(rename = "ackId")]
    ack_id: String,
    message: RestMessage,
    #[serde(default, rename = "deliveryAttempt")]
    delivery_attempt: Option<i32>,
}

#[derive(Deserialize)]
struct RestMessage {
    #[serde(default)]
    data: String,
    #[serde(default)]
    attributes: HashMap<String, String>,
    #[serde(default, rename = "messageId")]
    message_id: String,
    #[serde(default, rename = "publishTime")]
    publish_time: String,
}

/// Unary Pub/Sub calls over REST.
#[derive(Clone, Debug)]
pub struct RestSubscriber {
    http: reqwest::Client,
    base: String,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
}

impl RestSubscriber {
    /// Against the emulator (`host:port`) when given, else real Pub/Sub with ADC.
    pub fn new(emulator_host: Option<&str>) -> Result<RestSubscriber, DlqError> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|source| DlqError::Http {
                call: "client",
                source,
            })?;
        let (base, credentials) = match emulator_host {
            Some(host) => (format!("http://{host}"), None),
            None => (
                "https://pubsub.googleapis.com".to_string(),
                Some(
                    google_cloud_auth::credentials::Builder::default()
                        .build()
                        .map_err(|e| DlqError::Credentials(e.to_string()))?,
                ),
            ),
        };
        Ok(RestSubscriber {
            http,
            base,
            credentials,
        })
    }

    async fn call(
        &self,
        call: &'static str,
        url: String,
        body: serde_json::Value,
    ) -> Result<String, DlqError> {
        let mut request = self.http.post(url).json(&body);
        if let Some(creds) = &self.credentials {
            let headers = match creds
                .headers(http::Extensions::new())
                .await
                .map_err(|e| DlqError::Credentials(e.to_string()))?
            {
                google_cloud_auth::credentials::CacheableResource::New { data, .. } => data,
                google_cloud_auth::credentials::CacheableResource::NotModified => {
                    return Err(DlqError::Credentials(
                        "credentials returned no headers".into(),
                    ));
                }
            };
            request = request.headers(headers);
        }
        let response = request
            .send()
            .await
            .map_err(|source| DlqError::Http { call, source })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|source| DlqError::Http { call, source })?;
        if !(200..300).contains(&status) {
            return Err(DlqError::Status {
                call,
                status,
                body: text.chars().take(1024).collect(),
            });
        }
        Ok(text)
    }

    /// Pulls up to `max` messages now (fewer, or none, if fewer are ready).
    pub async fn pull(&self, subscription: &str, max: usize) -> Result<Vec<Pulled>, DlqError> {
        let text = self
            .call(
                "pull",
                format!("{}/v1/{subscription}:pull", self.base),
                json!({ "maxMessages": max.max(1), "returnImmediately": true }),
            )
            .await?;
        let response: PullResponse = serde_json::from_str(&text).map_err(|e| DlqError::Status {
            call: "pull",
            status: 200,
            body: format!("unreadable answer: {e}"),
        })?;
        response
            .received
            .into_iter()
            .map(|r| {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(r.message.data.as_bytes())
                    .map_err(|source| DlqError::Data {
                        message_id: r.message.message_id.clone(),
                        source,
                    })?;
                Ok(Pulled {
                    ack_id: r.ack_id,
                    message_id: r.message.message_id,
                    data,
                    attributes: r.message.attributes,
                    publish_time: r.message.publish_time,
                    delivery_attempt: r.delivery_attempt,
                })
            })
            .collect()
    }

    /// Acknowledges: the messages are gone from the subscription.
    pub async fn acknowledge(
        &self,
        subscription: &str,
        ack_ids: &[String],
    ) -> Result<(), DlqError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call(
            "acknowledge",
            format!("{}/v1/{subscription}:acknowledge", self.base),
            json!({ "ackIds": ack_ids }),
        )
        .await
        .map(|_| ())
    }

    /// Releases: the messages can be pulled again at once.
    pub async fn release(&self, subscription: &str, ack_ids: &[String]) -> Result<(), DlqError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call(
            "modifyAckDeadline",
            format!("{}/v1/{subscription}:modifyAckDeadline", self.base),
            json!({ "ackIds": ack_ids, "ackDeadlineSeconds": 0 }),
        )
        .await
        .map(|_| ())
    }

    /// Pulls until `max` messages are held or the subscription has no more ready.
    ///
    /// An immediate pull may come back empty while messages exist (Pub/Sub
    /// answers from whichever server it reaches), so "no more" means three
    /// empty answers in a row, 200 ms apart.
    pub async fn pull_up_to(
        &self,
        subscription: &str,
        max: usize,
    ) -> Result<Vec<Pulled>, DlqError> {
        let mut out: Vec<Pulled> = Vec::new();
        let mut empty = 0;
        while out.len() < max && empty < 3 {
            let batch = self.pull(subscription, (max - out.len()).min(1000)).await?;
            if batch.is_empty() {
                empty += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            empty = 0;
            out.extend(batch);
        }
        if out.len() > max {
            let extra: Vec<String> = out.drain(max..).map(|m| m.ack_id).collect();
            self.release(subscription, &extra).await?;
        }
        Ok(out)
    }
}
