//! FCM client settings, built from an app's `fcm` config block.

use std::path::PathBuf;
use std::time::Duration;

/// `dispatch.quota_wait` by default: FCM's advice for `QUOTA_EXCEEDED` is to
/// back off at least a minute.
pub const DEFAULT_QUOTA_WAIT: Duration = Duration::from_secs(60);

/// What the FCM client needs.
#[derive(Clone, Debug)]
pub struct FcmSettings {
    /// `https://fcm.googleapis.com` or a local stand-in.
    pub endpoint: String,
    /// The Firebase project id.
    pub project_id: String,
    /// A service-account JSON; `None` = Application Default Credentials.
    pub credentials_file: Option<PathBuf>,
    /// Extra root CA, for the FCM endpoint and the OAuth token endpoint.
    pub ca_file: Option<PathBuf>,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// How long a `QUOTA_EXCEEDED` without `Retry-After` waits
    /// (`dispatch.quota_wait`; [`DEFAULT_QUOTA_WAIT`]).
    pub quota_wait: Duration,
}

impl FcmSettings {
    /// Settings from an app's `fcm` block, `dispatch.request_timeout` and
    /// `dispatch.quota_wait`.
    pub fn from_config(
        fcm: &push_dispatch_config::FcmConfig,
        request_timeout: Duration,
        quota_wait: Duration,
    ) -> FcmSettings {
        FcmSettings {
            endpoint: fcm.endpoint.trim_end_matches('/').to_string(),
            project_id: fcm.project_id.clone(),
            credentials_file: fcm.credentials_file.clone(),
            ca_file: fcm.ca_file.clone(),
            connections: fcm.connections.max(1) as usize,
            request_timeout,
            quota_wait,
        }
    }

    /// How its OAuth tokens are fetched: the default timeouts and backoff
    /// (see [`super::credentials`]), with the app's `ca_file` as an extra
    /// root for the token endpoint.
    pub fn token_settings(&self) -> super::credentials::TokenSettings {
        super::credentials::TokenSettings::new(self.ca_file.clone())
    }
}
