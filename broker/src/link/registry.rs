//! Which client ids are connected, and delayed wills.
//!
//! A new connection with a client id already in use takes over: the old link is
//! told to close (MQTT 5: DISCONNECT 0x8E) and the new one waits until the old
//! has stored its session. A reconnecting client also cancels its own delayed
//! will. Only the registry's current holder of a client id may store its
//! session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a new connection waits for the one it takes over to leave.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-client timers that a reconnect cancels (delayed wills, session expiry).
#[derive(Default)]
struct Timers {
    by_client: HashMap<Arc<str>, (u64, CancellationToken)>,
}

impl Timers {
    fn start(&mut self, id: u64, client_id: Arc<str>) -> CancellationToken {
        let token = CancellationToken::new();
        if let Some((_, previous)) = self.by_client.insert(client_id, (id, token.clone())) {
            previous.cancel();
        }
        token
    }

    fn done(&mut self, client_id: &str, id: u64) {
        if self
            .by_client
            .get(client_id)
            .is_some_and(|(current, _)| *current == id)
        {
            self.by_client.remove(client_id);
        }
    }

    fn cancel(&mut self, client_id: &str) {
        if let Some((_, token)) = self.by_client.remove(client_id) {
            token.cancel();
        }
    }
}

#[derive(Default)]
struct Inner {
    next_generation: u64,
    connected: HashMap<Arc<str>, Registered>,
    pending_wills: Timers,
}

struct Registered {
    generation: u64,
    /// Cancelled to ask the connection to close (takeover).
    kick: CancellationToken,
    /// Cancelled by the connection once it has left the router.
    gone: CancellationToken,
}

/// The registry, shared by every link.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

/// A connection's place in the registry.
pub struct Registration {
    registry: Registry,
    client_id: Arc<str>,
    generation: u64,
    /// Cancelled when a newer connection takes this client id over.
    pub kicked: CancellationToken,
    gone: CancellationToken,
    /// True when this connection took over a live one.
    pub took_over: bool,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `client_id`, closing any connection that holds it and
    /// cancelling its delayed will.
    pub async fn register(&self, client_id: Arc<str>) -> Registration {
        let previous = {
            let mut inner = self.lock();
            inner.pending_wills.cancel(&client_id);
            inner.connected.get(&client_id).map(|old| {
                old.kick.cancel();
                old.gone.clone()
            })
        };
        let took_over = previous.is_some();
        if let Some(gone) = previous {
            if tokio::time::timeout(TAKEOVER_TIMEOUT, gone.cancelled())
                .await
                .is_err()
            {
                tracing::warn!(
                    client_id = %client_id,
                    "previous connection did not leave within {TAKEOVER_TIMEOUT:?}; taking over anyway"
                );
            }
        }
        let mut inner = self.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let kicked = CancellationToken::new();
        let gone = CancellationToken::new();
        if let Some(older) = inner.connected.insert(
            client_id.clone(),
            Registered {
                generation,
                kick: kicked.clone(),
                gone: gone.clone(),
            },
        ) {
            // Two connections raced for the id while we waited: the other loses.
            older.kick.cancel();
        }
        Registration {
            registry: self.clone(),
            client_id,
            generation,
            kicked,
            gone,
            took_over,
        }
    }

    /// Registers a delayed will for `client_id`; the token is cancelled if the
    /// client reconnects first. Returns the will's id for [`Registry::will_done`].
    pub fn will_pending(&self, client_id: Arc<str>) -> (u64, CancellationToken) {
        let mut inner = self.lock();
        inner.next_generation += 1;
        let id = inner.next_generation;
        (id, inner.pending_wills.start(id, client_id))
    }

    /// Forgets a delayed will once published or cancelled.
    pub fn will_done(&self, client_id: &str, id: u64) {
        self.lock().pending_wills.done(client_id, id);
    }
}

impl Registration {
    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// Unique among every connection ever registered.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Drop for Registration {
    /// Leaves the registry (only if still the current holder of the id) and lets
    /// a waiting successor proceed.
    fn drop(&mut self) {
        {
            let mut inner = self.registry.lock();
            if inner
                .connected
                .get(&self.client_id)
                .is_some_and(|r| r.generation == self.generation)
            {
                inner.connected.remove(&self.client_id);
                shrink(&mut inner.connected);
            }
        }
        self.gone.cancel();
    }
}

/// Gives memory back once a map has shrunk well below its capacity (a burst of
/// distinct client ids must not hold memory forever).
pub(super) fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_connection_kicks_the_first_and_waits_for_it() {
        let registry = Registry::default();
        let first = registry.register("dev".into()).await;
        assert!(!first.took_over);
        let kicked = first.kicked.clone();
        let second = {
            let registry = registry.clone();
            tokio::spawn(async move { registry.register("dev".into()).await })
        };
        kicked.cancelled().await;
        drop(first);
        let second = second.await.unwrap();
        assert!(second.took_over);
        assert!(!second.kicked.is_cancelled());
    }

    #[tokio::test]
    async fn reconnecting_cancels_a_pending_will() {
        let registry = Registry::default();
        let (_, will) = registry.will_pending("dev".into());
        let _again = registry.register("dev".into()).await;
        assert!(will.is_cancelled());
    }
}
