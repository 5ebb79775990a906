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

use super::codec::Version;
use super::subscriptions::Subscriptions;
use crate::events;
use crate::router::{self, EmbeddedRouter};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};

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
    expiring_sessions: Timers,
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
        {
            let mut inner = self.lock();
            inner.pending_wills.cancel(&client_id);
            inner.expiring_sessions.cancel(&client_id);
        }
        self.register_quietly(client_id).await
    }

    /// Registers without touching the client's timers (for the session expiry
    /// itself, which must not cancel a will still waiting).
    async fn register_quietly(&self, client_id: Arc<str>) -> Registration {
        let previous = {
            let inner = self.lock();
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
        let mut inner = self.lock();
        inner.next_generation += 1;
        let id = inner.next_generation;
        (id, inner.pending_wills.start(id, client_id))
    }

    /// Forgets a delayed will once published or cancelled.
    pub fn will_done(&self, client_id: &str, id: u64) {
        self.lock().pending_wills.done(client_id, id);
    }

    /// Ends the router session of `client_id` after `after`, unless the client
    /// reconnects first.
    pub fn expire_later(&self, router: EmbeddedRouter, client_id: Arc<str>, after: Duration) {
        let (id, cancelled) = {
            let mut inner = self.lock();
            inner.next_generation += 1;
            let id = inner.next_generation;
            (id, inner.expiring_sessions.start(id, client_id.clone()))
        };
        let sessions = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = cancelled.cancelled() => return,
                () = tokio::time::sleep(after) => {}
            }
            sessions.lock().expiring_sessions.done(&client_id, id);
            // Hold the client id while the router forgets it, so a device
            // connecting meanwhile waits and finds no session.
            let registration = sessions.register_quietly(client_id.clone()).await;
            end_router_session(&router, &client_id).await;
            sessions.take_subscriptions(&client_id);
            events::SessionExpired.emit();
            drop(registration);
        });
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

/// How long a session outlives its network connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The session ends with the connection (3.1.1 clean session; MQTT 5
    /// Session Expiry Interval 0).
    AtDisconnect,
    After(Duration),
    /// 3.1.1 persistent sessions; MQTT 5 interval 0xFFFFFFFF.
    Never,
}

impl Expiry {
    /// From a CONNECT: 3.1.1 has only the clean session flag; MQTT 5 has the
    /// Session Expiry Interval (absent means 0) [MQTT-3.1.2.11.2].
    pub fn from_connect(version: Version, clean_session: bool, interval: Option<u32>) -> Expiry {
        match version {
            Version::V4 if clean_session => Expiry::AtDisconnect,
            Version::V4 => Expiry::Never,
            Version::V5 => Expiry::from_interval(interval.unwrap_or(0)),
        }
    }

    pub fn from_interval(seconds: u32) -> Expiry {
        match seconds {
            0 => Expiry::AtDisconnect,
            u32::MAX => Expiry::Never,
            seconds => Expiry::After(Duration::from_secs(u64::from(seconds))),
        }
    }
}

/// Makes the router forget everything it keeps for `client_id`: a clean-session
/// connection discards the stored state, and its disconnect stores none.
pub async fn end_router_session(router: &EmbeddedRouter, client_id: &str) {
    match router.connect(client_id.to_owned(), true).await {
        Ok(mut link) => {
            let leave = Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            };
            let _ = router::send(&mut link.tx, Packet::Disconnect(leave, None));
        }
        Err(error) => tracing::warn!(%error, client_id, "could not end a router session"),
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
