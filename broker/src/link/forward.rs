//! Where a routed publish's records go: ahead into the spool, or straight to
//! Kafka, route by route. One place decides it for publishes and wills alike.
//!
//! With `[spool]` on, a route's records that its `spool` setting takes are
//! submitted to the spool in one batch (one report: durable there, so they
//! will reach Kafka in order); the others are queued on the producer, each
//! with Kafka's own report. A route's records of one device always take the
//! same path for a given QoS, so they keep their order in Kafka.

use std::sync::Arc;

use tributary_bridge::events;
use tributary_bridge::format::Format;
use tributary_bridge::route::KafkaTopic;
use tributary_bridge::spool::{SpoolHandle, SpooledRecord};
use tributary_bridge::template::PayloadJson;
use tributary_bridge::{DeliveryError, MqttPublish, Pace, Producer, Record, Route};

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
    ///
    /// A route with a dead-letter topic writes there, straight to Kafka,
    /// what cannot go to its own topic for good (see `dead_letter`).
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
            if let (Format::Avro(avro), KafkaTopic::Fixed(topic)) =
                (&route.format, &route.kafka_topic)
            {
                if avro.uses_registry() {
                    // Once per route (then kept); a registry out of reach
                    // fails this publish for now, never for good.
                    avro.register(topic)
                        .await
                        .map_err(|error| DeliveryError::SchemaRegistry(error.to_string()))?;
                }
            }
            let record = match Record::build_with(route, message, &mut json) {
                Ok(record) => record,
                Err(error) => {
                    let error = DeliveryError::Invalid(error);
                    match route.dead_letter {
                        Some(_) => {
                            reports
                                .push(self.dead_letter(route, message, &error, None, pace).await?);
                            continue;
                        }
                        None => return Err(error),
                    }
                }
            };
            match &self.spool {
                Some(_) if route.spool.takes(message.qos) => {
                    let mut entry = Vec::new();
                    SpooledRecord::of(&record).encode(&mut entry);
                    spooled.push(entry);
                }
                _ => {
                    let intended = record.topic.clone();
                    let pending = match self.producer.enqueue_on(record, pace).await {
                        Ok(pending) => pending,
                        Err(error) if route.dead_letter.is_some() && !error.is_transient() => {
                            reports.push(
                                self.dead_letter(route, message, &error, Some(&intended), pace)
                                    .await?,
                            );
                            continue;
                        }
                        Err(error) => return Err(error),
                    };
                    if route.dead_letter.is_none() {
                        reports.push(Report::Kafka(pending));
                        continue;
                    }
                    // Kafka may still refuse it for good (too large, no such
                    // topic, not authorized): then it goes to the dead letters.
                    let (forwarder, route, message) =
                        (self.clone(), route.clone(), message.clone());
                    reports.push(Report::Boxed(Box::pin(async move {
                        let error = match pending.await {
                            Ok(_) => return Ok(()),
                            Err(error) if error.is_transient() => return Err(error),
                            Err(error) => error,
                        };
                        // Kafka refuses a whole batch for one record in it
                        // (too large, say): this one is tried again alone
                        // before it is taken for a dead letter.
                        let error = match forwarder.retry_alone(&route, &message, pace).await {
                            Ok(()) => return Ok(()),
                            Err(again) if again.is_transient() => return Err(again),
                            Err(_) => error,
                        };
                        forwarder
                            .dead_letter(&route, &message, &error, Some(&intended), pace)
                            .await?
                            .await
                    })));
                }
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

    /// Builds and sends `message`'s record on `route` again, and waits for
    /// Kafka's answer.
    async fn retry_alone(
        &self,
        route: &Route,
        message: &MqttPublish,
        pace: Pace,
    ) -> Result<(), DeliveryError> {
        let record = Record::build(route, message)?;
        self.producer.enqueue_on(record, pace).await?.await?;
        Ok(())
    }

    /// Writes the dead letter of `message` on `route` for `error`; its report
    /// is `DeadLettered` once Kafka has it (or success, if the route says a
    /// dead letter counts as accepted), else the write's own failure.
    /// Straight to Kafka, never through the spool: a dead letter is not part
    /// of the route's ordered stream.
    async fn dead_letter(
        &self,
        route: &Route,
        message: &MqttPublish,
        error: &DeliveryError,
        intended: Option<&str>,
        pace: Pace,
    ) -> Result<Report, DeliveryError> {
        let failure = error.failure();
        let (Some(dead_letter), Some(letter)) = (
            &route.dead_letter,
            Record::dead_letter(
                route,
                message,
                failure.label(),
                &error.to_string(),
                intended,
            ),
        ) else {
            return Err(error.clone());
        };
        let acknowledge = dead_letter.acknowledge;
        let route = route.name.clone();
        let pending = self.producer.enqueue_on(letter, pace).await?;
        Ok(Report::Boxed(Box::pin(async move {
            pending.await?;
            events::DeadLettered {
                route: &route,
                failure,
            }
            .emit();
            if acknowledge {
                Ok(())
            } else {
                Err(DeliveryError::DeadLettered(failure))
            }
        })))
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
