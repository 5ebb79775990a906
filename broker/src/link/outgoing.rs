//! Delivering the router's messages to the device the way MQTT requires.
//!
//! The router forwards every message at the subscription's QoS and forgets the
//! publisher's QoS, retain flag, origin and arrival time. The gateway carries
//! those through the router in a private user property ([`Origin`]) that it
//! strips on the way out, and here decides each delivery: its QoS
//! (min(publish, subscription)), its retain flag, its remaining expiry, or that
//! it must not be sent at all (No Local, expired, too large for the client).
//!
//! When the device gets less than the router sent (a lower QoS, or nothing), the
//! gateway answers the router's acknowledgement flow itself. The router accepts
//! acknowledgements only in the order it sent the messages, so every answer, the
//! device's and the gateway's own, goes through one ordered [`Ledger`].

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PublishProperties,
};

/// Key of the private user property that carries a message's origin through the
/// router. Removed from every incoming publish (no device can forge it) and from
/// every outgoing one.
pub const ORIGIN_PROPERTY: &str = "tributary-origin";

/// What the router does not keep about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub qos: u8,
    pub retain: bool,
    /// When Tributary received it, in milliseconds since the Unix epoch.
    pub received_ms: u64,
    pub client_id: String,
}

impl Origin {
    pub fn now(qos: u8, retain: bool, client_id: &str) -> Origin {
        Origin {
            qos,
            retain,
            received_ms: unix_ms(SystemTime::now()),
            client_id: client_id.to_owned(),
        }
    }

    fn encode(&self) -> String {
        format!(
            "{}{}|{}|{}",
            self.qos,
            u8::from(self.retain),
            self.received_ms,
            self.client_id
        )
    }

    fn decode(value: &str) -> Option<Origin> {
        let (flags, rest) = value.split_once('|')?;
        let (received, client_id) = rest.split_once('|')?;
        let flags = flags.as_bytes();
        if flags.len() != 2 {
            return None;
        }
        Some(Origin {
            qos: flags[0].checked_sub(b'0').filter(|q| *q <= 2)?,
            retain: flags[1] == b'1',
            received_ms: received.parse().ok()?,
            client_id: client_id.to_owned(),
        })
    }

    /// Attaches this origin to `properties`, replacing any forged one.
    pub fn attach(&self, properties: Option<PublishProperties>) -> Option<PublishProperties> {
        let mut properties = properties.unwrap_or_default();
        properties
            .user_properties
            .retain(|(key, _)| key != ORIGIN_PROPERTY);
        properties
            .user_properties
            .push((ORIGIN_PROPERTY.to_owned(), self.encode()));
        Some(properties)
    }

    /// Removes the origin from `properties` and returns it.
    pub fn detach(properties: &mut Option<PublishProperties>) -> Option<Origin> {
        let props = properties.as_mut()?;
        let at = props
            .user_properties
            .iter()
            .position(|(key, _)| key == ORIGIN_PROPERTY)?;
        let (_, value) = props.user_properties.remove(at);
        if *props == PublishProperties::default() {
            *properties = None;
        }
        Origin::decode(&value)
    }

    /// The Message Expiry Interval left, `Some(0)` meaning expired, `None` when
    /// the message does not expire.
    pub fn remaining_expiry(&self, interval: Option<u32>, now: SystemTime) -> Option<u32> {
        let interval = interval?;
        let waited = unix_ms(now).saturating_sub(self.received_ms) / 1000;
        Some(u32::try_from(u64::from(interval).saturating_sub(waited)).unwrap_or(0))
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Rewrites an encoded PUBLISH `frame` to `qos` and `retain`. Lowering to QoS 0
/// drops the packet identifier (and shortens the remaining length).
pub fn rewrite_publish(frame: &[u8], fixed_header_len: usize, qos: u8, retain: bool) -> BytesMut {
    let old_qos = (frame[0] >> 1) & 0b11;
    // DUP means nothing at QoS 0 [MQTT-3.3.1-2].
    let dup = if qos > 0 { frame[0] & 0b1000 } else { 0 };
    let byte1 = (frame[0] & 0b1111_0000) | dup | (qos << 1) | u8::from(retain);
    let body = &frame[fixed_header_len..];
    if old_qos > 0 && qos == 0 {
        let topic_end = 2 + usize::from(u16::from_be_bytes([body[0], body[1]]));
        let remaining = body.len() - 2;
        let mut out = BytesMut::with_capacity(frame.len());
        out.put_u8(byte1);
        put_remaining_length(&mut out, remaining);
        out.extend_from_slice(&body[..topic_end]);
        out.extend_from_slice(&body[topic_end + 2..]);
        out
    } else {
        let mut out = BytesMut::from(frame);
        out[0] = byte1;
        out
    }
}

fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

/// One message the router sent with QoS > 0, awaiting its acknowledgement.
#[derive(Debug)]
struct AckEntry {
    pkid: u16,
    router_qos: u8,
    delivered_qos: u8,
    /// The device acknowledged (or there is nothing for it to acknowledge).
    done: bool,
}

/// One QoS 2 message past PUBREC, awaiting PUBCOMP towards the router.
#[derive(Debug)]
struct CompEntry {
    pkid: u16,
    /// The device runs the PUBREL/PUBCOMP exchange; else the gateway does.
    by_device: bool,
    done: bool,
}

/// The ordered acknowledgements owed to the router for one connection.
#[derive(Debug, Default)]
pub struct Ledger {
    acks: VecDeque<AckEntry>,
    comps: VecDeque<CompEntry>,
}

impl Ledger {
    /// Records a message the router sent at `router_qos` (> 0) and the device
    /// gets at `delivered_qos` (0 when not delivered at all).
    pub fn forwarded(&mut self, pkid: u16, router_qos: u8, delivered_qos: u8) {
        self.acks.push_back(AckEntry {
            pkid,
            router_qos,
            delivered_qos,
            done: delivered_qos == 0,
        });
    }

    /// The device's PUBACK (`qos` 1) or PUBREC (`qos` 2); false if it matches
    /// nothing the device is expected to acknowledge that way.
    pub fn device_acked(&mut self, pkid: u16, qos: u8) -> bool {
        match self
            .acks
            .iter_mut()
            .find(|e| e.pkid == pkid && !e.done && e.delivered_qos == qos)
        {
            Some(entry) => {
                entry.done = true;
                true
            }
            None => false,
        }
    }

    /// The router's PUBREL for `pkid`: true when it goes on to the device,
    /// false when the gateway completes it itself.
    pub fn router_released(&mut self, pkid: u16) -> bool {
        match self.comps.iter_mut().find(|e| e.pkid == pkid && !e.done) {
            Some(entry) if entry.by_device => true,
            Some(entry) => {
                entry.done = true;
                false
            }
            None => {
                // From a session the router resumed: the device has it.
                self.comps.push_back(CompEntry {
                    pkid,
                    by_device: true,
                    done: false,
                });
                true
            }
        }
    }

    /// The device's PUBCOMP; false if nothing awaits it.
    pub fn device_completed(&mut self, pkid: u16) -> bool {
        match self
            .comps
            .iter_mut()
            .find(|e| e.pkid == pkid && e.by_device && !e.done)
        {
            Some(entry) => {
                entry.done = true;
                true
            }
            None => false,
        }
    }

    /// The acknowledgements now due to the router, in its order.
    pub fn due(&mut self) -> Vec<Packet> {
        let mut due = Vec::new();
        while self.acks.front().is_some_and(|e| e.done) {
            let entry = self.acks.pop_front().expect("front exists");
            if entry.router_qos == 1 {
                due.push(Packet::PubAck(
                    PubAck {
                        pkid: entry.pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                ));
            } else {
                due.push(Packet::PubRec(
                    PubRec {
                        pkid: entry.pkid,
                        reason: PubRecReason::Success,
                    },
                    None,
                ));
                self.comps.push_back(CompEntry {
                    pkid: entry.pkid,
                    by_device: entry.delivered_qos == 2,
                    done: false,
                });
            }
        }
        while self.comps.front().is_some_and(|e| e.done) {
            let entry = self.comps.pop_front().expect("front exists");
            due.push(Packet::PubComp(
                PubComp {
                    pkid: entry.pkid,
                    reason: PubCompReason::Success,
                },
                None,
            ));
        }
        due
    }

    /// QoS 1/2 messages the device holds unacknowledged (its Receive Maximum
    /// counts these, PUBREL phase included).
    pub fn device_in_flight(&self) -> usize {
        self.acks
            .iter()
            .filter(|e| e.delivered_qos > 0 && !e.done)
            .count()
            + self.comps.iter().filter(|e| e.by_device && !e.done).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(packets: &[Packet]) -> Vec<String> {
        packets
            .iter()
            .map(|p| match p {
                Packet::PubAck(a, _) => format!("puback {}", a.pkid),
                Packet::PubRec(a, _) => format!("pubrec {}", a.pkid),
                Packet::PubComp(a, _) => format!("pubcomp {}", a.pkid),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn self_acks_wait_behind_the_devices_in_router_order() {
        let mut ledger = Ledger::default();
        ledger.forwarded(1, 1, 1); // delivered as sent
        ledger.forwarded(2, 1, 0); // downgraded: the gateway acks
        assert!(ledger.due().is_empty(), "2 must not overtake 1");
        assert_eq!(ledger.device_in_flight(), 1);
        assert!(ledger.device_acked(1, 1));
        assert_eq!(kinds(&ledger.due()), ["puback 1", "puback 2"]);
        assert_eq!(ledger.device_in_flight(), 0);
    }

    #[test]
    fn qos2_downgraded_to_qos1_completes_the_router_flow_itself() {
        let mut ledger = Ledger::default();
        ledger.forwarded(7, 2, 1);
        assert!(
            !ledger.device_acked(7, 2),
            "a PUBREC is not the expected ack"
        );
        assert!(ledger.device_acked(7, 1));
        assert_eq!(kinds(&ledger.due()), ["pubrec 7"]);
        assert!(
            !ledger.router_released(7),
            "the device never sees the PUBREL"
        );
        assert_eq!(kinds(&ledger.due()), ["pubcomp 7"]);
    }

    #[test]
    fn qos2_delivered_as_qos2_runs_through_the_device() {
        let mut ledger = Ledger::default();
        ledger.forwarded(3, 2, 2);
        ledger.forwarded(4, 2, 0);
        assert!(ledger.device_acked(3, 2));
        assert_eq!(kinds(&ledger.due()), ["pubrec 3", "pubrec 4"]);
        assert!(ledger.router_released(3));
        assert!(!ledger.router_released(4));
        assert!(ledger.due().is_empty(), "pubcomp 4 waits behind 3");
        assert!(ledger.device_completed(3));
        assert_eq!(kinds(&ledger.due()), ["pubcomp 3", "pubcomp 4"]);
    }

    #[test]
    fn unknown_acks_are_refused() {
        let mut ledger = Ledger::default();
        assert!(!ledger.device_acked(9, 1));
        assert!(!ledger.device_completed(9));
    }

    #[test]
    fn origin_round_trips_and_leaves_other_properties_alone() {
        let origin = Origin {
            qos: 1,
            retain: true,
            received_ms: 1_700_000_000_123,
            client_id: "dev|42".into(),
        };
        let user = ("k".to_owned(), "v".to_owned());
        let forged = (ORIGIN_PROPERTY.to_owned(), "21|0|evil".to_owned());
        let mut props = origin.attach(Some(PublishProperties {
            user_properties: vec![user.clone(), forged],
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        }));
        assert_eq!(Origin::detach(&mut props), Some(origin));
        let props = props.unwrap();
        assert_eq!(props.user_properties, [user]);
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));

        let mut bare = Origin::now(0, false, "x").attach(None);
        assert!(Origin::detach(&mut bare).is_some());
        assert_eq!(bare, None, "nothing left behind");
    }

    #[test]
    fn expiry_counts_down_from_arrival() {
        let origin = Origin {
            qos: 0,
            retain: false,
            received_ms: 10_000,
            client_id: String::new(),
        };
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(origin.remaining_expiry(None, at(99_000)), None);
        assert_eq!(origin.remaining_expiry(Some(60), at(10_500)), Some(60));
        assert_eq!(origin.remaining_expiry(Some(60), at(40_000)), Some(30));
        assert_eq!(origin.remaining_expiry(Some(60), at(90_000)), Some(0));
    }

    #[test]
    fn rewriting_to_qos0_drops_the_packet_id() {
        // QoS 1, DUP, topic "a/b", pkid 0x0102, payload "hi".
        let frame = [0x3a, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'h', b'i'];
        let out = rewrite_publish(&frame, 2, 0, false);
        assert_eq!(&out[..], &[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i']);
        let out = rewrite_publish(&frame, 2, 1, true);
        assert_eq!(out[0], 0x3b);
        assert_eq!(&out[1..], &frame[1..]);
    }
}
