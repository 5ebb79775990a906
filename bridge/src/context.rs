//! What librdkafka says outside of delivery reports: its log lines and its
//! client-level errors.
//!
//! A Kafka that stays down makes librdkafka repeat itself many times a second,
//! so each kind of complaint reaches the log at most once per
//! [`REPEAT_LOG_WINDOW`] (metrics count them all), and an all-brokers-down report
//! goes to [`KafkaHealth`] at once, which tells the log once per outage. Nothing
//! here ever logs configuration values: SASL and SSL secrets live there.

use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::events;
use crate::health::KafkaHealth;
use crate::log_throttle::{LogThrottle, REPEAT_LOG_WINDOW};

/// The producer's librdkafka context.
pub struct BridgeContext {
    health: KafkaHealth,
    throttle: LogThrottle,
    /// Where the text of the last client error report lay in memory, to spot
    /// the second hand-over of the same report (see
    /// [`BridgeContext::is_second_hand_over`]).
    last_report: Mutex<Option<usize>>,
}

impl BridgeContext {
    pub fn new(health: KafkaHealth) -> BridgeContext {
        BridgeContext {
            health,
            throttle: LogThrottle::new(REPEAT_LOG_WINDOW),
            last_report: Mutex::new(None),
        }
    }

    /// rdkafka 0.39 hands every client error event to [`ClientContext::error`]
    /// twice in a row (from `Client::poll_event`, then again from
    /// `BaseProducer::poll`), both times with `reason` borrowed from the same
    /// event. The second call is the one whose text lies where the previous
    /// call's did. Alternating keeps a later event that happens to reuse that
    /// memory from being taken for a repeat.
    fn is_second_hand_over(&self, reason: &str) -> bool {
        let at = reason.as_ptr() as usize;
        let mut last = self
            .last_report
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last == Some(at) {
            *last = None;
            true
        } else {
            *last = Some(at);
            false
        }
    }
}

impl ClientContext for BridgeContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let suppressed = self.throttle.admit(&format!("log {level:?} {facility}"));
        events::LibrdkafkaLog {
            level,
            facility,
            message,
            suppressed,
        }
        .emit();
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            // Marking unreachable twice is harmless; do it before anything that
            // could drop the report.
            self.health.all_brokers_down();
        }
        if self.is_second_hand_over(reason) {
            return;
        }
        let kind = code.map_or_else(|| "other".to_owned(), |code| format!("{code:?}"));
        // "Kafka unreachable" already told it, once for the whole outage.
        let suppressed = if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            None
        } else {
            self.throttle.admit(&kind)
        };
        events::KafkaClientError {
            error: &error,
            kind: &kind,
            reason,
            suppressed,
        }
        .emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_hand_over_of_one_report_is_spotted() {
        let context = BridgeContext::new(KafkaHealth::new(std::time::Duration::from_secs(15)));
        let report = String::from("1/1 brokers are down");
        let other = String::from("1/1 brokers are down");
        assert!(!context.is_second_hand_over(&report));
        assert!(context.is_second_hand_over(&report));
        // Equal text elsewhere is another report.
        assert!(!context.is_second_hand_over(&other));
        assert!(context.is_second_hand_over(&other));
        // A new report where an old one lay is new.
        assert!(!context.is_second_hand_over(&report));
    }
}
