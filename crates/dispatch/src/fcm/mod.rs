//! Firebase Cloud Messaging HTTP v1 with an OAuth2 bearer token.
//!
//! Same five files, with the same meanings, as [`crate::apns`]:
//! - [`settings`]: what the app's `fcm` config block gives;
//! - [`credentials`]: the OAuth2 bearer token (service account or ADC);
//! - [`request`]: `build`, a `Push` (request + registration token) → the
//!   FCM request (the `messages:send` JSON body);
//! - [`error`]: every documented error code and its [`crate::Outcome`];
//! - [`client`]: the wire; `FcmClient::new(settings, credentials)`.

pub mod client;
pub mod credentials;
pub mod error;
pub mod request;
pub mod settings;

pub use client::FcmClient;
pub use settings::{DEFAULT_QUOTA_WAIT, FcmSettings};
