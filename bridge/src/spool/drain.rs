//! The drain: what the spool holds goes to Kafka, in order, and is
//! committed away only once Kafka has acknowledged it.
//!
//! Never commits a record Kafka has not acknowledged. Up to 8 batches are
//! in Kafka's hands at once; when one fails it is produced again from its
//! start after a pause, with everything after it, so records that did reach
//! Kafka the first time reach it twice (at least once, in order of first
//! delivery).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Position, SpoolError, SpoolHandle, SpooledRecord};
use crate::events::{self, RouteMetrics};
use crate::log_throttle::LogThrottle;
use crate::record::Record;
use crate::{KafkaHealth, PendingDelivery, Producer};

/// Entries read (and produced) at once.
const BATCH: usize = 500;
/// Bytes read at once.
const BATCH_BYTES: usize = 8 << 20;
/// Batches produced and not yet acknowledged, at most: Kafka works on the
/// next ones while the oldest is awaited.
const PIPELINE: usize = 8;
/// How often an empty spool is looked at again.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// How often the spool's metrics are refreshed and a backlog looked for.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Pause before a failed batch is produced again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a drain held by a record Kafka refuses for good says so.
const BLOCKED_LOG_EVERY: Duration = Duration::from_secs(30);

/// One batch handed to the producer.
struct InFlight {
    /// Where to read again if it fails.
    first: Position,
    /// What to commit once Kafka has all of it.
    last: Position,
    /// Each record's report, with the record itself when its route has a
    /// dead-letter topic to take it should Kafka refuse it for good.
    reports: Vec<(PendingDelivery, Option<Kept>)>,
    /// A record could not even be queued.
    failed: bool,
}

/// A record kept for its route's dead-letter topic, and that topic.
type Kept = (Record, Arc<str>);

/// The dead-letter topic of the route named so, if it has one (the routes
/// in use: they may have been reloaded since the record was spooled).
pub type DeadLetterTopics = Arc<dyn Fn(&str) -> Option<Arc<str>> + Send + Sync>;

/// Runs until the spool's thread stops.
pub async fn drain(spool: SpoolHandle, producer: Producer, dead_letters: DeadLetterTopics) {
    let drained = Arc::new(AtomicU64::new(0));
    let watch = tokio::spawn(watch(
        spool.clone(),
        producer.health().clone(),
        drained.clone(),
    ));
    produce_all(spool, producer, drained, dead_letters).await;
    watch.abort();
}

/// What a record Kafka refuses for good does to the drain: with a
/// dead-letter topic, it is written there and the drain goes on; without,
/// the drain retries it (and holds everything behind it) until Kafka takes
/// it, since nothing acknowledged is ever dropped.
async fn settle(
    producer: &Producer,
    report: PendingDelivery,
    keep: Option<Kept>,
    blocked: &LogThrottle,
) -> bool {
    let error = match report.await {
        Ok(_) => return true,
        Err(error) => error,
    };
    if error.is_transient() {
        return false;
    }
    let Some((record, topic)) = keep else {
        if let Some(suppressed) = blocked.admit(error.reason()) {
            tracing::error!(
                %error,
                suppressed,
                "Kafka refuses a spooled record for good and its route has no dead-letter topic: \
                 the drain retries it, and holds every record behind it, until Kafka takes it \
                 (give the route on_failure = \"dead_letter\", or fix the cause)"
            );
        }
        return false;
    };
    // Kafka refuses a whole batch for one record in it (too large, say):
    // the others are tried again alone before anything is dead-lettered.
    let error = match producer.enqueue(record.clone()).await {
        Ok(again) => match again.await {
            Ok(_) => return true,
            Err(again) if again.is_transient() => return false,
            Err(again) => again,
        },
        Err(_) => error,
    };
    let route = record.route.clone();
    let letter = record.into_dead_letter(topic, error.reason(), &error.to_string());
    let written = match producer.enqueue(letter).await {
        Ok(pending) => pending.await.is_ok(),
        Err(_) => false,
    };
    if written {
        events::DeadLettered {
            route: &route,
            failure: error.failure(),
        }
        .emit();
    }
    written
}

async fn produce_all(
    spool: SpoolHandle,
    producer: Producer,
    drained: Arc<AtomicU64>,
    dead_letters: DeadLetterTopics,
) {
    let blocked = LogThrottle::new(BLOCKED_LOG_EVERY);
    let mut metrics: HashMap<String, RouteMetrics> = HashMap::new();
    let mut from = match spool.stats().await {
        Ok((_, start)) => start,
        Err(_) => return,
    };
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    loop {
        while in_flight.len() < PIPELINE {
            let batch = match spool.read(from, BATCH, BATCH_BYTES).await {
                Ok(batch) => batch,
                Err(SpoolError::Stopped) => return,
                Err(error) => {
                    tracing::error!(%error, "cannot read the spool; trying again");
                    tokio::time::sleep(RETRY_AFTER).await;
                    break;
                }
            };
            let (Some((first, _)), Some((last, _))) = (batch.entries.first(), batch.entries.last())
            else {
                from = batch.next;
                break;
            };
            let mut produced = InFlight {
                first: *first,
                last: *last,
                reports: Vec::with_capacity(batch.entries.len()),
                failed: false,
            };
            for (position, bytes) in &batch.entries {
                let Some(record) = record_of(position, bytes, &mut metrics) else {
                    continue;
                };
                let keep = dead_letters(&record.route).map(|topic| (record.clone(), topic));
                match producer.enqueue(record).await {
                    Ok(report) => produced.reports.push((report, keep)),
                    Err(_) => {
                        produced.failed = true;
                        break;
                    }
                }
            }
            from = batch.next;
            let failed = produced.failed;
            in_flight.push_back(produced);
            if failed {
                break;
            }
        }
        let Some(oldest) = in_flight.pop_front() else {
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        };
        let mut delivered = !oldest.failed;
        let count = oldest.reports.len();
        for (report, keep) in oldest.reports {
            if !settle(&producer, report, keep, &blocked).await {
                delivered = false;
            }
        }
        if !delivered {
            // What was produced after it goes again too, after it: order
            // of first delivery is kept.
            in_flight.clear();
            from = oldest.first;
            tokio::time::sleep(RETRY_AFTER).await;
            continue;
        }
        let records = count;
        match spool.commit(oldest.last).await {
            Ok(()) => {
                drained.fetch_add(records as u64, Ordering::Relaxed);
                events::SpoolDrained { records }.emit();
            }
            Err(SpoolError::Stopped) => return,
            Err(error) => tracing::error!(%error, "cannot commit the spool; going on"),
        }
    }
}

/// A backlog is over once the oldest record waiting is this young.
const CAUGHT_UP: Duration = Duration::from_secs(1);

/// A time Kafka did not take the spool's records.
struct Backlog {
    since: Instant,
    /// When Kafka was last seen reachable again, while records remained.
    kafka_back: Option<Instant>,
    /// The drain's count when Kafka came back.
    drained_at_return: u64,
    peak_records: u64,
}

/// Publishes the spool's state as metrics every second, and logs when
/// records start waiting in it for Kafka and when it is empty again.
async fn watch(spool: SpoolHandle, health: KafkaHealth, drained: Arc<AtomicU64>) {
    let mut backlog: Option<Backlog> = None;
    let mut ticker = tokio::time::interval(WATCH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Ok((stats, _)) = spool.stats().await else {
            return;
        };
        events::SpoolState { stats: &stats }.emit();
        let records = stats.records_pending;
        let kafka = health.readiness();
        match (&mut backlog, kafka) {
            (None, Err(why)) if records > 0 => {
                events::SpoolBacklogStarted { why: &why, records }.emit();
                backlog = Some(Backlog {
                    since: Instant::now(),
                    kafka_back: None,
                    drained_at_return: 0,
                    peak_records: records,
                });
            }
            (None, _) => {}
            (Some(current), kafka) => {
                current.peak_records = current.peak_records.max(records);
                match kafka {
                    Err(_) => current.kafka_back = None,
                    Ok(()) if current.kafka_back.is_none() => {
                        current.kafka_back = Some(Instant::now());
                        current.drained_at_return = drained.load(Ordering::Relaxed);
                    }
                    Ok(()) => {}
                }
                // Caught up: empty, or (live traffic passing through) its
                // oldest record written in the last second.
                let caught_up = records == 0 || stats.oldest_pending_age() <= CAUGHT_UP;
                if let (true, Some(back)) = (caught_up, current.kafka_back) {
                    events::SpoolBacklogDrained {
                        lasted: current.since.elapsed(),
                        drain: back.elapsed(),
                        peak_records: current.peak_records,
                        drained_records: drained
                            .load(Ordering::Relaxed)
                            .saturating_sub(current.drained_at_return),
                    }
                    .emit();
                    backlog = None;
                }
            }
        }
    }
}

/// The Kafka record a spool entry holds; `None` (logged) for one this
/// version cannot read.
fn record_of(
    position: &Position,
    bytes: &[u8],
    metrics: &mut HashMap<String, RouteMetrics>,
) -> Option<Record> {
    let spooled = match SpooledRecord::decode(bytes) {
        Ok(spooled) => spooled,
        Err(error) => {
            // Checked by its CRC, yet not an entry this version wrote:
            // kept in the log's history, never produced.
            tracing::error!(%error, %position, "a spool entry cannot be read; skipped");
            return None;
        }
    };
    let metrics = metrics
        .entry(spooled.route.clone())
        .or_insert_with(|| RouteMetrics::register(&spooled.route))
        .clone();
    Some(Record {
        route: spooled.route.as_str().into(),
        metrics,
        topic: spooled.topic.as_str().into(),
        key: spooled.key.clone(),
        payload: spooled.payload.clone(),
        headers: spooled.owned_headers(),
    })
}
