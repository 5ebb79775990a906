//! A client's session: what outlives a network connection when the Session
//! Expiry Interval (or a 3.1.1 persistent session) says so. Its subscriptions
//! with their options, and its outbox of messages for the device.
//!
//! Messages from the router are decided here, whether the device is connected
//! or away: the router forwards every message at the subscription's QoS and
//! forgets the publisher's QoS, retain flag, origin and arrival time, which the
//! gateway carries through the router in a private property ([`Origin`]) and
//! strips here. It never passes that property on to a device.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;
use rumqttd::protocol::{Packet, PubAck, PubAckReason, PubRec, PubRecReason};
use rumqttd::Forward;

use super::codec::{next_frame, Version};
use super::origin::Origin;
use super::outbox::{reencode, Outbox, Queued};
use super::subscriptions::{RetainHandling, Subscriptions};
use crate::events;

pub struct Session {
    pub client_id: Arc<str>,
    pub version: Version,
    pub subscriptions: Subscriptions,
    pub outbox: Outbox,
    /// The client's Maximum Packet Size (MQTT 5), else unlimited.
    pub client_max_packet_size: usize,
}

impl Session {
    pub fn new(client_id: Arc<str>, version: Version) -> Session {
        Session {
            client_id,
            version,
            subscriptions: Subscriptions::default(),
            outbox: Outbox::default(),
            client_max_packet_size: usize::MAX,
        }
    }

    /// Takes one message the router forwards: queues it for the device as MQTT
    /// requires (or not at all), and returns the acknowledgement the router is
    /// owed at once, since the message is now the session's.
    /// `connected` is false while the device is away: QoS 0 is then dropped.
    pub fn accept(&mut self, forward: Forward, connected: bool) -> Option<Packet> {
        // The router marks a retained message sent at subscribe by having no
        // log cursor for it.
        let retained_at_subscribe = forward.cursor.is_none();
        let mut properties = forward.properties;
        let origin = Origin::detach(&mut properties);
        let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();

        let mut skip = None;
        if let (Some(origin), Some(props)) = (&origin, properties.as_mut()) {
            match origin.remaining_expiry(props.message_expiry_interval, SystemTime::now()) {
                Some(0) => skip = Some("expired"),
                Some(left) => props.message_expiry_interval = Some(left),
                None => {}
            }
        }

        let mut encoded = BytesMut::new();
        let frame = self
            .version
            .encode(Packet::Publish(forward.publish, properties), &mut encoded)
            .ok()
            .and_then(|()| next_frame(&mut encoded, usize::MAX).ok().flatten());
        let meta = frame.as_ref().and_then(|f| f.publish_meta());
        let (Some(frame), Some(meta)) = (frame, meta) else {
            tracing::error!("cannot encode a message for the device");
            return None;
        };
        let router_ack = match meta.qos {
            0 => None,
            1 => Some(Packet::PubAck(
                PubAck {
                    pkid: meta.pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            _ => Some(Packet::PubRec(
                PubRec {
                    pkid: meta.pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )),
        };

        let subscriptions: Vec<_> = self.subscriptions.matching(&topic).collect();
        if let Some(origin) = &origin {
            // [MQTT-3.8.3-3]: No Local never sends a client its own messages.
            if origin.client_id == *self.client_id
                && !subscriptions.is_empty()
                && subscriptions.iter().all(|s| s.no_local && !s.shared)
            {
                skip = skip.or(Some("no_local"));
            }
        }
        if retained_at_subscribe
            && !subscriptions.is_empty()
            && subscriptions
                .iter()
                .all(|s| s.retain_handling == RetainHandling::Never)
        {
            skip = skip.or(Some("retain_handling"));
        }
        // [MQTT-3.3.4-2]: overlapping subscriptions deliver at the highest QoS
        // granted; [MQTT-3.8.4-8]: never above the publisher's.
        let granted = subscriptions
            .iter()
            .map(|s| s.qos)
            .max()
            .unwrap_or(meta.qos);
        let qos = origin.as_ref().map_or(granted, |o| o.qos.min(granted));
        if qos == 0 && !connected {
            // A session whose device is away keeps QoS 1/2 messages only.
            skip = skip.or(Some("qos0_while_away"));
        }
        if !connected && self.outbox.is_full() {
            skip = skip.or(Some("session_queue_full"));
        }
        let retain = if retained_at_subscribe {
            true
        } else {
            // [MQTT-3.3.1-12]/[MQTT-3.3.1-13]: live messages carry the retain
            // flag only for Retain As Published subscriptions.
            origin.as_ref().is_some_and(|o| o.retain)
                && subscriptions.iter().any(|s| s.retain_as_published)
                && self.version == Version::V5
        };
        let queued = if qos == meta.qos && retain == meta.retain && !meta.dup {
            let header = frame.fixed_header_len();
            let topic_len = u16::from_be_bytes([frame.bytes[header], frame.bytes[header + 1]]);
            let pkid_at = header + 2 + usize::from(topic_len);
            Queued {
                frame: frame.bytes,
                qos,
                pkid_at,
            }
        } else {
            reencode(&frame.bytes, frame.fixed_header_len(), qos, retain)
        };
        if queued.frame.len() > self.client_max_packet_size {
            // [MQTT-3.1.2-25]: never send a client more than it accepts.
            skip = skip.or(Some("too_large_for_client"));
        }
        match skip {
            Some(reason) => events::DeliverySkipped { reason }.emit(),
            None => self.outbox.queue(queued),
        }
        router_ack
    }
}
