//! Wills are the gateway's own: a will given to the router never fires for a
//! local link, so Tributary keeps each connection's will and, on an abnormal end,
//! publishes it after its delay through the same path as a device publish: to
//! Kafka when it matches a route, then to the router's subscribers.
//!
//! A will is never published after a clean DISCONNECT, nor when its client
//! reconnects within the will delay.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::{LastWill, LastWillProperties, Packet, Publish, PublishProperties};
use tributary_bridge::{MqttPublish, Pace};

use crate::events;
use crate::link::forward::{mqtt_properties, Forwarder, WhenFull};
use crate::link::origin::Origin;
use crate::link::registry::Registry;
use crate::link::retained::{Retained, RetainedMessage};
use crate::router::Lane;

/// A connection's will, as given in its CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 Will Delay Interval (capped by the session expiry interval).
    pub delay: Duration,
    pub properties: Option<PublishProperties>,
    /// Who left it (the `mqtt.username` and `mqtt.cert_cn` Kafka headers).
    pub username: Option<Arc<str>>,
    pub cert_cn: Option<Arc<str>>,
}

impl Will {
    /// Builds the will from a CONNECT's fields; `session_expiry` caps the delay
    /// [MQTT-3.1.3-9].
    pub fn from_connect(
        will: LastWill,
        properties: Option<LastWillProperties>,
        session_expiry: u32,
    ) -> Will {
        let delay = properties
            .as_ref()
            .and_then(|p| p.delay_interval)
            .unwrap_or(0)
            .min(session_expiry);
        let properties = properties.map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: None,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            subscription_identifiers: Vec::new(),
            content_type: p.content_type,
        });
        Will {
            topic: will.topic,
            payload: will.message,
            qos: will.qos as u8,
            retain: will.retain,
            delay: Duration::from_secs(u64::from(delay)),
            properties,
            username: None,
            cert_cn: None,
        }
    }
}

/// A connected client's will, owed unless the connection ends cleanly: dropped
/// without [`PendingWill::fire`] or [`PendingWill::cancel`] (a connection task
/// that panicked), it is published all the same.
pub struct PendingWill {
    /// Boxed: most connections have no will, and an idle one stays small.
    will: Option<Box<(Arc<str>, Will)>>,
    wills: Wills,
    /// The connection's own publish lane: its will never overtakes what it
    /// published before.
    lane: Lane,
}

impl PendingWill {
    pub fn new(wills: Wills, client_id: Arc<str>, will: Option<Will>, lane: Lane) -> PendingWill {
        PendingWill {
            will: will.map(|will| Box::new((client_id, will))),
            wills,
            lane,
        }
    }

    /// Schedules the will (after its delay).
    pub fn fire(mut self) {
        if let Some(pending) = self.will.take() {
            let (client_id, will) = *pending;
            self.wills.schedule(client_id, will, self.lane.clone());
        }
    }

    /// The connection ended cleanly: no will [MQTT-3.1.2-10].
    pub fn cancel(mut self) {
        self.will = None;
    }
}

impl Drop for PendingWill {
    fn drop(&mut self) {
        if let Some(pending) = self.will.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let (client_id, will) = *pending;
                self.wills.schedule(client_id, will, self.lane.clone());
            }
        }
    }
}

/// Publishes wills through Tributary's own router link.
#[derive(Clone)]
pub struct Wills {
    forwarder: Forwarder,
    registry: Registry,
    retained: Arc<Retained>,
}

impl Wills {
    pub fn new(forwarder: Forwarder, registry: Registry, retained: Arc<Retained>) -> Wills {
        Wills {
            forwarder,
            registry,
            retained,
        }
    }

    /// Publishes `will` of `client_id` after its delay, unless the client
    /// reconnects first.
    pub fn schedule(&self, client_id: Arc<str>, will: Will, lane: Lane) {
        let wills = self.clone();
        tokio::spawn(async move {
            if !will.delay.is_zero() {
                let (id, cancelled) = wills.registry.will_pending(client_id.clone());
                let reconnected = tokio::select! {
                    () = cancelled.cancelled() => true,
                    () = tokio::time::sleep(will.delay) => false,
                };
                wills.registry.will_done(&client_id, id);
                if reconnected {
                    events::WillCancelled.emit();
                    return;
                }
            }
            wills.publish(&client_id, will, &lane).await;
        });
    }

    async fn publish(&self, client_id: &Arc<str>, will: Will, lane: &Lane) {
        let Ok(topic) = std::str::from_utf8(&will.topic) else {
            return; // validated at CONNECT
        };
        let message = MqttPublish {
            topic: topic.into(),
            client_id: client_id.clone(),
            qos: will.qos,
            retain: will.retain,
            payload: will.payload.clone(),
            username: will.username.clone(),
            cert_cn: will.cert_cn.clone(),
            properties: mqtt_properties(will.properties.as_ref()),
            received_ms: crate::link::origin::unix_ms(std::time::SystemTime::now()),
        };
        // Like a publish: into Kafka, or durable in the spool, before any
        // subscriber sees it.
        let mut kafka_ok = true;
        let reports = match self
            .forwarder
            .forward(&message, Pace::Batched, WhenFull::Refuse)
            .await
        {
            Ok(reports) => reports,
            Err(error) => {
                kafka_ok = false;
                events::WillNotInKafka { error: &error }.emit();
                Vec::new()
            }
        };
        for report in reports {
            if let Err(error) = report.await {
                kafka_ok = false;
                events::WillNotInKafka { error: &error }.emit();
            }
        }
        let origin = Origin::now(will.qos, will.retain, client_id);
        let properties = origin.attach(will.properties);
        if will.retain {
            self.retained.update(RetainedMessage {
                topic: will.topic.clone(),
                payload: will.payload.clone(),
                properties: properties.clone(),
                origin,
            });
        }
        // Retained messages are the gateway's (see `retained`).
        let publish = Publish::new(will.topic, will.payload, false);
        let sent = lane
            .send_paced(vec![Packet::Publish(publish, properties)])
            .await;
        events::WillPublished {
            kafka_ok,
            router_ok: sent.is_ok(),
        }
        .emit();
    }
}
