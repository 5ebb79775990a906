//! What devices send, generated: most inputs start with a valid CONNECT (3.1.1
//! or 5, every flag and property edge), then packets of every type, valid and
//! mutated; some are only noise. Client ids come from a small pool, so stored
//! sessions, resumption and takeover happen; an input of several connections
//! runs them at once under one client id.
//!
//! Only ids of the pool ever ask for a long-lived session: every other id gets
//! a session ending within a second, so millions of inputs leave bounded state.

use tributary_wire::packet;
use tributary_wire::packet_type::*;

use super::rng::Rng;
use super::wire5::{binary, prop, properties, string, user_property};

/// Client ids that may keep sessions across inputs: `fz0`..`fz{POOL-1}`.
const POOL: usize = 48;
/// Topic levels generated names and filters are made of.
const LEVELS: &[&str] = &["fuzz", "a", "b", "dev", "x", "", "sensor", "é", "a b"];
/// Filter levels that are wildcards (`#` is valid only last).
const WILDCARDS: &[&str] = &["+", "+", "#"];
/// Share group names (the empty one and `+` are invalid).
const GROUPS: &[&str] = &["g", "g2", "", "+", "#"];

/// One input: the connections a device (or devices sharing a client id) make.
pub struct Input {
    pub index: u64,
    pub connections: Vec<Connection>,
}

/// What one connection sends, in chunks with pauses between them.
pub struct Connection {
    pub chunks: Vec<Chunk>,
}

#[derive(Clone)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    /// Milliseconds to wait after writing it (most are 0).
    pub pause_ms: u64,
}

impl Connection {
    /// Everything it sends, pauses left out.
    pub fn bytes(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.bytes.clone()).collect()
    }
}

/// Input `index` under `seed`.
pub fn input(seed: u64, index: u64) -> Input {
    let mut rng = Rng::for_input(seed, index);
    let count = if rng.one_in(12) { 2 + rng.below(2) } else { 1 };
    let (client_id, keeps_session) = client_id(&mut rng, index);
    let connections = (0..count)
        .map(|_| {
            Device {
                rng: &mut rng,
                v5: false,
                pkids: Vec::new(),
                aliases: Vec::new(),
            }
            .connection(&client_id, keeps_session)
        })
        .collect();
    Input { index, connections }
}

/// A client id, and whether it may ask for a session that outlives it.
fn client_id(rng: &mut Rng, index: u64) -> (Vec<u8>, bool) {
    match rng.below(20) {
        0..=11 => (format!("fz{}", rng.below(POOL)).into_bytes(), true),
        12..=15 => (format!("u{index:x}").into_bytes(), false),
        16 | 17 => (Vec::new(), false),
        _ => {
            let weird: &[&[u8]] = &[
                b"a/b",
                b"$sys",
                b"+",
                b"#",
                b"__tributary-wills",
                b"\0",
                b"\xff\xfe",
                b"\xc3",
                "é".as_bytes(),
                b"a-client-id-well-over-the-twenty-three-characters-of-3.1.1",
            ];
            (rng.pick(weird).to_vec(), false)
        }
    }
}

/// The state a generated device keeps while it writes one connection.
struct Device<'r> {
    rng: &'r mut Rng,
    v5: bool,
    /// Packet ids it used, for acks and PUBRELs that match them.
    pkids: Vec<u16>,
    /// Topic aliases it set.
    aliases: Vec<u16>,
}

impl Device<'_> {
    fn connection(mut self, client_id: &[u8], keeps_session: bool) -> Connection {
        let mut chunks = Vec::new();
        let mut current = Vec::new();
        if self.rng.one_in(40) {
            // Noise, not MQTT.
            let len = self.rng.below(200);
            current = self.rng.bytes(len);
        } else {
            self.v5 = self.rng.one_in(2);
            let connect = self.connect(client_id, keeps_session);
            current.extend(self.maybe_mutate(connect, 12));
            let packets = if self.rng.one_in(4) {
                self.rng.below(40)
            } else {
                self.rng.below(8)
            };
            for _ in 0..packets {
                let packet = self.packet();
                current.extend(self.maybe_mutate(packet, 10));
                if self.rng.one_in(20) {
                    let pause_ms = 1 + self.rng.below(20) as u64;
                    chunks.push(Chunk {
                        bytes: std::mem::take(&mut current),
                        pause_ms,
                    });
                }
            }
            if self.rng.one_in(30) && !current.is_empty() {
                // Cut off mid-packet.
                let at = self.rng.below(current.len());
                current.truncate(at);
            }
        }
        chunks.push(Chunk {
            bytes: current,
            pause_ms: 0,
        });
        Connection { chunks }
    }

    fn connect(&mut self, client_id: &[u8], keeps_session: bool) -> Vec<u8> {
        let rng = &mut *self.rng;
        let mut body = Vec::new();
        match rng.below(40) {
            0 => string(&mut body, b"MQIsdp"),
            1 => {
                let len = rng.below(6);
                string(&mut body, &rng.bytes(len))
            }
            _ => string(&mut body, b"MQTT"),
        }
        let level = if rng.one_in(40) {
            *rng.pick(&[0, 3, 6, 255])
        } else if self.v5 {
            5
        } else {
            4
        };
        body.push(level);

        let will = rng.one_in(4);
        let user = rng.one_in(6);
        let password = rng.one_in(6);
        // A client id that is not the pool's starts clean (3.1.1) or with a
        // session expiring at once (5): see the module comment.
        let clean = !keeps_session && !self.v5 || rng.one_in(2);
        let mut flags = u8::from(clean) << 1;
        if will {
            let qos = if rng.one_in(30) {
                3
            } else {
                rng.below(3) as u8
            };
            flags |= 0x04 | qos << 3 | u8::from(rng.one_in(4)) << 5;
        }
        flags |= u8::from(password) << 6 | u8::from(user) << 7;
        if rng.one_in(50) {
            flags |= 1; // reserved
        }
        body.push(flags);
        body.extend(rng.edgy_u16().to_be_bytes());

        if self.v5 {
            let props = self.connect_properties(keeps_session);
            properties(&mut body, &props);
        }
        string(&mut body, client_id);
        if will {
            if self.v5 {
                let props = self.will_properties();
                properties(&mut body, &props);
            }
            let topic = self.topic_name();
            string(&mut body, &topic);
            let payload = self.payload();
            binary(&mut body, &payload);
        }
        if user {
            let names: &[&[u8]] = &[b"user", "é".as_bytes(), b"", b"\xff"];
            let name = *self.rng.pick(names);
            string(&mut body, name);
        }
        if password {
            let len = self.rng.below(20);
            binary(&mut body, &self.rng.bytes(len));
        }
        packet(CONNECT << 4, &body)
    }

    fn connect_properties(&mut self, keeps_session: bool) -> Vec<u8> {
        let rng = &mut *self.rng;
        let mut out = Vec::new();
        let expiry = if keeps_session {
            rng.edgy_u32()
        } else {
            rng.below(2) as u32
        };
        if keeps_session || rng.one_in(2) {
            prop(&mut out, 0x11, &expiry.to_be_bytes());
        }
        if rng.one_in(3) {
            let receive_maximum: u16 = *rng.pick(&[0, 1, 2, 10, 65535]);
            prop(&mut out, 0x21, &receive_maximum.to_be_bytes());
        }
        if rng.one_in(4) {
            let max: u32 = *rng.pick(&[0, 1, 5, 20, 64, 128, 1024, 0xffff_ffff]);
            prop(&mut out, 0x27, &max.to_be_bytes());
        }
        if rng.one_in(4) {
            prop(&mut out, 0x22, &rng.edgy_u16().to_be_bytes());
        }
        if rng.one_in(8) {
            prop(&mut out, 0x19, &[rng.below(3) as u8]);
        }
        if rng.one_in(8) {
            prop(&mut out, 0x17, &[rng.below(3) as u8]);
        }
        if rng.one_in(20) {
            let mut method = Vec::new();
            string(&mut method, b"SCRAM-SHA-1");
            prop(&mut out, 0x15, &method);
        }
        if rng.one_in(30) {
            let mut data = Vec::new();
            binary(&mut data, b"\x00\x01");
            prop(&mut out, 0x16, &data);
        }
        self.common_properties(&mut out);
        out
    }

    fn will_properties(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.rng.one_in(3) {
            prop(&mut out, 0x18, &self.rng.edgy_u32().to_be_bytes());
        }
        self.publish_like_properties(&mut out);
        self.common_properties(&mut out);
        out
    }

    /// Properties a PUBLISH and a will share.
    fn publish_like_properties(&mut self, out: &mut Vec<u8>) {
        if self.rng.one_in(5) {
            prop(out, 0x01, &[*self.rng.pick(&[0, 1, 2, 255])]);
        }
        if self.rng.one_in(5) {
            prop(out, 0x02, &self.rng.edgy_u32().to_be_bytes());
        }
        if self.rng.one_in(8) {
            let mut content = Vec::new();
            string(&mut content, b"text/plain");
            prop(out, 0x03, &content);
        }
        if self.rng.one_in(6) {
            let mut topic = Vec::new();
            let name = self.topic_name();
            string(&mut topic, &name);
            prop(out, 0x08, &topic);
        }
        if self.rng.one_in(6) {
            let mut data = Vec::new();
            let len = self.rng.below(16);
            binary(&mut data, &self.rng.bytes(len));
            prop(out, 0x09, &data);
        }
    }

    /// User properties, and now and then a property of any id.
    fn common_properties(&mut self, out: &mut Vec<u8>) {
        for _ in 0..self.rng.below(4).saturating_sub(1) {
            user_property(out, b"k", b"v");
        }
        if self.rng.one_in(15) {
            let id = self.rng.byte();
            let len = self.rng.below(6);
            prop(out, id, &self.rng.bytes(len));
        }
        if self.rng.one_in(25) && !out.is_empty() {
            // The same property twice.
            let again = out.clone();
            out.extend(again);
        }
    }

    fn packet(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..=34 => self.publish(),
            35..=46 => self.subscribe(),
            47..=51 => self.unsubscribe(),
            52..=71 => self.ack(),
            72..=76 => packet(PINGREQ << 4, &[]),
            77..=81 => self.disconnect(),
            82..=84 => self.auth(),
            85..=86 => {
                let client_id = format!("fz{}", self.rng.below(POOL)).into_bytes();
                self.connect(&client_id, true)
            }
            87..=89 => self.server_packet(),
            90..=91 => {
                let first = self.rng.byte();
                let len = self.rng.below(8);
                packet(first, &self.rng.bytes(len))
            }
            92..=94 => {
                let len = self.rng.below(30);
                self.rng.bytes(len)
            }
            95 => {
                // A remaining length of five bytes [MQTT-1.5.5].
                vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01]
            }
            96 => {
                // A header announcing more than the maximum packet size.
                let mut out = vec![0x30];
                tributary_wire::write_varint(self.rng.below(10_000_000), &mut out);
                out
            }
            _ => self.burst(),
        }
    }

    /// Many QoS 1/2 publishes in a row, each with its own packet id: past any
    /// Receive Maximum and window.
    fn burst(&mut self) -> Vec<u8> {
        let count = 1 + self.rng.below(300);
        let qos = 1 + self.rng.below(2) as u8;
        let topic = self.topic_name();
        let mut out = Vec::new();
        for pkid in 1..=count as u16 {
            let mut body = Vec::new();
            string(&mut body, &topic);
            body.extend(pkid.to_be_bytes());
            if self.v5 {
                properties(&mut body, &[]);
            }
            body.push(b'x');
            out.extend(packet(PUBLISH << 4 | qos << 1, &body));
        }
        out
    }

    fn publish(&mut self) -> Vec<u8> {
        let qos = if self.rng.one_in(40) {
            3
        } else {
            self.rng.below(3) as u8
        };
        let dup = self.rng.one_in(8);
        let retain = self.rng.one_in(5);
        let mut topic = self.topic_name();
        let mut props = Vec::new();
        if self.v5 {
            if self.rng.one_in(4) {
                let alias = self.alias();
                prop(&mut props, 0x23, &alias.to_be_bytes());
                if self.rng.one_in(2) && self.aliases.contains(&alias) {
                    topic.clear();
                } else {
                    self.aliases.push(alias);
                }
            } else if self.rng.one_in(40) {
                topic.clear(); // and no alias
            }
            self.publish_like_properties(&mut props);
            if self.rng.one_in(20) {
                // Only a server sends Subscription Identifiers.
                let mut id = Vec::new();
                tributary_wire::write_varint(self.rng.below(300), &mut id);
                prop(&mut props, 0x0b, &id);
            }
            self.common_properties(&mut props);
        }
        let mut body = Vec::new();
        string(&mut body, &topic);
        if qos > 0 {
            let pkid = self.pkid();
            body.extend(pkid.to_be_bytes());
        }
        if self.v5 {
            properties(&mut body, &props);
        }
        body.extend(self.payload());
        let first = PUBLISH << 4 | u8::from(dup) << 3 | qos << 1 | u8::from(retain);
        let mut out = packet(first, &body);
        if qos == 2 && self.rng.one_in(3) {
            // Its PUBREL at once, or the same publish again.
            let pkid = *self.pkids.last().unwrap_or(&1);
            if self.rng.one_in(3) {
                out.extend(out.clone());
            } else {
                out.extend(self.ack_packet(PUBREL, pkid));
            }
        }
        out
    }

    fn subscribe(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        let pkid = self.pkid();
        body.extend(pkid.to_be_bytes());
        if self.v5 {
            let mut props = Vec::new();
            if self.rng.one_in(3) {
                let mut id = Vec::new();
                let value = *self.rng.pick(&[0, 1, 2, 127, 128, 268_435_455]);
                tributary_wire::write_varint(value, &mut id);
                prop(&mut props, 0x0b, &id);
            }
            self.common_properties(&mut props);
            properties(&mut body, &props);
        }
        let filters = if self.rng.one_in(30) {
            0
        } else {
            1 + self.rng.below(3)
        };
        for _ in 0..filters {
            let filter = self.topic_filter();
            string(&mut body, &filter);
            let qos = if self.rng.one_in(30) {
                3
            } else {
                self.rng.below(3) as u8
            };
            let mut options = qos;
            if self.v5 || self.rng.one_in(20) {
                let no_local = self.rng.one_in(4);
                let retain_as_published = self.rng.one_in(4);
                let retain_handling = if self.rng.one_in(30) {
                    3
                } else {
                    self.rng.below(3) as u8
                };
                options |= u8::from(no_local) << 2
                    | u8::from(retain_as_published) << 3
                    | retain_handling << 4;
                if self.rng.one_in(40) {
                    options |= 0xc0; // reserved
                }
            }
            body.push(options);
        }
        packet(SUBSCRIBE << 4 | 2, &body)
    }

    fn unsubscribe(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        let pkid = self.pkid();
        body.extend(pkid.to_be_bytes());
        if self.v5 {
            let mut props = Vec::new();
            self.common_properties(&mut props);
            properties(&mut body, &props);
        }
        let filters = if self.rng.one_in(30) {
            0
        } else {
            1 + self.rng.below(3)
        };
        for _ in 0..filters {
            let filter = self.topic_filter();
            string(&mut body, &filter);
        }
        packet(UNSUBSCRIBE << 4 | 2, &body)
    }

    /// PUBACK, PUBREC, PUBREL or PUBCOMP: for the device's own publishes
    /// (PUBREL) or the server's, whose packet ids start at 1.
    fn ack(&mut self) -> Vec<u8> {
        let kind = *self.rng.pick(&[PUBACK, PUBREC, PUBREL, PUBCOMP]);
        let pkid = if kind == PUBREL && !self.pkids.is_empty() && self.rng.one_in(2) {
            *self.rng.pick(&self.pkids)
        } else {
            self.pkid()
        };
        self.ack_packet(kind, pkid)
    }

    fn ack_packet(&mut self, kind: u8, pkid: u16) -> Vec<u8> {
        let first = kind << 4 | if kind == PUBREL { 2 } else { 0 };
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 && self.rng.one_in(3) {
            body.push(*self.rng.pick(&[0x00, 0x10, 0x80, 0x83, 0x87, 0x92, 0x97]));
            if self.rng.one_in(2) {
                let mut props = Vec::new();
                if self.rng.one_in(2) {
                    let mut reason = Vec::new();
                    string(&mut reason, b"why");
                    prop(&mut props, 0x1f, &reason);
                }
                self.common_properties(&mut props);
                properties(&mut body, &props);
            }
        }
        packet(first, &body)
    }

    fn disconnect(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        if self.v5 && !self.rng.one_in(3) {
            body.push(*self.rng.pick(&[0x00, 0x04, 0x80, 0x81, 0x8e, 0xff]));
            if self.rng.one_in(2) {
                let mut props = Vec::new();
                if self.rng.one_in(2) {
                    prop(&mut props, 0x11, &self.rng.edgy_u32().to_be_bytes());
                }
                if self.rng.one_in(4) {
                    let mut reference = Vec::new();
                    string(&mut reference, b"elsewhere");
                    prop(&mut props, 0x1c, &reference);
                }
                self.common_properties(&mut props);
                properties(&mut body, &props);
            }
        }
        packet(DISCONNECT << 4, &body)
    }

    fn auth(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        if !self.rng.one_in(3) {
            body.push(*self.rng.pick(&[0x00, 0x18, 0x19, 0x80]));
            let mut props = Vec::new();
            if self.rng.one_in(2) {
                let mut method = Vec::new();
                string(&mut method, b"SCRAM-SHA-1");
                prop(&mut props, 0x15, &method);
            }
            if self.rng.one_in(2) {
                let mut data = Vec::new();
                binary(&mut data, b"data");
                prop(&mut props, 0x16, &data);
            }
            self.common_properties(&mut props);
            properties(&mut body, &props);
        }
        packet(AUTH << 4, &body)
    }

    /// A packet only a server sends.
    fn server_packet(&mut self) -> Vec<u8> {
        let pkid = self.pkid().to_be_bytes();
        match self.rng.below(4) {
            0 => packet(CONNACK << 4, &[0, 0]),
            1 => packet(SUBACK << 4, &[pkid[0], pkid[1], 0]),
            2 => packet(UNSUBACK << 4, &[pkid[0], pkid[1]]),
            _ => packet(PINGRESP << 4, &[]),
        }
    }

    /// A packet id: mostly a few small ones that meet again, and the edges.
    fn pkid(&mut self) -> u16 {
        let pkid = match self.rng.below(20) {
            0..=13 => 1 + self.rng.below(8) as u16,
            14 => 0,
            15 => u16::MAX,
            _ => self.rng.next() as u16,
        };
        self.pkids.push(pkid);
        pkid
    }

    fn alias(&mut self) -> u16 {
        match self.rng.below(10) {
            0 => 0,
            1 => 65,
            2 => u16::MAX,
            3 => 64,
            _ => 1 + self.rng.below(4) as u16,
        }
    }

    /// A topic name: half under `fuzz/` (the Kafka route), now and then an
    /// invalid one.
    fn topic_name(&mut self) -> Vec<u8> {
        match self.rng.below(60) {
            0 => Vec::new(),
            1 => b"a/+".to_vec(),
            2 => b"fuzz/#".to_vec(),
            3 => b"fuzz/\0".to_vec(),
            4 => b"fuzz/\xff".to_vec(),
            5 => vec![b'a'; 1 + self.rng.below(3000)],
            6 => b"$SYS/x".to_vec(),
            7 => b"/".to_vec(),
            _ => {
                let mut levels = Vec::new();
                if self.rng.one_in(2) {
                    levels.push("fuzz");
                }
                for _ in 0..1 + self.rng.below(3) {
                    levels.push(*self.rng.pick(LEVELS));
                }
                levels.join("/").into_bytes()
            }
        }
    }

    /// A topic filter: wildcards, shares, and the invalid forms of both.
    fn topic_filter(&mut self) -> Vec<u8> {
        let share = if self.rng.one_in(5) {
            let group = *self.rng.pick(GROUPS);
            if self.rng.one_in(20) {
                return format!("$share/{group}").into_bytes();
            }
            format!("$share/{group}/")
        } else {
            String::new()
        };
        let filter = match self.rng.below(30) {
            0 => String::new(),
            1 => "fuzz/#/a".into(),
            2 => "a+/b".into(),
            3 => "#".into(),
            4 => "+".into(),
            5 => "fuzz/\0".into(),
            6 => "$SYS/#".into(),
            7..=9 => "fuzz/#".into(),
            _ => {
                let mut levels = Vec::new();
                if self.rng.one_in(2) {
                    levels.push("fuzz");
                }
                for _ in 0..1 + self.rng.below(3) {
                    let choices = if self.rng.one_in(2) {
                        LEVELS
                    } else {
                        WILDCARDS
                    };
                    levels.push(*self.rng.pick(choices));
                }
                levels.join("/")
            }
        };
        format!("{share}{filter}").into_bytes()
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = if self.rng.one_in(30) {
            100 + self.rng.below(6000)
        } else {
            self.rng.below(32)
        };
        self.rng.bytes(len)
    }

    /// `packet`, mutated once in `one_in` times.
    fn maybe_mutate(&mut self, packet: Vec<u8>, one_in: u64) -> Vec<u8> {
        if !self.rng.one_in(one_in) {
            return packet;
        }
        super::mutate::mutate(self.rng, packet)
    }
}
