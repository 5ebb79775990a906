//! On-disk byte layouts of the spool: segment header, record header, cursor
//! file, and the names of the files that hold them.
//!
//! This module only encodes and decodes bytes. It must never do I/O, and it
//! must never panic on any input: every decoder takes untrusted bytes (a spool
//! file may have been torn by a power cut or damaged by the disk) and answers
//! with `Option`/an enum instead of indexing blindly.
//!
//! All integers are little-endian.
//!
//! ## Segment file `NNNNNNNNNNNNNNNNNNNN.spool` (20-digit zero-padded id)
//!
//! ```text
//! offset  size  field
//!      0     4  segment magic  b"TRSP"
//!      4     1  format version (1)
//!      5     3  reserved, zero
//!      8     8  segment id (must match the file name)
//!     16     4  crc32c of bytes 0..16
//!     20     …  records, back to back
//! ```
//!
//! ## Record (20-byte header + payload)
//!
//! ```text
//! offset  size  field
//!      0     4  record magic  u32 0x0CA1_7BF5 (bytes F5 7B A1 0C)
//!      4     4  payload length
//!      8     4  crc32c over appended_at_ms (8 bytes, LE) followed by the payload
//!     12     8  appended_at_ms: wall-clock milliseconds since the Unix epoch
//!     20   len  payload (opaque entry)
//! ```
//!
//! The magic exists so that recovery can find the next record after a record
//! whose length field is damaged. Its first byte, 0xF5, never occurs in UTF-8,
//! so JSON/text payloads cannot contain a false start. The length is not in the
//! CRC, but a wrong length makes the CRC run over the wrong bytes and fail.
//!
//! ## Cursor file `cursor` (36 bytes)
//!
//! ```text
//!      0     4  cursor magic  b"TRCU"
//!      4     1  format version (1)
//!      5     3  reserved, zero
//!      8     8  segment id of the last committed record
//!     16     8  offset of the last committed record
//!     24     8  end offset of that record (offset + 20 + length)
//!     32     4  crc32c of bytes 0..32
//! ```

use std::fmt;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"TRSP";
/// Version written into segment headers and the cursor file. Bump it when the
/// layout changes; an older build then refuses newer files instead of misreading them.
pub const FORMAT_VERSION: u8 = 1;
/// Size of the per-segment file header; the first record starts here.
pub const SEGMENT_HEADER_LEN: u64 = 20;

/// Marks the start of every record.
pub const RECORD_MAGIC: u32 = 0x0CA1_7BF5;
/// Size of the fixed record header that precedes each payload.
pub const RECORD_HEADER_LEN: u64 = 20;
/// Hard ceiling on a payload length, independent of configuration. A length
/// above it is "impossible" when reading, which bounds the memory and CRC work
/// one damaged length field can cost. `SpoolConfig::max_entry_bytes` may not
/// exceed it, so lowering the configured maximum never invalidates old records.
pub const MAX_ENTRY_LIMIT: u32 = 256 * 1024 * 1024;

/// First bytes of the cursor file.
pub const CURSOR_MAGIC: [u8; 4] = *b"TRCU";
/// Exact size of the cursor file.
pub const CURSOR_LEN: usize = 36;
/// Name of the committed-read-cursor file inside the spool directory.
pub const CURSOR_FILE: &str = "cursor";
/// Temporary name the cursor is written under before the atomic rename.
pub const CURSOR_TMP_FILE: &str = "cursor.tmp";
/// Lock file that keeps a second process from opening the same spool.
pub const LOCK_FILE: &str = "LOCK";
/// Sub-directory that receives copies of corrupt byte ranges.
pub const CORRUPT_DIR: &str = "corrupt";
/// Extension of segment files.
pub const SEGMENT_EXT: &str = "spool";

/// Where a record starts: segment id, then byte offset inside that segment
/// file. Ordered first by segment, then by offset, which is append order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    /// Sorts before every record (segment ids start at 1): reading from here
    /// reads from the oldest record on disk.
    pub const START: Position = Position {
        segment: 0,
        offset: 0,
    };
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// File name of segment `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.{SEGMENT_EXT}")
}

/// Segment id encoded in a file name, if the name is exactly a segment name.
/// Anything else in the directory (lock, cursor, temp files) is not a segment.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// File name under `corrupt/` for a damaged range starting at `offset`.
pub fn corrupt_file_name(segment: u64, offset: u64) -> String {
    format!("{segment:020}-{offset}.bin")
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Segment header for segment `id`.
pub fn encode_segment_header(id: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&SEGMENT_MAGIC);
    body.push(FORMAT_VERSION);
    body.extend_from_slice(&[0; 3]);
    body.extend_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    for (dst, src) in h.iter_mut().zip(body) {
        *dst = src;
    }
    h
}

/// What a segment header says about its file.
#[derive(Debug, PartialEq, Eq)]
pub enum SegmentHeader {
    /// Intact, this version, this id.
    Valid,
    /// Intact (magic and CRC check out) but written by another format version:
    /// the file must not be interpreted by this build.
    UnsupportedVersion(u8),
    /// Damaged, or not a spool header, or naming another segment id.
    Invalid,
}

/// Checks a segment header against the id taken from the file name.
pub fn decode_segment_header(b: &[u8], expected_id: u64) -> SegmentHeader {
    let (Some(body), Some(crc)) = (b.get(..16), u32_at(b, 16)) else {
        return SegmentHeader::Invalid;
    };
    if body.get(..4) != Some(&SEGMENT_MAGIC[..]) || crc32c::crc32c(body) != crc {
        return SegmentHeader::Invalid;
    }
    match body.get(4) {
        Some(&FORMAT_VERSION) => {}
        Some(&v) => return SegmentHeader::UnsupportedVersion(v),
        None => return SegmentHeader::Invalid,
    }
    if u64_at(b, 8) != Some(expected_id) {
        return SegmentHeader::Invalid;
    }
    SegmentHeader::Valid
}

/// CRC stored in a record header: over the timestamp, then the payload.
pub fn record_crc(appended_at_ms: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&appended_at_ms.to_le_bytes()), payload)
}

/// Appends one record (header + payload) to `buf`. `len` is the payload
/// length, already checked against the limits by the caller.
pub fn encode_record(buf: &mut Vec<u8>, payload: &[u8], len: u32, appended_at_ms: u64) {
    buf.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&record_crc(appended_at_ms, payload).to_le_bytes());
    buf.extend_from_slice(&appended_at_ms.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Decoded fixed part of a record; nothing in it is trusted yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub magic: u32,
    pub len: u32,
    pub crc: u32,
    pub appended_at_ms: u64,
}

impl RecordHeader {
    /// Decodes the 20 header bytes; `None` only if fewer bytes were given.
    pub fn decode(b: &[u8]) -> Option<RecordHeader> {
        Some(RecordHeader {
            magic: u32_at(b, 0)?,
            len: u32_at(b, 4)?,
            crc: u32_at(b, 8)?,
            appended_at_ms: u64_at(b, 12)?,
        })
    }

    /// Magic right and length possible, before looking at the file size.
    pub fn plausible(&self) -> bool {
        self.magic == RECORD_MAGIC && self.len <= MAX_ENTRY_LIMIT
    }
}

/// The committed read cursor: the last record known to be in Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub position: Position,
    /// Offset just past that record, where reading resumes.
    pub end: u64,
}

pub fn encode_cursor(c: &Cursor) -> [u8; CURSOR_LEN] {
    let mut body = Vec::with_capacity(CURSOR_LEN);
    body.extend_from_slice(&CURSOR_MAGIC);
    body.push(FORMAT_VERSION);
    body.extend_from_slice(&[0; 3]);
    body.extend_from_slice(&c.position.segment.to_le_bytes());
    body.extend_from_slice(&c.position.offset.to_le_bytes());
    body.extend_from_slice(&c.end.to_le_bytes());
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let mut out = [0u8; CURSOR_LEN];
    for (dst, src) in out.iter_mut().zip(body) {
        *dst = src;
    }
    out
}

/// `None` for anything that is not an intact version-1 cursor.
pub fn decode_cursor(b: &[u8]) -> Option<Cursor> {
    if b.len() != CURSOR_LEN || b.get(..4)? != CURSOR_MAGIC || *b.get(4)? != FORMAT_VERSION {
        return None;
    }
    if crc32c::crc32c(b.get(..32)?) != u32_at(b, 32)? {
        return None;
    }
    let c = Cursor {
        position: Position {
            segment: u64_at(b, 8)?,
            offset: u64_at(b, 16)?,
        },
        end: u64_at(b, 24)?,
    };
    // A cursor names a real record, so its end lies past its header.
    (c.end >= c.position.offset.checked_add(RECORD_HEADER_LEN)?).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(1), "00000000000000000001.spool");
        assert_eq!(
            parse_segment_file_name("00000000000000000001.spool"),
            Some(1)
        );
        assert_eq!(parse_segment_file_name("0000000000000000001.spool"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.spool"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000001.spool.tmp"),
            None
        );
        assert_eq!(parse_segment_file_name("cursor"), None);
    }

    #[test]
    fn segment_header_checks() {
        let h = encode_segment_header(7);
        assert_eq!(decode_segment_header(&h, 7), SegmentHeader::Valid);
        assert_eq!(decode_segment_header(&h, 8), SegmentHeader::Invalid);
        assert_eq!(decode_segment_header(&h[..10], 7), SegmentHeader::Invalid);
        let mut bad = h;
        bad[9] ^= 1;
        assert_eq!(decode_segment_header(&bad, 7), SegmentHeader::Invalid);
        // A future version with a consistent CRC is recognised, not misread.
        let mut v2 = h;
        v2[4] = 2;
        let crc = crc32c::crc32c(&v2[..16]);
        v2[16..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_segment_header(&v2, 7),
            SegmentHeader::UnsupportedVersion(2)
        );
    }

    #[test]
    fn cursor_round_trip_and_rejects_damage() {
        let c = Cursor {
            position: Position {
                segment: 3,
                offset: 100,
            },
            end: 150,
        };
        let b = encode_cursor(&c);
        assert_eq!(decode_cursor(&b), Some(c));
        for i in 0..CURSOR_LEN {
            let mut d = b;
            d[i] ^= 0x40;
            assert_eq!(decode_cursor(&d), None, "flip at {i}");
        }
        assert_eq!(decode_cursor(&b[..35]), None);
    }

    #[test]
    fn record_layout() {
        let mut buf = Vec::new();
        encode_record(&mut buf, b"hello", 5, 42);
        assert_eq!(buf.len(), 25);
        assert_eq!(&buf[..4], &[0xF5, 0x7B, 0xA1, 0x0C]);
        let h = RecordHeader::decode(&buf).unwrap();
        assert_eq!(h.len, 5);
        assert_eq!(h.appended_at_ms, 42);
        assert_eq!(h.crc, record_crc(42, b"hello"));
        assert!(h.plausible());
    }
}
