//! `/sandbox/deliveries`, `/sandbox/stats`, `/sandbox/reset`, TLS with the
//! written certificate as the only root, and graceful shutdown.

use push_dispatch_sandbox::{Delivery, Stats};
use reqwest::StatusCode;
use std::net::SocketAddr;

use crate::common::{TOPIC, answer, start, start_with};

const TOKEN: &str = "00112233445566778899aabbccddeeff";

#[tokio::test]
async fn deliveries_stats_and_reset_over_http() {
    let fx = start().await;
    assert_eq!(fx.push(TOKEN).await.status, StatusCode::OK);
    assert_eq!(fx.push("dead01").await.status, StatusCode::GONE);
    assert_eq!(
        fx.push("f1a001").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let deliveries: Vec<Delivery> = fx
        .client
        .get(fx.url("/sandbox/deliveries"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].token, TOKEN);
    assert_eq!(deliveries[0].headers["apns-topic"], TOPIC);

    let stats: Stats = fx
        .client
        .get(fx.url("/sandbox/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.apns_count("200"), 1);
    assert_eq!(stats.apns_count("410 Unregistered"), 1);
    assert_eq!(stats.apns_count("503 ServiceUnavailable"), 1);
    assert_eq!(stats.apns_token_generations, 1);
    assert_eq!(stats, fx.sandbox.stats());

    let a = answer(
        fx.client
            .post(fx.url("/sandbox/reset"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(fx.sandbox.deliveries().is_empty());
    let stats = fx.sandbox.stats();
    assert!(stats.apns.is_empty(), "{stats:?}");
    // Flaky counters start over.
    assert_eq!(
        fx.push("f1a001").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The same provider token counts as a generation again after a reset.
    assert_eq!(fx.sandbox.stats().apns_token_generations, 1);

    fx.sandbox.reset();
    assert!(fx.sandbox.stats().apns.is_empty());
    let a = answer(
        fx.client
            .get(fx.url("/sandbox/nothing"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tls_with_the_written_certificate_as_only_root() {
    let cert_dir = tempfile::tempdir().unwrap();
    let cert_file = cert_dir.path().join("sandbox-ca.pem");
    let fx = start_with(|c| {
        c.tls_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.cert_file = Some(cert_file.clone());
    })
    .await;
    let pem = std::fs::read(&cert_file).unwrap();
    assert_eq!(
        fx.sandbox.tls_cert_pem().unwrap().as_bytes(),
        pem.as_slice()
    );
    let cert = reqwest::Certificate::from_pem(&pem).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .unwrap();
    let base = fx.sandbox.tls_base_url().unwrap();
    let port = fx.sandbox.tls_addr().unwrap().port();
    let jwt = fx.jwt();
    for base in [base, format!("https://localhost:{port}")] {
        let resp = client
            .post(format!("{base}/3/device/{TOKEN}"))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", TOPIC)
            .body(r#"{"aps":{}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN h2");
        assert_eq!(resp.status(), StatusCode::OK);
    }

    // Without the certificate the handshake fails.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!(
                "{}/sandbox/stats",
                fx.sandbox.tls_base_url().unwrap()
            ))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn shutdown_joins_everything_with_open_connections() {
    let fx = start().await;
    assert_eq!(fx.push(TOKEN).await.status, StatusCode::OK);
    let addr = fx.sandbox.addr();
    // The client still holds its connection open.
    tokio::time::timeout(std::time::Duration::from_secs(10), fx.sandbox.shutdown())
        .await
        .expect("shutdown finishes");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
