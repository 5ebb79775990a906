//! Embeds rumqttd's Router (fan-out, retained messages, shared subscriptions,
//! sessions) and builds one local link per device connection.
//!
//! The router's event type is private to rumqttd, so its sender lives only inside
//! the link-building closure. Building a link blocks (plain channel send/recv), so
//! it always runs on the blocking pool; nothing here may stall the async runtime.

use std::sync::Arc;

use futures::FutureExt as _;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::Packet;
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
