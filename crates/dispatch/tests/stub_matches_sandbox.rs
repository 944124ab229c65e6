//! The `stub:` dispatcher and the sandbox play the same token script.
//!
//! Pipeline tests run on [`StubDispatcher`] (no I/O); the end-to-end tests
//! and benchmarks run the real clients against the sandbox. Both follow the
//! token-prefix table of SPEC §7, and this test holds them to it: for every
//! scripted prefix of each platform (and one unscripted token), the stub's
//! [`Outcome`] and the real client's [`Outcome`] against the sandbox must
//! classify the same, and as the table says: same variant, same [`Reason`],
//! HTTP status, provider reason and `Retry-After`, for quota answers whose
//! quota (project or device), and, for dead tokens, whether the provider
//! gave a timestamp. The flaky prefixes answer 503 twice per token, then
//! 200, on both.

use std::sync::Arc;
use std::time::Duration;

use push_dispatch_dispatch::apns::credentials::ProviderToken;
use push_dispatch_dispatch::apns::error::TOO_MANY_REQUESTS_DELAY;
use push_dispatch_dispatch::apns::{ApnsClient, ApnsSettings};
use push_dispatch_dispatch::fcm::credentials::{BearerCache, TokenSettings};
use push_dispatch_dispatch::fcm::{DEFAULT_QUOTA_WAIT, FcmClient, FcmSettings};
use push_dispatch_dispatch::stub::{QUOTA_RETRY_AFTER, StubDispatcher};
use push_dispatch_dispatch::{Dispatcher, Outcome, Push, QuotaScope, RejectReason, RetryCause};
use push_dispatch_proto::v1::{Notification, Platform, PushRequest, Reason};
use push_dispatch_sandbox::{Sandbox, SandboxConfig, devkeys};

const TOPIC: &str = "com.example.app";
const PROJECT: &str = "sandbox-project";

/// What an outcome says, with the parts that vary per run (the
/// provider's timestamp) reduced to whether they are there.
#[derive(Clone, Debug, PartialEq)]
enum Class {
    Delivered,
    TokenInvalid {
        reason: Reason,
        provider_reason: String,
        timestamp: bool,
    },
    Retryable {
        status: u16,
        provider_reason: String,
        after: Option<Duration>,
    },
    Quota {
        scope: QuotaScope,
        provider_reason: String,
        after: Option<Duration>,
    },
    /// Not in the script: kept whole so that a mismatch shows it.
    OtherRetryable(RetryCause, Option<Duration>),
    Rejected(RejectReason),
}

fn class(outcome: &Outcome) -> Class {
    match outcome {
        Outcome::Delivered => Class::Delivered,
        Outcome::TokenInvalid {
            reason,
            provider_reason,
            invalidated_at,
        } => Class::TokenInvalid {
            reason: *reason,
            provider_reason: provider_reason.clone(),
            timestamp: invalidated_at.is_some(),
        },
        Outcome::Retryable {
            after,
            cause:
                RetryCause::Status {
                    status,
                    provider_reason,
                },
        } => Class::Retryable {
            status: *status,
            provider_reason: provider_reason.clone(),
            after: *after,
        },
        Outcome::Retryable {
            after,
            cause:
                RetryCause::Quota {
                    scope,
                    provider_reason,
                },
        } => Class::Quota {
            scope: *scope,
            provider_reason: provider_reason.clone(),
            after: *after,
        },
        Outcome::Retryable { after, cause } => Class::OtherRetryable(cause.clone(), *after),
        Outcome::Rejected { reason } => Class::Rejected(reason.clone()),
    }
}

fn dead(reason: Reason, provider_reason: &str, timestamp: bool) -> Class {
    Class::TokenInvalid {
        reason,
        provider_reason: provider_reason.into(),
        timestamp,
    }
}

fn retry(status: u16, provider_reason: &str, after: Option<Duration>) -> Class {
    Class::Retryable {
        status,
        provider_reason: provider_reason.into(),
        after,
    }
}

/// One row of SPEC §7: a token prefix and the answers to successive sends
/// of one token with it.
struct Row {
    prefix: &'static str,
    answers: Vec<Class>,
}

fn apns_script() -> Vec<Row> {
    let unavailable = retry(503, "ServiceUnavailable", None);
    vec![
        Row {
            prefix: "dead",
            answers: vec![dead(Reason::Unregistered, "Unregistered", true)],
        },
        Row {
            prefix: "bad0",
            answers: vec![dead(Reason::BadDeviceToken, "BadDeviceToken", false)],
        },
        Row {
            prefix: "0429",
            answers: vec![retry(429, "TooManyRequests", Some(TOO_MANY_REQUESTS_DELAY))],
        },
        Row {
            prefix: "0500",
            answers: vec![retry(500, "InternalServerError", None)],
        },
        Row {
            prefix: "0503",
            answers: vec![unavailable.clone()],
        },
        Row {
            prefix: "f1a0",
            answers: vec![unavailable.clone(), unavailable, Class::Delivered],
        },
        Row {
            prefix: "a1b2",
            answers: vec![Class::Delivered],
        },
    ]
}

fn fcm_script() -> Vec<Row> {
    let unavailable = retry(503, "UNAVAILABLE", None);
    vec![
        Row {
            prefix: "unregistered-",
            answers: vec![dead(Reason::Unregistered, "UNREGISTERED", false)],
        },
        Row {
            prefix: "invalid-",
            answers: vec![dead(Reason::InvalidRegistration, "INVALID_ARGUMENT", false)],
        },
        Row {
            prefix: "mismatch-",
            answers: vec![dead(Reason::SenderIdMismatch, "SENDER_ID_MISMATCH", false)],
        },
        // Before `quota-`, which it also starts with: the stub and the
        // sandbox must both match the longer prefix first.
        Row {
            prefix: "quota-device-",
            answers: vec![Class::Quota {
                scope: QuotaScope::Device,
                provider_reason: "QUOTA_EXCEEDED".into(),
                // No Retry-After: `dispatch.quota_wait`.
                after: Some(DEFAULT_QUOTA_WAIT),
            }],
        },
        Row {
            prefix: "quota-",
            answers: vec![Class::Quota {
                scope: QuotaScope::Project,
                provider_reason: "QUOTA_EXCEEDED".into(),
                after: Some(QUOTA_RETRY_AFTER),
            }],
        },
        Row {
            prefix: "unavailable-",
            answers: vec![unavailable.clone()],
        },
        Row {
            prefix: "flaky-",
            answers: vec![unavailable.clone(), unavailable, Class::Delivered],
        },
        Row {
            prefix: "ok-",
            answers: vec![Class::Delivered],
        },
    ]
}

/// A device token with `prefix`: 64 hex digits for APNs, a short name for FCM.
fn token(platform: Platform, prefix: &str) -> String {
    match platform {
        Platform::Apns => format!("{prefix}{}", &"0123456789abcdef".repeat(4)[prefix.len()..]),
        _ => format!("{prefix}1"),
    }
}

/// Sends every row's token as many times as the row has answers, to the stub
/// and to the real client, and checks both against the row.
async fn same_script(platform: Platform, real: &dyn Dispatcher, script: Vec<Row>) {
    let stub = StubDispatcher::new(platform);
    let request = PushRequest {
        request_id: "script".into(),
        notification: Some(Notification {
            title: "Hello".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    for row in script {
        let token = token(platform, row.prefix);
        let push = Push {
            request: &request,
            token: &token,
            expires_at: None,
            give_up: None,
        };
        for (attempt, expected) in row.answers.iter().enumerate() {
            let from_stub = class(&stub.send(push).await);
            let from_sandbox = class(&real.send(push).await);
            assert_eq!(
                from_stub, from_sandbox,
                "{platform:?} `{}` send {}: the stub and the sandbox disagree",
                row.prefix, attempt
            );
            assert_eq!(
                &from_sandbox, expected,
                "{platform:?} `{}` send {}: not what SPEC §7 scripts",
                row.prefix, attempt
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stub_and_the_sandbox_answer_the_same_token_script() {
    let dir = tempfile::tempdir().expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let creds = devkeys::ensure(
        dir.path(),
        &format!("http://127.0.0.1:{port}/token"),
        PROJECT,
    )
    .expect("dev credentials");
    let mut config = SandboxConfig::local(creds.apns_config(TOPIC), creds.fcm_config(PROJECT));
    config.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    let sandbox = Sandbox::start(config).await.expect("sandbox");

    let apns = ApnsClient::new(
        ApnsSettings {
            endpoint: sandbox.base_url(),
            key_file: creds.apns_key_file.clone(),
            key_id: creds.key_id.clone(),
            team_id: creds.team_id.clone(),
            topic: TOPIC.into(),
            connections: 1,
            ca_file: None,
            request_timeout: Duration::from_secs(10),
        },
        Arc::new(
            ProviderToken::from_file(&creds.apns_key_file, &creds.key_id, &creds.team_id)
                .expect("apns key"),
        ),
    )
    .expect("apns client");
    let fcm = FcmClient::new(
        FcmSettings {
            endpoint: sandbox.base_url(),
            project_id: PROJECT.into(),
            credentials_file: Some(creds.service_account_file.clone()),
            ca_file: None,
            connections: 1,
            request_timeout: Duration::from_secs(10),
            quota_wait: DEFAULT_QUOTA_WAIT,
        },
        Arc::new(
            BearerCache::new(Some(&creds.service_account_file), &TokenSettings::default())
                .await
                .expect("fcm credentials"),
        ),
    )
    .expect("fcm client");

    same_script(Platform::Apns, &apns, apns_script()).await;
    same_script(Platform::Fcm, &fcm, fcm_script()).await;
    sandbox.shutdown().await;
}
