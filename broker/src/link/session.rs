//! A client's session: what outlives a network connection when the Session
//! Expiry Interval (or a 3.1.1 persistent session) says so. Its subscriptions
//! with their options, and its outbox of messages for the device.
//!
//! Messages from the router are decided here, whether the device is connected
//! or away: the router forwards every message at the subscription's QoS and
//! forgets the publisher's QoS, retain flag, origin and arrival time, which the
//! gateway carries through the router in a private property ([`Origin`]) and
//! strips here. It never passes that property on to a device.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;
use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, PubRec, PubRecReason, Publish, PublishProperties,
};

use super::codec::{next_frame, Frame, PublishMeta, Version};
use super::directory::{Letter, Mailbox};
use super::origin::{unix_ms, Origin};
use super::outbox::{reencode, Outbox, Queued, Share};
use super::retained::RetainedMessage;
use super::shares::Handoff;
use super::subscriptions::{Options, Subscriptions};
use crate::auth::{Access, Identity};
use crate::events;

pub struct Session {
    pub client_id: Arc<str>,
    /// Who the client last connected as: its ACL decides what it may read.
    pub identity: Arc<Identity>,
    pub version: Version,
    pub subscriptions: Subscriptions,
    pub outbox: Outbox,
    /// The client's Maximum Packet Size (MQTT 5), else unlimited.
    pub client_max_packet_size: usize,
    /// QoS 2 packet ids from the device, PUBREC'd (so in Kafka) and awaiting
    /// PUBREL: a PUBREL after a reconnect still completes [MQTT-4.3.3].
    pub awaiting_pubrel: HashSet<u16>,
    /// What Kafka sources deliver to it directly (see `directory`); there
    /// while it has subscriptions.
    pub mailbox: Option<Mailbox>,
    copies: Copies,
}

/// Messages of which the router has more copies to send this session (one
/// per overlapping subscription), so that the device gets only the first.
#[derive(Default)]
struct Copies {
    /// Message id and copies still to come; oldest first, bounded (a copy the
    /// router never sends must not hold memory forever).
    expected: VecDeque<(u64, usize)>,
}

/// Messages [`Copies`] remembers at most.
const MAX_EXPECTED_COPIES: usize = 1024;

impl Copies {
    /// Whether this is the first of `copies` copies of message `id`.
    fn first_of(&mut self, id: u64, copies: usize) -> bool {
        match self.expected.iter().position(|(seen, _)| *seen == id) {
            Some(at) => {
                self.expected[at].1 -= 1;
                if self.expected[at].1 == 0 {
                    self.expected.remove(at);
                }
                false
            }
            None => {
                if self.expected.len() == MAX_EXPECTED_COPIES {
                    self.expected.pop_front();
                }
                self.expected.push_back((id, copies - 1));
                true
            }
        }
    }
}

impl Session {
    pub fn new(client_id: Arc<str>, version: Version, identity: Arc<Identity>) -> Session {
        Session {
            client_id,
            identity,
            version,
            subscriptions: Subscriptions::default(),
            outbox: Outbox::default(),
            client_max_packet_size: usize::MAX,
            awaiting_pubrel: HashSet::new(),
            mailbox: None,
            copies: Copies::default(),
        }
    }

    /// Nothing to keep but its existence: no subscriptions, nothing owed.
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty() && self.outbox.is_empty() && self.awaiting_pubrel.is_empty()
    }

    /// Takes one message the router forwards: queues it for the device as MQTT
    /// requires (or not at all), and returns the acknowledgement the router is
    /// owed at once, since the message is now the session's.
    /// `connected` is false while the device is away: QoS 0 is then dropped.
    pub fn accept(
        &mut self,
        publish: Publish,
        properties: Option<PublishProperties>,
        connected: bool,
    ) -> Option<Packet> {
        self.decide(publish, properties, connected, true)
    }

    /// Takes one message a Kafka source delivered to this session directly:
    /// decided as the router's are, but it comes once, whatever the number
    /// of subscriptions it matches. The caller made sure the outbox has room.
    pub fn accept_letter(&mut self, letter: Letter, connected: bool) {
        let _ = self.decide(letter.publish, letter.properties, connected, false);
    }

    fn decide(
        &mut self,
        publish: Publish,
        properties: Option<PublishProperties>,
        connected: bool,
        one_copy_per_subscription: bool,
    ) -> Option<Packet> {
        let mut properties = properties;
        let origin = Origin::detach(&mut properties);
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let (shared, plain): (Vec<_>, Vec<_>) = self
            .subscriptions
            .matching(&topic)
            .partition(|(_, o)| o.shared);
        // A message that came through shared subscriptions only is a share,
        // which another member may take over (see `shares`).
        let share = (plain.is_empty() && !shared.is_empty()).then(|| {
            Arc::new(Share {
                filter: shared[0].0.into(),
                qos: origin.as_ref().map_or(2, |o| o.qos),
            })
        });
        let subscriptions: Vec<Options> = match share {
            Some(_) => shared,
            None => plain,
        }
        .into_iter()
        .map(|(_, o)| o.clone())
        .collect();
        // [MQTT-3.3.4-3]: one copy carries every matching Subscription
        // Identifier (the router sent its filter's only).
        let mut ids: Vec<usize> = subscriptions.iter().filter_map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() || properties.is_some() {
            properties
                .get_or_insert_with(PublishProperties::default)
                .subscription_identifiers = ids;
        }

        let (frame, meta, expired) = self.encode(publish, properties, origin.as_ref())?;
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
        if expired {
            return router_ack;
        }
        if !self.identity.allows(&self.client_id, Access::Read, &topic) {
            // The subscription was granted; this topic is not for this
            // client's eyes (a `#` subscriber sees only what it may read).
            events::DeliveryDenied.emit();
            return router_ack;
        }
        if one_copy_per_subscription && share.is_none() && subscriptions.len() > 1 {
            if let Some(origin) = &origin {
                if !self.copies.first_of(origin.id, subscriptions.len()) {
                    // The router sends one copy per matching subscription;
                    // the device gets one [MQTT-3.3.4-2].
                    return router_ack;
                }
            }
        }
        // [MQTT-3.3.4-2]: overlapping subscriptions deliver at the highest QoS
        // granted.
        let granted = subscriptions
            .iter()
            .map(|s| s.qos)
            .max()
            .unwrap_or(meta.qos);
        // [MQTT-3.3.1-12]/[MQTT-3.3.1-13]: live messages carry the retain flag
        // only for Retain As Published subscriptions.
        let retain = origin.as_ref().is_some_and(|o| o.retain)
            && subscriptions.iter().any(|s| s.retain_as_published)
            && self.version == Version::V5;
        let delivery = Delivery {
            frame,
            origin: origin.as_ref(),
            granted,
            retain,
            no_local: !subscriptions.is_empty()
                && subscriptions.iter().all(|s| s.no_local && !s.shared),
            connected,
            share,
        };
        self.queue(delivery);
        router_ack
    }

    /// Queues a share another member of the shared subscription left
    /// unacknowledged; `options` are this client's for that subscription.
    pub fn accept_handoff(&mut self, handoff: Handoff, options: &Options, connected: bool) {
        let publish = Publish::new(handoff.topic, handoff.payload, false);
        let properties = handoff.properties.map(|p| *p);
        let Some((frame, _, false)) = self.encode(publish, properties, None) else {
            return;
        };
        let delivery = Delivery {
            frame,
            origin: None,
            granted: options.qos.min(handoff.qos),
            retain: false,
            no_local: false,
            connected,
            share: Some(Arc::new(Share {
                filter: handoff.filter,
                qos: handoff.qos,
            })),
        };
        self.queue(delivery);
    }

    /// Queues a retained message for a subscription just made with `options`
    /// (and its MQTT 5 Subscription Identifier).
    pub fn accept_retained(
        &mut self,
        message: &RetainedMessage,
        options: &Options,
        subscription_id: Option<usize>,
    ) {
        let mut properties = message.properties.clone();
        let origin = Origin::detach(&mut properties);
        if let Some(id) = subscription_id {
            properties
                .get_or_insert_with(PublishProperties::default)
                .subscription_identifiers = vec![id];
        }
        let readable = std::str::from_utf8(&message.topic)
            .is_ok_and(|topic| self.identity.allows(&self.client_id, Access::Read, topic));
        if !readable {
            events::DeliveryDenied.emit();
            return;
        }
        let publish = Publish::new(message.topic.clone(), message.payload.clone(), true);
        let Some((frame, _, false)) = self.encode(publish, properties, origin.as_ref()) else {
            return;
        };
        let delivery = Delivery {
            frame,
            origin: origin.as_ref(),
            granted: options.qos,
            retain: true,
            no_local: options.no_local,
            connected: true,
            share: None,
        };
        self.queue(delivery);
    }

    /// Encodes a message for this device, with the Message Expiry Interval it
    /// has left [MQTT-3.3.2-6]; the flag says it has expired (and must not be
    /// sent, though the router may still be owed its acknowledgement).
    fn encode(
        &self,
        publish: Publish,
        mut properties: Option<PublishProperties>,
        origin: Option<&Origin>,
    ) -> Option<(Frame, PublishMeta, bool)> {
        let mut expired = false;
        if let (Some(origin), Some(props)) = (origin, properties.as_mut()) {
            match origin.remaining_expiry(props.message_expiry_interval, SystemTime::now()) {
                Some(0) => {
                    events::DeliverySkipped { reason: "expired" }.emit();
                    expired = true;
                }
                Some(left) => props.message_expiry_interval = Some(left),
                None => {}
            }
        }
        let mut encoded = BytesMut::new();
        let frame = self
            .version
            .encode(Packet::Publish(publish, properties), &mut encoded)
            .ok()
            .and_then(|()| next_frame(&mut encoded, usize::MAX).ok().flatten());
        let meta = frame.as_ref().and_then(|f| f.publish_meta());
        match (frame, meta) {
            (Some(frame), Some(meta)) => Some((frame, meta, expired)),
            _ => {
                tracing::error!("cannot encode a message for the device");
                None
            }
        }
    }

    /// Decides one delivery and queues it, or counts why not.
    fn queue(&mut self, delivery: Delivery<'_>) {
        let Delivery {
            frame,
            origin,
            granted,
            retain,
            no_local,
            connected,
            share,
        } = delivery;
        let Some(meta) = frame.publish_meta() else {
            return;
        };
        // [MQTT-3.8.4-8]: never above the publisher's QoS.
        let qos = origin.map_or(granted, |o| o.qos.min(granted));
        let header = frame.fixed_header_len();
        let mut queued = if qos == meta.qos && retain == meta.retain && !meta.dup {
            Queued::as_encoded(frame.bytes, header, qos)
        } else {
            reencode(&frame.bytes, header, qos, retain)
        };
        queued.share = share;
        if self.version == Version::V5 {
            queued = queued.expiring(unix_ms(SystemTime::now()));
        }
        let skip = if no_local && origin.is_some_and(|o| o.client_id == *self.client_id) {
            // [MQTT-3.8.3-3]: No Local never sends a client its own messages.
            Some("no_local")
        } else if qos == 0 && !connected {
            // A session whose device is away keeps QoS 1/2 messages only.
            Some("qos0_while_away")
        } else if !connected && self.outbox.is_full() {
            Some("session_queue_full")
        } else if queued.frame.len() > self.client_max_packet_size {
            // [MQTT-3.1.2-25]: never send a client more than it accepts.
            Some("too_large_for_client")
        } else {
            None
        };
        match skip {
            Some(reason) => events::DeliverySkipped { reason }.emit(),
            None => self.outbox.queue(queued),
        }
    }
}

/// One message for this session's device, before its QoS is settled.
struct Delivery<'a> {
    frame: Frame,
    origin: Option<&'a Origin>,
    /// The highest QoS granted by the matching subscriptions.
    granted: u8,
    retain: bool,
    /// Every matching subscription has No Local.
    no_local: bool,
    connected: bool,
    share: Option<Arc<Share>>,
}
