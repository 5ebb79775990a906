//! Everything a Kafka source reports: one struct per occurrence, whose
//! `emit()` writes the log line and the metric together. Labels stay bounded:
//! the source's name, a skip reason, a Kafka topic and partition it consumes;
//! never an MQTT topic or a key.

use std::sync::LazyLock;

use rdkafka::error::KafkaError;

use super::mapping::Skip;
use crate::log_throttle::{LogThrottle, REPEAT_LOG_WINDOW};

/// Records read from Kafka, by `source`.
pub const SOURCE_CONSUMED_TOTAL: &str = "tributary_kafka_source_consumed_total";
/// Records the router took as MQTT messages, by `source`.
pub const SOURCE_PUBLISHED_TOTAL: &str = "tributary_kafka_source_published_total";
/// Records not published because no MQTT message can be made of them, by
/// `source` and `reason`; their offsets are committed all the same.
pub const SOURCE_SKIPPED_TOTAL: &str = "tributary_kafka_source_skipped_total";
/// Records behind the end of each partition a source consumes, from
/// librdkafka's statistics, by `source`, `topic` and `partition`.
pub const SOURCE_LAG_RECORDS: &str = "tributary_kafka_source_lag_records";
/// Offset commits Kafka refused, by `source`.
pub const SOURCE_COMMIT_FAILURES_TOTAL: &str = "tributary_kafka_source_commit_failures_total";
/// Errors the consumer reported instead of a record, by `source`.
pub const SOURCE_ERRORS_TOTAL: &str = "tributary_kafka_source_errors_total";

/// Gives every Kafka source metric its `# HELP` text and unit (through
/// [`crate::events::describe`]).
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(
        SOURCE_CONSUMED_TOTAL,
        Unit::Count,
        "Records read from Kafka by a Kafka source, by source."
    );
    describe_counter!(
        SOURCE_PUBLISHED_TOTAL,
        Unit::Count,
        "Records of a Kafka source the router took as MQTT messages, by source."
    );
    describe_counter!(
        SOURCE_SKIPPED_TOTAL,
        Unit::Count,
        "Records of a Kafka source no MQTT message can be made of, skipped with their offsets committed, by source and reason."
    );
    describe_gauge!(
        SOURCE_LAG_RECORDS,
        Unit::Count,
        "Records behind the end of each partition a Kafka source consumes (librdkafka's statistics), by source, topic and partition."
    );
    describe_counter!(
        SOURCE_COMMIT_FAILURES_TOTAL,
        Unit::Count,
        "Offset commits of a Kafka source that Kafka refused, by source."
    );
    describe_counter!(
        SOURCE_ERRORS_TOTAL,
        Unit::Count,
        "Errors a Kafka source's consumer reported instead of a record, by source."
    );
}

/// One source's counters, registered at start (so they read 0 before the
/// first record); the hot path only bumps handles.
#[derive(Clone)]
pub struct SourceMetrics {
    name: std::sync::Arc<str>,
    consumed: metrics::Counter,
    published: metrics::Counter,
    skipped: [metrics::Counter; Skip::ALL.len()],
}

impl SourceMetrics {
    pub fn register(name: &str) -> SourceMetrics {
        let source = name.to_owned();
        metrics::counter!(SOURCE_COMMIT_FAILURES_TOTAL, "source" => source.clone()).absolute(0);
        metrics::counter!(SOURCE_ERRORS_TOTAL, "source" => source.clone()).absolute(0);
        SourceMetrics {
            name: name.into(),
            consumed: metrics::counter!(SOURCE_CONSUMED_TOTAL, "source" => source.clone()),
            published: metrics::counter!(SOURCE_PUBLISHED_TOTAL, "source" => source.clone()),
            skipped: Skip::ALL.map(|skip| {
                metrics::counter!(
                    SOURCE_SKIPPED_TOTAL,
                    "source" => source.clone(),
                    "reason" => skip.label()
                )
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for SourceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceMetrics({})", self.name)
    }
}

static LOG: LazyLock<LogThrottle> = LazyLock::new(|| LogThrottle::new(REPEAT_LOG_WINDOW));

/// Records read from Kafka.
pub struct Consumed<'a> {
    pub metrics: &'a SourceMetrics,
    pub records: usize,
}

impl Consumed<'_> {
    pub fn emit(self) {
        self.metrics.consumed.increment(self.records as u64);
    }
}

/// Records the router took: their offsets may be committed.
pub struct Published<'a> {
    pub metrics: &'a SourceMetrics,
    pub records: usize,
}

impl Published<'_> {
    pub fn emit(self) {
        self.metrics.published.increment(self.records as u64);
    }
}

/// One record no MQTT message can be made of.
pub struct Skipped<'a> {
    pub metrics: &'a SourceMetrics,
    pub skip: Skip,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl Skipped<'_> {
    pub fn emit(self) {
        let index = Skip::ALL.iter().position(|s| *s == self.skip).unwrap_or(0);
        self.metrics.skipped[index].increment(1);
        let source = self.metrics.name();
        if let Some(suppressed) = LOG.admit(&format!("skip {source} {}", self.skip.label())) {
            tracing::warn!(
                source,
                reason = self.skip.label(),
                kafka_topic = self.topic,
                partition = self.partition,
                offset = self.offset,
                suppressed,
                "a Kafka record cannot become an MQTT message; skipped (its offset is committed)"
            );
        }
    }
}

/// The consumer gave an error instead of a record.
pub struct ConsumeFailed<'a> {
    pub source: &'a str,
    pub error: &'a KafkaError,
}

impl ConsumeFailed<'_> {
    pub fn emit(self) {
        let source = self.source;
        metrics::counter!(SOURCE_ERRORS_TOTAL, "source" => source.to_owned()).increment(1);
        let kind = self
            .error
            .rdkafka_error_code()
            .map_or_else(|| "other".to_owned(), |code| format!("{code:?}"));
        if let Some(suppressed) = LOG.admit(&format!("consume {source} {kind}")) {
            tracing::warn!(source, error = %self.error, suppressed, "Kafka source: consumer error");
        }
    }
}

/// Kafka did not take an offset commit; the records after the last one
/// committed are read again after a restart or a rebalance (duplicates,
/// never losses).
pub struct CommitFailed<'a> {
    pub source: &'a str,
    pub error: &'a KafkaError,
}

impl CommitFailed<'_> {
    pub fn emit(self) {
        let source = self.source;
        metrics::counter!(SOURCE_COMMIT_FAILURES_TOTAL, "source" => source.to_owned()).increment(1);
        if let Some(suppressed) = LOG.admit(&format!("commit {source}")) {
            tracing::warn!(source, error = %self.error, suppressed, "Kafka source: offset commit failed");
        }
    }
}

/// One partition's lag, from librdkafka's statistics.
pub struct Lag<'a> {
    pub source: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub records: i64,
}

impl Lag<'_> {
    pub fn emit(self) {
        metrics::gauge!(
            SOURCE_LAG_RECORDS,
            "source" => self.source.to_owned(),
            "topic" => self.topic.to_owned(),
            "partition" => self.partition.to_string()
        )
        .set(self.records.max(0) as f64);
    }
}

/// Partitions were assigned to, or taken from, this instance.
pub struct Rebalanced<'a> {
    pub source: &'a str,
    pub assigned: bool,
    pub partitions: usize,
}

impl Rebalanced<'_> {
    pub fn emit(self) {
        let what = if self.assigned { "assigned" } else { "revoked" };
        tracing::info!(
            source = self.source,
            partitions = self.partitions,
            "Kafka source: partitions {what}"
        );
    }
}
