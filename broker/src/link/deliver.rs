//! Messages from the router to the device, subscriptions, and the
//! acknowledgement flows between them.
//!
//! Every delivery is decided by the MQTT rules the router does not apply (see
//! `outgoing`); whatever the device does not get, or gets at a lower QoS, is
//! acknowledged to the router by the gateway, in the router's order. It never
//! passes the private origin property on to a device.

use std::time::SystemTime;

use bytes::BytesMut;
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PubRel, Subscribe, SubscribeProperties, UnsubAck, UnsubAckReason,
    Unsubscribe,
};
use rumqttd::Forward;

use super::codec::{next_frame, Version};
use super::outgoing::{rewrite_publish, Origin};
use super::subscriptions::{split_shared, RetainHandling};
use super::{End, Link};
use crate::events;

impl Link {
    /// Decides and writes one message the router forwards to this device.
    pub(super) fn handle_forward(&mut self, forward: Forward) -> Result<(), End> {
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
        if let Err(error) = self
            .version
            .encode(Packet::Publish(forward.publish, properties), &mut encoded)
        {
            tracing::error!(?error, "cannot encode a message for the device");
            return Ok(());
        }
        let Some(frame) = next_frame(&mut encoded, usize::MAX).ok().flatten() else {
            return Ok(());
        };
        let Some(meta) = frame.publish_meta() else {
            return Ok(());
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
        if frame.bytes.len() > self.client_max_packet_size {
            // [MQTT-3.1.2-25]: never send a client more than it accepts.
            skip = skip.or(Some("too_large_for_client"));
        }

        let router_qos = meta.qos;
        // [MQTT-3.8.4-8]: delivered at min(publish QoS, granted QoS).
        let qos = match (&skip, &origin) {
            (Some(_), _) => 0,
            (None, Some(origin)) => origin.qos.min(router_qos),
            (None, None) => router_qos,
        };
        let retain = if retained_at_subscribe {
            true
        } else {
            // [MQTT-3.3.1-12]/[MQTT-3.3.1-13]: live messages carry the retain
            // flag only for Retain As Published subscriptions.
            origin.as_ref().is_some_and(|o| o.retain)
                && subscriptions.iter().any(|s| s.retain_as_published)
                && self.version == Version::V5
        };
        if router_qos > 0 {
            self.ledger.forwarded(meta.pkid, router_qos, qos);
        }
        match skip {
            Some(reason) => events::DeliverySkipped { reason }.emit(),
            None => {
                let bytes = if qos == router_qos && retain == meta.retain {
                    frame.bytes
                } else {
                    rewrite_publish(&frame.bytes, frame.fixed_header_len(), qos, retain)
                };
                self.held.push_back((bytes, qos > 0));
            }
        }
        self.settle()
    }

    /// The device acknowledged a message the router sent it.
    pub(super) fn handle_device_ack(&mut self, packet: Packet) -> Result<(), End> {
        let known = match &packet {
            Packet::PubAck(ack, _) => self.ledger.device_acked(ack.pkid, 1),
            Packet::PubRec(ack, _) => self.ledger.device_acked(ack.pkid, 2),
            Packet::PubComp(ack, _) => self.ledger.device_completed(ack.pkid),
            _ => false,
        };
        if !known {
            tracing::debug!(?packet, "acknowledgement for nothing in flight, ignored");
        }
        self.settle()
    }

    /// The router's PUBREL for a QoS 2 message it sent.
    pub(super) fn handle_router_pubrel(&mut self, pubrel: PubRel) -> Result<(), End> {
        if self.ledger.router_released(pubrel.pkid) {
            self.write(Packet::PubRel(pubrel, None));
        }
        self.settle()
    }

    /// Sends the router every acknowledgement now due, and the device every held
    /// message its Receive Maximum allows.
    fn settle(&mut self) -> Result<(), End> {
        for ack in self.ledger.due() {
            self.relay(ack)?;
        }
        while let Some((_, needs_ack)) = self.held.front() {
            let sent_in_flight = self.ledger.device_in_flight() - self.held_in_flight();
            if *needs_ack && sent_in_flight >= self.client_receive_maximum {
                break;
            }
            let (bytes, _) = self.held.pop_front().expect("front exists");
            self.wbuf.extend_from_slice(&bytes);
        }
        Ok(())
    }

    /// Held QoS 1/2 messages (counted by the ledger, not yet on the wire).
    fn held_in_flight(&self) -> usize {
        self.held.iter().filter(|(_, needs_ack)| *needs_ack).count()
    }

    pub(super) fn handle_subscribe(
        &mut self,
        subscribe: Subscribe,
        properties: Option<SubscribeProperties>,
    ) -> Result<(), End> {
        for filter in &subscribe.filters {
            let (path, shared) = split_shared(&filter.path);
            if tributary_bridge::route::filter_problem(path).is_some()
                || (shared && filter.path.split('/').nth(1).is_none_or(str::is_empty))
            {
                tracing::debug!(filter = %filter.path, "invalid topic filter");
                return Err(End::Protocol(
                    DisconnectReasonCode::TopicFilterInvalid,
                    "invalid_topic_filter",
                ));
            }
            if shared && filter.nolocal {
                // [MQTT-3.8.3-4]
                return Err(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "no_local_on_shared_subscription",
                ));
            }
        }
        for filter in &subscribe.filters {
            self.subscriptions.subscribe(filter);
        }
        self.relay(Packet::Subscribe(subscribe, properties))
    }

    /// Answers UNSUBSCRIBE from the gateway's own table (the router sends no
    /// UNSUBACK for a filter it does not have, and one per filter otherwise).
    pub(super) fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), End> {
        let mut existing = Vec::new();
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|path| {
                if self.subscriptions.unsubscribe(path) {
                    existing.push(path.clone());
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        if !existing.is_empty() {
            self.relay(Packet::Unsubscribe(
                Unsubscribe {
                    pkid: unsubscribe.pkid,
                    filters: existing,
                },
                None,
            ))?;
        }
        self.write(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
        Ok(())
    }
}
