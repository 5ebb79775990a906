//! One connection's way to the router: its publish lane, and its own link once
//! it subscribes.
//!
//! Packets are batched per turn of the connection's loop and handed over in
//! order. Until the connection has a link, its publishes go by the lane; the
//! link is opened the first time there is something else to carry (a
//! SUBSCRIBE), so a connection that only publishes never has one. From then on
//! everything goes by the link, publishes included: a client that subscribes
//! and then publishes to itself gets its message, and its messages keep their
//! order across the switch (the link waits, briefly, for the lane to hand the
//! router what this connection put on it before).

use rumqttd::protocol::Packet;

use super::{EmbeddedRouter, FromRouter, Lane, RouterGone, RouterLink};

/// Longest a connection switching from its lane to its own link waits for the
/// lane to be taken by the router; past it, its last lane publishes could be
/// routed after its first link ones.
const LANE_SWITCH_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

pub struct Port {
    router: EmbeddedRouter,
    lane: Lane,
    /// Boxed: most connections never subscribe, and the port lives in
    /// every idle connection's task.
    link: Option<Box<RouterLink>>,
    to_lane: Vec<Packet>,
    to_link: Vec<Packet>,
}

impl Port {
    /// A port on the lane of connection `key`, with the link of a resumed
    /// session if it kept one.
    pub fn new(router: EmbeddedRouter, key: u64, link: Option<RouterLink>) -> Port {
        Port {
            lane: router.lane(key),
            router,
            link: link.map(Box::new),
            to_lane: Vec::new(),
            to_link: Vec::new(),
        }
    }

    /// The lane this connection publishes on (its will uses it too).
    pub fn lane(&self) -> &Lane {
        &self.lane
    }

    /// Queues `packet` for the router; it goes with the next [`Port::flush`].
    pub fn relay(&mut self, packet: Packet) {
        let by_lane = self.link.is_none() && self.to_link.is_empty();
        match packet {
            Packet::Publish(..) if by_lane => self.to_lane.push(packet),
            packet => self.to_link.push(packet),
        }
    }

    /// Whether anything relayed waits for [`Port::flush`].
    pub fn has_pending(&self) -> bool {
        !self.to_lane.is_empty() || !self.to_link.is_empty()
    }

    /// Hands over everything relayed since the last flush, in order, and
    /// waits while the router is far behind.
    pub async fn flush(&mut self) -> Result<(), RouterGone> {
        if !self.to_lane.is_empty() {
            let batch = std::mem::take(&mut self.to_lane);
            self.lane.send_paced(batch).await?;
        }
        if self.to_link.is_empty() {
            return Ok(());
        }
        let link = match &mut self.link {
            Some(link) => link,
            None => {
                let opened = self.router.connect_device().await.map_err(|error| {
                    tracing::error!(%error, "the router refused a link");
                    RouterGone
                })?;
                // What this connection put on the lane reaches the router
                // before what it puts on its link.
                self.lane.taken(LANE_SWITCH_WAIT).await;
                self.link.insert(Box::new(opened))
            }
        };
        let batch = std::mem::take(&mut self.to_link);
        link.send_paced(batch).await
    }

    /// The next thing the router says to this connection; pending forever
    /// while it has no link.
    pub async fn next(&mut self) -> Result<FromRouter, RouterGone> {
        match &mut self.link {
            Some(link) => link.next().await,
            None => std::future::pending().await,
        }
    }

    /// See [`RouterLink::wake`].
    pub async fn wake(&mut self) -> Result<(), RouterGone> {
        match &mut self.link {
            Some(link) => link.wake().await,
            None => Ok(()),
        }
    }

    /// The connection's own link, for a session that outlives it.
    pub fn into_link(self) -> Option<RouterLink> {
        self.link.map(|link| *link)
    }
}
