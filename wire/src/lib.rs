//! MQTT at the byte level: packet types, the fixed header, variable byte
//! integers (remaining length, property lengths) and the few facts of a PUBLISH
//! that must be read before (or without) decoding it.
//!
//! The one home of these skills for the broker, its tests and the benchmark.
//! Everything here is total: any byte string gets an answer, never a panic.

#![forbid(unsafe_code)]

/// MQTT control packet types, from the high nibble of the first byte [MQTT-2.1.2].
pub mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    /// MQTT 5 only; reserved in 3.1.1.
    pub const AUTH: u8 = 15;
}

/// The largest value a variable byte integer can hold (four bytes) [MQTT-1.5.5].
pub const MAX_VARINT: usize = 268_435_455;

/// Why bytes are not a variable byte integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedVarint;

/// Reads a variable byte integer at the front of `bytes`: its value and how
/// many bytes it took, `Ok(None)` if more bytes are needed, an error past four
/// bytes [MQTT-1.5.5].
pub fn read_varint(bytes: &[u8]) -> Result<Option<(usize, usize)>, MalformedVarint> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate() {
        if i == 4 {
            return Err(MalformedVarint);
        }
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(MalformedVarint)
    } else {
        Ok(None)
    }
}

/// Appends `value` as a variable byte integer (values past [`MAX_VARINT`] are
/// the caller's bug; they are written saturated, never as more than four bytes).
pub fn write_varint(value: usize, out: &mut impl Extend<u8>) {
    let mut value = value.min(MAX_VARINT);
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.extend([byte]);
        if value == 0 {
            return;
        }
    }
}

/// Bytes [`write_varint`] takes for `value`.
pub fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The fixed header of a packet [MQTT-2.1.1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// The first byte: type (high nibble) and flags (low nibble).
    pub byte1: u8,
    /// Bytes of the fixed header (type byte and remaining length).
    pub header_len: usize,
    /// The remaining length: bytes after the fixed header.
    pub remaining_len: usize,
}

impl FixedHeader {
    /// Reads the fixed header at the front of `bytes`; `Ok(None)` if it is not
    /// complete yet.
    pub fn peek(bytes: &[u8]) -> Result<Option<FixedHeader>, MalformedVarint> {
        let Some((&byte1, rest)) = bytes.split_first() else {
            return Ok(None);
        };
        Ok(read_varint(rest)?.map(|(remaining_len, len)| FixedHeader {
            byte1,
            header_len: 1 + len,
            remaining_len,
        }))
    }

    pub fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }

    pub fn flags(&self) -> u8 {
        self.byte1 & 0x0f
    }

    /// The whole packet's length.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Why a client may not send a packet with this first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderViolation {
    /// A type only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP), or AUTH
    /// where no authentication exchange was started: a Protocol Error.
    WrongDirection,
    /// Type 0, or 15 in MQTT 3.1.1 [MQTT-2.1.2].
    Reserved,
    /// Flags other than those the type requires [MQTT-2.1.3-1], a PUBLISH of
    /// QoS 3 [MQTT-3.3.1-4], or DUP on a QoS 0 PUBLISH [MQTT-3.3.1-2]: a
    /// Malformed Packet.
    BadFlags,
}

/// Whether a client speaking protocol level `level` (4 or 5) may send a packet
/// whose first byte is `byte1`, checked before any decoder sees it. AUTH is
/// refused: no enhanced authentication is offered, so a client never starts one.
pub fn check_client_packet(byte1: u8, level: u8) -> Result<(), HeaderViolation> {
    use packet_type::*;
    let flags = byte1 & 0x0f;
    match byte1 >> 4 {
        0 => Err(HeaderViolation::Reserved),
        AUTH if level < 5 => Err(HeaderViolation::Reserved),
        CONNACK | SUBACK | UNSUBACK | PINGRESP | AUTH => Err(HeaderViolation::WrongDirection),
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            let dup = flags & 0b1000 != 0;
            if qos == 3 || (qos == 0 && dup) {
                Err(HeaderViolation::BadFlags)
            } else {
                Ok(())
            }
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE if flags == 0b0010 => Ok(()),
        CONNECT | PUBACK | PUBREC | PUBCOMP | PINGREQ | DISCONNECT if flags == 0 => Ok(()),
        _ => Err(HeaderViolation::BadFlags),
    }
}

/// The fixed-header facts of a PUBLISH and its packet identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishMeta {
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// 0 for QoS 0.
    pub pkid: u16,
    /// Offset of the packet identifier's two bytes in the frame (QoS 1/2).
    pub pkid_at: usize,
}

/// Reads QoS, DUP, RETAIN and the packet identifier of a whole PUBLISH frame;
/// `None` if the frame is too short to hold them.
pub fn publish_meta(frame: &[u8]) -> Option<PublishMeta> {
    let header = FixedHeader::peek(frame).ok()??;
    let flags = header.flags();
    let qos = (flags >> 1) & 0b11;
    let body = frame.get(header.header_len..)?;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let pkid_at = header.header_len + 2 + topic_len;
    let pkid = if qos > 0 {
        u16::from_be_bytes([*frame.get(pkid_at)?, *frame.get(pkid_at + 1)?])
    } else {
        0
    };
    Some(PublishMeta {
        qos,
        dup: flags & 0b1000 != 0,
        retain: flags & 0b0001 != 0,
        pkid,
        pkid_at,
    })
}

/// Protocol name and level of a whole CONNECT frame.
pub fn connect_protocol(frame: &[u8]) -> Option<(&[u8], u8)> {
    let header = FixedHeader::peek(frame).ok()??;
    let body = frame.get(header.header_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let name = body.get(2..2 + name_len)?;
    let level = *body.get(2 + name_len)?;
    Some((name, level))
}

/// The connect flags byte of a whole CONNECT frame.
pub fn connect_flags(frame: &[u8]) -> Option<u8> {
    let header = FixedHeader::peek(frame).ok()??;
    let body = frame.get(header.header_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + name_len + 1).copied()
}

/// Longest topic name or filter MQTT can carry: a two-byte length prefix.
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// Whether `topic` may be published to: not empty [MQTT-4.7.3-1], no wildcard
/// [MQTT-3.3.2-2], no NUL [MQTT-4.7.3-2], at most [`MAX_TOPIC_BYTES`].
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_BYTES && !topic.contains(['+', '#', '\0'])
}

/// Whether `topic` matches the topic filter `filter` [MQTT-4.7]: `+` one level
/// (an empty one too), `#` this level and everything below (also the parent:
/// `a/#` matches `a`), and no wildcard at the first level matches a `$` topic
/// [MQTT-4.7.2-1]. Total on any UTF-8, whatever its first character.
pub fn topic_matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for wanted in filter.split('/') {
        if wanted == "#" {
            return true;
        }
        match levels.next() {
            Some(level) if wanted == "+" || wanted == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// A whole packet: `first` byte, remaining length, then `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + varint_len(body.len()) + body.len());
    out.push(first);
    write_varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked_against_mqtt_grammar() {
        assert!(valid_topic_name("devices/7/commands"));
        assert!(valid_topic_name("$SYS/x"));
        assert!(valid_topic_name(&"a".repeat(MAX_TOPIC_BYTES)));
        for bad in ["", "a/+/b", "a/#", "nul\0here"] {
            assert!(!valid_topic_name(bad), "{bad:?}");
        }
        assert!(!valid_topic_name(&"a".repeat(MAX_TOPIC_BYTES + 1)));
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for value in [
            0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT,
        ] {
            let mut out = Vec::new();
            write_varint(value, &mut out);
            assert_eq!(out.len(), varint_len(value));
            assert_eq!(read_varint(&out), Ok(Some((value, out.len()))));
            assert_eq!(read_varint(&out[..out.len() - 1]), Ok(None));
        }
    }

    #[test]
    fn a_fifth_length_byte_is_malformed() {
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(MalformedVarint)
        );
        assert_eq!(read_varint(&[0xff, 0xff, 0xff, 0xff]), Err(MalformedVarint));
        assert_eq!(read_varint(&[0xff, 0xff, 0xff]), Ok(None));
    }

    #[test]
    fn server_only_and_reserved_types_are_refused() {
        use packet_type::*;
        for kind in [CONNACK, SUBACK, UNSUBACK, PINGRESP] {
            assert_eq!(
                check_client_packet(kind << 4, 5),
                Err(HeaderViolation::WrongDirection)
            );
        }
        assert_eq!(check_client_packet(0, 4), Err(HeaderViolation::Reserved));
        assert_eq!(check_client_packet(0xf0, 4), Err(HeaderViolation::Reserved));
        assert_eq!(
            check_client_packet(0xf0, 5),
            Err(HeaderViolation::WrongDirection)
        );
        assert_eq!(check_client_packet(0x62, 4), Ok(()));
        assert_eq!(check_client_packet(0x60, 4), Err(HeaderViolation::BadFlags));
        assert_eq!(check_client_packet(0x82, 5), Ok(()));
        assert_eq!(check_client_packet(0xc1, 5), Err(HeaderViolation::BadFlags));
        assert_eq!(check_client_packet(0x3b, 5), Ok(()));
        assert_eq!(check_client_packet(0x36, 5), Err(HeaderViolation::BadFlags));
        assert_eq!(check_client_packet(0x38, 5), Err(HeaderViolation::BadFlags));
    }

    #[test]
    fn topics_match_filters_by_mqtts_rules() {
        for (topic, filter, expected) in [
            ("a/b", "a/b", true),
            ("a/b", "a/+", true),
            ("a/", "a/+", true),
            ("a", "a/#", true),
            ("a/b/c", "a/#", true),
            ("a/b/c", "#", true),
            ("a/b", "a", false),
            ("a", "a/b", false),
            ("a/b/c", "a/+", false),
            ("$SYS/x", "#", false),
            ("$SYS/x", "+/x", false),
            ("$SYS/x", "$SYS/#", true),
            ("é/x", "é/+", true),
            ("é/x", "#", true),
            ("ü", "é", false),
        ] {
            assert_eq!(topic_matches(topic, filter), expected, "{topic} ~ {filter}");
        }
    }

    #[test]
    fn reads_publish_meta_and_never_panics_on_short_frames() {
        let frame = packet(0x3b, &[0, 1, b'a', 0x12, 0x34, b'x']);
        let meta = publish_meta(&frame).unwrap();
        assert_eq!(
            (meta.qos, meta.dup, meta.retain, meta.pkid),
            (1, true, true, 0x1234)
        );
        assert_eq!(&frame[meta.pkid_at..meta.pkid_at + 2], &[0x12, 0x34]);
        for end in 0..frame.len() - 1 {
            let _ = publish_meta(&frame[..end]);
            let _ = connect_protocol(&frame[..end]);
            let _ = FixedHeader::peek(&frame[..end]);
        }
    }
}
