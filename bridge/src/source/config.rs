//! `[[kafka_sources]]`: which Kafka topics are consumed, and what MQTT
//! message each record becomes.
//!
//! Validation reports every problem at once, under `kafka_sources[i]…`. The
//! consumer's librdkafka settings come from here and from `[kafka]` (where
//! Kafka is, and how to reach it securely); the few that decide when an offset
//! is committed are Tributary's and cannot be overridden.

use std::collections::{BTreeMap, HashMap};

use rdkafka::ClientConfig;
use serde::Deserialize;

use super::topic::TopicTemplate;
use crate::config::KafkaConfig;
use crate::problems::{deserialize_one_of, Problems};
use crate::route::kafka_topic_problem;

pub const DEFAULT_GROUP_ID: &str = "tributary";
pub const DEFAULT_QOS: u8 = 1;
/// How often librdkafka reports statistics (consumer lag), in milliseconds.
pub const DEFAULT_STATISTICS_INTERVAL_MS: &str = "5000";

/// Consumer settings Tributary owns: setting them in `properties` would
/// either leave two sources of truth or commit offsets before the records
/// were handed to MQTT.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set it with kafka.bootstrap_servers"),
    (
        "metadata.broker.list",
        "set it with kafka.bootstrap_servers",
    ),
    ("group.id", "set it with group_id"),
    ("auto.offset.reset", "set it with auto_offset_reset"),
    (
        "enable.auto.commit",
        "offsets are committed only once the router has taken each record",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only once the router has taken each record",
    ),
];

/// `[kafka]` properties that say how to reach Kafka (security, addressing),
/// which every consumer takes too. The producer's own tuning stays with it.
const SHARED_PROPERTY_PREFIXES: &[&str] = &[
    "security.",
    "ssl.",
    "ssl_",
    "sasl.",
    "enable.ssl.",
    "enable.sasl.",
    "broker.address.",
    "client.dns.",
    "socket.",
];

/// Where a consumer group with no committed offset starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OffsetReset {
    /// At the oldest record Kafka still has.
    Earliest,
    /// At the next record produced (what was there before is not delivered).
    #[default]
    Latest,
}

impl OffsetReset {
    fn as_librdkafka(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

impl<'de> Deserialize<'de> for OffsetReset {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_one_of(
            deserializer,
            &[
                ("earliest", OffsetReset::Earliest),
                ("latest", OffsetReset::Latest),
            ],
        )
    }
}

/// One `[[kafka_sources]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Names the source in metrics (`source` label) and logs: ASCII letters,
    /// digits, `_` and `-`, unique among sources.
    pub name: String,
    /// Kafka topics to consume. Set this or `topic_pattern`.
    pub topics: Vec<String>,
    /// A regular expression (POSIX extended, librdkafka's) over Kafka topic
    /// names; every matching topic is consumed, new ones too once Kafka's
    /// metadata shows them. Anchored at the start (a `^` is added unless it is
    /// there). Set this or `topics`.
    pub topic_pattern: Option<String>,
    /// The Kafka consumer group. Tributary instances with the same group
    /// share the partitions (each record goes to one of them).
    pub group_id: String,
    /// Where a group with no committed offset starts: `latest` (default, only
    /// records produced from now on) or `earliest` (everything Kafka keeps).
    pub auto_offset_reset: OffsetReset,
    /// The MQTT topic each record is published to, a template:
    /// `{key}` (the record's key), `{kafka_topic}`, `{partition}`,
    /// `{header.NAME}` (the value of header NAME); `{{`/`}}` for braces.
    /// Set this or `mqtt_topic_header`.
    pub mqtt_topic: Option<String>,
    /// Take each record's MQTT topic from this header's value instead.
    pub mqtt_topic_header: Option<String>,
    /// QoS of the published messages (0, 1 or 2); a subscriber gets the
    /// lower of this and its subscription's.
    pub qos: u8,
    /// Publish as retained messages (the topic's last message is kept for
    /// later subscribers; an empty record value deletes it).
    pub retain: bool,
    /// MQTT 5 Message Expiry Interval in seconds (none when unset).
    pub message_expiry: Option<u32>,
    /// Take the Message Expiry Interval from this header (decimal seconds);
    /// a record without it gets `message_expiry`.
    pub message_expiry_header: Option<String>,
    /// Extra librdkafka consumer properties, passed through (fetch sizes,
    /// `statistics.interval.ms`, `partition.assignment.strategy`…). The
    /// security settings of `[kafka.properties]` apply already.
    pub properties: BTreeMap<String, String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            name: String::new(),
            topics: Vec::new(),
            topic_pattern: None,
            group_id: DEFAULT_GROUP_ID.into(),
            auto_offset_reset: OffsetReset::default(),
            mqtt_topic: None,
            mqtt_topic_header: None,
            qos: DEFAULT_QOS,
            retain: false,
            message_expiry: None,
            message_expiry_header: None,
            properties: BTreeMap::new(),
        }
    }
}

impl SourceConfig {
    /// What `subscribe` is given: the topic names, or the anchored pattern.
    pub fn subscription(&self) -> Vec<String> {
        match &self.topic_pattern {
            Some(pattern) if pattern.starts_with('^') => vec![pattern.clone()],
            Some(pattern) => vec![format!("^{pattern}")],
            None => self.topics.clone(),
        }
    }

    /// The librdkafka configuration of this source's consumer.
    pub fn consumer_config(&self, kafka: &KafkaConfig) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &kafka.bootstrap_servers)
            .set(
                "client.id",
                format!("{}-source-{}", kafka.client_id, self.name),
            )
            .set("group.id", &self.group_id)
            .set("auto.offset.reset", self.auto_offset_reset.as_librdkafka())
            .set("statistics.interval.ms", DEFAULT_STATISTICS_INTERVAL_MS)
            .set("enable.partition.eof", "false");
        for (key, value) in &kafka.properties {
            if SHARED_PROPERTY_PREFIXES.iter().any(|p| key.starts_with(p)) {
                config.set(key, value);
            }
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        // Last, so nothing above can change when an offset is committed.
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        config
    }
}

/// Validates every source, recording each problem under `kafka_sources[i]…`.
pub fn validate_sources(sources: &[SourceConfig], problems: &mut Problems) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, source) in sources.iter().enumerate() {
        let at = format!("kafka_sources[{i}]");
        if source.name.is_empty() {
            problems.push(
                format!("{at}.name"),
                "missing or empty: every source needs a name",
            );
        } else if let Some(bad) = source
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
        {
            problems.push(
                format!("{at}.name"),
                format!("'{bad}' is not allowed (only ASCII letters, digits, '_', '-')"),
            );
        } else if let Some(first) = seen.insert(&source.name, i) {
            problems.push(
                format!("{at}.name"),
                format!(
                    "'{}' is already the name of kafka_sources[{first}]",
                    source.name
                ),
            );
        }
        source.validate_topics(&at, problems);
        source.validate_mqtt(&at, problems);
        if source.group_id.is_empty() {
            problems.push(format!("{at}.group_id"), "must not be empty");
        }
        for (key, value) in &source.properties {
            let path = format!("{at}.properties.\"{key}\"");
            if let Some((_, why)) = OWNED_PROPERTIES.iter().find(|(k, _)| k == key) {
                problems.push(path, *why);
                continue;
            }
            // librdkafka knows every property's name and type.
            if let Err(err) = ClientConfig::new().set(key, value).create_native_config() {
                problems.push(path, err.to_string());
            }
        }
    }
}

impl SourceConfig {
    fn validate_topics(&self, at: &str, problems: &mut Problems) {
        match (&self.topic_pattern, self.topics.is_empty()) {
            (Some(_), false) => problems.push(
                format!("{at}.topic_pattern"),
                "set either topics or topic_pattern, not both",
            ),
            (None, true) => problems.push(
                format!("{at}.topics"),
                "missing or empty: name Kafka topics, or set topic_pattern",
            ),
            _ => {}
        }
        for (j, topic) in self.topics.iter().enumerate() {
            if let Some(message) = kafka_topic_problem(topic) {
                problems.push(format!("{at}.topics[{j}]"), message);
            }
        }
        if let Some(pattern) = &self.topic_pattern {
            if pattern.trim_start_matches('^').is_empty() {
                problems.push(format!("{at}.topic_pattern"), "must not be empty");
            } else if let Some(error) = pattern_problem(pattern) {
                problems.push(format!("{at}.topic_pattern"), error);
            }
        }
    }

    fn validate_mqtt(&self, at: &str, problems: &mut Problems) {
        match (&self.mqtt_topic, &self.mqtt_topic_header) {
            (Some(_), Some(_)) => problems.push(
                format!("{at}.mqtt_topic_header"),
                "set either mqtt_topic or mqtt_topic_header, not both",
            ),
            (None, None) => problems.push(
                format!("{at}.mqtt_topic"),
                "missing: set mqtt_topic (a template) or mqtt_topic_header",
            ),
            (Some(template), None) => {
                if let Err(error) = TopicTemplate::parse(template) {
                    problems.push(format!("{at}.mqtt_topic"), error);
                }
            }
            (None, Some(_)) => {}
        }
        for (field, header) in [
            ("mqtt_topic_header", &self.mqtt_topic_header),
            ("message_expiry_header", &self.message_expiry_header),
        ] {
            if header.as_deref() == Some("") {
                problems.push(format!("{at}.{field}"), "must not be empty");
            }
        }
        if self.qos > 2 {
            problems.push(format!("{at}.qos"), "must be 0, 1 or 2");
        }
        if self.message_expiry == Some(0) {
            problems.push(
                format!("{at}.message_expiry"),
                "must be at least 1 second (leave it out for no expiry)",
            );
        }
    }
}

/// Whether librdkafka's own regular expression engine compiles `pattern`.
///
/// librdkafka has no call that only compiles a pattern; its `topic.blacklist`
/// property is a list of patterns compiled when set, so setting it is the
/// check (a comma in it is written `,,`, or it would split the list).
fn pattern_problem(pattern: &str) -> Option<String> {
    let escaped = pattern.replace(',', ",,");
    ClientConfig::new()
        .set("topic.blacklist", escaped)
        .create_native_config()
        .err()
        .map(|err| format!("not a valid regular expression: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> SourceConfig {
        SourceConfig {
            name: "commands".into(),
            topics: vec!["device-commands".into()],
            mqtt_topic: Some("devices/{key}/commands".into()),
            ..SourceConfig::default()
        }
    }

    fn problems_of(sources: &[SourceConfig]) -> Problems {
        let mut problems = Problems::new();
        validate_sources(sources, &mut problems);
        problems
    }

    #[test]
    fn a_plain_source_is_valid_and_never_commits_on_its_own() {
        assert!(problems_of(&[valid()]).is_empty());
        let mut kafka = KafkaConfig::default();
        kafka
            .properties
            .insert("security.protocol".into(), "ssl".into());
        kafka.properties.insert("linger.ms".into(), "50".into());
        let mut source = valid();
        source
            .properties
            .insert("fetch.min.bytes".into(), "1024".into());
        let config = source.consumer_config(&kafka);
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("group.id"), Some("tributary"));
        assert_eq!(config.get("auto.offset.reset"), Some("latest"));
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        assert_eq!(config.get("linger.ms"), None, "producer tuning stays");
        assert_eq!(config.get("fetch.min.bytes"), Some("1024"));
        assert_eq!(config.get("client.id"), Some("tributary-source-commands"));
    }

    #[test]
    fn a_pattern_is_anchored_once() {
        let mut source = valid();
        source.topics.clear();
        source.topic_pattern = Some("commands\\..*".into());
        assert_eq!(source.subscription(), ["^commands\\..*"]);
        source.topic_pattern = Some("^commands\\..*".into());
        assert_eq!(source.subscription(), ["^commands\\..*"]);
        assert!(problems_of(&[source]).is_empty());
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad = SourceConfig {
            name: "bad name".into(),
            topics: vec!["ok".into(), "not ok".into()],
            topic_pattern: Some("(".into()),
            group_id: String::new(),
            mqtt_topic: Some("devices/{keys}/x".into()),
            mqtt_topic_header: Some("topic".into()),
            qos: 3,
            message_expiry: Some(0),
            message_expiry_header: Some(String::new()),
            ..SourceConfig::default()
        };
        bad.properties
            .insert("enable.auto.commit".into(), "true".into());
        bad.properties.insert("no.such.thing".into(), "1".into());
        let second = SourceConfig {
            name: "commands".into(),
            mqtt_topic: Some("a/+/{key}".into()),
            ..SourceConfig::default()
        };
        let pattern = SourceConfig {
            topics: Vec::new(),
            topic_pattern: Some("a(b".into()),
            ..valid()
        };
        let text = problems_of(&[bad, second, valid(), pattern]).to_string();
        for expected in [
            "kafka_sources[0].name: ' ' is not allowed",
            "kafka_sources[0].topic_pattern: set either topics or topic_pattern",
            "kafka_sources[0].topics[1]: ' ' is not allowed",
            "kafka_sources[0].mqtt_topic_header: set either mqtt_topic or mqtt_topic_header",
            "kafka_sources[0].group_id: must not be empty",
            "kafka_sources[0].qos: must be 0, 1 or 2",
            "kafka_sources[0].message_expiry: must be at least 1",
            "kafka_sources[0].message_expiry_header: must not be empty",
            "kafka_sources[0].properties.\"enable.auto.commit\": offsets are committed only",
            "kafka_sources[0].properties.\"no.such.thing\": ",
            "kafka_sources[1].topics: missing or empty",
            "kafka_sources[1].mqtt_topic: '+' can never be in a topic name",
            "kafka_sources[2].name: 'commands' is already the name of kafka_sources[1]",
            "kafka_sources[3].topic_pattern: not a valid regular expression",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
