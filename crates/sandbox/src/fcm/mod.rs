//! FCM HTTP v1 stand-in: `POST /v1/projects/{project}/messages:send`.
//!
//! Checks, in this order (errors in Google's format, `{"error": {"code",
//! "message", "status", "details": [FcmError / BadRequest]}}`):
//! 1. path and method (`404 NOT_FOUND`);
//! 2. `authorization: Bearer <token>` issued by this sandbox's `/token` and not
//!    expired (`401 UNAUTHENTICATED`); a token granted without the
//!    `firebase.messaging` or `cloud-platform` scope → `403 PERMISSION_DENIED`;
//! 3. the body, as Google's proto-JSON parser would: `{"message": {...},
//!    "validate_only": bool}`, no unknown field (snake or camel case) in the
//!    request, message, notification, android, apns or webpush objects; string
//!    fields are strings; `data` maps (message, android, webpush) and
//!    `apns.headers` hold only strings and no reserved key (`from`,
//!    `notification`, `message_type`, `google…`, `gcm…`); `android.priority` is
//!    `NORMAL` or `HIGH`; `android.ttl` is a proto Duration such as `"3600s"`;
//!    exactly one of `token`, `topic`, `condition`; message data ≤ 4096 bytes.
//!    Failures → `400 INVALID_ARGUMENT` naming the field. A malformed
//!    registration token → 400 INVALID_ARGUMENT "The registration token is not
//!    a valid FCM registration token";
//! 4. the project: another project's id → `403 SENDER_ID_MISMATCH`, which is
//!    what the real service says for tokens of another project (every token
//!    looks dead: the mass-invalidation scenario);
//! 5. scripted token prefixes (SPEC §7): `unregistered-` 404 UNREGISTERED,
//!    `invalid-` 400 INVALID_ARGUMENT (token), `mismatch-` 403
//!    SENDER_ID_MISMATCH, `quota-device-` 429 QUOTA_EXCEEDED for one device's
//!    message rate (message "Device message rate exceeded.", a
//!    `google.rpc.QuotaFailure` violation naming the device, no
//!    `Retry-After`; matched before `quota-`), `quota-` 429 QUOTA_EXCEEDED
//!    (the project's quota) + `Retry-After`, `unavailable-` 503 UNAVAILABLE,
//!    `flaky-` 503 twice per token then accepted;
//! 6. random faults, then 200 `{"name": "projects/{p}/messages/{id}"}`
//!    (`validate_only` answers `…/messages/fake_message_id` and records nothing).
//!
//! One concern per file: [`failure`] (the answers and their JSON),
//! [`checks`] (the body's shape, step 3); this file holds the service and the
//! handler that runs the steps in the order above.

mod checks;
mod failure;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{AUTHORIZATION, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use self::checks::{Target, validate_request};
pub(crate) use self::failure::LABELS;
use self::failure::{Failure, Rejection, invalid};
use crate::faults::{Faults, InjectedFault};
use crate::http_util::{self, Body, BodyError};
use crate::oauth::{Access, OAuth};
use crate::recorder::{Platform, RawDelivery, Recorder};

/// Largest request body (Google's front end refuses more).
const BODY_LIMIT: usize = 1024 * 1024;

/// The FCM service: the project it serves and a message-id counter.
pub(crate) struct Fcm {
    project_id: String,
    id_prefix: u64,
    id_counter: AtomicU64,
}

impl Fcm {
    pub(crate) fn new(project_id: String) -> Self {
        Self {
            project_id,
            id_prefix: rand::random(),
            id_counter: AtomicU64::new(0),
        }
    }

    fn message_name(&self, project: &str) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "projects/{project}/messages/0:{}%{:016x}",
            http_util::unix_now_ms(),
            self.id_prefix ^ n
        )
    }
}

/// Answers one FCM request.
pub(crate) async fn handle(
    fcm: &Fcm,
    oauth: &OAuth,
    recorder: &Recorder,
    faults: &Faults,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Some(project) = project_of(parts.uri.path()) else {
        return error_response(recorder, Failure::NotFound.into(), faults);
    };
    if parts.method != Method::POST {
        return error_response(recorder, Failure::NotFound.into(), faults);
    }
    let access = match parts.headers.get(AUTHORIZATION) {
        None => {
            return error_response(
                recorder,
                Rejection {
                    failure: Failure::Unauthenticated,
                    message: Cow::Borrowed(
                        "Request is missing required authentication credential. Expected OAuth 2 \
                         access token, login cookie or other valid authentication credential. See \
                         https://developers.google.com/identity/sign-in/web/devconsole-project.",
                    ),
                    field: None,
                },
                faults,
            );
        }
        Some(v) => http_util::bearer(v).map_or(Access::Invalid, |t| oauth.access(t)),
    };
    match access {
        Access::Granted => {}
        Access::InsufficientScope => {
            return error_response(recorder, Failure::PermissionDenied.into(), faults);
        }
        Access::Invalid => {
            return error_response(recorder, Failure::Unauthenticated.into(), faults);
        }
    }
    let body = match http_util::read_body(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let msg = format!("Request payload size exceeds the limit: {BODY_LIMIT} bytes.");
            return error_response(recorder, invalid("", msg), faults);
        }
        Err(BodyError::Broken) => {
            return error_response(recorder, Failure::InvalidArgument.into(), faults);
        }
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("Invalid JSON payload received. {e}");
            return error_response(recorder, invalid("", msg), faults);
        }
    };
    let (target, validate_only) = match validate_request(&parsed) {
        Ok(t) => t,
        Err(rejection) => return error_response(recorder, rejection, faults),
    };
    if project != fcm.project_id {
        return error_response(recorder, Failure::SenderIdMismatch.into(), faults);
    }
    if let Target::Token(token) = target
        && let Some(failure) = scripted(recorder, token)
    {
        return error_response(recorder, failure.into(), faults);
    }
    match faults.roll() {
        Some(InjectedFault::Internal) => {
            return error_response(recorder, Failure::Internal.into(), faults);
        }
        Some(InjectedFault::Unavailable) => {
            return error_response(recorder, Failure::Unavailable.into(), faults);
        }
        Some(InjectedFault::TooManyRequests) => {
            return error_response(recorder, Failure::QuotaExceeded.into(), faults);
        }
        None => {}
    }

    recorder.fcm.accepted();
    let name = if validate_only {
        format!("projects/{project}/messages/fake_message_id")
    } else {
        let name = fcm.message_name(project);
        let token: Box<str> = match target {
            Target::Token(t) => t.into(),
            Target::Topic(t) => format!("topic:{t}").into(),
            Target::Condition(c) => format!("condition:{c}").into(),
        };
        recorder.record(RawDelivery {
            platform: Platform::Fcm,
            token,
            id: HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("?")),
            headers: Default::default(),
            body,
            received_at_ms: http_util::unix_now_ms(),
        });
        name
    };
    http_util::json_value(StatusCode::OK, &json!({ "name": name }))
}

fn error_response(recorder: &Recorder, rejection: Rejection, faults: &Faults) -> Response<Body> {
    let failure = rejection.failure;
    recorder.fcm.refused(failure.index());
    let mut details = Vec::new();
    if let Some(code) = failure.error_code() {
        details.push(json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }));
    }
    if let Some((subject, description)) = failure.quota_violation() {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{ "subject": subject, "description": description }],
        }));
    }
    if let Some(field) = rejection.field.filter(|f| !f.is_empty()) {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": field, "description": rejection.message }],
        }));
    }
    let mut error = json!({
        "code": failure.status().as_u16(),
        "message": rejection.message,
        "status": failure.rpc_status(),
    });
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    let mut resp = http_util::json_value(failure.status(), &json!({ "error": error }));
    if failure == Failure::QuotaExceeded {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(faults.retry_after_secs));
    }
    if failure == Failure::Unauthenticated {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
        );
    }
    resp
}

/// The project id of `/v1/projects/{project}/messages:send`.
fn project_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/projects/")?;
    let project = rest
        .strip_suffix("/messages:send")
        .or_else(|| rest.strip_suffix("/messages%3Asend"))
        .or_else(|| rest.strip_suffix("/messages%3asend"))?;
    (!project.is_empty() && !project.contains('/')).then_some(project)
}

/// The scripted answer for a token prefix (SPEC §7), if any.
fn scripted(recorder: &Recorder, token: &str) -> Option<Failure> {
    if token.starts_with("unregistered-") {
        Some(Failure::Unregistered)
    } else if token.starts_with("invalid-") {
        Some(Failure::InvalidToken)
    } else if token.starts_with("mismatch-") {
        Some(Failure::SenderIdMismatch)
    } else if token.starts_with("quota-device-") {
        // Before `quota-`, which it also starts with.
        Some(Failure::DeviceQuotaExceeded)
    } else if token.starts_with("quota-") {
        Some(Failure::QuotaExceeded)
    } else if token.starts_with("unavailable-") {
        Some(Failure::Unavailable)
    } else if token.starts_with("flaky-") {
        recorder
            .flaky_fails(Platform::Fcm, token)
            .then_some(Failure::Unavailable)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(project_of("/v1/projects/p-1/messages:send"), Some("p-1"));
        assert_eq!(project_of("/v1/projects/p-1/messages%3Asend"), Some("p-1"));
        assert_eq!(project_of("/v1/projects//messages:send"), None);
        assert_eq!(project_of("/v1/projects/a/b/messages:send"), None);
    }
}
