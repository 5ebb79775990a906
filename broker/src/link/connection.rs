//! The socket of one device connection and its frames in and out, whatever
//! the transport (TCP, TLS, WebSocket).
//!
//! Bytes become packets here and only here: a frame is cut from its fixed
//! header (an oversized one is refused before its bytes arrive), its type and
//! flags are checked before any decoder sees it (rumqttd's decoders panic on
//! packets only a server sends), and only then is it decoded. Buffers start
//! small, grow with what arrives and shrink back once empty, so an idle
//! connection costs little whatever it once carried.

use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Error as CodecError, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tributary_wire::HeaderViolation;

use super::codec::{self, Frame, PublishMeta, Version, PUBLISH};
use super::End;

/// What a device connection runs over: TCP, TLS or WebSocket alike.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// Read buffer a connection starts with (a CONNECT fits).
pub const INITIAL_READ_BUFFER: usize = 256;
/// Buffer capacity kept once empty; larger ones are given back.
const KEPT_BUFFER: usize = 4096;
/// How long a connection whose writes failed is still read, for a DISCONNECT
/// the device sent before it stopped reading.
const READ_AFTER_WRITE_ERROR: Duration = Duration::from_millis(200);
/// How long a connection the server ends is read (and discarded) after its
/// write side is shut down.
const LINGER: Duration = Duration::from_millis(500);
/// Bytes read, at most, while lingering.
const LINGER_BYTES: usize = 64 * 1024;
/// How long the last packets may take to go out at the close.
const LAST_WRITE: Duration = Duration::from_secs(1);

pub struct Connection {
    stream: Box<dyn Transport>,
    version: Version,
    max_packet_size: usize,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// One packet from the device, decoded, with the PUBLISH facts rumqttd keeps
/// private.
pub struct Incoming {
    pub packet: Packet,
    pub publish: Option<PublishMeta>,
}

impl Connection {
    /// Takes over a connection past its CONNECT; `rbuf` holds what arrived
    /// behind it.
    pub fn new(
        stream: Box<dyn Transport>,
        rbuf: BytesMut,
        version: Version,
        max_packet_size: usize,
    ) -> Connection {
        Connection {
            stream,
            version,
            max_packet_size,
            rbuf,
            wbuf: BytesMut::new(),
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether bytes are waiting to be decoded.
    pub fn has_buffered(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Reads what the device sent into the buffer; `Ok(0)` at its end.
    pub async fn read(&mut self) -> std::io::Result<usize> {
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// The next whole packet already read, decoded.
    pub fn next_packet(&mut self) -> Result<Option<Incoming>, End> {
        let frame = match codec::next_frame(&mut self.rbuf, self.max_packet_size) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if self.rbuf.is_empty() && self.rbuf.capacity() > KEPT_BUFFER {
                    // A burst or a large packet grew it.
                    self.rbuf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
                }
                return Ok(None);
            }
            Err(codec::FrameError::TooLarge { .. }) => {
                return Err(End::Protocol(
                    DisconnectReasonCode::PacketTooLarge,
                    "packet_too_large",
                ))
            }
            Err(codec::FrameError::MalformedLength) => {
                return Err(End::Protocol(
                    DisconnectReasonCode::MalformedPacket,
                    "malformed",
                ))
            }
        };
        self.decode(frame).map(Some)
    }

    fn decode(&self, frame: Frame) -> Result<Incoming, End> {
        let level = match self.version {
            Version::V4 => 4,
            Version::V5 => 5,
        };
        match tributary_wire::check_client_packet(frame.byte1(), level) {
            Ok(()) => {}
            Err(HeaderViolation::WrongDirection) => {
                return Err(End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "unexpected_packet",
                ))
            }
            Err(HeaderViolation::Reserved | HeaderViolation::BadFlags) => {
                return Err(End::Protocol(
                    DisconnectReasonCode::MalformedPacket,
                    "malformed",
                ))
            }
        }
        let publish = if frame.packet_type() == PUBLISH {
            Some(frame.publish_meta().ok_or(End::Protocol(
                DisconnectReasonCode::MalformedPacket,
                "malformed",
            ))?)
        } else {
            None
        };
        let mut bytes = frame.bytes;
        let packet = self
            .version
            .decode(&mut bytes)
            .map_err(|error| match error {
                // [MQTT-3.8.3-2]: a SUBSCRIBE with no filter is a Protocol Error.
                CodecError::EmptySubscription => End::Protocol(
                    DisconnectReasonCode::ProtocolError,
                    "subscribe_without_filters",
                ),
                _ => End::Protocol(DisconnectReasonCode::MalformedPacket, "malformed"),
            })?;
        Ok(Incoming { packet, publish })
    }

    /// Encodes `packet` for the device; written out at the next flush.
    pub fn write(&mut self, packet: Packet) {
        if let Err(error) = self.version.encode(packet, &mut self.wbuf) {
            tracing::error!(?error, "cannot encode a packet for the device");
        }
    }

    /// Where already-encoded packets for the device go (the outbox's).
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Writes out what was written since the last flush.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            // A no-op on TCP; TLS and WebSocket send what they hold.
            self.stream.flush().await?;
            self.wbuf.clear();
            if self.wbuf.capacity() > KEPT_BUFFER {
                self.wbuf = BytesMut::new();
            }
        }
        Ok(())
    }

    /// The device stopped reading: it may have sent DISCONNECT and closed
    /// while messages were still being forwarded to it. Reads what it sent
    /// last, briefly, so it can be handled.
    pub async fn read_after_write_error(&mut self) {
        let drain = async {
            while let Ok(n) = self.stream.read_buf(&mut self.rbuf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(READ_AFTER_WRITE_ERROR, drain).await;
    }

    /// Says goodbye (an MQTT 5 DISCONNECT with `reason`, if any) and closes.
    /// When the server is the one ending it (`linger`), the connection is read
    /// briefly after its write side is shut: closing with unread bytes would
    /// reset it, and the device would lose the reason on its way.
    pub async fn close(mut self, reason: Option<DisconnectReasonCode>, linger: bool) {
        if let (Version::V5, Some(reason_code)) = (self.version, reason) {
            self.write(Packet::Disconnect(Disconnect { reason_code }, None));
        }
        let _ = tokio::time::timeout(LAST_WRITE, self.flush()).await;
        let _ = self.stream.shutdown().await;
        if linger {
            tokio::spawn(drain(self.stream));
        }
    }
}

async fn drain(mut stream: Box<dyn Transport>) {
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
