//! Everything the bridge reports: one struct per occurrence, whose `emit()` writes
//! the log line and the metric together. Labels stay bounded (route, reason).

use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use crate::health::Unreachable;
use crate::producer::{DeliveryError, DeliveryFailure};

/// Records Kafka confirmed, by `route`.
pub const KAFKA_DELIVERED_TOTAL: &str = "tributary_kafka_delivered_total";
/// Records Kafka did not confirm, by `route` and `reason`.
pub const KAFKA_DELIVERY_FAILURES_TOTAL: &str = "tributary_kafka_delivery_failures_total";
/// Time from enqueue to Kafka's positive delivery report, by `route`.
pub const KAFKA_DELIVERY_SECONDS: &str = "tributary_kafka_delivery_seconds";
/// Client-level errors librdkafka reported (broker down, auth…), by `reason`.
pub const KAFKA_CLIENT_ERRORS_TOTAL: &str = "tributary_kafka_client_errors_total";
/// Records queued or in flight in the producer, not yet reported on.
pub const KAFKA_QUEUED_RECORDS: &str = "tributary_kafka_queued_records";
/// 1 while Kafka is reachable, 0 from the moment librdkafka reports all brokers
/// down (or metadata requests have failed for `kafka.metadata_max_age_ms`) until
/// a delivery or a metadata fetch succeeds again.
pub const KAFKA_UP: &str = "tributary_kafka_up";

/// Bytes of the spool's files on disk.
pub const SPOOL_BYTES: &str = "tributary_spool_bytes";
/// Records in the spool not yet in Kafka.
pub const SPOOL_RECORDS: &str = "tributary_spool_records";
/// Age of the oldest record in the spool not yet in Kafka, in seconds (0
/// when there is none).
pub const SPOOL_OLDEST_SECONDS: &str = "tributary_spool_oldest_seconds";
/// Records the drain saw Kafka acknowledge and removed from the spool.
pub const SPOOL_DRAINED_TOTAL: &str = "tributary_spool_drained_total";

/// Records written to the spool (acknowledged once durable there).
pub const SPOOL_APPENDED_TOTAL: &str = "tributary_spool_appended_total";
/// Time one group commit's fsync took.
pub const SPOOL_FSYNC_SECONDS: &str = "tributary_spool_fsync_seconds";
/// Batches of records the spool refused, by `reason` (`full`: at
/// `max_bytes`; `disk_full`: the file system is; `failed`: an I/O error).
pub const SPOOL_REFUSED_TOTAL: &str = "tributary_spool_refused_total";
/// Records found in the spool at start, replayed into Kafka after it.
pub const SPOOL_RECOVERED_RECORDS_TOTAL: &str = "tributary_spool_recovered_records_total";
/// Bytes of torn tail cut off at start (what a crash mid-write leaves).
pub const SPOOL_TRUNCATED_BYTES_TOTAL: &str = "tributary_spool_truncated_bytes_total";
/// Corrupt ranges found at start and moved aside into `corrupt/`.
pub const SPOOL_CORRUPT_RECORDS_TOTAL: &str = "tributary_spool_corrupt_records_total";

/// Gives every bridge metric its `# HELP` text and unit. Called once the
/// recorder is installed (a description given before is lost).
pub fn describe() {
    describe_counter!(
        KAFKA_DELIVERED_TOTAL,
        Unit::Count,
        "Records Kafka acknowledged, by route."
    );
    describe_counter!(
        KAFKA_DELIVERY_FAILURES_TOTAL,
        Unit::Count,
        "Records Kafka did not acknowledge, by route and reason (timeout, queue_full, message_too_large, ...)."
    );
    describe_histogram!(
        KAFKA_DELIVERY_SECONDS,
        Unit::Seconds,
        "Time from handing a record to the producer to Kafka's positive acknowledgement, by route."
    );
    describe_counter!(
        KAFKA_CLIENT_ERRORS_TOTAL,
        Unit::Count,
        "Client-level errors librdkafka reported (brokers down, authentication, ...), by reason."
    );
    describe_gauge!(
        KAFKA_QUEUED_RECORDS,
        Unit::Count,
        "Records the producer holds, queued or in flight, not yet reported on."
    );
    describe_gauge!(
        KAFKA_UP,
        "1 while Kafka is reachable; 0 before it first answered and while all brokers are down or metadata requests fail."
    );
    describe_gauge!(
        SPOOL_BYTES,
        Unit::Bytes,
        "Bytes of the spool's files on disk (0 with the spool off)."
    );
    describe_gauge!(
        SPOOL_RECORDS,
        Unit::Count,
        "Records in the spool not yet in Kafka."
    );
    describe_gauge!(
        SPOOL_OLDEST_SECONDS,
        Unit::Seconds,
        "Age of the oldest record in the spool not yet in Kafka (0 when there is none)."
    );
    describe_counter!(
        SPOOL_DRAINED_TOTAL,
        Unit::Count,
        "Records Kafka acknowledged that the drain removed from the spool; its rate is the drain rate."
    );
    describe_counter!(
        SPOOL_APPENDED_TOTAL,
        Unit::Count,
        "Records written to the spool (acknowledged to devices once durable there)."
    );
    describe_histogram!(
        SPOOL_FSYNC_SECONDS,
        Unit::Seconds,
        "Time one group commit's fsync of the spool took."
    );
    describe_counter!(
        SPOOL_REFUSED_TOTAL,
        Unit::Count,
        "Batches of records the spool refused, by reason (full: at max_bytes; disk_full; failed: an I/O error)."
    );
    describe_counter!(
        SPOOL_RECOVERED_RECORDS_TOTAL,
        Unit::Count,
        "Records found in the spool at start, replayed into Kafka after it."
    );
    describe_counter!(
        SPOOL_TRUNCATED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of torn tail cut off the spool at start (what a crash mid-write leaves)."
    );
    describe_counter!(
        SPOOL_CORRUPT_RECORDS_TOTAL,
        Unit::Count,
        "Corrupt ranges found in the spool at start and moved aside into corrupt/."
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        Unit::Count,
        "Publishes written to their route's dead-letter topic, by route and reason."
    );
    crate::source::events::describe();
}

/// Registers the bridge's series that have no route or source label, so
/// they read 0 from the start (a `rate()` over them works at once, and a
/// dashboard is not empty). Only handles are taken: a value already there
/// (another server in the same process) is left as it is.
pub fn register() {
    let _ = metrics::gauge!(KAFKA_UP);
    let _ = metrics::gauge!(KAFKA_QUEUED_RECORDS);
    let _ = metrics::gauge!(SPOOL_BYTES);
    let _ = metrics::gauge!(SPOOL_RECORDS);
    let _ = metrics::gauge!(SPOOL_OLDEST_SECONDS);
    let _ = metrics::counter!(SPOOL_APPENDED_TOTAL);
    let _ = metrics::counter!(SPOOL_DRAINED_TOTAL);
    for reason in SpoolRefusal::ALL {
        let _ = metrics::counter!(SPOOL_REFUSED_TOTAL, "reason" => reason.label());
    }
}

/// Why the spool refused a batch: the `reason` label of
/// [`SPOOL_REFUSED_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpoolRefusal {
    /// At `max_bytes` (or a batch larger than it).
    Full,
    /// The file system is full.
    DiskFull,
    /// Any other I/O error.
    Failed,
}

impl SpoolRefusal {
    const ALL: [SpoolRefusal; 3] = [
        SpoolRefusal::Full,
        SpoolRefusal::DiskFull,
        SpoolRefusal::Failed,
    ];

    fn of(error: &crate::spool::SpoolError) -> SpoolRefusal {
        use crate::spool::SpoolError;
        match error {
            SpoolError::Full { .. } | SpoolError::BatchTooLarge { .. } => SpoolRefusal::Full,
            SpoolError::DiskFull { .. } => SpoolRefusal::DiskFull,
            _ => SpoolRefusal::Failed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            SpoolRefusal::Full => "full",
            SpoolRefusal::DiskFull => "disk_full",
            SpoolRefusal::Failed => "failed",
        }
    }
}

/// Records whose group commit is durable, and how long its fsync took
/// (`None`: no fsync, the `interval` policy).
pub struct SpoolAppended {
    pub records: usize,
    pub fsync: Option<Duration>,
}

impl SpoolAppended {
    pub fn emit(self) {
        metrics::counter!(SPOOL_APPENDED_TOTAL).increment(self.records as u64);
        if let Some(took) = self.fsync {
            metrics::histogram!(SPOOL_FSYNC_SECONDS).record(took.as_secs_f64());
        }
    }
}

/// The spool refused a batch: its publishes get no positive acknowledgement.
pub struct SpoolRefused<'a> {
    pub error: &'a crate::spool::SpoolError,
}

impl SpoolRefused<'_> {
    pub fn emit(self) {
        let refusal = SpoolRefusal::of(self.error);
        let reason = refusal.label();
        metrics::counter!(SPOOL_REFUSED_TOTAL, "reason" => reason).increment(1);
        if let Some(suppressed) = SPOOL_LOG.admit(reason) {
            let error = self.error;
            match refusal {
                SpoolRefusal::Full => tracing::warn!(
                    %error,
                    suppressed,
                    "the spool is full: publishes are refused (MQTT 5: PUBACK 0x97) or left \
                     unacknowledged (3.1.1) until the drain frees space; nothing stored is dropped"
                ),
                SpoolRefusal::DiskFull => tracing::error!(
                    %error,
                    suppressed,
                    "no space left on the spool's disk: publishes are refused (MQTT 5: PUBACK \
                     0x97) or left unacknowledged (3.1.1) until space is freed"
                ),
                SpoolRefusal::Failed => tracing::error!(
                    %error,
                    suppressed,
                    "the spool cannot store records: publishes are refused"
                ),
            }
        }
    }
}

static SPOOL_LOG: std::sync::LazyLock<crate::log_throttle::LogThrottle> =
    std::sync::LazyLock::new(|| {
        crate::log_throttle::LogThrottle::new(crate::log_throttle::REPEAT_LOG_WINDOW)
    });

/// Kafka stopped taking records: they wait in the spool.
pub struct SpoolBacklogStarted<'a> {
    pub why: &'a crate::NotReady,
    pub records: u64,
}

impl SpoolBacklogStarted<'_> {
    pub fn emit(self) {
        tracing::warn!(
            kafka = %self.why,
            records = self.records,
            "spooling: devices' publishes are acknowledged once durable in the spool and wait there for Kafka"
        );
    }
}

/// The spool caught up again after Kafka was out of reach: empty, or only
/// live traffic passing through it.
pub struct SpoolBacklogDrained {
    /// From the start of the backlog to caught up.
    pub lasted: Duration,
    /// From Kafka's return to caught up.
    pub drain: Duration,
    pub peak_records: u64,
    pub drained_records: u64,
}

impl SpoolBacklogDrained {
    pub fn emit(self) {
        let rate = self.drained_records as f64 / self.drain.as_secs_f64().max(0.001);
        tracing::info!(
            lasted_s = self.lasted.as_secs(),
            drain_s = format!("{:.1}", self.drain.as_secs_f64()),
            peak_records = self.peak_records,
            drained_records = self.drained_records,
            records_per_s = rate as u64,
            "spool drained: the backlog is in Kafka"
        );
    }
}

/// What the spool holds now.
pub struct SpoolState<'a> {
    pub stats: &'a crate::spool::SpoolStats,
}

impl SpoolState<'_> {
    pub fn emit(self) {
        metrics::gauge!(SPOOL_BYTES).set(self.stats.bytes_on_disk as f64);
        metrics::gauge!(SPOOL_RECORDS).set(self.stats.records_pending as f64);
        metrics::gauge!(SPOOL_OLDEST_SECONDS).set(self.stats.oldest_pending_age().as_secs_f64());
    }
}

/// The drain removed `records` Kafka acknowledged from the spool.
pub struct SpoolDrained {
    pub records: usize,
}

impl SpoolDrained {
    pub fn emit(self) {
        metrics::counter!(SPOOL_DRAINED_TOTAL).increment(self.records as u64);
    }
}

/// What `Spool::open` found: records to replay, damage repaired.
pub struct SpoolRecovered<'a> {
    pub recovery: &'a crate::spool::Recovery,
}

impl SpoolRecovered<'_> {
    pub fn emit(self) {
        let r = self.recovery;
        metrics::counter!(SPOOL_RECOVERED_RECORDS_TOTAL).increment(r.records);
        metrics::counter!(SPOOL_TRUNCATED_BYTES_TOTAL).increment(r.truncated_bytes);
        metrics::counter!(SPOOL_CORRUPT_RECORDS_TOTAL).increment(r.corrupt_records);
    }
}

/// One route's delivery metrics, registered once: the hot path only bumps
/// handles (no label formatting or registry lookup per record).
#[derive(Clone)]
pub struct RouteMetrics {
    delivered: metrics::Counter,
    latency: metrics::Histogram,
}

impl RouteMetrics {
    /// Also registers the route's delivery failures, one series per reason,
    /// so each reads 0 before it first happens.
    pub fn register(route: &str) -> RouteMetrics {
        for failure in DeliveryFailure::ALL {
            let _ = metrics::counter!(
                KAFKA_DELIVERY_FAILURES_TOTAL,
                "route" => route.to_owned(),
                "reason" => failure.label()
            );
        }
        RouteMetrics {
            delivered: metrics::counter!(KAFKA_DELIVERED_TOTAL, "route" => route.to_owned()),
            latency: metrics::histogram!(KAFKA_DELIVERY_SECONDS, "route" => route.to_owned()),
        }
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

/// Kafka confirmed one record.
pub struct Delivered<'a> {
    pub metrics: &'a RouteMetrics,
    pub latency: Duration,
}

impl Delivered<'_> {
    pub fn emit(self) {
        self.metrics.delivered.increment(1);
        self.metrics.latency.record(self.latency.as_secs_f64());
    }
}

/// Dead letters written, by `route` and `reason`.
pub const DEAD_LETTERS_TOTAL: &str = "tributary_dead_letters_total";

/// Registers a route's dead-letter counters, one per reason a publish can
/// be dead-lettered for (the failures that never succeed later), at 0.
pub fn register_dead_letters(route: &str) {
    for failure in DeliveryFailure::ALL {
        if !failure.is_transient() {
            let _ = metrics::counter!(
                DEAD_LETTERS_TOTAL,
                "route" => route.to_owned(),
                "reason" => failure.label()
            );
        }
    }
}

/// A publish that could not go to its route's topic for good is in the
/// route's dead-letter topic.
pub struct DeadLettered<'a> {
    pub route: &'a str,
    pub failure: crate::DeliveryFailure,
}

impl DeadLettered<'_> {
    pub fn emit(self) {
        tracing::debug!(
            route = self.route,
            reason = self.failure.label(),
            "written to the dead-letter topic"
        );
        metrics::counter!(
            DEAD_LETTERS_TOTAL,
            "route" => self.route.to_owned(),
            "reason" => self.failure.label()
        )
        .increment(1);
    }
}

/// One record is not in Kafka. Logged at debug level per record; callers that
/// speak to devices log bursts once.
pub struct DeliveryFailed<'a> {
    pub route: &'a str,
    pub error: &'a DeliveryError,
}

impl DeliveryFailed<'_> {
    pub fn emit(self) {
        tracing::debug!(route = self.route, reason = self.error.reason(), error = %self.error, "Kafka delivery failed");
        metrics::counter!(
            KAFKA_DELIVERY_FAILURES_TOTAL,
            "route" => self.route.to_owned(),
            "reason" => self.error.reason()
        )
        .increment(1);
    }
}

/// librdkafka reported a client-level error (not tied to one record). Counted
/// every time; logged as the throttle allows.
pub struct KafkaClientError<'a> {
    pub error: &'a KafkaError,
    /// The error code's name: the metric label and the throttle's kind.
    pub kind: &'a str,
    pub reason: &'a str,
    /// `Some(n)`: log it, `n` like it having been suppressed since the last
    /// one logged. `None`: debug level only.
    pub suppressed: Option<u64>,
}

impl KafkaClientError<'_> {
    pub fn emit(self) {
        let (error, reason) = (self.error, self.reason);
        match self.suppressed {
            None => tracing::debug!(%error, reason, "Kafka client error"),
            Some(0) => tracing::warn!(%error, reason, "Kafka client error"),
            Some(suppressed) => {
                tracing::warn!(%error, reason, suppressed, "Kafka client error")
            }
        }
        metrics::counter!(KAFKA_CLIENT_ERRORS_TOTAL, "reason" => self.kind.to_owned()).increment(1);
    }
}

/// A log line from librdkafka itself.
pub struct LibrdkafkaLog<'a> {
    pub level: RDKafkaLogLevel,
    pub facility: &'a str,
    pub message: &'a str,
    /// As for [`KafkaClientError::suppressed`].
    pub suppressed: Option<u64>,
}

/// One librdkafka line at `$level`, naming how many like it were suppressed.
macro_rules! librdkafka_line {
    ($level:expr, $facility:expr, $message:expr, $suppressed:expr) => {
        match $suppressed {
            0 => tracing::event!(target: "librdkafka", $level, facility = $facility, "{}", $message),
            suppressed => tracing::event!(
                target: "librdkafka",
                $level,
                facility = $facility,
                suppressed,
                "{}",
                $message
            ),
        }
    };
}

impl LibrdkafkaLog<'_> {
    pub fn emit(self) {
        use tracing::Level;
        let (facility, message) = (self.facility, self.message);
        let Some(suppressed) = self.suppressed else {
            tracing::debug!(target: "librdkafka", facility, "{message}");
            return;
        };
        match self.level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                librdkafka_line!(Level::ERROR, facility, message, suppressed)
            }
            RDKafkaLogLevel::Warning => {
                librdkafka_line!(Level::WARN, facility, message, suppressed)
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                librdkafka_line!(Level::INFO, facility, message, suppressed)
            }
            RDKafkaLogLevel::Debug => librdkafka_line!(Level::DEBUG, facility, message, suppressed),
        }
    }
}

/// The result of one metadata probe; what it means for reachability is told
/// by [`KafkaUnreachable`] and [`KafkaReachable`], once per change.
pub struct MetadataProbed<'a> {
    pub result: Result<usize, &'a KafkaError>,
}

impl MetadataProbed<'_> {
    pub fn emit(self) {
        match self.result {
            Ok(brokers) => tracing::debug!(brokers, "Kafka metadata fetched"),
            Err(error) => tracing::debug!(%error, "Kafka metadata fetch failed"),
        }
    }
}

/// Kafka became unreachable: logged once per outage, however often librdkafka
/// repeats itself meanwhile.
pub struct KafkaUnreachable<'a> {
    pub cause: Unreachable,
    /// The failure that settled it, when there is one to show.
    pub error: Option<&'a KafkaError>,
}

impl KafkaUnreachable<'_> {
    pub fn emit(self) {
        let cause = self.cause.label();
        match self.error {
            Some(error) => tracing::warn!(cause, %error, "Kafka unreachable"),
            None => tracing::warn!(cause, "Kafka unreachable"),
        }
        metrics::gauge!(KAFKA_UP).set(0.0);
    }
}

/// Kafka answered (a delivery or a metadata fetch) for the first time, or for
/// the first time since it was unreachable.
pub struct KafkaReachable {
    /// How long it had been unreachable, if it was.
    pub down_for: Option<Duration>,
    /// False the first time since start.
    pub again: bool,
}

impl KafkaReachable {
    pub fn emit(self) {
        match (self.down_for, self.again) {
            (Some(down_for), true) => {
                tracing::info!(down_for = ?Rounded(down_for), "Kafka reachable again")
            }
            (Some(down_for), false) => {
                tracing::info!(unreachable_for = ?Rounded(down_for), "Kafka reachable")
            }
            (None, _) => tracing::info!("Kafka reachable"),
        }
        metrics::gauge!(KAFKA_UP).set(1.0);
    }
}

/// A duration shown to a tenth of a second: an outage's length to the
/// nanosecond is noise.
struct Rounded(Duration);

impl std::fmt::Debug for Rounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1}s", self.0.as_secs_f64())
    }
}

/// How many records the producer holds (sampled with each metadata probe).
pub struct ProducerQueue {
    pub records: i32,
}

impl ProducerQueue {
    pub fn emit(self) {
        metrics::gauge!(KAFKA_QUEUED_RECORDS).set(f64::from(self.records));
    }
}
