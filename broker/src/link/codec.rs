//! Framing and the two MQTT codecs (3.1.1 and 5) on one port.
//!
//! Frames are cut here, before decoding, so an oversized packet is refused from
//! its fixed header alone, and a PUBLISH's QoS, DUP and packet identifier are read
//! from its own bytes (rumqttd keeps those fields private). Encoding and decoding
//! proper is rumqttd's.

use bytes::BytesMut;
use rumqttd::protocol::v4::{self, FixedHeader, V4};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{DisconnectReasonCode, Error as CodecError, Packet, Protocol};
use thiserror::Error;

/// MQTT control packet types, from the high nibble of the first byte.
pub const CONNECT: u8 = 1;
pub const PUBLISH: u8 = 3;

/// The protocol version a connection speaks, chosen from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V4 => "3.1.1",
            Version::V5 => "5",
        }
    }

    /// Decodes one whole frame.
    pub fn decode(self, frame: &mut BytesMut) -> Result<Packet, CodecError> {
        if self == Version::V5 && frame.len() == 3 && frame[..2] == [0xe0, 1] {
            // A DISCONNECT with a reason code and no property length is valid
            // [MQTT-3.14.2.2.1] but rumqttd's decoder rejects it: add the
            // zero property length it expects.
            let reason = frame[2];
            *frame = BytesMut::from(&[0xe0, 2, reason, 0][..]);
        }
        let max = frame.len();
        match self {
            Version::V4 => V4.read_mut(frame, max),
            Version::V5 => V5.read_mut(frame, max),
        }
    }

    /// Appends `packet`'s encoding to `out`.
    pub fn encode(self, packet: Packet, out: &mut BytesMut) -> Result<(), CodecError> {
        if let (Version::V5, Packet::Disconnect(disconnect, _)) = (self, &packet) {
            // rumqttd miscounts the length of an MQTT 5 DISCONNECT; its
            // properties are optional, so write the reason code alone.
            match disconnect_code(disconnect.reason_code) {
                0 => out.extend_from_slice(&[0xe0, 0]),
                code => out.extend_from_slice(&[0xe0, 1, code]),
            }
            return Ok(());
        }
        match self {
            Version::V4 => V4.write(packet, out),
            Version::V5 => V5.write(packet, out),
        }
        .map(drop)
    }
}

/// The MQTT 5 wire value of a DISCONNECT reason code [MQTT-3.14.2.1].
fn disconnect_code(reason: DisconnectReasonCode) -> u8 {
    use DisconnectReasonCode::*;
    match reason {
        NormalDisconnection => 0x00,
        DisconnectWithWillMessage => 0x04,
        UnspecifiedError => 0x80,
        MalformedPacket => 0x81,
        ProtocolError => 0x82,
        ImplementationSpecificError => 0x83,
        NotAuthorized => 0x87,
        ServerBusy => 0x89,
        ServerShuttingDown => 0x8B,
        KeepAliveTimeout => 0x8D,
        SessionTakenOver => 0x8E,
        TopicFilterInvalid => 0x8F,
        TopicNameInvalid => 0x90,
        ReceiveMaximumExceeded => 0x93,
        TopicAliasInvalid => 0x94,
        PacketTooLarge => 0x95,
        MessageRateTooHigh => 0x96,
        QuotaExceeded => 0x97,
        AdministrativeAction => 0x98,
        PayloadFormatInvalid => 0x99,
        RetainNotSupported => 0x9A,
        QoSNotSupported => 0x9B,
        UseAnotherServer => 0x9C,
        ServerMoved => 0x9D,
        SharedSubscriptionNotSupported => 0x9E,
        ConnectionRateExceeded => 0x9F,
        MaximumConnectTime => 0xA0,
        SubscriptionIdentifiersNotSupported => 0xA1,
        WildcardSubscriptionsNotSupported => 0xA2,
    }
}

/// Why bytes from a device could not be framed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed remaining length [MQTT-2.2.3]")]
    MalformedLength,
}

/// The next complete frame at the front of `buf`, split off, if one is there.
pub fn next_frame(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Frame>, FrameError> {
    let header = match v4::check(buf.iter(), usize::MAX) {
        Ok(header) => header,
        Err(CodecError::InsufficientBytes(_)) => {
            // Even an incomplete frame can be refused once its length is known.
            if let Some(size) = announced_length(buf) {
                if size > max_packet_size {
                    return Err(FrameError::TooLarge {
                        size,
                        max: max_packet_size,
                    });
                }
            }
            return Ok(None);
        }
        Err(_) => return Err(FrameError::MalformedLength),
    };
    let size = header.frame_length();
    if size > max_packet_size {
        return Err(FrameError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok(Some(Frame {
        bytes: buf.split_to(size),
        header,
    }))
}

/// Total frame length announced by a complete fixed header, if it is complete.
fn announced_length(buf: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(1 + (i + 1) + len);
        }
    }
    None
}

/// One complete packet's bytes.
#[derive(Debug)]
pub struct Frame {
    pub bytes: BytesMut,
    header: FixedHeader,
}

impl Frame {
    /// Bytes before the variable header (type, flags, remaining length).
    pub fn fixed_header_len(&self) -> usize {
        self.header.fixed_header_len
    }

    pub fn packet_type(&self) -> u8 {
        self.header.byte1 >> 4
    }

    /// Protocol name and level of a CONNECT frame.
    pub fn connect_protocol(&self) -> Option<(&[u8], u8)> {
        let body = self.bytes.get(self.header.fixed_header_len..)?;
        let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let name = body.get(2..2 + name_len)?;
        let level = *body.get(2 + name_len)?;
        Some((name, level))
    }

    /// The connect flags byte of a CONNECT frame.
    pub fn connect_flags(&self) -> Option<u8> {
        let body = self.bytes.get(self.header.fixed_header_len..)?;
        let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        body.get(2 + name_len + 1).copied()
    }

    /// QoS, DUP, RETAIN and packet identifier of a PUBLISH frame.
    pub fn publish_meta(&self) -> Option<PublishMeta> {
        let flags = self.header.byte1 & 0x0f;
        let qos = (flags >> 1) & 0b11;
        let body = self.bytes.get(self.header.fixed_header_len..)?;
        let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let pkid = if qos > 0 {
            let at = 2 + topic_len;
            u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?])
        } else {
            0
        };
        Some(PublishMeta {
            qos,
            dup: flags & 0b1000 != 0,
            retain: flags & 0b0001 != 0,
            pkid,
        })
    }
}

/// The fixed-header facts of a PUBLISH that rumqttd keeps private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishMeta {
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    pub pkid: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_frame(flags: u8, topic: &str, pkid: Option<u16>, payload: &[u8]) -> BytesMut {
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        if let Some(pkid) = pkid {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0x30 | flags, body.len() as u8]);
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn reads_publish_flags_and_packet_id_from_the_bytes() {
        let mut buf = publish_frame(0b1011, "a/b", Some(0x1234), b"hi");
        let frame = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(frame.packet_type(), PUBLISH);
        assert_eq!(
            frame.publish_meta(),
            Some(PublishMeta {
                qos: 1,
                dup: true,
                retain: true,
                pkid: 0x1234
            })
        );
        let mut buf = publish_frame(0, "a", None, b"x");
        let frame = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(frame.publish_meta().unwrap().qos, 0);
    }

    #[test]
    fn waits_for_a_whole_frame_and_splits_back_to_back_frames() {
        let mut all = publish_frame(0, "a", None, b"1");
        all.extend_from_slice(&publish_frame(0, "b", None, b"2"));
        let mut partial = BytesMut::from(&all[..4]);
        assert!(next_frame(&mut partial, 1024).unwrap().is_none());
        let mut buf = all.clone();
        assert!(next_frame(&mut buf, 1024).unwrap().is_some());
        assert!(next_frame(&mut buf, 1024).unwrap().is_some());
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_packets_from_the_header_alone() {
        // A PUBLISH announcing 2 MB, of which only the fixed header arrived.
        let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x01][..]);
        assert_eq!(
            next_frame(&mut buf, 1024).unwrap_err(),
            FrameError::TooLarge {
                size: 5 + 2_097_152,
                max: 1024
            }
        );
        let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert_eq!(
            next_frame(&mut buf, 1024).unwrap_err(),
            FrameError::MalformedLength
        );
    }

    #[test]
    fn decodes_short_packets_in_both_versions() {
        for version in [Version::V4, Version::V5] {
            let mut ping = BytesMut::from(&[0xc0, 0][..]);
            assert!(matches!(version.decode(&mut ping), Ok(Packet::PingReq(_))));
            let mut bye = BytesMut::from(&[0xe0, 0][..]);
            assert!(matches!(
                version.decode(&mut bye),
                Ok(Packet::Disconnect(..))
            ));
        }
    }

    #[test]
    fn encodes_an_mqtt5_disconnect_with_a_consistent_length() {
        let mut out = BytesMut::new();
        let disconnect = rumqttd::protocol::Disconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
        };
        Version::V5
            .encode(Packet::Disconnect(disconnect, None), &mut out)
            .unwrap();
        assert_eq!(&out[..], &[0xe0, 1, 0x8e]);
    }

    #[test]
    fn decodes_a_disconnect_without_property_length() {
        let mut frame = BytesMut::from(&[0xe0, 1, 0x04][..]);
        let packet = Version::V5.decode(&mut frame).unwrap();
        let Packet::Disconnect(disconnect, _) = packet else {
            panic!("{packet:?}");
        };
        assert_eq!(
            disconnect.reason_code,
            rumqttd::protocol::DisconnectReasonCode::DisconnectWithWillMessage
        );
    }

    #[test]
    fn reads_the_protocol_level_of_a_connect() {
        let mut buf = BytesMut::from(
            &[
                0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 0, 0,
            ][..],
        );
        let frame = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(frame.packet_type(), CONNECT);
        assert_eq!(frame.connect_protocol(), Some((&b"MQTT"[..], 5)));
    }
}
