//! Mapping a `PushRequest` to an APNs request: the JSON payload (`aps` and
//! custom data at top level) and the `apns-*` headers.
//!
//! The push type is taken from `apns.push_type` or derived (alert when there
//! is something to show, background otherwise); background forces priority 5
//! as Apple requires. Each push type has its topic suffix. The payload limit
//! (4 KiB, 5 KiB for VoIP) is checked here, before any request is made.

use std::time::{SystemTime, UNIX_EPOCH};

use push_dispatch_proto::v1::{
    ApnsPushType, InterruptionLevel, Notification, Priority, PushRequest,
};
use serde_json::{Map, Value, json};

use crate::RejectReason;

/// Largest payload of ordinary pushes, in bytes.
pub const MAX_PAYLOAD: usize = 4096;
/// Largest VoIP payload, in bytes.
pub const MAX_VOIP_PAYLOAD: usize = 5120;

/// The request APNs will get for one device.
#[derive(Clone, Debug, PartialEq)]
pub struct ApnsRequest {
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

/// The `aps` dictionary and custom data as a JSON object.
pub fn payload(request: &PushRequest) -> Value {
    let mut aps = Map::new();
    if let Some(n) = &request.notification {
        let mut alert = Map::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                alert.insert(k.into(), Value::String(v.into()));
            }
        };
        put("title", &n.title);
        put("subtitle", &n.subtitle);
        put("body", &n.body);
        put("title-loc-key", &n.title_loc_key);
        put("loc-key", &n.body_loc_key);
        if !n.title_loc_args.is_empty() {
            alert.insert("title-loc-args".into(), json!(n.title_loc_args));
        }
        if !n.body_loc_args.is_empty() {
            alert.insert("loc-args".into(), json!(n.body_loc_args));
        }
        if !alert.is_empty() {
            aps.insert("alert".into(), Value::Object(alert));
        }
        if let Some(badge) = n.badge {
            aps.insert("badge".into(), json!(badge));
        }
        if !n.sound.is_empty() {
            let critical = request.apns.as_ref().is_some_and(|a| {
                a.interruption_level() == InterruptionLevel::Critical || a.sound_volume.is_some()
            });
            if critical {
                let volume = request
                    .apns
                    .as_ref()
                    .and_then(|a| a.sound_volume)
                    .unwrap_or(1.0)
                    .clamp(0.0, 1.0);
                aps.insert(
                    "sound".into(),
                    json!({"critical": 1, "name": n.sound, "volume": volume}),
                );
            } else {
                aps.insert("sound".into(), Value::String(n.sound.clone()));
            }
        }
        if !n.click_action.is_empty() && request.category.is_empty() {
            aps.insert("category".into(), Value::String(n.click_action.clone()));
        }
    }
    if request.content_available {
        aps.insert("content-available".into(), json!(1));
    }
    if request.mutable_content {
        aps.insert("mutable-content".into(), json!(1));
    }
    if !request.thread_id.is_empty() {
        aps.insert("thread-id".into(), Value::String(request.thread_id.clone()));
    }
    if !request.category.is_empty() {
        aps.insert("category".into(), Value::String(request.category.clone()));
    }
    if let Some(a) = &request.apns {
        if let Some(level) = interruption_level(a.interruption_level()) {
            aps.insert("interruption-level".into(), Value::String(level.into()));
        }
        if let Some(score) = a.relevance_score {
            aps.insert("relevance-score".into(), json!(score.clamp(0.0, 1.0)));
        }
        if !a.target_content_id.is_empty() {
            aps.insert(
                "target-content-id".into(),
                Value::String(a.target_content_id.clone()),
            );
        }
        if !a.filter_criteria.is_empty() {
            aps.insert(
                "filter-criteria".into(),
                Value::String(a.filter_criteria.clone()),
            );
        }
    }
    let mut root = Map::new();
    for (k, v) in &request.data {
        if k != "aps" {
            root.insert(k.clone(), Value::String(v.clone()));
        }
    }
    root.insert("aps".into(), Value::Object(aps));
    Value::Object(root)
}

/// Builds the APNs request for `request`; refuses payloads over the limit.
pub fn build(
    request: &PushRequest,
    topic: &str,
    expires_at: Option<SystemTime>,
) -> Result<ApnsRequest, RejectReason> {
    let push_type = push_type_of(request);
    let (name, suffix) = type_and_suffix(push_type);
    let body = serde_json::to_vec(&payload(request)).map_err(|e| RejectReason::Provider {
        status: 0,
        provider_reason: format!("payload not encodable: {e}"),
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
        let req = build(&r, "com.example.app", None).expect("fits");
        assert_eq!(req.push_type, "alert");
        assert_eq!(req.topic, "com.example.app");
        assert_eq!(req.priority, 10);
        assert_eq!(req.expiration, None);
    }

    #[test]
    fn silent_push_is_background_with_priority_5() {
        let r = PushRequest {
            content_available: true,
            priority: Priority::High as i32,
            ..Default::default()
        };
        let req = build(&r, "t", None).expect("fits");
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
            let req = build(&r, "t", None).expect("fits");
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
        let req = build(&r, "t", Some(at)).expect("fits");
        assert_eq!(req.priority, 5);
        assert_eq!(req.collapse_id.as_deref(), Some("score"));
        assert_eq!(req.expiration, Some(1_800_000_000));
        r.ttl = Some(push_dispatch_proto::pbjson_types::Duration {
            seconds: 0,
            nanos: 0,
        });
        assert_eq!(
            build(&r, "t", None).expect("fits").expiration,
            Some(0),
            "ttl 0 = now or never"
        );
    }

    #[test]
    fn payload_limit_is_checked_before_sending() {
        let mut r = alert();
        r.data.insert("blob".into(), "x".repeat(4100));
        let err = build(&r, "t", None).expect_err("too large");
        assert!(matches!(
            err,
            RejectReason::PayloadTooLarge { max: 4096, .. }
        ));
        r.apns = Some(ApnsOptions {
            push_type: ApnsPushType::Voip as i32,
            ..Default::default()
        });
        assert!(build(&r, "t", None).is_ok(), "VoIP allows 5 KiB");
    }
}
