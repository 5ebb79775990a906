//! What every connection shares: its limits from the configuration, and the
//! broker's shared parts (router, producer, routes, registries).

use std::sync::Arc;
use std::time::Duration;

use super::forward::Forwarder;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::registry::Registry;
use super::session_store::SessionStore;
use super::will::Wills;
use super::{retained, shares};
use crate::router::EmbeddedRouter;

/// Per-connection limits, from `[mqtt]`.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub connect_timeout: Duration,
    pub max_packet_size: usize,
    /// QoS 1/2 publishes in flight per connection (MQTT 5 Receive Maximum).
    pub receive_maximum: u16,
    /// Longest keep-alive a client may ask for, in seconds.
    pub max_keep_alive: u16,
}

impl LinkConfig {
    /// The keep-alive a client asking for `asked` seconds gets: its own, or
    /// the server's maximum when it asks for more or for none (0). MQTT's own
    /// maximum, 65535, is no limit: 0 then stays 0.
    pub fn keep_alive(&self, asked: u16) -> u16 {
        if self.max_keep_alive == u16::MAX {
            asked
        } else if asked == 0 || asked > self.max_keep_alive {
            self.max_keep_alive
        } else {
            asked
        }
    }
}

/// What every link shares.
pub struct LinkContext {
    pub config: LinkConfig,
    pub router: EmbeddedRouter,
    /// Routed publishes' records: to the spool or to Kafka.
    pub forwarder: Forwarder,
    /// Who holds which client id.
    pub registry: Registry,
    /// Sessions kept while their devices are away.
    pub store: SessionStore,
    pub wills: Wills,
    /// Cancelled at server shutdown: links finish their in-flight work and close.
    pub shutdown: CancellationToken,
    /// Permits for QoS 0 records awaiting Kafka ([`super::QOS0_BUDGET`]).
    pub qos0_budget: Arc<Semaphore>,
    pub retained: Arc<retained::Retained>,
    pub shares: Arc<shares::Shares>,
    /// Authentication at CONNECT, and the ACL behind each identity.
    pub auth: Arc<crate::auth::Authenticator>,
    /// Sessions with subscriptions and their mailboxes, through which Kafka
    /// sources deliver.
    pub directory: Arc<super::directory::Directory>,
}
