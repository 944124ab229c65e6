//! Preflight: what `check-config` proves before a deploy.
//!
//! Offline, [`check_credentials`] loads every app's credentials as `run`
//! would (each APNs key signs a provider token, each FCM service-account
//! file parses), without a network call.
//!
//! `check-config --online`: one push per app and platform to a device token
//! that cannot exist, through the real clients, to prove what only the
//! provider can tell: that the endpoint is reachable over HTTP/2, that it
//! takes our credentials (APNs provider token, FCM OAuth bearer), and that
//! it answers for this topic or project.
//!
//! The token is well-formed but unassigned, so Apple answers
//! `BadDeviceToken` and Firebase `INVALID_ARGUMENT` (not a valid
//! registration token) once authentication passed: nothing is delivered,
//! and that answer is the success. A refusal of the credentials, topic or
//! project, or no answer, is a failure that names the config key.

use std::time::Duration;

use push_dispatch_dispatch::{Dispatcher, Outcome, Push, QuotaScope, RejectReason, RetryCause};
use push_dispatch_proto::v1::{Notification, Platform, PushRequest, Reason};

use push_dispatch_config::Config;
use push_dispatch_dispatch::stub::is_stub;

use crate::provider::App;

/// The APNs device token of the probe: hex of the right length that no
/// device has (the sandbox scripts `bad0` as `BadDeviceToken`, as Apple
/// answers an unassigned token).
pub const APNS_PROBE_TOKEN: &str =
    "bad0000000000000000000000000000000000000000000000000000000000000";
/// The FCM registration token of the probe (no valid FCM token looks like this).
pub const FCM_PROBE_TOKEN: &str = "invalid-push-dispatch-check-config";
/// Longest wait for one probe's answer (connection, credentials, request).
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// What one probe showed.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeVerdict {
    /// The provider took our credentials and judged the (fake) device token.
    Authenticated {
        /// Its answer, e.g. `400 BadDeviceToken`.
        answer: String,
    },
    /// The provider accepted the push: a stand-in, since no real device has
    /// the probe's token.
    Accepted,
    /// The provider refused the credentials, topic or project.
    Refused {
        /// Its answer and what to check.
        detail: String,
    },
    /// No answer, or a transient one (5xx, 429): the network or the provider.
    Unreachable {
        /// What happened.
        detail: String,
    },
}

impl ProbeVerdict {
    /// Whether the config works against this provider.
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            ProbeVerdict::Authenticated { .. } | ProbeVerdict::Accepted
        )
    }
}

/// One app and platform's probe result.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// `apps[i].apns` or `apps[i].fcm`.
    pub key: String,
    /// What it showed.
    pub verdict: ProbeVerdict,
}

impl Probe {
    /// What it showed, in words, without the key.
    pub fn detail(&self) -> String {
        match &self.verdict {
            ProbeVerdict::Authenticated { answer } => format!(
                "reachable, credentials accepted (a fake device token got {answer}, as it should)"
            ),
            ProbeVerdict::Accepted => "reachable, push accepted (a stand-in: a real provider refuses the probe's fake token)".to_string(),
            ProbeVerdict::Refused { detail } | ProbeVerdict::Unreachable { detail } => detail.clone(),
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.detail())
    }
}

/// What [`check_credentials`] verified of one app's platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialCheck {
    /// The APNs key loaded and signed an ES256 provider token.
    ApnsKeySigns {
        /// `apps[i].apns`.
        key: String,
        /// The key id the token carries.
        key_id: String,
    },
    /// The FCM service-account file loaded (JSON and private key).
    ServiceAccountLoads {
        /// `apps[i].fcm`.
        key: String,
    },
    /// FCM uses Application Default Credentials, resolved only at run time
    /// (they need the metadata server or a gcloud login).
    ApplicationDefault {
        /// `apps[i].fcm`.
        key: String,
    },
    /// An in-process `stub:` endpoint: no credentials are used.
    Stub {
        /// `apps[i].apns` or `apps[i].fcm`.
        key: String,
    },
}

impl std::fmt::Display for CredentialCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialCheck::ApnsKeySigns { key, key_id } => {
                write!(
                    f,
                    "{key}: the key signs an ES256 provider token (kid {key_id})"
                )
            }
            CredentialCheck::ServiceAccountLoads { key } => {
                write!(f, "{key}: the service-account key loads")
            }
            CredentialCheck::ApplicationDefault { key } => write!(
                f,
                "{key}: Application Default Credentials, resolved at run time (not checked here)"
            ),
            CredentialCheck::Stub { key } => write!(f, "{key}: stub endpoint, no credentials"),
        }
    }
}

/// Loads every app's credentials as `run` would, without a network call:
/// each APNs key signs a provider token, each FCM service-account file is
/// parsed with its private key. Returns what was verified, or the problems,
/// each naming its config key. Key material never appears in either.
pub fn check_credentials(
    config: &Config,
) -> Result<Vec<CredentialCheck>, Vec<push_dispatch_config::ConfigIssue>> {
    use push_dispatch_config::ConfigIssue;
    use push_dispatch_dispatch::apns::credentials::ProviderToken;
    use push_dispatch_dispatch::fcm::credentials::BearerCache;
    let mut checks = Vec::new();
    let mut issues = Vec::new();
    for (i, app) in config.apps.iter().enumerate() {
        if let Some(a) = &app.apns {
            let key = format!("apps[{i}].apns");
            if is_stub(&a.endpoint) {
                checks.push(CredentialCheck::Stub { key });
            } else {
                match ProviderToken::from_file(&a.key_file, &a.key_id, &a.team_id) {
                    Ok(_) => checks.push(CredentialCheck::ApnsKeySigns {
                        key,
                        key_id: a.key_id.clone(),
                    }),
                    Err(e) => issues.push(ConfigIssue {
                        key: format!("{key}.key_file"),
                        problem: format!(
                            "{e}; use the AuthKey_XXXXXXXXXX.p8 file downloaded from Apple"
                        ),
                    }),
                }
            }
        }
        if let Some(f) = &app.fcm {
            let key = format!("apps[{i}].fcm");
            if is_stub(&f.endpoint) {
                checks.push(CredentialCheck::Stub { key });
            } else if let Some(path) = &f.credentials_file {
                match BearerCache::check_file(path) {
                    Ok(()) => checks.push(CredentialCheck::ServiceAccountLoads { key }),
                    Err(e) => issues.push(ConfigIssue {
                        key: format!("{key}.credentials_file"),
                        problem: format!("{e}; download a service-account key from the Firebase console, or set null for Application Default Credentials"),
                    }),
                }
            } else {
                checks.push(CredentialCheck::ApplicationDefault { key });
            }
        }
    }
    if issues.is_empty() {
        Ok(checks)
    } else {
        Err(issues)
    }
}

/// Probes every app's APNs and FCM endpoint, one after the other.
pub async fn probe_providers(apps: &[App]) -> Vec<Probe> {
    let request = PushRequest {
        request_id: "push-dispatch-check-config".into(),
        notification: Some(Notification {
            title: "push-dispatch check-config".into(),
            ..Notification::default()
        }),
        ..PushRequest::default()
    };
    let mut probes = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        for (platform, label, token) in [
            (Platform::Apns, "apns", APNS_PROBE_TOKEN),
            (Platform::Fcm, "fcm", FCM_PROBE_TOKEN),
        ] {
            let Some(provider) = app.provider(platform) else {
                continue;
            };
            let verdict = probe(provider.dispatcher().as_ref(), &request, token).await;
            probes.push(Probe {
                key: format!("apps[{i}].{label}"),
                verdict,
            });
        }
    }
    probes
}

async fn probe(dispatcher: &dyn Dispatcher, request: &PushRequest, token: &str) -> ProbeVerdict {
    let push = Push {
        request,
        token,
        expires_at: None,
        give_up: None,
    };
    match tokio::time::timeout(PROBE_TIMEOUT, dispatcher.send(push)).await {
        Ok(outcome) => verdict(&outcome),
        Err(_) => ProbeVerdict::Unreachable {
            detail: format!(
                "no answer within {PROBE_TIMEOUT:?}; check the endpoint and the egress (DNS, firewall, Cloud NAT)"
            ),
        },
    }
}

/// Reads a provider's answer to the probe.
pub fn verdict(outcome: &Outcome) -> ProbeVerdict {
    match outcome {
        Outcome::Delivered => ProbeVerdict::Accepted,
        Outcome::TokenInvalid {
            reason: Reason::BadDeviceToken | Reason::InvalidRegistration | Reason::Unregistered,
            provider_reason,
            ..
        } => ProbeVerdict::Authenticated {
            answer: provider_reason.clone(),
        },
        Outcome::TokenInvalid {
            provider_reason, ..
        } => ProbeVerdict::Refused {
            detail: format!(
                "credentials accepted, but the provider answered {provider_reason}: for a token of no device, this points at the topic (bundle id) or the Firebase project"
            ),
        },
        Outcome::Rejected {
            reason:
                RejectReason::Provider {
                    status,
                    provider_reason,
                },
        } => ProbeVerdict::Refused {
            detail: format!(
                "refused: {status} {provider_reason}; {}",
                hint(provider_reason)
            ),
        },
        Outcome::Rejected { reason } => ProbeVerdict::Refused {
            detail: format!("refused before sending: {reason}"),
        },
        Outcome::Retryable { cause, .. } => ProbeVerdict::Unreachable {
            detail: match cause {
                RetryCause::Status {
                    status,
                    provider_reason,
                } => format!(
                    "the provider answered {status} {provider_reason}; try again, or check its status page"
                ),
                RetryCause::Quota {
                    scope: QuotaScope::Project,
                    provider_reason,
                } => format!(
                    "the provider answered 429 {provider_reason}: the project's sending quota is exhausted; wait for it to refill (dispatch.quota_wait), or ask for more quota"
                ),
                RetryCause::Credentials { problem } => format!(
                    "{problem}; check credentials_file (or the Workload Identity binding for Application Default Credentials), or key_file"
                ),
                other => format!(
                    "no usable answer ({other:?}); check the endpoint, ca_file and the egress"
                ),
            },
        },
    }
}

/// What to check for a refusal, by the provider's reason.
fn hint(provider_reason: &str) -> &'static str {
    let r = provider_reason;
    if r.contains("InvalidProviderToken") || r.contains("UnrelatedKeyIdInToken") {
        "check key_file, key_id and team_id (the key must belong to the team, key_id is its 10-character id)"
    } else if r.contains("ExpiredProviderToken") {
        "check this machine's clock: the provider token carries the time it was signed"
    } else if r.contains("Topic") || r.contains("BadCertificateEnvironment") {
        "check topic (the app's bundle id) and that the key may push to it"
    } else if r.contains("PERMISSION_DENIED") || r.contains("SENDER_ID_MISMATCH") {
        "check project_id and that the service account may send with Firebase Cloud Messaging (roles/firebasemessaging.admin or cloudmessaging.messages.create)"
    } else if r.contains("THIRD_PARTY_AUTH_ERROR") {
        "the APNs credential stored in the Firebase project is wrong: fix it in the Firebase console"
    } else if r.contains("UNAUTHENTICATED") {
        "check credentials_file (or the Workload Identity binding for Application Default Credentials)"
    } else if r.contains("NOT_FOUND") || r.contains("HTTP 404") {
        "check project_id and the endpoint: the provider does not know this path"
    } else {
        "see the provider's documentation for this reason"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answers_to_a_fake_token_are_read_as_the_provider_means_them() {
        let dead = |reason, name: &str| Outcome::TokenInvalid {
            reason,
            provider_reason: name.into(),
            invalidated_at: None,
        };
        assert!(verdict(&dead(Reason::BadDeviceToken, "BadDeviceToken")).is_ok());
        assert!(verdict(&dead(Reason::InvalidRegistration, "INVALID_ARGUMENT")).is_ok());
        assert!(verdict(&Outcome::Delivered).is_ok());
        let not_for_topic = verdict(&dead(
            Reason::DeviceTokenNotForTopic,
            "DeviceTokenNotForTopic",
        ));
        assert!(!not_for_topic.is_ok());
        let refused = verdict(&Outcome::Rejected {
            reason: RejectReason::Provider {
                status: 403,
                provider_reason: "InvalidProviderToken".into(),
            },
        });
        assert!(
            matches!(&refused, ProbeVerdict::Refused { detail } if detail.contains("key_id")),
            "{refused:?}"
        );
        let down = verdict(&Outcome::Retryable {
            after: None,
            cause: RetryCause::Unsent,
        });
        assert!(matches!(down, ProbeVerdict::Unreachable { .. }));
    }

    #[test]
    fn the_apns_probe_token_is_well_formed() {
        assert_eq!(APNS_PROBE_TOKEN.len(), 64);
        assert!(APNS_PROBE_TOKEN.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
