//! One connection's way to the router: its publish lane, and its own link once
//! it subscribes.
//!
//! Packets are batched per turn of the connection's loop and handed over in
//! order; publishes go by the lane, everything else by the link. The link is
//! opened the first time there is something to carry on it, so a connection
//! that only publishes never has one.

use rumqttd::protocol::Packet;

use super::{EmbeddedRouter, FromRouter, Lane, RouterGone, RouterLink};

pub struct Port {
    router: EmbeddedRouter,
    lane: Lane,
    link: Option<RouterLink>,
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
            link,
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
        match packet {
            Packet::Publish(..) => self.to_lane.push(packet),
            packet => self.to_link.push(packet),
        }
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
                self.link.insert(opened)
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
        self.link
    }
}
