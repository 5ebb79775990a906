//! CONNECT [MQTT-3.1]: keep-alive 0, protocol levels, a second CONNECT, flag
//! consistency, assigned client identifiers.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;

use crate::common::{connect_v4, Raw};
use crate::{broker, broker_with, raw5, Client, WAIT};

#[tokio::test]
async fn keep_alive_zero_means_no_timeout() {
    let server = broker_with(|c| c.mqtt.connect_timeout_ms = 500).await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    let mut connect = connect_v4("no-keepalive");
    connect[10] = 0; // keep-alive 0
    connect[11] = 0;
    raw.send(&connect).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    raw.send(&[0xc0, 0x00]).await; // PINGREQ
    let mut buf = [0u8; 6];
    use tokio::io::AsyncReadExt;
    raw.0.read_exact(&mut buf).await.expect("still connected");
    assert_eq!(
        buf,
        [0x20, 0x02, 0x00, 0x00, 0xd0, 0x00],
        "CONNACK then PINGRESP"
    );
}

#[tokio::test]
async fn a_level_above_5_is_refused_in_the_3_1_1_shape() {
    let server = broker().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    let mut connect = raw5::connect("future");
    connect[8] = 6;
    raw.send(&connect).await;
    let answer = raw.closed_within(WAIT).await;
    // A client of a later version reads a 3.1.1 CONNACK 0x01 [MQTT-3.1.2-2].
    assert_eq!(answer, [0x20, 0x02, 0x00, 0x01], "{answer:?}");
}

#[tokio::test]
async fn a_second_connect_is_a_protocol_error() {
    let server = broker().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    raw.send(&raw5::connect("twice")).await;
    raw.send(&raw5::connect("twice")).await;
    let answer = raw.closed_within(WAIT).await;
    assert_eq!(raw5::disconnect_reason(&answer), Some(0x82), "{answer:?}");
}

#[tokio::test]
async fn a_password_without_a_user_name_is_refused_in_3_1_1() {
    let server = broker().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    // Flags: clean session + password, no user name; payload: id "p", password "x".
    let body = [
        0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 60, 0, 1, b'p', 0, 1, b'x',
    ];
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    raw.send(&packet).await;
    assert!(
        raw.closed_within(WAIT).await.is_empty(),
        "closed, no CONNACK"
    );
}

#[tokio::test]
async fn an_empty_client_id_is_assigned_one_and_told_in_5() {
    let server = broker().await;
    let (_client, connack) = Client::connect(server.mqtt_addr(), "").await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    let assigned = connack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("Assigned Client Identifier [MQTT-3.2.2-16]");
    assert!(assigned.starts_with("tributary-"), "{assigned}");
}

#[tokio::test]
async fn connack_announces_the_limits() {
    let server = broker_with(|c| {
        c.mqtt.receive_maximum = 17;
        c.mqtt.max_packet_size = 4096;
    })
    .await;
    let (_client, connack) = Client::connect(server.mqtt_addr(), "limits").await;
    let props = connack.properties.expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(17));
    assert_eq!(props.max_packet_size, Some(4096));
    assert_eq!(
        props.topic_alias_max,
        Some(tributary::link::TOPIC_ALIAS_MAX)
    );
    assert_eq!(
        props.server_keep_alive, None,
        "the client's keep-alive stands"
    );
}

#[tokio::test]
async fn a_second_connection_with_the_same_id_takes_the_session_over() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let mut first = Raw::connect(addr).await;
    first.send(&raw5::connect("same-id")).await;
    let mut connack = [0u8; 2];
    use tokio::io::AsyncReadExt;
    first.0.read_exact(&mut connack).await.unwrap();
    let mut rest = vec![0u8; usize::from(connack[1])];
    first.0.read_exact(&mut rest).await.unwrap();

    let (_second, ack) = Client::connect(addr, "same-id").await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let answer = first.closed_within(WAIT).await;
    assert_eq!(
        answer,
        [0xe0, 0x01, 0x8e],
        "DISCONNECT 0x8E, session taken over"
    );
}
