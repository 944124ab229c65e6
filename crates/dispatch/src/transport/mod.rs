//! The HTTP/2 transport shared by the APNs and FCM clients.
//!
//! A [`Pool`] holds a fixed number of HTTP/2 connections to one endpoint and
//! spreads requests over them round robin. Each connection is an `h2` client
//! connection driven by its own task: there is no per-request pool lookup,
//! no generic body machinery, and errors keep the HTTP/2 facts a dispatcher
//! needs to decide whether a resend can duplicate a push:
//!
//! - no connection could be made, the stream was never opened, the server
//!   refused it (`REFUSED_STREAM`), or it was above the last stream id of a
//!   `GOAWAY`: the provider never saw it ([`SendError::Unsent`]); the pool
//!   resends it once, at once, on a fresh connection;
//! - the connection broke while the stream was in flight: the answer is lost
//!   and the push may have been delivered ([`SendError::Lost`]);
//! - no answer within the request timeout ([`SendError::Timeout`]).
//!
//! Three files, one concern each:
//! - `connect`: where to connect (a `Target`, parsed once from the
//!   endpoint), TCP + TLS (or h2c) and the HTTP/2 handshake under one timeout,
//!   and the task that drives a connection and pings it;
//! - `exchange`: one request and its answer on a stream, and how HTTP/2
//!   errors sort into [`SendError`] and then [`crate::RetryCause`];
//! - `pool`: the connection slots, dialling on first use and after a
//!   close, the one-stream warm-up of a new connection, and the single resend
//!   of a request the provider never saw.
//!
//! `http://` endpoints use h2c with prior knowledge (local stand-ins only);
//! `https://` uses rustls with ALPN `h2`, the platform's roots and an optional
//! extra root CA.

mod connect;
mod exchange;
mod pool;

#[cfg(test)]
mod test_server;

pub use connect::TransportError;
pub use exchange::{RawAnswer, SendError};
pub use pool::Pool;
