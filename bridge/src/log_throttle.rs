//! Keeps a complaint that repeats from flooding the log: the first of each kind
//! is logged, then at most one per window, telling how many like it were
//! suppressed since the last one logged.
//!
//! Only the log is thinned: metrics still count every occurrence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of repeated librdkafka complaint may reach the log.
pub const REPEAT_LOG_WINDOW: Duration = Duration::from_secs(30);

/// Decides, per kind, which occurrences are logged.
#[derive(Debug)]
pub struct LogThrottle {
    window: Duration,
    /// One entry per kind ever seen; kinds are error codes and librdkafka log
    /// facilities, a few dozen at most.
    kinds: Mutex<HashMap<String, Kind>>,
}

#[derive(Debug)]
struct Kind {
    logged_at: Instant,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(window: Duration) -> LogThrottle {
        LogThrottle {
            window,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when this occurrence of `kind` is to be logged, `n` being how
    /// many were suppressed since the last one logged; `None` to suppress it.
    pub fn admit(&self, kind: &str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &str, now: Instant) -> Option<u64> {
        // A panic elsewhere while holding the lock leaves at worst a wrong
        // count; logging must go on.
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(seen) = kinds.get_mut(kind) else {
            kinds.insert(
                kind.to_owned(),
                Kind {
                    logged_at: now,
                    suppressed: 0,
                },
            );
            return Some(0);
        };
        if now.saturating_duration_since(seen.logged_at) < self.window {
            seen.suppressed += 1;
            return None;
        }
        seen.logged_at = now;
        Some(std::mem::take(&mut seen.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_kind_per_window_with_a_count_of_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(30));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);

        assert_eq!(throttle.admit_at("AllBrokersDown", at(0)), Some(0));
        for secs in 1..30 {
            assert_eq!(throttle.admit_at("AllBrokersDown", at(secs)), None);
        }
        // Another kind is not held back by the first.
        assert_eq!(throttle.admit_at("BrokerTransportFailure", at(5)), Some(0));

        assert_eq!(throttle.admit_at("AllBrokersDown", at(30)), Some(29));
        assert_eq!(throttle.admit_at("AllBrokersDown", at(31)), None);
        // After a quiet spell the next one is logged, with what came before it.
        assert_eq!(throttle.admit_at("AllBrokersDown", at(600)), Some(1));
        assert_eq!(throttle.admit_at("AllBrokersDown", at(700)), Some(0));
    }
}
