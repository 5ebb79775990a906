//! Everything the broker reports: one struct per occurrence, whose `emit()` writes
//! the log line and the metric together. Labels stay bounded: never a client id
//! or an MQTT topic.

use std::io;
use std::net::SocketAddr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use tributary_bridge::DeliveryFailure;

/// Device connections open now.
pub const CONNECTIONS_CURRENT: &str = "tributary_connections_current";
/// Device connections accepted since start.
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "tributary_connections_accepted_total";
/// Device connections refused, by `reason`.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "tributary_connections_refused_total";

/// The `reason` of a connection refused because `mqtt.max_connections` are
/// open: the refusal operators alert on.
pub const CONNECTION_LIMIT: &str = "connection_limit";

/// Gives every broker metric its `# HELP` text and unit. Called once the
/// recorder is installed (a description given before is lost).
pub fn describe() {
    describe_gauge!(
        CONNECTIONS_CURRENT,
        Unit::Count,
        "Device connections open now."
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED_TOTAL,
        Unit::Count,
        "Device TCP connections accepted."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Device connections refused before or at CONNECT, by reason (connection_limit, connect_timeout, malformed, bad_password, ...)."
    );
    describe_counter!(
        CONNECTIONS_CLOSED_TOTAL,
        Unit::Count,
        "Device connections that ended after CONNECT, by reason (disconnect, connection_lost, keep_alive_timeout, kafka_refused, shutdown, ...)."
    );
    describe_counter!(
        CONNECTIONS_ESTABLISHED_TOTAL,
        Unit::Count,
        "MQTT handshakes completed, by protocol version (3.1.1, 5)."
    );
    describe_counter!(
        SESSIONS_TAKEN_OVER_TOTAL,
        Unit::Count,
        "Connections that took over a client id already connected."
    );
    describe_counter!(
        PUBLISHES_RECEIVED_TOTAL,
        Unit::Count,
        "PUBLISH packets received from devices, by QoS."
    );
    describe_counter!(
        PUBLISHES_REFUSED_TOTAL,
        Unit::Count,
        "QoS 1/2 publishes acknowledged negatively or not at all because Kafka (or the spool) did not take them, by QoS and reason."
    );
    describe_histogram!(
        PUBLISH_ACK_SECONDS,
        Unit::Seconds,
        "Time from reading a QoS 1/2 PUBLISH to its positive PUBACK/PUBREC, by QoS; its count is the publishes acknowledged."
    );
    describe_gauge!(
        INFLIGHT_MESSAGES,
        Unit::Count,
        "QoS 1/2 publishes waiting for Kafka, in every connection's window."
    );
    describe_counter!(
        WILLS_TOTAL,
        Unit::Count,
        "Wills, by outcome: delivered, not_in_kafka, router_failed, or cancelled by a reconnect."
    );
    describe_counter!(
        ROUTE_RELOADS_TOTAL,
        Unit::Count,
        "Reloads of the routes from the configuration file, by result (ok, failed: the routes in use stay)."
    );
    describe_counter!(
        HANDSHAKES_FAILED_TOTAL,
        Unit::Count,
        "TLS or WebSocket handshakes that failed or timed out, by listener and reason."
    );
    describe_counter!(
        TLS_RELOADS_TOTAL,
        Unit::Count,
        "Reloads of a TLS listener's certificate files, by listener and outcome (replaced, refused)."
    );
    describe_counter!(
        AUTH_RELOADS_TOTAL,
        Unit::Count,
        "Reloads of the password file and the ACL, by file and outcome (replaced, refused)."
    );
    describe_counter!(
        PUBLISHES_DENIED_TOTAL,
        Unit::Count,
        "PUBLISHes and wills the ACL refused, by QoS: nothing of them reached Kafka or a subscriber."
    );
    describe_counter!(
        SUBSCRIPTIONS_DENIED_TOTAL,
        Unit::Count,
        "Topic filters of SUBSCRIBEs the ACL refused."
    );
    describe_counter!(
        DELIVERIES_DENIED_TOTAL,
        Unit::Count,
        "Messages not delivered to a subscriber whose ACL does not let it read their topic."
    );
    describe_counter!(
        KAFKA_PACE_CHANGES_TOTAL,
        Unit::Count,
        "Connections whose Kafka records changed pace, by to (prompt: sent at once under light load; batched: lingering)."
    );
    describe_counter!(
        DELIVERIES_SKIPPED_TOTAL,
        Unit::Count,
        "Messages for a subscriber the gateway did not send, as MQTT requires, by reason (expired, no_local, too_large_for_client, qos0_while_away, session_queue_full)."
    );
    describe_counter!(
        SHARES_HANDED_OFF_TOTAL,
        Unit::Count,
        "Shared-subscription messages given to another group member because the first left without acknowledging them."
    );
    describe_counter!(
        SESSIONS_EXPIRED_TOTAL,
        Unit::Count,
        "Stored sessions that reached their expiry and were removed."
    );
    tributary_bridge::events::describe();
}

/// Registers the series users alert on and dashboards show, with every label
/// value known in advance, so each reads 0 from the start: `rate()` works at
/// once and a dashboard is not empty. Route and source series are registered
/// with their routes and sources. Only handles are taken: a value already
/// there (another server in the same process) is left as it is.
pub fn register() {
    let _ = metrics::gauge!(CONNECTIONS_CURRENT);
    let _ = metrics::counter!(CONNECTIONS_ACCEPTED_TOTAL);
    let _ = metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => CONNECTION_LIMIT);
    for version in crate::link::codec::Version::ALL {
        let _ = metrics::counter!(CONNECTIONS_ESTABLISHED_TOTAL, "version" => version.label());
    }
    let _ = metrics::counter!(SESSIONS_TAKEN_OVER_TOTAL);
    let _ = metrics::counter!(SESSIONS_EXPIRED_TOTAL);
    // Received (every QoS), acknowledged (the histograms' counts), in flight.
    let _ = per_publish();
    for qos in [1, 2] {
        for failure in DeliveryFailure::ALL {
            let _ = metrics::counter!(
                PUBLISHES_REFUSED_TOTAL,
                "qos" => qos_label(qos),
                "reason" => failure.label()
            );
        }
    }
    for result in [ROUTES_RELOADED, ROUTES_NOT_RELOADED] {
        let _ = metrics::counter!(ROUTE_RELOADS_TOTAL, "result" => result);
    }
    tributary_bridge::events::register();
}

/// A listener is bound and serving.
pub struct ListenerStarted<'a> {
    pub protocol: &'a str,
    pub name: &'a str,
    pub addr: SocketAddr,
}

impl ListenerStarted<'_> {
    pub fn emit(self) {
        tracing::info!(listener = self.name, protocol = self.protocol, addr = %self.addr, "listening");
    }
}

/// A listener on a non-loopback address lets clients in without checking
/// credentials: said once at start, since it is seldom meant outside a
/// trusted network.
pub struct OpenToNetwork<'a> {
    pub listener: &'a str,
    pub addr: SocketAddr,
}

impl OpenToNetwork<'_> {
    pub fn emit(self) {
        tracing::warn!(
            listener = self.listener,
            addr = %self.addr,
            "anyone who reaches this address may connect without credentials: configure [auth] (README, \"Security\")"
        );
    }
}

/// Started with no `[[routes]]`.
pub struct NoRoutes;

impl NoRoutes {
    pub fn emit(self) {
        tracing::warn!("{}", crate::config::NO_ROUTES_WARNING);
    }
}

/// Route reloads, by `result` (`ok`, `failed`).
pub const ROUTE_RELOADS_TOTAL: &str = "tributary_route_reloads_total";
/// The `result` of a reload whose routes are in use.
const ROUTES_RELOADED: &str = "ok";
/// The `result` of a reload refused: the routes in use stay.
const ROUTES_NOT_RELOADED: &str = "failed";

/// New routes are in use.
pub struct RoutesReloaded {
    pub routes: usize,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

impl RoutesReloaded {
    pub fn emit(self) {
        tracing::info!(
            routes = self.routes,
            added = self.added,
            removed = self.removed,
            changed = self.changed,
            "routes reloaded: publishes from now on take the new routes"
        );
        metrics::counter!(ROUTE_RELOADS_TOTAL, "result" => ROUTES_RELOADED).increment(1);
    }
}

/// The configuration file changed but could not be used: the routes in use stay.
pub struct RoutesNotReloaded<'a> {
    pub source: &'a crate::config::ConfigSource,
    pub problems: &'a str,
}

impl RoutesNotReloaded<'_> {
    pub fn emit(self) {
        // One line, so a log collector keeps the problems with the message.
        let problems: Vec<&str> = self
            .problems
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        tracing::error!(
            "routes not reloaded, the routes in use stay: {} is invalid: {}",
            self.source,
            problems.join("; ")
        );
        metrics::counter!(ROUTE_RELOADS_TOTAL, "result" => ROUTES_NOT_RELOADED).increment(1);
    }
}

/// SIGHUP, and the file's routes are the ones in use.
pub struct RoutesUnchanged;

impl RoutesUnchanged {
    pub fn emit(self) {
        tracing::info!("routes unchanged");
    }
}

/// Settings other than routes changed in the file: they need a restart.
pub struct RestartNeeded<'a> {
    pub source: &'a crate::config::ConfigSource,
}

impl RestartNeeded<'_> {
    pub fn emit(self) {
        tracing::warn!(
            "{} changed outside [[routes]]: those settings take effect at the next restart (only routes are reloaded)",
            self.source
        );
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
/// A connection's task panicked: a bug, logged once with the peer and counted
/// as closed for `internal_error`. Its count, slot and will are released all
/// the same.
pub struct ConnectionPanicked {
    pub peer: SocketAddr,
}

impl ConnectionPanicked {
    pub fn emit(self) {
        tracing::error!(peer = %self.peer, "a connection failed on an internal error and was closed");
        metrics::counter!(CONNECTIONS_CLOSED_TOTAL, "reason" => "internal_error").increment(1);
    }
}

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

/// Connections whose TLS or WebSocket handshake failed, by `listener` and
/// `reason`.
pub const HANDSHAKES_FAILED_TOTAL: &str = "tributary_handshakes_failed_total";
/// Reloads of a TLS listener's certificate files, by `listener` and `outcome`
/// (`replaced`, `refused`).
pub const TLS_RELOADS_TOTAL: &str = "tributary_tls_reloads_total";

/// A connection's TLS or WebSocket handshake failed or timed out. Scanners
/// and health probes do this all day: debug level, counted.
pub struct HandshakeFailed<'a> {
    pub peer: SocketAddr,
    pub listener: &'a str,
    pub reason: &'static str,
}

impl HandshakeFailed<'_> {
    pub fn emit(self) {
        tracing::debug!(peer = %self.peer, listener = self.listener, reason = self.reason, "handshake failed");
        metrics::counter!(
            HANDSHAKES_FAILED_TOTAL,
            "listener" => self.listener.to_owned(),
            "reason" => self.reason
        )
        .increment(1);
    }
}

/// A TLS listener's files changed (or SIGHUP): loaded, or refused with the
/// old configuration serving on. The error names files, never key material.
pub struct TlsReloaded<'a> {
    pub listener: &'a str,
    pub error: Option<&'a crate::listener::tls::TlsError>,
}

impl TlsReloaded<'_> {
    pub fn emit(self) {
        let outcome = match self.error {
            None => {
                tracing::info!(listener = self.listener, "TLS certificate reloaded");
                "replaced"
            }
            Some(error) => {
                tracing::error!(
                    listener = self.listener,
                    %error,
                    "TLS certificate not reloaded; the previous one serves on"
                );
                "refused"
            }
        };
        metrics::counter!(
            TLS_RELOADS_TOTAL,
            "listener" => self.listener.to_owned(),
            "outcome" => outcome
        )
        .increment(1);
    }
}

/// Reloads of the password file and the ACL, by `file` (`password file`,
/// `ACL`) and `outcome` (`replaced`, `refused`).
pub const AUTH_RELOADS_TOTAL: &str = "tributary_auth_reloads_total";
/// PUBLISHes (and wills) the ACL refused, by `qos`: nothing of them reached
/// Kafka or a subscriber.
pub const PUBLISHES_DENIED_TOTAL: &str = "tributary_mqtt_publishes_denied_total";
/// Topic filters of SUBSCRIBEs the ACL refused.
pub const SUBSCRIPTIONS_DENIED_TOTAL: &str = "tributary_mqtt_subscriptions_denied_total";
/// Messages not delivered to a subscriber whose ACL does not let it read
/// their topic.
pub const DELIVERIES_DENIED_TOTAL: &str = "tributary_mqtt_deliveries_denied_total";

/// The password file or the ACL changed (or SIGHUP): loaded, or refused and
/// the previous version enforced on. The error names lines, never secrets.
pub struct AuthFileReloaded<'a> {
    pub what: &'static str,
    pub error: Option<&'a str>,
}

impl AuthFileReloaded<'_> {
    pub fn emit(self) {
        let outcome = match self.error {
            None => {
                tracing::info!(file = self.what, "reloaded");
                "replaced"
            }
            Some(error) => {
                tracing::error!(file = self.what, %error, "not reloaded; the previous version is enforced");
                "refused"
            }
        };
        metrics::counter!(AUTH_RELOADS_TOTAL, "file" => self.what, "outcome" => outcome)
            .increment(1);
    }
}

/// A PUBLISH (or a will) the ACL does not allow.
pub struct PublishDenied {
    pub qos: u8,
}

impl PublishDenied {
    pub fn emit(self) {
        tracing::debug!(qos = self.qos, "publish denied by the ACL");
        metrics::counter!(PUBLISHES_DENIED_TOTAL, "qos" => qos_label(self.qos)).increment(1);
    }
}

/// A SUBSCRIBE filter the ACL does not allow.
pub struct SubscriptionDenied;

impl SubscriptionDenied {
    pub fn emit(self) {
        tracing::debug!("subscription denied by the ACL");
        metrics::counter!(SUBSCRIPTIONS_DENIED_TOTAL).increment(1);
    }
}

/// A message not delivered: the subscriber may not read its topic.
pub struct DeliveryDenied;

impl DeliveryDenied {
    pub fn emit(self) {
        metrics::counter!(DELIVERIES_DENIED_TOTAL).increment(1);
    }
}

/// Connections that changed the pace of their Kafka records, by `to`
/// (`prompt`: sent at once while the load is light; `batched`: lingering).
pub const KAFKA_PACE_CHANGES_TOTAL: &str = "tributary_kafka_pace_changes_total";

/// A connection's Kafka records take another pace from now on.
pub struct PaceChanged {
    pub to: tributary_bridge::Pace,
}

impl PaceChanged {
    pub fn emit(self) {
        let to = match self.to {
            tributary_bridge::Pace::Prompt => "prompt",
            tributary_bridge::Pace::Batched => "batched",
        };
        metrics::counter!(KAFKA_PACE_CHANGES_TOTAL, "to" => to).increment(1);
    }
}

/// The spool opened (`[spool] enabled`), with what recovery found.
pub struct SpoolOpened<'a> {
    pub dir: &'a std::path::Path,
    pub recovery: &'a tributary_bridge::spool::Recovery,
}

impl SpoolOpened<'_> {
    pub fn emit(self) {
        let r = self.recovery;
        tributary_bridge::events::SpoolRecovered { recovery: r }.emit();
        tracing::info!(
            dir = %self.dir.display(),
            pending_records = r.records,
            pending_bytes = r.bytes,
            truncated_bytes = r.truncated_bytes,
            corrupt_records = r.corrupt_records,
            "spool open: routed QoS 1/2 records are written ahead and acknowledged once durable"
        );
        if r.truncated_bytes > 0 || r.corrupt_records > 0 {
            tracing::warn!(
                truncated_bytes = r.truncated_bytes,
                corrupt_records = r.corrupt_records,
                "the spool was damaged (a torn tail is what a crash leaves; corrupt records were moved to corrupt/)"
            );
        }
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

/// Connections that ended after CONNECT, by `reason`.
pub const CONNECTIONS_CLOSED_TOTAL: &str = "tributary_connections_closed_total";
/// Successful MQTT handshakes, by protocol `version`.
pub const CONNECTIONS_ESTABLISHED_TOTAL: &str = "tributary_connections_established_total";
/// Connections that took over a client id already connected.
pub const SESSIONS_TAKEN_OVER_TOTAL: &str = "tributary_sessions_taken_over_total";
/// PUBLISH packets received from devices, by `qos`.
pub const PUBLISHES_RECEIVED_TOTAL: &str = "tributary_mqtt_publishes_received_total";
/// QoS 1/2 publishes acknowledged negatively or not at all because Kafka did not
/// take them, by `qos` and `reason`.
pub const PUBLISHES_REFUSED_TOTAL: &str = "tributary_mqtt_publishes_refused_total";
/// Time from reading a QoS 1/2 PUBLISH to its positive PUBACK/PUBREC, by `qos`.
pub const PUBLISH_ACK_SECONDS: &str = "tributary_mqtt_publish_ack_seconds";
/// QoS 1/2 publishes waiting for Kafka in every connection's window.
pub const INFLIGHT_MESSAGES: &str = "tributary_inflight_messages";
/// Wills published, by `outcome` (`delivered`, `not_in_kafka`, `router_failed`)
/// or cancelled by a reconnect (`cancelled`).
pub const WILLS_TOTAL: &str = "tributary_wills_total";

/// How often a burst of Kafka refusals is logged, at most.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection was refused during the MQTT handshake.
pub struct ConnectRefused {
    pub peer: SocketAddr,
    pub reason: &'static str,
}

impl ConnectRefused {
    pub fn emit(self) {
        tracing::debug!(peer = %self.peer, reason = self.reason, "MQTT connection refused");
        metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => self.reason).increment(1);
    }
}

/// A device completed the MQTT handshake.
pub struct Connected {
    pub version: &'static str,
}

impl Connected {
    pub fn emit(self) {
        metrics::counter!(CONNECTIONS_ESTABLISHED_TOTAL, "version" => self.version).increment(1);
    }
}

/// A connection ended after its handshake.
pub struct ConnectionEnded {
    pub reason: &'static str,
}

impl ConnectionEnded {
    pub fn emit(self) {
        tracing::debug!(reason = self.reason, "MQTT connection ended");
        metrics::counter!(CONNECTIONS_CLOSED_TOTAL, "reason" => self.reason).increment(1);
    }
}

/// A connection took over a client id that was connected.
pub struct SessionTakenOver;

impl SessionTakenOver {
    pub fn emit(self) {
        metrics::counter!(SESSIONS_TAKEN_OVER_TOTAL).increment(1);
    }
}

fn qos_label(qos: u8) -> &'static str {
    match qos {
        0 => "0",
        1 => "1",
        _ => "2",
    }
}

/// Handles of the metrics every publish touches, registered once: a
/// `metrics::counter!` with a key looks it up in the registry on every call.
/// Taken only after the recorder is installed (`start` does that first).
struct PerPublish {
    received: [metrics::Counter; 3],
    ack_seconds: [metrics::Histogram; 3],
    in_flight: metrics::Gauge,
}

fn per_publish() -> &'static PerPublish {
    static HANDLES: std::sync::OnceLock<PerPublish> = std::sync::OnceLock::new();
    HANDLES.get_or_init(|| PerPublish {
        received: [0, 1, 2]
            .map(|qos| metrics::counter!(PUBLISHES_RECEIVED_TOTAL, "qos" => qos_label(qos))),
        ack_seconds: [0, 1, 2]
            .map(|qos| metrics::histogram!(PUBLISH_ACK_SECONDS, "qos" => qos_label(qos))),
        in_flight: metrics::gauge!(INFLIGHT_MESSAGES),
    })
}

/// Index of a QoS in [`PerPublish`]'s arrays.
fn qos_index(qos: u8) -> usize {
    usize::from(qos.min(2))
}

/// A PUBLISH arrived from a device.
pub struct PublishReceived {
    pub qos: u8,
}

impl PublishReceived {
    pub fn emit(self) {
        if let Some(counter) = per_publish().received.get(qos_index(self.qos)) {
            counter.increment(1);
        }
    }
}

/// A QoS 1/2 publish was acknowledged positively.
pub struct PublishAcknowledged {
    pub qos: u8,
    pub latency: std::time::Duration,
}

impl PublishAcknowledged {
    pub fn emit(self) {
        if let Some(histogram) = per_publish().ack_seconds.get(qos_index(self.qos)) {
            histogram.record(self.latency.as_secs_f64());
        }
    }
}

/// A QoS 1/2 publish was not acknowledged positively because Kafka did not take
/// it. Logged once per burst, with the count since the last line.
pub struct PublishRefused<'a> {
    pub qos: u8,
    pub error: &'a tributary_bridge::DeliveryError,
}

impl PublishRefused<'_> {
    pub fn emit(self) {
        use std::sync::Mutex;
        use std::time::Instant;
        static LAST: Mutex<Option<(Instant, u64)>> = Mutex::new(None);
        metrics::counter!(
            PUBLISHES_REFUSED_TOTAL,
            "qos" => qos_label(self.qos),
            "reason" => self.error.reason()
        )
        .increment(1);
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *last {
            Some((at, suppressed)) if at.elapsed() < REFUSAL_LOG_INTERVAL => *suppressed += 1,
            _ => {
                let suppressed = last.map_or(0, |(_, n)| n);
                tracing::warn!(
                    reason = self.error.reason(),
                    error = %self.error,
                    similar_since_last_report = suppressed,
                    "Kafka did not take a publish; the device gets no positive acknowledgement"
                );
                *last = Some((Instant::now(), 0));
            }
        }
    }
}

/// Publishes entered or left the in-flight windows.
pub struct InFlightChanged {
    pub delta: i64,
}

impl InFlightChanged {
    pub fn emit(self) {
        per_publish().in_flight.increment(self.delta as f64);
    }
}

/// A delayed will was cancelled because its client reconnected.
pub struct WillCancelled;

impl WillCancelled {
    pub fn emit(self) {
        metrics::counter!(WILLS_TOTAL, "outcome" => "cancelled").increment(1);
    }
}

/// A will matching a route could not be written to Kafka.
pub struct WillNotInKafka<'a> {
    pub error: &'a tributary_bridge::DeliveryError,
}

impl WillNotInKafka<'_> {
    pub fn emit(self) {
        tracing::warn!(error = %self.error, "a will reached neither Kafka nor the spool");
    }
}

/// A will was published.
pub struct WillPublished {
    pub kafka_ok: bool,
    pub router_ok: bool,
}

impl WillPublished {
    pub fn emit(self) {
        let outcome = match (self.kafka_ok, self.router_ok) {
            (true, true) => "delivered",
            (false, _) => "not_in_kafka",
            (true, false) => "router_failed",
        };
        metrics::counter!(WILLS_TOTAL, "outcome" => outcome).increment(1);
    }
}

/// Messages for a device that the gateway did not send, by `reason`
/// (`expired`, `no_local`, `retain_handling`, `too_large_for_client`).
pub const DELIVERIES_SKIPPED_TOTAL: &str = "tributary_mqtt_deliveries_skipped_total";

/// A message was not sent to a subscriber, as MQTT requires.
pub struct DeliverySkipped {
    pub reason: &'static str,
}

impl DeliverySkipped {
    pub fn emit(self) {
        metrics::counter!(DELIVERIES_SKIPPED_TOTAL, "reason" => self.reason).increment(1);
    }
}

/// Messages of shared subscriptions given to another member of the group
/// because the first left without acknowledging them.
pub const SHARES_HANDED_OFF_TOTAL: &str = "tributary_shares_handed_off_total";

pub struct SharesHandedOff {
    pub count: usize,
}

impl SharesHandedOff {
    pub fn emit(self) {
        tracing::debug!(count = self.count, "shares handed to other group members");
        metrics::counter!(SHARES_HANDED_OFF_TOTAL).increment(self.count as u64);
    }
}

/// Sessions that expired and were removed from the router.
pub const SESSIONS_EXPIRED_TOTAL: &str = "tributary_sessions_expired_total";

/// A stored session reached its expiry and was removed.
pub struct SessionExpired;

impl SessionExpired {
    pub fn emit(self) {
        metrics::counter!(SESSIONS_EXPIRED_TOTAL).increment(1);
    }
}

/// A Kafka source is consuming.
pub struct SourceStarted<'a> {
    pub config: &'a tributary_bridge::source::SourceConfig,
}

impl SourceStarted<'_> {
    pub fn emit(self) {
        let config = self.config;
        tracing::info!(
            source = %config.name,
            kafka_topics = ?config.subscription(),
            group_id = %config.group_id,
            qos = config.qos,
            "Kafka source started: records are published into MQTT"
        );
    }
}

/// A Kafka source has waited for a subscriber's session to take a message:
/// its device reads slower than messages come, or is away with a full queue.
pub struct SourceWaiting<'a> {
    pub source: &'a str,
    pub waited: std::time::Duration,
}

impl SourceWaiting<'_> {
    pub fn emit(self) {
        tracing::warn!(
            source = self.source,
            waited = ?self.waited,
            "a subscriber's session has no room for a Kafka source's message; consumption waits"
        );
    }
}

/// SIGINT or SIGTERM came while the server was starting: it stops there.
pub struct StoppedWhileStarting;

impl StoppedWhileStarting {
    pub fn emit(self) {
        tracing::warn!("stopped while starting (SIGINT or SIGTERM); nothing was acknowledged yet");
    }
}
