//! The gateway link: one task per device connection, between the socket and the
//! embedded router.
//!
//! A routed QoS 1/2 PUBLISH goes to Kafka first; only once Kafka's delivery
//! report is positive does it reach the router and the device get its
//! PUBACK/PUBREC, in arrival order. It never acknowledges a publish as delivered
//! before Kafka has it. Everything else (SUBSCRIBE, acks for outgoing messages,
//! PINGREQ) is answered or relayed at once, never queued behind Kafka.

pub mod codec;
pub mod connect;
mod deliver;
pub mod gate;
mod incoming;
pub mod origin;
pub mod outbox;
pub mod retained;
pub mod session;
pub mod sessions;
pub mod shares;
pub mod subscriptions;
pub mod will;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Error as CodecError, Packet, PingResp, PubRel, PubRelReason, Subscribe, Unsubscribe,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tributary_bridge::{Producer, RouteTable};
use tributary_wire::HeaderViolation;

use crate::events;
use crate::router::{self, EmbeddedRouter, Lane, RouterLink};
use codec::{next_frame, Frame, Version, PUBLISH};
use gate::{AllDelivered, Gate};
use incoming::Ticket;
use session::Session;
use sessions::{Expiry, Parked, Registration, Sessions};
use shares::Handoff;
use will::{PendingWill, Wills};

/// Topic aliases a MQTT 5 client may use towards Tributary (announced in CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 64;
/// QoS 0 records awaiting Kafka's report, across all connections, before links
/// stop reading QoS 0 (they are not acknowledged, but they hold memory). Shared,
/// so one busy connection can use it all and many share it.
pub const QOS0_BUDGET: usize = 16_384;

/// QoS 1/2 messages a 3.1.1 client may have unacknowledged (MQTT 5 clients say
/// theirs as Receive Maximum).
pub const DEFAULT_CLIENT_WINDOW: usize = 100;

/// Read buffer a connection starts with (a CONNECT fits); it grows with what
/// arrives and shrinks back once empty.
const INITIAL_READ_BUFFER: usize = 256;
/// Buffer capacity kept once empty; larger ones are given back, so an idle
/// connection costs little whatever it once sent or received.
const KEPT_BUFFER: usize = 4096;

/// How often a link whose reading stopped on the QoS 0 budget looks again.
const BUDGET_RECHECK: Duration = Duration::from_millis(2);

/// A QoS 0 record awaiting Kafka's report, holding its share of the budget.
type Qos0Delivery = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Per-connection limits, from `[mqtt]`.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub connect_timeout: Duration,
    pub max_packet_size: usize,
    /// QoS 1/2 publishes in flight per connection (MQTT 5 Receive Maximum).
    pub receive_maximum: u16,
    /// Longest keep-alive a client may ask for, in seconds.
    pub max_keep_alive: u16,
}

impl LinkConfig {
    /// The keep-alive a client asking for `asked` seconds gets: its own, or
    /// the server's maximum when it asks for more or for none (0). MQTT's own
    /// maximum, 65535, is no limit: 0 then stays 0.
    pub fn keep_alive(&self, asked: u16) -> u16 {
        if self.max_keep_alive == u16::MAX {
            asked
        } else if asked == 0 || asked > self.max_keep_alive {
            self.max_keep_alive
        } else {
            asked
        }
    }
}

/// What every link shares.
pub struct LinkContext {
    pub config: LinkConfig,
    pub router: EmbeddedRouter,
    pub producer: Producer,
    pub routes: Arc<RouteTable>,
    pub sessions: Sessions,
    pub wills: Wills,
    /// Cancelled at server shutdown: links finish their in-flight work and close.
    pub shutdown: CancellationToken,
    /// Permits for QoS 0 records awaiting Kafka ([`QOS0_BUDGET`]).
    pub qos0_budget: Arc<Semaphore>,
    pub retained: Arc<retained::Retained>,
    pub shares: Arc<shares::Shares>,
}

/// A valid PUBLISH topic name: non-empty, no wildcards, no NUL [MQTT-4.7.3].
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// What a device connection runs over: TCP, TLS or WebSocket alike.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// Serves one device connection from its first byte to its close.
pub async fn serve(stream: impl Transport, peer: SocketAddr, ctx: Arc<LinkContext>) {
    let mut stream: Box<dyn Transport> = Box::new(stream);
    let mut rbuf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
    let connect = match connect::read_connect(&mut stream, &mut rbuf, &ctx.config).await {
        Ok(connect) => connect,
        Err(refused) => {
            if let Some((version, connack)) = refused.connack() {
                let mut out = BytesMut::new();
                if version.encode(connack, &mut out).is_ok() {
                    let _ = stream.write_all(&out).await;
                }
            }
            events::ConnectRefused {
                peer,
                reason: refused.reason(),
            }
            .emit();
            return;
        }
    };

    let registration = ctx.sessions.register(connect.client_id.clone()).await;
    if registration.took_over {
        events::SessionTakenOver.emit();
    }
    let expiry = Expiry::from_connect(
        connect.version,
        connect.clean_session,
        connect
            .properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval),
    );
    // A stored session resumes unless Clean Start says otherwise; its outbox
    // was encoded for the protocol version it was made with.
    let (session, router, session_present) = match ctx.sessions.take(&connect.client_id).await {
        Some(Parked { session, router })
            if !connect.clean_session && session.version == connect.version =>
        {
            (session, router, true)
        }
        Some(Parked { router, .. }) => {
            if let Some(router) = router {
                router.leave();
            }
            (
                Session::new(connect.client_id.clone(), connect.version),
                None,
                false,
            )
        }
        None => (
            Session::new(connect.client_id.clone(), connect.version),
            None,
            false,
        ),
    };
    let router_resumed = router.is_some();

    let properties = connect.properties.as_ref();
    let lane = ctx.router.lane(registration.generation());
    let mut session = session;
    session.client_max_packet_size = properties
        .and_then(|p| p.max_packet_size)
        .map_or(usize::MAX, |size| size as usize);
    let mut link = Link {
        version: connect.version,
        client_id: connect.client_id.clone(),
        // [MQTT-3.1.2-24]: one and a half times the interval.
        keep_alive: match ctx.config.keep_alive(connect.keep_alive) {
            0 => None,
            seconds => Some(Duration::from_millis(u64::from(seconds) * 1500)),
        },
        will: PendingWill::new(
            ctx.wills.clone(),
            connect.client_id.clone(),
            connect.will.clone(),
            lane.clone(),
        ),
        stream,
        rbuf,
        wbuf: BytesMut::new(),
        router,
        lane,
        gate: Gate::default(),
        qos0: FuturesUnordered::new(),
        qos2_in_gate: HashSet::new(),
        qos1_in_gate: 0,
        topic_aliases: HashMap::new(),
        session,
        client_window: match connect.version {
            Version::V4 => DEFAULT_CLIENT_WINDOW,
            Version::V5 => properties
                .and_then(|p| p.receive_maximum)
                .map_or(usize::from(u16::MAX), usize::from),
        },
        retained_due: Vec::new(),
        member_id: registration.generation(),
        handoffs: None,
        expiry,
        disconnect_expiry: None,
        to_lane: Vec::new(),
        to_link: Vec::new(),
        ctx: ctx.clone(),
    };
    link.send_connack(&connect, session_present);
    if session_present {
        link.resume(router_resumed);
    }
    events::Connected {
        version: connect.version.label(),
    }
    .emit();

    let end = link.run(&registration).await;
    link.finish(end, registration).await;
}

/// How a connection ended; decides the last packet and whether the will fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the device, with its reason code.
    Disconnect(DisconnectReasonCode),
    /// The socket closed or failed without DISCONNECT.
    ConnectionLost,
    KeepAliveTimeout,
    /// A protocol violation; MQTT 5 gets a DISCONNECT with this reason.
    Protocol(DisconnectReasonCode, &'static str),
    /// Another connection took the client id over.
    TakenOver,
    /// Kafka refused a QoS 1/2 publish of an MQTT 3.1.1 client, which has no
    /// negative acknowledgement: closing without an ack makes it re-send.
    KafkaRefused,
    /// The router dropped this link.
    RouterGone,
    /// Tributary is shutting down.
    Shutdown,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Disconnect(DisconnectReasonCode::DisconnectWithWillMessage) => {
                "disconnect_with_will"
            }
            End::Disconnect(_) => "disconnect",
            End::ConnectionLost => "connection_lost",
            End::KeepAliveTimeout => "keep_alive_timeout",
            End::Protocol(_, reason) => reason,
            End::TakenOver => "session_taken_over",
            End::KafkaRefused => "kafka_refused",
            End::RouterGone => "router_gone",
            End::Shutdown => "shutdown",
        }
    }

    /// The DISCONNECT an MQTT 5 client gets, if any.
    fn disconnect_reason(self) -> Option<DisconnectReasonCode> {
        match self {
            End::Protocol(code, _) => Some(code),
            End::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            End::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            End::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            End::KafkaRefused => Some(DisconnectReasonCode::UnspecifiedError),
            End::Disconnect(_) | End::ConnectionLost | End::RouterGone => None,
        }
    }

    /// Whether the server ends the connection while the device may still be
    /// sending.
    fn server_closes(self) -> bool {
        !matches!(self, End::Disconnect(_) | End::ConnectionLost)
    }

    /// Whether the will is published [MQTT-3.1.2-8], [MQTT-3.14.4-3].
    fn fires_will(self) -> bool {
        match self {
            End::Disconnect(code) => code == DisconnectReasonCode::DisconnectWithWillMessage,
            End::ConnectionLost
            | End::KeepAliveTimeout
            | End::Protocol(..)
            | End::TakenOver
            | End::RouterGone => true,
            // The device is healthy in both cases; it reconnects and re-sends.
            End::KafkaRefused | End::Shutdown => false,
        }
    }
}

struct Link {
    ctx: Arc<LinkContext>,
    version: Version,
    client_id: Arc<str>,
    keep_alive: Option<Duration>,
    will: PendingWill,
    stream: Box<dyn Transport>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The connection's own router link: only once it subscribes.
    router: Option<RouterLink>,
    /// Where its publishes go to the router.
    lane: Lane,
    gate: Gate<Ticket, AllDelivered>,
    qos0: FuturesUnordered<Qos0Delivery>,
    /// QoS 2 packet ids waiting in the gate (not yet PUBREC'd); those
    /// PUBREC'd and awaiting PUBREL are the session's.
    qos2_in_gate: HashSet<u16>,
    /// QoS 1 publishes waiting in the gate.
    qos1_in_gate: usize,
    /// MQTT 5 topic aliases set by the client.
    topic_aliases: HashMap<u16, Bytes>,
    /// Subscriptions and the outbox: what may outlive this connection.
    session: Session,
    /// QoS 1/2 messages the client accepts unacknowledged (its Receive Maximum).
    client_window: usize,
    /// Retained messages owed for SUBSCRIBEs the router has not yet answered.
    retained_due: Vec<deliver::RetainedDue>,
    /// This connection as a member of shared subscriptions (see `shares`).
    member_id: u64,
    /// Shares handed to this connection by other members (see `shares`);
    /// made when it first joins a shared subscription.
    handoffs: Option<(UnboundedSender<Handoff>, UnboundedReceiver<Handoff>)>,
    expiry: Expiry,
    /// MQTT 5 Session Expiry Interval given in the client's DISCONNECT.
    disconnect_expiry: Option<u32>,
    /// Publishes for the router, handed over in one batch per loop turn.
    to_lane: Vec<Packet>,
    /// Everything else for the router (subscriptions, acknowledgements).
    to_link: Vec<Packet>,
}

impl Link {
    fn send_connack(&mut self, connect: &connect::Connect, session_present: bool) {
        let properties = (self.version == Version::V5).then(|| ConnAckProperties {
            receive_max: Some(self.ctx.config.receive_maximum),
            max_packet_size: Some(self.ctx.config.max_packet_size as u32),
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            assigned_client_identifier: connect.assigned.then(|| connect.client_id.to_string()),
            retain_available: Some(1),
            wildcard_subscription_available: Some(1),
            shared_subscription_available: Some(1),
            // [MQTT-3.2.2-21]: the client uses the server's value when sent.
            server_keep_alive: (self.ctx.config.keep_alive(connect.keep_alive)
                != connect.keep_alive)
                .then(|| self.ctx.config.keep_alive(connect.keep_alive)),
            ..ConnAckProperties::default()
        });
        self.write(Packet::ConnAck(
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
            && (self.version == Version::V5 || self.gate.len() < window)
    }

    async fn run(&mut self, registration: &Registration) -> End {
        let mut last_read = Instant::now();
        let mut draining = false;
        let budget = self.ctx.qos0_budget.clone();
        loop {
            if let Err(end) = self.handle_buffered_frames().await {
                return end;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > KEPT_BUFFER {
                // A burst or a large packet grew it: idle connections stay small.
                self.rbuf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
            }
            if let Err(end) = self.flush_router().await {
                return end;
            }
            if self.flush().await.is_err() {
                return self.end_after_write_error().await;
            }
            if draining && self.gate.is_empty() {
                return End::Shutdown;
            }
            let budget_exhausted = budget.available_permits() == 0;
            let can_read = !draining && !budget_exhausted && self.window_open();
            if !can_read || !self.rbuf.is_empty() {
                // Keep-alive measures the client's silence [MQTT-3.1.2-24]; while
                // the link is not reading (window full, Kafka slow, frames still
                // buffered), silence is not the client's.
                last_read = Instant::now();
            }
            let keep_alive_deadline = self.keep_alive.map(|k| last_read + k);
            tokio::select! {
                () = registration.kicked.cancelled() => return End::TakenOver,
                () = self.ctx.shutdown.cancelled(), if !draining => draining = true,
                Some(released) = self.gate.next(), if !self.gate.is_empty() => {
                    if let Err(end) = self.handle_release(released) {
                        return end;
                    }
                }
                Some(_) = self.qos0.next(), if !self.qos0.is_empty() => {}
                Some(handoff) = next_handoff(&mut self.handoffs) => {
                    if let Err(end) = self.handle_handoff(handoff) {
                        return end;
                    }
                }
                // Reading stopped on the shared QoS 0 budget: look again shortly.
                // (The guard must be the very value `can_read` was computed
                // from, or a budget freed in between leaves nothing to wake us;
                // waiting on the semaphore itself would hand freed permits to
                // waiters one by one and starve readers.)
                () = tokio::time::sleep(BUDGET_RECHECK), if budget_exhausted => {}
                read = self.stream.read_buf(&mut self.rbuf), if can_read => match read {
                    Ok(0) | Err(_) => return End::ConnectionLost,
                    Ok(_) => last_read = Instant::now(),
                },
                // A full outbox leaves the rest with the router until the
                // device catches up.
                notification = router::next(&mut self.router), if !self.session.outbox.is_full() => {
                    if let Err(end) = self.handle_notification(notification).await {
                        return end;
                    }
                }
                () = sleep_until(keep_alive_deadline) => return End::KeepAliveTimeout,
            }
        }
    }

    /// The device stopped reading: it may have sent DISCONNECT and closed while
    /// messages were still being forwarded to it. Read what it sent last, so a
    /// clean DISCONNECT is not mistaken for a lost connection (and its will
    /// published).
    async fn end_after_write_error(&mut self) -> End {
        let drain = async {
            while let Ok(n) = self.stream.read_buf(&mut self.rbuf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
        match self.handle_buffered_frames().await {
            Err(end) => end,
            Ok(()) => End::ConnectionLost,
        }
    }

    /// Decodes and handles every complete frame already read, while the window
    /// has room; the rest waits in the buffer.
    async fn handle_buffered_frames(&mut self) -> Result<(), End> {
        while self.window_open() {
            let frame = match next_frame(&mut self.rbuf, self.ctx.config.max_packet_size) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(codec::FrameError::TooLarge { .. }) => {
                    return Err(End::Protocol(
                        DisconnectReasonCode::PacketTooLarge,
                        "packet_too_large",
                    ))
                }
                Err(codec::FrameError::MalformedLength) => {
                    return Err(End::Protocol(
                        DisconnectReasonCode::MalformedPacket,
                        "malformed",
                    ))
                }
            };
            self.handle_frame(frame).await?;
        }
        Ok(())
    }

    async fn handle_frame(&mut self, frame: Frame) -> Result<(), End> {
        // Checked before any decoder sees the bytes: rumqttd's decoders panic
        // on packet types only a server sends.
        let level = match self.version {
            Version::V4 => 4,
            Version::V5 => 5,
        };
        match tributary_wire::check_client_packet(frame.byte1(), level) {
            Ok(()) => {}
            Err(HeaderViolation::WrongDirection) => {
                return Err(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "unexpected_packet",
                ))
            }
            Err(HeaderViolation::Reserved | HeaderViolation::BadFlags) => {
                return Err(End::Protocol(
                    DisconnectReasonCode::MalformedPacket,
                    "malformed",
                ))
            }
        }
        let meta = (frame.packet_type() == PUBLISH)
            .then(|| frame.publish_meta())
            .flatten();
        let mut bytes = frame.bytes;
        let packet = self
            .version
            .decode(&mut bytes)
            .map_err(|error| match error {
                // [MQTT-3.8.3-2]: a SUBSCRIBE with no filter is a Protocol Error.
                CodecError::EmptySubscription => End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "subscribe_without_filters",
                ),
                _ => End::Protocol(DisconnectReasonCode::MalformedPacket, "malformed"),
            })?;
        match packet {
            Packet::Publish(publish, properties) => {
                let meta = meta.ok_or(End::Protocol(
                    DisconnectReasonCode::MalformedPacket,
                    "malformed",
                ))?;
                self.handle_publish(meta, publish, properties).await
            }
            Packet::PubRel(pubrel, _) => {
                self.handle_pubrel(pubrel);
                Ok(())
            }
            packet @ (Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..)) => {
                self.handle_device_ack(packet)
            }
            Packet::Subscribe(subscribe, properties) => {
                self.handle_subscribe(subscribe, properties)
            }
            Packet::Unsubscribe(unsubscribe, _) => self.handle_unsubscribe(unsubscribe),
            Packet::PingReq(_) => {
                self.write(Packet::PingResp(PingResp));
                Ok(())
            }
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
                Err(End::Disconnect(disconnect.reason_code))
            }
            Packet::Connect(..) => Err(End::Protocol(
                DisconnectReasonCode::ProtocolError,
                "second_connect",
            )),
            _ => Err(End::Protocol(
                DisconnectReasonCode::ProtocolError,
                "unexpected_packet",
            )),
        }
    }

    async fn handle_notification(
        &mut self,
        notification: Result<Option<Notification>, rumqttd::local::LinkError>,
    ) -> Result<(), End> {
        match notification {
            Ok(Some(Notification::Forward(forward))) => self.handle_forward(forward)?,
            // The router's acknowledgement type is private; its packet is not.
            Ok(Some(Notification::DeviceAck(ack))) => match Packet::from(ack) {
                Packet::PubRel(pubrel, _) => self.handle_router_pubrel(pubrel)?,
                // UNSUBSCRIBE is answered by the gateway (see `deliver`), and
                // the gateway's own SUBSCRIBEs (packet id 0) by nobody.
                Packet::UnsubAck(..) => {}
                Packet::SubAck(ack, _) if ack.pkid == deliver::OWN_PKID => {}
                Packet::SubAck(ack, properties) => {
                    let pkid = ack.pkid;
                    self.write(Packet::SubAck(ack, properties));
                    self.send_retained(pkid)?;
                }
                packet => self.write(packet),
            },
            Ok(Some(Notification::Unschedule)) => {
                if let Some(router) = self.router.as_mut() {
                    router.rx.wake().await.map_err(|_| End::RouterGone)?;
                }
            }
            Ok(Some(Notification::Disconnect(disconnect, properties))) => {
                self.write(Packet::Disconnect(disconnect, properties));
                return Err(End::RouterGone);
            }
            Ok(Some(_)) | Ok(None) => {}
            Err(_) => return Err(End::RouterGone),
        }
        Ok(())
    }

    /// Queues `packet` for the router; it goes with the next batch.
    fn relay(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(..) => self.to_lane.push(packet),
            packet => self.to_link.push(packet),
        }
        Ok(())
    }

    /// Hands the router everything relayed since the last batch, in order, and
    /// waits while the router is far behind. The connection's own router link
    /// is opened here, the first time it has something to carry.
    async fn flush_router(&mut self) -> Result<(), End> {
        if !self.to_lane.is_empty() {
            let batch = std::mem::take(&mut self.to_lane);
            self.lane
                .send_paced(batch)
                .await
                .map_err(|_| End::RouterGone)?;
        }
        if self.to_link.is_empty() {
            return Ok(());
        }
        let router = match &mut self.router {
            Some(router) => router,
            None => {
                let opened = self.ctx.router.connect_device().await.map_err(|error| {
                    tracing::error!(%error, "the router refused a link");
                    End::RouterGone
                })?;
                self.router.insert(opened)
            }
        };
        let batch = std::mem::take(&mut self.to_link);
        router::send_batch_paced(&mut router.tx, batch)
            .await
            .map_err(|_| End::RouterGone)
    }

    /// Encodes `packet` for the device; written out at the next flush.
    fn write(&mut self, packet: Packet) {
        if let Err(error) = self.version.encode(packet, &mut self.wbuf) {
            tracing::error!(?error, "cannot encode a packet for the device");
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            if self.wbuf.capacity() > KEPT_BUFFER {
                self.wbuf = BytesMut::new();
            }
        }
        Ok(())
    }

    /// Says goodbye (MQTT 5), leaves the router, and schedules the will.
    async fn finish(mut self, end: End, registration: Registration) {
        if self.version == Version::V5 {
            if let Some(reason_code) = end.disconnect_reason() {
                self.write(Packet::Disconnect(Disconnect { reason_code }, None));
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        let _ = self.stream.shutdown().await;
        if end != End::RouterGone {
            // What the device sent before leaving still reaches the router.
            let _ = self.flush_router().await;
        }
        let expiry = self
            .disconnect_expiry
            .map_or(self.expiry, Expiry::from_interval);
        let Link {
            ctx,
            mut session,
            router,
            member_id,
            handoffs,
            will,
            stream,
            ..
        } = self;
        if end.server_closes() {
            tokio::spawn(linger(stream));
        }
        if end.fires_will() {
            will.fire();
        } else {
            will.cancel();
        }
        let router_alive = end != End::RouterGone;
        hand_off_shares(&ctx, member_id, &mut session, handoffs.map(|(_, rx)| rx));
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
                        pkid: deliver::OWN_PKID,
                        filters: shared.into_iter().map(|f| f.path).collect(),
                    };
                    let _ = router::send_batch(
                        &mut router.tx,
                        vec![Packet::Unsubscribe(unsubscribe, None)],
                    );
                }
                Some(router)
            }
            Some(router) => {
                router.leave();
                None
            }
            None => None,
        };
        ctx.sessions.park(Parked { session, router }, keep_for);
        ended(end, registration);
    }

    /// Where other members hand this connection their shares.
    fn handoff_sender(&mut self) -> UnboundedSender<Handoff> {
        self.handoffs
            .get_or_insert_with(unbounded_channel)
            .0
            .clone()
    }

    /// Picks a resumed session up where its last connection left it: what the
    /// device had not acknowledged goes again first [MQTT-4.4.0-1], then what
    /// was queued; shared subscriptions rejoin their groups.
    /// `router_resumed` says whether the session's router link was kept while
    /// the device was away; if not, every subscription is made again.
    fn resume(&mut self, router_resumed: bool) {
        let version = self.version;
        self.session.outbox.resend(&mut self.wbuf, |pkid, out| {
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
            self.ctx.shares.join(path, self.member_id, sender);
        }
        let filters = if router_resumed {
            self.session.subscriptions.shared_filters()
        } else {
            self.session.subscriptions.filters()
        };
        if !filters.is_empty() {
            let subscribe = Subscribe {
                pkid: deliver::OWN_PKID,
                filters,
            };
            let _ = self.relay(Packet::Subscribe(subscribe, None));
        }
        let _ = self.settle();
    }
}

/// How long a session that ends at disconnect is kept for the connection that
/// took it over.
const TAKEN_OVER_KEPT: Duration = Duration::from_secs(10);

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

fn ended(end: End, registration: Registration) {
    events::ConnectionEnded {
        reason: end.label(),
    }
    .emit();
    // Last: a successor waiting to take over may now find the stored session.
    drop(registration);
}

/// The next share handed to this connection; pending forever before it joins
/// a shared subscription.
async fn next_handoff(
    handoffs: &mut Option<(UnboundedSender<Handoff>, UnboundedReceiver<Handoff>)>,
) -> Option<Handoff> {
    match handoffs {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How long a connection the server ends is read (and discarded) after its
/// write side is shut down.
const LINGER: Duration = Duration::from_millis(500);
/// Bytes read, at most, while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// Reads what the device still sends, briefly, after the server shut the write
/// side: closing with unread bytes would reset the connection, and the device
/// would lose the DISCONNECT reason code on its way to it.
async fn linger(mut stream: Box<dyn Transport>) {
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
