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
//!    SENDER_ID_MISMATCH, `quota-` 429 QUOTA_EXCEEDED + `Retry-After`,
//!    `unavailable-` 503 UNAVAILABLE, `flaky-` 503 twice per token then accepted;
//! 6. random faults, then 200 `{"name": "projects/{p}/messages/{id}"}`
//!    (`validate_only` answers `…/messages/fake_message_id` and records nothing).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{AUTHORIZATION, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::faults::{Faults, InjectedFault};
use crate::http_util::{self, Body, BodyError};
use crate::inspect::{Platform, RawDelivery};
use crate::oauth::Access;
use crate::router::State;

/// Largest request body (Google's front end refuses more).
const BODY_LIMIT: usize = 1024 * 1024;
/// Largest `message.data` (keys + values), as FCM's 4 KB payload limit.
const DATA_LIMIT: usize = 4096;
/// Longest registration token accepted as well-formed.
const TOKEN_MAX_LEN: usize = 4096;

const TOP_FIELDS: &[&str] = &["message", "validate_only", "validateOnly"];
const MESSAGE_FIELDS: &[&str] = &[
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "fcmOptions",
    "token",
    "topic",
    "condition",
];
const NOTIFICATION_FIELDS: &[&str] = &["title", "body", "image"];
const ANDROID_FIELDS: &[&str] = &[
    "collapse_key",
    "collapseKey",
    "priority",
    "ttl",
    "restricted_package_name",
    "restrictedPackageName",
    "data",
    "notification",
    "fcm_options",
    "fcmOptions",
    "direct_boot_ok",
    "directBootOk",
    "bandwidth_constrained_ok",
    "bandwidthConstrainedOk",
    "restricted_satellite_ok",
    "restrictedSatelliteOk",
];
const APNS_FIELDS: &[&str] = &[
    "headers",
    "payload",
    "fcm_options",
    "fcmOptions",
    "live_activity_token",
    "liveActivityToken",
];
const WEBPUSH_FIELDS: &[&str] = &[
    "headers",
    "data",
    "notification",
    "fcm_options",
    "fcmOptions",
];

/// Every non-200 outcome the FCM stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Unauthenticated,
    PermissionDenied,
    NotFound,
    InvalidArgument,
    InvalidToken,
    Unregistered,
    SenderIdMismatch,
    QuotaExceeded,
    Unavailable,
    Internal,
}

impl Failure {
    /// Every failure, in discriminant order (indexes the counters).
    pub(crate) const ALL: &'static [Failure] = &[
        Failure::Unauthenticated,
        Failure::PermissionDenied,
        Failure::NotFound,
        Failure::InvalidArgument,
        Failure::InvalidToken,
        Failure::Unregistered,
        Failure::SenderIdMismatch,
        Failure::QuotaExceeded,
        Failure::Unavailable,
        Failure::Internal,
    ];

    fn status(self) -> StatusCode {
        match self {
            Failure::Unauthenticated => StatusCode::UNAUTHORIZED,
            Failure::PermissionDenied | Failure::SenderIdMismatch => StatusCode::FORBIDDEN,
            Failure::NotFound | Failure::Unregistered => StatusCode::NOT_FOUND,
            Failure::InvalidArgument | Failure::InvalidToken => StatusCode::BAD_REQUEST,
            Failure::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            Failure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The google.rpc status name.
    fn rpc_status(self) -> &'static str {
        match self {
            Failure::Unauthenticated => "UNAUTHENTICATED",
            Failure::PermissionDenied | Failure::SenderIdMismatch => "PERMISSION_DENIED",
            Failure::NotFound | Failure::Unregistered => "NOT_FOUND",
            Failure::InvalidArgument | Failure::InvalidToken => "INVALID_ARGUMENT",
            Failure::QuotaExceeded => "RESOURCE_EXHAUSTED",
            Failure::Unavailable => "UNAVAILABLE",
            Failure::Internal => "INTERNAL",
        }
    }

    /// The FcmError `errorCode`, for failures FCM itself reports.
    fn error_code(self) -> Option<&'static str> {
        match self {
            Failure::Unauthenticated | Failure::PermissionDenied | Failure::NotFound => None,
            Failure::InvalidArgument | Failure::InvalidToken => Some("INVALID_ARGUMENT"),
            Failure::Unregistered => Some("UNREGISTERED"),
            Failure::SenderIdMismatch => Some("SENDER_ID_MISMATCH"),
            Failure::QuotaExceeded => Some("QUOTA_EXCEEDED"),
            Failure::Unavailable => Some("UNAVAILABLE"),
            Failure::Internal => Some("INTERNAL"),
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            Failure::Unauthenticated => {
                "Request had invalid authentication credentials. Expected OAuth 2 access token, \
                 login cookie or other valid authentication credential. See \
                 https://developers.google.com/identity/sign-in/web/devconsole-project."
            }
            Failure::PermissionDenied => "Request had insufficient authentication scopes.",
            Failure::NotFound => "Method not found.",
            Failure::InvalidArgument => "Request contains an invalid argument.",
            Failure::InvalidToken => "The registration token is not a valid FCM registration token",
            Failure::Unregistered => "Requested entity was not found.",
            Failure::SenderIdMismatch => "SenderId mismatch",
            Failure::QuotaExceeded => "Quota exceeded for sending messages.",
            Failure::Unavailable => "The service is currently unavailable.",
            Failure::Internal => "Internal error encountered.",
        }
    }

    /// `"<status> <errorCode or status>"`, the stats label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Failure::Unauthenticated => "401 UNAUTHENTICATED",
            Failure::PermissionDenied => "403 PERMISSION_DENIED",
            Failure::NotFound => "404 NOT_FOUND",
            Failure::InvalidArgument => "400 INVALID_ARGUMENT",
            Failure::InvalidToken => "400 INVALID_ARGUMENT (token)",
            Failure::Unregistered => "404 UNREGISTERED",
            Failure::SenderIdMismatch => "403 SENDER_ID_MISMATCH",
            Failure::QuotaExceeded => "429 QUOTA_EXCEEDED",
            Failure::Unavailable => "503 UNAVAILABLE",
            Failure::Internal => "500 INTERNAL",
        }
    }
}

/// A failure with its message and, for payload errors, the offending field.
#[derive(Debug)]
struct Rejection {
    failure: Failure,
    message: Cow<'static, str>,
    field: Option<String>,
}

impl From<Failure> for Rejection {
    fn from(failure: Failure) -> Self {
        Rejection {
            failure,
            message: Cow::Borrowed(failure.default_message()),
            field: None,
        }
    }
}

fn invalid(field: impl Into<String>, message: String) -> Rejection {
    Rejection {
        failure: Failure::InvalidArgument,
        message: Cow::Owned(message),
        field: Some(field.into()),
    }
}

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

/// Where a message goes.
enum Target<'a> {
    Token(&'a str),
    Topic(&'a str),
    Condition(&'a str),
}

/// Answers one FCM request.
pub(crate) async fn handle(
    state: &State,
    faults: &Faults,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Some(project) = project_of(parts.uri.path()) else {
        return error_response(state, Failure::NotFound.into(), faults);
    };
    if parts.method != Method::POST {
        return error_response(state, Failure::NotFound.into(), faults);
    }
    let access = match parts.headers.get(AUTHORIZATION) {
        None => {
            return error_response(
                state,
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
        Some(v) => http_util::bearer(v).map_or(Access::Invalid, |t| state.oauth.access(t)),
    };
    match access {
        Access::Granted => {}
        Access::InsufficientScope => {
            return error_response(state, Failure::PermissionDenied.into(), faults);
        }
        Access::Invalid => return error_response(state, Failure::Unauthenticated.into(), faults),
    }
    let body = match http_util::read_body(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let msg = format!("Request payload size exceeds the limit: {BODY_LIMIT} bytes.");
            return error_response(state, invalid("", msg), faults);
        }
        Err(BodyError::Broken) => {
            return error_response(state, Failure::InvalidArgument.into(), faults);
        }
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("Invalid JSON payload received. {e}");
            return error_response(state, invalid("", msg), faults);
        }
    };
    let (target, validate_only) = match validate_request(&parsed) {
        Ok(t) => t,
        Err(rejection) => return error_response(state, rejection, faults),
    };
    if project != state.fcm.project_id {
        return error_response(state, Failure::SenderIdMismatch.into(), faults);
    }
    if let Target::Token(token) = target
        && let Some(failure) = scripted(state, token)
    {
        return error_response(state, failure.into(), faults);
    }
    match faults.roll() {
        Some(InjectedFault::Internal) => {
            return error_response(state, Failure::Internal.into(), faults);
        }
        Some(InjectedFault::Unavailable) => {
            return error_response(state, Failure::Unavailable.into(), faults);
        }
        Some(InjectedFault::TooManyRequests) => {
            return error_response(state, Failure::QuotaExceeded.into(), faults);
        }
        None => {}
    }

    state.recorder.fcm_accepted();
    let name = if validate_only {
        format!("projects/{project}/messages/fake_message_id")
    } else {
        let name = state.fcm.message_name(project);
        let token: Box<str> = match target {
            Target::Token(t) => t.into(),
            Target::Topic(t) => format!("topic:{t}").into(),
            Target::Condition(c) => format!("condition:{c}").into(),
        };
        state.recorder.record(RawDelivery {
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

fn error_response(state: &State, rejection: Rejection, faults: &Faults) -> Response<Body> {
    let failure = rejection.failure;
    state.recorder.fcm_rejected(failure);
    let mut details = Vec::new();
    if let Some(code) = failure.error_code() {
        details.push(json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
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
fn scripted(state: &State, token: &str) -> Option<Failure> {
    if token.starts_with("unregistered-") {
        Some(Failure::Unregistered)
    } else if token.starts_with("invalid-") {
        Some(Failure::InvalidToken)
    } else if token.starts_with("mismatch-") {
        Some(Failure::SenderIdMismatch)
    } else if token.starts_with("quota-") {
        Some(Failure::QuotaExceeded)
    } else if token.starts_with("unavailable-") {
        Some(Failure::Unavailable)
    } else if token.starts_with("flaky-") {
        state
            .recorder
            .flaky_fails(Platform::Fcm, token)
            .then_some(Failure::Unavailable)
    } else {
        None
    }
}

/// Checks a `messages:send` body; returns the target and `validate_only`.
fn validate_request(body: &Value) -> Result<(Target<'_>, bool), Rejection> {
    let Value::Object(request) = body else {
        return Err(invalid(
            "",
            format!(
                "Invalid JSON payload received. Expected an object, got {}.",
                excerpt(body)
            ),
        ));
    };
    unknown_fields(request, TOP_FIELDS, "")?;
    let validate_only = match field(request, "validate_only") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(type_error("validate_only", "TYPE_BOOL", other)),
    };
    let message = match request.get("message") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => {
            return Err(invalid("message", "Message must not be empty.".into()));
        }
        Some(other) => {
            return Err(type_error(
                "message",
                "type.googleapis.com/google.firebase.fcm.v1.Message",
                other,
            ));
        }
    };
    unknown_fields(message, MESSAGE_FIELDS, "message")?;
    for name in ["name", "token", "topic", "condition"] {
        optional_string(message, name, "message")?;
    }
    let data_size = string_map(message.get("data"), "message.data", true)?;
    if data_size > DATA_LIMIT {
        return Err(invalid(
            "message.data",
            format!("Message data is too big: {data_size} bytes, the limit is {DATA_LIMIT}."),
        ));
    }
    if let Some(notification) = object(message, "notification", "message")? {
        unknown_fields(notification, NOTIFICATION_FIELDS, "message.notification")?;
        for name in NOTIFICATION_FIELDS {
            optional_string(notification, name, "message.notification")?;
        }
    }
    if let Some(android) = object(message, "android", "message")? {
        check_android(android)?;
    }
    if let Some(apns) = object(message, "apns", "message")? {
        unknown_fields(apns, APNS_FIELDS, "message.apns")?;
        string_map(field(apns, "headers"), "message.apns.headers", false)?;
        object(apns, "payload", "message.apns")?;
        object_field(apns, "fcm_options", "message.apns")?;
        optional_string_field(apns, "live_activity_token", "message.apns")?;
    }
    if let Some(webpush) = object(message, "webpush", "message")? {
        unknown_fields(webpush, WEBPUSH_FIELDS, "message.webpush")?;
        string_map(field(webpush, "headers"), "message.webpush.headers", false)?;
        string_map(webpush.get("data"), "message.webpush.data", true)?;
        object(webpush, "notification", "message.webpush")?;
        object_field(webpush, "fcm_options", "message.webpush")?;
    }
    object_field(message, "fcm_options", "message")?;
    target(message).map(|t| (t, validate_only))
}

fn check_android(android: &Map<String, Value>) -> Result<(), Rejection> {
    const PATH: &str = "message.android";
    unknown_fields(android, ANDROID_FIELDS, PATH)?;
    optional_string_field(android, "collapse_key", PATH)?;
    optional_string_field(android, "restricted_package_name", PATH)?;
    match android.get("priority") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if p == "NORMAL" || p == "HIGH" => {}
        Some(other) => {
            return Err(type_error(
                "message.android.priority",
                "type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority",
                other,
            ));
        }
    }
    match android.get("ttl") {
        None | Some(Value::Null) => {}
        Some(Value::String(ttl)) if is_duration(ttl) => {}
        Some(other) => {
            return Err(type_error(
                "message.android.ttl",
                "type.googleapis.com/google.protobuf.Duration",
                other,
            ));
        }
    }
    string_map(android.get("data"), "message.android.data", true)?;
    object(android, "notification", PATH)?;
    object_field(android, "fcm_options", PATH)?;
    for name in [
        "direct_boot_ok",
        "bandwidth_constrained_ok",
        "restricted_satellite_ok",
    ] {
        match field(android, name) {
            None | Some(Value::Null | Value::Bool(_)) => {}
            Some(other) => return Err(type_error(&format!("{PATH}.{name}"), "TYPE_BOOL", other)),
        }
    }
    Ok(())
}

/// Exactly one of token, topic, condition.
fn target(message: &Map<String, Value>) -> Result<Target<'_>, Rejection> {
    let set = |name: &str| {
        message
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (token, topic, condition) = (set("token"), set("topic"), set("condition"));
    let count = [token.is_some(), topic.is_some(), condition.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if count == 0 {
        return Err(invalid(
            "message",
            "Recipient of the message is not set.".into(),
        ));
    }
    if count > 1 {
        let second = if token.is_some() && topic.is_some() {
            "topic"
        } else {
            "condition"
        };
        return Err(invalid(
            "message",
            format!(
                "Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set '{second}'"
            ),
        ));
    }
    if let Some(token) = token {
        if token.len() > TOKEN_MAX_LEN
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
        {
            return Err(Failure::InvalidToken.into());
        }
        return Ok(Target::Token(token));
    }
    if let Some(topic) = topic {
        let name = topic.strip_prefix("/topics/").unwrap_or(topic);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%'))
        {
            return Err(invalid(
                "message.topic",
                format!("Invalid value at 'message.topic' (TYPE_STRING), \"{topic}\""),
            ));
        }
        return Ok(Target::Topic(name));
    }
    Ok(Target::Condition(condition.unwrap_or_default()))
}

/// A field by its proto name or its lowerCamel JSON name.
fn field<'a>(obj: &'a Map<String, Value>, snake: &str) -> Option<&'a Value> {
    obj.get(snake).or_else(|| obj.get(&camel(snake)))
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn unknown_fields(obj: &Map<String, Value>, known: &[&str], path: &str) -> Result<(), Rejection> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) if path.is_empty() => Err(invalid(
            "",
            format!("Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."),
        )),
        Some(k) => Err(invalid(
            path,
            format!(
                "Invalid JSON payload received. Unknown name \"{k}\" at '{path}': Cannot find field."
            ),
        )),
    }
}

fn excerpt(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 64 {
        let mut cut = 64;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn type_error(path: &str, ty: &str, value: &Value) -> Rejection {
    invalid(
        path,
        format!("Invalid value at '{path}' ({ty}), {}", excerpt(value)),
    )
}

fn optional_string(obj: &Map<String, Value>, name: &str, path: &str) -> Result<(), Rejection> {
    match obj.get(name) {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(other) => Err(type_error(&format!("{path}.{name}"), "TYPE_STRING", other)),
    }
}

fn optional_string_field(
    obj: &Map<String, Value>,
    snake: &str,
    path: &str,
) -> Result<(), Rejection> {
    match field(obj, snake) {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(other) => Err(type_error(&format!("{path}.{snake}"), "TYPE_STRING", other)),
    }
}

/// An optional object member (null counts as absent).
fn object<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, Rejection> {
    object_value(obj.get(name), &format!("{path}.{name}"))
}

fn object_field<'a>(
    obj: &'a Map<String, Value>,
    snake: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, Rejection> {
    object_value(field(obj, snake), &format!("{path}.{snake}"))
}

fn object_value<'a>(
    value: Option<&'a Value>,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(type_error(path, "TYPE_MESSAGE", other)),
    }
}

/// A `map<string, string>`; returns the bytes of its keys and values.
fn string_map(value: Option<&Value>, path: &str, data: bool) -> Result<usize, Rejection> {
    let map = match value {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(type_error(path, "map<string, string>", other)),
    };
    let mut size = 0;
    for (i, (key, value)) in map.iter().enumerate() {
        let Value::String(s) = value else {
            return Err(type_error(
                &format!("{path}[{i}].value"),
                "TYPE_STRING",
                value,
            ));
        };
        if data && is_reserved_data_key(key) {
            return Err(invalid(
                format!("{path}[{i}].key"),
                format!("Invalid data payload key: {key}"),
            ));
        }
        size += key.len() + s.len();
    }
    Ok(size)
}

fn is_reserved_data_key(key: &str) -> bool {
    matches!(key, "from" | "notification" | "message_type")
        || key.starts_with("google")
        || key.starts_with("gcm")
}

/// A proto Duration in JSON: seconds with up to 9 fractional digits, then `s`.
fn is_duration(s: &str) -> bool {
    let Some(number) = s.strip_suffix('s') else {
        return false;
    };
    let (whole, frac) = match number.split_once('.') {
        Some((_, "")) => return false,
        Some(parts) => parts,
        None => (number, ""),
    };
    !whole.is_empty()
        && whole.len() <= 12
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 9
        && frac.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: Value) -> Result<bool, String> {
        validate_request(&body)
            .map(|(_, v)| v)
            .map_err(|r| r.message.into_owned())
    }

    #[test]
    fn accepts_a_full_token_message() {
        let ok = check(json!({
            "message": {
                "token": "abc:DEF-ghi_123",
                "notification": {"title": "t", "body": "b"},
                "data": {"k": "v"},
                "android": {"priority": "HIGH", "ttl": "3600s", "collapseKey": "c",
                            "notification": {"channel_id": "x"}},
                "apns": {"headers": {"apns-priority": "10"}, "payload": {"aps": {}}},
            },
            "validate_only": true,
        }));
        assert_eq!(ok, Ok(true));
    }

    #[test]
    fn names_the_offending_field() {
        let err = check(json!({"message": {"token": "t", "data": {"k": 1}}})).unwrap_err();
        assert!(err.contains("message.data[0].value"), "{err}");
        let err = check(json!({"message": {"token": "t", "android": {"priority": "URGENT"}}}))
            .unwrap_err();
        assert!(err.contains("message.android.priority"), "{err}");
        let err = check(json!({"message": {"token": "t", "android": {"ttl": "1h"}}})).unwrap_err();
        assert!(err.contains("message.android.ttl"), "{err}");
        let err = check(json!({"message": {"token": "t", "tokne": "x"}})).unwrap_err();
        assert!(err.contains("Unknown name \"tokne\" at 'message'"), "{err}");
        let err = check(json!({"message": {"token": "t", "topic": "x"}})).unwrap_err();
        assert!(err.contains("oneof"), "{err}");
        let err = check(json!({"message": {}})).unwrap_err();
        assert!(err.contains("Recipient"), "{err}");
        let err = check(json!({"message": {"token": "t", "data": {"from": "x"}}})).unwrap_err();
        assert!(err.contains("from"), "{err}");
        let err = check(json!({"message": {"token": "bad token!"}})).unwrap_err();
        assert_eq!(
            err,
            "The registration token is not a valid FCM registration token"
        );
    }

    #[test]
    fn durations_follow_proto_json() {
        assert!(is_duration("3600s"));
        assert!(is_duration("1.5s"));
        assert!(!is_duration("1h"));
        assert!(!is_duration("s"));
        assert!(!is_duration("1.s"));
        assert!(!is_duration("-1s"));
    }

    #[test]
    fn paths() {
        assert_eq!(project_of("/v1/projects/p-1/messages:send"), Some("p-1"));
        assert_eq!(project_of("/v1/projects/p-1/messages%3Asend"), Some("p-1"));
        assert_eq!(project_of("/v1/projects//messages:send"), None);
        assert_eq!(project_of("/v1/projects/a/b/messages:send"), None);
    }
}
