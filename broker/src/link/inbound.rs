//! The inbound side of a connection: publishes from the device, their topic
//! checks and aliases, the Kafka gate, the QoS 2 state and the QoS 0 budget,
//! and the acknowledgements that go back in arrival order once Kafka answered.
//!
//! It never acknowledges a routed QoS 1/2 publish before every one of its Kafka
//! delivery reports is positive.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};

use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRel, Publish, PublishProperties,
};
use tributary_bridge::{DeliveryError, DeliveryFailure, MqttPublish, Pace};

use super::codec::{self, Version};
use super::connection::Connection;
use super::forward::{mqtt_properties, WhenFull};
use super::gate::{AllDelivered, Gate, Released};
use super::origin::Origin;
use super::retained::RetainedMessage;
use super::{valid_topic_name, End, LinkContext, TOPIC_ALIAS_MAX};
use crate::auth::{Access, Identity};
use crate::events;

/// A QoS 0 record awaiting Kafka's report, holding its share of the budget.
type Qos0Delivery = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a connection has received and not yet finished with.
pub struct Inbound {
    gate: Gate<Ticket, AllDelivered>,
    qos0: FuturesUnordered<Qos0Delivery>,
    /// QoS 1 publishes waiting in the gate.
    qos1_in_gate: usize,
    /// QoS 2 packet ids waiting in the gate (not yet PUBREC'd).
    qos2_in_gate: HashSet<u16>,
    /// QoS 2 packet ids PUBREC'd (so in Kafka) and awaiting PUBREL: the
    /// session's, kept while the device is away [MQTT-4.3.3].
    awaiting_pubrel: HashSet<u16>,
    /// MQTT 5 topic aliases set by the client.
    topic_aliases: HashMap<u16, Bytes>,
    /// The producer pace this connection's Kafka records take. It changes
    /// only while none of them is in the gate, so they stay in order.
    pace: Pace,
    /// A change of pace waits for the gate to empty; no publish is read
    /// meanwhile.
    changing_pace: bool,
}

/// What a gate entry does when released.
pub enum Ticket {
    /// A new QoS 1/2 publish: ack it, and hand it to the router if Kafka has it.
    Publish {
        pkid: u16,
        qos: u8,
        /// Boxed, in one allocation: the window holds many of these.
        message: Box<Routed>,
    },
    /// A re-sent QoS 2 publish still awaiting PUBREL: PUBREC again, nothing else.
    Repeat { pkid: u16 },
    /// A publish the ACL refused: answered in its turn, nothing else.
    Denied { pkid: u16, qos: u8 },
}

/// A publish on its way to the router once Kafka has it.
pub struct Routed {
    publish: Publish,
    properties: Option<PublishProperties>,
    /// What to store if it is a retained publish.
    retained: Option<Box<RetainedMessage>>,
}

impl Inbound {
    /// `awaiting_pubrel` comes from a resumed session.
    pub fn new(awaiting_pubrel: HashSet<u16>) -> Inbound {
        Inbound {
            gate: Gate::default(),
            qos0: FuturesUnordered::new(),
            qos1_in_gate: 0,
            qos2_in_gate: HashSet::new(),
            awaiting_pubrel,
            topic_aliases: HashMap::new(),
            pace: Pace::default(),
            changing_pace: false,
        }
    }

    /// Follows the load: takes the pace the producer suggests now if
    /// nothing is in the gate, else holds further publishes until it empties
    /// (see [`Inbound::changing_pace`]).
    pub fn settle_pace(&mut self, ctx: &LinkContext) {
        let wanted = ctx.forwarder.pace_for(self.pace);
        if wanted == self.pace {
            self.changing_pace = false;
        } else if self.gate.is_empty() {
            events::PaceChanged { to: wanted }.emit();
            self.pace = wanted;
            self.changing_pace = false;
        } else {
            self.changing_pace = true;
        }
    }

    /// Whether reading publishes waits for the gate to empty, so the
    /// connection can change pace without reordering its records.
    pub fn changing_pace(&self) -> bool {
        self.changing_pace
    }

    /// What the session keeps of this side when the connection ends.
    pub fn into_awaiting_pubrel(self) -> HashSet<u16> {
        self.awaiting_pubrel
    }

    /// QoS 1/2 publishes received and not yet completed (PUBACK sent, or for
    /// QoS 2 PUBREL received): what MQTT 5 Receive Maximum limits.
    fn in_flight(&self) -> usize {
        self.qos1_in_gate + self.qos2_in_gate.len() + self.awaiting_pubrel.len()
    }

    /// Publishes waiting for Kafka.
    pub fn waiting(&self) -> usize {
        self.gate.len()
    }

    /// The next publish whose reports are in, in arrival order, while
    /// driving the QoS 0 deliveries (their reports free the budget; one
    /// finishing returns `None`). Pending forever while nothing waits.
    pub async fn next_release(&mut self) -> Option<Released<Ticket, DeliveryError>> {
        let Inbound { gate, qos0, .. } = self;
        tokio::select! {
            Some(released) = gate.next(), if !gate.is_empty() => Some(released),
            Some(()) = qos0.next(), if !qos0.is_empty() => None,
            // Both idle (or done): nothing to report until the next publish.
            else => std::future::pending().await,
        }
    }

    /// The next publish whose reports are already in, without waiting: what
    /// the loop handles in the same turn as a release, so one write to the
    /// device and one hand-over to the router carry them all. QoS 0 reports
    /// already in are taken on the way.
    pub fn try_release(&mut self) -> Option<Released<Ticket, DeliveryError>> {
        // A no-op waker is safe here: the gate is polled again with the
        // task's own waker before the task sleeps (see `next_release`).
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        // QoS 0 reports only give budget back: take every one that is in.
        while let Poll::Ready(Some(())) = self.qos0.poll_next_unpin(&mut cx) {}
        match self.gate.poll_release(&mut cx) {
            Poll::Ready(released) => released,
            Poll::Pending => None,
        }
    }

    /// Handles one PUBLISH; what the router gets at once (QoS 0) is returned.
    #[allow(clippy::too_many_arguments)]
    pub async fn handle_publish(
        &mut self,
        ctx: &LinkContext,
        client_id: &Arc<str>,
        identity: &Identity,
        version: Version,
        meta: codec::PublishMeta,
        mut publish: Publish,
        mut properties: Option<PublishProperties>,
    ) -> Result<Option<Packet>, End> {
        let received = Instant::now();
        self.resolve_topic_alias(&mut publish, properties.as_mut())?;
        let topic = match std::str::from_utf8(&publish.topic) {
            Ok(topic) if valid_topic_name(topic) => Arc::<str>::from(topic),
            _ => {
                return Err(End::Protocol(
                    DisconnectReasonCode::TopicNameInvalid,
                    "invalid_topic_name",
                ))
            }
        };
        events::PublishReceived { qos: meta.qos }.emit();
        if properties
            .as_ref()
            .is_some_and(|p| !p.subscription_identifiers.is_empty())
        {
            // [MQTT-3.3.4-6]: only the server sends Subscription Identifiers.
            // (The router would drop the publish lane over it.)
            return Err(End::Protocol(
                DisconnectReasonCode::ProtocolError,
                "subscription_identifier_from_client",
            ));
        }
        if let Some(response_topic) = properties.as_ref().and_then(|p| p.response_topic.as_ref()) {
            if !valid_topic_name(response_topic) {
                // [MQTT-3.3.2-14]: a Response Topic is a topic name.
                return Err(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "invalid_response_topic",
                ));
            }
        }
        // A re-send of a QoS 2 publish already PUBREC'd, or still waiting for
        // Kafka [MQTT-4.3.3]: never produced twice.
        let repeat = meta.qos == 2
            && (self.awaiting_pubrel.contains(&meta.pkid)
                || self.qos2_in_gate.contains(&meta.pkid));
        if version == Version::V5
            && meta.qos > 0
            && !repeat
            && self.in_flight() >= usize::from(ctx.config.receive_maximum)
        {
            // [MQTT-3.3.4-9]: more unacknowledged publishes than announced.
            // (MQTT 3.1.1 has no Receive Maximum; those clients are slowed
            // down by the window instead.)
            return Err(End::Protocol(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                "receive_maximum_exceeded",
            ));
        }

        if repeat {
            // A re-send of a QoS 2 publish we already have [MQTT-4.3.3]: the
            // first copy went (or is going) to Kafka; do not produce it again.
            self.gate.push(
                Ticket::Repeat { pkid: meta.pkid },
                received,
                AllDelivered::new(Ok(Vec::new())),
            );
            return Ok(None);
        }

        if !identity.allows(client_id, Access::Write, &topic) {
            // Neither Kafka nor any subscriber gets it. MQTT 5 says so with
            // 0x87; MQTT 3.1.1 has no refusal, so it is acknowledged and
            // dropped, as Mosquitto does. Answered in its turn [MQTT-4.6].
            events::PublishDenied { qos: meta.qos }.emit();
            if meta.qos == 0 {
                return Ok(None);
            }
            if meta.qos == 2 {
                self.qos2_in_gate.insert(meta.pkid);
            } else {
                self.qos1_in_gate += 1;
            }
            self.gate.push(
                Ticket::Denied {
                    pkid: meta.pkid,
                    qos: meta.qos,
                },
                received,
                AllDelivered::new(Ok(Vec::new())),
            );
            return Ok(None);
        }

        // What the router forgets travels with the message (see `origin`).
        let origin = Origin::now(meta.qos, meta.retain, client_id);
        let message = MqttPublish {
            topic,
            client_id: client_id.clone(),
            qos: meta.qos,
            retain: meta.retain,
            payload: publish.payload.clone(),
            username: identity.username.clone(),
            cert_cn: identity.cert_cn.clone(),
            properties: mqtt_properties(properties.as_ref()),
            received_ms: origin.received_ms,
        };
        // An MQTT 3.1.1 device cannot be told the spool is full: its publish
        // waits for room instead (its window fills, reading stops).
        let when_full = match version {
            Version::V4 => WhenFull::Wait,
            Version::V5 => WhenFull::Refuse,
        };
        let deliveries = ctx.forwarder.forward(&message, self.pace, when_full).await;
        let properties = origin.attach(properties);
        let retained = meta.retain.then(|| {
            Box::new(RetainedMessage {
                topic: publish.topic.clone(),
                payload: publish.payload.clone(),
                properties: properties.clone(),
                origin,
            })
        });
        // Retained messages are the gateway's (see `retained`): the router is
        // given every publish as a plain one.
        let routed = Publish::new(publish.topic, publish.payload, false);
        match meta.qos {
            0 => {
                // Nothing to acknowledge: Kafka and subscribers get it at once.
                for delivery in deliveries.into_iter().flatten() {
                    // Never wait for the budget here: a link waiting would stop
                    // polling its own deliveries, whose permits others wait for.
                    // Reading stops when the budget is empty, so going over it
                    // is limited to the frames already read.
                    let permit = ctx.qos0_budget.clone().try_acquire_owned().ok();
                    self.qos0.push(Box::pin(async move {
                        let _ = delivery.await;
                        drop(permit);
                    }));
                }
                if let Some(retained) = retained {
                    ctx.retained.update(*retained);
                }
                Ok(Some(Packet::Publish(routed, properties)))
            }
            qos => {
                if qos == 2 {
                    self.qos2_in_gate.insert(meta.pkid);
                } else {
                    self.qos1_in_gate += 1;
                }
                let ticket = Ticket::Publish {
                    pkid: meta.pkid,
                    qos,
                    message: Box::new(Routed {
                        publish: routed,
                        properties,
                        retained,
                    }),
                };
                self.gate
                    .push(ticket, received, AllDelivered::new(deliveries));
                Ok(None)
            }
        }
    }

    /// Replaces an MQTT 5 topic alias by its topic [MQTT-3.3.2.3.4].
    fn resolve_topic_alias(
        &mut self,
        publish: &mut Publish,
        properties: Option<&mut PublishProperties>,
    ) -> Result<(), End> {
        let Some(alias) = properties.and_then(|p| p.topic_alias.take()) else {
            if publish.topic.is_empty() {
                // [MQTT-3.3.2-1]/[MQTT-3.3.4]: an empty topic needs an alias.
                return Err(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "empty_topic_without_alias",
                ));
            }
            return Ok(());
        };
        let invalid = End::Protocol(
            DisconnectReasonCode::TopicAliasInvalid,
            "topic_alias_invalid",
        );
        if alias == 0 || alias > TOPIC_ALIAS_MAX {
            return Err(invalid);
        }
        if publish.topic.is_empty() {
            publish.topic = self.topic_aliases.get(&alias).cloned().ok_or(invalid)?;
        } else {
            self.topic_aliases.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    /// Acknowledges a released publish; what the router gets now that Kafka
    /// has it is returned.
    pub fn handle_release(
        &mut self,
        released: Released<Ticket, DeliveryError>,
        ctx: &LinkContext,
        conn: &mut Connection,
    ) -> Result<Option<Packet>, End> {
        let version = conn.version();
        let Released {
            ticket,
            outcome,
            received,
        } = released;
        let (pkid, qos, routed) = match ticket {
            Ticket::Publish { pkid, qos, message } => (pkid, qos, Some(message)),
            Ticket::Denied { pkid, qos } => {
                self.leave_gate(pkid, qos);
                match version {
                    Version::V5 => write_ack(conn, qos, pkid, AckReason::NotAuthorized),
                    Version::V4 => {
                        if qos == 2 {
                            self.awaiting_pubrel.insert(pkid);
                        }
                        write_ack(conn, qos, pkid, AckReason::Success);
                    }
                }
                return Ok(None);
            }
            Ticket::Repeat { pkid } => {
                // Its first copy was released just before: it answers the same.
                let reason = if self.awaiting_pubrel.contains(&pkid) {
                    PubRecReason::Success
                } else if version == Version::V5 {
                    PubRecReason::UnspecifiedError
                } else {
                    return Err(End::KafkaRefused);
                };
                conn.write(Packet::PubRec(PubRec { pkid, reason }, None));
                return Ok(None);
            }
        };
        self.leave_gate(pkid, qos);
        let outcome = match outcome {
            // An MQTT 3.1.1 device cannot be told "kept, but not where it
            // was meant to go": the message is in Kafka, so it is accepted
            // (otherwise it would be sent again and again).
            Err(DeliveryError::DeadLettered(_)) if version == Version::V4 => Ok(()),
            outcome => outcome,
        };
        match outcome {
            Ok(()) => {
                if qos == 2 {
                    self.awaiting_pubrel.insert(pkid);
                }
                write_ack(conn, qos, pkid, AckReason::Success);
                events::PublishAcknowledged {
                    qos,
                    latency: received.elapsed(),
                }
                .emit();
                Ok(routed.map(|message| {
                    let Routed {
                        publish,
                        properties,
                        retained,
                    } = *message;
                    if let Some(retained) = retained {
                        ctx.retained.update(*retained);
                    }
                    Packet::Publish(publish, properties)
                }))
            }
            Err(error) => {
                events::PublishRefused { qos, error: &error }.emit();
                match version {
                    Version::V5 => {
                        write_ack(conn, qos, pkid, AckReason::from(Some(error.failure())));
                        Ok(None)
                    }
                    Version::V4 => Err(End::KafkaRefused),
                }
            }
        }
    }

    /// A QoS 1/2 publish no longer waits in the gate.
    fn leave_gate(&mut self, pkid: u16, qos: u8) {
        match qos {
            1 => self.qos1_in_gate = self.qos1_in_gate.saturating_sub(1),
            _ => {
                self.qos2_in_gate.remove(&pkid);
            }
        }
    }

    pub fn handle_pubrel(&mut self, pubrel: PubRel, conn: &mut Connection) {
        let reason = if self.awaiting_pubrel.remove(&pubrel.pkid) {
            PubCompReason::Success
        } else {
            PubCompReason::PacketIdentifierNotFound
        };
        conn.write(Packet::PubComp(
            PubComp {
                pkid: pubrel.pkid,
                reason,
            },
            None,
        ));
    }
}

/// PUBACK (QoS 1) or PUBREC (QoS 2) with `reason` (MQTT 5's code).
fn write_ack(conn: &mut Connection, qos: u8, pkid: u16, reason: AckReason) {
    let packet = if qos == 1 {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: reason.puback(),
            },
            None,
        )
    } else {
        Packet::PubRec(
            PubRec {
                pkid,
                reason: reason.pubrec(),
            },
            None,
        )
    };
    conn.write(packet);
}

/// The MQTT 5 reason a publish is acknowledged with, from what Kafka said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckReason {
    Success,
    /// 0x97: the local producer queue stayed full.
    QuotaExceeded,
    /// 0x87: Tributary's ACL, or Kafka's, refuses the topic.
    NotAuthorized,
    /// 0x83: valid, but Kafka cannot take it (no such topic, too large).
    ImplementationSpecific,
    /// 0x80: Kafka did not answer in time, or failed otherwise.
    Unspecified,
    /// 0x99: the payload is not what the route's format or templates need.
    PayloadFormatInvalid,
    /// 0x90: the route cannot make a Kafka topic or key from this topic
    /// (or this client).
    TopicNameInvalid,
}

impl From<Option<DeliveryFailure>> for AckReason {
    fn from(failure: Option<DeliveryFailure>) -> AckReason {
        match failure {
            None => AckReason::Success,
            Some(DeliveryFailure::QueueFull | DeliveryFailure::SpoolFull) => {
                AckReason::QuotaExceeded
            }
            Some(DeliveryFailure::NotAuthorized) => AckReason::NotAuthorized,
            Some(DeliveryFailure::InvalidPayload) => AckReason::PayloadFormatInvalid,
            Some(DeliveryFailure::Unroutable) => AckReason::TopicNameInvalid,
            Some(DeliveryFailure::UnknownTopic | DeliveryFailure::MessageTooLarge) => {
                AckReason::ImplementationSpecific
            }
            Some(
                DeliveryFailure::Timeout
                | DeliveryFailure::Canceled
                | DeliveryFailure::Kafka
                | DeliveryFailure::SpoolFailed
                | DeliveryFailure::SchemaRegistry,
            ) => AckReason::Unspecified,
        }
    }
}

impl AckReason {
    fn puback(self) -> PubAckReason {
        match self {
            AckReason::Success => PubAckReason::Success,
            AckReason::QuotaExceeded => PubAckReason::QuotaExceeded,
            AckReason::NotAuthorized => PubAckReason::NotAuthorized,
            AckReason::ImplementationSpecific => PubAckReason::ImplementationSpecificError,
            AckReason::Unspecified => PubAckReason::UnspecifiedError,
            AckReason::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
            AckReason::TopicNameInvalid => PubAckReason::TopicNameInvalid,
        }
    }

    fn pubrec(self) -> PubRecReason {
        match self {
            AckReason::Success => PubRecReason::Success,
            AckReason::QuotaExceeded => PubRecReason::QuotaExceeded,
            AckReason::NotAuthorized => PubRecReason::NotAuthorized,
            AckReason::ImplementationSpecific => PubRecReason::ImplementationSpecificError,
            AckReason::Unspecified => PubRecReason::UnspecifiedError,
            AckReason::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
            AckReason::TopicNameInvalid => PubRecReason::TopicNameInvalid,
        }
    }
}
