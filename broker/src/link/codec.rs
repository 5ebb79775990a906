//! Framing and the two MQTT codecs (3.1.1 and 5) on one port.
//!
//! Frames are cut here, before decoding, so an oversized packet is refused from
//! its fixed header alone, and a PUBLISH's QoS, DUP and packet identifier are read
//! from its own bytes (rumqttd keeps those fields private). Encoding and decoding
//! proper is rumqttd's.

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnectReturnCode, DisconnectReasonCode, Error as CodecError, Packet, Protocol,
};
use thiserror::Error;
use tributary_wire::{self as wire, FixedHeader};

pub use tributary_wire::packet_type::{CONNECT, PUBLISH};
pub use tributary_wire::PublishMeta;

/// The protocol version a connection speaks, chosen from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl Version {
    /// Every version served: the `version` label values.
    pub const ALL: [Version; 2] = [Version::V4, Version::V5];

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
        let packet = match packet {
            Packet::ConnAck(mut ack, properties) => {
                ack.code = self.connack_code(ack.code);
                Packet::ConnAck(ack, properties)
            }
            packet => packet,
        };
        match self {
            Version::V4 => V4.write(without_properties(packet), out),
            Version::V5 => V5.write(packet, out),
        }
        .map(drop)
    }

    /// The nearest CONNACK code this version has: each encoder panics on the
    /// other version's codes.
    fn connack_code(self, code: ConnectReturnCode) -> ConnectReturnCode {
        use ConnectReturnCode::*;
        match (self, code) {
            (Version::V4, Success) => Success,
            (Version::V4, RefusedProtocolVersion | UnsupportedProtocolVersion) => {
                RefusedProtocolVersion
            }
            (Version::V4, ClientIdentifierNotValid) => ClientIdentifierNotValid,
            (Version::V4, BadUserNamePassword | BadAuthenticationMethod) => BadUserNamePassword,
            (Version::V4, NotAuthorized | Banned) => NotAuthorized,
            (Version::V4, _) => ServiceUnavailable,
            (Version::V5, RefusedProtocolVersion) => UnsupportedProtocolVersion,
            (Version::V5, ServiceUnavailable) => ServerUnavailable,
            (Version::V5, code) => code,
        }
    }
}

/// `packet` without MQTT 5 properties, which 3.1.1 has no room for (its
/// encoder refuses, by panicking, any packet that carries them).
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Connect(connect, _, will, _, login) => {
            Packet::Connect(connect, None, will, None, login)
        }
        Packet::ConnAck(ack, _) => Packet::ConnAck(ack, None),
        Packet::Publish(publish, _) => Packet::Publish(publish, None),
        Packet::PubAck(ack, _) => Packet::PubAck(ack, None),
        Packet::PubRec(ack, _) => Packet::PubRec(ack, None),
        Packet::PubRel(ack, _) => Packet::PubRel(ack, None),
        Packet::PubComp(ack, _) => Packet::PubComp(ack, None),
        Packet::Subscribe(subscribe, _) => Packet::Subscribe(subscribe, None),
        Packet::SubAck(ack, _) => Packet::SubAck(ack, None),
        Packet::Unsubscribe(unsubscribe, _) => Packet::Unsubscribe(unsubscribe, None),
        Packet::UnsubAck(ack, _) => Packet::UnsubAck(ack, None),
        Packet::Disconnect(disconnect, _) => Packet::Disconnect(disconnect, None),
        packet => packet,
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
    #[error("malformed remaining length [MQTT-1.5.5]")]
    MalformedLength,
}

/// The next complete frame at the front of `buf`, split off, if one is there.
/// A frame is refused from its fixed header alone when it announces more than
/// `max_packet_size`, before its bytes arrive.
pub fn next_frame(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Frame>, FrameError> {
    let Some(header) = FixedHeader::peek(buf).map_err(|_| FrameError::MalformedLength)? else {
        return Ok(None);
    };
    let size = header.frame_len();
    if size > max_packet_size {
        return Err(FrameError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some(Frame {
        bytes: buf.split_to(size),
        header,
    }))
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
        self.header.header_len
    }

    pub fn packet_type(&self) -> u8 {
        self.header.packet_type()
    }

    /// The first byte: type and flags.
    pub fn byte1(&self) -> u8 {
        self.header.byte1
    }

    /// Protocol name and level of a CONNECT frame.
    pub fn connect_protocol(&self) -> Option<(&[u8], u8)> {
        wire::connect_protocol(&self.bytes)
    }

    /// The connect flags byte of a CONNECT frame.
    pub fn connect_flags(&self) -> Option<u8> {
        wire::connect_flags(&self.bytes)
    }

    /// QoS, DUP, RETAIN and packet identifier of a PUBLISH frame.
    pub fn publish_meta(&self) -> Option<PublishMeta> {
        wire::publish_meta(&self.bytes)
    }
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
        let meta = frame.publish_meta().unwrap();
        assert_eq!(
            (meta.qos, meta.dup, meta.retain, meta.pkid),
            (1, true, true, 0x1234)
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
