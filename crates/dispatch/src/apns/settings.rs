//! APNs client settings, built from an app's `apns` config block.

use std::path::PathBuf;
use std::time::Duration;

/// What the APNs client needs.
#[derive(Clone, Debug)]
pub struct ApnsSettings {
    /// `https://api.push.apple.com`, the sandbox, or a local stand-in.
    pub endpoint: String,
    /// The `.p8` signing key.
    pub key_file: PathBuf,
    /// The key id (`kid`).
    pub key_id: String,
    /// The team id (`iss`).
    pub team_id: String,
    /// The bundle id (`apns-topic`).
    pub topic: String,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Extra root CA.
    pub ca_file: Option<PathBuf>,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

impl ApnsSettings {
    /// Settings from an app's `apns` block and `dispatch.request_timeout`.
    pub fn from_config(
        apns: &push_dispatch_config::ApnsConfig,
        request_timeout: Duration,
    ) -> ApnsSettings {
        ApnsSettings {
            endpoint: apns.endpoint.trim_end_matches('/').to_string(),
            key_file: apns.key_file.clone(),
            key_id: apns.key_id.clone(),
            team_id: apns.team_id.clone(),
            topic: apns.topic.clone(),
            connections: apns.connections.max(1) as usize,
            ca_file: apns.ca_file.clone(),
            request_timeout,
        }
    }
}
