//! The outbound side of a connection: the session (subscriptions and the
//! outbox), messages from the router to the device, the acknowledgement flows
//! both ways, retained messages owed, and shared subscriptions.
//!
//! Every delivery is decided by the MQTT rules the router does not apply (see
//! `session`) and queued in the session's outbox, which numbers it for the
//! device; the router is acknowledged as soon as the session has the message.
//! It never sends a device more QoS 1/2 messages than its Receive Maximum.

use std::time::SystemTime;

use bytes::BytesMut;
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PubComp, PubCompReason, PubRecReason, PubRel, PubRelReason,
    Publish, PublishProperties, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode,
    UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::codec::Version;
use super::connection::Connection;
use super::directory::{next_letter, Letter};
use super::outbox::Acked;
use super::session::Session;
use super::shares::Handoff;
use super::subscriptions::{split_shared, Options, RetainHandling};
use super::topic_alias::TopicAliases;
use super::{End, LinkContext};
use crate::auth::Access;
use crate::events;
use crate::router::Port;

/// Retained messages owed for one SUBSCRIBE, sent after its SUBACK.
struct RetainedDue {
    pkid: u16,
    /// The filters (as subscribed) whose retained messages are owed.
    filters: Vec<(String, Options)>,
    subscription_id: Option<usize>,
}

/// Packet id of the gateway's own SUBSCRIBE and UNSUBSCRIBE towards the router:
/// never a device's, which are non-zero [MQTT-2.2.1-3].
pub const OWN_PKID: u16 = 0;

/// A SUBSCRIBE's packet id and the positions of its filters the ACL refused.
type Refused = (u16, Vec<usize>);

/// A message for the session from elsewhere than the router.
pub enum Delivered {
    Handoff(Handoff),
    Letter(Letter),
}

/// The next share handed to this connection; pending forever before it
/// joins a shared subscription.
async fn next_handoff(
    handoffs: Option<&mut (UnboundedSender<Handoff>, UnboundedReceiver<Handoff>)>,
) -> Option<Handoff> {
    match handoffs {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

pub struct Outbound {
    /// Subscriptions and the outbox: what may outlive this connection.
    session: Session,
    /// QoS 1/2 messages the client accepts unacknowledged (its Receive Maximum).
    client_window: usize,
    /// Retained messages owed for SUBSCRIBEs the router has not yet answered.
    retained_due: Vec<RetainedDue>,
    /// This connection as a member of shared subscriptions (see `shares`).
    member_id: u64,
    /// Shares handed to this connection by other members; made when it first
    /// joins a shared subscription.
    handoffs: Option<(UnboundedSender<Handoff>, UnboundedReceiver<Handoff>)>,
    /// Topic aliases towards an MQTT 5 client that accepts them (boxed: most
    /// connections have none).
    aliases: Option<Box<TopicAliases>>,
    /// SUBSCRIBEs some of whose filters the ACL refused, by packet id: the
    /// positions refused, merged into the router's SUBACK.
    denied: Vec<Refused>,
}

impl Outbound {
    /// One message the router forwards to this device: into the session's
    /// outbox, acknowledged to the router at once.
    pub fn handle_forward(
        &mut self,
        publish: Publish,
        properties: Option<Box<PublishProperties>>,
        conn: &mut Connection,
        port: &mut Port,
    ) {
        if let Some(ack) = self.session.accept(publish, properties.map(|p| *p), true) {
            port.relay(ack);
        }
        self.settle(conn);
    }

    /// One message a Kafka source delivered: into the outbox, as a forward.
    pub fn handle_letter(&mut self, letter: Letter, conn: &mut Connection) {
        self.session.accept_letter(letter, true);
        self.settle(conn);
    }

    /// The device acknowledged a message sent to it.
    pub fn handle_device_ack(&mut self, packet: Packet, conn: &mut Connection) {
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
                        conn.write(Packet::PubRel(
                            PubRel {
                                pkid,
                                reason: PubRelReason::Success,
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
        self.settle(conn);
    }

    /// The router's PUBREL for a QoS 2 message the session already has.
    pub fn handle_router_pubrel(&mut self, pkid: u16, port: &mut Port) {
        port.relay(Packet::PubComp(
            PubComp {
                pkid,
                reason: PubCompReason::Success,
            },
            None,
        ));
    }

    /// Takes the filters the ACL refuses out of `subscribe`; false when none
    /// is left, and the SUBACK has been written here.
    fn authorize_subscribe(&mut self, subscribe: &mut Subscribe, conn: &mut Connection) -> bool {
        let identity = &self.session.identity;
        if !identity.is_restricted() {
            return true;
        }
        let mut refused = Vec::new();
        let mut position = 0;
        subscribe.filters.retain(|filter| {
            let allowed = identity.allows(&self.session.client_id, Access::Subscribe, &filter.path);
            if !allowed {
                events::SubscriptionDenied.emit();
                refused.push(position);
            }
            position += 1;
            allowed
        });
        if refused.is_empty() {
            return true;
        }
        if subscribe.filters.is_empty() {
            // Nothing for the router: answered here.
            let code = refused_code(conn.version());
            conn.write(Packet::SubAck(
                SubAck {
                    pkid: subscribe.pkid,
                    return_codes: vec![code; refused.len()],
                },
                None,
            ));
            return false;
        }
        self.denied.push((subscribe.pkid, refused));
        true
    }

    /// The router's SUBACK: to the device, then the retained messages owed.
    pub fn handle_suback(&mut self, packet: Packet, ctx: &LinkContext, conn: &mut Connection) {
        let Packet::SubAck(mut ack, properties) = packet else {
            return;
        };
        // The gateway's own SUBSCRIBEs (packet id 0) are answered to nobody.
        if ack.pkid == OWN_PKID {
            return;
        }
        if let Some(at) = self.denied.iter().position(|(pkid, _)| *pkid == ack.pkid) {
            // Filters the ACL refused get their failure at their place
            // [MQTT-3.9.3-1].
            let (_, refused) = self.denied.swap_remove(at);
            let code = refused_code(conn.version());
            let mut granted = std::mem::take(&mut ack.return_codes).into_iter();
            // `refused` is in ascending order: one pass, however many filters.
            let mut refused = refused.into_iter().peekable();
            let total = refused.len() + granted.len();
            ack.return_codes = (0..total)
                .map(|i| match refused.next_if_eq(&i) {
                    Some(_) => code,
                    None => granted.next().unwrap_or(code),
                })
                .collect();
        }
        let pkid = ack.pkid;
        conn.write(Packet::SubAck(ack, properties));
        self.send_retained(pkid, ctx, conn);
    }

    /// Sends the device every queued message its Receive Maximum allows.
    pub fn settle(&mut self, conn: &mut Connection) {
        while let Some(frame) = self.session.outbox.next(self.client_window) {
            match self.aliases.as_mut() {
                Some(aliases) => {
                    aliases.write(&frame, conn.out(), self.session.client_max_packet_size)
                }
                None => conn.out().extend_from_slice(&frame),
            }
        }
    }

    /// Whether the outbox is full: the rest waits with the router until the
    /// device catches up.
    pub fn is_full(&self) -> bool {
        self.session.outbox.is_full()
    }

    pub fn handle_subscribe(
        &mut self,
        subscribe: Subscribe,
        properties: Option<SubscribeProperties>,
        ctx: &LinkContext,
        conn: &mut Connection,
        port: &mut Port,
    ) -> Result<(), End> {
        for filter in &subscribe.filters {
            let (path, shared) = split_shared(&filter.path);
            // [MQTT-4.8.2-1]/[MQTT-4.8.2-2]: a ShareName has at least one
            // character and no wildcard.
            let bad_share_name = shared
                && filter
                    .path
                    .split('/')
                    .nth(1)
                    .is_none_or(|name| name.is_empty() || name.contains(['+', '#']));
            if tributary_bridge::route::filter_problem(path).is_some() || bad_share_name {
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
        if properties.as_ref().and_then(|p| p.id) == Some(0) {
            // [MQTT-3.8.2.1.2]: a Subscription Identifier of 0 is a Protocol
            // Error. (The router would drop its link over it.)
            return Err(End::Protocol(
                DisconnectReasonCode::ProtocolError,
                "subscription_identifier_zero",
            ));
        }
        let mut subscribe = subscribe;
        if !self.authorize_subscribe(&mut subscribe, conn) {
            return Ok(());
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
        ctx.directory.update(
            &self.session.client_id,
            &self.session.subscriptions,
            &mut self.session.mailbox,
        );
        for filter in &subscribe.filters {
            if split_shared(&filter.path).1 {
                let sender = self.handoff_sender();
                ctx.shares.join(&filter.path, self.member_id, sender);
            }
        }
        port.relay(Packet::Subscribe(subscribe, properties));
        Ok(())
    }

    /// A share another member left unacknowledged: this client's now, if it
    /// still has the subscription; else on to another member.
    pub fn handle_handoff(&mut self, handoff: Handoff, ctx: &LinkContext, conn: &mut Connection) {
        let readable = std::str::from_utf8(&handoff.topic).is_ok_and(|topic| {
            self.session
                .identity
                .allows(&self.session.client_id, Access::Read, topic)
        });
        match self.session.subscriptions.get(&handoff.filter).cloned() {
            Some(options) if readable => self.session.accept_handoff(handoff, &options, true),
            _ => {
                let _ = ctx.shares.hand_off(handoff, self.member_id);
            }
        }
        self.settle(conn);
    }

    /// Queues the retained messages owed for the SUBSCRIBE `pkid`, once its
    /// SUBACK is on its way: they follow it, as the subscription they belong
    /// to exists only from then on.
    fn send_retained(&mut self, pkid: u16, ctx: &LinkContext, conn: &mut Connection) {
        let Some(at) = self.retained_due.iter().position(|d| d.pkid == pkid) else {
            return;
        };
        let due = self.retained_due.remove(at);
        let now = SystemTime::now();
        for (filter, options) in &due.filters {
            for message in ctx.retained.matching(filter, now) {
                self.session
                    .accept_retained(&message, options, due.subscription_id);
            }
        }
        self.settle(conn);
    }

    /// Answers UNSUBSCRIBE from the gateway's own table (the router sends no
    /// UNSUBACK for a filter it does not have, and one per filter otherwise).
    pub fn handle_unsubscribe(
        &mut self,
        unsubscribe: Unsubscribe,
        ctx: &LinkContext,
        conn: &mut Connection,
        port: &mut Port,
    ) -> Result<(), End> {
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
                    ctx.shares.leave(path, self.member_id);
                    existing.push(path.clone());
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        if !existing.is_empty() {
            ctx.directory.update(
                &self.session.client_id,
                &self.session.subscriptions,
                &mut self.session.mailbox,
            );
            port.relay(Packet::Unsubscribe(
                Unsubscribe {
                    pkid: unsubscribe.pkid,
                    filters: existing,
                },
                None,
            ));
        }
        conn.write(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
        Ok(())
    }

    /// `topic_alias_max` is the MQTT 5 client's Topic Alias Maximum.
    pub fn new(
        session: Session,
        client_window: usize,
        member_id: u64,
        topic_alias_max: Option<u16>,
    ) -> Outbound {
        Outbound {
            session,
            client_window,
            retained_due: Vec::new(),
            member_id,
            handoffs: None,
            aliases: TopicAliases::new(topic_alias_max).map(Box::new),
            denied: Vec::new(),
        }
    }

    /// Where other members hand this connection their shares.
    fn handoff_sender(&mut self) -> UnboundedSender<Handoff> {
        self.handoffs
            .get_or_insert_with(unbounded_channel)
            .0
            .clone()
    }

    /// The next message for this session from elsewhere than the router: a
    /// share another member handed over, or, when `letters` (the outbox has
    /// room), what a Kafka source delivered.
    pub async fn next_delivered(&mut self, letters: bool) -> Delivered {
        let Outbound {
            handoffs, session, ..
        } = self;
        tokio::select! {
            Some(handoff) = next_handoff(handoffs.as_mut()) => Delivered::Handoff(handoff),
            letter = next_letter(session.mailbox.as_mut()), if letters => Delivered::Letter(letter),
            else => std::future::pending().await,
        }
    }

    /// Picks a resumed session up where its last connection left it: what the
    /// device had not acknowledged goes again first [MQTT-4.4.0-1], then what
    /// was queued; shared subscriptions rejoin their groups.
    /// `router_resumed` says whether the session's router link was kept while
    /// the device was away; if not, every subscription is made again.
    pub fn resume(
        &mut self,
        router_resumed: bool,
        ctx: &LinkContext,
        conn: &mut Connection,
        port: &mut Port,
    ) {
        let version = conn.version();
        self.session.outbox.resend(conn.out(), |pkid, out| {
            let pubrel = Packet::PubRel(
                PubRel {
                    pkid,
                    reason: PubRelReason::Success,
                },
                None,
            );
            let _ = version.encode(pubrel, out);
        });
        let shared: Vec<String> = self
            .session
            .subscriptions
            .shared_paths()
            .map(str::to_owned)
            .collect();
        for path in &shared {
            let sender = self.handoff_sender();
            ctx.shares.join(path, self.member_id, sender);
        }
        let filters = if router_resumed {
            self.session.subscriptions.shared_filters()
        } else {
            self.session.subscriptions.filters()
        };
        if !filters.is_empty() {
            let subscribe = Subscribe {
                pkid: OWN_PKID,
                filters,
            };
            port.relay(Packet::Subscribe(subscribe, None));
        }
        self.settle(conn);
    }

    /// The session, once the connection has ended: shared subscriptions left
    /// (what this member got through them and the device did not acknowledge
    /// goes to another member), QoS 0 dropped.
    pub fn into_session(self, ctx: &LinkContext) -> Session {
        let Outbound {
            mut session,
            member_id,
            handoffs,
            ..
        } = self;
        hand_off_shares(ctx, member_id, &mut session, handoffs.map(|(_, rx)| rx));
        session
    }
}

/// Leaves every shared subscription's group, and gives another member what
/// this connection got through them and the device did not acknowledge; a
/// stored session keeps what no one else could take.
fn hand_off_shares(
    ctx: &LinkContext,
    member_id: u64,
    session: &mut Session,
    handoff_rx: Option<UnboundedReceiver<Handoff>>,
) {
    for path in session.subscriptions.shared_paths() {
        ctx.shares.leave(path, member_id);
    }
    let mut handoff_rx = handoff_rx;
    if let Some(rx) = handoff_rx.as_mut() {
        rx.close();
    }
    while let Some(Ok(handoff)) = handoff_rx.as_mut().map(UnboundedReceiver::try_recv) {
        if let Err(handoff) = ctx.shares.hand_off(handoff, member_id) {
            if let Some(options) = session.subscriptions.get(&handoff.filter).cloned() {
                session.accept_handoff(handoff, &options, false);
            }
        }
    }
    let version = session.version;
    let handed = session.outbox.hand_off_shares(|share, frame| {
        let mut bytes = BytesMut::from(frame);
        let Ok(Packet::Publish(publish, mut properties)) = version.decode(&mut bytes) else {
            return false;
        };
        if let Some(properties) = properties.as_mut() {
            // They were this member's; the next gets its own.
            properties.subscription_identifiers.clear();
        }
        let handoff = Handoff {
            filter: share.filter.clone(),
            qos: share.qos,
            topic: publish.topic,
            payload: publish.payload,
            properties: properties.map(Box::new),
        };
        ctx.shares.hand_off(handoff, member_id).is_ok()
    });
    if handed > 0 {
        events::SharesHandedOff { count: handed }.emit();
    }
}

/// The SUBACK code of a filter the ACL refused: 0x80 in MQTT 3.1.1 (its only
/// failure), 0x87 Not authorized in MQTT 5.
fn refused_code(version: Version) -> SubscribeReasonCode {
    match version {
        Version::V4 => SubscribeReasonCode::Failure,
        Version::V5 => SubscribeReasonCode::NotAuthorized,
    }
}
