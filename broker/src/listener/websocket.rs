//! MQTT over WebSocket (MQTT 5 §6, MQTT 3.1.1 §6).
//!
//! Turns an accepted stream (plain TCP, or TLS the listener already terminated)
//! into the raw MQTT byte stream that the transport-agnostic connection code
//! reads and writes: [`accept`] runs the HTTP upgrade handshake, and
//! [`WsStream`] carries Binary message payloads in and out as `AsyncRead` +
//! `AsyncWrite`.
//!
//! This module must never:
//! - panic, or buffer without bound, on anything the peer sends: the peer is
//!   unauthenticated during the handshake and hostile until proven otherwise;
//! - let a handshake outlive `WsSettings::handshake_timeout`;
//! - hand Text data to the MQTT layer as if it were MQTT bytes [MQTT-6.0.0-1];
//! - look at MQTT packet boundaries: a packet may span WebSocket messages and a
//!   message may hold several packets (§6.0.0-2), so framing is left entirely
//!   to the connection code.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Sub-protocol of MQTT 3.1.1 and 5; MQTT 5 §6.0.0-3 requires servers to select it.
const SUBPROTOCOL_MQTT: &str = "mqtt";
/// Sub-protocol that old paho-js (MQTT 3.1) and old mqtt.js (even when speaking
/// 3.1.1) offer instead of `mqtt`. The CONNECT packet carries the real protocol
/// level, so accepting it costs nothing.
const SUBPROTOCOL_MQTT_V31: &str = "mqttv3.1";

/// mqtt.js builds its URL as `ws://host:port` + `opts.path`, and `opts.path`
/// defaults to `/` when the URL has none (`mqtt.connect("ws://host:8080")`),
/// and Mosquitto does not check the path at all; refusing `/` would break
/// those users.
const ROOT_PATH_ALIAS: &str = "/";

/// tungstenite allocates its frame read buffer eagerly at this size, for every
/// connection, and it is also the most one socket read asks for. Idle
/// connections dominate the broker's memory, and MQTT over WebSocket traffic is
/// mostly small packets, so this trades a few extra reads on large messages for
/// a 32x smaller idle footprint than tungstenite's 128 KiB default.
const READ_BUFFER_SIZE: usize = 4 * 1024;

/// Largest Binary message we send, and the most `poll_write` buffers before it
/// pushes data out (backpressure). tungstenite's outgoing frame buffer is a
/// `Vec` that keeps the capacity of the largest frame it ever held, so this also
/// bounds what a connection retains after sending a large PUBLISH. 16 KiB is one
/// TLS record; larger payloads go out as several messages, which every receiver
/// must reassemble anyway (§6.0.0-2).
const MAX_OUT_MESSAGE: usize = 16 * 1024;

/// Room in tungstenite's write buffer beyond one full data frame: its header
/// (at most 14 bytes) plus a queued Pong or Close (at most 127 bytes each).
const WRITE_BUFFER_SLACK: usize = 1024;

/// What `WsSettings::max_message_size_for` adds to the broker's maximum packet
/// size: a client may put the tail of one packet and whole small packets (acks,
/// PINGREQ) after it in the same message.
const MESSAGE_SIZE_SLACK: usize = 4 * 1024;

/// Settings of one WebSocket listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// Request path to accept (query string ignored); `/` is always accepted too.
    pub path: String,
    /// Largest incoming WebSocket message (and frame) in bytes; larger ones fail
    /// the connection before being buffered whole. Use
    /// [`WsSettings::max_message_size_for`] with the broker's maximum packet size.
    pub max_message_size: usize,
    /// Upper bound on the whole HTTP upgrade, so a slowloris peer cannot hold a
    /// task and a socket forever.
    pub handshake_timeout: Duration,
}

impl WsSettings {
    /// A `max_message_size` that admits any packet up to `max_packet_size`
    /// together with the small packets a client may batch behind it.
    pub fn max_message_size_for(max_packet_size: usize) -> usize {
        max_packet_size.saturating_add(MESSAGE_SIZE_SLACK)
    }
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            path: "/mqtt".to_owned(),
            max_message_size: Self::max_message_size_for(1024 * 1024),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a WebSocket upgrade was refused.
#[derive(Debug)]
pub enum WsRefused {
    /// Not a valid WebSocket upgrade, a request over tungstenite's limits (64 KiB
    /// of headers, 124 header lines), or an I/O error during the handshake.
    Handshake(WsError),
    /// The request path was neither the configured path nor `/`; answered 404.
    Path,
    /// The client offered sub-protocols, none of them MQTT; answered 400.
    Protocol,
    /// The handshake did not complete within `handshake_timeout`.
    Timeout,
}

impl WsRefused {
    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Handshake(_) => "ws_handshake",
            Self::Path => "ws_path",
            Self::Protocol => "ws_protocol",
            Self::Timeout => "ws_timeout",
        }
    }
}

impl fmt::Display for WsRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handshake(e) => write!(f, "websocket handshake failed: {e}"),
            Self::Path => f.write_str("websocket request for an unknown path"),
            Self::Protocol => f.write_str("websocket client offered no MQTT sub-protocol"),
            Self::Timeout => f.write_str("websocket handshake timed out"),
        }
    }
}

impl std::error::Error for WsRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

/// Runs the server side of the WebSocket upgrade on `stream` and returns the
/// MQTT byte stream it carries.
///
/// On refusal the peer has been sent the HTTP error status (where one applies)
/// and `stream` has been dropped.
pub async fn accept<S>(stream: S, settings: &WsSettings) -> Result<WsStream<S>, WsRefused>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let path = settings.path.as_str();
    // The callback's signature is tungstenite's `Callback`; its error is the
    // HTTP response sent back once per refused handshake.
    #[allow(clippy::result_large_err)]
    let callback =
        move |request: &Request, response: Response| check_request(request, response, path);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(ws_config(settings.max_message_size)),
    );
    match tokio::time::timeout(settings.handshake_timeout, handshake).await {
        Err(_elapsed) => Err(WsRefused::Timeout),
        Ok(Err(e)) => Err(classify_refusal(e)),
        Ok(Ok(inner)) => Ok(WsStream::new(inner)),
    }
}

fn ws_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        // `WsStream` already coalesces a flush into one message, so a second
        // buffering layer would only hold memory; 0 writes each frame at once.
        .write_buffer_size(0)
        // Must stay above write_buffer_size or tungstenite panics on creation.
        .max_write_buffer_size(MAX_OUT_MESSAGE + WRITE_BUFFER_SLACK)
        .max_message_size(Some(max_message_size))
        // A frame is never larger than its message; this fails an oversized
        // frame on its header, before the payload is read.
        .max_frame_size(Some(max_message_size))
}

/// The only HTTP errors tungstenite reports are the responses built by
/// `check_request`, so their status tells which check refused.
fn classify_refusal(error: WsError) -> WsRefused {
    match &error {
        WsError::Http(response) if response.status() == StatusCode::NOT_FOUND => WsRefused::Path,
        WsError::Http(response) if response.status() == StatusCode::BAD_REQUEST => {
            WsRefused::Protocol
        }
        _ => WsRefused::Handshake(error),
    }
}

#[allow(clippy::result_large_err)] // shape fixed by tungstenite's `Callback`
fn check_request(
    request: &Request,
    mut response: Response,
    path: &str,
) -> Result<Response, ErrorResponse> {
    let requested = request.uri().path();
    if requested != path && requested != ROOT_PATH_ALIAS {
        return Err(refusal(StatusCode::NOT_FOUND));
    }
    match select_subprotocol(request.headers()) {
        Offer::Absent => Ok(response),
        Offer::Selected(protocol) => {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, protocol);
            Ok(response)
        }
        Offer::Unsupported => Err(refusal(StatusCode::BAD_REQUEST)),
    }
}

fn refusal(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    response
}

#[derive(Debug, PartialEq)]
enum Offer {
    /// No sub-protocol offered. MQTT 5 §6.0.0-3 assumes clients offer `mqtt`,
    /// but some omit the header (generic WebSocket tools such as websocat,
    /// hand-written browser or embedded code); the MQTT bytes are the
    /// same, so they are accepted and answered without the header, as RFC 6455
    /// requires when nothing was offered.
    Absent,
    /// The client's own spelling of the chosen token: browsers fail the
    /// connection unless the answer matches one of their offers exactly.
    Selected(HeaderValue),
    /// Only non-MQTT sub-protocols offered: the client expects to speak
    /// something else over this socket.
    Unsupported,
}

fn select_subprotocol(headers: &HeaderMap) -> Offer {
    let mut offered_any = false;
    let mut legacy = None;
    // The offer may come as one comma-separated list or as repeated headers.
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let Ok(list) = value.to_str() else {
            offered_any = true;
            continue;
        };
        for token in list.split(',').map(|t| t.trim_matches([' ', '\t'])) {
            if token.is_empty() {
                continue;
            }
            offered_any = true;
            if token.eq_ignore_ascii_case(SUBPROTOCOL_MQTT) {
                return selected(token);
            }
            if legacy.is_none() && token.eq_ignore_ascii_case(SUBPROTOCOL_MQTT_V31) {
                legacy = Some(token);
            }
        }
    }
    match legacy {
        Some(token) => selected(token),
        None if offered_any => Offer::Unsupported,
        None => Offer::Absent,
    }
}

fn selected(token: &str) -> Offer {
    HeaderValue::from_str(token).map_or(Offer::Unsupported, Offer::Selected)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// Close received or the connection ended: every further read is EOF.
    Eof,
    /// A Text message arrived: every further read fails, so a caller that
    /// ignores the first error still cannot read past the violation.
    Violated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShutdownState {
    Open,
    ClosingWebSocket,
    ClosingTransport,
    Done,
}

/// The MQTT byte stream carried by one WebSocket connection.
///
/// Reads yield the payloads of Binary messages, concatenated. Writes are
/// buffered until `flush`, which sends them as one Binary message (payloads
/// over 16 KiB go out as several). `shutdown` sends a Close frame, then shuts
/// the transport down.
///
/// Idle cost (tungstenite 0.29, x86-64, measured): 392 bytes inline for
/// `WsStream<TcpStream>` (320 of them `WebSocketStream`), plus 4,224 bytes of
/// heap after the handshake: tungstenite's frame read buffer
/// (`READ_BUFFER_SIZE`, allocated eagerly) and its two waker `Arc`s. This
/// module's own read and write buffers hold no heap when idle. After traffic,
/// tungstenite's read buffer keeps the capacity of the largest frame received
/// (`BytesMut` reuses it; growth may double it, so up to about twice
/// `max_message_size`) and its write buffer that of the largest frame sent (at
/// most `MAX_OUT_MESSAGE` plus a header): one 100 kB message each way leaves a
/// connection holding about 120 kB. The API offers no way to shrink them.
#[derive(Debug)]
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// Unread rest of the last Binary message. It shares tungstenite's read
    /// buffer, so it is replaced by an empty `Bytes` once consumed rather than
    /// advanced to empty, which would pin that allocation.
    read_buf: Bytes,
    /// Bytes written since the last message went out; no capacity when idle.
    write_buf: BytesMut,
    read_state: ReadState,
    shutdown: ShutdownState,
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(inner: WebSocketStream<S>) -> Self {
        Self {
            inner,
            read_buf: Bytes::new(),
            write_buf: BytesMut::new(),
            read_state: ReadState::Open,
            shutdown: ShutdownState::Open,
        }
    }

    /// The transport, e.g. for its peer address.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// Hands the buffered bytes to tungstenite as one Binary message. Returns
    /// Pending only when tungstenite could not take it, with the waker
    /// registered by its `poll_ready`.
    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(ws_to_io)?;
        // `take` leaves no allocation behind; tungstenite copies the payload
        // into its frame buffer and drops this `Bytes`.
        let payload = std::mem::take(&mut self.write_buf).freeze();
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(payload))
            .map_err(ws_to_io)?;
        Poll::Ready(Ok(()))
    }

    fn take_buffered(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.read_buf.len().min(buf.remaining());
        buf.put_slice(&self.read_buf[..n]);
        if n == self.read_buf.len() {
            self.read_buf = Bytes::new();
        } else {
            self.read_buf.advance(n);
        }
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.read_buf.is_empty() {
                this.take_buffered(buf);
                return Poll::Ready(Ok(()));
            }
            match this.read_state {
                ReadState::Open => {}
                ReadState::Eof => return Poll::Ready(Ok(())),
                ReadState::Violated => return Poll::Ready(Err(text_violation())),
            }
            // Polling the stream again after a Ping is what makes tungstenite
            // write the queued Pong (it flushes pending control frames at the
            // start of every read), and a Pong blocked on a full socket wakes
            // this reader, so a connection that only reads still answers pings.
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(payload))) => {
                    if !payload.is_empty() {
                        this.read_buf = payload;
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    this.read_state = ReadState::Violated;
                    return Poll::Ready(Err(text_violation()));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) => {
                    this.read_state = ReadState::Eof;
                    // Best effort to get tungstenite's queued Close reply out now;
                    // if the socket is full, `poll_shutdown` finishes it.
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                }
                // TCP closed without a Close frame: what a plain TCP peer
                // closing looks like, so it reads as EOF, not as an error.
                Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)))
                | None => {
                    this.read_state = ReadState::Eof;
                }
                Some(Err(e)) => {
                    this.read_state = ReadState::Eof;
                    return Poll::Ready(Err(ws_to_io(e)));
                }
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shutdown != ShutdownState::Open {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after websocket shutdown",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Sending what is buffered before it would overflow, instead of
        // splitting this write, keeps any packet written in one call (and not
        // larger than a message) inside one message, which naive receivers
        // that assume one packet per message rely on.
        if !this.write_buf.is_empty() && this.write_buf.len() + buf.len() > MAX_OUT_MESSAGE {
            ready!(this.poll_send_buffered(cx))?;
        }
        let n = buf.len().min(MAX_OUT_MESSAGE - this.write_buf.len());
        this.write_buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx).map_err(ws_to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.shutdown {
                ShutdownState::Open => {
                    match ready!(this.poll_send_buffered(cx)) {
                        Ok(()) => {}
                        // The peer is gone or already closed: nothing to deliver.
                        Err(e) if peer_gone(&e) => this.write_buf = BytesMut::new(),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    this.shutdown = ShutdownState::ClosingWebSocket;
                }
                ShutdownState::ClosingWebSocket => {
                    // Queues our Close (or completes the reply to the peer's)
                    // and flushes everything before it. Waiting for the peer's
                    // Close reply is pointless: the connection is being dropped.
                    match ready!(Pin::new(&mut this.inner).poll_close(cx)).map_err(ws_to_io) {
                        Ok(()) => {}
                        Err(e) if peer_gone(&e) => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    this.shutdown = ShutdownState::ClosingTransport;
                }
                ShutdownState::ClosingTransport => {
                    // RFC 6455 §7.1.1: the server should close TCP first, so
                    // TIME_WAIT stays on our side and not the client's.
                    match ready!(Pin::new(this.inner.get_mut()).poll_shutdown(cx)) {
                        Ok(()) => {}
                        Err(e) if peer_gone(&e) => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    this.shutdown = ShutdownState::Done;
                }
                ShutdownState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

fn text_violation() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "websocket Text message on an MQTT connection [MQTT-6.0.0-1]",
    )
}

fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

fn ws_to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(io) => io,
        other => {
            let kind = match &other {
                WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Protocol(ProtocolError::SendAfterClosing) => io::ErrorKind::BrokenPipe,
                WsError::Capacity(_) | WsError::Protocol(_) | WsError::Utf8(_) => {
                    io::ErrorKind::InvalidData
                }
                _ => io::ErrorKind::Other,
            };
            io::Error::new(kind, other)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use std::future::Future;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tokio_tungstenite::tungstenite::http::Uri;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::ClientRequestBuilder;

    type Client = WebSocketStream<TcpStream>;
    type ClientResponse = tokio_tungstenite::tungstenite::handshake::client::Response;

    /// Bounds every step, so a broken implementation fails instead of hanging.
    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("test step timed out")
    }

    fn settings() -> WsSettings {
        WsSettings {
            max_message_size: 64 * 1024,
            handshake_timeout: Duration::from_secs(5),
            ..WsSettings::default()
        }
    }

    async fn server(
        settings: WsSettings,
    ) -> (
        SocketAddr,
        JoinHandle<Result<WsStream<TcpStream>, WsRefused>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, &settings).await
        });
        (addr, task)
    }

    async fn client(
        addr: SocketAddr,
        path: &str,
        protocols: &[&str],
    ) -> Result<(Client, ClientResponse), WsError> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let uri: Uri = format!("ws://{addr}{path}").parse().unwrap();
        let mut request = ClientRequestBuilder::new(uri);
        for p in protocols {
            request = request.with_sub_protocol(*p);
        }
        within(tokio_tungstenite::client_async(request, tcp)).await
    }

    /// A connected pair over `/mqtt` with sub-protocol `mqtt`.
    async fn pair(settings: WsSettings) -> (Client, WsStream<TcpStream>) {
        let (addr, task) = server(settings).await;
        let (client, response) = client(addr, "/mqtt", &["mqtt"]).await.unwrap();
        assert_eq!(
            response.headers().get(SEC_WEBSOCKET_PROTOCOL).unwrap(),
            "mqtt"
        );
        let server = within(task).await.unwrap().unwrap();
        (client, server)
    }

    async fn next_message(client: &mut Client) -> Message {
        within(client.next()).await.unwrap().unwrap()
    }

    async fn refused_status(addr: SocketAddr, path: &str, protocols: &[&str]) -> StatusCode {
        match client(addr, path, protocols).await {
            Err(WsError::Http(response)) => response.status(),
            other => panic!("expected an HTTP refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_across_message_boundaries() {
        let (mut client, mut server) = pair(settings()).await;

        // One message fragmented into three frames reads back whole.
        let fragments = [
            Frame::message(&b"hel"[..], OpCode::Data(OpData::Binary), false),
            Frame::message(&b"lo "[..], OpCode::Data(OpData::Continue), false),
            Frame::message(&b"world"[..], OpCode::Data(OpData::Continue), true),
        ];
        for frame in fragments {
            within(client.send(Message::Frame(frame))).await.unwrap();
        }
        let mut buf = [0u8; 11];
        within(server.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"hello world");

        // A packet spanning two messages, then one message holding two packets.
        within(client.send(Message::binary(&b"ab"[..])))
            .await
            .unwrap();
        within(client.send(Message::binary(&b"cd"[..])))
            .await
            .unwrap();
        within(client.send(Message::binary(&b"xyz123"[..])))
            .await
            .unwrap();
        let mut buf = [0u8; 4];
        within(server.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"abcd");
        let mut buf = [0u8; 3];
        within(server.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"xyz");
        within(server.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"123");

        // Several writes then one flush make exactly one Binary message.
        within(server.write_all(b"one")).await.unwrap();
        within(server.write_all(b"two")).await.unwrap();
        within(server.write_all(b"three")).await.unwrap();
        within(server.flush()).await.unwrap();
        within(server.write_all(b"four")).await.unwrap();
        within(server.flush()).await.unwrap();
        assert_eq!(
            next_message(&mut client).await,
            Message::binary(&b"onetwothree"[..])
        );
        assert_eq!(
            next_message(&mut client).await,
            Message::binary(&b"four"[..])
        );
    }

    #[tokio::test]
    async fn echo_through_copy() {
        let (mut client, server) = pair(settings()).await;
        let echo = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(server);
            let mut buf = [0u8; 512];
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    return wr.shutdown().await;
                }
                wr.write_all(&buf[..n]).await?;
                wr.flush().await?;
            }
        });
        let sent: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        for chunk in sent.chunks(700) {
            within(client.send(Message::binary(chunk.to_vec())))
                .await
                .unwrap();
        }
        let mut echoed = Vec::new();
        while echoed.len() < sent.len() {
            match next_message(&mut client).await {
                Message::Binary(b) => echoed.extend_from_slice(&b),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, sent);
        within(client.close(None)).await.unwrap();
        within(echo).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn large_write_goes_out_in_bounded_messages() {
        let (mut client, mut server) = pair(settings()).await;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            server.write_all(b"small").await?;
            server.write_all(&data).await?;
            server.flush().await?;
            Ok::<_, io::Error>(server)
        });
        let mut received = Vec::new();
        let mut first = true;
        while received.len() < expected.len() + 5 {
            match next_message(&mut client).await {
                Message::Binary(b) => {
                    assert!(b.len() <= MAX_OUT_MESSAGE, "message of {} bytes", b.len());
                    // The buffered small write went out alone rather than
                    // sharing a message with the start of the large one.
                    if first {
                        assert_eq!(&b[..], b"small");
                        first = false;
                    }
                    received.extend_from_slice(&b);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(&received[5..], &expected[..]);
        within(writer).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn wrong_path_is_404() {
        let (addr, task) = server(settings()).await;
        assert_eq!(
            refused_status(addr, "/other", &["mqtt"]).await,
            StatusCode::NOT_FOUND
        );
        let refused = within(task).await.unwrap().err().unwrap();
        assert!(matches!(refused, WsRefused::Path));
        assert_eq!(refused.label(), "ws_path");

        let (addr, task) = server(settings()).await;
        assert_eq!(
            refused_status(addr, "/mqtt/", &["mqtt"]).await,
            StatusCode::NOT_FOUND
        );
        assert!(matches!(within(task).await.unwrap(), Err(WsRefused::Path)));
    }

    #[tokio::test]
    async fn root_alias_and_query_string_are_accepted() {
        for path in ["/", "/mqtt?token=abc", "/?x=1"] {
            let (addr, task) = server(settings()).await;
            let (_client, response) = client(addr, path, &["mqtt"]).await.unwrap();
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS, "{path}");
            within(task).await.unwrap().unwrap();
        }
        let custom = WsSettings {
            path: "/ws".to_owned(),
            ..settings()
        };
        let (addr, task) = server(custom.clone()).await;
        client(addr, "/ws", &["mqtt"]).await.unwrap();
        within(task).await.unwrap().unwrap();
        let (addr, task) = server(custom).await;
        assert_eq!(
            refused_status(addr, "/mqtt", &["mqtt"]).await,
            StatusCode::NOT_FOUND
        );
        assert!(matches!(within(task).await.unwrap(), Err(WsRefused::Path)));
    }

    #[tokio::test]
    async fn only_foreign_protocol_is_400() {
        let (addr, task) = server(settings()).await;
        assert_eq!(
            refused_status(addr, "/mqtt", &["foo"]).await,
            StatusCode::BAD_REQUEST
        );
        let refused = within(task).await.unwrap().err().unwrap();
        assert!(matches!(refused, WsRefused::Protocol));
        assert_eq!(refused.label(), "ws_protocol");
    }

    #[tokio::test]
    async fn no_protocol_is_accepted_without_one() {
        let (addr, task) = server(settings()).await;
        let (mut client, response) = client(addr, "/mqtt", &[]).await.unwrap();
        assert!(response.headers().get(SEC_WEBSOCKET_PROTOCOL).is_none());
        let mut server = within(task).await.unwrap().unwrap();
        within(client.send(Message::binary(&b"\xc0\x00"[..])))
            .await
            .unwrap();
        let mut buf = [0u8; 2];
        within(server.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"\xc0\x00");
    }

    #[tokio::test]
    async fn mqtt_is_preferred_and_legacy_accepted() {
        for (offer, chosen) in [
            (&["mqttv3.1", "mqtt"][..], "mqtt"),
            (&["foo", "mqttv3.1"][..], "mqttv3.1"),
            (&["mqttv3.1"][..], "mqttv3.1"),
        ] {
            let (addr, task) = server(settings()).await;
            let (_client, response) = client(addr, "/mqtt", offer).await.unwrap();
            assert_eq!(
                response.headers().get(SEC_WEBSOCKET_PROTOCOL).unwrap(),
                chosen
            );
            within(task).await.unwrap().unwrap();
        }
    }

    #[test]
    fn subprotocol_selection() {
        fn offer(values: &[&[u8]]) -> Offer {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_bytes(v).unwrap());
            }
            select_subprotocol(&headers)
        }
        let sel = |s: &'static str| Offer::Selected(HeaderValue::from_static(s));
        assert_eq!(offer(&[]), Offer::Absent);
        assert_eq!(offer(&[b""]), Offer::Absent);
        assert_eq!(offer(&[b" , "]), Offer::Absent);
        assert_eq!(offer(&[b"mqtt"]), sel("mqtt"));
        assert_eq!(offer(&[b"MQTT"]), sel("MQTT"));
        assert_eq!(offer(&[b"mqttv3.1,\tmqtt"]), sel("mqtt"));
        assert_eq!(offer(&[b"mqttv3.1", b"wamp, mqtt"]), sel("mqtt"));
        assert_eq!(offer(&[b"wamp", b"mqttv3.1"]), sel("mqttv3.1"));
        assert_eq!(offer(&[b"foo"]), Offer::Unsupported);
        assert_eq!(offer(&[b"mqttx, mqtt3"]), Offer::Unsupported);
        assert_eq!(offer(&[b"\xffmqtt"]), Offer::Unsupported);
        assert_eq!(offer(&[b"\xff", b"mqtt"]), sel("mqtt"));
    }

    #[tokio::test]
    async fn text_message_fails_the_read() {
        let (mut client, mut server) = pair(settings()).await;
        within(client.send(Message::text("hello"))).await.unwrap();
        let mut buf = [0u8; 16];
        let err = within(server.read(&mut buf)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Sticky: nothing after the violation is ever handed to MQTT.
        within(client.send(Message::binary(&b"x"[..])))
            .await
            .unwrap();
        let err = within(server.read(&mut buf)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn close_is_eof_and_is_answered() {
        let (mut client, mut server) = pair(settings()).await;
        within(client.send(Message::binary(&b"last"[..])))
            .await
            .unwrap();
        within(client.close(None)).await.unwrap();
        let mut got = Vec::new();
        within(server.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"last");
        let mut buf = [0u8; 4];
        assert_eq!(within(server.read(&mut buf)).await.unwrap(), 0);
        // The Close reply went out although the server side only read.
        assert!(matches!(next_message(&mut client).await, Message::Close(_)));
        // Shutting down then closes TCP, ending the client's stream.
        within(server.shutdown()).await.unwrap();
        assert!(within(client.next()).await.is_none());
    }

    #[tokio::test]
    async fn tcp_close_without_close_frame_is_eof() {
        let (client, mut server) = pair(settings()).await;
        drop(client);
        let mut buf = [0u8; 4];
        assert_eq!(within(server.read(&mut buf)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn ping_is_answered_while_server_only_reads() {
        let (mut client, mut server) = pair(settings()).await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 3];
            server.read_exact(&mut buf).await.map(|_| buf)
        });
        for round in 0..3u8 {
            within(client.send(Message::Ping(vec![round; 4].into())))
                .await
                .unwrap();
            assert_eq!(
                next_message(&mut client).await,
                Message::Pong(vec![round; 4].into())
            );
        }
        within(client.send(Message::binary(&b"end"[..])))
            .await
            .unwrap();
        assert_eq!(&within(reader).await.unwrap().unwrap(), b"end");
    }

    #[tokio::test]
    async fn oversized_message_fails_the_read() {
        let small = WsSettings {
            max_message_size: 1024,
            ..settings()
        };
        // One frame over the limit: refused on its header.
        let (mut client, mut server) = pair(small.clone()).await;
        within(client.send(Message::binary(vec![0u8; 2048])))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let err = within(server.read(&mut buf)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // Fragments each under the limit that add up over it.
        let (mut client, mut server) = pair(small).await;
        let fragments = [
            Frame::message(vec![1u8; 600], OpCode::Data(OpData::Binary), false),
            Frame::message(vec![2u8; 600], OpCode::Data(OpData::Continue), true),
        ];
        for frame in fragments {
            within(client.send(Message::Frame(frame))).await.unwrap();
        }
        let err = within(server.read(&mut buf)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let quick = WsSettings {
            handshake_timeout: Duration::from_millis(200),
            ..settings()
        };
        let (addr, task) = server(quick).await;
        let _tcp = TcpStream::connect(addr).await.unwrap();
        let refused = within(task).await.unwrap().err().unwrap();
        assert!(matches!(refused, WsRefused::Timeout));
        assert_eq!(refused.label(), "ws_timeout");
    }

    #[tokio::test]
    async fn slowloris_headers_time_out() {
        let quick = WsSettings {
            handshake_timeout: Duration::from_millis(300),
            ..settings()
        };
        let (addr, task) = server(quick).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let trickle = tokio::spawn(async move {
            tcp.write_all(b"GET /mqtt HTTP/1.1\r\n").await?;
            for i in 0..50 {
                tcp.write_all(format!("X-{i}: y\r\n").as_bytes()).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, io::Error>(())
        });
        assert!(matches!(
            within(task).await.unwrap(),
            Err(WsRefused::Timeout)
        ));
        let _ = within(trickle).await.unwrap();
    }

    #[tokio::test]
    async fn oversized_headers_are_refused() {
        let (addr, task) = server(settings()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let flood = tokio::spawn(async move {
            tcp.write_all(b"GET /mqtt HTTP/1.1\r\n").await?;
            let line = format!("X-Pad: {}\r\n", "a".repeat(1000));
            for _ in 0..100 {
                tcp.write_all(line.as_bytes()).await?;
            }
            Ok::<_, io::Error>(())
        });
        let refused = within(task).await.unwrap().err().unwrap();
        assert!(matches!(refused, WsRefused::Handshake(_)), "{refused:?}");
        assert_eq!(refused.label(), "ws_handshake");
        // The flood may or may not see the reset; either way it ends.
        let _ = within(flood).await.unwrap();
    }

    #[tokio::test]
    async fn plain_http_request_is_refused() {
        let (addr, task) = server(settings()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        within(tcp.write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await
            .unwrap();
        assert!(matches!(
            within(task).await.unwrap(),
            Err(WsRefused::Handshake(_))
        ));
    }

    #[tokio::test]
    async fn shutdown_flushes_then_closes() {
        let (mut client, mut server) = pair(settings()).await;
        within(server.write_all(b"bye")).await.unwrap();
        within(server.shutdown()).await.unwrap();
        assert_eq!(
            next_message(&mut client).await,
            Message::binary(&b"bye"[..])
        );
        assert!(matches!(next_message(&mut client).await, Message::Close(_)));
        let err = within(server.write(b"more")).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        // Shutdown is idempotent.
        within(server.shutdown()).await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_after_peer_vanished_does_not_fail() {
        let (client, mut server) = pair(settings()).await;
        drop(client);
        let mut buf = [0u8; 4];
        assert_eq!(within(server.read(&mut buf)).await.unwrap(), 0);
        within(server.write_all(b"lost")).await.unwrap();
        // Either outcome is fine for a vanished peer, as long as it returns.
        let _ = within(server.shutdown()).await;
    }

    #[test]
    fn types_fit_the_broker() {
        fn connection_stream<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>() {}
        fn send<T: Send>(_: &T) {}
        connection_stream::<WsStream<TcpStream>>();
        connection_stream::<WsStream<tokio::io::DuplexStream>>();
        let (io, _peer) = tokio::io::duplex(64);
        let settings = WsSettings::default();
        send(&accept(io, &settings));
    }

    #[test]
    fn websocket_stream_is_small() {
        let size = std::mem::size_of::<WsStream<TcpStream>>();
        println!(
            "size_of WsStream<TcpStream> = {size} (WebSocketStream<TcpStream> = {})",
            std::mem::size_of::<WebSocketStream<TcpStream>>()
        );
        assert!(size <= 512, "WsStream<TcpStream> grew to {size} bytes");
    }

    #[test]
    fn config_is_valid() {
        let config = ws_config(WsSettings::max_message_size_for(1 << 20));
        assert!(config.max_write_buffer_size > config.write_buffer_size);
        assert_eq!(config.max_frame_size, config.max_message_size);
        assert_eq!(config.read_buffer_size, READ_BUFFER_SIZE);
    }
}
