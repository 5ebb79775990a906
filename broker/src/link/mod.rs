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
pub mod gate;
pub mod sessions;
pub mod will;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet,
    PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel, Publish,
    PublishProperties,
};
use rumqttd::Notification;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tributary_bridge::{DeliveryError, MqttPublish, PendingDelivery, Producer, Record, RouteTable};

use crate::events;
use crate::router::{self, EmbeddedRouter, RouterLink};
use codec::{next_frame, Frame, Version, PUBLISH};
use gate::{Gate, Released};
use sessions::{Registration, Sessions};
use will::{Will, Wills};

/// Topic aliases a MQTT 5 client may use towards Tributary (announced in CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 64;
/// QoS 0 records awaiting Kafka's report per connection before the link stops
/// reading (they are not acknowledged, but they hold memory).
const MAX_QOS0_PENDING: usize = 1024;

/// Per-connection limits, from `[mqtt]`.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub connect_timeout: Duration,
    pub max_packet_size: usize,
    /// QoS 1/2 publishes in flight per connection (MQTT 5 Receive Maximum).
    pub receive_maximum: u16,
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
}

/// A valid PUBLISH topic name: non-empty, no wildcards, no NUL [MQTT-4.7.3].
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// Serves one device connection from its first byte to its close.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<LinkContext>) {
    let (mut reader, mut writer) = stream.into_split();
    let mut rbuf = BytesMut::with_capacity(4096);
    let connect = match connect::read_connect(&mut reader, &mut rbuf, &ctx.config).await {
        Ok(connect) => connect,
        Err(refused) => {
            if let Some((version, connack)) = refused.connack() {
                let mut out = BytesMut::new();
                if version.encode(connack, &mut out).is_ok() {
                    let _ = writer.write_all(&out).await;
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
    let router = match ctx
        .router
        .connect(connect.client_id.to_string(), connect.clean_session)
        .await
    {
        Ok(link) => link,
        Err(error) => {
            tracing::error!(%error, "the router refused a link");
            let mut out = BytesMut::new();
            let code = ConnectReturnCode::ServiceUnavailable;
            let connack = Packet::ConnAck(
                ConnAck {
                    session_present: false,
                    code,
                },
                None,
            );
            if connect.version.encode(connack, &mut out).is_ok() {
                let _ = writer.write_all(&out).await;
            }
            events::ConnectRefused {
                peer,
                reason: "router",
            }
            .emit();
            return;
        }
    };

    let mut link = Link {
        version: connect.version,
        client_id: connect.client_id.clone(),
        keep_alive: (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500)),
        will: connect.will.clone(),
        reader,
        writer,
        rbuf,
        wbuf: BytesMut::with_capacity(4096),
        router,
        gate: Gate::default(),
        qos0: FuturesUnordered::new(),
        awaiting_pubrel: HashSet::new(),
        topic_aliases: HashMap::new(),
        ctx: ctx.clone(),
    };
    link.send_connack(&connect);
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

/// What a gate entry does when released.
enum Ticket {
    /// A new QoS 1/2 publish: ack it, and hand it to the router if Kafka has it.
    Publish {
        pkid: u16,
        qos: u8,
        publish: Box<Publish>,
        properties: Option<PublishProperties>,
    },
    /// A re-sent QoS 2 publish still awaiting PUBREL: PUBREC again, nothing else.
    Repeat { pkid: u16 },
}

struct Link {
    ctx: Arc<LinkContext>,
    version: Version,
    client_id: Arc<str>,
    keep_alive: Option<Duration>,
    will: Option<Will>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    rbuf: BytesMut,
    wbuf: BytesMut,
    router: RouterLink,
    gate: Gate<Ticket>,
    qos0: FuturesUnordered<PendingDelivery>,
    /// QoS 2 packet ids received and not yet released by PUBREL.
    awaiting_pubrel: HashSet<u16>,
    /// MQTT 5 topic aliases set by the client.
    topic_aliases: HashMap<u16, Bytes>,
}

impl Link {
    fn send_connack(&mut self, connect: &connect::Connect) {
        let properties = (self.version == Version::V5).then(|| ConnAckProperties {
            receive_max: Some(self.ctx.config.receive_maximum),
            max_packet_size: Some(self.ctx.config.max_packet_size as u32),
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            assigned_client_identifier: connect.assigned.then(|| connect.client_id.to_string()),
            retain_available: Some(1),
            wildcard_subscription_available: Some(1),
            shared_subscription_available: Some(1),
            ..ConnAckProperties::default()
        });
        self.write(Packet::ConnAck(
            ConnAck {
                session_present: self.router.session_present && !connect.clean_session,
                code: ConnectReturnCode::Success,
            },
            properties,
        ));
    }

    /// Whether another publish may be read: the window and the QoS 0 backlog
    /// both have room.
    fn window_open(&self) -> bool {
        self.gate.len() < usize::from(self.ctx.config.receive_maximum)
            && self.qos0.len() < MAX_QOS0_PENDING
    }

    async fn run(&mut self, registration: &Registration) -> End {
        let mut last_read = Instant::now();
        let mut draining = false;
        loop {
            if let Err(end) = self.handle_buffered_frames().await {
                return end;
            }
            if self.flush().await.is_err() {
                return self.end_after_write_error().await;
            }
            if draining && self.gate.is_empty() {
                return End::Shutdown;
            }
            let can_read = !draining && self.window_open();
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
                read = self.reader.read_buf(&mut self.rbuf), if can_read => match read {
                    Ok(0) | Err(_) => return End::ConnectionLost,
                    Ok(_) => last_read = Instant::now(),
                },
                notification = self.router.rx.next() => {
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
            while let Ok(n) = self.reader.read_buf(&mut self.rbuf).await {
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
        let meta = (frame.packet_type() == PUBLISH)
            .then(|| frame.publish_meta())
            .flatten();
        let mut bytes = frame.bytes;
        let packet = self
            .version
            .decode(&mut bytes)
            .map_err(|_| End::Protocol(DisconnectReasonCode::MalformedPacket, "malformed"))?;
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
                self.relay(packet)
            }
            Packet::Subscribe(subscribe, properties) => {
                if let Some(bad) = subscribe.filters.iter().find(|f| {
                    tributary_bridge::route::filter_problem(shared_path(&f.path)).is_some()
                }) {
                    tracing::debug!(filter = %bad.path, "invalid topic filter");
                    return Err(End::Protocol(
                        DisconnectReasonCode::TopicFilterInvalid,
                        "invalid_topic_filter",
                    ));
                }
                self.relay(Packet::Subscribe(subscribe, properties))
            }
            packet @ Packet::Unsubscribe(..) => self.relay(packet),
            Packet::PingReq(_) => {
                self.write(Packet::PingResp(PingResp));
                Ok(())
            }
            Packet::Disconnect(disconnect, _) => Err(End::Disconnect(disconnect.reason_code)),
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

    async fn handle_publish(
        &mut self,
        meta: codec::PublishMeta,
        mut publish: Publish,
        mut properties: Option<PublishProperties>,
    ) -> Result<(), End> {
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

        if meta.qos == 2 && self.awaiting_pubrel.contains(&meta.pkid) {
            // A re-send of a QoS 2 publish we already have [MQTT-4.3.3]: the
            // first copy went (or is going) to Kafka; do not produce it again.
            self.gate
                .push(Ticket::Repeat { pkid: meta.pkid }, received, Ok(Vec::new()));
            return Ok(());
        }

        let message = MqttPublish {
            topic,
            client_id: self.client_id.clone(),
            qos: meta.qos,
            retain: meta.retain,
            payload: publish.payload.clone(),
        };
        let deliveries = produce(&self.ctx, &message).await;
        let routed = Publish::new(publish.topic, publish.payload, meta.retain);
        match meta.qos {
            0 => {
                // Nothing to acknowledge: Kafka and subscribers get it at once.
                if let Ok(deliveries) = deliveries {
                    self.qos0.extend(deliveries);
                }
                self.relay(Packet::Publish(routed, properties))
            }
            qos => {
                if qos == 2 {
                    self.awaiting_pubrel.insert(meta.pkid);
                }
                let ticket = Ticket::Publish {
                    pkid: meta.pkid,
                    qos,
                    publish: Box::new(routed),
                    properties,
                };
                self.gate.push(ticket, received, deliveries);
                Ok(())
            }
        }
    }

    /// Replaces an MQTT 5 topic alias by its topic [MQTT-3.3.2.3.4].
    fn resolve_topic_alias(
        &mut self,
        publish: &mut Publish,
        properties: Option<&mut PublishProperties>,
    ) -> Result<(), End> {
        let Some(properties) = properties else {
            return Ok(());
        };
        let Some(alias) = properties.topic_alias.take() else {
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

    fn handle_release(&mut self, released: Released<Ticket>) -> Result<(), End> {
        let Released {
            ticket,
            outcome,
            received,
        } = released;
        let (pkid, qos, routed) = match ticket {
            Ticket::Publish {
                pkid,
                qos,
                publish,
                properties,
            } => (pkid, qos, Some((*publish, properties))),
            Ticket::Repeat { pkid } => (pkid, 2, None),
        };
        match outcome {
            Ok(()) => {
                if let Some((publish, properties)) = routed {
                    self.relay(Packet::Publish(publish, properties))?;
                }
                self.write_ack(qos, pkid, None);
                events::PublishAcknowledged {
                    qos,
                    latency: received.elapsed(),
                }
                .emit();
                Ok(())
            }
            Err(error) => {
                events::PublishRefused { qos, error: &error }.emit();
                if qos == 2 {
                    self.awaiting_pubrel.remove(&pkid);
                }
                match self.version {
                    Version::V5 => {
                        self.write_ack(qos, pkid, Some(&error));
                        Ok(())
                    }
                    Version::V4 => Err(End::KafkaRefused),
                }
            }
        }
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2); with an error, its MQTT 5 failure code.
    fn write_ack(&mut self, qos: u8, pkid: u16, error: Option<&DeliveryError>) {
        let packet = if qos == 1 {
            let reason = match error.map(DeliveryError::reason) {
                None => PubAckReason::Success,
                Some("queue_full") => PubAckReason::QuotaExceeded,
                Some("not_authorized") => PubAckReason::NotAuthorized,
                Some(_) => PubAckReason::UnspecifiedError,
            };
            Packet::PubAck(PubAck { pkid, reason }, None)
        } else {
            let reason = match error.map(DeliveryError::reason) {
                None => PubRecReason::Success,
                Some("queue_full") => PubRecReason::QuotaExceeded,
                Some("not_authorized") => PubRecReason::NotAuthorized,
                Some(_) => PubRecReason::UnspecifiedError,
            };
            Packet::PubRec(PubRec { pkid, reason }, None)
        };
        self.write(packet);
    }

    fn handle_pubrel(&mut self, pubrel: PubRel) {
        let reason = if self.awaiting_pubrel.remove(&pubrel.pkid) {
            PubCompReason::Success
        } else {
            PubCompReason::PacketIdentifierNotFound
        };
        self.write(Packet::PubComp(
            PubComp {
                pkid: pubrel.pkid,
                reason,
            },
            None,
        ));
    }

    async fn handle_notification(
        &mut self,
        notification: Result<Option<Notification>, rumqttd::local::LinkError>,
    ) -> Result<(), End> {
        match notification {
            Ok(Some(Notification::Forward(forward))) => {
                self.write(Packet::Publish(forward.publish, forward.properties));
            }
            Ok(Some(Notification::DeviceAck(ack))) => self.write(Packet::from(ack)),
            Ok(Some(Notification::Unschedule)) => {
                self.router.rx.wake().await.map_err(|_| End::RouterGone)?;
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

    fn relay(&mut self, packet: Packet) -> Result<(), End> {
        router::send(&mut self.router.tx, packet).map_err(|_| End::RouterGone)
    }

    /// Encodes `packet` for the device; written out at the next flush.
    fn write(&mut self, packet: Packet) {
        if let Err(error) = self.version.encode(packet, &mut self.wbuf) {
            tracing::error!(?error, "cannot encode a packet for the device");
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.writer.write_all(&self.wbuf).await?;
            self.wbuf.clear();
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
        let _ = self.writer.shutdown().await;
        if end != End::RouterGone {
            let leave = Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            );
            let _ = router::send(&mut self.router.tx, leave);
        }
        if end.fires_will() {
            if let Some(will) = self.will.take() {
                self.ctx.wills.schedule(self.client_id.clone(), will);
            }
        }
        events::ConnectionEnded {
            reason: end.label(),
        }
        .emit();
        // Last: a successor waiting to take over may now register with the router.
        drop(registration);
    }
}

/// Queues one record per route `message` matches, in order.
async fn produce(
    ctx: &LinkContext,
    message: &MqttPublish,
) -> Result<Vec<PendingDelivery>, DeliveryError> {
    let routes = ctx.routes.matches(&message.topic);
    let mut deliveries = Vec::with_capacity(routes.len());
    for route in routes {
        let record = Record::build(route, message);
        deliveries.push(ctx.producer.enqueue(record).await?);
    }
    Ok(deliveries)
}

/// The filter of a shared subscription (`$share/group/filter`), else `path`.
fn shared_path(path: &str) -> &str {
    path.strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(path, |(_, filter)| filter)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
