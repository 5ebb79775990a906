//! The payload every benchmark message carries, so a verifier can account for
//! each one: magic, run id, connection, sequence number, then padding; or the
//! same as a JSON object, for routes whose format needs JSON (`json_envelope`
//! with an embedded payload, `avro`). The verifier also reads stamps back out
//! of the records those formats write.

use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::Value;

/// Marks a benchmark payload.
pub const MAGIC: &[u8; 4] = b"TRB1";
/// Bytes of the header; payloads are at least this long.
pub const HEADER_LEN: usize = 4 + 8 + 4 + 8;

/// Who sent a message, and its place in that sender's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub run_id: u64,
    pub connection: u32,
    pub seq: u64,
}

impl Stamp {
    /// A payload of `size` bytes (at least [`HEADER_LEN`]) carrying this stamp.
    pub fn payload(&self, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size.max(HEADER_LEN));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.run_id.to_be_bytes());
        out.extend_from_slice(&self.connection.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.resize(size.max(HEADER_LEN), b'.');
        out
    }

    /// The stamp of a benchmark payload, `None` for anything else.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        if payload.len() < HEADER_LEN || &payload[..4] != MAGIC {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(payload[at..at + 8].try_into().unwrap());
        Some(Stamp {
            run_id: u64_at(4),
            connection: u32::from_be_bytes(payload[12..16].try_into().unwrap()),
            seq: u64_at(16),
        })
    }
}

/// How a stamp is written into a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PayloadFormat {
    /// Magic, run id, connection and sequence number as bytes, then padding.
    #[default]
    Binary,
    /// `{"run_id":…,"connection":…,"seq":…,"pad":"…"}`, padded to the size.
    Json,
}

/// The Avro schema of JSON stamps, for routes with `format = "avro"`.
pub const AVRO_SCHEMA: &str = r#"{"type": "record", "name": "Stamp", "namespace": "tributary.bench",
  "fields": [{"name": "run_id", "type": "long"}, {"name": "connection", "type": "long"},
             {"name": "seq", "type": "long"}, {"name": "pad", "type": "string"}]}"#;

impl Stamp {
    /// A payload of `size` bytes (at least what the format needs) in `format`.
    pub fn encode(&self, format: PayloadFormat, size: usize) -> Vec<u8> {
        match format {
            PayloadFormat::Binary => self.payload(size),
            PayloadFormat::Json => {
                let head = format!(
                    r#"{{"run_id":{},"connection":{},"seq":{},"pad":""#,
                    self.run_id, self.connection, self.seq
                );
                let mut out = head.into_bytes();
                let end = br#""}"#;
                let pad = size.saturating_sub(out.len() + end.len());
                out.resize(out.len() + pad, b'.');
                out.extend_from_slice(end);
                out
            }
        }
    }

    /// The stamp in a record as any route format writes it: the payload
    /// itself (binary or JSON), a JSON envelope around it, or Avro (bare, or
    /// in the Confluent wire format).
    pub fn read_any(record: &[u8]) -> Option<Stamp> {
        Stamp::read(record)
            .or_else(|| {
                serde_json::from_slice(record)
                    .ok()
                    .and_then(|v| from_json(&v))
            })
            .or_else(|| from_avro(record))
    }
}

fn from_json(value: &Value) -> Option<Stamp> {
    let field = |name: &str| value.get(name).and_then(Value::as_u64);
    if let (Some(run_id), Some(connection), Some(seq)) =
        (field("run_id"), field("connection"), field("seq"))
    {
        return Some(Stamp {
            run_id,
            connection: u32::try_from(connection).ok()?,
            seq,
        });
    }
    // A JSON envelope: the payload in base64, or embedded as JSON.
    match value.get("payload")? {
        Value::String(encoded) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            Stamp::read(&bytes).or_else(|| {
                serde_json::from_slice(&bytes)
                    .ok()
                    .and_then(|v| from_json(&v))
            })
        }
        inner @ Value::Object(_) => from_json(inner),
        _ => None,
    }
}

fn from_avro(record: &[u8]) -> Option<Stamp> {
    static SCHEMA: OnceLock<Option<apache_avro::Schema>> = OnceLock::new();
    let schema = SCHEMA
        .get_or_init(|| apache_avro::Schema::parse_str(AVRO_SCHEMA).ok())
        .as_ref()?;
    // Confluent's wire format starts with byte 0 and a 4-byte schema id; a
    // bare datum starts with the run id, never 0 (zigzag of a positive long).
    let datum = match record {
        [0, _, _, _, _, rest @ ..] => rest,
        _ => record,
    };
    let value: Value = apache_avro::from_avro_datum(schema, &mut &datum[..], None)
        .ok()?
        .try_into()
        .ok()?;
    from_json(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_pad() {
        let stamp = Stamp {
            run_id: 7,
            connection: 3,
            seq: 123_456,
        };
        let payload = stamp.payload(64);
        assert_eq!(payload.len(), 64);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert_eq!(stamp.payload(1).len(), HEADER_LEN);
        assert_eq!(Stamp::read(b"TRB1short"), None);
        assert_eq!(Stamp::read(&[0u8; 64]), None);
    }

    #[test]
    fn json_stamps_are_read_back_from_every_route_format() {
        let stamp = Stamp {
            run_id: 1_765_015_000_123,
            connection: 15,
            seq: 42,
        };
        let json = stamp.encode(PayloadFormat::Json, 128);
        assert_eq!(json.len(), 128);
        assert_eq!(Stamp::read_any(&json), Some(stamp), "as published");
        let base64 = base64::engine::general_purpose::STANDARD.encode(&json);
        let envelope = format!(r#"{{"topic":"bench/f/1","payload":"{base64}"}}"#);
        assert_eq!(Stamp::read_any(envelope.as_bytes()), Some(stamp));
        let embedded = format!(
            r#"{{"topic":"bench/f/1","payload":{}}}"#,
            String::from_utf8(json.clone()).unwrap()
        );
        assert_eq!(Stamp::read_any(embedded.as_bytes()), Some(stamp));
        let binary = base64::engine::general_purpose::STANDARD.encode(stamp.payload(64));
        let envelope = format!(r#"{{"topic":"t","payload":"{binary}"}}"#);
        assert_eq!(Stamp::read_any(envelope.as_bytes()), Some(stamp));

        let schema = apache_avro::Schema::parse_str(AVRO_SCHEMA).unwrap();
        let value: Value = serde_json::from_slice(&json).unwrap();
        let datum = apache_avro::to_avro_datum(
            &schema,
            apache_avro::types::Value::from(value)
                .resolve(&schema)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(Stamp::read_any(&datum), Some(stamp), "bare Avro");
        let mut framed = vec![0, 0, 0, 0, 7];
        framed.extend_from_slice(&datum);
        assert_eq!(Stamp::read_any(&framed), Some(stamp), "Confluent framing");
        assert_eq!(Stamp::read_any(b"{\"topic\":\"t\"}"), None);
    }
}
