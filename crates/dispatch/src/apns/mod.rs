//! Apple Push Notification service over HTTP/2 with token (JWT) auth.
//!
//! Same five files, with the same meanings, as [`crate::fcm`]:
//! - [`settings`]: what the app's `apns` config block gives;
//! - [`credentials`]: the provider token (ES256 JWT), one per key;
//! - [`request`]: `build`, a `Push` (request + device token) → the APNs
//!   request (path, `apns-*` headers, JSON payload);
//! - [`error`]: every documented answer and its [`crate::Outcome`];
//! - [`client`]: the wire; `ApnsClient::new(settings, credentials)`.

pub mod client;
pub mod credentials;
pub mod error;
pub mod request;
pub mod settings;

pub use client::ApnsClient;
pub use settings::ApnsSettings;
