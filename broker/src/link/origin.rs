//! What the router does not keep about a message, carried through it.
//!
//! The router forwards every message at the subscription's QoS and forgets the
//! publisher's QoS, retain flag, origin and arrival time. The gateway carries
//! those through the router in a private user property ([`Origin`]): attached
//! to every publish it hands the router (a device's own is removed first, so no
//! device can forge it), and stripped from every message before a device sees
//! it (see `session`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttd::protocol::PublishProperties;

/// Key of the private user property that carries a message's origin through the
/// router. Removed from every incoming publish (no device can forge it) and from
/// every outgoing one.
pub const ORIGIN_PROPERTY: &str = "tributary-origin";

/// What the router does not keep about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub qos: u8,
    pub retain: bool,
    /// When Tributary received it, in milliseconds since the Unix epoch.
    pub received_ms: u64,
    /// Unique per message in this process: the router sends a client one
    /// copy per matching subscription, and the copies share it.
    pub id: u64,
    pub client_id: String,
}

/// Source of [`Origin::id`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Origin {
    pub fn now(qos: u8, retain: bool, client_id: &str) -> Origin {
        Origin {
            qos,
            retain,
            received_ms: unix_ms(SystemTime::now()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client_id: client_id.to_owned(),
        }
    }

    fn encode(&self) -> String {
        format!(
            "{}{}|{}|{}|{}",
            self.qos,
            u8::from(self.retain),
            self.received_ms,
            self.id,
            self.client_id
        )
    }

    fn decode(value: &str) -> Option<Origin> {
        let (flags, rest) = value.split_once('|')?;
        let (received, rest) = rest.split_once('|')?;
        let (id, client_id) = rest.split_once('|')?;
        let flags = flags.as_bytes();
        if flags.len() != 2 {
            return None;
        }
        Some(Origin {
            qos: flags[0].checked_sub(b'0').filter(|q| *q <= 2)?,
            retain: flags[1] == b'1',
            received_ms: received.parse().ok()?,
            id: id.parse().ok()?,
            client_id: client_id.to_owned(),
        })
    }

    /// Attaches this origin to `properties`, replacing any forged one.
    pub fn attach(&self, properties: Option<PublishProperties>) -> Option<PublishProperties> {
        let mut properties = properties.unwrap_or_default();
        properties
            .user_properties
            .retain(|(key, _)| key != ORIGIN_PROPERTY);
        properties
            .user_properties
            .push((ORIGIN_PROPERTY.to_owned(), self.encode()));
        Some(properties)
    }

    /// Removes the origin from `properties` and returns it.
    pub fn detach(properties: &mut Option<PublishProperties>) -> Option<Origin> {
        let props = properties.as_mut()?;
        let at = props
            .user_properties
            .iter()
            .position(|(key, _)| key == ORIGIN_PROPERTY)?;
        let (_, value) = props.user_properties.remove(at);
        if *props == PublishProperties::default() {
            *properties = None;
        }
        Origin::decode(&value)
    }

    /// The Message Expiry Interval left, `Some(0)` meaning expired, `None` when
    /// the message does not expire.
    pub fn remaining_expiry(&self, interval: Option<u32>, now: SystemTime) -> Option<u32> {
        let interval = interval?;
        let waited = unix_ms(now).saturating_sub(self.received_ms) / 1000;
        Some(u32::try_from(u64::from(interval).saturating_sub(waited)).unwrap_or(0))
    }
}

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_round_trips_and_leaves_other_properties_alone() {
        let origin = Origin {
            qos: 1,
            retain: true,
            received_ms: 1_700_000_000_123,
            id: 7,
            client_id: "dev|42".into(),
        };
        let user = ("k".to_owned(), "v".to_owned());
        let forged = (ORIGIN_PROPERTY.to_owned(), "21|0|evil".to_owned());
        let mut props = origin.attach(Some(PublishProperties {
            user_properties: vec![user.clone(), forged],
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        }));
        assert_eq!(Origin::detach(&mut props), Some(origin));
        let props = props.unwrap();
        assert_eq!(props.user_properties, [user]);
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));

        let mut bare = Origin::now(0, false, "x").attach(None);
        assert!(Origin::detach(&mut bare).is_some());
        assert_eq!(bare, None, "nothing left behind");
    }

    #[test]
    fn expiry_counts_down_from_arrival() {
        let origin = Origin {
            qos: 0,
            retain: false,
            received_ms: 10_000,
            id: 1,
            client_id: String::new(),
        };
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(origin.remaining_expiry(None, at(99_000)), None);
        assert_eq!(origin.remaining_expiry(Some(60), at(10_500)), Some(60));
        assert_eq!(origin.remaining_expiry(Some(60), at(40_000)), Some(30));
        assert_eq!(origin.remaining_expiry(Some(60), at(90_000)), Some(0));
    }
}
