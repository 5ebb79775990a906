//! Topic aliases from Tributary to an MQTT 5 client that announced a Topic
//! Alias Maximum [MQTT-3.3.2.3.4]: the first message on a topic carries the
//! topic and an alias, later ones the alias alone. Saves bandwidth on
//! constrained links.
//!
//! Per connection and bounded by the client's maximum: the first topics get
//! the aliases, later topics go out in full. Never stored with a session
//! (aliases end with the connection [MQTT-3.3.2-7]): the outbox keeps whole
//! frames and a frame is rewritten only on its way out.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use tributary_wire::{read_varint, varint_len, write_varint, FixedHeader};

/// The Topic Alias property identifier.
const TOPIC_ALIAS: u8 = 0x23;

pub struct TopicAliases {
    max: u16,
    by_topic: HashMap<Bytes, u16>,
}

impl TopicAliases {
    /// `None` when the client accepts no aliases.
    pub fn new(client_max: Option<u16>) -> Option<TopicAliases> {
        let max = client_max.filter(|&max| max > 0)?;
        Some(TopicAliases {
            max,
            by_topic: HashMap::new(),
        })
    }

    /// Writes the MQTT 5 PUBLISH `frame` to `out`, its topic replaced by an
    /// alias where one is assigned (or assigned now), never making it larger
    /// than `max_packet_size`. A frame it cannot read is written unchanged.
    pub fn write(&mut self, frame: &[u8], out: &mut BytesMut, max_packet_size: usize) {
        match self.rewrite(frame, out, max_packet_size) {
            Some(()) => {}
            None => out.extend_from_slice(frame),
        }
    }

    fn rewrite(&mut self, frame: &[u8], out: &mut BytesMut, max_packet_size: usize) -> Option<()> {
        let header = FixedHeader::peek(frame).ok()??;
        let body = frame.get(header.header_len..header.frame_len())?;
        let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let topic = body.get(2..2 + topic_len)?;
        let qos = (header.flags() >> 1) & 0b11;
        let after_topic = 2 + topic_len;
        let props_at = after_topic + if qos > 0 { 2 } else { 0 };
        let pkid = body.get(after_topic..props_at)?;
        let (props_len, props_len_bytes) = read_varint(body.get(props_at..)?).ok()??;
        let props_start = props_at + props_len_bytes;
        let props = body.get(props_start..props_start + props_len)?;
        let payload = body.get(props_start + props_len..)?;

        let (alias, send_topic) = match self.by_topic.get(topic) {
            Some(&alias) => (alias, false),
            None => {
                let next = u16::try_from(self.by_topic.len() + 1).ok()?;
                if next > self.max {
                    return None;
                }
                (next, true)
            }
        };
        let topic_out: &[u8] = if send_topic { topic } else { &[] };
        let new_props_len = props_len + 3;
        let remaining = 2
            + topic_out.len()
            + pkid.len()
            + varint_len(new_props_len)
            + new_props_len
            + payload.len();
        if 1 + varint_len(remaining) + remaining > max_packet_size {
            return None;
        }
        if send_topic {
            self.by_topic.insert(Bytes::copy_from_slice(topic), alias);
        }
        out.reserve(1 + varint_len(remaining) + remaining);
        out.put_u8(header.byte1);
        write_varint(remaining, out);
        out.put_u16(topic_out.len() as u16);
        out.put_slice(topic_out);
        out.put_slice(pkid);
        write_varint(new_props_len, out);
        out.put_u8(TOPIC_ALIAS);
        out.put_u16(alias);
        out.put_slice(props);
        out.put_slice(payload);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, qos: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&7u16.to_be_bytes());
        }
        body.push(0); // no properties
        body.extend_from_slice(payload);
        tributary_wire::packet(0x30 | (qos << 1), &body)
    }

    #[test]
    fn the_first_message_names_the_topic_and_later_ones_only_the_alias() {
        let mut aliases = TopicAliases::new(Some(2)).unwrap();
        let mut out = BytesMut::new();
        aliases.write(&publish("a/b", 1, b"x"), &mut out, usize::MAX);
        assert_eq!(
            &out[..],
            &[0x32, 12, 0, 3, b'a', b'/', b'b', 0, 7, 3, 0x23, 0, 1, b'x']
        );
        out.clear();
        aliases.write(&publish("a/b", 0, b"y"), &mut out, usize::MAX);
        assert_eq!(&out[..], &[0x30, 7, 0, 0, 3, 0x23, 0, 1, b'y']);
    }

    #[test]
    fn past_the_clients_maximum_topics_go_out_in_full() {
        let mut aliases = TopicAliases::new(Some(1)).unwrap();
        let mut out = BytesMut::new();
        aliases.write(&publish("one", 0, b""), &mut out, usize::MAX);
        out.clear();
        let second = publish("two", 0, b"");
        aliases.write(&second, &mut out, usize::MAX);
        assert_eq!(&out[..], &second[..]);
        assert!(TopicAliases::new(Some(0)).is_none());
        assert!(TopicAliases::new(None).is_none());
    }

    #[test]
    fn never_larger_than_the_client_accepts_and_never_panics_on_short_frames() {
        let mut aliases = TopicAliases::new(Some(5)).unwrap();
        let frame = publish("t", 0, b"p");
        let mut out = BytesMut::new();
        aliases.write(&frame, &mut out, frame.len());
        assert_eq!(&out[..], &frame[..], "aliasing would add 3 bytes");
        for end in 0..frame.len() {
            out.clear();
            aliases.write(&frame[..end], &mut out, usize::MAX);
        }
    }
}
