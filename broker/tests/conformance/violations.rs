//! Protocol violations and edge values a device may send, checked byte by
//! byte: each violation closes only its own connection, with the reason code
//! MQTT 5 gives it, and nothing a device sends takes the broker (or its
//! counters) down with it. Also the byte-level features client libraries hide
//! (server keep-alive, topic aliases towards the client).

use rumqttc::v5::mqttbytes::QoS;
use tributary_wire::{packet, write_varint};

use crate::common::{metric, Raw};
use crate::{broker, broker_with, filter, Client, WAIT};

/// An MQTT 5 CONNECT: `flags` (0x02 = Clean Start), raw `properties`, an
/// optional will (topic, payload) with no will properties.
fn connect5(client_id: &str, flags: u8, properties: &[u8], will: Option<(&str, &[u8])>) -> Vec<u8> {
    let flags = flags | if will.is_some() { 0x04 } else { 0 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60];
    write_varint(properties.len(), &mut body);
    body.extend_from_slice(properties);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    if let Some((topic, payload)) = will {
        body.push(0); // will properties
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        body.extend_from_slice(payload);
    }
    packet(0x10, &body)
}

/// Session Expiry Interval property.
fn session_expiry(seconds: u32) -> Vec<u8> {
    let mut out = vec![0x11];
    out.extend_from_slice(&seconds.to_be_bytes());
    out
}

/// A raw MQTT 5 connection past its CONNACK, whose bytes are returned.
async fn connected5(addr: std::net::SocketAddr, connect: &[u8]) -> (Raw, Vec<u8>) {
    let mut raw = Raw::connect(addr).await;
    raw.send(connect).await;
    let connack = read_packet(&mut raw).await.expect("CONNACK");
    assert_eq!(connack.first(), Some(&0x20), "{connack:?}");
    (raw, connack)
}

/// The next whole packet from the server, if one arrives within [`WAIT`].
async fn read_packet(raw: &mut Raw) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Some(header)) = tributary_wire::FixedHeader::peek(&buf) {
                if buf.len() >= header.frame_len() {
                    return Some(buf[..header.frame_len()].to_vec());
                }
            }
            let mut byte = [0u8; 1];
            match raw.0.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// No connection task ended in a panic.
async fn no_internal_errors(server: &tributary::Server) {
    let panics = metric(
        server,
        r#"tributary_connections_closed_total{reason="internal_error"}"#,
    )
    .await;
    assert_eq!(panics, 0.0, "connection tasks panicked");
}

/// Sends `bytes` after connecting and expects DISCONNECT with `reason`, then
/// the close.
async fn disconnected_with(addr: std::net::SocketAddr, id: &str, bytes: &[u8], reason: u8) {
    let (mut raw, _) = connected5(addr, &connect5(id, 0x02, &[], None)).await;
    raw.send(bytes).await;
    let answer = raw.closed_within(WAIT).await;
    assert_eq!(
        answer.get(..3),
        Some(&[0xe0, 0x01, reason][..]),
        "{id}: {answer:x?}"
    );
}

#[tokio::test]
async fn packets_only_a_server_sends_get_disconnect_0x82_and_break_nothing() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let before = metric(
        &server,
        r#"tributary_connections_closed_total{reason="unexpected_packet"}"#,
    )
    .await;
    let server_only: [&[u8]; 5] = [
        &[0x20, 0x02, 0x00, 0x00],       // CONNACK
        &[0xb0, 0x03, 0x00, 0x01, 0x00], // UNSUBACK
        &[0x90, 0x03, 0x00, 0x01, 0x00], // SUBACK
        &[0xd0, 0x00],                   // PINGRESP
        &[0xf0, 0x00],                   // AUTH, never started
    ];
    for (i, bytes) in server_only.iter().enumerate() {
        disconnected_with(addr, &format!("wrong-way-{i}"), bytes, 0x82).await;
    }
    // MQTT 3.1.1 has no DISCONNECT to send: the connection closes.
    for bytes in server_only {
        let mut raw = Raw::connect(addr).await;
        raw.send(&crate::common::connect_v4("wrong-way-4")).await;
        raw.send(bytes).await;
        let answer = raw.closed_within(WAIT).await;
        assert_eq!(
            answer,
            [0x20, 0x02, 0x00, 0x00],
            "only the CONNACK: {answer:x?}"
        );
    }
    let after = metric(
        &server,
        r#"tributary_connections_closed_total{reason="unexpected_packet"}"#,
    )
    .await;
    assert!(after - before >= 9.0, "{before} -> {after}");
    no_internal_errors(&server).await;
    // Everyone else carries on.
    let (mut client, _) = Client::connect(addr, "after-wrong-way").await;
    client
        .subscribe(filter("still/here", QoS::AtLeastOnce))
        .await;
}

#[tokio::test]
async fn malformed_fixed_header_flags_get_disconnect_0x81() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    // QoS 0 with DUP set [MQTT-3.3.1-2].
    disconnected_with(
        addr,
        "dup-qos0",
        &[0x38, 0x04, 0x00, 0x01, b'a', b'x'],
        0x81,
    )
    .await;
    // QoS 3 [MQTT-3.3.1-4].
    disconnected_with(addr, "qos3", &[0x36, 0x06, 0x00, 0x01, b'a', 0, 1, 0], 0x81).await;
    // PINGREQ with a flag set [MQTT-2.1.3-1].
    disconnected_with(addr, "ping-flags", &[0xc1, 0x00], 0x81).await;
}

#[tokio::test]
async fn session_expiry_intervals_up_to_the_maximum_keep_the_session() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    for (i, seconds) in [
        68_719_477u32,
        999_999_999,
        2_147_483_647,
        0xFFFF_FFFE,
        u32::MAX,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("long-expiry-{i}");
        let connect = connect5(&id, 0x00, &session_expiry(seconds), None);
        let (mut raw, connack) = connected5(addr, &connect).await;
        assert_eq!(connack.get(2), Some(&0x00), "new session: {connack:x?}");
        raw.send(&[0xe0, 0x00]).await;
        raw.closed_within(WAIT).await;
        // The stored session is still there.
        let (_raw, connack) = connected5(addr, &connect).await;
        assert_eq!(
            connack.get(2..4),
            Some(&[0x01, 0x00][..]),
            "{seconds}: {connack:x?}"
        );
    }
    no_internal_errors(&server).await;
}

#[tokio::test]
async fn receive_maximum_zero_is_refused_with_0x82() {
    let server = broker().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    raw.send(&connect5("rm-zero", 0x02, &[0x21, 0x00, 0x00], None))
        .await;
    let answer = raw.closed_within(WAIT).await;
    assert_eq!(
        answer.get(..4),
        Some(&[0x20, 0x03, 0x00, 0x82][..]),
        "{answer:x?}"
    );
}

#[tokio::test]
async fn extending_a_zero_session_expiry_at_disconnect_is_a_protocol_error() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut watcher, _) = Client::connect(addr, "zero-ext-watch").await;
    watcher
        .subscribe(filter("zero-ext/will", QoS::AtLeastOnce))
        .await;

    let connect = connect5("zero-ext", 0x00, &[], Some(("zero-ext/will", b"gone")));
    let (mut raw, _) = connected5(addr, &connect).await;
    let mut disconnect = vec![0x00];
    write_varint(5, &mut disconnect);
    disconnect.extend_from_slice(&session_expiry(60));
    raw.send(&packet(0xe0, &disconnect)).await;
    let answer = raw.closed_within(WAIT).await;
    assert_eq!(
        answer.get(..3),
        Some(&[0xe0, 0x01, 0x82][..]),
        "{answer:x?}"
    );

    let will = watcher
        .next_publish(WAIT)
        .await
        .expect("the will is published");
    assert_eq!(&will.payload[..], b"gone");
    // The session ended at the close.
    let (_raw, connack) = connected5(addr, &connect5("zero-ext", 0x00, &[], None)).await;
    assert_eq!(connack.get(2), Some(&0x00), "no session: {connack:x?}");
}

#[tokio::test]
async fn a_wildcard_response_topic_gets_disconnect_0x82() {
    let server = broker().await;
    for (i, response_topic) in ["replies/+", "replies/#"].into_iter().enumerate() {
        let mut properties = vec![0x08];
        properties.extend_from_slice(&(response_topic.len() as u16).to_be_bytes());
        properties.extend_from_slice(response_topic.as_bytes());
        let mut body = vec![0x00, 0x01, b'a'];
        write_varint(properties.len(), &mut body);
        body.extend_from_slice(&properties);
        body.push(b'x');
        disconnected_with(
            server.mqtt_addr(),
            &format!("resp-{i}"),
            &packet(0x30, &body),
            0x82,
        )
        .await;
    }
}

#[tokio::test]
async fn subscribe_or_unsubscribe_without_filters_gets_disconnect_0x82() {
    let server = broker().await;
    // Packet id 1, no properties, no filters.
    disconnected_with(
        server.mqtt_addr(),
        "sub-none",
        &[0x82, 0x03, 0x00, 0x01, 0x00],
        0x82,
    )
    .await;
    disconnected_with(
        server.mqtt_addr(),
        "unsub-none",
        &[0xa2, 0x03, 0x00, 0x01, 0x00],
        0x82,
    )
    .await;
}

#[tokio::test]
async fn a_pubrel_after_reconnecting_completes_the_qos2_flow() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let connect = connect5("qos2-resume", 0x00, &session_expiry(60), None);
    let (mut raw, _) = connected5(addr, &connect).await;
    // PUBLISH QoS 2, packet id 7, no properties.
    raw.send(&packet(0x34, &[0x00, 0x01, b'q', 0x00, 0x07, 0x00, b'x']))
        .await;
    let pubrec = read_packet(&mut raw).await.expect("PUBREC");
    assert_eq!(
        pubrec.get(..4),
        Some(&[0x50, 0x02, 0x00, 0x07][..]),
        "{pubrec:x?}"
    );
    drop(raw);

    let (mut raw, connack) = connected5(addr, &connect).await;
    assert_eq!(connack.get(2), Some(&0x01), "session present");
    raw.send(&[0x62, 0x02, 0x00, 0x07]).await;
    let pubcomp = read_packet(&mut raw).await.expect("PUBCOMP");
    assert_eq!(
        pubcomp.get(..4),
        Some(&[0x70, 0x02, 0x00, 0x07][..]),
        "success: {pubcomp:x?}"
    );
}

/// The Server Keep Alive property of an MQTT 5 CONNACK, if present.
fn server_keep_alive(connack: &[u8]) -> Option<u16> {
    let (_, at) = tributary_wire::read_varint(connack.get(1..)?).ok()??;
    let start = 1 + at + 2;
    let (len, at) = tributary_wire::read_varint(connack.get(start..)?).ok()??;
    let mut props = connack.get(start + at..start + at + len)?;
    let u16_at = |b: &[u8], i: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *b.get(i)?,
            *b.get(i + 1)?,
        ])))
    };
    while let Some((&id, rest)) = props.split_first() {
        let skip = match id {
            0x13 => return Some(u16_at(rest, 0)? as u16),
            0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x21 | 0x22 => 2,
            0x11 | 0x27 => 4,
            0x12 | 0x1f | 0x1a | 0x1c | 0x15 | 0x16 => 2 + u16_at(rest, 0)?,
            0x26 => {
                let key = 2 + u16_at(rest, 0)?;
                key + 2 + u16_at(rest, key)?
            }
            _ => return None,
        };
        props = rest.get(skip..)?;
    }
    None
}

#[tokio::test]
async fn the_server_keep_alive_caps_what_clients_ask_for() {
    let server = broker_with(|config| config.mqtt.max_keep_alive = 30).await;
    let addr = server.mqtt_addr();
    for (asked, told) in [(0u16, Some(30u16)), (600, Some(30)), (20, None)] {
        let mut connect = connect5(&format!("ka-{asked}"), 0x02, &[], None);
        // The keep-alive, after the fixed header, name and level, and flags.
        connect[10..12].copy_from_slice(&asked.to_be_bytes());
        let (_raw, connack) = connected5(addr, &connect).await;
        assert_eq!(
            server_keep_alive(&connack),
            told,
            "asked {asked}: {connack:x?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_keeps_sending_after_a_violation_reads_the_reason() {
    let server = broker().await;
    let (mut raw, _) = connected5(server.mqtt_addr(), &connect5("chatty", 0x02, &[], None)).await;
    // The violation, then more publishes right behind it.
    let mut bytes = vec![0xd0, 0x00];
    for _ in 0..200 {
        bytes.extend_from_slice(&packet(0x30, &[0x00, 0x01, b'a', 0x00, b'x']));
    }
    raw.send(&bytes).await;
    let answer = raw.closed_within(WAIT).await;
    assert_eq!(
        answer.get(..3),
        Some(&[0xe0, 0x01, 0x82][..]),
        "{answer:x?}"
    );
}

#[tokio::test]
async fn a_client_that_accepts_topic_aliases_gets_them() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    // Topic Alias Maximum 4.
    let (mut raw, _) = connected5(
        addr,
        &connect5("alias-sub", 0x02, &[0x22, 0x00, 0x04], None),
    )
    .await;
    let topic = b"alias/t";
    let mut subscribe = vec![0x00, 0x01, 0x00];
    subscribe.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    subscribe.extend_from_slice(topic);
    subscribe.push(0x00);
    raw.send(&packet(0x82, &subscribe)).await;
    let suback = read_packet(&mut raw).await.expect("SUBACK");
    assert_eq!(suback.first(), Some(&0x90), "{suback:x?}");

    let (mut publisher, _) = Client::connect(addr, "alias-pub").await;
    for payload in [b"one", b"two"] {
        publisher
            .publish(
                "alias/t",
                QoS::AtMostOnce,
                false,
                payload,
                rumqttc::v5::mqttbytes::v5::PublishProperties::default(),
            )
            .await;
    }
    // (topic, properties, payload) of a QoS 0 PUBLISH.
    let parse = |frame: &[u8]| {
        let header = tributary_wire::FixedHeader::peek(frame).unwrap().unwrap();
        let body = &frame[header.header_len..];
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = body[2..2 + topic_len].to_vec();
        let (props_len, at) = tributary_wire::read_varint(&body[2 + topic_len..])
            .unwrap()
            .unwrap();
        let props_start = 2 + topic_len + at;
        let props = body[props_start..props_start + props_len].to_vec();
        (topic, props, body[props_start + props_len..].to_vec())
    };
    let first = parse(&read_packet(&mut raw).await.expect("first PUBLISH"));
    let second = parse(&read_packet(&mut raw).await.expect("second PUBLISH"));
    assert_eq!(first.0, topic, "the first names the topic");
    assert!(first.1.windows(3).any(|w| w == [0x23, 0, 1]), "{first:x?}");
    assert_eq!(first.2, b"one");
    assert!(
        second.0.is_empty(),
        "the second uses the alias alone: {second:x?}"
    );
    assert!(
        second.1.windows(3).any(|w| w == [0x23, 0, 1]),
        "{second:x?}"
    );
    assert_eq!(second.2, b"two");
}
