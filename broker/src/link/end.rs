//! How a connection ends, and what follows from it: the last packet an MQTT 5
//! device gets, whether its will is published, the metric label.

use rumqttd::protocol::DisconnectReasonCode;

/// How a connection ended; decides the last packet and whether the will fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// DISCONNECT from the device, with its reason code.
    Disconnect(DisconnectReasonCode),
    /// The socket closed or failed without DISCONNECT.
    ConnectionLost,
    KeepAliveTimeout,
    /// A protocol violation; MQTT 5 gets a DISCONNECT with this reason.
    Protocol(DisconnectReasonCode, &'static str),
    /// Another connection took the client id over.
    TakenOver,
    /// Kafka refused a QoS 1/2 publish of an MQTT 3.1.1 client, which has no
    /// negative acknowledgement: closing without an ack makes it re-send.
    KafkaRefused,
    /// The router dropped this link.
    RouterGone,
    /// Tributary is shutting down.
    Shutdown,
    /// The token the client authenticated with expired (MQTT 5: DISCONNECT
    /// 0xA0, Maximum connect time).
    TokenExpired,
}

impl End {
    pub fn label(self) -> &'static str {
        match self {
            End::Disconnect(DisconnectReasonCode::DisconnectWithWillMessage) => {
                "disconnect_with_will"
            }
            End::Disconnect(_) => "disconnect",
            End::ConnectionLost => "connection_lost",
            End::KeepAliveTimeout => "keep_alive_timeout",
            End::Protocol(_, reason) => reason,
            End::TakenOver => "session_taken_over",
            End::KafkaRefused => "kafka_refused",
            End::RouterGone => "router_gone",
            End::Shutdown => "shutdown",
            End::TokenExpired => "token_expired",
        }
    }

    /// The DISCONNECT an MQTT 5 client gets, if any.
    pub fn disconnect_reason(self) -> Option<DisconnectReasonCode> {
        match self {
            End::Protocol(code, _) => Some(code),
            End::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            End::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            End::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            End::KafkaRefused => Some(DisconnectReasonCode::UnspecifiedError),
            End::TokenExpired => Some(DisconnectReasonCode::MaximumConnectTime),
            End::Disconnect(_) | End::ConnectionLost | End::RouterGone => None,
        }
    }

    /// Whether the server ends the connection while the device may still be
    /// sending.
    pub fn server_closes(self) -> bool {
        !matches!(self, End::Disconnect(_) | End::ConnectionLost)
    }

    /// Whether the will is published [MQTT-3.1.2-8], [MQTT-3.14.4-3].
    pub fn fires_will(self) -> bool {
        match self {
            End::Disconnect(code) => code == DisconnectReasonCode::DisconnectWithWillMessage,
            End::ConnectionLost
            | End::KeepAliveTimeout
            | End::Protocol(..)
            | End::TakenOver
            | End::TokenExpired
            | End::RouterGone => true,
            // The device is healthy in both cases; it reconnects and re-sends.
            End::KafkaRefused | End::Shutdown => false,
        }
    }
}
