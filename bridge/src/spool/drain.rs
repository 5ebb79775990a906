//! The drain: what the spool holds goes to Kafka, in order, and is
//! committed away only once Kafka has acknowledged it.
//!
//! Never commits a record Kafka has not acknowledged. A batch that fails is
//! produced again from its start after a pause, so records of it that did
//! reach Kafka the first time reach it twice (at least once, in order of
//! first delivery).

use std::collections::HashMap;
use std::time::Duration;

use super::{SpoolError, SpoolHandle, SpooledRecord};
use crate::events::RouteMetrics;
use crate::record::Record;
use crate::Producer;

/// Entries read (and produced) at once.
const BATCH: usize = 500;
/// Bytes read at once.
const BATCH_BYTES: usize = 8 << 20;
/// How often an empty spool is looked at again.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// Pause before a failed batch is produced again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Runs until the spool's thread stops.
pub async fn drain(spool: SpoolHandle, producer: Producer) {
    let mut metrics: HashMap<String, RouteMetrics> = HashMap::new();
    let mut from = match spool.stats().await {
        Ok((_, start)) => start,
        Err(_) => return,
    };
    loop {
        let batch = match spool.read(from, BATCH, BATCH_BYTES).await {
            Ok(batch) => batch,
            Err(SpoolError::Stopped) => return,
            Err(error) => {
                tracing::error!(%error, "cannot read the spool; trying again");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        let Some(last) = batch.entries.last().map(|(position, _)| *position) else {
            from = batch.next;
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        };
        let mut reports = Vec::with_capacity(batch.entries.len());
        let mut delivered = true;
        for (position, bytes) in &batch.entries {
            let spooled = match SpooledRecord::decode(bytes) {
                Ok(spooled) => spooled,
                Err(error) => {
                    // Checked by its CRC, yet not an entry this version
                    // wrote: kept in the log's history, never produced.
                    tracing::error!(%error, %position, "a spool entry cannot be read; skipped");
                    continue;
                }
            };
            let metrics = metrics
                .entry(spooled.route.clone())
                .or_insert_with(|| RouteMetrics::register(&spooled.route))
                .clone();
            let record = Record {
                route: spooled.route.as_str().into(),
                metrics,
                topic: spooled.topic.as_str().into(),
                key: spooled.key.clone(),
                payload: spooled.payload.clone(),
                headers: spooled.owned_headers(),
            };
            match producer.enqueue(record).await {
                Ok(report) => reports.push(report),
                Err(_) => {
                    delivered = false;
                    break;
                }
            }
        }
        for report in reports {
            if report.await.is_err() {
                delivered = false;
            }
        }
        if !delivered {
            tokio::time::sleep(RETRY_AFTER).await;
            continue;
        }
        match spool.commit(last).await {
            Ok(()) => from = batch.next,
            Err(SpoolError::Stopped) => return,
            Err(error) => {
                tracing::error!(%error, "cannot commit the spool; trying again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}
