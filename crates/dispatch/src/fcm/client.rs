//! The FCM wire: `POST {endpoint}/v1/projects/{project}/messages:send`.
//!
//! [`FcmClient::new`] takes the settings and the credentials (the OAuth
//! bearer cache), exactly as `crate::apns::ApnsClient::new` does;
//! connections are dialled on first use. A send builds the request
//! ([`super::request::build`]), takes a bearer token, posts it through the
//! transport pool and classifies the answer ([`super::error::classify`]).
//! The whole send has one deadline, `request_timeout` from its start (the
//! token wait included); connection failures and backoff are
//! `RetryCause::Connect`, and [`Dispatcher::backoff`] reports the pool's. A
//! 401 `UNAUTHENTICATED` drops the token it refused, once, and the push is
//! sent again with a newly fetched one. Waiting for a token is bounded by
//! the send's deadline (start + request timeout) and its `give_up`.

use std::sync::Arc;
use std::time::Duration;

use push_dispatch_proto::v1::Platform;

use super::credentials::{BearerCache, CredentialsError};
use super::error::{ErrorBody, classify};
use super::request::build;
use super::settings::FcmSettings;
use crate::transport::{Pool, RawAnswer, TransportError};
use crate::{Dispatcher, Outcome, Push, RetryCause};

/// The FCM client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FcmBuildError {
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
    request_timeout: std::time::Duration,
    pool: Pool,
    credentials: Arc<BearerCache>,
    /// `dispatch.quota_wait`, for [`classify`].
    quota_wait: std::time::Duration,
}

impl FcmClient {
    /// Builds the connections (lazily connected) around the bearer cache
    /// of the app's credentials (a service-account file or ADC, see
    /// [`BearerCache::new`]).
    pub fn new(
        settings: FcmSettings,
        credentials: Arc<BearerCache>,
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
        Ok(FcmClient {
            uri,
            request_timeout: settings.request_timeout,
            pool,
            credentials,
            quota_wait: settings.quota_wait,
        })
    }

    /// `Some(remaining)` while the OAuth credential is in its failure
    /// backoff (to be combined with the pool's in [`Dispatcher::backoff`]).
    fn credential_backoff(&self) -> Option<Duration> {
        self.credentials.backoff()
    }
}

/// The outcome of a send that got no access token: nothing was sent.
fn no_token(e: &CredentialsError) -> Outcome {
    tracing::debug!(error = %e, "no FCM access token");
    let cause = match e {
        // Draining: not the credential's fault.
        CredentialsError::GaveUp => RetryCause::Unsent,
        _ => RetryCause::Credentials {
            problem: e.to_string(),
        },
    };
    Outcome::Retryable { after: None, cause }
}

#[async_trait::async_trait]
impl Dispatcher for FcmClient {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }

    fn token_refreshes(&self) -> crate::TokenRefreshes {
        crate::TokenRefreshes {
            ok: self.credentials.fetches(),
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
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let req = match build(push) {
            Ok(r) => r,
            Err(reason) => return Outcome::Rejected { reason },
        };
        let mut refreshed = false;
        loop {
            let bearer = match self.credentials.token(deadline, push.give_up).await {
                Ok(t) => t,
                Err(e) => return no_token(&e),
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
                .post(
                    &self.uri,
                    headers,
                    &req.body,
                    |a| a.status != 401,
                    deadline,
                    push.give_up,
                )
                .await;
            let RawAnswer {
                status,
                retry_after,
                body: bytes,
                ..
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
                // Our token was refused: drop it, fetch a new one and try once more.
                self.credentials.invalidate(&bearer);
                refreshed = true;
                continue;
            }
            return classify(status, &error, retry_after, self.quota_wait);
        }
    }
}
