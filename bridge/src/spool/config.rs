//! The `[spool]` section.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::log::{FsyncPolicy, SpoolConfig};
use crate::Problems;

pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/tributary/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// Smallest `max_bytes` that holds a segment header and a few records.
const MIN_SPOOL_MAX_BYTES: u64 = 1 << 20;

/// The `[spool]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// Write every routed QoS 1/2 record ahead to a local spool and
    /// acknowledge the publish once it is durable there; a drain produces
    /// the spool to Kafka in order. Devices keep publishing while Kafka is
    /// out of reach, up to `max_bytes`. Off by default.
    pub enabled: bool,
    /// Directory of the spool's files (one Tributary per directory).
    pub dir: PathBuf,
    /// Most bytes on disk; when full, MQTT 5 publishers get PUBACK 0x97
    /// (Quota exceeded) and 3.1.1 publishers are not acknowledged. Nothing
    /// acknowledged is ever evicted.
    pub max_bytes: u64,
    /// 0 (default): every batch is fsync'd before its publishes are
    /// acknowledged. Above 0: fsync at most this often, in ms; a power cut
    /// (not a crash of the process) may then lose what was acknowledged in
    /// the last interval.
    pub fsync_interval_ms: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            enabled: false,
            dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            fsync_interval_ms: 0,
        }
    }
}

impl SpoolSettings {
    pub fn validate(&self, problems: &mut Problems) {
        if self.dir.as_os_str().is_empty() {
            problems.push("spool.dir", "must not be empty");
        }
        if self.max_bytes < MIN_SPOOL_MAX_BYTES {
            problems.push(
                "spool.max_bytes",
                format!("must be at least {MIN_SPOOL_MAX_BYTES}"),
            );
        }
    }

    /// The log's configuration.
    pub fn log_config(&self) -> SpoolConfig {
        let mut config = SpoolConfig::new(&self.dir, self.max_bytes);
        config.segment_bytes = config.segment_bytes.min(self.max_bytes / 4).max(64 * 1024);
        if self.fsync_interval_ms > 0 {
            config.fsync = FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms));
        }
        config
    }
}
