//! What MQTT message one Kafka record becomes: topic, payload, QoS, retain,
//! expiry, and its headers as MQTT 5 user properties.
//!
//! Total over any record: whatever its key, headers or value, the answer is
//! a message or a [`Skip`] reason, never a panic.

use bytes::Bytes;

use super::config::SourceConfig;
use super::topic::TopicTemplate;

/// A consumed record, as the mapping reads it.
#[derive(Debug)]
pub struct KafkaRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Headers in record order; a null value is `None`. Headers whose name is
    /// not UTF-8 are not here (see `source::read_headers`).
    pub headers: Vec<(String, Option<&'a [u8]>)>,
}

impl KafkaRecord<'_> {
    /// The value of the last header named `name` (Kafka's convention for a
    /// repeated header), as text.
    pub fn header_str(&self, name: &str) -> Result<&str, Skip> {
        let value = self
            .headers
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| *value)
            .ok_or(Skip::MissingHeader)?;
        std::str::from_utf8(value).map_err(|_| Skip::NotUtf8)
    }
}

/// Why a record is not published. It can never succeed, so its offset is
/// committed all the same; each is counted under its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `{key}` in the topic template, and the record has no key.
    MissingKey,
    /// A header the topic (or expiry) is taken from is absent or null.
    MissingHeader,
    /// The key or header the topic is made of is not UTF-8.
    NotUtf8,
    /// The topic made is no MQTT topic name (empty, a wildcard, a NUL, over
    /// 65,535 bytes).
    InvalidTopic,
    /// The expiry header is not a number of seconds from 1 to 4294967295.
    InvalidExpiry,
}

impl Skip {
    pub const ALL: [Skip; 5] = [
        Skip::MissingKey,
        Skip::MissingHeader,
        Skip::NotUtf8,
        Skip::InvalidTopic,
        Skip::InvalidExpiry,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Skip::MissingKey => "missing_key",
            Skip::MissingHeader => "missing_header",
            Skip::NotUtf8 => "not_utf8",
            Skip::InvalidTopic => "invalid_topic",
            Skip::InvalidExpiry => "invalid_expiry",
        }
    }
}

/// One MQTT message to publish, made from one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 Message Expiry Interval, in seconds.
    pub expiry: Option<u32>,
    /// One per Kafka header with a UTF-8 value, in record order.
    pub user_properties: Vec<(String, String)>,
}

/// Where a source's MQTT topics come from.
#[derive(Debug, Clone)]
enum TopicFrom {
    Template(TopicTemplate),
    Header(String),
}

/// A source's settings for turning records into messages.
#[derive(Debug, Clone)]
pub struct Mapping {
    topic: TopicFrom,
    qos: u8,
    retain: bool,
    expiry: Option<u32>,
    expiry_header: Option<String>,
}

impl Mapping {
    /// The mapping of a validated source; the error repeats validation's.
    pub fn new(config: &SourceConfig) -> Result<Mapping, String> {
        let topic = match (&config.mqtt_topic, &config.mqtt_topic_header) {
            (Some(template), None) => TopicFrom::Template(TopicTemplate::parse(template)?),
            (None, Some(header)) => TopicFrom::Header(header.clone()),
            _ => return Err("set exactly one of mqtt_topic and mqtt_topic_header".into()),
        };
        Ok(Mapping {
            topic,
            qos: config.qos.min(2),
            retain: config.retain,
            expiry: config.message_expiry,
            expiry_header: config.message_expiry_header.clone(),
        })
    }

    /// The message `record` becomes, or why it cannot become one.
    pub fn message(&self, record: &KafkaRecord<'_>) -> Result<SourceMessage, Skip> {
        let topic = match &self.topic {
            TopicFrom::Template(template) => template.fill(record)?,
            TopicFrom::Header(name) => record.header_str(name)?.to_owned(),
        };
        if !tributary_wire::valid_topic_name(&topic) {
            return Err(Skip::InvalidTopic);
        }
        let expiry = match &self.expiry_header {
            Some(name) => match record.header_str(name) {
                Ok(text) => Some(
                    text.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|seconds| *seconds > 0)
                        .ok_or(Skip::InvalidExpiry)?,
                ),
                Err(Skip::MissingHeader) => self.expiry,
                Err(_) => return Err(Skip::InvalidExpiry),
            },
            None => self.expiry,
        };
        let user_properties = record
            .headers
            .iter()
            .filter_map(|(key, value)| {
                let value = std::str::from_utf8((*value)?).ok()?;
                Some((key.clone(), value.to_owned()))
            })
            .collect();
        Ok(SourceMessage {
            topic,
            payload: Bytes::copy_from_slice(record.payload.unwrap_or_default()),
            qos: self.qos,
            retain: self.retain,
            expiry,
            user_properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(edit: impl FnOnce(&mut SourceConfig)) -> Mapping {
        let mut config = SourceConfig {
            name: "s".into(),
            topics: vec!["t".into()],
            mqtt_topic: Some("devices/{key}/commands".into()),
            ..SourceConfig::default()
        };
        edit(&mut config);
        Mapping::new(&config).unwrap()
    }

    fn record<'a>(
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
        headers: &[(&str, Option<&'a [u8]>)],
    ) -> KafkaRecord<'a> {
        KafkaRecord {
            topic: "t",
            partition: 0,
            offset: 0,
            key,
            payload,
            headers: headers.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn a_record_becomes_a_message_with_its_headers_as_user_properties() {
        let m = mapping(|c| {
            c.qos = 2;
            c.retain = true;
            c.message_expiry = Some(60);
        });
        let got = m
            .message(&record(
                Some(b"dev-1"),
                Some(b"\x00\xffon"),
                &[
                    ("trace", Some(b"abc")),
                    ("binary", Some(b"\xff\xfe")),
                    ("null", None),
                    ("empty", Some(b"")),
                ],
            ))
            .unwrap();
        assert_eq!(
            got,
            SourceMessage {
                topic: "devices/dev-1/commands".into(),
                payload: Bytes::from_static(b"\x00\xffon"),
                qos: 2,
                retain: true,
                expiry: Some(60),
                user_properties: vec![
                    ("trace".into(), "abc".into()),
                    ("empty".into(), String::new())
                ],
            }
        );
        // A null value is an empty payload.
        let empty = m.message(&record(Some(b"d"), None, &[])).unwrap();
        assert!(empty.payload.is_empty());
    }

    #[test]
    fn the_topic_and_expiry_can_come_from_headers() {
        let m = mapping(|c| {
            c.mqtt_topic = None;
            c.mqtt_topic_header = Some("mqtt-topic".into());
            c.message_expiry = Some(30);
            c.message_expiry_header = Some("ttl".into());
        });
        let got = m
            .message(&record(
                None,
                Some(b"x"),
                &[("mqtt-topic", Some(b"a/b")), ("ttl", Some(b" 5 "))],
            ))
            .unwrap();
        assert_eq!((got.topic.as_str(), got.expiry), ("a/b", Some(5)));
        let fallback = m
            .message(&record(None, None, &[("mqtt-topic", Some(b"a/b"))]))
            .unwrap();
        assert_eq!(fallback.expiry, Some(30));
        for ttl in [&b"soon"[..], b"0", b"-1", b"4294967296", b"\xff"] {
            assert_eq!(
                m.message(&record(
                    None,
                    None,
                    &[("mqtt-topic", Some(b"a/b")), ("ttl", Some(ttl))]
                )),
                Err(Skip::InvalidExpiry),
                "{ttl:?}"
            );
        }
        assert_eq!(
            m.message(&record(None, None, &[])),
            Err(Skip::MissingHeader)
        );
    }

    #[test]
    fn a_topic_that_is_no_topic_name_is_skipped() {
        let m = mapping(|_| {});
        let long = vec![b'a'; 70_000];
        for key in [&b"+"[..], b"#", b"a\0b", &long] {
            assert_eq!(
                m.message(&record(Some(key), None, &[])),
                Err(Skip::InvalidTopic)
            );
        }
        let from_header = mapping(|c| {
            c.mqtt_topic = None;
            c.mqtt_topic_header = Some("to".into());
        });
        assert_eq!(
            from_header.message(&record(None, None, &[("to", Some(b""))])),
            Err(Skip::InvalidTopic)
        );
        assert_eq!(m.message(&record(None, None, &[])), Err(Skip::MissingKey));
    }
}
