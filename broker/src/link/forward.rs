//! Where a routed publish's records go: ahead into the spool, or straight to
//! Kafka, route by route. One place decides it for publishes and wills alike.
//!
//! With `[spool]` on, a route's records that its `spool` setting takes are
//! submitted to the spool in one batch (one report: durable there, so they
//! will reach Kafka in order); the others are queued on the producer, each
//! with Kafka's own report. A route's records of one device always take the
//! same path for a given QoS, so they keep their order in Kafka.

use std::sync::Arc;

use tributary_bridge::spool::{SpoolHandle, SpooledRecord};
use tributary_bridge::template::PayloadJson;
use tributary_bridge::{DeliveryError, MqttPublish, Pace, Producer, Record};

use rumqttd::protocol::PublishProperties;
use tributary_bridge::MqttProperties;

use super::gate::Report;
use super::origin::ORIGIN_PROPERTY;
use crate::reload::SharedRoutes;

/// What a full spool does with a publish's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse them at once (MQTT 5: PUBACK 0x97).
    Refuse,
    /// Keep them waiting, in order, until the drain makes room (MQTT 3.1.1,
    /// which has no way to say "full": no acknowledgement until then).
    Wait,
}

#[derive(Clone)]
pub struct Forwarder {
    /// Swapped whole when the configuration file's routes change.
    routes: SharedRoutes,
    producer: Producer,
    /// The spool, when `[spool]` is enabled.
    spool: Option<SpoolHandle>,
}

impl Forwarder {
    pub fn new(routes: SharedRoutes, producer: Producer, spool: Option<SpoolHandle>) -> Self {
        Forwarder {
            routes,
            producer,
            spool,
        }
    }

    /// The producer pace a connection now on `current` should take.
    pub fn pace_for(&self, current: Pace) -> Pace {
        self.producer.pace_for(current)
    }

    /// Queues one record per route `message` matches, in order, those for
    /// Kafka at the producer's `pace`; the reports say when each is in Kafka
    /// or durable in the spool. No reports: no route matched.
    pub async fn forward(
        &self,
        message: &MqttPublish,
        pace: Pace,
        when_full: WhenFull,
    ) -> Result<Vec<Report>, DeliveryError> {
        // The routes in use now: a reload meanwhile does not change this
        // publish's records.
        let table = self.routes.load_full();
        let routes = table.matches(&message.topic);
        let mut reports = Vec::with_capacity(routes.len());
        let mut spooled = Vec::new();
        let mut json = PayloadJson::default();
        for route in routes {
            let record = Record::build_with(route, message, &mut json)?;
            match &self.spool {
                Some(_) if route.spool.takes(message.qos) => {
                    let mut entry = Vec::new();
                    SpooledRecord::of(&record).encode(&mut entry);
                    spooled.push(entry);
                }
                _ => reports.push(Report::Kafka(self.producer.enqueue_on(record, pace).await?)),
            }
        }
        if let (Some(spool), false) = (&self.spool, spooled.is_empty()) {
            // Written ahead: durable in the spool, from which the drain
            // produces it to Kafka in order.
            let ack = match when_full {
                WhenFull::Refuse => spool.submit(spooled).await,
                WhenFull::Wait => spool.submit_waiting(spooled).await,
            }
            .map_err(|_| DeliveryError::SpoolFailed)?;
            reports.push(Report::Spooled(ack));
        }
        Ok(reports)
    }
}

/// The properties of a publish a Kafka consumer may need; `None` when it has
/// none of them. The gateway's own (origin) property is never among them.
pub fn mqtt_properties(properties: Option<&PublishProperties>) -> Option<Arc<MqttProperties>> {
    let p = properties?;
    let user_properties: Vec<(String, String)> = p
        .user_properties
        .iter()
        .filter(|(key, _)| key != ORIGIN_PROPERTY)
        .cloned()
        .collect();
    let mqtt = MqttProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties,
    };
    (mqtt != MqttProperties::default()).then(|| Arc::new(mqtt))
}
