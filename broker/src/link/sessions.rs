//! Which client ids are connected, the sessions kept while their devices are
//! away, and delayed wills.
//!
//! A new connection with a client id already in use takes over: the old link is
//! told to close (MQTT 5: DISCONNECT 0x8E) and the new one waits until the old
//! has stored its session. A reconnecting client also cancels its own delayed
//! will.
//!
//! A stored session waits in the registry until its device returns or it
//! expires (one reaper task ends them all, in deadline order). It keeps its
//! router link only while it has plain subscriptions: the router then goes on
//! routing to it, and a task of its own queues the QoS 1/2 messages in the
//! session's outbox. Without them nothing of it is left in the router. An
//! expired session is gone entirely, and its memory returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use rumqttd::protocol::{Packet, PubComp, PubCompReason};
use rumqttd::Notification;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};

use super::codec::Version;
use super::session::Session;
use crate::events;
use crate::router::{self, RouterGone, RouterLink};

/// The longest single wait given to the expiry timer wheel, well below its
/// limit (about 2.2 years): longer intervals are re-armed when it fires.
const MAX_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);

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
    /// Sessions whose devices are away.
    stored: HashMap<Arc<str>, Stored>,
    /// When each stored session expires: client id and generation.
    expiries: DelayQueue<(Arc<str>, u64)>,
    reaper_started: bool,
}

struct Stored {
    generation: u64,
    /// Its place in [`Inner::expiries`], unless it never expires.
    expires: Option<delay_queue::Key>,
    /// When it expires. The timer wheel reaches only [`MAX_TIMER`] ahead, so a
    /// longer interval (MQTT 5 allows 136 years) is waited for in steps.
    deadline: Option<tokio::time::Instant>,
    keeper: Keeper,
}

enum Keeper {
    /// Nothing routes to the session: it waits here, a few hundred bytes
    /// (boxed, so the registry's empty slots stay small).
    Waiting(Box<Parked>),
    /// No subscriptions, nothing owed: only that the session exists (for
    /// Session Present) is kept. Most devices that only publish are this.
    Empty(Version),
    /// A task queues what the router sends it; cancelling `take` hands the
    /// session back.
    Routing {
        take: CancellationToken,
        task: JoinHandle<Parked>,
    },
}

/// A session whose device is away.
pub struct Parked {
    pub session: Session,
    /// Held while the session has subscriptions the router must keep routing.
    pub router: Option<RouterLink>,
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

    /// Keeps `parked` until its device returns ([`Sessions::take`]) or, after
    /// `expiry` (`None`: never), it expires.
    pub fn park(&self, parked: Parked, expiry: Option<Duration>) {
        let client_id = parked.session.client_id.clone();
        let mut inner = self.lock();
        if !inner.reaper_started {
            inner.reaper_started = true;
            tokio::spawn(reap(self.clone()));
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let now = tokio::time::Instant::now();
        // `checked_add`: an interval near u32::MAX seconds is far away, never
        // an overflow.
        let deadline = expiry.and_then(|after| now.checked_add(after));
        let expires = expiry.map(|after| {
            inner
                .expiries
                .insert((client_id.clone(), generation), after.min(MAX_TIMER))
        });
        let keeper = match parked.router {
            Some(_) => {
                let take = CancellationToken::new();
                let task = tokio::spawn(route(parked, take.clone()));
                Keeper::Routing { take, task }
            }
            None if parked.session.is_empty() => Keeper::Empty(parked.session.version),
            None => Keeper::Waiting(Box::new(parked)),
        };
        let stored = Stored {
            generation,
            expires,
            deadline,
            keeper,
        };
        if let Some(older) = inner.stored.insert(client_id, stored) {
            // Two connections for one client id never both store a session
            // (takeover waits), but should it happen the newer one wins.
            if let Some(key) = older.expires {
                inner.expiries.try_remove(&key);
            }
            tokio::spawn(older.keeper.end());
        }
    }

    /// The stored session of `client_id`, handed back to its returning device.
    pub async fn take(&self, client_id: &str) -> Option<Parked> {
        let stored = {
            let mut inner = self.lock();
            let (client_id, stored) = inner.stored.remove_entry(client_id)?;
            if let Some(key) = stored.expires {
                inner.expiries.try_remove(&key);
            }
            inner.shrink();
            (client_id, stored)
        };
        let (client_id, stored) = stored;
        stored.keeper.take(client_id).await
    }

    /// Ends the stored session `client_id` if it is still the one that
    /// expired (not taken back, not replaced, meanwhile). A deadline beyond
    /// the timer's reach is re-armed for the time it has left.
    async fn expire(&self, client_id: Arc<str>, generation: u64) {
        let stored = {
            let mut inner = self.lock();
            let Some(stored) = inner
                .stored
                .get(&client_id)
                .filter(|s| s.generation == generation)
            else {
                return;
            };
            let now = tokio::time::Instant::now();
            let left = match stored.deadline {
                Some(deadline) => deadline.saturating_duration_since(now),
                // Past `Instant`'s range: as good as never.
                None => MAX_TIMER,
            };
            if !left.is_zero() {
                let key = inner
                    .expiries
                    .insert((client_id.clone(), generation), left.min(MAX_TIMER));
                if let Some(stored) = inner.stored.get_mut(&client_id) {
                    stored.expires = Some(key);
                }
                return;
            }
            let stored = inner.stored.remove(&client_id);
            inner.shrink();
            stored
        };
        if let Some(stored) = stored {
            stored.keeper.end().await;
            events::SessionExpired.emit();
        }
    }
}

impl Inner {
    /// Gives memory back once the stored sessions have shrunk well below what
    /// was allocated for them (a burst of client ids must not hold memory).
    fn shrink(&mut self) {
        shrink(&mut self.stored);
        if self.expiries.capacity() > 64 && self.expiries.len() < self.expiries.capacity() / 4 {
            self.expiries.shrink_to_fit();
        }
    }
}

/// Ends stored sessions as they expire: one task for all of them.
async fn reap(sessions: Sessions) {
    loop {
        let expired = std::future::poll_fn(|cx| {
            match sessions.lock().expiries.poll_expired(cx) {
                Poll::Ready(Some(expired)) => Poll::Ready(expired.into_inner()),
                // Empty: the queue wakes this task at its next insert.
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let (client_id, generation) = expired;
        sessions.expire(client_id, generation).await;
    }
}

impl Keeper {
    async fn take(self, client_id: Arc<str>) -> Option<Parked> {
        match self {
            Keeper::Waiting(parked) => Some(*parked),
            Keeper::Empty(version) => Some(Parked {
                session: Session::new(client_id, version),
                router: None,
            }),
            Keeper::Routing { take, task } => {
                take.cancel();
                task.await.ok()
            }
        }
    }

    /// Ends the session: whatever it still held for the device is dropped.
    async fn end(self) {
        if let Keeper::Routing { take, task } = self {
            take.cancel();
            if let Ok(Parked {
                router: Some(router),
                ..
            }) = task.await
            {
                router.leave();
            }
        }
    }
}

/// A stored session's router side: queues what the router sends it until the
/// session is taken back or ends.
async fn route(mut parked: Parked, take: CancellationToken) -> Parked {
    loop {
        let Some(router) = parked.router.as_mut() else {
            take.cancelled().await;
            return parked;
        };
        let notification = tokio::select! {
            () = take.cancelled() => return parked,
            notification = router.rx.next() => notification,
        };
        let handled = match notification {
            Ok(notification) => handle_notification(&mut parked, notification).await,
            Err(_) => Err(RouterGone),
        };
        if let Err(error) = handled {
            tracing::warn!(%error, "a stored session lost its router link");
            parked.router = None;
        }
    }
}

/// What a stored session does with a router notification: queue messages and
/// acknowledge them; nothing goes to a device.
async fn handle_notification(
    parked: &mut Parked,
    notification: Option<Notification>,
) -> Result<(), RouterGone> {
    let Some(router) = parked.router.as_mut() else {
        return Ok(());
    };
    let reply = match notification {
        Some(Notification::Forward(forward)) => parked.session.accept(forward, false),
        Some(Notification::DeviceAck(ack)) => match Packet::from(ack) {
            Packet::PubRel(pubrel, _) => Some(Packet::PubComp(
                PubComp {
                    pkid: pubrel.pkid,
                    reason: PubCompReason::Success,
                },
                None,
            )),
            _ => None,
        },
        Some(Notification::Unschedule) => {
            router.rx.wake().await.map_err(|_| RouterGone)?;
            None
        }
        _ => None,
    };
    if let Some(reply) = reply {
        router::send_batch(&mut router.tx, vec![reply])?;
    }
    Ok(())
}

/// Gives memory back once a map has shrunk well below its capacity (a burst of
/// distinct client ids must not hold memory forever).
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
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
            let mut inner = self.sessions.lock();
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
