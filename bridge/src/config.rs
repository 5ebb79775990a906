//! The `[kafka]` section: where Kafka is and how the producer behaves.
//!
//! Defaults fit a gateway that must not lie about delivery: `acks=all`,
//! idempotence on, a small linger. `[kafka.properties]` reaches librdkafka untouched,
//! except for the few settings that would make an acknowledgement meaningless.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::problems::Problems;

pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "127.0.0.1:9092";
pub const DEFAULT_CLIENT_ID: &str = "tributary";
pub const DEFAULT_LINGER_MS: u64 = 5;
pub const DEFAULT_LINGER_ABOVE_RECORDS: u64 = 256;
pub const DEFAULT_DELIVERY_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_QUEUE_MAX_KBYTES: u64 = 16_384;
pub const DEFAULT_METADATA_PROBE_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_METADATA_MAX_AGE_MS: u64 = 15_000;

/// librdkafka's upper bound for `linger.ms`.
const MAX_LINGER_MS: u64 = 900_000;

/// Producer settings owned by a typed field above; setting them again in
/// `properties` would leave two sources of truth.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "bootstrap_servers"),
    ("metadata.broker.list", "bootstrap_servers"),
    ("client.id", "client_id"),
    ("linger.ms", "linger_ms"),
    ("queue.buffering.max.ms", "linger_ms"),
    ("message.timeout.ms", "delivery_timeout_ms"),
    ("delivery.timeout.ms", "delivery_timeout_ms"),
    ("queue.buffering.max.kbytes", "queue_max_kbytes"),
];

/// The `[kafka]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of Kafka brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// Client id the producer presents to Kafka (visible in broker logs and quotas).
    pub client_id: String,
    /// How long the producer waits to fill a batch, in milliseconds. Every QoS 1/2
    /// PUBACK waits at least this long, so keep it small.
    pub linger_ms: u64,
    /// `linger_ms` applies only while more than this many records are on
    /// their way to Kafka; with fewer, a connection's records are sent at
    /// once (a second producer, linger 0), so a lightly loaded gateway
    /// acknowledges in about a Kafka round trip. 0: always linger.
    pub linger_above_records: u64,
    /// How long a record may take to be acknowledged by Kafka, retries included,
    /// in milliseconds. Past it the delivery fails and the device gets no positive
    /// acknowledgement.
    pub delivery_timeout_ms: u64,
    /// Bound on the producer's local queue, in KiB. When full, devices are slowed
    /// down (their acknowledgements wait); nothing is dropped.
    pub queue_max_kbytes: u64,
    /// How often Kafka metadata is fetched to check Kafka is reachable, in ms.
    pub metadata_probe_interval_ms: u64,
    /// `/readyz` fails when the last successful metadata fetch is older than this,
    /// in ms. (It fails at once, whatever the age, when librdkafka reports all
    /// brokers down.)
    pub metadata_max_age_ms: u64,
    /// Extra librdkafka producer properties, passed through untouched (SSL, SASL,
    /// compression, batching…). See librdkafka's CONFIGURATION.md. Environment
    /// variables cannot name keys containing dots; set these in the file.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: DEFAULT_BOOTSTRAP_SERVERS.into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            linger_ms: DEFAULT_LINGER_MS,
            linger_above_records: DEFAULT_LINGER_ABOVE_RECORDS,
            delivery_timeout_ms: DEFAULT_DELIVERY_TIMEOUT_MS,
            queue_max_kbytes: DEFAULT_QUEUE_MAX_KBYTES,
            metadata_probe_interval_ms: DEFAULT_METADATA_PROBE_INTERVAL_MS,
            metadata_max_age_ms: DEFAULT_METADATA_MAX_AGE_MS,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    pub fn metadata_probe_interval(&self) -> Duration {
        Duration::from_millis(self.metadata_probe_interval_ms)
    }

    pub fn metadata_max_age(&self) -> Duration {
        Duration::from_millis(self.metadata_max_age_ms)
    }

    /// Records every problem of this section under `kafka.…`.
    pub fn validate(&self, problems: &mut Problems) {
        let servers: Vec<&str> = self
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            problems.push("kafka.bootstrap_servers", "needs at least one host:port");
        }
        for server in servers {
            let port = server.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if !matches!(port, Some(Ok(p)) if p > 0) {
                problems.push(
                    "kafka.bootstrap_servers",
                    format!("'{server}' is not host:port"),
                );
            }
        }
        if self.client_id.is_empty() {
            problems.push("kafka.client_id", "must not be empty");
        }
        if self.linger_ms > MAX_LINGER_MS {
            problems.push(
                "kafka.linger_ms",
                format!("must be at most {MAX_LINGER_MS}"),
            );
        }
        if self.delivery_timeout_ms == 0 || self.delivery_timeout_ms > i32::MAX as u64 {
            problems.push(
                "kafka.delivery_timeout_ms",
                format!("must be between 1 and {}", i32::MAX),
            );
        }
        if !(1..=2_097_151).contains(&self.queue_max_kbytes) {
            problems.push("kafka.queue_max_kbytes", "must be between 1 and 2097151");
        }
        if self.metadata_probe_interval_ms == 0 {
            problems.push("kafka.metadata_probe_interval_ms", "must be at least 1");
        }
        if self.metadata_max_age_ms <= self.metadata_probe_interval_ms {
            problems.push(
                "kafka.metadata_max_age_ms",
                format!(
                    "must be longer than kafka.metadata_probe_interval_ms ({}), or /readyz flaps",
                    self.metadata_probe_interval_ms
                ),
            );
        }
        for (key, value) in &self.properties {
            let path = format!("kafka.properties.\"{key}\"");
            if let Some((_, field)) = OWNED_PROPERTIES.iter().find(|(k, _)| k == key) {
                problems.push(path, format!("set it with kafka.{field} instead"));
                continue;
            }
            if matches!(key.as_str(), "acks" | "request.required.acks") && value.trim() == "0" {
                problems.push(
                    path,
                    "acks=0 gets no acknowledgement from Kafka, so a PUBACK would promise nothing",
                );
                continue;
            }
            // librdkafka knows every property's name and type; ask it, one at a
            // time, so each bad one is named.
            if let Err(err) = ClientConfig::new().set(key, value).create_native_config() {
                problems.push(path, err.to_string());
            }
        }
    }

    /// The librdkafka configuration for the gateway's producer.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Where Kafka's Java producer puts a key, so records of one key
            // land in the partition Java applications expect (librdkafka's
            // own default hashes differently). `properties` may change it.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set(
                "queue.buffering.max.kbytes",
                self.queue_max_kbytes.to_string(),
            );
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// The configuration of the producer for records sent while few are in
    /// flight (see `linger_above_records`); `None` when there is none.
    pub fn prompt_producer_config(&self) -> Option<ClientConfig> {
        if self.linger_above_records == 0 || self.linger_ms == 0 {
            return None;
        }
        let mut config = self.producer_config();
        config.set("linger.ms", "0");
        Some(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_safe() {
        let config = KafkaConfig::default();
        let mut problems = Problems::new();
        config.validate(&mut problems);
        assert!(problems.is_empty(), "{problems}");
        let client = config.producer_config();
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn properties_pass_through_untouched() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("compression.type".into(), "lz4".into());
        config
            .properties
            .insert("security.protocol".into(), "ssl".into());
        let client = config.producer_config();
        assert_eq!(client.get("compression.type"), Some("lz4"));
        assert_eq!(client.get("security.protocol"), Some("ssl"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut config = KafkaConfig {
            bootstrap_servers: "kafka1:9092,kafka2".into(),
            linger_ms: 1_000_000,
            delivery_timeout_ms: 0,
            ..KafkaConfig::default()
        };
        config.properties.insert("acks".into(), "0".into());
        config.properties.insert("no.such.thing".into(), "1".into());
        config.properties.insert("linger.ms".into(), "3".into());
        config
            .properties
            .insert("batch.num.messages".into(), "lots".into());
        let mut problems = Problems::new();
        config.validate(&mut problems);
        let text = problems.to_string();
        for expected in [
            "kafka.bootstrap_servers: 'kafka2' is not host:port",
            "kafka.linger_ms: must be at most 900000",
            "kafka.delivery_timeout_ms: must be between 1",
            "kafka.properties.\"acks\": acks=0",
            "kafka.properties.\"no.such.thing\": ",
            "kafka.properties.\"linger.ms\": set it with kafka.linger_ms instead",
            "kafka.properties.\"batch.num.messages\": ",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(problems.len(), 7, "{text}");
    }
}
