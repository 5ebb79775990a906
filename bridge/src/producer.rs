//! The one Kafka producer the gateway shares, and its delivery reports.
//!
//! Sending is two steps so callers can keep order: [`Producer::enqueue`] places the
//! record in librdkafka's queue (in call order; it waits, never drops, when the
//! queue is full) and returns a [`PendingDelivery`] that resolves to Kafka's own
//! delivery report. Nothing here ever reports success that Kafka did not report.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
use crate::record::{Record, RecordError};

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
    /// The publish cannot become a record on its route (a template that
    /// cannot be filled, a payload the format cannot take): never sent.
    #[error("the publish cannot become a record: {0}")]
    Invalid(#[from] RecordError),
    /// Not in its route's topic for a reason retrying cannot fix, but kept
    /// in the route's dead-letter topic (the write is in Kafka or durable in
    /// the spool).
    #[error("written to the dead-letter topic ({})", .0.label())]
    DeadLettered(DeliveryFailure),
    /// The route's schema could not be registered (the registry is out of
    /// reach or refused it): for now; the device may send it again.
    #[error("{0}")]
    SchemaRegistry(String),
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
    /// The payload is not what the route's format or templates need.
    InvalidPayload,
    /// The route's topic or key cannot be made for this publish (its topic,
    /// client id or user name does not fill the template).
    Unroutable,
    /// The schema registry could not give the route's schema an id.
    SchemaRegistry,
}

impl DeliveryFailure {
    /// Every kind, in declaration order: the metric label values registered
    /// at start, so each reads 0 before it first happens.
    pub const ALL: [DeliveryFailure; 12] = [
        DeliveryFailure::Timeout,
        DeliveryFailure::MessageTooLarge,
        DeliveryFailure::NotAuthorized,
        DeliveryFailure::UnknownTopic,
        DeliveryFailure::QueueFull,
        DeliveryFailure::Canceled,
        DeliveryFailure::Kafka,
        DeliveryFailure::SpoolFull,
        DeliveryFailure::SpoolFailed,
        DeliveryFailure::InvalidPayload,
        DeliveryFailure::Unroutable,
        DeliveryFailure::SchemaRegistry,
    ];

    /// Its place in [`DeliveryFailure::ALL`]. The match has no wildcard, so
    /// a new kind does not compile (in tests) until it has a place there too.
    #[cfg(test)]
    const fn index(self) -> usize {
        match self {
            DeliveryFailure::Timeout => 0,
            DeliveryFailure::MessageTooLarge => 1,
            DeliveryFailure::NotAuthorized => 2,
            DeliveryFailure::UnknownTopic => 3,
            DeliveryFailure::QueueFull => 4,
            DeliveryFailure::Canceled => 5,
            DeliveryFailure::Kafka => 6,
            DeliveryFailure::SpoolFull => 7,
            DeliveryFailure::SpoolFailed => 8,
            DeliveryFailure::InvalidPayload => 9,
            DeliveryFailure::Unroutable => 10,
            DeliveryFailure::SchemaRegistry => 11,
        }
    }

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
            DeliveryFailure::InvalidPayload => "invalid_payload",
            DeliveryFailure::Unroutable => "unroutable",
            DeliveryFailure::SchemaRegistry => "schema_registry",
        }
    }

    /// True when sending the same record again later may succeed.
    pub fn is_transient(self) -> bool {
        !matches!(
            self,
            DeliveryFailure::MessageTooLarge
                | DeliveryFailure::NotAuthorized
                | DeliveryFailure::UnknownTopic
                | DeliveryFailure::InvalidPayload
                | DeliveryFailure::Unroutable
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
            DeliveryError::SchemaRegistry(_)
            | DeliveryError::Invalid(RecordError::NotRegistered(_)) => {
                return DeliveryFailure::SchemaRegistry
            }
            DeliveryError::Invalid(error) if error.is_payload() => {
                return DeliveryFailure::InvalidPayload
            }
            DeliveryError::Invalid(_) => return DeliveryFailure::Unroutable,
            DeliveryError::DeadLettered(failure) => return *failure,
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
/// Which of the producer's two librdkafka instances a record takes.
///
/// Records of one connection keep their order only at one pace: a
/// connection changes pace only when none of its records is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pace {
    /// Linger 0: sent at once. For records sent while few are in flight.
    #[default]
    Prompt,
    /// `linger_ms`: batched, for throughput under load.
    Batched,
}

/// The gateway's producer: cheap to clone. Two librdkafka instances behind
/// it: one lingering to batch under load, one sending at once while the
/// load is light (see [`Pace`]).
#[derive(Clone)]
pub struct Producer {
    batched: FutureProducer<BridgeContext>,
    /// `None` when records always linger (`linger_above_records = 0`).
    prompt: Option<FutureProducer<BridgeContext>>,
    /// Records enqueued and not yet reported on, both paces.
    outstanding: Arc<AtomicUsize>,
    /// Above this many outstanding records, connections take the batched
    /// pace; below a quarter of it, the prompt one.
    linger_above: usize,
    /// The same as the callbacks' (rdkafka keeps its context out of reach).
    health: KafkaHealth,
    delivery_timeout: Duration,
}

impl Producer {
    /// Creates the producer. It connects lazily; an unreachable Kafka is not an
    /// error here (see [`Producer::health`]).
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let health = KafkaHealth::new(config.metadata_max_age());
        let create = |mut client: rdkafka::ClientConfig| {
            client.set_log_level(RDKafkaLogLevel::Info);
            client.create_with_context(BridgeContext::new(health.clone()))
        };
        let batched = create(config.producer_config())?;
        let prompt = config.prompt_producer_config().map(create).transpose()?;
        Ok(Producer {
            batched,
            prompt,
            outstanding: Arc::default(),
            linger_above: usize::try_from(config.linger_above_records).unwrap_or(usize::MAX),
            health,
            delivery_timeout: config.delivery_timeout(),
        })
    }

    /// The pace a connection now on `current` should take: batched while
    /// many records are in flight, prompt once few are (with hysteresis, so
    /// connections do not flip at the boundary).
    pub fn pace_for(&self, current: Pace) -> Pace {
        if self.prompt.is_none() {
            return Pace::Batched;
        }
        let load = self.outstanding.load(Ordering::Relaxed);
        match current {
            Pace::Prompt if load > self.linger_above => Pace::Batched,
            Pace::Batched if load < self.linger_above / 4 => Pace::Prompt,
            same => same,
        }
    }

    /// Whether Kafka is reachable, as this producer sees it.
    pub fn health(&self) -> &KafkaHealth {
        &self.health
    }

    /// Queues `record` for Kafka at the batched pace (see [`Producer::enqueue_on`]).
    pub async fn enqueue(&self, record: Record) -> Result<PendingDelivery, DeliveryError> {
        self.enqueue_on(record, Pace::Batched).await
    }

    /// Queues `record` for Kafka at `pace`, in call order. When the local
    /// queue is full it waits (backpressure) for at most the delivery timeout.
    pub async fn enqueue_on(
        &self,
        record: Record,
        pace: Pace,
    ) -> Result<PendingDelivery, DeliveryError> {
        let inner = match (pace, &self.prompt) {
            (Pace::Prompt, Some(prompt)) => prompt,
            _ => &self.batched,
        };
        let started = Instant::now();
        let mut backoff = QUEUE_FULL_BACKOFF;
        let mut future_record = FutureRecord::to(&record.topic)
            .payload(&record.payload[..])
            .headers(record.headers.clone());
        if let Some(key) = &record.key {
            future_record = future_record.key(&key[..]);
        }
        loop {
            match inner.send_result(future_record) {
                Ok(delivery) => {
                    return Ok(PendingDelivery {
                        delivery: Some(delivery),
                        _outstanding: Some(Outstanding::count(&self.outstanding)),
                        health: self.health.clone(),
                        route: record.route,
                        metrics: record.metrics,
                        started,
                        state: State::Waited,
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
        self.batched.in_flight_count() + self.prompt.as_ref().map_or(0, |p| p.in_flight_count())
    }

    /// Waits (off the async runtime) until every queued record is reported on, or
    /// `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let batched = self.batched.clone();
        let prompt = self.prompt.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            if let Some(prompt) = prompt {
                prompt.flush(Timeout::After(timeout))?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            batched.flush(Timeout::After(left))
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Fetches cluster metadata (off the async runtime); returns the broker count.
    pub async fn fetch_metadata(&self, timeout: Duration) -> Result<usize, KafkaError> {
        let inner = self.batched.clone();
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

/// One record counted in [`Producer::pace_for`]'s load until its report
/// arrives or nobody waits for it any more.
struct Outstanding(Arc<AtomicUsize>);

impl Outstanding {
    fn count(outstanding: &Arc<AtomicUsize>) -> Outstanding {
        outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(outstanding.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A queued record's delivery report, still to come.
#[must_use = "a delivery that is not awaited tells nobody whether the record is in Kafka"]
pub struct PendingDelivery {
    /// Taken by the task a detached delivery moves to.
    delivery: Option<DeliveryFuture>,
    _outstanding: Option<Outstanding>,
    /// Told of every positive report: one ends an outage as surely as a metadata
    /// fetch does, and sooner when records are flowing.
    health: KafkaHealth,
    route: std::sync::Arc<str>,
    metrics: crate::events::RouteMetrics,
    started: Instant,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Somebody waits for the report.
    Waited,
    /// Nobody does any more (a QoS 0 publisher gone, say): a task of its own
    /// takes the report, so the metrics and Kafka's health still hear it.
    Detached,
    Reported,
}

impl Drop for PendingDelivery {
    fn drop(&mut self) {
        if self.state != State::Waited {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let detached = PendingDelivery {
            delivery: self.delivery.take(),
            _outstanding: self._outstanding.take(),
            health: self.health.clone(),
            route: self.route.clone(),
            metrics: self.metrics.clone(),
            started: self.started,
            // Dropped unreported in its turn (the runtime shutting down), it
            // is not passed on again.
            state: State::Detached,
        };
        runtime.spawn(async move {
            let _ = detached.await;
        });
    }
}

impl Future for PendingDelivery {
    type Output = Result<Delivered, DeliveryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(delivery) = self.delivery.as_mut() else {
            return Poll::Ready(Err(DeliveryError::Canceled));
        };
        let report = match Pin::new(delivery).poll(cx) {
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
        self.state = State::Reported;
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
    fn the_pace_follows_the_load_with_hysteresis() {
        let config = KafkaConfig {
            linger_above_records: 8,
            ..KafkaConfig::default()
        };
        let producer = Producer::new(&config).unwrap();
        assert_eq!(producer.pace_for(Pace::Prompt), Pace::Prompt);
        let mut held: Vec<Outstanding> = (0..9)
            .map(|_| Outstanding::count(&producer.outstanding))
            .collect();
        assert_eq!(producer.pace_for(Pace::Prompt), Pace::Batched, "9 > 8");
        held.truncate(2);
        assert_eq!(
            producer.pace_for(Pace::Batched),
            Pace::Batched,
            "2 is not < 8/4"
        );
        held.truncate(1);
        assert_eq!(producer.pace_for(Pace::Batched), Pace::Prompt, "1 < 8/4");
        drop(held);
        assert_eq!(producer.outstanding.load(Ordering::Relaxed), 0);

        let always = Producer::new(&KafkaConfig {
            linger_above_records: 0,
            ..KafkaConfig::default()
        })
        .unwrap();
        assert!(always.prompt.is_none());
        assert_eq!(always.pace_for(Pace::Prompt), Pace::Batched);
    }

    #[test]
    fn every_failure_kind_is_listed_once() {
        for (i, failure) in DeliveryFailure::ALL.into_iter().enumerate() {
            assert_eq!(failure.index(), i, "{failure:?} is out of place in ALL");
        }
        let labels: std::collections::HashSet<_> =
            DeliveryFailure::ALL.map(DeliveryFailure::label).into();
        assert_eq!(labels.len(), DeliveryFailure::ALL.len());
    }

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
