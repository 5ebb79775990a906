//! Is Kafka reachable? For `/readyz` and for the log, from three witnesses:
//! librdkafka saying all brokers are down (at once, from its error callback), a
//! positive delivery report, and a periodic metadata fetch.
//!
//! It only observes: it never holds back or fails a delivery itself.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::events;
use crate::producer::Producer;

/// Why Kafka counts as unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// librdkafka lost its connection to every broker.
    AllBrokersDown,
    /// No metadata request has succeeded for longer than the allowed age.
    MetadataFailing,
}

impl Unreachable {
    /// A short, bounded label.
    pub fn label(self) -> &'static str {
        match self {
            Unreachable::AllBrokersDown => "all brokers down",
            Unreachable::MetadataFailing => "metadata requests failing",
        }
    }
}

/// Why Kafka makes the gateway not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// Kafka has not answered since start.
    NotReachedYet,
    Unreachable {
        cause: Unreachable,
        since: Duration,
    },
    /// Not known to be down, but Kafka has not answered for too long (the
    /// metadata probe may be stuck).
    NoRecentAnswer {
        age: Duration,
        limit: Duration,
    },
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::NotReachedYet => f.write_str("Kafka not reached yet"),
            NotReady::Unreachable { cause, since } => {
                write!(f, "Kafka unreachable ({}) for {since:.0?}", cause.label())
            }
            NotReady::NoRecentAnswer { age, limit } => {
                write!(f, "Kafka last answered {age:.0?} ago (limit {limit:?})")
            }
        }
    }
}

/// Kafka's reachability, shared by the producer's callbacks, its delivery
/// reports, the metadata probe and `/readyz`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KafkaHealth {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// True only while Kafka is known reachable, so that every positive delivery
    /// report costs one atomic load and takes the lock only to end an outage.
    reachable: AtomicBool,
    state: Mutex<State>,
    /// Wakes the metadata probe the moment Kafka looks unreachable: a real outage
    /// is confirmed, a false alarm (say, an idle connection the broker closed) is
    /// cleared, without waiting for the next tick.
    probe_now: Notify,
    metadata_max_age: Duration,
    started: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// When Kafka last answered: a metadata fetch, or the delivery report that
    /// ended an outage (later ones take the fast path and leave this alone).
    answered_at: Option<Instant>,
    /// Since when, and why, Kafka is unreachable; `None` while reachable or not
    /// tried yet.
    down: Option<(Instant, Unreachable)>,
    ever_reached: bool,
}

impl KafkaHealth {
    /// `metadata_max_age`: how old the last successful metadata fetch may be
    /// before Kafka counts as unreachable.
    pub fn new(metadata_max_age: Duration) -> KafkaHealth {
        KafkaHealth {
            shared: Arc::new(Shared {
                reachable: AtomicBool::new(false),
                state: Mutex::new(State::default()),
                probe_now: Notify::new(),
                metadata_max_age,
                started: Instant::now(),
            }),
        }
    }

    /// `Ok` when Kafka is reachable and answered recently, else why not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let state = self.lock();
        if let Some((since, cause)) = state.down {
            return Err(NotReady::Unreachable {
                cause,
                since: since.elapsed(),
            });
        }
        let Some(answered_at) = state.answered_at else {
            return Err(NotReady::NotReachedYet);
        };
        let age = answered_at.elapsed();
        if age > self.shared.metadata_max_age {
            return Err(NotReady::NoRecentAnswer {
                age,
                limit: self.shared.metadata_max_age,
            });
        }
        Ok(())
    }

    /// librdkafka reported that every broker connection is down.
    pub fn all_brokers_down(&self) {
        self.mark_unreachable(Unreachable::AllBrokersDown, None);
    }

    /// Kafka acknowledged a record.
    pub fn delivered(&self) {
        if !self.shared.reachable.load(Ordering::Acquire) {
            self.mark_reachable();
        }
    }

    /// A metadata fetch succeeded.
    pub fn metadata_fetched(&self, brokers: usize) {
        events::MetadataProbed {
            result: Ok(brokers),
        }
        .emit();
        self.lock().answered_at = Some(Instant::now());
        self.mark_reachable();
    }

    /// A metadata fetch failed. Kafka counts as unreachable once none has
    /// succeeded for longer than the allowed age: a single slow answer is not
    /// an outage.
    pub fn metadata_failed(&self, error: &KafkaError) {
        events::MetadataProbed { result: Err(error) }.emit();
        let last_success = self.lock().answered_at.unwrap_or(self.shared.started);
        if last_success.elapsed() > self.shared.metadata_max_age {
            self.mark_unreachable(Unreachable::MetadataFailing, Some(error));
        }
    }

    /// Resolves when the metadata probe should run before its next tick.
    pub async fn probe_requested(&self) {
        self.shared.probe_now.notified().await;
    }

    fn mark_unreachable(&self, cause: Unreachable, error: Option<&KafkaError>) {
        {
            let mut state = self.lock();
            if state.down.is_some() {
                return;
            }
            state.down = Some((Instant::now(), cause));
            self.shared.reachable.store(false, Ordering::Release);
        }
        self.shared.probe_now.notify_one();
        events::KafkaUnreachable { cause, error }.emit();
    }

    fn mark_reachable(&self) {
        let (down_for, again) = {
            let mut state = self.lock();
            if self.shared.reachable.load(Ordering::Acquire) {
                return;
            }
            self.shared.reachable.store(true, Ordering::Release);
            state.answered_at = Some(Instant::now());
            let again = state.ever_reached;
            state.ever_reached = true;
            (state.down.take().map(|(since, _)| since.elapsed()), again)
        };
        events::KafkaReachable { down_for, again }.emit();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update
        // is a single assignment.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Fetches metadata every `interval`, and at once whenever Kafka starts to look
/// unreachable, until the returned task is aborted.
pub fn spawn_metadata_probe(producer: Producer, interval: Duration) -> JoinHandle<()> {
    let health = producer.health().clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = health.probe_requested() => {}
            }
            events::ProducerQueue {
                records: producer.in_flight(),
            }
            .emit();
            match producer.fetch_metadata(interval).await {
                Ok(brokers) => health.metadata_fetched(brokers),
                Err(error) => health.metadata_failed(&error),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(15);

    #[test]
    fn not_ready_until_kafka_answers() {
        let health = KafkaHealth::new(MAX_AGE);
        assert_eq!(health.readiness(), Err(NotReady::NotReachedYet));
        health.metadata_fetched(1);
        assert_eq!(health.readiness(), Ok(()));

        let health = KafkaHealth::new(MAX_AGE);
        health.delivered();
        assert_eq!(health.readiness(), Ok(()), "a delivery is an answer too");
    }

    #[test]
    fn the_delivery_that_ends_a_long_outage_makes_ready_at_once() {
        let health = KafkaHealth::new(Duration::from_millis(50));
        health.metadata_fetched(1);
        health.all_brokers_down();
        std::thread::sleep(Duration::from_millis(100));
        health.delivered();
        assert_eq!(health.readiness(), Ok(()));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            matches!(health.readiness(), Err(NotReady::NoRecentAnswer { .. })),
            "and the probe has to keep answering after it"
        );
    }

    #[test]
    fn all_brokers_down_is_not_ready_at_once_until_kafka_answers_again() {
        let health = KafkaHealth::new(MAX_AGE);
        health.metadata_fetched(1);
        health.all_brokers_down();
        assert!(
            matches!(
                health.readiness(),
                Err(NotReady::Unreachable {
                    cause: Unreachable::AllBrokersDown,
                    ..
                })
            ),
            "{:?}",
            health.readiness()
        );
        // Repeated reports change nothing.
        health.all_brokers_down();
        assert!(health.readiness().is_err());
        // A positive delivery report is proof enough.
        health.delivered();
        assert_eq!(health.readiness(), Ok(()));

        health.all_brokers_down();
        health.metadata_fetched(1);
        assert_eq!(health.readiness(), Ok(()));
    }

    #[test]
    fn one_failed_metadata_fetch_is_not_an_outage() {
        let health = KafkaHealth::new(MAX_AGE);
        health.metadata_fetched(1);
        health.metadata_failed(&KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
        ));
        assert_eq!(health.readiness(), Ok(()));
    }

    #[test]
    fn metadata_failing_past_the_allowed_age_is_an_outage() {
        let health = KafkaHealth::new(Duration::ZERO);
        health.metadata_failed(&KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
        ));
        assert!(matches!(
            health.readiness(),
            Err(NotReady::Unreachable {
                cause: Unreachable::MetadataFailing,
                ..
            })
        ));
    }
}
