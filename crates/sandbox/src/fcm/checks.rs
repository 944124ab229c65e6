//! The shape checks of a `messages:send` body, as Google's proto-JSON
//! parser makes them: `{"message": {...}, "validate_only": bool}`, no
//! unknown field (snake or camel case) in the request, message,
//! notification, android, apns or webpush objects; string fields are
//! strings; `data` maps (message, android, webpush) and `apns.headers` hold
//! only strings and no reserved key; `android.priority` and `android.ttl`
//! are well-formed; exactly one of `token`, `topic`, `condition`; message
//! data within 4096 bytes. Each refusal names the offending field.

use serde_json::{Map, Value};

use super::failure::{Failure, Rejection, invalid};

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

/// Where a message goes.
pub(super) enum Target<'a> {
    Token(&'a str),
    Topic(&'a str),
    Condition(&'a str),
}

/// Checks a `messages:send` body; returns the target and `validate_only`.
pub(super) fn validate_request(body: &Value) -> Result<(Target<'_>, bool), Rejection> {
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
    use serde_json::json;

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
}
