//! The HTTP/2 transport shared by the APNs and FCM clients.
//!
//! A [`Pool`] holds a fixed number of HTTP/2 connections to one endpoint and
//! spreads requests over them round robin. Each connection is an `h2` client
//! connection driven by its own task: there is no per-request pool lookup,
//! no generic body machinery, and errors keep the HTTP/2 facts a dispatcher
//! needs to decide whether a resend can duplicate a push:
//!
//! - no connection could be set up (TCP, TLS, HTTP/2 preface and SETTINGS
//!   under one timeout), or every connection slot is backing off after a
//!   failed dial: nothing was sent ([`SendError::Connect`]); never resent
//!   by the pool, and no request waits behind more than one dial;
//! - the request's deadline passed, or the caller gave up, while it was
//!   still queued locally (for a dial's result, the warm-up of a new
//!   connection, a free stream): nothing was sent ([`SendError::Queued`]);
//! - the stream was never opened, the server refused it (`REFUSED_STREAM`),
//!   or it was above the last stream id of a `GOAWAY`: the provider never
//!   saw it ([`SendError::Unsent`]); the pool resends it once, at once, on a
//!   fresh connection;
//! - the connection broke while the stream was in flight: the answer is lost
//!   and the push may have been delivered ([`SendError::Lost`]);
//! - no answer before the request's deadline after it was written
//!   ([`SendError::Timeout`]).
//!
//! Each request carries one deadline (set by the client when its send
//! began) and an optional give-up token; [`Pool::backoff`] says when every
//! slot is backing off, so that a caller can hand work back without
//! queueing it.
//!
//! Three files, one concern each:
//! - `connect`: where to connect (a `Target`, parsed once from the
//!   endpoint), TCP + TLS (or h2c) and the HTTP/2 handshake under one timeout,
//!   and the task that drives a connection and pings it;
//! - `exchange`: one request and its answer on a stream, and how HTTP/2
//!   errors sort into [`SendError`] and then [`crate::RetryCause`];
//! - `pool`: the connection slots, the shared dial (a task per slot) and its
//!   backoff, the one-stream warm-up of a new connection, the stream limit,
//!   and the single resend of a request the provider never saw.
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
pub use exchange::{MAX_BODY, RawAnswer, SendError};
pub use pool::Pool;
