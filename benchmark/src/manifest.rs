//! What a `publish` run leaves for `verify`: per connection, how many messages
//! were sent and which of them were acknowledged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One run's account of its messages.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub run_id: u64,
    pub qos: u8,
    /// Per connection: sequence numbers `0..sent` were published, and every one
    /// of them was acknowledged except those in `unacked`.
    pub connections: BTreeMap<u32, ConnectionAccount>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionAccount {
    pub sent: u64,
    pub unacked: Vec<u64>,
}

impl Manifest {
    /// Messages acknowledged (QoS 1/2), which must all be in Kafka.
    pub fn acknowledged(&self) -> u64 {
        self.connections
            .values()
            .map(|c| c.sent - c.unacked.len() as u64)
            .sum()
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    pub fn read(path: &Path) -> anyhow::Result<Manifest> {
        Ok(serde_json::from_slice(&std::fs::read(path)?)?)
    }
}
