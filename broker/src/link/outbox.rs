//! What a session owes its device: messages queued for delivery and the QoS 1/2
//! messages sent and not yet acknowledged, under Tributary's own packet ids.
//!
//! The router's packet ids never reach a device: the gateway acknowledges the
//! router as soon as a message is in this outbox, and numbers deliveries itself.
//! That is what lets a session outlive its connection (and its router link): the
//! unacknowledged messages are sent again on resume with the same packet id and
//! DUP set [MQTT-4.4.0-1], PUBRELs included. It never sends a QoS 1/2 message
//! beyond the device's Receive Maximum.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use super::origin::unix_ms;
use crate::events;

use bytes::{BufMut, Bytes, BytesMut};

/// Messages a session may have queued (not yet sent) before the link stops
/// taking more from the router; while the device is away, QoS 1/2 messages past
/// this are dropped and counted.
pub const MAX_QUEUED: usize = 1000;

/// An encoded PUBLISH waiting to be sent, its packet id still to be assigned.
#[derive(Debug)]
pub struct Queued {
    pub frame: BytesMut,
    pub qos: u8,
    /// Offset of the two packet id bytes in `frame` (QoS 1/2 only).
    pub pkid_at: usize,
    /// Set when it came through a shared subscription.
    pub share: Option<Arc<Share>>,
    /// Set when it has a Message Expiry Interval (see [`Queued::expiring`]).
    pub expires: Option<Expires>,
}

/// When a queued message expires, and where its Message Expiry Interval is
/// in the frame, to be brought up to date when it is finally sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expires {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Offset of the property's four-byte value.
    pub offset: usize,
}

impl Queued {
    /// A PUBLISH `frame` already encoded at `qos`, queued as it is.
    pub fn as_encoded(frame: BytesMut, fixed_header_len: usize, qos: u8) -> Queued {
        let topic_len = u16::from_be_bytes([frame[fixed_header_len], frame[fixed_header_len + 1]]);
        Queued {
            pkid_at: fixed_header_len + 2 + usize::from(topic_len),
            frame,
            qos,
            share: None,
            expires: None,
        }
    }

    /// Notes the Message Expiry Interval of an MQTT 5 PUBLISH frame, counted
    /// from `now_ms`, so a message that waits in the outbox (for the device's
    /// Receive Maximum, or while it is away) is never sent expired, nor with
    /// an interval that no longer holds [MQTT-3.3.2-5], [MQTT-3.3.2-6].
    pub fn expiring(mut self, now_ms: u64) -> Queued {
        let start = self.pkid_at + if self.qos > 0 { 2 } else { 0 };
        let found = expiry_offset(&self.frame, start).and_then(|offset| {
            let bytes = self.frame.get(offset..offset + 4)?;
            Some((
                offset,
                u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            ))
        });
        if let Some((offset, left)) = found {
            self.expires = Some(Expires {
                at_ms: now_ms + u64::from(left) * 1000,
                offset,
            });
        }
        self
    }
}

/// Offset of the Message Expiry Interval value in the properties of an MQTT 5
/// PUBLISH that start at `start` [MQTT-3.3.2.3].
fn expiry_offset(frame: &[u8], start: usize) -> Option<usize> {
    let (len, mut at) = read_varint(frame, start)?;
    let end = at.checked_add(len)?;
    if end > frame.len() {
        return None;
    }
    while at < end {
        let (id, next) = read_varint(frame, at)?;
        at = next;
        at += match id {
            0x02 => return (at + 4 <= end).then_some(at),
            0x01 => 1,
            0x23 => 2,
            0x0B => read_varint(frame, at)?.1 - at,
            0x08 | 0x09 | 0x03 => {
                2 + usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
            }
            0x26 => {
                let key =
                    2 + usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
                let value_at = at + key;
                key + 2
                    + usize::from(u16::from_be_bytes([
                        *frame.get(value_at)?,
                        *frame.get(value_at + 1)?,
                    ]))
            }
            _ => return None,
        };
    }
    None
}

/// A variable byte integer at `at`: its value and the offset after it.
fn read_varint(frame: &[u8], at: usize) -> Option<(usize, usize)> {
    let (value, len) = tributary_wire::read_varint(frame.get(at..)?).ok()??;
    Some((value, at + len))
}

/// The shared subscription a message came through, so that another member of
/// the group can have it if this one leaves without acknowledging it.
#[derive(Debug, PartialEq, Eq)]
pub struct Share {
    /// The subscription as made: `$share/{group}/{filter}`.
    pub filter: Arc<str>,
    /// The publisher's QoS.
    pub qos: u8,
}

/// Where a sent QoS 1/2 message is in its acknowledgement flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, awaiting PUBCOMP.
    Released,
}

#[derive(Debug)]
struct InFlight {
    pkid: u16,
    qos: u8,
    stage: Stage,
    frame: Bytes,
    share: Option<Arc<Share>>,
}

/// What the device acknowledged, as the outbox saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Acked {
    /// The flow is complete (or the ack matched nothing).
    Done,
    /// A PUBREC: send PUBREL with this id.
    Release(u16),
}

#[derive(Debug, Default)]
pub struct Outbox {
    last_pkid: u16,
    queued: VecDeque<Queued>,
    in_flight: VecDeque<InFlight>,
    in_flight_ids: HashSet<u16>,
}

impl Outbox {
    pub fn queue(&mut self, queued: Queued) {
        self.queued.push_back(queued);
    }

    /// No room for more messages from the router.
    pub fn is_full(&self) -> bool {
        self.queued.len() >= MAX_QUEUED
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.in_flight.is_empty()
    }

    /// QoS 1/2 messages sent and not yet completely acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Drops the queued QoS 0 messages (a session whose device is away keeps
    /// only QoS 1/2 messages); returns how many.
    pub fn drop_qos0(&mut self) -> usize {
        let before = self.queued.len();
        self.queued.retain(|q| q.qos > 0);
        before - self.queued.len()
    }

    /// The next message to send, if `window` (the device's Receive Maximum)
    /// allows it, with its packet id assigned.
    pub fn next(&mut self, window: usize) -> Option<Bytes> {
        let Queued {
            mut frame,
            qos,
            pkid_at,
            share,
            ..
        } = loop {
            let front = self.queued.front()?;
            if front.qos > 0 && self.in_flight.len() >= window {
                return None;
            }
            let queued = self.queued.pop_front()?;
            let Some(expires) = queued.expires else {
                break queued;
            };
            let now = unix_ms(SystemTime::now());
            if now >= expires.at_ms {
                events::DeliverySkipped { reason: "expired" }.emit();
                continue;
            }
            let mut queued = queued;
            let left = u32::try_from((expires.at_ms - now).div_ceil(1000)).unwrap_or(u32::MAX);
            queued.frame[expires.offset..expires.offset + 4].copy_from_slice(&left.to_be_bytes());
            break queued;
        };
        if qos == 0 {
            return Some(frame.freeze());
        }
        let pkid = self.next_pkid();
        frame[pkid_at..pkid_at + 2].copy_from_slice(&pkid.to_be_bytes());
        let frame = frame.freeze();
        self.in_flight_ids.insert(pkid);
        self.in_flight.push_back(InFlight {
            pkid,
            qos,
            stage: Stage::Published,
            frame: frame.clone(),
            share,
        });
        Some(frame)
    }

    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.in_flight_ids.contains(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    /// PUBACK for a QoS 1 message; false if none awaits it.
    pub fn puback(&mut self, pkid: u16) -> bool {
        self.remove(pkid, 1, Stage::Published)
    }

    /// PUBREC for a QoS 2 message. A failure reason code ends the flow
    /// [MQTT-4.3.3]; success moves it on to PUBREL.
    pub fn pubrec(&mut self, pkid: u16, success: bool) -> Acked {
        if !success {
            self.remove(pkid, 2, Stage::Published);
            return Acked::Done;
        }
        let published = self
            .in_flight
            .iter_mut()
            .find(|m| m.pkid == pkid && m.qos == 2 && m.stage == Stage::Published);
        if let Some(message) = published {
            message.stage = Stage::Released;
            message.frame = Bytes::new();
            return Acked::Release(pkid);
        }
        if self.is_released(pkid) {
            // A PUBREC repeated after a resume: PUBREL again.
            Acked::Release(pkid)
        } else {
            Acked::Done
        }
    }

    /// PUBCOMP; false if no PUBREL awaits it.
    pub fn pubcomp(&mut self, pkid: u16) -> bool {
        self.remove(pkid, 2, Stage::Released)
    }

    fn is_released(&self, pkid: u16) -> bool {
        self.in_flight
            .iter()
            .any(|m| m.pkid == pkid && m.stage == Stage::Released)
    }

    fn remove(&mut self, pkid: u16, qos: u8, stage: Stage) -> bool {
        let Some(at) = self
            .in_flight
            .iter()
            .position(|m| m.pkid == pkid && m.qos == qos && m.stage == stage)
        else {
            return false;
        };
        self.in_flight.remove(at);
        self.in_flight_ids.remove(&pkid);
        true
    }

    /// Gives up the QoS 1/2 messages that came through shared subscriptions
    /// and that the device has not acknowledged (PUBREC counts: the device has
    /// a QoS 2 message then), as far as `hand_off` takes them (it returns
    /// whether another member did).
    pub fn hand_off_shares(&mut self, mut hand_off: impl FnMut(&Share, &[u8]) -> bool) -> usize {
        let before = self.queued.len() + self.in_flight.len();
        self.queued.retain(|q| match &q.share {
            Some(share) if q.qos > 0 => !hand_off(share, &q.frame),
            _ => true,
        });
        let ids = &mut self.in_flight_ids;
        self.in_flight.retain(|m| match &m.share {
            Some(share) if m.stage == Stage::Published && hand_off(share, &m.frame) => {
                ids.remove(&m.pkid);
                false
            }
            _ => true,
        });
        before - self.queued.len() - self.in_flight.len()
    }

    /// Everything the device had not acknowledged when its last connection
    /// ended, in the original order: PUBLISH again with DUP set, or PUBREL
    /// (`encode_pubrel` writes one for a packet id) [MQTT-4.4.0-1].
    pub fn resend(&self, out: &mut BytesMut, encode_pubrel: impl Fn(u16, &mut BytesMut)) {
        for message in &self.in_flight {
            match message.stage {
                Stage::Published => {
                    let at = out.len();
                    out.extend_from_slice(&message.frame);
                    out[at] |= DUP;
                }
                Stage::Released => encode_pubrel(message.pkid, out),
            }
        }
    }
}

/// The DUP flag of a PUBLISH's first byte.
const DUP: u8 = 0b1000;

/// A PUBLISH `frame` (as encoded for the router's QoS) re-encoded at `qos` with
/// `retain`, DUP clear, and room for a packet id when `qos` > 0.
pub fn reencode(frame: &[u8], fixed_header_len: usize, qos: u8, retain: bool) -> Queued {
    let old_qos = (frame[0] >> 1) & 0b11;
    let body = &frame[fixed_header_len..];
    let topic_end = 2 + usize::from(u16::from_be_bytes([body[0], body[1]]));
    let rest = if old_qos > 0 {
        &body[topic_end + 2..]
    } else {
        &body[topic_end..]
    };
    let id_len = if qos > 0 { 2 } else { 0 };
    let remaining = topic_end + id_len + rest.len();
    let mut out = BytesMut::with_capacity(5 + remaining);
    out.put_u8((frame[0] & 0xf0) | (qos << 1) | u8::from(retain));
    tributary_wire::write_varint(remaining, &mut out);
    out.extend_from_slice(&body[..topic_end]);
    let pkid_at = out.len();
    if qos > 0 {
        out.put_u16(0);
    }
    out.extend_from_slice(rest);
    Queued {
        frame: out,
        qos,
        pkid_at,
        share: None,
        expires: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // QoS 1 from the router, topic "a/b", router pkid 0x0102, payload "hi".
    const FRAME: [u8; 11] = [0x32, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'h', b'i'];

    fn pubrel(pkid: u16, out: &mut BytesMut) {
        out.extend_from_slice(&[0x62, 2]);
        out.put_u16(pkid);
    }

    #[test]
    fn reencoding_changes_qos_and_makes_room_for_an_id() {
        let q0 = reencode(&FRAME, 2, 0, false);
        assert_eq!(
            &q0.frame[..],
            &[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i']
        );
        let q2 = reencode(&q0.frame, 2, 2, true);
        assert_eq!(
            &q2.frame[..],
            &[0x35, 9, 0, 3, b'a', b'/', b'b', 0, 0, b'h', b'i']
        );
        assert_eq!(q2.pkid_at, 7);
    }

    #[test]
    fn the_window_holds_back_qos1_but_not_qos0() {
        let mut outbox = Outbox::default();
        outbox.queue(reencode(&FRAME, 2, 1, false));
        outbox.queue(reencode(&FRAME, 2, 1, false));
        let first = outbox.next(1).unwrap();
        assert_eq!(&first[7..9], &[0, 1], "our own id, not the router's");
        assert!(outbox.next(1).is_none(), "window of 1 is full");
        assert!(outbox.puback(1));
        assert!(!outbox.puback(1), "already acknowledged");
        assert_eq!(&outbox.next(1).unwrap()[7..9], &[0, 2]);
        outbox.queue(reencode(&FRAME, 2, 0, false));
        assert!(outbox.next(1).is_some(), "QoS 0 needs no window");
    }

    #[test]
    fn unacknowledged_messages_are_resent_with_dup_and_pubrels_repeated() {
        let mut outbox = Outbox::default();
        for qos in [1, 2, 2] {
            outbox.queue(reencode(&FRAME, 2, qos, false));
            outbox.next(10).unwrap();
        }
        assert_eq!(outbox.pubrec(3, true), Acked::Release(3));
        let mut out = BytesMut::new();
        outbox.resend(&mut out, pubrel);
        assert_eq!(out[0], 0x3a, "QoS 1 with DUP");
        assert_eq!(&out[7..9], &[0, 1]);
        assert_eq!(out[11], 0x3c, "QoS 2 with DUP");
        assert_eq!(&out[18..20], &[0, 2]);
        assert_eq!(&out[22..], &[0x62, 2, 0, 3]);
        assert!(outbox.pubcomp(3));
        assert_eq!(outbox.in_flight(), 2);
    }

    #[test]
    fn ids_in_flight_are_never_reused() {
        let mut outbox = Outbox::default();
        outbox.queue(reencode(&FRAME, 2, 1, false));
        outbox.next(usize::MAX).unwrap(); // id 1 stays in flight
        for _ in 0..u16::MAX {
            outbox.queue(reencode(&FRAME, 2, 1, false));
            let frame = outbox.next(usize::MAX).unwrap();
            let pkid = u16::from_be_bytes([frame[7], frame[8]]);
            assert_ne!(pkid, 0);
            assert!(outbox.puback(pkid) && pkid != 1);
        }
        assert_eq!(outbox.in_flight(), 1);
    }

    #[test]
    fn a_queued_message_is_sent_with_the_expiry_it_has_left_or_not_at_all() {
        use rumqttd::protocol::{Packet, Publish, PublishProperties};

        let properties = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(10),
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        };
        let mut encoded = BytesMut::new();
        crate::link::codec::Version::V5
            .encode(
                Packet::Publish(Publish::new("a/b", "hi", false), Some(properties)),
                &mut encoded,
            )
            .unwrap();
        let queued = reencode(&encoded, 2, 1, false).expiring(1_000_000);
        let expires = queued.expires.expect("found the interval");
        assert_eq!(expires.at_ms, 1_010_000);
        assert_eq!(
            &queued.frame[expires.offset..expires.offset + 4],
            &[0, 0, 0, 10]
        );

        let mut outbox = Outbox::default();
        let now = unix_ms(SystemTime::now());
        let mut fresh = reencode(&encoded, 2, 1, false).expiring(now - 4_000);
        let offset = fresh.expires.unwrap().offset;
        outbox.queue(fresh);
        fresh = reencode(&encoded, 2, 1, false).expiring(now - 11_000);
        outbox.queue(fresh);
        let sent = outbox.next(10).expect("the first has 6 s left");
        assert_eq!(&sent[offset..offset + 4], &[0, 0, 0, 6]);
        assert!(outbox.next(10).is_none(), "the second has expired");
        assert_eq!(outbox.in_flight(), 1, "only the first was sent");
    }
}
