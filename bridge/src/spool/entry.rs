//! A Kafka record as a spool entry: everything needed to produce it again
//! after a restart, in a versioned binary form.
//!
//! The log under it checks each entry's checksum; this form still never
//! trusts its input: a decode error is a corrupt entry to move aside, never a
//! panic and never a record built from half its fields.

use bytes::Bytes;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use thiserror::Error;

use crate::record::Record;

/// The first byte of every entry; a later layout gets a new one.
const VERSION: u8 = 1;
/// Headers one record may carry (MQTT 5 user properties included).
const MAX_HEADERS: usize = 65_535;

/// A record as the spool keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledRecord {
    /// The route it was built for (its metrics are found by this name).
    pub route: String,
    /// The Kafka topic it goes to, as it was when the record was built.
    pub topic: String,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Why bytes read back are not an entry this version wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EntryError {
    #[error("unknown entry version {0}")]
    Version(u8),
    #[error("the entry ends inside its {0}")]
    Truncated(&'static str),
    #[error("the entry's {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} bytes after the entry's last field")]
    Trailing(usize),
    #[error("the entry has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
}

impl SpooledRecord {
    /// What `record` becomes in the spool.
    pub fn of(record: &Record) -> SpooledRecord {
        SpooledRecord {
            route: record.route.to_string(),
            topic: record.topic.to_string(),
            key: record.key.clone(),
            payload: record.payload.clone(),
            headers: record
                .headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
                .collect(),
        }
    }

    /// The headers as the producer takes them.
    pub fn owned_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: value.as_deref(),
                })
            },
        )
    }

    /// Appends the entry's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        put_bytes(out, self.route.as_bytes());
        put_bytes(out, self.topic.as_bytes());
        put_optional(out, self.key.as_deref());
        put_bytes(out, &self.payload);
        // Headers past the limit are not written: a record built here never
        // has that many (MQTT's packet size bounds them first).
        let count = self.headers.len().min(MAX_HEADERS);
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for (key, value) in self.headers.iter().take(count) {
            put_bytes(out, key.as_bytes());
            put_optional(out, value.as_deref());
        }
    }

    /// Reads an entry [`SpooledRecord::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<SpooledRecord, EntryError> {
        let mut input = Input(bytes);
        let version = input.u8("version")?;
        if version != VERSION {
            return Err(EntryError::Version(version));
        }
        let route = input.string("route")?;
        let topic = input.string("topic")?;
        let key = input.optional("key")?.map(Bytes::copy_from_slice);
        let payload = Bytes::copy_from_slice(input.bytes("payload")?);
        let count = input.u32("header count")? as usize;
        if count > MAX_HEADERS {
            return Err(EntryError::TooManyHeaders);
        }
        let mut headers = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let key = input.string("header key")?;
            let value = input.optional("header value")?.map(Bytes::copy_from_slice);
            headers.push((key, value));
        }
        if !input.0.is_empty() {
            return Err(EntryError::Trailing(input.0.len()));
        }
        Ok(SpooledRecord {
            route,
            topic,
            key,
            payload,
            headers,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A present value as 1 + bytes, an absent one as 0.
fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
        None => out.push(0),
    }
}

/// What is left of an entry being read.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, EntryError> {
        Ok(self.take(1, what)?.first().copied().unwrap_or_default())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, EntryError> {
        let mut word = [0u8; 4];
        word.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(word))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], EntryError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, EntryError> {
        let bytes = self.bytes(what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| EntryError::NotUtf8(what))
    }

    fn optional(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, EntryError> {
        match self.u8(what)? {
            0 => Ok(None),
            _ => self.bytes(what).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SpooledRecord {
        SpooledRecord {
            route: "telemetry".into(),
            topic: "sensors".into(),
            key: Some(Bytes::from_static(b"dev-42")),
            payload: Bytes::from_static(b"\x00\xff21.5"),
            headers: vec![
                ("mqtt.topic".into(), Some(Bytes::from_static(b"sensors/1"))),
                ("empty".into(), None),
                ("mqtt.qos".into(), Some(Bytes::from_static(b"1"))),
            ],
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let mut out = Vec::new();
        sample().encode(&mut out);
        assert_eq!(SpooledRecord::decode(&out), Ok(sample()));

        let keyless = SpooledRecord {
            key: None,
            headers: Vec::new(),
            payload: Bytes::new(),
            ..sample()
        };
        let mut out = Vec::new();
        keyless.encode(&mut out);
        assert_eq!(SpooledRecord::decode(&out), Ok(keyless));
    }

    #[test]
    fn headers_keep_their_order_and_their_absent_values() {
        let headers = sample().owned_headers();
        let read: Vec<(String, Option<Vec<u8>>)> = headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            read,
            [
                ("mqtt.topic".to_owned(), Some(b"sensors/1".to_vec())),
                ("empty".to_owned(), None),
                ("mqtt.qos".to_owned(), Some(b"1".to_vec())),
            ]
        );
    }

    #[test]
    fn every_truncation_and_any_damage_is_an_error_never_a_panic() {
        let mut out = Vec::new();
        sample().encode(&mut out);
        for len in 0..out.len() {
            assert!(SpooledRecord::decode(&out[..len]).is_err(), "length {len}");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(SpooledRecord::decode(&longer), Err(EntryError::Trailing(1)));
        let mut other_version = out.clone();
        other_version[0] = 9;
        assert_eq!(
            SpooledRecord::decode(&other_version),
            Err(EntryError::Version(9))
        );
        // Every single-byte change: an error or another valid entry, and
        // never a panic or an allocation sized by a hostile length.
        for at in 0..out.len() {
            for value in [0x00, 0x7f, 0xff] {
                let mut damaged = out.clone();
                damaged[at] = value;
                let _ = SpooledRecord::decode(&damaged);
            }
        }
    }
}
