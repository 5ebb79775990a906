//! Embeds rumqttd's Router (fan-out, retained messages, shared subscriptions,
//! sessions) and builds one local link per device connection.
//!
//! The router's event type is private to rumqttd, so its sender lives only inside
//! the link-building closure. Building a link blocks (plain channel send/recv), so
//! it always runs on the blocking pool; nothing here may stall the async runtime.

use std::sync::Arc;

use futures::FutureExt as _;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Unsubscribe};
use rumqttd::{Notification, Router, RouterConfig};

/// Bytes of one segment of a subscribed filter's in-memory log.
pub const SEGMENT_SIZE: usize = 256 * 1024;
/// Segments kept per filter: a filter's log holds at most
/// `SEGMENT_SIZE * SEGMENT_COUNT` (1 MiB) of recent messages.
pub const SEGMENT_COUNT: usize = 4;
/// Messages the router hands a link per scheduling round.
pub const MAX_OUTGOING_PACKETS: u64 = 200;
/// Client id prefix reserved for Tributary's own router links.
pub const RESERVED_CLIENT_PREFIX: &str = "__tributary";

type BuildLink =
    dyn Fn(String, bool) -> Result<(LinkTx, LinkRx, Notification), Box<LinkError>> + Send + Sync;

/// The embedded router, able to build links.
#[derive(Clone)]
pub struct EmbeddedRouter {
    build: Arc<BuildLink>,
}

impl EmbeddedRouter {
    /// Starts the router thread. `max_connections` is the listener's limit plus
    /// Tributary's own links, so the router never refuses a connection silently.
    pub fn spawn(max_connections: usize) -> Self {
        let config = RouterConfig {
            max_connections: max_connections + 16,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            max_segment_size: SEGMENT_SIZE,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, config).spawn();
        EmbeddedRouter {
            build: Arc::new(move |client_id: String, clean_session: bool| {
                LinkBuilder::new(&client_id, router_tx.clone())
                    .clean_session(clean_session)
                    .build()
                    .map_err(Box::new)
            }),
        }
    }

    /// Registers a connection with the router; returns its link and whether the
    /// router resumed a stored session.
    pub async fn connect(
        &self,
        client_id: String,
        clean_session: bool,
    ) -> Result<RouterLink, Box<LinkError>> {
        let build = self.build.clone();
        let (tx, rx, connack) =
            tokio::task::spawn_blocking(move || build(client_id, clean_session))
                .await
                .map_err(|_| Box::new(LinkError::NotConnectionAck))??;
        let session_present = match connack {
            Notification::DeviceAck(ack) => match Packet::from(ack) {
                Packet::ConnAck(connack, _) => connack.session_present,
                _ => false,
            },
            _ => false,
        };
        Ok(RouterLink {
            tx,
            rx,
            session_present,
        })
    }
}

/// One connection's link to the router.
pub struct RouterLink {
    pub tx: LinkTx,
    pub rx: LinkRx,
    pub session_present: bool,
}

/// The router no longer accepts this link's packets (it dropped the link).
#[derive(Debug, thiserror::Error)]
#[error("the router dropped the link")]
pub struct RouterGone;

/// Filter of the no-op UNSUBSCRIBE that wakes the router (a NUL makes it a filter
/// no device can subscribe to, so unsubscribing it changes nothing).
const WAKE_FILTER: &str = "\0tributary-wake";

/// Hands `packets` to the router, in order, with at most one notification. The
/// packets go straight into the link's buffer; the router is then woken without
/// blocking (`LinkTx` offers a non-blocking notification only through its
/// `try_*` helpers, hence the no-op UNSUBSCRIBE). Only when the router's
/// channel is full does this block, off the async workers, until it has room:
/// that is the backpressure from an overloaded router.
pub fn send_batch(tx: &mut LinkTx, packets: Vec<Packet>) -> Result<(), RouterGone> {
    send_batch_inner(tx, packets)
}

/// Packets a link may have waiting for the router before it stops and waits:
/// the router's backpressure now that handing packets over does not block.
pub const MAX_ROUTER_BACKLOG: usize = 128;

/// How long a link's backlog may stand still before the router is woken again.
const REWAKE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest a link waits for the router to take its backlog.
const MAX_ROUTER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Like [`send_batch`], then waits while the router has more than
/// [`MAX_ROUTER_BACKLOG`] of this link's packets still to take.
pub async fn send_batch_paced(tx: &mut LinkTx, packets: Vec<Packet>) -> Result<(), RouterGone> {
    send_batch_inner(tx, packets)?;
    let mut pause = std::time::Duration::from_micros(200);
    let waiting_since = std::time::Instant::now();
    let mut last_progress = waiting_since;
    let mut backlog = tx.buffer().len();
    while backlog > MAX_ROUTER_BACKLOG {
        if waiting_since.elapsed() > MAX_ROUTER_WAIT {
            // The router stopped taking this link's packets (it dropped the
            // link); the link's own notification channel tells it so.
            tracing::warn!(backlog, "the router is not taking this link's packets");
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(10));
        let now = tx.buffer().len();
        if now < backlog {
            last_progress = std::time::Instant::now();
        } else if last_progress.elapsed() > REWAKE_AFTER {
            // No progress for a while: wake the router again rather than trust
            // that a notification is still pending for this buffer. (Not on
            // every turn: spare wake-ups that outlive the link are logged by
            // the router as errors.)
            match tx.try_unsubscribe(WAKE_FILTER) {
                Ok(_) | Err(LinkError::TrySend(flume::TrySendError::Full(_))) => {}
                Err(_) => return Err(RouterGone),
            }
            last_progress = std::time::Instant::now();
        }
        backlog = now;
    }
    Ok(())
}

fn send_batch_inner(tx: &mut LinkTx, packets: Vec<Packet>) -> Result<(), RouterGone> {
    if packets.is_empty() {
        return Ok(());
    }
    let router_has_pending = {
        let mut buffer = tx.buffer();
        let pending = !buffer.is_empty();
        buffer.extend(packets);
        pending
    };
    if router_has_pending {
        // The router has not taken the buffer since the last notification; it
        // takes these packets with it.
        return Ok(());
    }
    match tx.try_unsubscribe(WAKE_FILTER) {
        Ok(_) => Ok(()),
        Err(LinkError::TrySend(flume::TrySendError::Full(_))) => {
            let wake = Unsubscribe {
                pkid: 0,
                filters: vec![WAKE_FILTER.to_owned()],
            };
            send(tx, Packet::Unsubscribe(wake, None))
        }
        Err(_) => Err(RouterGone),
    }
}

/// Hands `packet` to the router. `LinkTx::send` is async in name only: it does a
/// blocking send into the router's bounded channel, so on a multi-threaded
/// runtime it runs in `block_in_place` to keep other tasks running meanwhile.
pub fn send(tx: &mut LinkTx, packet: Packet) -> Result<(), RouterGone> {
    let run = || match tx.send(packet).now_or_never() {
        Some(Ok(_)) => Ok(()),
        _ => Err(RouterGone),
    };
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
        _ => run(),
    }
}
