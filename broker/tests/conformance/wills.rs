//! Wills [MQTT-3.1.2-8..17]: retain, Will Delay Interval, properties, and
//! DISCONNECT 0x04.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
use rumqttc::v5::mqttbytes::QoS;

use crate::common::Raw;
use crate::{broker, filter, raw5, Client, QUIET, WAIT};

/// Connects `id` with a will on `topic`, then drops the TCP connection without
/// DISCONNECT.
async fn connect_and_vanish(
    addr: std::net::SocketAddr,
    id: &str,
    topic: &str,
    retain: bool,
    properties: Option<LastWillProperties>,
) {
    let will = LastWill::new(topic, "gone", QoS::AtLeastOnce, retain, properties);
    let (client, _) = Client::connect_with(addr, id, |o| {
        o.set_last_will(will);
    })
    .await;
    // Dropping the event loop closes the socket without a DISCONNECT.
    drop(client);
}

#[tokio::test]
async fn a_retained_will_with_properties_is_kept_for_later_subscribers() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let properties = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: None,
        user_properties: vec![("why".into(), "test".into())],
    };
    connect_and_vanish(
        addr,
        "will-retain",
        "wills/retained",
        true,
        Some(properties),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut late, _) = Client::connect(addr, "will-late").await;
    late.subscribe(filter("wills/#", QoS::AtLeastOnce)).await;
    let got = late.next_publish(WAIT).await.expect("the retained will");
    assert_eq!(got.payload, Bytes::from_static(b"gone"));
    assert!(got.retain);
    let props = got.properties.expect("will properties");
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        props.user_properties,
        [("why".to_owned(), "test".to_owned())]
    );
}

#[tokio::test]
async fn the_will_delay_is_honoured_and_a_quick_return_cancels_it() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut watcher, _) = Client::connect(addr, "delay-watch").await;
    watcher.subscribe(filter("delay/#", QoS::AtLeastOnce)).await;
    let delayed = |secs| {
        Some(LastWillProperties {
            delay_interval: Some(secs),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        })
    };
    // The session must outlive the delay for the delay to apply [MQTT-3.1.3-9].
    let expiry = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_session_expiry_interval(Some(60));
    };

    let will = LastWill::new("delay/a", "gone", QoS::AtLeastOnce, false, delayed(2));
    let (client, _) = Client::connect_with(addr, "delay-a", |o| {
        expiry(o);
        o.set_last_will(will);
    })
    .await;
    let vanished = Instant::now();
    drop(client);
    let got = watcher
        .next_publish(Duration::from_secs(6))
        .await
        .expect("the will");
    assert_eq!(got.topic, Bytes::from_static(b"delay/a"));
    assert!(
        vanished.elapsed() >= Duration::from_millis(1_900),
        "{:?}",
        vanished.elapsed()
    );

    let will = LastWill::new("delay/b", "gone", QoS::AtLeastOnce, false, delayed(2));
    let (client, _) = Client::connect_with(addr, "delay-b", |o| {
        expiry(o);
        o.set_last_will(will);
    })
    .await;
    drop(client);
    let (_back, _) = Client::connect(addr, "delay-b").await;
    assert!(
        watcher.next_publish(Duration::from_secs(3)).await.is_none(),
        "no will after reconnecting within the delay"
    );
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_it() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut watcher, _) = Client::connect(addr, "dw-watch").await;
    watcher.subscribe(filter("dw/#", QoS::AtLeastOnce)).await;
    let mut raw = Raw::connect(addr).await;
    // CONNECT with a QoS 0 will "dw/x" = "bye".
    let body = [
        &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 60, 0][..],
        &[0, 2, b'd', b'w'],
        &[0],
        &[0, 4, b'd', b'w', b'/', b'x'],
        &[0, 3, b'b', b'y', b'e'],
    ]
    .concat();
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend_from_slice(&body);
    raw.send(&connect).await;
    raw.send(&raw5::disconnect(0x04)).await;
    raw.closed_within(WAIT).await;
    let got = watcher.next_publish(WAIT).await.expect("the will");
    assert_eq!(got.payload, Bytes::from_static(b"bye"));

    // A normal DISCONNECT (0x00) discards it.
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect).await;
    raw.send(&raw5::disconnect(0x00)).await;
    raw.closed_within(WAIT).await;
    let extra = watcher.next_publish(QUIET).await;
    assert!(extra.is_none(), "{extra:?}");
}
