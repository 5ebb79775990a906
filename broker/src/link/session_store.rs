//! The sessions kept while their devices are away.
//!
//! A stored session waits here until its device returns or it expires (one
//! reaper task ends them all, in deadline order). It keeps its router link
//! only while it has plain subscriptions: the router then goes on routing to
//! it, and a task of its own queues the QoS 1/2 messages in the session's
//! outbox. Without them nothing of it is left in the router. The same task
//! takes what Kafka sources deliver to the session's mailbox, while its
//! outbox has room. An expired session is gone entirely, and its memory
//! returns.
//!
//! Kept behind this small interface (park, take, expiry) so that it can later
//! be backed by a compacted Kafka topic for several nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use rumqttd::protocol::{Packet, PubComp, PubCompReason};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};

use super::codec::Version;
use super::directory::{next_letter, Letter};
use super::registry::shrink;
use super::session::Session;
use crate::auth::Identity;
use crate::events;
use crate::router::{FromRouter, RouterGone, RouterLink};

/// The longest single wait given to the expiry timer wheel, well below its
/// limit (about 2.2 years): longer intervals are re-armed when it fires.
const MAX_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Default)]
struct Inner {
    next_generation: u64,
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
    /// A task queues what the router sends it and what Kafka sources
    /// deliver; cancelling `take` hands the session back.
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

/// The stored sessions, shared by every link.
#[derive(Clone, Default)]
pub struct SessionStore {
    inner: Arc<Mutex<Inner>>,
}

impl SessionStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `parked` until its device returns ([`SessionStore::take`]) or, after
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
            _ if parked.router.is_some() || parked.session.mailbox.is_some() => {
                let take = CancellationToken::new();
                let task = tokio::spawn(route(parked, take.clone()));
                Keeper::Routing { take, task }
            }
            _ if parked.session.is_empty() => Keeper::Empty(parked.session.version),
            _ => Keeper::Waiting(Box::new(parked)),
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
async fn reap(sessions: SessionStore) {
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
            // Its identity is the resuming connection's (set at CONNECT).
            Keeper::Empty(version) => Some(Parked {
                session: Session::new(client_id, version, Arc::new(Identity::unrestricted())),
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
    /// What a stored session heard.
    enum Heard {
        Router(Result<FromRouter, RouterGone>),
        Letter(Letter),
    }
    loop {
        // Letters from Kafka sources only while the outbox has room: the
        // rest waits with the source, never dropped.
        let room = !parked.session.outbox.is_full();
        let Parked { session, router } = &mut parked;
        let heard = tokio::select! {
            () = take.cancelled() => return parked,
            said = next_from(router.as_mut()) => Heard::Router(said),
            letter = next_letter(session.mailbox.as_mut()), if room => Heard::Letter(letter),
        };
        let handled = match heard {
            Heard::Router(Ok(said)) => handle_router(&mut parked, said).await,
            Heard::Router(Err(gone)) => Err(gone),
            Heard::Letter(letter) => {
                parked.session.accept_letter(letter, false);
                Ok(())
            }
        };
        if let Err(error) = handled {
            tracing::warn!(%error, "a stored session lost its router link");
            parked.router = None;
        }
    }
}

/// What the router says next; pending without a router link.
async fn next_from(router: Option<&mut RouterLink>) -> Result<FromRouter, RouterGone> {
    match router {
        Some(router) => router.next().await,
        None => std::future::pending().await,
    }
}

/// What a stored session does with what the router says: queue messages and
/// acknowledge them; nothing goes to a device.
async fn handle_router(parked: &mut Parked, said: FromRouter) -> Result<(), RouterGone> {
    let Some(router) = parked.router.as_mut() else {
        return Ok(());
    };
    let reply = match said {
        FromRouter::Forward {
            publish,
            properties,
        } => parked
            .session
            .accept(publish, properties.map(|p| *p), false),
        FromRouter::PubRel { pkid } => Some(Packet::PubComp(
            PubComp {
                pkid,
                reason: PubCompReason::Success,
            },
            None,
        )),
        FromRouter::Unschedule => {
            router.wake().await?;
            None
        }
        FromRouter::Disconnect => return Err(RouterGone),
        FromRouter::SubAck(_) | FromRouter::Ack(_) | FromRouter::Nothing => None,
    };
    if let Some(reply) = reply {
        router.send(vec![reply])?;
    }
    Ok(())
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
