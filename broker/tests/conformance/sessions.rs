//! MQTT 5 sessions [MQTT-3.1.2.4, 3.1.2.11.2]: Clean Start, Session Expiry
//! Interval, Session Present, expiry changed at DISCONNECT, messages kept while
//! away, expired sessions removed.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;

use crate::common::{metric, Raw};
use crate::{broker, filter, Client, QUIET, WAIT};

fn resume(expiry: u32) -> impl FnOnce(&mut MqttOptions) {
    move |o: &mut MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(expiry));
    }
}

/// Connects, subscribes to `topic` at QoS 1, and leaves with a normal DISCONNECT.
async fn subscribe_and_leave(addr: std::net::SocketAddr, id: &str, expiry: u32, topic: &str) {
    let (mut client, _) = Client::connect_with(addr, id, resume(expiry)).await;
    client.subscribe(filter(topic, QoS::AtLeastOnce)).await;
    client.client.disconnect().await.unwrap();
    while client.next(Duration::from_millis(300)).await.is_some() {}
}

async fn publish(addr: std::net::SocketAddr, topic: &str, payload: &[u8]) {
    let (mut publisher, _) = Client::connect(addr, "session-pub").await;
    publisher
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            payload,
            PublishProperties::default(),
        )
        .await;
}

#[tokio::test]
async fn a_session_with_expiry_keeps_messages_and_reports_session_present() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    subscribe_and_leave(addr, "s-keep", 60, "keep/x").await;
    publish(addr, "keep/x", b"while away").await;
    let (mut back, connack) = Client::connect_with(addr, "s-keep", resume(60)).await;
    assert!(connack.session_present);
    let got = back.next_publish(WAIT).await.expect("queued while away");
    assert_eq!(got.payload, Bytes::from_static(b"while away"));
}

#[tokio::test]
async fn expiry_zero_ends_the_session_at_disconnect() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    subscribe_and_leave(addr, "s-zero", 0, "zero/x").await;
    let (_back, connack) = Client::connect_with(addr, "s-zero", resume(0)).await;
    assert!(!connack.session_present);
}

#[tokio::test]
async fn clean_start_discards_a_stored_session() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    subscribe_and_leave(addr, "s-clean", 60, "clean/x").await;
    let (mut fresh, connack) = Client::connect_with(addr, "s-clean", |o| {
        o.set_clean_start(true);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    assert!(!connack.session_present);
    publish(addr, "clean/x", b"not for the new session").await;
    assert!(fresh
        .next_publish(Duration::from_millis(700))
        .await
        .is_none());
}

#[tokio::test]
async fn disconnect_can_shorten_the_expiry() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    // CONNECT (MQTT 5, Clean Start 0, Session Expiry Interval 60).
    let body = [
        &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x00, 0, 60][..],
        &[5, 0x11, 0, 0, 0, 60],
        &[0, 7, b's', b'-', b's', b'h', b'o', b'r', b't'],
    ]
    .concat();
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend_from_slice(&body);
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect).await;
    // DISCONNECT 0x00 with Session Expiry Interval 0.
    raw.send(&[0xe0, 7, 0x00, 5, 0x11, 0, 0, 0, 0]).await;
    raw.closed_within(WAIT).await;
    let (_back, connack) = Client::connect_with(addr, "s-short", resume(60)).await;
    assert!(!connack.session_present, "the DISCONNECT's 0 won");
}

#[tokio::test]
async fn an_expired_session_is_removed() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let before = metric(&server, "tributary_sessions_expired_total").await;
    subscribe_and_leave(addr, "s-expire", 1, "expire/x").await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(metric(&server, "tributary_sessions_expired_total").await > before);
    publish(addr, "expire/x", b"too late").await;
    let (mut back, connack) = Client::connect_with(addr, "s-expire", resume(1)).await;
    assert!(!connack.session_present);
    assert!(back
        .next_publish(Duration::from_millis(700))
        .await
        .is_none());
}

/// While the device is away its session keeps at most 1,000 QoS 1/2 messages
/// (Tributary's limit, see README *Limits*); what does not fit is counted,
/// and what was kept arrives in order on resume.
#[tokio::test]
async fn a_stored_session_keeps_up_to_its_limit_and_counts_the_rest() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    subscribe_and_leave(addr, "s-full", 60, "full/x").await;
    let (mut publisher, _) = Client::connect(addr, "full-pub").await;
    for n in 0..1010u32 {
        publisher
            .publish(
                "full/x",
                QoS::AtLeastOnce,
                false,
                &n.to_be_bytes(),
                PublishProperties::default(),
            )
            .await;
    }
    let (mut back, connack) = Client::connect_with(addr, "s-full", resume(60)).await;
    assert!(connack.session_present);
    let mut got = Vec::new();
    while let Some(p) = back.next_publish(Duration::from_millis(1500)).await {
        got.push(u32::from_be_bytes(p.payload[..].try_into().unwrap()));
    }
    assert_eq!(
        got,
        (0..1000).collect::<Vec<u32>>(),
        "the first 1,000, in order"
    );
    let dropped = metric(
        &server,
        "tributary_mqtt_deliveries_skipped_total{reason=\"session_queue_full\"}",
    )
    .await;
    assert_eq!(dropped, 10.0);
}

/// [MQTT-3.3.2-5]/[MQTT-3.3.2-6]: a message that expires while its session's
/// device is away is not delivered on resume; one that has not arrives with
/// the interval it has left.
#[tokio::test]
async fn messages_kept_while_away_expire_there() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    subscribe_and_leave(addr, "s-exp", 60, "awayexp/x").await;
    let (mut publisher, _) = Client::connect(addr, "awayexp-pub").await;
    for (payload, secs) in [(&b"short"[..], 1), (&b"long"[..], 60)] {
        let properties = PublishProperties {
            message_expiry_interval: Some(secs),
            ..PublishProperties::default()
        };
        publisher
            .publish("awayexp/x", QoS::AtLeastOnce, false, payload, properties)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (mut back, connack) = Client::connect_with(addr, "s-exp", resume(60)).await;
    assert!(connack.session_present);
    let got = back
        .next_publish(WAIT)
        .await
        .expect("the long-lived message");
    assert_eq!(got.payload, Bytes::from_static(b"long"));
    let left = got.properties.and_then(|p| p.message_expiry_interval);
    assert!(matches!(left, Some(56..=58)), "the interval left: {left:?}");
    assert!(
        back.next_publish(QUIET).await.is_none(),
        "the expired one is gone"
    );
}
