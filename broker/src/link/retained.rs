//! Retained messages [MQTT-3.3.1-5..11], kept by the gateway rather than the
//! router.
//!
//! The router sends retained messages only for a subscription it did not have
//! (never again on a re-subscribe with Retain Handling 0), drops those beyond
//! its free in-flight slots, and deletes a topic's retained message on any
//! empty publish, retained or not. So the router is never given a retained
//! publish; the gateway stores them here and delivers them itself on
//! SUBSCRIBE, through the session's outbox like any other message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use rumqttd::protocol::PublishProperties;

use super::origin::Origin;

/// One retained message, as published (topic alias resolved; its properties
/// carry the origin property, stripped on delivery).
#[derive(Debug)]
pub struct RetainedMessage {
    pub topic: Bytes,
    pub payload: Bytes,
    pub properties: Option<PublishProperties>,
    pub origin: Origin,
}

/// Every topic's retained message, shared by all links.
#[derive(Debug, Default)]
pub struct Retained {
    by_topic: Mutex<HashMap<String, Arc<RetainedMessage>>>,
}

impl Retained {
    /// Applies a retained publish: stores it, or deletes the topic's message
    /// when the payload is empty [MQTT-3.3.1-10].
    pub fn update(&self, message: RetainedMessage) {
        let Ok(topic) = std::str::from_utf8(&message.topic) else {
            return; // topic names are checked UTF-8 before they get here
        };
        let topic = topic.to_owned();
        let mut by_topic = self.lock();
        if message.payload.is_empty() {
            by_topic.remove(&topic);
            if by_topic.capacity() > 64 && by_topic.len() < by_topic.capacity() / 4 {
                by_topic.shrink_to_fit();
            }
        } else {
            by_topic.insert(topic, Arc::new(message));
        }
    }

    /// The retained messages matching `filter` that have not expired; expired
    /// ones are deleted on the way [MQTT-3.3.2-5].
    pub fn matching(&self, filter: &str, now: SystemTime) -> Vec<Arc<RetainedMessage>> {
        let mut by_topic = self.lock();
        by_topic.retain(|_, m| m.origin.remaining_expiry(expiry_of(m), now) != Some(0));
        by_topic
            .iter()
            .filter(|(topic, _)| tributary_wire::topic_matches(topic, filter))
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RetainedMessage>>> {
        self.by_topic.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn expiry_of(message: &RetainedMessage) -> Option<u32> {
    message
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(
        topic: &'static str,
        payload: &'static [u8],
        expiry: Option<u32>,
    ) -> RetainedMessage {
        RetainedMessage {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: Bytes::from_static(payload),
            properties: expiry.map(|e| PublishProperties {
                message_expiry_interval: Some(e),
                ..PublishProperties::default()
            }),
            origin: Origin::now(1, true, "dev"),
        }
    }

    #[test]
    fn stores_replaces_and_deletes() {
        let retained = Retained::default();
        let now = SystemTime::now();
        retained.update(message("a/b", b"1", None));
        retained.update(message("a/b", b"2", None));
        retained.update(message("a/c", b"3", None));
        let mut got: Vec<_> = retained
            .matching("a/+", now)
            .iter()
            .map(|m| m.payload.clone())
            .collect();
        got.sort();
        assert_eq!(got, [Bytes::from_static(b"2"), Bytes::from_static(b"3")]);
        retained.update(message("a/b", b"", None));
        assert_eq!(retained.matching("#", now).len(), 1);
        assert!(retained.matching("x/#", now).is_empty());
    }

    #[test]
    fn expired_messages_are_not_delivered_and_are_deleted() {
        let retained = Retained::default();
        retained.update(message("e/1", b"short", Some(1)));
        retained.update(message("e/2", b"long", Some(600)));
        let later = SystemTime::now() + Duration::from_secs(5);
        let got = retained.matching("e/#", later);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, Bytes::from_static(b"long"));
        assert_eq!(retained.len(), 1);
    }
}
