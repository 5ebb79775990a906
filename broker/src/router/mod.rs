//! Embeds rumqttd's Router (the fan-out engine) behind one adapter: the links
//! of connections that subscribe, and the shared publish lanes.
//!
//! A connection that never subscribes never gets a router link of its own (a
//! link costs tens of kilobytes in the router): its publishes go through one of
//! a few shared lanes, always the same one, so its messages keep their order.
//! The origin property carries who published (see `link::origin`).
//!
//! The router's event type is private to rumqttd, so its sender lives only inside
//! the link-building closure. Building a link blocks (plain channel send/recv), so
//! it always runs on the blocking pool; nothing here may stall the async runtime.

mod port;
mod topic;

use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Packet, Publish, PublishProperties, Unsubscribe,
};
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
/// Shared links that carry the publishes of every connection to the router.
/// Fewer lanes contend: 4 lanes cost a fifth of the throughput at 256
/// connections (QoS 1, routed); 64 match a link per connection. Each costs
/// one router link (about 22 KB) whatever the number of connections.
pub const PUBLISH_LANES: usize = 64;
/// Packets a lane may have waiting for the router before its publishers wait
/// (measured: 1,024 costs 15 % at 256 connections). The bound on what waits
/// for the router: `PUBLISH_LANES` times this.
const MAX_LANE_BACKLOG: usize = 8192;

pub use port::Port;

type BuildLink =
    dyn Fn(String) -> Result<(LinkTx, LinkRx, Notification), Box<LinkError>> + Send + Sync;

/// The embedded router, able to build links.
#[derive(Clone)]
pub struct EmbeddedRouter {
    build: Arc<BuildLink>,
    ids: Arc<Mutex<IdPool>>,
    lanes: Arc<[Mutex<LinkTx>]>,
}

/// Router-side client ids for device links, recycled.
///
/// The router keeps a little state (about half a kilobyte) for every client id
/// it has ever seen, for its lifetime. Device client ids are unbounded, so the
/// router never sees them: each link gets a recycled id, and the number the
/// router remembers is the most links ever open at once. Sessions are the
/// gateway's (see `link::session_store`), so the router link is always clean.
#[derive(Default)]
struct IdPool {
    free: Vec<u32>,
    next: u32,
}

impl EmbeddedRouter {
    /// Starts the router thread and opens the publish lanes. `max_links`
    /// bounds the device links open at once (connections that subscribed plus
    /// stored sessions that hold subscriptions).
    pub async fn start(max_links: usize) -> Result<Self, Box<LinkError>> {
        let config = RouterConfig {
            max_connections: max_links + PUBLISH_LANES + 16,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            max_segment_size: SEGMENT_SIZE,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, config).spawn();
        let build: Arc<BuildLink> = Arc::new(move |client_id: String| {
            LinkBuilder::new(&client_id, router_tx.clone())
                .clean_session(true)
                .build()
                .map_err(Box::new)
        });
        let mut lanes = Vec::with_capacity(PUBLISH_LANES);
        for lane in 0..PUBLISH_LANES {
            let (tx, rx) = open(&build, format!("{RESERVED_CLIENT_PREFIX}_lane{lane}")).await?;
            tokio::spawn(drain(rx));
            lanes.push(Mutex::new(tx));
        }
        Ok(EmbeddedRouter {
            build,
            ids: Arc::default(),
            lanes: lanes.into(),
        })
    }

    /// The publish lane of the connection `key` (the same lane every time).
    pub fn lane(&self, key: u64) -> Lane {
        Lane {
            lanes: self.lanes.clone(),
            index: (key % self.lanes.len() as u64) as usize,
        }
    }

    /// Opens a link for a device connection, under a recycled router id.
    pub async fn connect_device(&self) -> Result<RouterLink, Box<LinkError>> {
        let id = {
            let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            ids.free.pop().unwrap_or_else(|| {
                ids.next += 1;
                ids.next
            })
        };
        match self.open(format!("{RESERVED_CLIENT_PREFIX}-{id}")).await {
            Ok((tx, rx)) => Ok(RouterLink {
                tx: Some(tx),
                rx,
                dropped: false,
                id: Some((id, self.ids.clone())),
            }),
            Err(error) => {
                release(&self.ids, id);
                Err(error)
            }
        }
    }

    async fn open(&self, client_id: String) -> Result<(LinkTx, LinkRx), Box<LinkError>> {
        open(&self.build, client_id).await
    }
}

async fn open(
    build: &Arc<BuildLink>,
    client_id: String,
) -> Result<(LinkTx, LinkRx), Box<LinkError>> {
    let build = build.clone();
    let (tx, rx, _connack) = tokio::task::spawn_blocking(move || build(client_id))
        .await
        .map_err(|_| Box::new(LinkError::NotConnectionAck))??;
    Ok((tx, rx))
}

/// Keeps a link that only publishes scheduled: it receives nothing it must
/// answer.
async fn drain(mut rx: LinkRx) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(Some(Notification::Disconnect(..))) => {
                // The link checks every publish so that this never happens;
                // a wake-up for a dropped link would kill the router.
                tracing::error!("the router dropped a publish lane; its publishes are lost");
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A connection's way to hand publishes to the router without a link of its
/// own; shared with others, in order for each.
#[derive(Clone)]
pub struct Lane {
    lanes: Arc<[Mutex<LinkTx>]>,
    index: usize,
}

impl Lane {
    fn tx(&self) -> std::sync::MutexGuard<'_, LinkTx> {
        self.lanes[self.index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `packets` to the router, in order, without waiting.
    pub fn send(&self, packets: Vec<Packet>) -> Result<(), RouterGone> {
        send_batch(&mut self.tx(), packets)
    }

    /// Waits (at most `timeout`) until the router has taken everything on
    /// this lane: the router handles what it took before anything it is
    /// given later on another link. True when it did, false at the timeout.
    ///
    /// "Taken" means the router moved the lane's packets out of its buffer to
    /// handle them, in one go on its own thread: each publish is appended to
    /// the log of every filter it matches, from which the router forwards it
    /// to every link subscribed to that filter (connected devices' links, and
    /// the links stored sessions keep while their devices are away).
    pub async fn taken(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut pause = std::time::Duration::from_micros(50);
        while !self.tx().buffer().is_empty() {
            if std::time::Instant::now() >= deadline {
                tracing::debug!("a lane was not taken in time; a switch to a link may reorder");
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(2));
        }
        true
    }

    /// Like [`Lane::send`], then waits while the router is far behind on
    /// this lane.
    pub async fn send_paced(&self, packets: Vec<Packet>) -> Result<(), RouterGone> {
        self.send(packets)?;
        pace(MAX_LANE_BACKLOG, MAX_ROUTER_WAIT, || {
            self.tx().buffer().len()
        })
        .await;
        Ok(())
    }
}

fn release(ids: &Mutex<IdPool>, id: u32) {
    ids.lock().unwrap_or_else(|e| e.into_inner()).free.push(id);
}

/// Longest a leaving link waits for the router to take what it handed over
/// before; past it the router is taken to be gone.
const LEAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long after leaving a link's router id is reused.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One link to the router.
pub struct RouterLink {
    /// Taken only when the link leaves (see `Drop`).
    tx: Option<LinkTx>,
    rx: LinkRx,
    /// The router said it dropped this link: it must not be woken again.
    dropped: bool,
    /// The recycled router id of a device link, returned to the pool once the
    /// router has let the link go.
    id: Option<(u32, Arc<Mutex<IdPool>>)>,
}

impl RouterLink {
    /// Leaves the router (anything already handed over is processed first).
    pub fn leave(self) {}

    /// Hands `packets` to the router, in order, without waiting.
    pub fn send(&mut self, packets: Vec<Packet>) -> Result<(), RouterGone> {
        send_batch(self.tx.as_mut().ok_or(RouterGone)?, packets)
    }

    /// Like [`RouterLink::send`], then waits while the router is far behind
    /// on this link.
    pub async fn send_paced(&mut self, packets: Vec<Packet>) -> Result<(), RouterGone> {
        send_batch_paced(self.tx.as_mut().ok_or(RouterGone)?, packets).await
    }

    /// The next thing the router says to this link.
    pub async fn next(&mut self) -> Result<FromRouter, RouterGone> {
        match self.rx.next().await {
            Ok(Some(notification @ Notification::Disconnect(..))) => {
                self.dropped = true;
                Ok(FromRouter::from(notification))
            }
            Ok(Some(notification)) => Ok(FromRouter::from(notification)),
            Ok(None) => Ok(FromRouter::Nothing),
            Err(_) => Err(RouterGone),
        }
    }

    /// Asks the router to schedule this link again, after
    /// [`FromRouter::Unschedule`]; never to be dropped half-way (the link
    /// would stall), so it is awaited outside any `select!`.
    pub async fn wake(&mut self) -> Result<(), RouterGone> {
        // rumqttd unwraps the scheduler entry of a link it is asked to
        // wake: for a link it dropped, that kills the router's thread.
        if self.dropped {
            return Err(RouterGone);
        }
        self.rx.wake().await.map_err(|_| RouterGone)
    }
}

/// What the router tells a link, in the gateway's terms.
pub enum FromRouter {
    /// A message for the subscriber (its packet id is the router's own).
    Forward {
        publish: Publish,
        /// Boxed: the connection's loop holds one of these while idle.
        properties: Option<Box<PublishProperties>>,
    },
    /// The router releases a QoS 2 message it forwarded.
    PubRel { pkid: u16 },
    /// The answer to a SUBSCRIBE handed over, as the packet the device gets.
    SubAck(Box<Packet>),
    /// Any other acknowledgement, as its packet.
    Ack(Box<Packet>),
    /// The router stops scheduling the link until [`RouterLink::wake`].
    Unschedule,
    /// The router drops the link.
    Disconnect,
    /// Nothing to act on.
    Nothing,
}

impl From<Notification> for FromRouter {
    fn from(notification: Notification) -> FromRouter {
        match notification {
            Notification::Forward(mut forward) => FromRouter::Forward {
                publish: {
                    forward.publish.topic = topic::from_router(forward.publish.topic);
                    forward.publish
                },
                properties: forward.properties.map(Box::new),
            },
            // The router's acknowledgement type is private; its packet is not.
            Notification::DeviceAck(ack) => match Packet::from(ack) {
                Packet::PubRel(pubrel, _) => FromRouter::PubRel { pkid: pubrel.pkid },
                packet @ Packet::SubAck(..) => FromRouter::SubAck(Box::new(packet)),
                packet => FromRouter::Ack(Box::new(packet)),
            },
            Notification::Unschedule => FromRouter::Unschedule,
            Notification::Disconnect(..) => FromRouter::Disconnect,
            _ => FromRouter::Nothing,
        }
    }
}

impl Drop for RouterLink {
    /// Every way a link ends leaves the router, a panicking connection's
    /// included.
    ///
    /// The DISCONNECT goes into the link's buffer, which the router takes
    /// whole when it handles a notification. A notification queued *before*
    /// this link's last wake-up would take the DISCONNECT with it, the router
    /// would drop the link, and then meet the wake-up for a link it no longer
    /// has: rumqttd unwraps it there, and its thread dies. So the DISCONNECT
    /// is put in only once the buffer is empty: then no notification is
    /// outstanding (each one is sent when the buffer turns non-empty, and the
    /// router empties it when it handles it), and the DISCONNECT's own comes
    /// after every wake-up this link sent. The recycled id is reused only
    /// after [`LEAVE_TIMEOUT`] past that.
    fn drop(&mut self) {
        let Some(mut tx) = self.tx.take() else {
            return;
        };
        let id = self.id.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            leave(&mut tx);
            return;
        };
        runtime.spawn(async move {
            pace(0, LEAVE_WAIT, || tx.buffer().len()).await;
            leave(&mut tx);
            if let Some((id, ids)) = id {
                tokio::time::sleep(LEAVE_TIMEOUT).await;
                release(&ids, id);
            }
        });
    }
}

/// Hands the router the DISCONNECT that ends a link.
fn leave(tx: &mut LinkTx) {
    let leave = Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    );
    let _ = send_batch(tx, vec![leave]);
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
fn send_batch(tx: &mut LinkTx, packets: Vec<Packet>) -> Result<(), RouterGone> {
    if packets.is_empty() {
        return Ok(());
    }
    // Every packet for the router passes here: its topics are written for it.
    let packets = packets.into_iter().map(to_router);
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

/// Packets a link may have waiting for the router before it stops and waits:
/// the router's backpressure now that handing packets over does not block.
const MAX_ROUTER_BACKLOG: usize = 128;

/// Longest a link waits for the router to take its backlog.
const MAX_ROUTER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Like [`send_batch`], then waits while the router has more than
/// [`MAX_ROUTER_BACKLOG`] of this link's packets still to take.
async fn send_batch_paced(tx: &mut LinkTx, packets: Vec<Packet>) -> Result<(), RouterGone> {
    send_batch(tx, packets)?;
    pace(MAX_ROUTER_BACKLOG, MAX_ROUTER_WAIT, || tx.buffer().len()).await;
    Ok(())
}

/// Waits while a link's backlog (`look`) is above `max`, at most
/// `max_wait`. Never wakes the router again: the notification sent
/// when the buffer turned non-empty is still outstanding, and a spare one
/// could outlive the link (see `Drop for RouterLink`).
async fn pace(max: usize, max_wait: std::time::Duration, mut look: impl FnMut() -> usize) {
    let mut pause = std::time::Duration::from_micros(200);
    let waiting_since = std::time::Instant::now();
    let mut backlog = look();
    while backlog > max {
        if waiting_since.elapsed() > max_wait {
            // The router stopped taking this link's packets (it dropped the
            // link, or died); the link's own notification channel tells it so.
            tracing::warn!(backlog, "the router is not taking this link's packets");
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(10));
        backlog = look();
    }
}

/// `packet` with its topic or filters as the router gets them (see `topic`).
fn to_router(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(mut publish, properties) => {
            publish.topic = topic::to_router(&publish.topic);
            Packet::Publish(publish, properties)
        }
        Packet::Subscribe(mut subscribe, properties) => {
            for filter in &mut subscribe.filters {
                filter.path = topic::filter_to_router(&filter.path);
            }
            Packet::Subscribe(subscribe, properties)
        }
        Packet::Unsubscribe(mut unsubscribe, properties) => {
            for filter in &mut unsubscribe.filters {
                *filter = topic::filter_to_router(filter);
            }
            Packet::Unsubscribe(unsubscribe, properties)
        }
        packet => packet,
    }
}

/// Hands `packet` to the router. `LinkTx::send` is async in name only: it does a
/// blocking send into the router's bounded channel, so on a multi-threaded
/// runtime it runs in `block_in_place` to keep other tasks running meanwhile.
fn send(tx: &mut LinkTx, packet: Packet) -> Result<(), RouterGone> {
    let run = || match tx.send(packet).now_or_never() {
        Some(Ok(_)) => Ok(()),
        _ => Err(RouterGone),
    };
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
        _ => run(),
    }
}
