//! The payload every benchmark message carries, so a verifier can account for
//! each one: magic, run id, connection, sequence number, then padding.

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
}
