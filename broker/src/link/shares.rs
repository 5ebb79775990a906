//! Shared subscriptions across connections: who is a member of which
//! `$share/{group}/{filter}` right now, and handing a message to another
//! member.
//!
//! The router picks one member per message and forgets it; when that member
//! leaves without acknowledging, the router would drop the message. The
//! leaving link hands such messages to another connected member instead
//! [MQTT-4.8.2]. Members are told apart by their registration generation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttd::protocol::PublishProperties;
use tokio::sync::mpsc::UnboundedSender;

/// A message another member of a shared subscription did not acknowledge.
#[derive(Debug)]
pub struct Handoff {
    /// The shared subscription it came through (`$share/{group}/{filter}`).
    pub filter: Arc<str>,
    /// The publisher's QoS.
    pub qos: u8,
    pub topic: Bytes,
    pub payload: Bytes,
    /// Boxed: a hand-off that finds no member comes back by value.
    pub properties: Option<Box<PublishProperties>>,
}

struct Member {
    id: u64,
    tx: UnboundedSender<Handoff>,
}

#[derive(Default)]
struct Groups {
    by_filter: HashMap<Arc<str>, Vec<Member>>,
    /// Turns through the members, so hand-offs spread over them.
    turn: usize,
}

/// The connected members of every shared subscription.
#[derive(Default)]
pub struct Shares {
    groups: Mutex<Groups>,
}

impl Shares {
    fn lock(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Member `id` has the shared subscription `filter`; hand-offs reach it
    /// through `tx`.
    pub fn join(&self, filter: &str, id: u64, tx: UnboundedSender<Handoff>) {
        let mut groups = self.lock();
        let members = groups.by_filter.entry(filter.into()).or_default();
        if !members.iter().any(|m| m.id == id) {
            members.push(Member { id, tx });
        }
    }

    /// Member `id` no longer has `filter`.
    pub fn leave(&self, filter: &str, id: u64) {
        let mut groups = self.lock();
        if let Some(members) = groups.by_filter.get_mut(filter) {
            members.retain(|m| m.id != id);
            if members.is_empty() {
                groups.by_filter.remove(filter);
            }
        }
    }

    /// Gives `handoff` to a member of its subscription other than `except`;
    /// back if there is none.
    pub fn hand_off(&self, mut handoff: Handoff, except: u64) -> Result<(), Handoff> {
        let mut groups = self.lock();
        groups.turn = groups.turn.wrapping_add(1);
        let turn = groups.turn;
        let Some(members) = groups.by_filter.get_mut(&handoff.filter) else {
            return Err(handoff);
        };
        // A member whose channel is closed is leaving: try the next.
        members.retain(|m| !m.tx.is_closed());
        let candidates: Vec<_> = members.iter().filter(|m| m.id != except).collect();
        for offset in 0..candidates.len() {
            let member = candidates[(turn + offset) % candidates.len()];
            match member.tx.send(handoff) {
                Ok(()) => return Ok(()),
                Err(returned) => handoff = returned.0,
            }
        }
        Err(handoff)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::unbounded_channel;

    use super::*;

    fn handoff(filter: &str) -> Handoff {
        Handoff {
            filter: filter.into(),
            qos: 1,
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from_static(b"p"),
            properties: None,
        }
    }

    #[test]
    fn goes_to_another_member_never_back_to_the_leaver() {
        let shares = Shares::default();
        let (a_tx, mut a_rx) = unbounded_channel();
        let (b_tx, mut b_rx) = unbounded_channel();
        shares.join("$share/g/t", 1, a_tx);
        shares.join("$share/g/t", 2, b_tx);
        for _ in 0..3 {
            shares.hand_off(handoff("$share/g/t"), 1).unwrap();
        }
        assert!(a_rx.try_recv().is_err());
        assert_eq!(std::iter::from_fn(|| b_rx.try_recv().ok()).count(), 3);
        assert!(
            shares.hand_off(handoff("$share/h/t"), 1).is_err(),
            "no such group"
        );
        shares.leave("$share/g/t", 2);
        assert!(
            shares.hand_off(handoff("$share/g/t"), 1).is_err(),
            "no one else"
        );
    }

    #[test]
    fn a_closed_member_is_skipped() {
        let shares = Shares::default();
        let (a_tx, a_rx) = unbounded_channel();
        let (b_tx, mut b_rx) = unbounded_channel();
        shares.join("$share/g/t", 1, a_tx);
        shares.join("$share/g/t", 2, b_tx);
        drop(a_rx);
        for _ in 0..2 {
            shares.hand_off(handoff("$share/g/t"), 3).unwrap();
        }
        assert_eq!(std::iter::from_fn(|| b_rx.try_recv().ok()).count(), 2);
    }
}
