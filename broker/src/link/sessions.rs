//! Which client ids are connected, for session takeover and delayed wills.
//!
//! A new connection with a client id already in use takes over: the old link is
//! told to close (MQTT 5: DISCONNECT 0x8E) and the new one waits until the old
//! has left the router, so the two never share router state. A reconnecting
//! client also cancels its own delayed will.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::subscriptions::Subscriptions;

/// How long a new connection waits for the one it takes over to leave.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Inner {
    next_generation: u64,
    connected: HashMap<Arc<str>, Registered>,
    pending_wills: HashMap<Arc<str>, (u64, CancellationToken)>,
    /// Subscription options of sessions that outlive their connection.
    subscriptions: HashMap<Arc<str>, Subscriptions>,
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
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
}

/// A connection's place in the registry.
pub struct Registration {
    sessions: Sessions,
    client_id: Arc<str>,
    generation: u64,
    /// Cancelled when a newer connection takes this client id over.
    pub kicked: CancellationToken,
    gone: CancellationToken,
    /// True when this connection took over a live one.
    pub took_over: bool,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `client_id`, closing any connection that holds it and
    /// cancelling its delayed will.
    pub async fn register(&self, client_id: Arc<str>) -> Registration {
        let previous = {
            let mut inner = self.lock();
            if let Some((_, will)) = inner.pending_wills.remove(&client_id) {
                will.cancel();
            }
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
            sessions: self.clone(),
            client_id,
            generation,
            kicked,
            gone,
            took_over,
        }
    }

    /// Registers a delayed will for `client_id`; the token is cancelled if the
    /// client reconnects first. Returns the will's id for [`Sessions::will_done`].
    pub fn will_pending(&self, client_id: Arc<str>) -> (u64, CancellationToken) {
        let token = CancellationToken::new();
        let mut inner = self.lock();
        inner.next_generation += 1;
        let id = inner.next_generation;
        if let Some((_, previous)) = inner.pending_wills.insert(client_id, (id, token.clone())) {
            previous.cancel();
        }
        (id, token)
    }

    /// Forgets a delayed will once published or cancelled.
    pub fn will_done(&self, client_id: &str, id: u64) {
        let mut inner = self.lock();
        if inner
            .pending_wills
            .get(client_id)
            .is_some_and(|(current, _)| *current == id)
        {
            inner.pending_wills.remove(client_id);
        }
    }
}

impl Sessions {
    /// Keeps a persistent session's subscription options for its next connection.
    pub fn save_subscriptions(&self, client_id: Arc<str>, subscriptions: Subscriptions) {
        self.lock().subscriptions.insert(client_id, subscriptions);
    }

    /// The saved subscription options of `client_id`, removed from the registry.
    pub fn take_subscriptions(&self, client_id: &str) -> Option<Subscriptions> {
        self.lock().subscriptions.remove(client_id)
    }
}

impl Registration {
    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }
}

impl Drop for Registration {
    /// Leaves the registry (only if still the current holder of the id) and lets
    /// a waiting successor proceed.
    fn drop(&mut self) {
        {
            let mut inner = self.sessions.lock();
            if inner
                .connected
                .get(&self.client_id)
                .is_some_and(|r| r.generation == self.generation)
            {
                inner.connected.remove(&self.client_id);
            }
        }
        self.gone.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_connection_kicks_the_first_and_waits_for_it() {
        let sessions = Sessions::default();
        let first = sessions.register("dev".into()).await;
        assert!(!first.took_over);
        let kicked = first.kicked.clone();
        let second = {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.register("dev".into()).await })
        };
        kicked.cancelled().await;
        drop(first);
        let second = second.await.unwrap();
        assert!(second.took_over);
        assert!(!second.kicked.is_cancelled());
    }

    #[tokio::test]
    async fn reconnecting_cancels_a_pending_will() {
        let sessions = Sessions::default();
        let (_, will) = sessions.will_pending("dev".into());
        let _again = sessions.register("dev".into()).await;
        assert!(will.is_cancelled());
    }
}
