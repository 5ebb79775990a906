//! Builds the Kafka record for one MQTT publish on one route.
//!
//! With the `raw` format the payload is forwarded byte for byte; other formats
//! wrap it (see `format`), never losing a byte of it. The MQTT facts a Kafka
//! consumer needs to interpret it travel as headers. The topic and key come
//! from the route, fixed or from templates (see `template`).

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};

use thiserror::Error;

use crate::events::RouteMetrics;
use crate::format::Format;
use crate::route::{kafka_topic_problem, KafkaTopic, RecordKey, Route};
use crate::template::{PayloadJson, Unfilled};

/// Header carrying the MQTT topic name the device published to.
pub const HEADER_TOPIC: &str = "mqtt.topic";
/// Header carrying the publishing client's id.
pub const HEADER_CLIENT_ID: &str = "mqtt.client_id";
/// Header carrying the publish QoS as one ASCII digit (`0`, `1`, `2`).
pub const HEADER_QOS: &str = "mqtt.qos";
/// Header carrying the retain flag as `true` / `false`.
pub const HEADER_RETAIN: &str = "mqtt.retain";
/// Header carrying the user name the client authenticated as (absent for an
/// anonymous client).
pub const HEADER_USERNAME: &str = "mqtt.username";
/// Header carrying the identity (subject CN) of the client's verified TLS
/// certificate (absent without one).
pub const HEADER_CERT_CN: &str = "mqtt.cert_cn";

/// Header carrying the MQTT 5 Content Type.
pub const HEADER_CONTENT_TYPE: &str = "mqtt.content_type";
/// Header carrying the MQTT 5 Payload Format Indicator as one ASCII digit
/// (`0`: unspecified bytes, `1`: UTF-8 text).
pub const HEADER_PAYLOAD_FORMAT: &str = "mqtt.payload_format";
/// Header carrying the MQTT 5 Response Topic.
pub const HEADER_RESPONSE_TOPIC: &str = "mqtt.response_topic";
/// Header carrying the MQTT 5 Correlation Data, byte for byte.
pub const HEADER_CORRELATION_DATA: &str = "mqtt.correlation_data";
/// Header carrying the MQTT 5 Message Expiry Interval in seconds, as decimal
/// digits.
pub const HEADER_MESSAGE_EXPIRY: &str = "mqtt.message_expiry";

/// The header names Tributary sets itself: a user property whose header
/// would take one of these names is left out of the headers, so no device
/// can pass for another.
pub const RESERVED_HEADERS: &[&str] = &[
    HEADER_TOPIC,
    HEADER_CLIENT_ID,
    HEADER_QOS,
    HEADER_RETAIN,
    HEADER_USERNAME,
    HEADER_CERT_CN,
    HEADER_CONTENT_TYPE,
    HEADER_PAYLOAD_FORMAT,
    HEADER_RESPONSE_TOPIC,
    HEADER_CORRELATION_DATA,
    HEADER_MESSAGE_EXPIRY,
];

/// The MQTT 5 properties of a publish that a Kafka consumer may need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// In the order the device sent them; a name may repeat.
    pub user_properties: Vec<(String, String)>,
}

/// What the bridge needs to know of one MQTT publish.
#[derive(Debug, Clone, Default)]
pub struct MqttPublish {
    pub topic: Arc<str>,
    pub client_id: Arc<str>,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    /// The user name it authenticated as; `None` when anonymous.
    pub username: Option<Arc<str>>,
    /// Its verified client certificate's identity, over mutual TLS.
    pub cert_cn: Option<Arc<str>>,
    /// Its MQTT 5 properties, if it had any.
    pub properties: Option<Arc<MqttProperties>>,
    /// When Tributary received it, in milliseconds since the Unix epoch.
    pub received_ms: u64,
}

/// Why a publish cannot become a record on a route: nothing retrying could
/// change (the same publish gives the same answer).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RecordError {
    /// A topic or key template could not be filled.
    #[error("{0}")]
    Unfilled(#[from] Unfilled),
    /// The topic template gave a name Kafka does not accept.
    #[error("the Kafka topic template gave '{topic}': {problem}")]
    BadTopic { topic: String, problem: String },
    /// The route's format needs a JSON payload and this one is not.
    #[error("the payload is not JSON")]
    PayloadNotJson,
    /// The JSON payload does not fit the route's Avro schema.
    #[error("the payload does not fit the Avro schema: {0}")]
    NotInSchema(String),
    /// The route's schema has no registry id yet (the registry was out of
    /// reach): for now only.
    #[error("the schema is not registered yet at {0}")]
    NotRegistered(String),
}

impl RecordError {
    /// True when the payload is what failed (not the topic or the client).
    pub fn is_payload(&self) -> bool {
        match self {
            RecordError::Unfilled(unfilled) => unfilled.is_payload(),
            RecordError::BadTopic { .. } | RecordError::NotRegistered(_) => false,
            RecordError::PayloadNotJson | RecordError::NotInSchema(_) => true,
        }
    }
}

/// One record, ready for the producer.
#[derive(Debug, Clone)]
pub struct Record {
    /// The route it was built for (its name labels the delivery metrics).
    pub route: Arc<str>,
    pub metrics: RouteMetrics,
    pub topic: Arc<str>,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: OwnedHeaders,
}

impl Record {
    /// Builds the record `publish` becomes on `route`.
    pub fn build(route: &Route, publish: &MqttPublish) -> Result<Self, RecordError> {
        Record::build_with(route, publish, &mut PayloadJson::default())
    }

    /// [`Record::build`], with the publish's payload parsed as JSON at most
    /// once for all its routes.
    pub fn build_with(
        route: &Route,
        publish: &MqttPublish,
        json: &mut PayloadJson,
    ) -> Result<Self, RecordError> {
        let topic = match &route.kafka_topic {
            KafkaTopic::Fixed(topic) => topic.clone(),
            KafkaTopic::Template(template) => {
                let topic = template.fill(publish, json)?;
                if let Some(problem) = kafka_topic_problem(&topic) {
                    return Err(RecordError::BadTopic { topic, problem });
                }
                Arc::from(topic)
            }
        };
        let key = match &route.key {
            RecordKey::Topic => Some(Bytes::copy_from_slice(publish.topic.as_bytes())),
            RecordKey::ClientId => Some(Bytes::copy_from_slice(publish.client_id.as_bytes())),
            RecordKey::Username => publish
                .username
                .as_ref()
                .map(|username| Bytes::copy_from_slice(username.as_bytes())),
            RecordKey::None => None,
            RecordKey::Template(template) => Some(Bytes::from(template.fill(publish, json)?)),
        };
        let payload = match &route.format {
            Format::Raw => publish.payload.clone(),
            Format::JsonEnvelope(envelope) => envelope.wrap(publish)?,
            Format::Avro(avro) => avro.encode(&publish.payload)?,
        };
        let headers = if route.headers {
            headers(publish, &route.user_property_prefix)
        } else {
            OwnedHeaders::new()
        };
        Ok(Record {
            route: route.name.clone(),
            metrics: route.metrics.clone(),
            topic,
            key,
            payload,
            headers,
        })
    }
}

/// Header of a dead letter: why it is not in its route's topic (a
/// failure label, e.g. `invalid_payload`, `message_too_large`).
pub const HEADER_DEAD_LETTER_REASON: &str = "tributary.dead_letter.reason";
/// Header of a dead letter: the failure, in words.
pub const HEADER_DEAD_LETTER_ERROR: &str = "tributary.dead_letter.error";
/// Header of a dead letter: the route it was published on.
pub const HEADER_DEAD_LETTER_ROUTE: &str = "tributary.dead_letter.route";
/// Header of a dead letter: the Kafka topic it was meant for, when known.
pub const HEADER_DEAD_LETTER_TOPIC: &str = "tributary.dead_letter.kafka_topic";

impl Record {
    /// The dead letter of `publish` on `route` (which has a dead-letter
    /// topic): the payload as the device sent it, its MQTT facts as headers
    /// (whatever the route's `headers`), and why, keyed by client id.
    /// `intended` is the topic it was meant for, when known.
    pub fn dead_letter(
        route: &Route,
        publish: &MqttPublish,
        reason: &'static str,
        error: &str,
        intended: Option<&str>,
    ) -> Option<Record> {
        let dead_letter = route.dead_letter.as_ref()?;
        let headers = with_dead_letter_headers(
            headers(publish, &route.user_property_prefix),
            reason,
            error,
            &route.name,
            intended,
        );
        Some(Record {
            route: route.name.clone(),
            metrics: route.metrics.clone(),
            topic: dead_letter.topic.clone(),
            key: Some(Bytes::copy_from_slice(publish.client_id.as_bytes())),
            payload: publish.payload.clone(),
            headers,
        })
    }
}

impl Record {
    /// This record, refused by Kafka for good, as a dead letter in `topic`:
    /// its value and headers as built, plus why (used by the spool's
    /// drain, which holds the built record, not the device's publish).
    pub fn into_dead_letter(self, topic: Arc<str>, reason: &'static str, error: &str) -> Record {
        let headers =
            with_dead_letter_headers(self.headers, reason, error, &self.route, Some(&self.topic));
        Record {
            topic,
            headers,
            ..self
        }
    }
}

/// `headers` and why the record is a dead letter.
fn with_dead_letter_headers(
    headers: OwnedHeaders,
    reason: &str,
    error: &str,
    route: &str,
    intended: Option<&str>,
) -> OwnedHeaders {
    let headers = headers
        .insert(Header {
            key: HEADER_DEAD_LETTER_REASON,
            value: Some(reason.as_bytes()),
        })
        .insert(Header {
            key: HEADER_DEAD_LETTER_ERROR,
            value: Some(error.as_bytes()),
        })
        .insert(Header {
            key: HEADER_DEAD_LETTER_ROUTE,
            value: Some(route.as_bytes()),
        });
    match intended {
        Some(topic) => headers.insert(Header {
            key: HEADER_DEAD_LETTER_TOPIC,
            value: Some(topic.as_bytes()),
        }),
        None => headers,
    }
}

/// The MQTT facts of `publish` as Kafka headers.
fn headers(publish: &MqttPublish, user_property_prefix: &str) -> OwnedHeaders {
    let qos = [b'0' + publish.qos.min(2)];
    let retain: &[u8] = if publish.retain { b"true" } else { b"false" };
    let mut headers = OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: HEADER_TOPIC,
            value: Some(publish.topic.as_bytes()),
        })
        .insert(Header {
            key: HEADER_CLIENT_ID,
            value: Some(publish.client_id.as_bytes()),
        })
        .insert(Header {
            key: HEADER_QOS,
            value: Some(&qos[..]),
        })
        .insert(Header {
            key: HEADER_RETAIN,
            value: Some(retain),
        });
    if let Some(username) = &publish.username {
        headers = headers.insert(Header {
            key: HEADER_USERNAME,
            value: Some(username.as_bytes()),
        });
    }
    if let Some(cn) = &publish.cert_cn {
        headers = headers.insert(Header {
            key: HEADER_CERT_CN,
            value: Some(cn.as_bytes()),
        });
    }
    let Some(properties) = &publish.properties else {
        return headers;
    };
    if let Some(format) = properties.payload_format_indicator {
        headers = headers.insert(Header {
            key: HEADER_PAYLOAD_FORMAT,
            value: Some(&[b'0' + format.min(9)][..]),
        });
    }
    if let Some(expiry) = properties.message_expiry_interval {
        headers = headers.insert(Header {
            key: HEADER_MESSAGE_EXPIRY,
            value: Some(expiry.to_string().as_bytes()),
        });
    }
    for (key, value) in [
        (HEADER_CONTENT_TYPE, &properties.content_type),
        (HEADER_RESPONSE_TOPIC, &properties.response_topic),
    ] {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
    }
    if let Some(data) = &properties.correlation_data {
        headers = headers.insert(Header {
            key: HEADER_CORRELATION_DATA,
            value: Some(&data[..]),
        });
    }
    for (name, value) in &properties.user_properties {
        let key = format!("{user_property_prefix}{name}");
        if RESERVED_HEADERS.contains(&key.as_str()) {
            continue;
        }
        headers = headers.insert(Header {
            key: &key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;
    use crate::route::{KeySource, RouteConfig};

    fn publish() -> MqttPublish {
        MqttPublish {
            topic: "sensors/room1/temp".into(),
            client_id: "dev-42".into(),
            qos: 1,
            retain: true,
            payload: Bytes::from_static(b"\x00\xff21.5"),
            ..MqttPublish::default()
        }
    }

    fn route(key: KeySource) -> Route {
        Route::new("telemetry", "sensors", key)
    }

    fn header<'a>(record: &'a Record, name: &str) -> Option<&'a [u8]> {
        record
            .headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
    }

    #[test]
    fn payload_is_forwarded_untouched_with_mqtt_headers() {
        let record = Record::build(&route(KeySource::Topic), &publish()).unwrap();
        assert_eq!(&*record.topic, "sensors");
        assert_eq!(&*record.route, "telemetry");
        assert_eq!(&record.payload[..], b"\x00\xff21.5");
        assert_eq!(record.headers.count(), 4);
        assert_eq!(
            header(&record, HEADER_TOPIC),
            Some(&b"sensors/room1/temp"[..])
        );
        assert_eq!(header(&record, HEADER_CLIENT_ID), Some(&b"dev-42"[..]));
        assert_eq!(header(&record, HEADER_QOS), Some(&b"1"[..]));
        assert_eq!(header(&record, HEADER_RETAIN), Some(&b"true"[..]));
    }

    #[test]
    fn key_follows_the_route() {
        let by_topic = Record::build(&route(KeySource::Topic), &publish()).unwrap();
        assert_eq!(by_topic.key.as_deref(), Some(&b"sensors/room1/temp"[..]));
        let by_client = Record::build(&route(KeySource::ClientId), &publish()).unwrap();
        assert_eq!(by_client.key.as_deref(), Some(&b"dev-42"[..]));
        let keyless = Record::build(&route(KeySource::None), &publish()).unwrap();
        assert_eq!(keyless.key, None);
    }

    #[test]
    fn qos_zero_and_no_retain_are_spelled_out() {
        let mut p = publish();
        p.qos = 0;
        p.retain = false;
        let record = Record::build(&route(KeySource::None), &p).unwrap();
        assert_eq!(header(&record, HEADER_QOS), Some(&b"0"[..]));
        assert_eq!(header(&record, HEADER_RETAIN), Some(&b"false"[..]));
    }

    fn configured(config: RouteConfig) -> Route {
        Route::from_config(&RouteConfig {
            name: "r".into(),
            mqtt_filters: vec!["#".into()],
            ..config
        })
        .unwrap()
    }

    #[test]
    fn mqtt5_properties_become_headers_each_user_property_its_own() {
        let mut p = publish();
        p.username = Some("alice".into());
        p.properties = Some(Arc::new(MqttProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            content_type: Some("application/json".into()),
            response_topic: Some("replies/dev-42".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![
                ("traceparent".into(), "00-abc-01".into()),
                ("site".into(), "a".into()),
                ("site".into(), "b".into()),
                // Would pass for the authenticated user name: left out.
                ("mqtt.username".into(), "mallory".into()),
            ],
        }));
        let record = Record::build(&route(KeySource::None), &p).unwrap();
        let all: Vec<(&str, Option<&[u8]>)> =
            record.headers.iter().map(|h| (h.key, h.value)).collect();
        for expected in [
            (HEADER_CONTENT_TYPE, &b"application/json"[..]),
            (HEADER_PAYLOAD_FORMAT, b"1"),
            (HEADER_MESSAGE_EXPIRY, b"3600"),
            (HEADER_RESPONSE_TOPIC, b"replies/dev-42"),
            (HEADER_CORRELATION_DATA, b"\x01\x02"),
            ("traceparent", b"00-abc-01"),
        ] {
            assert!(
                all.contains(&(expected.0, Some(expected.1))),
                "{expected:?} in {all:?}"
            );
        }
        let sites: Vec<_> = all.iter().filter(|(k, _)| *k == "site").collect();
        assert_eq!(
            sites,
            [&("site", Some(&b"a"[..])), &("site", Some(&b"b"[..]))]
        );
        let usernames: Vec<_> = all.iter().filter(|(k, _)| *k == HEADER_USERNAME).collect();
        assert_eq!(usernames, [&(HEADER_USERNAME, Some(&b"alice"[..]))]);

        let prefixed = configured(RouteConfig {
            kafka_topic: "t".into(),
            user_property_prefix: "mqtt.user.".into(),
            ..RouteConfig::default()
        });
        let record = Record::build(&prefixed, &p).unwrap();
        assert_eq!(
            header(&record, "mqtt.user.traceparent"),
            Some(&b"00-abc-01"[..])
        );
        assert_eq!(header(&record, "traceparent"), None);

        let bare = configured(RouteConfig {
            kafka_topic: "t".into(),
            headers: false,
            ..RouteConfig::default()
        });
        assert_eq!(Record::build(&bare, &p).unwrap().headers.count(), 0);
    }

    #[test]
    fn topic_and_key_templates_are_filled_per_record() {
        let route = configured(RouteConfig {
            kafka_topic: "telemetry.{topic.1}".into(),
            key: KeySource::Template("{payload.ship.mmsi}".into()),
            ..RouteConfig::default()
        });
        let mut p = publish();
        p.payload = Bytes::from_static(br#"{"ship":{"mmsi":235001234}}"#);
        let record = Record::build(&route, &p).unwrap();
        assert_eq!(&*record.topic, "telemetry.sensors");
        assert_eq!(record.key.as_deref(), Some(&b"235001234"[..]));

        p.payload = Bytes::from_static(br#"{"ship":{}}"#);
        let error = Record::build(&route, &p).unwrap_err();
        assert!(error.is_payload(), "{error}");

        // A level that fills the template but is no Kafka topic name.
        p.topic = "bad topic/x".into();
        p.payload = Bytes::from_static(br#"{"ship":{"mmsi":1}}"#);
        let error = Record::build(&route, &p).unwrap_err();
        assert!(matches!(error, RecordError::BadTopic { .. }), "{error}");
        assert!(!error.is_payload());
    }
}
