//! Publishing with Pub/Sub's limits enforced before the call.
//!
//! Pub/Sub caps a message at 10 MB, 100 attributes and 1,024-byte attribute
//! values; the emulator enforces none of this (and hangs on publishes over
//! 11 MB), so we check here and truncate what we write ourselves (error
//! details, ids echoed from producers) rather than let a publish fail.

use std::collections::HashMap;

use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;

/// Longest attribute value Pub/Sub accepts, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Longest attribute key Pub/Sub accepts, in bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
/// Most attributes one message may carry.
pub const MAX_ATTRIBUTES: usize = 100;
/// Largest message (data plus attributes) Pub/Sub accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 10_000_000;

/// A publish failed or was refused before it was sent.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The message is over Pub/Sub's size limit.
    #[error("message of {bytes} bytes is over Pub/Sub's {max}-byte limit")]
    TooLarge {
        /// Data and attributes, in bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The message has more attributes than Pub/Sub allows.
    #[error("message has {count} attributes, over Pub/Sub's limit of {MAX_ATTRIBUTES}")]
    TooManyAttributes {
        /// How many.
        count: usize,
    },
    /// Pub/Sub did not confirm the publish.
    #[error("publish to {topic} failed: {source}")]
    Rpc {
        /// The topic's full name.
        topic: String,
        /// The SDK's error.
        #[source]
        source: google_cloud_pubsub::error::PublishError,
    },
}

/// Cuts `value` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// Builds a message, truncating attribute keys and values to Pub/Sub's limits
/// and refusing what cannot be made to fit.
pub fn build_message(
    data: Vec<u8>,
    attributes: HashMap<String, String>,
) -> Result<Message, PublishError> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(PublishError::TooManyAttributes {
            count: attributes.len(),
        });
    }
    let attributes: HashMap<String, String> = attributes
        .into_iter()
        .map(|(k, v)| {
            (
                truncate_utf8(&k, MAX_ATTRIBUTE_KEY_BYTES).to_string(),
                truncate_utf8(&v, MAX_ATTRIBUTE_VALUE_BYTES).to_string(),
            )
        })
        .collect();
    let bytes = data.len()
        + attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if bytes > MAX_MESSAGE_BYTES {
        return Err(PublishError::TooLarge {
            bytes,
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(Message::new().set_data(data).set_attributes(attributes))
}

/// Publishes one message and waits for Pub/Sub to confirm it; returns its id.
pub async fn publish_confirmed(
    publisher: &Publisher,
    topic: &str,
    data: Vec<u8>,
    attributes: HashMap<String, String>,
) -> Result<String, PublishError> {
    let message = build_message(data, attributes)?;
    publisher
        .publish(message)
        .await
        .map_err(|source| PublishError::Rpc {
            topic: topic.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_utf8("abc", 2), "ab");
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("short", 100), "short");
    }

    #[test]
    fn long_attribute_values_are_truncated_to_1024_bytes() {
        let mut attrs = HashMap::new();
        attrs.insert("push_error_detail".to_string(), "é".repeat(2000));
        let msg = build_message(b"x".to_vec(), attrs).expect("fits");
        let v = &msg.attributes["push_error_detail"];
        assert!(v.len() <= MAX_ATTRIBUTE_VALUE_BYTES && v.len() >= MAX_ATTRIBUTE_VALUE_BYTES - 1);
    }

    #[test]
    fn oversized_messages_are_refused() {
        let err = build_message(vec![0; MAX_MESSAGE_BYTES + 1], HashMap::new()).expect_err("big");
        assert!(matches!(err, PublishError::TooLarge { .. }));
        let many = (0..=MAX_ATTRIBUTES)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert!(matches!(
            build_message(Vec::new(), many),
            Err(PublishError::TooManyAttributes { .. })
        ));
    }
}
