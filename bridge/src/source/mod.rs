//! Kafka -> MQTT: `[[kafka_sources]]` consumed with a consumer group, each
//! record turned into an MQTT message for the broker to publish.
//!
//! This module knows nothing of MQTT connections or the router. It hands out
//! [`Batch`]es of messages, and stores a batch's offsets only when the broker
//! gives its [`Handoff`] back, which the broker does once the router took
//! every message of it. Offsets are never stored or committed otherwise
//! (`enable.auto.commit` and `enable.auto.offset.store` are off): at least
//! once, never at most once. Stored offsets are committed every
//! [`COMMIT_INTERVAL`], when partitions are revoked, and at [`Source::close`].
//!
//! Records of which no message can be made (see [`Skip`]) are counted and
//! their offsets stored with the batch: they can never succeed, and must
//! not hold back the records after them.

pub mod config;
pub mod context;
pub mod events;
pub mod mapping;
pub mod topic;

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use thiserror::Error;

pub use config::{validate_sources, OffsetReset, SourceConfig};
pub use mapping::{KafkaRecord, Mapping, Skip, SourceMessage};

use crate::config::KafkaConfig;
use context::SourceContext;
use events::SourceMetrics;

/// How often offsets stored since the last commit are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Most records in one batch.
pub const MAX_BATCH: usize = 512;

/// Why a source could not start (a Kafka-side configuration problem).
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("kafka source {source_name}: invalid mapping: {message}")]
    Mapping {
        source_name: String,
        message: String,
    },
    #[error("kafka source {source_name}: creating the consumer: {error}")]
    Consumer {
        source_name: String,
        error: KafkaError,
    },
}

/// One `[[kafka_sources]]` entry's consumer.
pub struct Source {
    consumer: StreamConsumer<SourceContext>,
    mapping: Mapping,
    metrics: SourceMetrics,
    /// Offsets stored and not committed yet. Cells: a record read borrows
    /// the consumer, and a commit may fall due meanwhile.
    uncommitted: Cell<bool>,
    last_commit: Cell<Instant>,
}

/// Messages to publish, and the offsets to store once the router took them.
pub struct Batch {
    pub messages: Vec<SourceMessage>,
    pub handoff: Handoff,
}

/// The offsets of a batch's records, skipped ones included: given back to
/// [`Source::handed_over`] once every message of the batch was taken.
#[derive(Debug, Default)]
#[must_use = "a batch's offsets are stored only when its handoff is given back"]
pub struct Handoff {
    /// Next offset to read, per topic and partition.
    next: Vec<(String, i32, i64)>,
    published: usize,
}

impl Handoff {
    fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .next
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some((_, _, next)) => *next = (*next).max(offset + 1),
            None => self.next.push((topic.to_owned(), partition, offset + 1)),
        }
    }

    fn offsets(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(self.next.len());
        for (topic, partition, next) in &self.next {
            // Only fails for an offset librdkafka has no name for; a
            // record's offset always has one.
            let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        list
    }
}

impl Source {
    /// Creates the consumer and subscribes; records flow once Kafka assigns
    /// partitions.
    pub fn start(config: &SourceConfig, kafka: &KafkaConfig) -> Result<Source, SourceError> {
        let mapping = Mapping::new(config).map_err(|message| SourceError::Mapping {
            source_name: config.name.clone(),
            message,
        })?;
        let failed = |error| SourceError::Consumer {
            source_name: config.name.clone(),
            error,
        };
        let consumer: StreamConsumer<SourceContext> = config
            .consumer_config(kafka)
            .create_with_context(SourceContext::new(&config.name))
            .map_err(failed)?;
        let topics = config.subscription();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(failed)?;
        Ok(Source {
            consumer,
            mapping,
            metrics: SourceMetrics::register(&config.name),
            uncommitted: Cell::new(false),
            last_commit: Cell::new(Instant::now()),
        })
    }

    pub fn name(&self) -> &str {
        self.metrics.name()
    }

    /// Waits for the next records (at least one), then takes the ones
    /// already waiting, up to `max`. Commits what is due meanwhile. Cancel
    /// safe: a record is only read in the poll that returns it.
    pub async fn next_batch(&mut self, max: usize) -> Batch {
        let mut batch = Batch {
            messages: Vec::new(),
            handoff: Handoff::default(),
        };
        loop {
            let first = tokio::time::timeout(COMMIT_INTERVAL, self.consumer.recv()).await;
            self.commit_if_due();
            match first {
                Err(_elapsed) => continue,
                Ok(Err(error)) => {
                    events::ConsumeFailed {
                        source: self.metrics.name(),
                        error: &error,
                    }
                    .emit();
                    // Errors seldom come alone; do not spin on them.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Ok(Ok(message)) => {
                    take(&self.mapping, &self.metrics, &message, &mut batch);
                    break;
                }
            }
        }
        let mut read = 1;
        while read < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => take(&self.mapping, &self.metrics, &message, &mut batch),
                Some(Err(error)) => events::ConsumeFailed {
                    source: self.metrics.name(),
                    error: &error,
                }
                .emit(),
                None => break,
            }
            read += 1;
        }
        events::Consumed {
            metrics: &self.metrics,
            records: read,
        }
        .emit();
        batch
    }

    /// The router took every message of the batch `handoff` came with: its
    /// offsets are stored, to be committed.
    pub fn handed_over(&mut self, handoff: Handoff) {
        events::Published {
            metrics: &self.metrics,
            records: handoff.published,
        }
        .emit();
        if handoff.next.is_empty() {
            return;
        }
        // A partition revoked meanwhile refuses its offset: its records are
        // read again by the instance that has it now (duplicates, no loss).
        if let Err(error) = self.consumer.store_offsets(&handoff.offsets()) {
            tracing::debug!(source = self.name(), %error, "offsets not stored (partition revoked?)");
        }
        self.uncommitted.set(true);
        self.commit_if_due();
    }

    fn commit_if_due(&self) {
        if !self.uncommitted.get() || self.last_commit.get().elapsed() < COMMIT_INTERVAL {
            return;
        }
        self.uncommitted.set(false);
        self.last_commit.set(Instant::now());
        // The outcome arrives at the context's commit callback.
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Async) {
            if !context::nothing_to_commit(&error) {
                events::CommitFailed {
                    source: self.metrics.name(),
                    error: &error,
                }
                .emit();
            }
        }
    }

    /// Commits what was handed over and leaves the consumer group. Closing
    /// blocks on Kafka, so it runs on the blocking pool.
    pub async fn close(self) {
        let Source {
            consumer, metrics, ..
        } = self;
        let closed = tokio::task::spawn_blocking(move || {
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                if !context::nothing_to_commit(&error) {
                    events::CommitFailed {
                        source: metrics.name(),
                        error: &error,
                    }
                    .emit();
                }
            }
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
        if closed.is_err() {
            tracing::warn!("a Kafka source did not close cleanly");
        }
    }
}

/// Adds `message` to `batch`: as an MQTT message, or counted as skipped.
/// Its offset goes into the handoff either way.
fn take(
    mapping: &Mapping,
    metrics: &SourceMetrics,
    message: &BorrowedMessage<'_>,
    batch: &mut Batch,
) {
    let record = KafkaRecord {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        payload: message.payload(),
        headers: read_headers(message),
    };
    match mapping.message(&record) {
        Ok(mqtt) => {
            batch.messages.push(mqtt);
            batch.handoff.published += 1;
        }
        Err(skip) => events::Skipped {
            metrics,
            skip,
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
        }
        .emit(),
    }
    batch
        .handoff
        .record(record.topic, record.partition, record.offset);
}

/// A record's headers whose names are UTF-8.
///
/// rdkafka panics on a header name that is not UTF-8 (it unwraps the
/// conversion), and any producer can write one. Each header is read on its
/// own under `catch_unwind`, so such a header is left out and the record
/// goes on; nothing about it can stop the source.
fn read_headers<'a>(message: &'a BorrowedMessage<'_>) -> Vec<(String, Option<&'a [u8]>)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    (0..headers.count())
        .filter_map(|i| {
            std::panic::catch_unwind(AssertUnwindSafe(|| headers.try_get(i)))
                .ok()
                .flatten()
                .map(|header| (header.key.to_owned(), header.value))
        })
        .collect()
}
