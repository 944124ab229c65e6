//! FCM client settings, built from an app's `fcm` config block.

use std::path::PathBuf;
use std::time::Duration;

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
}

impl FcmSettings {
    /// Settings from an app's `fcm` block and `dispatch.request_timeout`.
    pub fn from_config(
        fcm: &push_dispatch_config::FcmConfig,
        request_timeout: Duration,
    ) -> FcmSettings {
        FcmSettings {
            endpoint: fcm.endpoint.trim_end_matches('/').to_string(),
            project_id: fcm.project_id.clone(),
            credentials_file: fcm.credentials_file.clone(),
            ca_file: fcm.ca_file.clone(),
            connections: fcm.connections.max(1) as usize,
            request_timeout,
        }
    }

    /// How its OAuth tokens are fetched: the default timeouts and backoff
    /// (see [`super::credentials`]), with the app's `ca_file` as an extra
    /// root for the token endpoint.
    pub fn token_settings(&self) -> super::credentials::TokenSettings {
        super::credentials::TokenSettings::new(self.ca_file.clone())
    }
}
