//! Firebase Cloud Messaging HTTP v1 with an OAuth2 bearer from gcp_auth.
//!
//! Same shape as [`crate::apns`]: [`settings`], [`auth`] (the bearer token),
//! [`message`] (PushRequest → FCM `Message` JSON), [`error`] (every
//! documented error code and its [`crate::Outcome`]), [`client`] (the wire).

pub mod auth;
pub mod client;
pub mod error;
pub mod message;
pub mod settings;

pub use client::FcmClient;
pub use settings::FcmSettings;
