//! Building the FCM request for one push: [`build`] turns a [`Push`] (the
//! `PushRequest` and one registration token) into an [`FcmRequest`], the
//! `messages:send` body serialized once: a v1 `Message` with
//! `notification`, string-only `data`, and the `android`, `apns` and
//! `webpush` blocks for what does not map across platforms. [`message`]
//! gives the same body as a JSON tree, for inspection. APNs' `build`
//! (`crate::apns::request`) has the same role.

use std::time::{SystemTime, UNIX_EPOCH};

use push_dispatch_proto::v1::{AndroidVisibility, Priority, PushRequest};
use serde::Serialize;
use serde_json::Value;

use crate::{Push, RejectReason};

/// The request FCM will get for one device.
#[derive(Clone, Debug, PartialEq)]
pub struct FcmRequest {
    /// The JSON body of `messages:send` (shared, not copied, by every send of it).
    pub body: bytes::Bytes,
}

/// `{"message": …}`, the body of `messages:send`.
#[derive(Serialize)]
struct Envelope<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<Notification<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a std::collections::HashMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    android: Option<Android<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apns: Option<Apns<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webpush: Option<Webpush<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fcm_options: Option<FcmOptions<'a>>,
}

#[derive(Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    title: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    body: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    image: &'a str,
}

#[derive(Serialize)]
struct Android<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    collapse_key: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    restricted_package_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    direct_boot_ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<AndroidNotification<'a>>,
}

#[derive(Serialize)]
struct AndroidNotification<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    channel_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    tag: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    color: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    icon: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    sound: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    click_action: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    title_loc_key: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    body_loc_key: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    title_loc_args: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    body_loc_args: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    notification_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility: Option<&'static str>,
}

#[derive(Serialize)]
struct Apns<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<ApnsHeaders<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<ApnsPayload<'a>>,
}

#[derive(Serialize)]
struct ApnsHeaders<'a> {
    #[serde(rename = "apns-priority", skip_serializing_if = "Option::is_none")]
    priority: Option<&'static str>,
    #[serde(rename = "apns-collapse-id", skip_serializing_if = "str::is_empty")]
    collapse_id: &'a str,
    #[serde(rename = "apns-expiration", skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
}

#[derive(Serialize)]
struct ApnsPayload<'a> {
    aps: Aps<'a>,
}

#[derive(Serialize)]
struct Aps<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u32>,
    #[serde(skip_serializing_if = "str::is_empty")]
    sound: &'a str,
    #[serde(rename = "thread-id", skip_serializing_if = "str::is_empty")]
    thread_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    category: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    subtitle: &'a str,
    #[serde(rename = "content-available", skip_serializing_if = "Option::is_none")]
    content_available: Option<u8>,
    #[serde(rename = "mutable-content", skip_serializing_if = "Option::is_none")]
    mutable_content: Option<u8>,
}

#[derive(Serialize)]
struct Webpush<'a> {
    fcm_options: WebpushOptions<'a>,
}

#[derive(Serialize)]
struct WebpushOptions<'a> {
    link: &'a str,
}

#[derive(Serialize)]
struct FcmOptions<'a> {
    analytics_label: &'a str,
}

/// The FCM message for one token, borrowed from the request and serialized
/// straight to the body (no JSON tree). Empty blocks are left out.
fn envelope<'a>(
    request: &'a PushRequest,
    token: &'a str,
    expires_at: Option<SystemTime>,
) -> Envelope<'a> {
    let n = request.notification.as_ref();
    let fcm = request.fcm.as_ref();
    let text = |f: fn(&'a push_dispatch_proto::v1::Notification) -> &'a str| n.map_or("", f);
    let opt = |f: fn(&'a push_dispatch_proto::v1::FcmOptions) -> &'a str| fcm.map_or("", f);
    let badge = n.and_then(|n| n.badge);
    let (android_priority, apns_priority) = match request.priority() {
        Priority::High => (Some("HIGH"), Some("10")),
        Priority::Normal => (Some("NORMAL"), Some("5")),
        Priority::Unspecified => (None, None),
    };

    let notification = Notification {
        title: text(|n| &n.title),
        body: text(|n| &n.body),
        image: text(|n| &n.image),
    };
    let notification = (!(notification.title.is_empty()
        && notification.body.is_empty()
        && notification.image.is_empty()))
    .then_some(notification);

    let visibility = match fcm.map_or(AndroidVisibility::Unspecified, |f| f.android_visibility()) {
        AndroidVisibility::Unspecified => None,
        AndroidVisibility::Private => Some("PRIVATE"),
        AndroidVisibility::Public => Some("PUBLIC"),
        AndroidVisibility::Secret => Some("SECRET"),
    };
    let an = AndroidNotification {
        channel_id: opt(|f| &f.android_channel_id),
        tag: opt(|f| &f.android_tag),
        color: opt(|f| &f.android_color),
        icon: opt(|f| &f.android_icon),
        sound: text(|n| &n.sound),
        click_action: text(|n| &n.click_action),
        title_loc_key: text(|n| &n.title_loc_key),
        body_loc_key: text(|n| &n.body_loc_key),
        title_loc_args: n.map_or(&[], |n| &n.title_loc_args),
        body_loc_args: n.map_or(&[], |n| &n.body_loc_args),
        notification_count: badge,
        visibility,
    };
    let an_empty = an.channel_id.is_empty()
        && an.tag.is_empty()
        && an.color.is_empty()
        && an.icon.is_empty()
        && an.sound.is_empty()
        && an.click_action.is_empty()
        && an.title_loc_key.is_empty()
        && an.body_loc_key.is_empty()
        && an.title_loc_args.is_empty()
        && an.body_loc_args.is_empty()
        && an.notification_count.is_none()
        && an.visibility.is_none();
    let android = Android {
        priority: android_priority,
        ttl: remaining_ttl(request, expires_at).map(|ttl| format!("{ttl}s")),
        collapse_key: &request.collapse_key,
        restricted_package_name: opt(|f| &f.restricted_package_name),
        direct_boot_ok: fcm.is_some_and(|f| f.direct_boot_ok).then_some(true),
        notification: (!an_empty).then_some(an),
    };
    let android = (android.priority.is_some()
        || android.ttl.is_some()
        || !android.collapse_key.is_empty()
        || !android.restricted_package_name.is_empty()
        || android.direct_boot_ok.is_some()
        || android.notification.is_some())
    .then_some(android);

    // APNs through FCM (iOS apps registered with Firebase).
    let headers = ApnsHeaders {
        priority: apns_priority,
        collapse_id: &request.collapse_key,
        expiration: expires_at.map(|at| {
            at.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string()
        }),
    };
    let headers = (headers.priority.is_some()
        || !headers.collapse_id.is_empty()
        || headers.expiration.is_some())
    .then_some(headers);
    let aps = Aps {
        badge,
        sound: text(|n| &n.sound),
        thread_id: &request.thread_id,
        category: &request.category,
        subtitle: text(|n| &n.subtitle),
        content_available: request.content_available.then_some(1),
        mutable_content: request.mutable_content.then_some(1),
    };
    let payload = (aps.badge.is_some()
        || !aps.sound.is_empty()
        || !aps.thread_id.is_empty()
        || !aps.category.is_empty()
        || !aps.subtitle.is_empty()
        || aps.content_available.is_some()
        || aps.mutable_content.is_some())
    .then_some(ApnsPayload { aps });
    let apns = (headers.is_some() || payload.is_some()).then_some(Apns { headers, payload });

    let link = opt(|f| &f.webpush_link);
    let label = opt(|f| &f.analytics_label);
    Envelope {
        message: Message {
            token,
            notification,
            data: (!request.data.is_empty()).then_some(&request.data),
            android,
            apns,
            webpush: (!link.is_empty()).then_some(Webpush {
                fcm_options: WebpushOptions { link },
            }),
            fcm_options: (!label.is_empty()).then_some(FcmOptions {
                analytics_label: label,
            }),
        },
    }
}

/// Builds the FCM request of `push`.
pub fn build(push: Push<'_>) -> Result<FcmRequest, RejectReason> {
    match serde_json::to_vec(&envelope(push.request, push.token, push.expires_at)) {
        Ok(body) => Ok(FcmRequest {
            body: bytes::Bytes::from(body),
        }),
        Err(e) => Err(RejectReason::Unsendable {
            problem: format!("message not encodable: {e}"),
        }),
    }
}

/// The body of `messages:send` as a JSON tree (for inspection; [`build`]
/// serializes the same message without this tree).
pub fn message(request: &PushRequest, token: &str, expires_at: Option<SystemTime>) -> Value {
    serde_json::to_value(envelope(request, token, expires_at)).unwrap_or(Value::Null)
}

/// FCM's longest `android.ttl`: 28 days. A longer one is refused with
/// INVALID_ARGUMENT, which would dead-letter every FCM target of a request
/// that may wait longer (SPEC §9: clamp).
pub const MAX_TTL_SECONDS: u64 = 2_419_200;

/// Whole seconds left before `expires_at`, or the request's ttl without one,
/// at most [`MAX_TTL_SECONDS`].
fn remaining_ttl(request: &PushRequest, expires_at: Option<SystemTime>) -> Option<u64> {
    let ttl = request.ttl.as_ref()?;
    let secs = match expires_at {
        Some(at) => at
            .duration_since(SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0),
        None => u64::try_from(ttl.seconds).unwrap_or(0),
    };
    Some(secs.min(MAX_TTL_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use push_dispatch_proto::v1::{FcmOptions, Notification};
    use serde_json::json;

    #[test]
    fn every_field_has_its_fcm_name() {
        let mut r = PushRequest {
            notification: Some(Notification {
                title: "T".into(),
                subtitle: "S".into(),
                body: "B".into(),
                image: "https://img".into(),
                sound: "ping".into(),
                click_action: "OPEN".into(),
                title_loc_key: "TK".into(),
                title_loc_args: vec!["ta".into()],
                body_loc_key: "BK".into(),
                body_loc_args: vec!["ba".into()],
                badge: Some(4),
            }),
            priority: Priority::Normal as i32,
            collapse_key: "c".into(),
            ttl: Some(push_dispatch_proto::pbjson_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            thread_id: "th".into(),
            category: "CAT".into(),
            content_available: true,
            mutable_content: true,
            fcm: Some(FcmOptions {
                android_channel_id: "ch".into(),
                android_tag: "tag".into(),
                android_color: "#ff0000".into(),
                android_icon: "ic".into(),
                android_visibility: AndroidVisibility::Secret as i32,
                restricted_package_name: "com.example".into(),
                direct_boot_ok: true,
                webpush_link: "https://example.com".into(),
                analytics_label: "lbl".into(),
            }),
            ..Default::default()
        };
        r.data.insert("k".into(), "v".into());
        let expected = json!({"message": {
            "token": "tok",
            "notification": {"title": "T", "body": "B", "image": "https://img"},
            "data": {"k": "v"},
            "android": {
                "priority": "NORMAL",
                "ttl": "60s",
                "collapse_key": "c",
                "restricted_package_name": "com.example",
                "direct_boot_ok": true,
                "notification": {
                    "channel_id": "ch", "tag": "tag", "color": "#ff0000", "icon": "ic",
                    "sound": "ping", "click_action": "OPEN",
                    "title_loc_key": "TK", "body_loc_key": "BK",
                    "title_loc_args": ["ta"], "body_loc_args": ["ba"],
                    "notification_count": 4, "visibility": "SECRET"
                }
            },
            "apns": {
                "headers": {"apns-priority": "5", "apns-collapse-id": "c"},
                "payload": {"aps": {
                    "badge": 4, "sound": "ping", "thread-id": "th", "category": "CAT",
                    "subtitle": "S", "content-available": 1, "mutable-content": 1
                }}
            },
            "webpush": {"fcm_options": {"link": "https://example.com"}},
            "fcm_options": {"analytics_label": "lbl"}
        }});
        assert_eq!(message(&r, "tok", None), expected);
        let sent = build(Push {
            request: &r,
            token: "tok",
            expires_at: None,
            give_up: None,
        })
        .expect("encodes");
        let sent: Value = serde_json::from_slice(&sent.body).expect("parse");
        assert_eq!(sent, expected, "the bytes sent are the same message");
    }

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
        let m = &message(&r, "tok", None)["message"];
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
        let m = message(&PushRequest::default(), "tok", None);
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
        let ttl = message(&r, "t", Some(at))["message"]["android"]["ttl"]
            .as_str()
            .expect("ttl")
            .to_string();
        let secs: u64 = ttl.trim_end_matches('s').parse().expect("secs");
        assert!((98..=100).contains(&secs), "{ttl}");
    }

    #[test]
    fn a_ttl_beyond_28_days_is_clamped_to_fcms_maximum() {
        let r = PushRequest {
            ttl: Some(push_dispatch_proto::pbjson_types::Duration {
                seconds: 30 * 86_400,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            message(&r, "t", None)["message"]["android"]["ttl"],
            "2419200s"
        );
        let at = SystemTime::now() + std::time::Duration::from_secs(30 * 86_400);
        assert_eq!(
            message(&r, "t", Some(at))["message"]["android"]["ttl"],
            "2419200s"
        );
    }
}
