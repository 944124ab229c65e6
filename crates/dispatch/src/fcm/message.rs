//! Mapping a `PushRequest` to an FCM v1 `Message` for one token:
//! `notification`, string-only `data`, and the `android`, `apns` and
//! `webpush` blocks for what does not map across platforms.

use std::time::{SystemTime, UNIX_EPOCH};

use push_dispatch_proto::v1::{AndroidVisibility, Priority, PushRequest};
use serde_json::{Map, Value, json};

fn put(map: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.into(), Value::String(value.into()));
    }
}

/// The `{"message": …}` body for `token`.
pub fn build(request: &PushRequest, token: &str, expires_at: Option<SystemTime>) -> Value {
    let mut message = Map::new();
    message.insert("token".into(), Value::String(token.into()));

    let n = request.notification.clone().unwrap_or_default();
    let mut notification = Map::new();
    put(&mut notification, "title", &n.title);
    put(&mut notification, "body", &n.body);
    put(&mut notification, "image", &n.image);
    if !notification.is_empty() {
        message.insert("notification".into(), Value::Object(notification));
    }
    if !request.data.is_empty() {
        message.insert("data".into(), json!(request.data));
    }

    // Android.
    let fcm = request.fcm.clone().unwrap_or_default();
    let mut android = Map::new();
    match request.priority() {
        Priority::High => {
            android.insert("priority".into(), json!("HIGH"));
        }
        Priority::Normal => {
            android.insert("priority".into(), json!("NORMAL"));
        }
        Priority::Unspecified => {}
    }
    if let Some(ttl) = remaining_ttl(request, expires_at) {
        android.insert("ttl".into(), Value::String(format!("{ttl}s")));
    }
    put(&mut android, "collapse_key", &request.collapse_key);
    put(
        &mut android,
        "restricted_package_name",
        &fcm.restricted_package_name,
    );
    if fcm.direct_boot_ok {
        android.insert("direct_boot_ok".into(), json!(true));
    }
    let mut an = Map::new();
    put(&mut an, "channel_id", &fcm.android_channel_id);
    put(&mut an, "tag", &fcm.android_tag);
    put(&mut an, "color", &fcm.android_color);
    put(&mut an, "icon", &fcm.android_icon);
    put(&mut an, "sound", &n.sound);
    put(&mut an, "click_action", &n.click_action);
    put(&mut an, "title_loc_key", &n.title_loc_key);
    put(&mut an, "body_loc_key", &n.body_loc_key);
    if !n.title_loc_args.is_empty() {
        an.insert("title_loc_args".into(), json!(n.title_loc_args));
    }
    if !n.body_loc_args.is_empty() {
        an.insert("body_loc_args".into(), json!(n.body_loc_args));
    }
    if let Some(badge) = n.badge {
        an.insert("notification_count".into(), json!(badge));
    }
    let visibility = match fcm.android_visibility() {
        AndroidVisibility::Unspecified => None,
        AndroidVisibility::Private => Some("PRIVATE"),
        AndroidVisibility::Public => Some("PUBLIC"),
        AndroidVisibility::Secret => Some("SECRET"),
    };
    if let Some(v) = visibility {
        an.insert("visibility".into(), json!(v));
    }
    if !an.is_empty() {
        android.insert("notification".into(), Value::Object(an));
    }
    if !android.is_empty() {
        message.insert("android".into(), Value::Object(android));
    }

    // APNs through FCM (iOS apps registered with Firebase).
    let mut headers = Map::new();
    match request.priority() {
        Priority::High => {
            headers.insert("apns-priority".into(), json!("10"));
        }
        Priority::Normal => {
            headers.insert("apns-priority".into(), json!("5"));
        }
        Priority::Unspecified => {}
    }
    put(&mut headers, "apns-collapse-id", &request.collapse_key);
    if let Some(at) = expires_at {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        headers.insert("apns-expiration".into(), Value::String(secs.to_string()));
    }
    let mut aps = Map::new();
    if let Some(badge) = n.badge {
        aps.insert("badge".into(), json!(badge));
    }
    put(&mut aps, "sound", &n.sound);
    put(&mut aps, "thread-id", &request.thread_id);
    put(&mut aps, "category", &request.category);
    put(&mut aps, "subtitle", &n.subtitle);
    if request.content_available {
        aps.insert("content-available".into(), json!(1));
    }
    if request.mutable_content {
        aps.insert("mutable-content".into(), json!(1));
    }
    let mut apns = Map::new();
    if !headers.is_empty() {
        apns.insert("headers".into(), Value::Object(headers));
    }
    if !aps.is_empty() {
        apns.insert("payload".into(), json!({ "aps": aps }));
    }
    if !apns.is_empty() {
        message.insert("apns".into(), Value::Object(apns));
    }

    if !fcm.webpush_link.is_empty() {
        message.insert(
            "webpush".into(),
            json!({ "fcm_options": { "link": fcm.webpush_link } }),
        );
    }
    if !fcm.analytics_label.is_empty() {
        message.insert(
            "fcm_options".into(),
            json!({ "analytics_label": fcm.analytics_label }),
        );
    }
    json!({ "message": message })
}

/// Whole seconds left before `expires_at`, or the request's ttl without one.
fn remaining_ttl(request: &PushRequest, expires_at: Option<SystemTime>) -> Option<u64> {
    let ttl = request.ttl.as_ref()?;
    match expires_at {
        Some(at) => Some(
            at.duration_since(SystemTime::now())
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
        None => Some(u64::try_from(ttl.seconds).unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use push_dispatch_proto::v1::{FcmOptions, Notification};

    #[test]
    fn maps_notification_data_and_android_options() {
        let mut r = PushRequest {
            notification: Some(Notification {
                title: "T".into(),
                body: "B".into(),
                image: "https://img".into(),
                badge: Some(2),
                ..Default::default()
            }),
            priority: Priority::High as i32,
            collapse_key: "c".into(),
            ttl: Some(push_dispatch_proto::pbjson_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            fcm: Some(FcmOptions {
                android_channel_id: "news".into(),
                analytics_label: "campaign".into(),
                webpush_link: "https://example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        r.data.insert("k".into(), "v".into());
        let m = &build(&r, "tok", None)["message"];
        assert_eq!(m["token"], "tok");
        assert_eq!(m["notification"]["title"], "T");
        assert_eq!(m["notification"]["image"], "https://img");
        assert_eq!(m["data"]["k"], "v");
        assert_eq!(m["android"]["priority"], "HIGH");
        assert_eq!(m["android"]["ttl"], "3600s");
        assert_eq!(m["android"]["collapse_key"], "c");
        assert_eq!(m["android"]["notification"]["channel_id"], "news");
        assert_eq!(m["android"]["notification"]["notification_count"], 2);
        assert_eq!(m["apns"]["headers"]["apns-priority"], "10");
        assert_eq!(m["apns"]["payload"]["aps"]["badge"], 2);
        assert_eq!(m["webpush"]["fcm_options"]["link"], "https://example.com");
        assert_eq!(m["fcm_options"]["analytics_label"], "campaign");
    }

    #[test]
    fn minimal_message_has_only_the_token() {
        let m = build(&PushRequest::default(), "tok", None);
        assert_eq!(m, json!({"message": {"token": "tok"}}));
    }

    #[test]
    fn ttl_counts_down_from_the_expiry() {
        let r = PushRequest {
            ttl: Some(push_dispatch_proto::pbjson_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        };
        let at = SystemTime::now() + std::time::Duration::from_secs(100);
        let ttl = build(&r, "t", Some(at))["message"]["android"]["ttl"]
            .as_str()
            .expect("ttl")
            .to_string();
        let secs: u64 = ttl.trim_end_matches('s').parse().expect("secs");
        assert!((98..=100).contains(&secs), "{ttl}");
    }
}
