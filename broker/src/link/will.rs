//! Wills are the gateway's own: a will given to the router never fires for a
//! local link, so Tributary keeps each connection's will and, on an abnormal end,
//! publishes it after its delay through the same path as a device publish: to
//! Kafka when it matches a route, then to the router's subscribers.
//!
//! A will is never published after a clean DISCONNECT, nor when its client
//! reconnects within the will delay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{LastWill, LastWillProperties, Packet, Publish, PublishProperties};
use rumqttd::Notification;
use tributary_bridge::{MqttPublish, Producer, Record, RouteTable};

use crate::events;
use crate::link::origin::Origin;
use crate::link::retained::{Retained, RetainedMessage};
use crate::link::sessions::Sessions;
use crate::router::{self, EmbeddedRouter, RESERVED_CLIENT_PREFIX};

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
        }
    }
}

/// A connected client's will, owed unless the connection ends cleanly: dropped
/// without [`PendingWill::fire`] or [`PendingWill::cancel`] (a connection task
/// that panicked), it is published all the same.
pub struct PendingWill {
    will: Option<(Arc<str>, Will)>,
    wills: Wills,
}

impl PendingWill {
    pub fn new(wills: Wills, client_id: Arc<str>, will: Option<Will>) -> PendingWill {
        PendingWill {
            will: will.map(|will| (client_id, will)),
            wills,
        }
    }

    /// Schedules the will (after its delay).
    pub fn fire(mut self) {
        if let Some((client_id, will)) = self.will.take() {
            self.wills.schedule(client_id, will);
        }
    }

    /// The connection ended cleanly: no will [MQTT-3.1.2-10].
    pub fn cancel(mut self) {
        self.will = None;
    }
}

impl Drop for PendingWill {
    fn drop(&mut self) {
        if let Some((client_id, will)) = self.will.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                self.wills.schedule(client_id, will);
            }
        }
    }
}

/// Publishes wills through Tributary's own router link.
#[derive(Clone)]
pub struct Wills {
    tx: Arc<Mutex<LinkTx>>,
    producer: Producer,
    routes: Arc<RouteTable>,
    sessions: Sessions,
    retained: Arc<Retained>,
}

impl Wills {
    /// Opens the router link wills are published on.
    pub async fn start(
        router: &EmbeddedRouter,
        producer: Producer,
        routes: Arc<RouteTable>,
        sessions: Sessions,
        retained: Arc<Retained>,
    ) -> anyhow::Result<Wills> {
        let (tx, rx) = router
            .connect(format!("{RESERVED_CLIENT_PREFIX}_wills"))
            .await?;
        tokio::spawn(drain(rx));
        Ok(Wills {
            tx: Arc::new(Mutex::new(tx)),
            producer,
            routes,
            sessions,
            retained,
        })
    }

    /// Publishes `will` of `client_id` after its delay, unless the client
    /// reconnects first.
    pub fn schedule(&self, client_id: Arc<str>, will: Will) {
        let wills = self.clone();
        tokio::spawn(async move {
            if !will.delay.is_zero() {
                let (id, cancelled) = wills.sessions.will_pending(client_id.clone());
                let reconnected = tokio::select! {
                    () = cancelled.cancelled() => true,
                    () = tokio::time::sleep(will.delay) => false,
                };
                wills.sessions.will_done(&client_id, id);
                if reconnected {
                    events::WillCancelled.emit();
                    return;
                }
            }
            wills.publish(&client_id, will).await;
        });
    }

    async fn publish(&self, client_id: &Arc<str>, will: Will) {
        let Ok(topic) = std::str::from_utf8(&will.topic) else {
            return; // validated at CONNECT
        };
        let message = MqttPublish {
            topic: topic.into(),
            client_id: client_id.clone(),
            qos: will.qos,
            retain: will.retain,
            payload: will.payload.clone(),
        };
        let mut kafka_ok = true;
        for route in self.routes.matches(topic) {
            if let Err(error) = self.producer.send(Record::build(route, &message)).await {
                kafka_ok = false;
                events::WillNotInKafka {
                    route: &route.name,
                    error: &error,
                }
                .emit();
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
        let sent = {
            let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            router::send(&mut tx, Packet::Publish(publish, properties))
        };
        events::WillPublished {
            kafka_ok,
            router_ok: sent.is_ok(),
        }
        .emit();
    }
}

/// Keeps the wills link scheduled: it receives nothing it must answer.
async fn drain(mut rx: LinkRx) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
