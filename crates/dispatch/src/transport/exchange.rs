//! One request and its answer on an HTTP/2 stream, and what its failures mean.
//!
//! [`exchange`] waits for the connection to take a stream, sends the headers
//! and the body, and reads the status, `Retry-After` and the (small) body,
//! all within the request timeout. Its errors keep the HTTP/2 facts a
//! dispatcher needs ([`SendError`]): only a stream that was never opened, a
//! refusal (`REFUSED_STREAM`) or a stream above the last id of the server's
//! `GOAWAY` proves the provider never saw the request (RFC 9113 §8.7);
//! anything else after the stream opened may have delivered the push.
//! [`SendError::cause`] turns that into the [`RetryCause`] the
//! dispatchers report.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::Request;

use crate::RetryCause;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The provider never saw the request: resending cannot duplicate it.
    #[error("request not sent: {0}")]
    Unsent(String),
    /// The connection broke while the request was in flight: it may have
    /// been delivered.
    #[error("answer lost: {0}")]
    Lost(String),
    /// No answer within the request timeout: it may have been delivered.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl SendError {
    /// How the dispatcher reports it.
    pub fn cause(&self) -> RetryCause {
        match self {
            SendError::Unsent(_) => RetryCause::Unsent,
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
    /// The body.
    pub body: Bytes,
}

/// One request and its answer, within `timeout`.
pub(super) async fn exchange(
    send: SendRequest<Bytes>,
    request: Request<()>,
    body: Bytes,
    timeout: Duration,
) -> Result<RawAnswer, SendError> {
    let exchange = async {
        let mut send = send
            .ready()
            .await
            .map_err(|e| SendError::Unsent(e.to_string()))?;
        let (response, mut stream) = send
            .send_request(request, body.is_empty())
            .map_err(|e| SendError::Unsent(e.to_string()))?;
        if !body.is_empty() {
            stream.send_data(body, true).map_err(SendError::on_stream)?;
        }
        let response = response.await.map_err(SendError::on_stream)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::retry_after::parse_retry_after(v, std::time::SystemTime::now()));
        let mut recv = response.into_body();
        let mut body = Bytes::new();
        let mut more: Option<BytesMut> = None;
        while !recv.is_end_stream() {
            let Some(chunk) = recv.data().await else {
                break;
            };
            let chunk = chunk.map_err(SendError::on_stream)?;
            // Give the window back at once: answers are small.
            let _ = recv.flow_control().release_capacity(chunk.len());
            if body.is_empty() && more.is_none() {
                body = chunk;
            } else {
                more.get_or_insert_with(|| BytesMut::from(&body[..]))
                    .extend_from_slice(&chunk);
            }
        }
        if let Some(all) = more {
            body = all.freeze();
        }
        Ok(RawAnswer {
            status,
            retry_after,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(SendError::Timeout(timeout)))
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
        let (send, _driver) = target.connect(1, || {}).await.expect("connected");
        let mut request = Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = target.uri("/x").expect("uri");
        exchange(send, request, Bytes::from_static(b"{}"), timeout).await
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
