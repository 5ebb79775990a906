//! Everything the broker reports: one struct per occurrence, whose `emit()` writes
//! the log line and the metric together. Labels stay bounded: never a client id
//! or an MQTT topic.

use std::io;
use std::net::SocketAddr;

/// Device connections open now.
pub const CONNECTIONS_CURRENT: &str = "tributary_connections_current";
/// Device connections accepted since start.
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "tributary_connections_accepted_total";
/// Device connections refused, by `reason`.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "tributary_connections_refused_total";

/// A listener is bound and serving.
pub struct ListenerStarted<'a> {
    pub protocol: &'a str,
    pub addr: SocketAddr,
}

impl ListenerStarted<'_> {
    pub fn emit(self) {
        tracing::info!(protocol = self.protocol, addr = %self.addr, "listening");
    }
}

/// A device connection was accepted.
pub struct ConnectionAccepted {
    pub peer: SocketAddr,
}

impl ConnectionAccepted {
    pub fn emit(self) {
        tracing::debug!(peer = %self.peer, "connection accepted");
        metrics::counter!(CONNECTIONS_ACCEPTED_TOTAL).increment(1);
        metrics::gauge!(CONNECTIONS_CURRENT).increment(1.0);
    }
}

/// A device connection ended (whatever the reason).
pub struct ConnectionClosed;

impl ConnectionClosed {
    pub fn emit(self) {
        metrics::gauge!(CONNECTIONS_CURRENT).decrement(1.0);
    }
}

/// A device connection was refused before any MQTT was read.
pub struct ConnectionRefused {
    pub peer: SocketAddr,
    pub reason: &'static str,
}

impl ConnectionRefused {
    pub fn emit(self) {
        tracing::warn!(peer = %self.peer, reason = self.reason, "connection refused");
        metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => self.reason).increment(1);
    }
}

/// `accept()` itself failed (e.g. out of file descriptors).
pub struct AcceptFailed<'a> {
    pub error: &'a io::Error,
}

impl AcceptFailed<'_> {
    pub fn emit(self) {
        tracing::error!(error = %self.error, "accept failed");
        metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => "accept_error").increment(1);
    }
}
