//! The one Kafka producer the gateway shares, and its delivery reports.
//!
//! Sending is two steps so callers can keep order: [`Producer::enqueue`] places the
//! record in librdkafka's queue (in call order; it waits, never drops, when the
//! queue is full) and returns a [`PendingDelivery`] that resolves to Kafka's own
//! delivery report. Nothing here ever reports success that Kafka did not report.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use thiserror::Error;

use crate::config::KafkaConfig;
use crate::context::BridgeContext;
use crate::events;
use crate::health::KafkaHealth;
use crate::record::Record;

/// First pause before retrying an enqueue into a full local queue; doubles up to
/// [`QUEUE_FULL_MAX_BACKOFF`].
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);
const QUEUE_FULL_MAX_BACKOFF: Duration = Duration::from_millis(50);

/// Where Kafka stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record is not (known to be) in Kafka. Every variant means: do not
/// acknowledge the publish as delivered.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DeliveryError {
    /// Kafka's delivery report was negative (including librdkafka's own
    /// `delivery_timeout_ms` expiring).
    #[error("Kafka did not accept the record: {0}")]
    Rejected(RDKafkaErrorCode),
    /// The record never entered the producer's queue.
    #[error("the record could not be queued for Kafka: {0}")]
    NotQueued(RDKafkaErrorCode),
    /// The local queue stayed full for the whole delivery timeout.
    #[error("the producer queue stayed full for {0:?}")]
    QueueFull(Duration),
    /// The producer went away before reporting (shutdown).
    #[error("the producer stopped before Kafka reported on the record")]
    Canceled,
    /// The spool is at `max_bytes` (or the disk is full): the record is
    /// neither in Kafka nor durably spooled.
    #[error("the spool is full")]
    SpoolFull,
    /// The spool could not make the record durable (an I/O error, a failed
    /// fsync, its thread gone).
    #[error("the spool could not store the record")]
    SpoolFailed,
}

/// What kind of failure a [`DeliveryError`] is: the one outcome type the
/// gateway matches on, from which the metric label, the MQTT reason code and
/// "may succeed later" are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryFailure {
    /// Kafka did not answer in time (`delivery_timeout_ms`, a request timeout).
    Timeout,
    /// The record is larger than Kafka accepts.
    MessageTooLarge,
    /// Kafka's ACLs refuse the topic.
    NotAuthorized,
    /// The topic (or partition) does not exist.
    UnknownTopic,
    /// The producer's local queue stayed full.
    QueueFull,
    /// The producer stopped before reporting (shutdown).
    Canceled,
    /// Any other error Kafka or librdkafka reported.
    Kafka,
    /// The spool is full.
    SpoolFull,
    /// The spool could not store the record.
    SpoolFailed,
}

impl DeliveryFailure {
    /// A short, bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            DeliveryFailure::Timeout => "timeout",
            DeliveryFailure::MessageTooLarge => "message_too_large",
            DeliveryFailure::NotAuthorized => "not_authorized",
            DeliveryFailure::UnknownTopic => "unknown_topic",
            DeliveryFailure::QueueFull => "queue_full",
            DeliveryFailure::Canceled => "canceled",
            DeliveryFailure::Kafka => "kafka_error",
            DeliveryFailure::SpoolFull => "spool_full",
            DeliveryFailure::SpoolFailed => "spool_failed",
        }
    }

    /// True when sending the same record again later may succeed.
    pub fn is_transient(self) -> bool {
        !matches!(
            self,
            DeliveryFailure::MessageTooLarge
                | DeliveryFailure::NotAuthorized
                | DeliveryFailure::UnknownTopic
        )
    }
}

impl DeliveryError {
    /// The kind of failure, from Kafka's error code.
    pub fn failure(&self) -> DeliveryFailure {
        let code = match self {
            DeliveryError::QueueFull(_) => return DeliveryFailure::QueueFull,
            DeliveryError::Canceled => return DeliveryFailure::Canceled,
            DeliveryError::SpoolFull => return DeliveryFailure::SpoolFull,
            DeliveryError::SpoolFailed => return DeliveryFailure::SpoolFailed,
            DeliveryError::Rejected(code) | DeliveryError::NotQueued(code) => *code,
        };
        match code {
            RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut => {
                DeliveryFailure::Timeout
            }
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize => {
                DeliveryFailure::MessageTooLarge
            }
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed => DeliveryFailure::NotAuthorized,
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::InvalidTopic => DeliveryFailure::UnknownTopic,
            RDKafkaErrorCode::QueueFull => DeliveryFailure::QueueFull,
            _ => DeliveryFailure::Kafka,
        }
    }

    /// The failure's metric label (see [`DeliveryFailure::label`]).
    pub fn reason(&self) -> &'static str {
        self.failure().label()
    }

    /// True when sending the same record again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.failure().is_transient()
    }
}
/// The gateway's producer: cheap to clone, one librdkafka instance behind it.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<BridgeContext>,
    /// The same as the callbacks' (rdkafka keeps its context out of reach).
    health: KafkaHealth,
    delivery_timeout: Duration,
}

impl Producer {
    /// Creates the producer. It connects lazily; an unreachable Kafka is not an
    /// error here (see [`Producer::health`]).
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut client = config.producer_config();
        client.set_log_level(RDKafkaLogLevel::Info);
        let health = KafkaHealth::new(config.metadata_max_age());
        let inner = client.create_with_context(BridgeContext::new(health.clone()))?;
        Ok(Producer {
            inner,
            health,
            delivery_timeout: config.delivery_timeout(),
        })
    }

    /// Whether Kafka is reachable, as this producer sees it.
    pub fn health(&self) -> &KafkaHealth {
        &self.health
    }

    /// Queues `record` for Kafka, in call order. When the local queue is full it
    /// waits (backpressure) for at most the delivery timeout.
    pub async fn enqueue(&self, record: Record) -> Result<PendingDelivery, DeliveryError> {
        let started = Instant::now();
        let mut backoff = QUEUE_FULL_BACKOFF;
        let mut future_record = FutureRecord::to(&record.topic)
            .payload(&record.payload[..])
            .headers(record.headers.clone());
        if let Some(key) = &record.key {
            future_record = future_record.key(&key[..]);
        }
        loop {
            match self.inner.send_result(future_record) {
                Ok(delivery) => {
                    return Ok(PendingDelivery {
                        delivery,
                        health: self.health.clone(),
                        route: record.route,
                        metrics: record.metrics,
                        started,
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if started.elapsed() >= self.delivery_timeout {
                        let err = DeliveryError::QueueFull(self.delivery_timeout);
                        events::DeliveryFailed {
                            route: &record.route,
                            error: &err,
                        }
                        .emit();
                        return Err(err);
                    }
                    future_record = back;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(QUEUE_FULL_MAX_BACKOFF);
                }
                Err((err, _)) => {
                    let err = DeliveryError::NotQueued(
                        err.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
                    );
                    events::DeliveryFailed {
                        route: &record.route,
                        error: &err,
                    }
                    .emit();
                    return Err(err);
                }
            }
        }
    }

    /// Queues `record` and waits for Kafka's delivery report.
    pub async fn send(&self, record: Record) -> Result<Delivered, DeliveryError> {
        self.enqueue(record).await?.await
    }

    /// Records queued or in flight to Kafka, not yet reported on.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }

    /// Waits (off the async runtime) until every queued record is reported on, or
    /// `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush(Timeout::After(timeout)))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Fetches cluster metadata (off the async runtime); returns the broker count.
    pub async fn fetch_metadata(&self, timeout: Duration) -> Result<usize, KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .map(|metadata| metadata.brokers().len())
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }
}

/// A queued record's delivery report, still to come.
#[must_use = "a delivery that is not awaited tells nobody whether the record is in Kafka"]
pub struct PendingDelivery {
    delivery: DeliveryFuture,
    /// Told of every positive report: one ends an outage as surely as a metadata
    /// fetch does, and sooner when records are flowing.
    health: KafkaHealth,
    route: std::sync::Arc<str>,
    metrics: crate::events::RouteMetrics,
    started: Instant,
}

impl Future for PendingDelivery {
    type Output = Result<Delivered, DeliveryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let report = match Pin::new(&mut self.delivery).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(report) => report,
        };
        let result = match report {
            Ok(Ok(delivery)) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((err, _message))) => Err(DeliveryError::Rejected(
                err.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
            )),
            Err(_canceled) => Err(DeliveryError::Canceled),
        };
        match &result {
            Ok(_) => {
                self.health.delivered();
                events::Delivered {
                    metrics: &self.metrics,
                    latency: self.started.elapsed(),
                }
                .emit()
            }
            Err(error) => events::DeliveryFailed {
                route: &self.route,
                error,
            }
            .emit(),
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_labels() {
        assert_eq!(
            DeliveryError::Rejected(RDKafkaErrorCode::MessageTimedOut).reason(),
            "timeout"
        );
        assert_eq!(
            DeliveryError::Rejected(RDKafkaErrorCode::TopicAuthorizationFailed).reason(),
            "not_authorized"
        );
        assert_eq!(
            DeliveryError::QueueFull(Duration::from_secs(1)).reason(),
            "queue_full"
        );
        assert_eq!(
            DeliveryError::Rejected(RDKafkaErrorCode::NotEnoughReplicas).reason(),
            "kafka_error"
        );
        assert!(DeliveryError::Rejected(RDKafkaErrorCode::MessageTimedOut).is_transient());
        assert!(!DeliveryError::NotQueued(RDKafkaErrorCode::MessageSizeTooLarge).is_transient());
    }
}
