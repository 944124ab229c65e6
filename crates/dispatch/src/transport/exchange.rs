//! One request and its answer on an HTTP/2 stream, and what its failures mean.
//!
//! [`exchange`] hands the headers and the body to `h2` and reads the status,
//! `Retry-After` and the body (up to [`MAX_BODY`]), all before the request's
//! deadline. Whatever waits *before* the headers are handed to `h2` (a
//! connection, the warm-up of a cold connection, a free stream: see the
//! pool) is queued locally: a deadline or a give-up there is
//! [`SendError::Queued`], never a timeout, since nothing was written. From
//! the moment `h2` has the headers, the remaining time is a real
//! [`SendError::Timeout`] and a give-up is ignored.
//!
//! Its errors keep the HTTP/2 facts a dispatcher needs ([`SendError`]): only
//! a stream that was never opened, a refusal (`REFUSED_STREAM`) or a stream
//! above the last id of the server's `GOAWAY` proves the provider never saw
//! the request (RFC 9113 §8.7); anything else after the stream opened may
//! have delivered the push. [`SendError::cause`] turns that into the
//! [`RetryCause`] the dispatchers report.
//!
//! Bodies: at most [`MAX_BODY`] bytes are kept; the rest is not read (the
//! stream is dropped, which resets it and gives its flow-control window
//! back). A 2xx whose headers arrived is an answer even if its body is then
//! lost (a reset, the connection dropped, the deadline while reading it):
//! the provider said yes, and a resend would duplicate the push; the answer
//! carries the part of the body read ([`RawAnswer::body_complete`] is false).
//! A non-2xx whose body is lost is [`SendError::Lost`] (or `Timeout`), as its
//! reason is in the body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::Request;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::RetryCause;

/// The most of an answer's body that is kept (providers' answers are a few
/// hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be set up (TCP, TLS, the HTTP/2 preface and
    /// SETTINGS did not complete, or not before the request's deadline), or
    /// the connection slots are in their failure backoff: nothing was sent.
    #[error("no connection: {0}")]
    Connect(String),
    /// The request waited locally (for the warm-up of a new connection or a
    /// free stream) until its deadline passed or it was given up: it was
    /// never handed to HTTP/2, nothing was sent.
    #[error("request not sent, still queued: {0}")]
    Queued(String),
    /// The provider never saw the request: resending cannot duplicate it.
    #[error("request not sent: {0}")]
    Unsent(String),
    /// The connection broke while the request was in flight: it may have
    /// been delivered.
    #[error("answer lost: {0}")]
    Lost(String),
    /// No answer within the request's time after it was written (the time
    /// waited since then): it may have been delivered.
    #[error("no answer {0:?} after sending")]
    Timeout(Duration),
}

impl SendError {
    /// How the dispatcher reports it.
    pub fn cause(&self) -> RetryCause {
        match self {
            SendError::Connect(problem) => RetryCause::Connect {
                problem: problem.clone(),
            },
            SendError::Queued(_) | SendError::Unsent(_) => RetryCause::Unsent,
            SendError::Lost(_) => RetryCause::Connection,
            SendError::Timeout(_) => RetryCause::Timeout,
        }
    }

    /// Sorts an `h2` error on an opened stream: only a refusal, or a stream
    /// above the last id of the server's GOAWAY, proves the server did not
    /// process it (RFC 9113 §8.7).
    fn on_stream(e: h2::Error) -> SendError {
        let refused = e.is_remote()
            && ((e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM)) || e.is_go_away());
        if refused {
            SendError::Unsent(e.to_string())
        } else {
            SendError::Lost(e.to_string())
        }
    }
}

/// What came back from a provider: status, parsed `Retry-After`, body.
#[derive(Debug)]
pub struct RawAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, seconds or HTTP date.
    pub retry_after: Option<Duration>,
    /// The body, at most [`MAX_BODY`] bytes of it.
    pub body: Bytes,
    /// False when the body was cut at [`MAX_BODY`], or (a 2xx only) lost
    /// after the headers arrived.
    pub body_complete: bool,
}

/// Resolves when `give_up` is cancelled; never without one.
pub(super) async fn given_up(give_up: Option<&CancellationToken>) {
    match give_up {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// One request and its answer, before `deadline`. `send` must be able to
/// open a stream at once (the pool holds a stream permit): nothing here
/// waits before the headers are handed to `h2`, except the check that the
/// connection is still usable.
pub(super) async fn exchange(
    send: SendRequest<Bytes>,
    request: Request<()>,
    body: Bytes,
    deadline: Instant,
) -> Result<RawAnswer, SendError> {
    // A fresh handle has no stream of its own pending: `ready` only checks
    // that the connection can take a new stream (not closed, not GOAWAY).
    let mut send = send
        .ready()
        .await
        .map_err(|e| SendError::Unsent(e.to_string()))?;
    if Instant::now() >= deadline {
        return Err(SendError::Queued(
            "the request's time ran out before it was sent".into(),
        ));
    }
    let (response, mut stream) = send
        .send_request(request, body.is_empty())
        .map_err(|e| SendError::Unsent(e.to_string()))?;
    // From here on h2 has the headers: the remaining time is a real timeout.
    let written = Instant::now();
    let timeout = || SendError::Timeout(written.elapsed());
    if !body.is_empty() {
        stream.send_data(body, true).map_err(SendError::on_stream)?;
    }
    let response = match tokio::time::timeout_at(deadline, response).await {
        Ok(r) => r.map_err(SendError::on_stream)?,
        Err(_) => return Err(timeout()),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::retry_after::parse_retry_after(v, std::time::SystemTime::now()));
    let mut recv = response.into_body();
    let mut body = Bytes::new();
    let mut more: Option<BytesMut> = None;
    let mut complete = true;
    let mut lost = None;
    while !recv.is_end_stream() {
        let chunk = match tokio::time::timeout_at(deadline, recv.data()).await {
            Ok(None) => break,
            // After the headers the stream was opened and answered: an error
            // now is never "unsent".
            Ok(Some(Err(e))) => {
                lost = Some(SendError::Lost(e.to_string()));
                break;
            }
            Err(_) => {
                lost = Some(timeout());
                break;
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        // Give the window back at once: answers are small.
        let _ = recv.flow_control().release_capacity(chunk.len());
        let kept = more.as_ref().map_or(body.len(), |m| m.len());
        let room = MAX_BODY.saturating_sub(kept);
        let take = chunk.len().min(room);
        if body.is_empty() && more.is_none() {
            body = chunk.slice(..take);
        } else {
            more.get_or_insert_with(|| BytesMut::from(&body[..]))
                .extend_from_slice(&chunk[..take]);
        }
        if take < chunk.len() {
            // Over the cap: the rest is not read. Dropping the stream resets
            // it and releases what it still holds of the connection window.
            complete = false;
            break;
        }
    }
    drop(recv);
    if let Some(all) = more {
        body = all.freeze();
    }
    if let Some(e) = lost {
        if !(200..300).contains(&status) {
            return Err(e);
        }
        tracing::debug!(status, error = %e, "the body of a 2xx answer was lost; the answer stands");
        complete = false;
    }
    Ok(RawAnswer {
        status,
        retry_after,
        body,
        body_complete: complete,
    })
}

#[cfg(test)]
mod tests {
    use super::super::connect::Target;
    use super::super::test_server::{Play, server};
    use super::*;

    #[test]
    fn a_local_reason_is_not_a_refusal() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        // A locally made reason is not the server's refusal.
        assert!(matches!(SendError::on_stream(refused), SendError::Lost(_)));
    }

    /// One exchange on a fresh connection to a server playing `script`.
    async fn exchange_with(script: Vec<Play>, timeout: Duration) -> Result<RawAnswer, SendError> {
        let (endpoint, _seen) = server(script).await;
        let target = Target::parse(&endpoint, None).expect("target");
        let (send, _driver) = target
            .connect(1, || {}, Duration::from_secs(5))
            .await
            .expect("connected");
        let mut request = Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = target.uri("/x").expect("uri");
        exchange(
            send,
            request,
            Bytes::from_static(b"{}"),
            Instant::now() + timeout,
        )
        .await
    }

    #[tokio::test]
    async fn an_answer_carries_status_retry_after_and_body() {
        let answer = exchange_with(vec![Play::Answer(429)], Duration::from_secs(5))
            .await
            .expect("answered");
        assert_eq!(answer.status, 429);
        assert_eq!(answer.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(&answer.body[..], b"{}");
    }

    #[tokio::test]
    async fn a_refused_stream_is_unsent() {
        let e = exchange_with(vec![Play::Refuse], Duration::from_secs(5))
            .await
            .expect_err("refused");
        assert!(matches!(e, SendError::Unsent(_)), "{e:?}");
        assert_eq!(e.cause(), RetryCause::Unsent);
    }

    #[tokio::test]
    async fn a_connection_dropped_in_flight_loses_the_answer() {
        let e = exchange_with(vec![Play::DropConnection], Duration::from_secs(5))
            .await
            .expect_err("dropped");
        assert!(matches!(e, SendError::Lost(_)), "{e:?}");
        assert_eq!(e.cause(), RetryCause::Connection);
    }

    #[tokio::test]
    async fn no_answer_within_the_timeout_is_a_timeout() {
        let e = exchange_with(vec![Play::Ignore], Duration::from_millis(200))
            .await
            .expect_err("ignored");
        assert!(matches!(e, SendError::Timeout(_)), "{e:?}");
        assert_eq!(e.cause(), RetryCause::Timeout);
    }
}
