//! Building the APNs request for one push: [`build`] turns a [`Push`] (the
//! `PushRequest` and one device token) into an [`ApnsRequest`]: the path
//! `/3/device/{token}`, the `apns-*` header values and the JSON payload
//! (`aps` and custom data at top level), serialized once. [`payload`] gives
//! the same payload as a JSON tree, for inspection. FCM's `build`
//! (`crate::fcm::request`) has the same role.
//!
//! The push type is taken from `apns.push_type` or derived (alert when there
//! is something to show, background otherwise); background forces priority 5
//! as Apple requires. Each push type has its topic suffix. The payload limit
//! (4 KiB, 5 KiB for VoIP) is checked here, before any request is made.

use std::time::UNIX_EPOCH;

use push_dispatch_proto::v1::{
    ApnsPushType, InterruptionLevel, Notification, Priority, PushRequest,
};
use serde::Serialize;
use serde_json::Value;

use crate::{Push, RejectReason};

/// Largest payload of ordinary pushes, in bytes.
pub const MAX_PAYLOAD: usize = 4096;
/// Largest VoIP payload, in bytes.
pub const MAX_VOIP_PAYLOAD: usize = 5120;

/// The request APNs will get for one device.
#[derive(Clone, Debug, PartialEq)]
pub struct ApnsRequest {
    /// `/3/device/{token}`.
    pub path: String,
    /// `apns-push-type`.
    pub push_type: &'static str,
    /// `apns-topic`.
    pub topic: String,
    /// `apns-priority`.
    pub priority: u8,
    /// `apns-expiration` (0 = deliver once, do not store).
    pub expiration: Option<u64>,
    /// `apns-collapse-id`.
    pub collapse_id: Option<String>,
    /// The JSON body (shared, not copied, by every send of it).
    pub body: bytes::Bytes,
}

fn push_type_of(request: &PushRequest) -> ApnsPushType {
    let explicit = request
        .apns
        .as_ref()
        .map_or(ApnsPushType::Unspecified, |a| a.push_type());
    if explicit != ApnsPushType::Unspecified {
        return explicit;
    }
    if request
        .notification
        .as_ref()
        .is_some_and(has_visible_content)
    {
        ApnsPushType::Alert
    } else if request.content_available {
        ApnsPushType::Background
    } else {
        ApnsPushType::Alert
    }
}

fn has_visible_content(n: &Notification) -> bool {
    !(n.title.is_empty()
        && n.subtitle.is_empty()
        && n.body.is_empty()
        && n.title_loc_key.is_empty()
        && n.body_loc_key.is_empty()
        && n.sound.is_empty()
        && n.badge.is_none())
}

fn type_and_suffix(t: ApnsPushType) -> (&'static str, &'static str) {
    match t {
        ApnsPushType::Unspecified | ApnsPushType::Alert => ("alert", ""),
        ApnsPushType::Background => ("background", ""),
        ApnsPushType::Voip => ("voip", ".voip"),
        ApnsPushType::Complication => ("complication", ".complication"),
        ApnsPushType::Fileprovider => ("fileprovider", ".pushkit.fileprovider"),
        ApnsPushType::Mdm => ("mdm", ""),
        ApnsPushType::Liveactivity => ("liveactivity", ".push-type.liveactivity"),
        ApnsPushType::Location => ("location", ".location-query"),
        ApnsPushType::Pushtotalk => ("pushtotalk", ".voip-ptt"),
    }
}

fn interruption_level(l: InterruptionLevel) -> Option<&'static str> {
    match l {
        InterruptionLevel::Unspecified => None,
        InterruptionLevel::Passive => Some("passive"),
        InterruptionLevel::Active => Some("active"),
        InterruptionLevel::TimeSensitive => Some("time-sensitive"),
        InterruptionLevel::Critical => Some("critical"),
    }
}

/// The `aps` alert dictionary, borrowed from the request.
#[derive(Serialize)]
struct Alert<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    title: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    subtitle: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    body: &'a str,
    #[serde(rename = "title-loc-key", skip_serializing_if = "str::is_empty")]
    title_loc_key: &'a str,
    #[serde(
        rename = "title-loc-args",
        skip_serializing_if = "<[String]>::is_empty"
    )]
    title_loc_args: &'a [String],
    #[serde(rename = "loc-key", skip_serializing_if = "str::is_empty")]
    loc_key: &'a str,
    #[serde(rename = "loc-args", skip_serializing_if = "<[String]>::is_empty")]
    loc_args: &'a [String],
}

impl Alert<'_> {
    fn is_empty(&self) -> bool {
        self.title.is_empty()
            && self.subtitle.is_empty()
            && self.body.is_empty()
            && self.title_loc_key.is_empty()
            && self.title_loc_args.is_empty()
            && self.loc_key.is_empty()
            && self.loc_args.is_empty()
    }
}

/// `sound`: a name, or the critical-alert dictionary.
#[derive(Serialize)]
#[serde(untagged)]
enum Sound<'a> {
    Name(&'a str),
    Critical {
        critical: u8,
        name: &'a str,
        volume: f64,
    },
}

/// The `aps` dictionary, borrowed from the request.
#[derive(Serialize)]
struct Aps<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<Alert<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<Sound<'a>>,
    #[serde(rename = "content-available", skip_serializing_if = "Option::is_none")]
    content_available: Option<u8>,
    #[serde(rename = "mutable-content", skip_serializing_if = "Option::is_none")]
    mutable_content: Option<u8>,
    #[serde(rename = "thread-id", skip_serializing_if = "str::is_empty")]
    thread_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    category: &'a str,
    #[serde(rename = "interruption-level", skip_serializing_if = "Option::is_none")]
    interruption_level: Option<&'static str>,
    #[serde(rename = "relevance-score", skip_serializing_if = "Option::is_none")]
    relevance_score: Option<f64>,
    #[serde(rename = "target-content-id", skip_serializing_if = "str::is_empty")]
    target_content_id: &'a str,
    #[serde(rename = "filter-criteria", skip_serializing_if = "str::is_empty")]
    filter_criteria: &'a str,
}

/// The whole payload: custom data at top level, then `aps`. Serialized
/// straight from the request, with no intermediate JSON tree.
struct Payload<'a> {
    data: &'a std::collections::HashMap<String, String>,
    aps: Aps<'a>,
}

impl Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (k, v) in self.data {
            if k != "aps" {
                map.serialize_entry(k, v)?;
            }
        }
        map.serialize_entry("aps", &self.aps)?;
        map.end()
    }
}

fn payload_of(request: &PushRequest) -> Payload<'_> {
    let n = request.notification.as_ref();
    let apns = request.apns.as_ref();
    let alert = n
        .map(|n| Alert {
            title: &n.title,
            subtitle: &n.subtitle,
            body: &n.body,
            title_loc_key: &n.title_loc_key,
            title_loc_args: &n.title_loc_args,
            loc_key: &n.body_loc_key,
            loc_args: &n.body_loc_args,
        })
        .filter(|a| !a.is_empty());
    let sound = n.filter(|n| !n.sound.is_empty()).map(|n| {
        let critical = apns.is_some_and(|a| {
            a.interruption_level() == InterruptionLevel::Critical || a.sound_volume.is_some()
        });
        if critical {
            Sound::Critical {
                critical: 1,
                name: &n.sound,
                volume: apns
                    .and_then(|a| a.sound_volume)
                    .unwrap_or(1.0)
                    .clamp(0.0, 1.0),
            }
        } else {
            Sound::Name(&n.sound)
        }
    });
    let category = if request.category.is_empty() {
        n.map_or("", |n| n.click_action.as_str())
    } else {
        &request.category
    };
    Payload {
        data: &request.data,
        aps: Aps {
            alert,
            badge: n.and_then(|n| n.badge),
            sound,
            content_available: request.content_available.then_some(1),
            mutable_content: request.mutable_content.then_some(1),
            thread_id: &request.thread_id,
            category,
            interruption_level: apns.and_then(|a| interruption_level(a.interruption_level())),
            relevance_score: apns
                .and_then(|a| a.relevance_score)
                .map(|s| s.clamp(0.0, 1.0)),
            target_content_id: apns.map_or("", |a| a.target_content_id.as_str()),
            filter_criteria: apns.map_or("", |a| a.filter_criteria.as_str()),
        },
    }
}

/// The `aps` dictionary and custom data as a JSON object (for inspection;
/// [`build`] serializes the same payload without this tree).
pub fn payload(request: &PushRequest) -> Value {
    serde_json::to_value(payload_of(request)).unwrap_or(Value::Null)
}

/// Builds the APNs request of `push` for the app's `topic` (the bundle id);
/// refuses payloads over the limit.
pub fn build(push: Push<'_>, topic: &str) -> Result<ApnsRequest, RejectReason> {
    let Push {
        request,
        token,
        expires_at,
        ..
    } = push;
    let push_type = push_type_of(request);
    let (name, suffix) = type_and_suffix(push_type);
    let body = serde_json::to_vec(&payload_of(request)).map_err(|e| RejectReason::Unsendable {
        problem: format!("payload not encodable: {e}"),
    })?;
    let max = if push_type == ApnsPushType::Voip {
        MAX_VOIP_PAYLOAD
    } else {
        MAX_PAYLOAD
    };
    if body.len() > max {
        return Err(RejectReason::PayloadTooLarge {
            bytes: body.len(),
            max,
        });
    }
    let priority = match (push_type, request.priority()) {
        (ApnsPushType::Background, _) => 5,
        (_, Priority::Normal) => 5,
        (_, Priority::High | Priority::Unspecified) => 10,
    };
    let expiration = match (&request.ttl, expires_at) {
        (Some(ttl), _) if ttl.seconds <= 0 && ttl.nanos <= 0 => Some(0),
        (_, Some(at)) => Some(
            at.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .max(1),
        ),
        _ => None,
    };
    Ok(ApnsRequest {
        path: format!("/3/device/{token}"),
        push_type: name,
        topic: format!("{topic}{suffix}"),
        priority,
        expiration,
        collapse_id: (!request.collapse_key.is_empty()).then(|| request.collapse_key.clone()),
        body: bytes::Bytes::from(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use push_dispatch_proto::v1::ApnsOptions;
    use std::time::Duration;

    const TOKEN: &str = "a1b2c3d4";

    /// The push of `request` to [`TOKEN`], without expiry.
    fn push(request: &PushRequest) -> Push<'_> {
        Push {
            request,
            token: TOKEN,
            expires_at: None,
            give_up: None,
        }
    }

    fn alert() -> PushRequest {
        PushRequest {
            notification: Some(Notification {
                title: "T".into(),
                body: "B".into(),
                badge: Some(3),
                sound: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn alert_maps_to_aps_and_data_goes_top_level() {
        let mut r = alert();
        r.data.insert("order".into(), "42".into());
        r.data.insert("aps".into(), "ignored".into());
        r.thread_id = "th".into();
        r.mutable_content = true;
        let p = payload(&r);
        assert_eq!(p["aps"]["alert"]["title"], "T");
        assert_eq!(p["aps"]["alert"]["body"], "B");
        assert_eq!(p["aps"]["badge"], 3);
        assert_eq!(p["aps"]["sound"], "default");
        assert_eq!(p["aps"]["thread-id"], "th");
        assert_eq!(p["aps"]["mutable-content"], 1);
        assert_eq!(p["order"], "42");
        assert!(p["aps"].is_object(), "data cannot overwrite aps");
        let req = build(push(&r), "com.example.app").expect("fits");
        assert_eq!(req.path, format!("/3/device/{TOKEN}"));
        assert_eq!(req.push_type, "alert");
        assert_eq!(req.topic, "com.example.app");
        assert_eq!(req.priority, 10);
        assert_eq!(req.expiration, None);
    }

    #[test]
    fn every_field_has_its_apple_name_and_nothing_else_is_sent() {
        let r = PushRequest {
            notification: Some(Notification {
                title: "T".into(),
                subtitle: "S".into(),
                body: "B".into(),
                title_loc_key: "TK".into(),
                title_loc_args: vec!["ta".into()],
                body_loc_key: "BK".into(),
                body_loc_args: vec!["ba".into(), "bb".into()],
                badge: Some(0),
                sound: "ping.aiff".into(),
                click_action: "OPEN".into(),
                ..Default::default()
            }),
            content_available: true,
            mutable_content: true,
            thread_id: "th".into(),
            apns: Some(ApnsOptions {
                interruption_level: InterruptionLevel::TimeSensitive as i32,
                relevance_score: Some(2.0),
                target_content_id: "tc".into(),
                filter_criteria: "fc".into(),
                ..Default::default()
            }),
            data: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        let expected = serde_json::json!({
            "k": "v",
            "aps": {
                "alert": {
                    "title": "T", "subtitle": "S", "body": "B",
                    "title-loc-key": "TK", "title-loc-args": ["ta"],
                    "loc-key": "BK", "loc-args": ["ba", "bb"]
                },
                "badge": 0,
                "sound": "ping.aiff",
                "content-available": 1,
                "mutable-content": 1,
                "thread-id": "th",
                "category": "OPEN",
                "interruption-level": "time-sensitive",
                "relevance-score": 1.0,
                "target-content-id": "tc",
                "filter-criteria": "fc"
            }
        });
        assert_eq!(payload(&r), expected);
        let body = build(push(&r), "t").expect("fits").body;
        let sent: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(sent, expected, "the bytes sent are the same payload");
        // An explicit category wins over click_action; an empty request has an empty aps.
        let mut r2 = r.clone();
        r2.category = "CAT".into();
        assert_eq!(payload(&r2)["aps"]["category"], "CAT");
        assert_eq!(
            payload(&PushRequest::default()),
            serde_json::json!({"aps": {}})
        );
    }

    #[test]
    fn silent_push_is_background_with_priority_5() {
        let r = PushRequest {
            content_available: true,
            priority: Priority::High as i32,
            ..Default::default()
        };
        let req = build(push(&r), "t").expect("fits");
        assert_eq!(req.push_type, "background");
        assert_eq!(req.priority, 5, "background forces 5");
        assert_eq!(payload(&r)["aps"]["content-available"], 1);
    }

    #[test]
    fn push_types_carry_their_topic_suffix() {
        for (t, name, topic) in [
            (ApnsPushType::Voip, "voip", "t.voip"),
            (ApnsPushType::Complication, "complication", "t.complication"),
            (
                ApnsPushType::Liveactivity,
                "liveactivity",
                "t.push-type.liveactivity",
            ),
            (ApnsPushType::Pushtotalk, "pushtotalk", "t.voip-ptt"),
            (ApnsPushType::Location, "location", "t.location-query"),
            (
                ApnsPushType::Fileprovider,
                "fileprovider",
                "t.pushkit.fileprovider",
            ),
        ] {
            let mut r = alert();
            r.apns = Some(ApnsOptions {
                push_type: t as i32,
                ..Default::default()
            });
            let req = build(push(&r), "t").expect("fits");
            assert_eq!((req.push_type, req.topic.as_str()), (name, topic));
        }
    }

    #[test]
    fn interruption_level_and_critical_sound() {
        let mut r = alert();
        r.apns = Some(ApnsOptions {
            interruption_level: InterruptionLevel::Critical as i32,
            sound_volume: Some(0.5),
            relevance_score: Some(0.7),
            ..Default::default()
        });
        let p = payload(&r);
        assert_eq!(p["aps"]["interruption-level"], "critical");
        assert_eq!(p["aps"]["sound"]["critical"], 1);
        assert_eq!(p["aps"]["sound"]["volume"], 0.5);
        assert_eq!(p["aps"]["relevance-score"], 0.7);
    }

    #[test]
    fn headers_from_priority_ttl_and_collapse_key() {
        let mut r = alert();
        r.priority = Priority::Normal as i32;
        r.collapse_key = "score".into();
        r.ttl = Some(push_dispatch_proto::pbjson_types::Duration {
            seconds: 60,
            nanos: 0,
        });
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let req = build(
            Push {
                expires_at: Some(at),
                give_up: None,
                ..push(&r)
            },
            "t",
        )
        .expect("fits");
        assert_eq!(req.priority, 5);
        assert_eq!(req.collapse_id.as_deref(), Some("score"));
        assert_eq!(req.expiration, Some(1_800_000_000));
        r.ttl = Some(push_dispatch_proto::pbjson_types::Duration {
            seconds: 0,
            nanos: 0,
        });
        assert_eq!(
            build(push(&r), "t").expect("fits").expiration,
            Some(0),
            "ttl 0 = now or never"
        );
    }

    #[test]
    fn payload_limit_is_checked_before_sending() {
        let mut r = alert();
        r.data.insert("blob".into(), "x".repeat(4100));
        let err = build(push(&r), "t").expect_err("too large");
        assert!(matches!(
            err,
            RejectReason::PayloadTooLarge { max: 4096, .. }
        ));
        r.apns = Some(ApnsOptions {
            push_type: ApnsPushType::Voip as i32,
            ..Default::default()
        });
        assert!(build(push(&r), "t").is_ok(), "VoIP allows 5 KiB");
    }
}
