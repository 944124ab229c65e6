//! The APNs wire: `POST /3/device/{token}` over HTTP/2 with a provider token.

use std::time::Duration;

use push_dispatch_proto::v1::Platform;

use super::error::{ErrorBody, classify};
use super::payload::{ApnsRequest, build};
use super::settings::ApnsSettings;
use super::token::{Generation, ProviderToken, TokenError};
use crate::http::{Pool, TransportError, read_answer, transport_cause};
use crate::{Dispatcher, Outcome, Push, RejectReason};

/// The APNs client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ApnsBuildError {
    /// The key could not be loaded.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The transport could not be built.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The endpoint is not a URL.
    #[error("endpoint `{endpoint}` is not a URL: {problem}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        problem: String,
    },
}

/// Sends pushes to APNs.
#[derive(Debug)]
pub struct ApnsClient {
    settings: ApnsSettings,
    /// `{endpoint}/3/device/`, parsed once: each request only sets its path.
    url_prefix: reqwest::Url,
    pool: Pool,
    token: ProviderToken,
}

/// What came back from one request.
struct Answer {
    status: u16,
    body: ErrorBody,
    retry_after: Option<Duration>,
}

impl ApnsClient {
    /// Loads the key and builds the connections (lazily connected).
    pub fn new(settings: ApnsSettings) -> Result<ApnsClient, ApnsBuildError> {
        let token =
            ProviderToken::from_file(&settings.key_file, &settings.key_id, &settings.team_id)?;
        let pool = Pool::new(
            settings.connections,
            settings.ca_file.as_deref(),
            settings.request_timeout,
        )?;
        Ok(ApnsClient {
            url_prefix: reqwest::Url::parse(&format!("{}/3/device/", settings.endpoint)).map_err(
                |e| ApnsBuildError::Endpoint {
                    endpoint: settings.endpoint.clone(),
                    problem: e.to_string(),
                },
            )?,
            settings,
            pool,
            token,
        })
    }

    /// Provider tokens signed since start.
    pub fn token_refreshes(&self) -> u64 {
        self.token.refreshes()
    }

    async fn post(
        &self,
        client: reqwest::Client,
        device: &str,
        req: &ApnsRequest,
        authorization: &reqwest::header::HeaderValue,
    ) -> Result<Answer, reqwest::Error> {
        let mut url = self.url_prefix.clone();
        let path = format!("{}{device}", self.url_prefix.path());
        url.set_path(&path);
        let mut builder = client
            .post(url)
            .header(reqwest::header::AUTHORIZATION, authorization.clone())
            .header("apns-topic", &req.topic)
            .header("apns-push-type", req.push_type)
            .header("apns-priority", if req.priority == 5 { "5" } else { "10" })
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(req.body.clone());
        if let Some(exp) = req.expiration {
            builder = builder.header("apns-expiration", exp.to_string());
        }
        if let Some(id) = &req.collapse_id {
            builder = builder.header("apns-collapse-id", id);
        }
        let raw = read_answer(builder.send().await?).await?;
        let (status, retry_after) = (raw.status, raw.retry_after);
        let body = if status == 200 {
            ErrorBody::default()
        } else {
            serde_json::from_slice(&raw.body).unwrap_or_default()
        };
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }

    async fn attempt(
        &self,
        device: &str,
        req: &ApnsRequest,
        generation: &Generation,
    ) -> Result<Answer, reqwest::Error> {
        let conn = self.pool.pick();
        conn.send(
            |client| self.post(client, device, req, &generation.authorization),
            // A connection is warm once a request with our token got through.
            |r: &Result<Answer, reqwest::Error>| r.as_ref().is_ok_and(|a| a.status != 403),
        )
        .await
    }
}

#[async_trait::async_trait]
impl Dispatcher for ApnsClient {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    fn token_refreshes(&self) -> crate::TokenRefreshes {
        crate::TokenRefreshes {
            ok: self.token.refreshes(),
            failed: self.token.failures(),
        }
    }

    async fn send(&self, push: Push<'_>) -> Outcome {
        let req = match build(push.request, &self.settings.topic, push.expires_at) {
            Ok(r) => r,
            Err(reason) => return Outcome::Rejected { reason },
        };
        let mut generation = match self.token.current() {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the APNs provider token");
                return Outcome::Rejected {
                    reason: RejectReason::Provider {
                        status: 0,
                        provider_reason: "ProviderTokenUnavailable".into(),
                    },
                };
            }
        };
        let mut replaced = false;
        loop {
            let answer = match self.attempt(push.token, &req, &generation).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "APNs request failed");
                    return Outcome::Retryable {
                        after: None,
                        cause: transport_cause(&e),
                    };
                }
            };
            if answer.status == 403 && answer.body.reason == "ExpiredProviderToken" && !replaced {
                // Replace the generation it rejected (once) and try again now.
                match self.token.rejected(generation.id) {
                    Ok(g) => {
                        generation = g;
                        replaced = true;
                        continue;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot sign the APNs provider token"),
                }
            }
            return classify(answer.status, &answer.body, answer.retry_after);
        }
    }
}
