//! Is Kafka reachable? A periodic metadata fetch answers it for `/readyz`.
//!
//! It only observes: it never holds back or fails a delivery itself.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::events;
use crate::producer::Producer;

/// When Kafka metadata was last fetched successfully.
#[derive(Debug, Clone, Default)]
pub struct KafkaHealth {
    last_ok: Arc<Mutex<Option<Instant>>>,
}

impl KafkaHealth {
    /// True when metadata was fetched within `max_age`.
    pub fn is_fresh(&self, max_age: Duration) -> bool {
        self.last_seen().is_some_and(|at| at.elapsed() <= max_age)
    }

    /// When metadata was last fetched successfully, if ever.
    pub fn last_seen(&self) -> Option<Instant> {
        *self.last_ok.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_ok(&self) {
        *self.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

/// Fetches metadata every `interval` until the returned task is aborted.
pub fn spawn_metadata_probe(
    producer: Producer,
    interval: Duration,
) -> (KafkaHealth, JoinHandle<()>) {
    let health = KafkaHealth::default();
    let probe = health.clone();
    let task = tokio::spawn(async move {
        let mut was_up = false;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            events::ProducerQueue {
                records: producer.in_flight(),
            }
            .emit();
            let result = producer.fetch_metadata(interval).await;
            if result.is_ok() {
                probe.mark_ok();
            }
            events::MetadataProbed {
                result: &result,
                was_up,
            }
            .emit();
            was_up = result.is_ok();
        }
    });
    (health, task)
}
