//! Apple Push Notification service over HTTP/2 with token (JWT) auth.
//!
//! Same shape as [`crate::fcm`]: [`settings`] (what the config gives),
//! [`token`] (the provider token), [`payload`] (PushRequest → headers and
//! JSON), [`error`] (every documented answer and its [`crate::Outcome`]),
//! [`client`] (the wire).

pub mod client;
pub mod error;
pub mod payload;
pub mod settings;
pub mod token;

pub use client::ApnsClient;
pub use settings::ApnsSettings;
