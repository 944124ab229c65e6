//! The APNs wire: `POST /3/device/{token}` over HTTP/2 with a provider token.
//!
//! [`ApnsClient::new`] takes the settings and the credentials (the provider
//! token, shared by the clients of one key), exactly as
//! `crate::fcm::FcmClient::new` does; connections are dialled on first use.
//! A send builds the request ([`super::request::build`]), takes the current
//! token generation, posts it through the transport pool and classifies the
//! answer ([`super::error::classify`]). The whole send has one deadline,
//! `request_timeout` from its start (credential included); connection
//! failures and backoff are `RetryCause::Connect`, and
//! [`Dispatcher::backoff`] reports the pool's. An `ExpiredProviderToken` answer
//! replaces the generation it rejected, once, and the push is sent again.

use std::sync::Arc;
use std::time::Duration;

use push_dispatch_proto::v1::Platform;

use super::credentials::{Generation, ProviderToken};
use super::error::{ErrorBody, classify};
use super::request::{ApnsRequest, build};
use super::settings::ApnsSettings;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use tokio::time::Instant;

use crate::transport::{Pool, SendError, TransportError};
use crate::{CancellationToken, Dispatcher, Outcome, Push, RejectReason};

/// The APNs client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ApnsBuildError {
    /// The transport could not be built.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Sends pushes to APNs.
#[derive(Debug)]
pub struct ApnsClient {
    settings: ApnsSettings,
    pool: Pool,
    /// Shared by every client of the same key (SPEC §6: one generation per key).
    credentials: Arc<ProviderToken>,
}

const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");

/// What came back from one request.
struct Answer {
    status: u16,
    body: ErrorBody,
    retry_after: Option<Duration>,
}

impl ApnsClient {
    /// Builds the connections (lazily connected) around the provider token
    /// of the app's key. Clients of one key (apps of one Apple team) share
    /// it: one generation, one refresh and one `ExpiredProviderToken`
    /// replacement for all of them (see [`super::credentials::ProviderTokens`]).
    pub fn new(
        settings: ApnsSettings,
        credentials: Arc<ProviderToken>,
    ) -> Result<ApnsClient, ApnsBuildError> {
        let pool = Pool::new(
            &settings.endpoint,
            settings.connections,
            settings.ca_file.as_deref(),
            settings.request_timeout,
        )?;
        Ok(ApnsClient {
            settings,
            pool,
            credentials,
        })
    }

    /// `Some(remaining)` while the key's signing is in its failure backoff
    /// (to be combined with the pool's in [`Dispatcher::backoff`]).
    fn credential_backoff(&self) -> Option<Duration> {
        self.credentials.backoff()
    }

    /// The request headers of one attempt. Apple needs no `content-type`,
    /// and an absent `apns-priority` means 10: each header left out is HPACK
    /// work saved on every request.
    fn headers(fixed: &Fixed, authorization: &HeaderValue) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(http::header::AUTHORIZATION, authorization.clone());
        headers.insert(APNS_TOPIC, fixed.topic.clone());
        headers.insert(APNS_PUSH_TYPE, HeaderValue::from_static(fixed.push_type));
        if let Some(priority) = fixed.priority {
            headers.insert(APNS_PRIORITY, HeaderValue::from_static(priority));
        }
        if let Some(exp) = fixed.expiration {
            headers.insert(APNS_EXPIRATION, HeaderValue::from(exp));
        }
        if let Some(id) = &fixed.collapse_id {
            headers.insert(APNS_COLLAPSE_ID, id.clone());
        }
        headers
    }

    async fn attempt(
        &self,
        uri: &Uri,
        req: &ApnsRequest,
        fixed: &Fixed,
        generation: &Generation,
        deadline: Instant,
        give_up: Option<&CancellationToken>,
    ) -> Result<Answer, SendError> {
        // A connection is warm once a request with our token got through.
        let raw = self
            .pool
            .post(
                uri,
                || Self::headers(fixed, &generation.authorization),
                &req.body,
                |a| a.status != 403,
                deadline,
                give_up,
            )
            .await?;
        let body = if raw.status == 200 {
            ErrorBody::default()
        } else {
            serde_json::from_slice(&raw.body).unwrap_or_default()
        };
        Ok(Answer {
            status: raw.status,
            body,
            retry_after: raw.retry_after,
        })
    }
}

/// The header values of one push, checked once for all its attempts.
struct Fixed {
    topic: HeaderValue,
    push_type: &'static str,
    /// `None` for 10, APNs' default.
    priority: Option<&'static str>,
    expiration: Option<u64>,
    collapse_id: Option<HeaderValue>,
}

impl Fixed {
    /// `None` when the topic or collapse id cannot be a header value.
    fn of(req: &ApnsRequest) -> Option<Fixed> {
        Some(Fixed {
            topic: HeaderValue::from_str(&req.topic).ok()?,
            push_type: req.push_type,
            priority: (req.priority == 5).then_some("5"),
            expiration: req.expiration,
            collapse_id: match &req.collapse_id {
                Some(id) => Some(HeaderValue::from_str(id).ok()?),
                None => None,
            },
        })
    }
}

#[async_trait::async_trait]
impl Dispatcher for ApnsClient {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    fn token_refreshes(&self) -> crate::TokenRefreshes {
        crate::TokenRefreshes {
            ok: self.credentials.refreshes(),
            failed: self.credentials.failures(),
            last: self.credentials.last_refresh(),
        }
    }

    fn backoff(&self) -> Option<Duration> {
        self.credential_backoff().max(self.pool.backoff())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn send(&self, push: Push<'_>) -> Outcome {
        // One deadline for the whole send: credential, connection, answer.
        let deadline = Instant::now() + self.settings.request_timeout;
        let req = match build(push, &self.settings.topic) {
            Ok(r) => r,
            Err(reason) => return Outcome::Rejected { reason },
        };
        let mut generation = match self.credentials.current() {
            Ok(g) => g,
            Err(e) => {
                // Logged once per failure where it is signed, not per push.
                return Outcome::Retryable {
                    after: None,
                    cause: crate::RetryCause::Credentials {
                        problem: e.to_string(),
                    },
                };
            }
        };
        let Ok(uri) = self.pool.uri(&req.path) else {
            // APNs would answer 400 BadDeviceToken to a token that cannot be a path.
            return classify(
                400,
                &ErrorBody {
                    reason: "BadDeviceToken".into(),
                    timestamp: None,
                },
                None,
            );
        };
        let Some(fixed) = Fixed::of(&req) else {
            return Outcome::Rejected {
                reason: RejectReason::Unsendable {
                    problem: "topic or collapse_id is not a valid header value".into(),
                },
            };
        };
        let mut replaced = false;
        loop {
            let answer = match self
                .attempt(&uri, &req, &fixed, &generation, deadline, push.give_up)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "APNs request got no answer");
                    return Outcome::Retryable {
                        after: None,
                        cause: e.cause(),
                    };
                }
            };
            if answer.status == 403 && answer.body.reason == "ExpiredProviderToken" && !replaced {
                // Replace the generation it rejected (once) and try again now.
                match self.credentials.rejected(generation.id) {
                    Ok(Some(g)) => {
                        generation = g;
                        replaced = true;
                        continue;
                    }
                    Ok(None) => tracing::debug!(
                        "APNs rejects a provider token younger than 20 minutes; not signing another (check the clock, key_id and team_id)"
                    ),
                    Err(e) => tracing::debug!(error = %e, "no new APNs provider token"),
                }
            }
            return classify(answer.status, &answer.body, answer.retry_after);
        }
    }
}
