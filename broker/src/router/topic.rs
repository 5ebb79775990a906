//! How topics and filters are written for the router, and read back.
//!
//! rumqttd's matcher slices a topic's first byte as a string: a topic whose
//! first character is not ASCII (`é/x`, valid MQTT) panics the router's thread,
//! and routing stops for everyone. So the router never sees a device's topic
//! or filter as it is: each gets a two-byte ASCII prefix, `t/` for plain topics
//! and `s/` for `$` topics. The router's wildcards keep MQTT's meaning: `#`
//! becomes `t/#`, which matches every plain topic and no `$` one, as
//! [MQTT-4.7.2-1] wants; `$share/group/` stays in front of a shared filter.
//! Every topic the router forwards loses its prefix again before anything
//! else sees it.

use bytes::{BufMut, Bytes, BytesMut};

const PLAIN: &[u8; 2] = b"t/";
const SYSTEM: &[u8; 2] = b"s/";
const SHARE: &str = "$share/";

/// A publish topic as the router gets it.
pub fn to_router(topic: &[u8]) -> Bytes {
    let prefix = if topic.first() == Some(&b'$') {
        SYSTEM
    } else {
        PLAIN
    };
    let mut out = BytesMut::with_capacity(prefix.len() + topic.len());
    out.put_slice(prefix);
    out.put_slice(topic);
    out.freeze()
}

/// A topic filter (shared or not) as the router gets it.
pub fn filter_to_router(filter: &str) -> String {
    if let Some(rest) = filter.strip_prefix(SHARE) {
        if let Some((group, filter)) = rest.split_once('/') {
            return format!("{SHARE}{group}/{}", plain_filter(filter));
        }
    }
    plain_filter(filter)
}

fn plain_filter(filter: &str) -> String {
    let prefix = if filter.starts_with('$') { "s/" } else { "t/" };
    format!("{prefix}{filter}")
}

/// A topic the router forwards, as it was published.
pub fn from_router(topic: Bytes) -> Bytes {
    if topic.starts_with(PLAIN) || topic.starts_with(SYSTEM) {
        topic.slice(PLAIN.len()..)
    } else {
        topic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_wildcards_keep_their_meaning() {
        for topic in ["a/b", "é/x", "$SYS/up", "", "t/x"] {
            let routed = to_router(topic.as_bytes());
            assert!(routed.is_ascii() || routed[..2].is_ascii());
            assert_eq!(from_router(routed), topic.as_bytes());
        }
        let matches = |topic: &str, filter: &str| {
            let routed = to_router(topic.as_bytes());
            let routed = std::str::from_utf8(&routed).unwrap().to_owned();
            tributary_wire::topic_matches(&routed, &filter_to_router(filter))
        };
        assert!(matches("é/x", "#"));
        assert!(matches("a/b", "+/b"));
        assert!(!matches("$SYS/up", "#"));
        assert!(!matches("$SYS/up", "+/up"));
        assert!(matches("$SYS/up", "$SYS/#"));
        assert_eq!(filter_to_router("$share/g/a/#"), "$share/g/t/a/#");
        assert_eq!(filter_to_router("$share/g/$SYS/#"), "$share/g/s/$SYS/#");
    }
}
