//! The dead-letter queue's operations — `push-dispatch dlq peek`, `replay`
//! and `purge` — over unary pull, acknowledge and release of Pub/Sub's REST
//! API (`v1`). The binary only prints what these return.
//!
//! The official crate offers only streaming pull; a one-shot command wants
//! "give me up to N messages now", and closing a streaming pull on the
//! emulator leaves a zombie stream that eats later messages (NOTES). Against
//! real Pub/Sub the calls carry the Application Default Credentials' headers;
//! against the emulator, none.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use push_dispatch_proto::attributes;
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

    /// Keeps the messages leased for [`HOLD_SECS`] more (the most Pub/Sub
    /// grants), so that a long replay or purge does not lose its lease on the
    /// ones it has not reached yet (the inspection subscription's own
    /// deadline is 60 s).
    pub async fn hold(&self, subscription: &str, ack_ids: &[String]) -> Result<(), DlqError> {
        self.modify_ack_deadline(subscription, ack_ids, HOLD_SECS)
            .await
    }

    /// Releases: the messages can be pulled again at once.
    pub async fn release(&self, subscription: &str, ack_ids: &[String]) -> Result<(), DlqError> {
        self.modify_ack_deadline(subscription, ack_ids, 0).await
    }

    async fn modify_ack_deadline(
        &self,
        subscription: &str,
        ack_ids: &[String],
        seconds: i32,
    ) -> Result<(), DlqError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call(
            "modifyAckDeadline",
            format!("{}/v1/{subscription}:modifyAckDeadline", self.base),
            json!({ "ackIds": ack_ids, "ackDeadlineSeconds": seconds }),
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
            let ids: Vec<String> = batch.iter().map(|m| m.ack_id.clone()).collect();
            self.hold(subscription, &ids).await?;
            out.extend(batch);
        }
        if out.len() > max {
            let extra: Vec<String> = out.drain(max..).map(|m| m.ack_id).collect();
            self.release(subscription, &extra).await?;
        }
        Ok(out)
    }
}

/// Seconds [`RestSubscriber::hold`] keeps a message leased: Pub/Sub's maximum.
pub const HOLD_SECS: i32 = 600;

/// How often a long replay renews the lease of the messages still waiting.
const REHOLD_EVERY: Duration = Duration::from_secs(240);

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// (dead letter's message id, the new request's message id), in order.
    pub replayed: Vec<(String, String)>,
    /// (dead letter's message id, why its republish failed): they stay on
    /// the subscription, released for the next try.
    pub failed: Vec<(String, crate::publish::PublishError)>,
}

impl RestSubscriber {
    /// Pulls up to `max` dead letters and keeps those whose `push_error` is
    /// `push_error` (all without a code); the others are released at once.
    pub async fn pull_chosen(
        &self,
        subscription: &str,
        max: usize,
        push_error: Option<&str>,
    ) -> Result<Vec<Pulled>, DlqError> {
        let messages = self.pull_up_to(subscription, max).await?;
        let (chosen, others): (Vec<_>, Vec<_>) = messages.into_iter().partition(|m| {
            push_error.is_none_or(|code| {
                m.attributes.get(attributes::PUSH_ERROR).map(String::as_str) == Some(code)
            })
        });
        let others: Vec<String> = others.into_iter().map(|m| m.ack_id).collect();
        self.release(subscription, &others).await?;
        Ok(chosen)
    }

    /// Publishes each message back onto `topic` without its error attributes
    /// ([`attributes::is_cleared_on_replay`]) and acks it only after the publish was
    /// confirmed, so that an interrupted replay loses nothing (a message can at
    /// worst be replayed twice). Failed ones are released.
    pub async fn replay(
        &self,
        subscription: &str,
        messages: Vec<Pulled>,
        publisher: &crate::pubsub::client::Publisher,
        topic: &str,
    ) -> Result<ReplayReport, DlqError> {
        let mut report = ReplayReport::default();
        let mut release = Vec::new();
        let mut held_at = std::time::Instant::now();
        let mut messages = messages.into_iter();
        while let Some(m) = messages.next() {
            if held_at.elapsed() >= REHOLD_EVERY {
                // A long replay: keep the lease on those still waiting.
                let waiting: Vec<String> = std::iter::once(m.ack_id.clone())
                    .chain(messages.as_slice().iter().map(|w| w.ack_id.clone()))
                    .collect();
                self.hold(subscription, &waiting).await?;
                held_at = std::time::Instant::now();
            }
            let mut attrs: HashMap<String, String> = m
                .attributes
                .iter()
                .filter(|(k, _)| !attributes::is_cleared_on_replay(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            attrs.insert(attributes::REPLAYED_FROM.into(), m.message_id.clone());
            match crate::publish::publish_confirmed(publisher, topic, m.data, attrs).await {
                Ok(id) => {
                    self.acknowledge(subscription, std::slice::from_ref(&m.ack_id))
                        .await?;
                    report.replayed.push((m.message_id, id));
                }
                Err(e) => {
                    release.push(m.ack_id);
                    report.failed.push((m.message_id, e));
                }
            }
        }
        self.release(subscription, &release).await?;
        Ok(report)
    }

    /// Acknowledges the messages: they are gone for good. Returns how many.
    pub async fn purge(
        &self,
        subscription: &str,
        messages: Vec<Pulled>,
    ) -> Result<usize, DlqError> {
        let ids: Vec<String> = messages.into_iter().map(|m| m.ack_id).collect();
        self.acknowledge(subscription, &ids).await?;
        Ok(ids.len())
    }
}

/// One dead letter as `dlq peek` shows it: its reason, delivery count and
/// the shape of the request it holds (never its tokens).
pub fn describe(m: &Pulled) -> String {
    let a = &m.attributes;
    let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("-");
    let deliveries = a
        .get(attributes::DEAD_LETTER_DELIVERY_COUNT)
        .or_else(|| a.get(attributes::DELIVERY_ATTEMPT))
        .map(String::as_str)
        .unwrap_or("-");
    let mut out = format!(
        "message {}  published {}  push_error={}  deliveries={}  source_message_id={}\n",
        m.message_id,
        m.publish_time,
        get(attributes::PUSH_ERROR),
        deliveries,
        get(attributes::SOURCE_MESSAGE_ID),
    );
    if let Some(detail) = a.get(attributes::PUSH_ERROR_DETAIL) {
        out.push_str(&format!("  detail: {detail}\n"));
    }
    match push_dispatch_proto::decode_request(&m.data, a) {
        Ok(r) => {
            let count = |p: push_dispatch_proto::v1::Platform| {
                r.targets.iter().filter(|t| t.platform() == p).count()
            };
            out.push_str(&format!(
                "  request: request_id={} app={} targets={} (apns {}, fcm {})\n",
                if r.request_id.is_empty() {
                    "-"
                } else {
                    &r.request_id
                },
                if r.app.is_empty() {
                    "(default)"
                } else {
                    &r.app
                },
                r.targets.len(),
                count(push_dispatch_proto::v1::Platform::Apns),
                count(push_dispatch_proto::v1::Platform::Fcm),
            ));
        }
        Err(e) => out.push_str(&format!(
            "  body: {} bytes, not a request ({})\n",
            m.data.len(),
            e.code()
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulled(data: &[u8], attrs: &[(&str, &str)]) -> Pulled {
        Pulled {
            ack_id: "a".into(),
            message_id: "m-1".into(),
            data: data.to_vec(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            publish_time: "2026-12-01T00:00:00Z".into(),
            delivery_attempt: None,
        }
    }

    #[test]
    fn a_replay_keeps_the_requests_age_and_drops_its_errors() {
        for cleared in [
            "push_error",
            "push_error_detail",
            "push_attempt",
            "push_delivery_attempt",
            "CloudPubSubDeadLetterSourceDeliveryCount",
            "googclient_schemaencoding",
            "goog_reserved",
        ] {
            assert!(attributes::is_cleared_on_replay(cleared), "{cleared}");
        }
        for kept in [
            "push_first_publish_time",
            "source_message_id",
            "traceparent",
            "trace",
            // A binary dead letter from a schema topic says so here.
            "content-type",
        ] {
            assert!(!attributes::is_cleared_on_replay(kept), "{kept}");
        }
    }

    #[test]
    fn describe_shows_the_reason_and_the_shape_never_the_tokens() {
        let token = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
        let body = format!(
            r#"{{"requestId":"r-7","targets":[{{"platform":"PLATFORM_APNS","token":"{token}"}},{{"platform":"PLATFORM_FCM","token":"f"}}]}}"#
        );
        let text = describe(&pulled(
            body.as_bytes(),
            &[
                ("push_error", "retries_exhausted"),
                ("push_delivery_attempt", "20"),
            ],
        ));
        assert!(text.contains("push_error=retries_exhausted"), "{text}");
        assert!(text.contains("deliveries=20"), "{text}");
        assert!(
            text.contains("request_id=r-7") && text.contains("(apns 1, fcm 1)"),
            "{text}"
        );
        assert!(!text.contains(token), "{text}");
        let garbage = describe(&pulled(b"{nope", &[("push_error", "decode_json")]));
        assert!(garbage.contains("not a request (decode_json)"), "{garbage}");
    }
}
