//! What a record's value is: the payload as it came (`raw`), or the payload
//! wrapped in a JSON envelope with the MQTT facts beside it.
//!
//! The envelope's default form is `{"topic":"<MQTT topic>","payload":"<base64>"}`:
//! compact, keys in that order, standard base64 with padding, and `<`, `>`,
//! `&`, U+2028 and U+2029 written as `\u` escapes: byte for byte what a
//! forwarding service written in Go produces with `wrap_as_json`, so its
//! consumers read Tributary's records unchanged.

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use crate::problems::deserialize_one_of;
use crate::record::{MqttPublish, RecordError};

/// A route's record format.
#[derive(Debug, Clone, Default)]
pub enum Format {
    /// The payload, byte for byte.
    #[default]
    Raw,
    /// The payload inside a JSON object with the MQTT facts.
    JsonEnvelope(Envelope),
    /// A JSON payload as Avro, checked against the route's schema.
    Avro(std::sync::Arc<crate::avro::AvroFormat>),
}

/// How the JSON envelope carries the payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EnvelopePayload {
    /// As a base64 string: any payload.
    #[default]
    Base64,
    /// As JSON, embedded as the device sent it: the payload must be JSON
    /// (a payload that is not fails the record).
    Json,
}

impl<'de> Deserialize<'de> for EnvelopePayload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_one_of(
            deserializer,
            &[
                ("base64", EnvelopePayload::Base64),
                ("json", EnvelopePayload::Json),
            ],
        )
    }
}

/// One optional field of the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EnvelopeField {
    /// `"client_id": "<id>"`.
    ClientId,
    /// `"username": "<name>"`, or `null` for an anonymous client.
    Username,
    /// `"qos": 0|1|2`.
    Qos,
    /// `"retain": true|false`.
    Retain,
    /// `"timestamp": <ms since the Unix epoch when Tributary received it>`.
    Timestamp,
    /// `"user_properties": [["name", "value"], …]` in the order sent (a name
    /// may repeat); `[]` when none.
    UserProperties,
}

impl<'de> Deserialize<'de> for EnvelopeField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_one_of(
            deserializer,
            &[
                ("client_id", EnvelopeField::ClientId),
                ("username", EnvelopeField::Username),
                ("qos", EnvelopeField::Qos),
                ("retain", EnvelopeField::Retain),
                ("timestamp", EnvelopeField::Timestamp),
                ("user_properties", EnvelopeField::UserProperties),
            ],
        )
    }
}

/// A route's `[routes.envelope]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Envelope {
    /// How the payload is carried.
    pub payload: EnvelopePayload,
    /// Fields added after `topic` and `payload`, always in the order
    /// [`EnvelopeField`] lists them.
    pub fields: Vec<EnvelopeField>,
}

impl Envelope {
    /// The envelope of `publish`.
    pub fn wrap(&self, publish: &MqttPublish) -> Result<Bytes, RecordError> {
        let mut out = String::with_capacity(publish.payload.len() * 4 / 3 + 64);
        out.push_str("{\"topic\":");
        json_string(&mut out, &publish.topic);
        out.push_str(",\"payload\":");
        match self.payload {
            EnvelopePayload::Base64 => {
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(&publish.payload, &mut out);
                out.push('"');
            }
            EnvelopePayload::Json => {
                let text = std::str::from_utf8(&publish.payload)
                    .map_err(|_| RecordError::PayloadNotJson)?;
                serde_json::from_str::<serde::de::IgnoredAny>(text)
                    .map_err(|_| RecordError::PayloadNotJson)?;
                out.push_str(text.trim());
            }
        }
        let mut fields = self.fields.clone();
        fields.sort_unstable();
        fields.dedup();
        for field in fields {
            match field {
                EnvelopeField::ClientId => {
                    out.push_str(",\"client_id\":");
                    json_string(&mut out, &publish.client_id);
                }
                EnvelopeField::Username => {
                    out.push_str(",\"username\":");
                    match &publish.username {
                        Some(name) => json_string(&mut out, name),
                        None => out.push_str("null"),
                    }
                }
                EnvelopeField::Qos => {
                    let _ = write!(out, ",\"qos\":{}", publish.qos);
                }
                EnvelopeField::Retain => {
                    let _ = write!(out, ",\"retain\":{}", publish.retain);
                }
                EnvelopeField::Timestamp => {
                    let _ = write!(out, ",\"timestamp\":{}", publish.received_ms);
                }
                EnvelopeField::UserProperties => {
                    out.push_str(",\"user_properties\":[");
                    let pairs = publish
                        .properties
                        .iter()
                        .flat_map(|p| p.user_properties.iter());
                    for (i, (name, value)) in pairs.enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push('[');
                        json_string(&mut out, name);
                        out.push(',');
                        json_string(&mut out, value);
                        out.push(']');
                    }
                    out.push(']');
                }
            }
        }
        out.push('}');
        Ok(Bytes::from(out))
    }
}

/// Writes `text` as a JSON string, escaped as Go's `encoding/json` does by
/// default (HTML-safe).
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};

    use super::*;
    use crate::record::MqttProperties;

    fn publish(topic: &str, payload: &'static [u8]) -> MqttPublish {
        MqttPublish {
            topic: topic.into(),
            client_id: "dev-1".into(),
            qos: 1,
            retain: true,
            payload: Bytes::from_static(payload),
            received_ms: 1_700_000_000_123,
            ..MqttPublish::default()
        }
    }

    fn wrap(envelope: &Envelope, publish: &MqttPublish) -> String {
        String::from_utf8(envelope.wrap(publish).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn the_default_envelope_is_the_forwarders_bytes() {
        let envelope = Envelope::default();
        assert_eq!(
            wrap(&envelope, &publish("foo/bar", b"\x00\xffhi")),
            r#"{"topic":"foo/bar","payload":"AP9oaQ=="}"#
        );
        // What Go's encoding/json writes for these characters.
        assert_eq!(
            wrap(&envelope, &publish("a<b>&\"c\\\u{2028}\u{1}", b"")),
            r#"{"topic":"a\u003cb\u003e\u0026\"c\\\u2028\u0001","payload":""}"#
        );
    }

    #[test]
    fn fields_and_json_payloads_are_added_in_a_fixed_order() {
        let envelope = Envelope {
            payload: EnvelopePayload::Json,
            fields: vec![
                EnvelopeField::UserProperties,
                EnvelopeField::Timestamp,
                EnvelopeField::Qos,
                EnvelopeField::ClientId,
                EnvelopeField::Retain,
                EnvelopeField::Username,
            ],
        };
        let mut p = publish("ships/1", b" {\"mmsi\": 235001234} ");
        p.properties = Some(Arc::new(MqttProperties {
            user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
            ..MqttProperties::default()
        }));
        let text = wrap(&envelope, &p);
        assert_eq!(
            text,
            r#"{"topic":"ships/1","payload":{"mmsi": 235001234},"client_id":"dev-1","username":null,"qos":1,"retain":true,"timestamp":1700000000123,"user_properties":[["k","v1"],["k","v2"]]}"#
        );
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["payload"], json!({"mmsi": 235001234}));
    }

    #[test]
    fn a_payload_that_is_not_json_fails_the_json_envelope_only() {
        let json = Envelope {
            payload: EnvelopePayload::Json,
            fields: Vec::new(),
        };
        for bad in [&b"{\"a\":"[..], b"\xff", b"", b"1 2"] {
            let p = MqttPublish {
                payload: Bytes::copy_from_slice(bad),
                ..publish("t", b"")
            };
            assert_eq!(json.wrap(&p), Err(RecordError::PayloadNotJson), "{bad:?}");
            assert!(Envelope::default().wrap(&p).is_ok());
        }
    }
}
