//! Builds the Kafka record for one MQTT publish on one route.
//!
//! The payload is forwarded byte for byte (no re-encoding); the MQTT facts a Kafka
//! consumer needs to interpret it travel as headers. It never drops or rewrites
//! payload bytes.

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};

use crate::events::RouteMetrics;
use crate::route::{KeySource, Route};

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

/// What the bridge needs to know of one MQTT publish.
#[derive(Debug, Clone)]
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
    pub fn build(route: &Route, publish: &MqttPublish) -> Self {
        let key = match route.key {
            KeySource::Topic => Some(Bytes::copy_from_slice(publish.topic.as_bytes())),
            KeySource::ClientId => Some(Bytes::copy_from_slice(publish.client_id.as_bytes())),
            KeySource::Username => publish
                .username
                .as_ref()
                .map(|username| Bytes::copy_from_slice(username.as_bytes())),
            KeySource::None => None,
        };
        let qos = [b'0' + publish.qos.min(2)];
        let retain: &[u8] = if publish.retain { b"true" } else { b"false" };
        let headers = OwnedHeaders::new_with_capacity(4)
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
        let headers = match &publish.username {
            Some(username) => headers.insert(Header {
                key: HEADER_USERNAME,
                value: Some(username.as_bytes()),
            }),
            None => headers,
        };
        let headers = match &publish.cert_cn {
            Some(cn) => headers.insert(Header {
                key: HEADER_CERT_CN,
                value: Some(cn.as_bytes()),
            }),
            None => headers,
        };
        Record {
            route: route.name.clone(),
            metrics: route.metrics.clone(),
            topic: route.kafka_topic.clone(),
            key,
            payload: publish.payload.clone(),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    fn publish() -> MqttPublish {
        MqttPublish {
            topic: "sensors/room1/temp".into(),
            client_id: "dev-42".into(),
            qos: 1,
            retain: true,
            payload: Bytes::from_static(b"\x00\xff21.5"),
            username: None,
            cert_cn: None,
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
        let record = Record::build(&route(KeySource::Topic), &publish());
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
        let by_topic = Record::build(&route(KeySource::Topic), &publish());
        assert_eq!(by_topic.key.as_deref(), Some(&b"sensors/room1/temp"[..]));
        let by_client = Record::build(&route(KeySource::ClientId), &publish());
        assert_eq!(by_client.key.as_deref(), Some(&b"dev-42"[..]));
        let keyless = Record::build(&route(KeySource::None), &publish());
        assert_eq!(keyless.key, None);
    }

    #[test]
    fn qos_zero_and_no_retain_are_spelled_out() {
        let mut p = publish();
        p.qos = 0;
        p.retain = false;
        let record = Record::build(&route(KeySource::None), &p);
        assert_eq!(header(&record, HEADER_QOS), Some(&b"0"[..]));
        assert_eq!(header(&record, HEADER_RETAIN), Some(&b"false"[..]));
    }
}
