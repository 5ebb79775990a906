//! The gateway link: one task per device connection, between the socket and the
//! embedded router.
//!
//! A routed QoS 1/2 PUBLISH goes to Kafka first; only once Kafka's delivery
//! report is positive does it reach the router and the device get its
//! PUBACK/PUBREC, in arrival order. It never acknowledges a publish as delivered
//! before Kafka has it. Everything else (SUBSCRIBE, acks for outgoing messages,
//! PINGREQ) is answered or relayed at once, never queued behind Kafka.
//!
//! The connection's state has three owners: the [`connection::Connection`]
//! (socket, buffers, frames), the [`inbound::Inbound`] side (what the device
//! publishes) and the [`outbound::Outbound`] side (its session: what it
//! receives). The loop here only waits for the next event and hands it to its
//! owner; the router is reached through a [`Port`].

pub mod codec;
pub mod connect;
pub mod connection;
mod context;
pub mod directory;
mod end;
pub mod forward;
pub mod gate;
pub mod inbound;
pub mod origin;
pub mod outbound;
pub mod outbox;
pub mod registry;
pub mod retained;
pub mod session;
pub mod session_store;
pub mod shares;
pub mod subscriptions;
pub mod topic_alias;
pub mod will;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, DisconnectReasonCode, Packet, PingResp,
    Unsubscribe,
};
use tributary_bridge::DeliveryError;

use crate::auth::Identity;
use crate::events;
use crate::listener::Arrival;
use crate::router::{FromRouter, Port};
use codec::Version;
pub use connection::Transport;
use connection::{Connection, Incoming};
pub use context::{LinkConfig, LinkContext};
pub use end::End;
use gate::Released;
use inbound::{Inbound, Ticket};
use outbound::{Outbound, OWN_PKID};
use registry::Registration;
use session_store::{Expiry, Parked};
use shares::Handoff;
use will::PendingWill;

/// Topic aliases a MQTT 5 client may use towards Tributary (announced in CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 64;
/// QoS 0 records awaiting Kafka's report, across all connections, before links
/// stop reading QoS 0 (they are not acknowledged, but they hold memory). Shared,
/// so one busy connection can use it all and many share it.
pub const QOS0_BUDGET: usize = 16_384;

/// QoS 1/2 messages a 3.1.1 client may have unacknowledged (MQTT 5 clients say
/// theirs as Receive Maximum).
pub const DEFAULT_CLIENT_WINDOW: usize = 100;

/// How often a link whose reading stopped on the QoS 0 budget looks again.
const BUDGET_RECHECK: Duration = Duration::from_millis(2);

/// How long a session that ends at disconnect is kept for the connection that
/// took it over.
const TAKEN_OVER_KEPT: Duration = Duration::from_secs(10);

/// A valid PUBLISH topic name (its grammar lives in `wire`).
pub use tributary_wire::valid_topic_name;

/// Serves one device connection from its first byte of MQTT to its close.
pub async fn serve(stream: Box<dyn Transport>, arrival: Arrival, ctx: Arc<LinkContext>) {
    // Each phase's state lives only as long as the phase: boxed, the
    // handshake's and the goodbye's never weigh on an idle connection.
    let Some((mut link, registration)) = Box::pin(connect::open(stream, arrival, ctx)).await else {
        return;
    };
    let end = link.run(&registration).await;
    Box::pin(link.finish(end, registration)).await;
}

/// What the connection's loop waits for; one handler each.
enum Event {
    /// Bytes arrived from the device (`false`: its end of the stream).
    Read(bool),
    /// A publish's Kafka reports are in.
    Released(Released<Ticket, DeliveryError>),
    /// The router said something.
    Router(Result<FromRouter, crate::router::RouterGone>),
    /// Another member of a shared subscription handed a message over.
    Handoff(Handoff),
    /// A Kafka source delivered a message to the session.
    Letter(directory::Letter),
    /// Something that only needs the loop to turn (a QoS 0 report, the
    /// budget to look at again).
    Turn,
    /// Tributary is shutting down.
    Shutdown,
    End(End),
}

struct Link {
    ctx: Arc<LinkContext>,
    client_id: Arc<str>,
    /// Who the client authenticated as, what its ACL lets it do, and when
    /// its token expires.
    identity: Arc<Identity>,
    keep_alive: Option<Duration>,
    will: PendingWill,
    conn: Connection,
    inbound: Inbound,
    outbound: Outbound,
    port: Port,
    expiry: Expiry,
    /// MQTT 5 Session Expiry Interval given in the client's DISCONNECT.
    disconnect_expiry: Option<u32>,
}

impl Link {
    fn send_connack(&mut self, connect: &connect::Connect, session_present: bool) {
        let config = &self.ctx.config;
        let keep_alive = config.keep_alive(connect.keep_alive);
        let properties = (connect.version == Version::V5).then(|| ConnAckProperties {
            receive_max: Some(config.receive_maximum),
            max_packet_size: Some(config.max_packet_size as u32),
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            assigned_client_identifier: connect.assigned.then(|| connect.client_id.to_string()),
            retain_available: Some(1),
            wildcard_subscription_available: Some(1),
            shared_subscription_available: Some(1),
            // [MQTT-3.2.2-21]: the client uses the server's value when sent.
            server_keep_alive: (keep_alive != connect.keep_alive).then_some(keep_alive),
            ..ConnAckProperties::default()
        });
        self.conn.write(Packet::ConnAck(
            ConnAck {
                session_present,
                code: ConnectReturnCode::Success,
            },
            properties,
        ));
    }

    /// Whether another packet may be read. MQTT 5 clients know the Receive
    /// Maximum and are disconnected when they exceed it, so reading goes on;
    /// MQTT 3.1.1 clients are slowed down by not reading once the window is
    /// full. Either way the QoS 0 backlog must have room.
    fn window_open(&self) -> bool {
        // QoS 2 publishes awaiting PUBREL do not count here: their PUBRELs are
        // among what must still be read.
        let window = usize::from(self.ctx.config.receive_maximum);
        self.ctx.qos0_budget.available_permits() > 0
            && !self.inbound.changing_pace()
            && (self.conn.version() == Version::V5 || self.inbound.waiting() < window)
    }

    async fn run(&mut self, registration: &Registration) -> End {
        let mut last_read = Instant::now();
        let mut draining = false;
        loop {
            // Boxed, so an idle connection's task does not carry this state;
            // only when there is something to do.
            if self.conn.has_buffered() {
                if let Err(end) = Box::pin(self.handle_buffered_packets()).await {
                    return end;
                }
            }
            // The device first: an acknowledgement never waits for the router
            // to take the message it acknowledges.
            if self.flush_device().await.is_err() {
                return Box::pin(self.end_after_write_error()).await;
            }
            if self.port.has_pending() && Box::pin(self.port.flush()).await.is_err() {
                return End::RouterGone;
            }
            if draining && self.inbound.waiting() == 0 {
                return End::Shutdown;
            }
            self.inbound.settle_pace(&self.ctx);
            let budget_exhausted = self.ctx.qos0_budget.available_permits() == 0;
            let can_read = !draining && !budget_exhausted && self.window_open();
            if !can_read || self.conn.has_buffered() {
                // Keep-alive measures the client's silence [MQTT-3.1.2-24]; while
                // the link is not reading (window full, Kafka slow, frames still
                // buffered), silence is not the client's.
                last_read = Instant::now();
            }
            let deadline = self.keep_alive.map(|k| last_read + k);
            let event = self
                .next_event(registration, draining, can_read, budget_exhausted, deadline)
                .await;
            let handled = match event {
                Event::Read(true) => {
                    last_read = Instant::now();
                    Ok(())
                }
                Event::Read(false) => Err(End::ConnectionLost),
                Event::Released(released) => self.handle_releases(Some(released)),
                Event::Router(said) => Box::pin(self.handle_router(said)).await,
                Event::Handoff(handoff) => {
                    self.outbound
                        .handle_handoff(handoff, &self.ctx, &mut self.conn);
                    Ok(())
                }
                Event::Letter(letter) => {
                    self.outbound.handle_letter(letter, &mut self.conn);
                    Ok(())
                }
                Event::Turn => self.handle_releases(None),
                Event::Shutdown => {
                    draining = true;
                    Ok(())
                }
                Event::End(end) => Err(end),
            };
            if let Err(end) = handled {
                return end;
            }
        }
    }

    /// Writes out what the device is owed. A device not reading makes this
    /// wait: meanwhile the connection takes nothing from the router or the
    /// Kafka sources either.
    async fn flush_device(&mut self) -> std::io::Result<()> {
        self.conn.flush().await
    }

    /// Waits for whatever happens first.
    async fn next_event(
        &mut self,
        registration: &Registration,
        draining: bool,
        can_read: bool,
        budget_exhausted: bool,
        keep_alive_deadline: Option<Instant>,
    ) -> Event {
        // A full outbox leaves the rest with the router, and with the Kafka
        // sources, until the device catches up.
        let take_from_router = !self.outbound.is_full();
        tokio::select! {
            () = registration.kicked.cancelled() => Event::End(End::TakenOver),
            () = self.ctx.shutdown.cancelled(), if !draining => Event::Shutdown,
            released = self.inbound.next_release() => match released {
                Some(released) => Event::Released(released),
                None => Event::Turn,
            },
            delivered = self.outbound.next_delivered(take_from_router) => match delivered {
                outbound::Delivered::Handoff(handoff) => Event::Handoff(handoff),
                outbound::Delivered::Letter(letter) => Event::Letter(letter),
            },
            // Reading stopped on the shared QoS 0 budget: look again shortly.
            // (The guard must be the very value `can_read` was computed
            // from, or a budget freed in between leaves nothing to wake us;
            // waiting on the semaphore itself would hand freed permits to
            // waiters one by one and starve readers.)
            () = tokio::time::sleep(BUDGET_RECHECK), if budget_exhausted => Event::Turn,
            read = self.conn.read(), if can_read => Event::Read(matches!(read, Ok(n) if n > 0)),
            said = self.port.next(), if take_from_router => Event::Router(said),
            // One timer for both deadlines: an idle connection's task carries
            // one sleep, not two.
            () = sleep_until(earliest(keep_alive_deadline, self.identity.expires_at)) => {
                match self.identity.expires_at {
                    Some(expires) if Instant::now() >= expires => Event::End(End::TokenExpired),
                    _ => Event::End(End::KeepAliveTimeout),
                }
            }
        }
    }

    /// The device stopped reading: it may have sent DISCONNECT and closed while
    /// messages were still being forwarded to it. Read what it sent last, so a
    /// clean DISCONNECT is not mistaken for a lost connection (and its will
    /// published).
    async fn end_after_write_error(&mut self) -> End {
        self.conn.read_after_write_error().await;
        match self.handle_buffered_packets().await {
            Err(end) => end,
            Ok(()) => End::ConnectionLost,
        }
    }

    /// Handles every complete packet already read, while the window has room;
    /// the rest waits in the buffer.
    async fn handle_buffered_packets(&mut self) -> Result<(), End> {
        loop {
            self.inbound.settle_pace(&self.ctx);
            if !self.window_open() {
                return Ok(());
            }
            let Some(incoming) = self.conn.next_packet()? else {
                return Ok(());
            };
            self.handle_packet(incoming).await?;
        }
    }

    async fn handle_packet(&mut self, incoming: Incoming) -> Result<(), End> {
        let Incoming { packet, publish } = incoming;
        match packet {
            Packet::Publish(packet, properties) => {
                let meta = publish.ok_or(End::Protocol(
                    DisconnectReasonCode::MalformedPacket,
                    "malformed",
                ))?;
                let version = self.conn.version();
                let to_router = self
                    .inbound
                    .handle_publish(
                        &self.ctx,
                        &self.client_id,
                        &self.identity,
                        version,
                        meta,
                        packet,
                        properties,
                    )
                    .await?;
                if let Some(packet) = to_router {
                    self.port.relay(packet);
                }
            }
            Packet::PubRel(pubrel, _) => self.inbound.handle_pubrel(pubrel, &mut self.conn),
            packet @ (Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..)) => {
                self.outbound.handle_device_ack(packet, &mut self.conn)
            }
            Packet::Subscribe(subscribe, properties) => self.outbound.handle_subscribe(
                subscribe,
                properties,
                &self.ctx,
                &mut self.conn,
                &mut self.port,
            )?,
            Packet::Unsubscribe(unsubscribe, _) => self.outbound.handle_unsubscribe(
                unsubscribe,
                &self.ctx,
                &mut self.conn,
                &mut self.port,
            )?,
            Packet::PingReq(_) => self.conn.write(Packet::PingResp(PingResp)),
            Packet::Disconnect(disconnect, properties) => {
                let interval = properties.and_then(|p| p.session_expiry_interval);
                if self.expiry == Expiry::AtDisconnect && interval.is_some_and(|i| i > 0) {
                    // [MQTT-3.14.2-2]: a session that was to end at disconnect
                    // cannot be extended by DISCONNECT; it ends, and the will
                    // is published.
                    return Err(End::Protocol(
                        DisconnectReasonCode::ProtocolError,
                        "session_expiry_extended",
                    ));
                }
                self.disconnect_expiry = interval;
                return Err(End::Disconnect(disconnect.reason_code));
            }
            Packet::Connect(..) => {
                return Err(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "second_connect",
                ))
            }
            _ => {
                return Err(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "unexpected_packet",
                ))
            }
        }
        Ok(())
    }

    /// Handles `first` (if any) and every release already in behind it:
    /// Kafka reports come in batches, and one turn then writes all their
    /// acknowledgements to the device, and hands all their messages to the
    /// router, at once.
    fn handle_releases(
        &mut self,
        first: Option<Released<Ticket, DeliveryError>>,
    ) -> Result<(), End> {
        if let Some(first) = first {
            self.handle_release(first)?;
        }
        // Bounded by the window: the gate holds at most Receive Maximum.
        while let Some(released) = self.inbound.try_release() {
            self.handle_release(released)?;
        }
        Ok(())
    }

    fn handle_release(&mut self, released: Released<Ticket, DeliveryError>) -> Result<(), End> {
        let to_router = self
            .inbound
            .handle_release(released, &self.ctx, &mut self.conn)?;
        if let Some(packet) = to_router {
            self.port.relay(packet);
        }
        Ok(())
    }

    async fn handle_router(
        &mut self,
        said: Result<FromRouter, crate::router::RouterGone>,
    ) -> Result<(), End> {
        match said.map_err(|_| End::RouterGone)? {
            FromRouter::Forward {
                publish,
                properties,
            } => self
                .outbound
                .handle_forward(publish, properties, &mut self.conn, &mut self.port),
            FromRouter::PubRel { pkid } => self.outbound.handle_router_pubrel(pkid, &mut self.port),
            FromRouter::SubAck(packet) => {
                self.outbound
                    .handle_suback(*packet, &self.ctx, &mut self.conn)
            }
            FromRouter::Ack(packet) => match *packet {
                // UNSUBSCRIBE is answered by the gateway (see `outbound`).
                Packet::UnsubAck(..) => {}
                packet => self.conn.write(packet),
            },
            FromRouter::Unschedule => self.port.wake().await.map_err(|_| End::RouterGone)?,
            FromRouter::Disconnect => return Err(End::RouterGone),
            FromRouter::Nothing => {}
        }
        Ok(())
    }

    /// Says goodbye (MQTT 5), stores or ends the session, and schedules the will.
    async fn finish(self, end: End, registration: Registration) {
        let Link {
            ctx,
            conn,
            inbound,
            outbound,
            mut port,
            will,
            expiry,
            disconnect_expiry,
            ..
        } = self;
        conn.close(end.disconnect_reason(), end.server_closes())
            .await;
        if end != End::RouterGone {
            // What the device sent before leaving still reaches the router.
            let _ = port.flush().await;
        }
        if end.fires_will() {
            will.fire();
        } else {
            will.cancel();
        }
        let expiry = disconnect_expiry.map_or(expiry, Expiry::from_interval);
        let router_alive = end != End::RouterGone;
        let mut session = outbound.into_session(&ctx);
        session.awaiting_pubrel = inbound.into_awaiting_pubrel();
        let router = port.into_link();
        // On takeover the new connection decides the session's fate; it takes
        // it over at once.
        let keep_for = match (end, expiry) {
            (End::TakenOver, Expiry::AtDisconnect) => Some(TAKEN_OVER_KEPT),
            (_, Expiry::AtDisconnect) => {
                drop(router);
                return ended(end, registration);
            }
            (_, Expiry::After(after)) => Some(after),
            (_, Expiry::Never) => None,
        };
        let dropped = session.outbox.drop_qos0();
        for _ in 0..dropped {
            events::DeliverySkipped {
                reason: "qos0_while_away",
            }
            .emit();
        }
        // The router goes on routing to a stored session only for its plain
        // subscriptions: shares go to the group's connected members
        // [MQTT-4.8.2]. Without plain subscriptions the router keeps nothing.
        let shared = session.subscriptions.shared_filters();
        let router = match router {
            Some(mut router) if router_alive && session.subscriptions.has_plain() => {
                if !shared.is_empty() {
                    let unsubscribe = Unsubscribe {
                        pkid: OWN_PKID,
                        filters: shared.into_iter().map(|f| f.path).collect(),
                    };
                    let _ = router.send(vec![Packet::Unsubscribe(unsubscribe, None)]);
                }
                Some(router)
            }
            _ => None,
        };
        ctx.store.park(Parked { session, router }, keep_for);
        ended(end, registration);
    }
}

fn ended(end: End, registration: Registration) {
    events::ConnectionEnded {
        reason: end.label(),
    }
    .emit();
    // Last: a successor waiting to take over may now find the stored session.
    drop(registration);
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
