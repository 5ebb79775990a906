//! Messages from the router to the device, subscriptions, and the
//! acknowledgement flows on both sides.
//!
//! Every delivery is decided by the MQTT rules the router does not apply (see
//! `session`) and queued in the session's outbox, which numbers it for the
//! device; the router is acknowledged as soon as the session has the message.

use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PubComp, PubCompReason, PubRecReason, PubRel, Subscribe,
    SubscribeProperties, UnsubAck, UnsubAckReason, Unsubscribe,
};
use rumqttd::Forward;
use std::time::SystemTime;

use super::outbox::Acked;
use super::shares::Handoff;
use super::subscriptions::{split_shared, Options, RetainHandling};
use super::{End, Link};

/// Retained messages owed for one SUBSCRIBE, sent after its SUBACK.
pub struct RetainedDue {
    pkid: u16,
    /// The filters (as subscribed) whose retained messages are owed.
    filters: Vec<(String, Options)>,
    subscription_id: Option<usize>,
}

/// Packet id of the gateway's own SUBSCRIBE and UNSUBSCRIBE towards the router:
/// never a device's, which are non-zero [MQTT-2.2.1-3].
pub const OWN_PKID: u16 = 0;

impl Link {
    /// One message the router forwards to this device: into the session's
    /// outbox, acknowledged to the router at once.
    pub(super) fn handle_forward(&mut self, forward: Forward) -> Result<(), End> {
        if let Some(ack) = self.session.accept(forward, true) {
            self.relay(ack)?;
        }
        self.settle()
    }

    /// The device acknowledged a message sent to it.
    pub(super) fn handle_device_ack(&mut self, packet: Packet) -> Result<(), End> {
        let outbox = &mut self.session.outbox;
        let known = match &packet {
            Packet::PubAck(ack, _) => outbox.puback(ack.pkid),
            Packet::PubRec(ack, _) => {
                let success = matches!(
                    ack.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                );
                match outbox.pubrec(ack.pkid, success) {
                    Acked::Release(pkid) => {
                        self.write(Packet::PubRel(
                            PubRel {
                                pkid,
                                reason: rumqttd::protocol::PubRelReason::Success,
                            },
                            None,
                        ));
                        true
                    }
                    Acked::Done => !success,
                }
            }
            Packet::PubComp(ack, _) => outbox.pubcomp(ack.pkid),
            _ => false,
        };
        if !known {
            tracing::debug!(?packet, "acknowledgement for nothing in flight, ignored");
        }
        self.settle()
    }

    /// The router's PUBREL for a QoS 2 message the session already has.
    pub(super) fn handle_router_pubrel(&mut self, pubrel: PubRel) -> Result<(), End> {
        self.relay(Packet::PubComp(
            PubComp {
                pkid: pubrel.pkid,
                reason: PubCompReason::Success,
            },
            None,
        ))
    }

    /// Sends the device every queued message its Receive Maximum allows.
    pub(super) fn settle(&mut self) -> Result<(), End> {
        while let Some(frame) = self.session.outbox.next(self.client_window) {
            self.wbuf.extend_from_slice(&frame);
        }
        Ok(())
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
        let mut due = RetainedDue {
            pkid: subscribe.pkid,
            filters: Vec::new(),
            subscription_id: properties.as_ref().and_then(|p| p.id),
        };
        for filter in &subscribe.filters {
            let new = self
                .session
                .subscriptions
                .subscribe(filter, due.subscription_id);
            let Some(options) = self.session.subscriptions.get(&filter.path) else {
                continue;
            };
            // [MQTT-3.3.1-9]/[MQTT-3.8.4-4]: by Retain Handling; never for a
            // shared subscription [MQTT-4.8.2].
            let send = !options.shared
                && match options.retain_handling {
                    RetainHandling::OnSubscribe => true,
                    RetainHandling::OnNewSubscription => new,
                    RetainHandling::Never => false,
                };
            if send {
                due.filters.push((filter.path.clone(), options.clone()));
            }
        }
        if !due.filters.is_empty() {
            self.retained_due.push(due);
        }
        for filter in &subscribe.filters {
            if split_shared(&filter.path).1 {
                let sender = self.handoff_sender();
                self.ctx.shares.join(&filter.path, self.member_id, sender);
            }
        }
        self.relay(Packet::Subscribe(subscribe, properties))
    }

    /// A share another member left unacknowledged: this client's now, if it
    /// still has the subscription; else on to another member.
    pub(super) fn handle_handoff(&mut self, handoff: Handoff) -> Result<(), End> {
        match self.session.subscriptions.get(&handoff.filter).cloned() {
            Some(options) => self.session.accept_handoff(handoff, &options, true),
            None => {
                let _ = self.ctx.shares.hand_off(handoff, self.member_id);
            }
        }
        self.settle()
    }

    /// Queues the retained messages owed for the SUBSCRIBE `pkid`, once its
    /// SUBACK is on its way: they follow it, as the subscription they belong
    /// to exists only from then on.
    pub(super) fn send_retained(&mut self, pkid: u16) -> Result<(), End> {
        let Some(at) = self.retained_due.iter().position(|d| d.pkid == pkid) else {
            return Ok(());
        };
        let due = self.retained_due.remove(at);
        let now = SystemTime::now();
        for (filter, options) in &due.filters {
            for message in self.ctx.retained.matching(filter, now) {
                self.session
                    .accept_retained(&message, options, due.subscription_id);
            }
        }
        self.settle()
    }

    /// Answers UNSUBSCRIBE from the gateway's own table (the router sends no
    /// UNSUBACK for a filter it does not have, and one per filter otherwise).
    pub(super) fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), End> {
        if unsubscribe.filters.is_empty() {
            // [MQTT-3.10.3-2]: at least one filter.
            return Err(End::Protocol(
                DisconnectReasonCode::ProtocolError,
                "unsubscribe_without_filters",
            ));
        }
        let mut existing = Vec::new();
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|path| {
                if self.session.subscriptions.unsubscribe(path) {
                    self.ctx.shares.leave(path, self.member_id);
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
