//! A source consumer's librdkafka context: its statistics (lag per
//! partition), rebalances (what was handed over is committed before a
//! partition goes to another instance), commit reports and log lines.
//!
//! Never stores an offset: only the source does, after the router took the
//! record.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;

use super::events;
use crate::log_throttle::{LogThrottle, REPEAT_LOG_WINDOW};

/// The context of one source's consumer.
pub struct SourceContext {
    name: String,
    throttle: LogThrottle,
}

impl SourceContext {
    pub fn new(name: &str) -> SourceContext {
        SourceContext {
            name: name.to_owned(),
            throttle: LogThrottle::new(REPEAT_LOG_WINDOW),
        }
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let suppressed = self
            .throttle
            .admit(&format!("log {} {level:?} {facility}", self.name));
        crate::events::LibrdkafkaLog {
            level,
            facility,
            message,
            suppressed,
        }
        .emit();
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = error
            .rdkafka_error_code()
            .map_or_else(|| "other".to_owned(), |code| format!("{code:?}"));
        let suppressed = self.throttle.admit(&format!("error {} {kind}", self.name));
        crate::events::KafkaClientError {
            error: &error,
            kind: &kind,
            reason,
            suppressed,
        }
        .emit();
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for partition in stats.partitions.values() {
                // Partition -1 is librdkafka's internal one; a lag of -1 is
                // not known yet.
                if partition.partition < 0 || !partition.desired || partition.consumer_lag < 0 {
                    continue;
                }
                events::Lag {
                    source: &self.name,
                    topic,
                    partition: partition.partition,
                    records: partition.consumer_lag,
                }
                .emit();
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                // Everything stored was taken by the router; commit it before
                // another instance starts from the last commit. Blocking, but
                // only during a rebalance.
                if partitions.count() > 0 {
                    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                        if !nothing_to_commit(&error) {
                            events::CommitFailed {
                                source: &self.name,
                                error: &error,
                            }
                            .emit();
                        }
                    }
                }
                // Another instance reports these from now on.
                for element in partitions.elements() {
                    events::Lag {
                        source: &self.name,
                        topic: element.topic(),
                        partition: element.partition(),
                        records: 0,
                    }
                    .emit();
                }
                events::Rebalanced {
                    source: &self.name,
                    assigned: false,
                    partitions: partitions.count(),
                }
                .emit();
            }
            Rebalance::Assign(partitions) => events::Rebalanced {
                source: &self.name,
                assigned: true,
                partitions: partitions.count(),
            }
            .emit(),
            Rebalance::Error(error) => events::ConsumeFailed {
                source: &self.name,
                error,
            }
            .emit(),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            if !nothing_to_commit(&error) {
                events::CommitFailed {
                    source: &self.name,
                    error: &error,
                }
                .emit();
            }
        }
    }
}

/// librdkafka answers a commit with nothing new stored with an error of its
/// own; it is no failure.
pub fn nothing_to_commit(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset)
}
