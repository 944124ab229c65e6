//! The FCM wire: `POST {endpoint}/v1/projects/{project}/messages:send`.

use std::sync::Arc;

use push_dispatch_proto::v1::Platform;

use super::auth::{AuthError, BearerCache};
use super::error::{ErrorBody, classify};
use super::message::message;
use super::settings::FcmSettings;
use crate::transport::{Pool, RawAnswer, TransportError};
use crate::{Dispatcher, Outcome, Push, RetryCause};

/// The FCM client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FcmBuildError {
    /// The credentials could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The transport could not be built.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The project id cannot be part of a URL path.
    #[error(
        "fcm.project_id `{project_id}` cannot be part of a URL ({problem}); use the Firebase project id"
    )]
    ProjectId {
        /// The project id.
        project_id: String,
        /// Why.
        problem: String,
    },
}

/// Sends pushes to FCM HTTP v1.
#[derive(Debug)]
pub struct FcmClient {
    uri: http::Uri,
    pool: Pool,
    auth: Arc<BearerCache>,
}

impl FcmClient {
    /// Loads the credentials and builds the connections (lazily connected).
    pub async fn new(settings: FcmSettings) -> Result<FcmClient, FcmBuildError> {
        let auth = BearerCache::new(settings.credentials_file.as_deref()).await?;
        FcmClient::with_auth(settings, Arc::new(auth))
    }

    /// With a given bearer source (tests).
    pub fn with_auth(
        settings: FcmSettings,
        auth: Arc<BearerCache>,
    ) -> Result<FcmClient, FcmBuildError> {
        let pool = Pool::new(
            &settings.endpoint,
            settings.connections,
            settings.ca_file.as_deref(),
            settings.request_timeout,
        )?;
        let path = format!("/v1/projects/{}/messages:send", settings.project_id);
        let uri = pool.uri(&path).map_err(|e| FcmBuildError::ProjectId {
            project_id: settings.project_id.clone(),
            problem: e.to_string(),
        })?;
        Ok(FcmClient { uri, pool, auth })
    }

    /// OAuth tokens fetched since start.
    pub fn token_fetches(&self) -> u64 {
        self.auth.fetches()
    }
}

#[async_trait::async_trait]
impl Dispatcher for FcmClient {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }

    fn token_refreshes(&self) -> crate::TokenRefreshes {
        crate::TokenRefreshes {
            ok: self.auth.fetches(),
            failed: self.auth.failures(),
        }
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn send(&self, push: Push<'_>) -> Outcome {
        let body = match serde_json::to_vec(&message(push.request, push.token, push.expires_at)) {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) => {
                return Outcome::Rejected {
                    reason: crate::RejectReason::Unsendable {
                        problem: format!("message not encodable: {e}"),
                    },
                };
            }
        };
        let mut refreshed = false;
        loop {
            let bearer = match self.auth.token().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "no FCM access token");
                    return Outcome::Retryable {
                        after: None,
                        cause: RetryCause::Credentials {
                            problem: format!("no FCM access token: {e}"),
                        },
                    };
                }
            };
            let headers = || {
                let mut headers = http::HeaderMap::with_capacity(4);
                headers.insert(http::header::AUTHORIZATION, bearer.authorization().clone());
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                headers
            };
            let result = self
                .pool
                .post(&self.uri, headers, &body, |a| a.status != 401)
                .await;
            let RawAnswer {
                status,
                retry_after,
                body: bytes,
            } = match result {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "FCM request got no answer");
                    return Outcome::Retryable {
                        after: None,
                        cause: e.cause(),
                    };
                }
            };
            if (200..300).contains(&status) {
                return Outcome::Delivered;
            }
            let error: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            if status == 401
                && error.code() == super::error::FcmErrorCode::Unauthenticated
                && !refreshed
            {
                // Our token was refused: fetch a new one and try once more.
                self.auth.invalidate(&bearer).await;
                refreshed = true;
                continue;
            }
            return classify(status, &error, retry_after);
        }
    }
}
