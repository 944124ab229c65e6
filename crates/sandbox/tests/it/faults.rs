//! Fault flags: expired provider tokens, GOAWAY every N streams, random
//! failures and 429s, latency; set through the API and over HTTP; and the
//! black holes (`blackhole`, `blackhole_streams`) a sandbox is started with.

use std::time::{Duration, Instant};

use push_dispatch_sandbox::Faults;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{PROJECT, answer, now, start, start_with};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn expire_provider_tokens_forces_one_refresh() {
    let fx = start().await;
    let first = fx.jwt_at(now() - 60);
    let send = |jwt: &str| {
        let req = fx.apns_request(&fx.client, TOKEN, jwt);
        async move { answer(req.send().await.unwrap()).await }
    };
    assert_eq!(send(&first).await.status, StatusCode::OK);

    fx.sandbox.set_faults(Faults {
        expire_provider_tokens: true,
        ..Faults::default()
    });
    // One-shot: the stored flag is down again.
    assert!(!fx.sandbox.faults().expire_provider_tokens);
    for _ in 0..3 {
        let a = send(&first).await;
        assert_eq!(
            (a.status, a.reason()),
            (StatusCode::FORBIDDEN, "ExpiredProviderToken")
        );
    }
    // Replacing the expired token right away is not a too-early update.
    let second = fx.jwt();
    assert_eq!(send(&second).await.status, StatusCode::OK);
    // But replacing the replacement is.
    let third = fx.jwt_at(now() + 1);
    assert_eq!(send(&third).await.reason(), "TooManyProviderTokenUpdates");

    let stats = fx.sandbox.stats();
    assert_eq!(stats.provider_tokens_expired, 1);
    assert_eq!(stats.apns_count("403 ExpiredProviderToken"), 3);
    assert_eq!(stats.apns_token_generations, 3);
}

#[tokio::test]
async fn goaway_every_n_streams_closes_connections_gracefully() {
    let fx = start_with(|c| c.faults.goaway_every = Some(3)).await;
    let jwt = fx.jwt();
    for i in 0..10 {
        let resp = fx.apns_request(&fx.client, TOKEN, &jwt).send().await;
        // A request racing the GOAWAY may need one retry on a new connection.
        let resp = match resp {
            Ok(r) => r,
            Err(_) => fx
                .apns_request(&fx.client, TOKEN, &jwt)
                .send()
                .await
                .unwrap(),
        };
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
    }
    let stats = fx.sandbox.stats();
    assert!(stats.goaways >= 3, "{stats:?}");
    assert!(stats.connections >= 4, "{stats:?}");
    assert_eq!(stats.apns_count("200"), 10);
}

#[tokio::test]
async fn failure_rate_one_fails_every_accepted_request() {
    let fx = start_with(|c| c.faults.failure_rate = 1.0).await;
    let t = fx.access_token().await;
    for _ in 0..10 {
        let a = fx.push(TOKEN).await;
        assert!(
            matches!(a.reason(), "InternalServerError" | "ServiceUnavailable"),
            "{:?}",
            a.body
        );
        let f = fx
            .fcm_send(PROJECT, Some(&t), json!({"message": {"token": "d"}}))
            .await;
        assert!(
            matches!(f.fcm_code(), "INTERNAL" | "UNAVAILABLE"),
            "{:?}",
            f.body
        );
    }
    // Requests that are refused anyway keep their own answer.
    assert_eq!(fx.push("dead00").await.reason(), "Unregistered");
    assert!(fx.sandbox.deliveries().is_empty());
}

#[tokio::test]
async fn retry_after_rate_one_answers_429() {
    let fx = start_with(|c| {
        c.faults.retry_after_rate = 1.0;
        c.faults.retry_after_secs = 7;
    })
    .await;
    let t = fx.access_token().await;
    let a = fx.push(TOKEN).await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests")
    );
    let f = fx
        .fcm_send(PROJECT, Some(&t), json!({"message": {"token": "d"}}))
        .await;
    assert_eq!(f.fcm_code(), "QUOTA_EXCEEDED");
    assert_eq!(f.headers["retry-after"], "7");
}

#[tokio::test]
async fn latency_is_added_and_faults_change_over_http() {
    let fx = start().await;
    let a = answer(
        fx.client
            .post(fx.url("/sandbox/faults"))
            .json(&json!({"latency": "150ms"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["latency"], "150ms");
    assert_eq!(a.body["failure_rate"], 0.0);

    let started = Instant::now();
    assert_eq!(fx.push(TOKEN).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));

    // Merge, not replace.
    let a = answer(
        fx.client
            .post(fx.url("/sandbox/faults"))
            .json(&json!({"goaway_every": 100}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.body["latency"], "150ms");
    assert_eq!(a.body["goaway_every"], 100);
    let current = answer(
        fx.client
            .get(fx.url("/sandbox/faults"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(current.body, a.body);

    for bad in [
        json!({"failure_rate": 2}),
        json!({"nonsense": 1}),
        json!({"goaway_every": 0}),
    ] {
        let a = answer(
            fx.client
                .post(fx.url("/sandbox/faults"))
                .json(&bad)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(fx.sandbox.faults().goaway_every, Some(100));
}

#[tokio::test]
async fn blackhole_accepts_tcp_and_never_sends_a_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = start_with(|c| {
        c.blackhole = true;
        c.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addrs = [fx.sandbox.addr(), fx.sandbox.tls_addr().unwrap()];
    for addr in addrs {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // An h2c preface (or a TLS hello): the sandbox reads and drops it.
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
        assert!(read.is_err(), "the sandbox sent something: {read:?}");
    }
    // reqwest gets no answer either.
    let sent = fx
        .client
        .get(fx.url("/sandbox/healthz"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(sent.unwrap_err().is_timeout());
    assert_eq!(fx.sandbox.stats().connections, 3);
    // Held connections end with the sandbox.
    tokio::time::timeout(Duration::from_secs(5), fx.sandbox.shutdown())
        .await
        .expect("shutdown does not wait for black-holed connections");
}

#[tokio::test]
async fn blackhole_streams_completes_http2_and_never_answers_a_push() {
    let fx = start_with(|c| c.blackhole_streams = true).await;
    let jwt = fx.jwt();
    let started = Instant::now();
    let sent = fx
        .apns_request(&fx.client, TOKEN, &jwt)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(sent.unwrap_err().is_timeout());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The connection is up and the control plane answers on it.
    let health = fx
        .client
        .get(fx.url("/sandbox/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let stats = fx.sandbox.stats();
    assert_eq!(stats.blackholed, 1);
    assert_eq!(stats.apns_count("200"), 0);
    tokio::time::timeout(Duration::from_secs(5), fx.sandbox.shutdown())
        .await
        .expect("shutdown drops unanswered streams");
}

#[tokio::test]
async fn black_holes_switch_on_and_off_at_run_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = start().await;
    let jwt = fx.jwt();
    let send = || {
        fx.apns_request(&fx.client, TOKEN, &jwt)
            .timeout(Duration::from_millis(300))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    fx.sandbox.set_faults(Faults {
        blackhole: true,
        blackhole_streams: true,
        ..Faults::default()
    });
    // A push on the open connection is never answered …
    assert!(send().await.unwrap_err().is_timeout());
    // … and a new connection never gets a byte.
    let mut tcp = tokio::net::TcpStream::connect(fx.sandbox.addr())
        .await
        .unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
    assert!(read.is_err(), "the sandbox sent something: {read:?}");
    // Switched off, pushes are answered again.
    fx.sandbox.set_faults(Faults::default());
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(fx.sandbox.stats().blackholed, 1);
}
