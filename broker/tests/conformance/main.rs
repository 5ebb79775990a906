//! MQTT conformance: what the standard requires of a broker, checked with real
//! clients (rumqttc for MQTT 3.1.1 and 5, raw bytes where a client library would
//! refuse to misbehave). One module per area; see README "MQTT conformance".

#[path = "../common/mod.rs"]
mod common;

mod connect;
mod delivery;
mod flow;
mod publish;
mod sessions;
mod shared;
mod subscribe;
mod violations;
mod wills;

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnAck, Filter, Packet, Publish, PublishProperties, SubAck};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tributary::Server;

/// Tributary with no Kafka routes: these tests are about the broker side.
pub async fn broker() -> Server {
    broker_with(|_| {}).await
}

pub async fn broker_with(tweak: impl FnOnce(&mut tributary::config::Config)) -> Server {
    let bootstrap = tributary_bridge::testing::bootstrap();
    common::start(&bootstrap, &[], tweak).await
}

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(700);

/// An MQTT 5 client and its event loop, driven by the test.
pub struct Client {
    pub client: AsyncClient,
    pub events: EventLoop,
}

impl Client {
    pub async fn connect(addr: SocketAddr, id: &str) -> (Client, ConnAck) {
        Client::connect_with(addr, id, |_| {}).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        id: &str,
        tweak: impl FnOnce(&mut MqttOptions),
    ) -> (Client, ConnAck) {
        let mut options = common::v5_options(addr, id);
        tweak(&mut options);
        let (client, mut events) = AsyncClient::new(options, 100);
        let connack = tokio::time::timeout(WAIT, async {
            loop {
                if let Event::Incoming(Packet::ConnAck(ack)) = events.poll().await.unwrap() {
                    return ack;
                }
            }
        })
        .await
        .expect("CONNACK");
        (Client { client, events }, connack)
    }

    /// The next incoming packet within `within`, if any.
    pub async fn next(&mut self, within: Duration) -> Option<Packet> {
        tokio::time::timeout(within, async {
            loop {
                match self.events.poll().await {
                    Ok(Event::Incoming(packet)) => return Some(packet),
                    Ok(Event::Outgoing(_)) => {}
                    Err(_) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next PUBLISH within `within`, skipping other packets.
    pub async fn next_publish(&mut self, within: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Packet::Publish(publish) => return Some(publish),
                _ => continue,
            }
        }
    }

    pub async fn subscribe(&mut self, filter: Filter) -> SubAck {
        self.client.subscribe_many([filter]).await.unwrap();
        self.suback().await
    }

    pub async fn suback(&mut self) -> SubAck {
        loop {
            match self.next(WAIT).await.expect("SUBACK") {
                Packet::SubAck(ack) => return ack,
                _ => continue,
            }
        }
    }

    /// Publishes and, for QoS 1/2, waits for the flow to complete.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
        properties: PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, payload.to_vec(), properties)
            .await
            .unwrap();
        if qos == QoS::AtMostOnce {
            // Let the event loop write it out.
            let _ = self.next(Duration::from_millis(50)).await;
            return;
        }
        loop {
            match self.next(WAIT).await.expect("the publish is acknowledged") {
                Packet::PubAck(_) if qos == QoS::AtLeastOnce => return,
                Packet::PubComp(_) if qos == QoS::ExactlyOnce => return,
                _ => continue,
            }
        }
    }
}

pub fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

/// Raw MQTT 5 packets, for what client libraries refuse to send.
pub mod raw5 {
    use tributary_wire::{packet, write_varint};

    /// CONNECT, clean start, keep-alive 60, no properties.
    pub fn connect(client_id: &str) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0];
        body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        body.extend_from_slice(client_id.as_bytes());
        packet(0x10, &body)
    }

    /// PUBLISH QoS 0 with the given raw properties.
    pub fn publish(topic: &str, properties: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        write_varint(properties.len(), &mut body);
        body.extend_from_slice(properties);
        body.extend_from_slice(payload);
        packet(0x30, &body)
    }

    /// PUBLISH QoS 2 with packet id `pkid`, no properties.
    pub fn publish_qos2(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&pkid.to_be_bytes());
        body.push(0);
        body.extend_from_slice(payload);
        packet(0x34, &body)
    }

    /// The topic alias property.
    pub fn topic_alias(alias: u16) -> Vec<u8> {
        let mut out = vec![0x23];
        out.extend_from_slice(&alias.to_be_bytes());
        out
    }

    /// DISCONNECT with a reason code.
    pub fn disconnect(reason: u8) -> Vec<u8> {
        vec![0xe0, 1, reason]
    }

    /// The reason code of a DISCONNECT found in `bytes` after the CONNACK.
    pub fn disconnect_reason(bytes: &[u8]) -> Option<u8> {
        let connack_len = 2 + usize::from(*bytes.get(1)?);
        let rest = bytes.get(connack_len..)?;
        (rest.first() == Some(&0xe0)).then(|| rest.get(2).copied().unwrap_or(0))
    }
}
