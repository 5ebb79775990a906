//! Shared subscriptions [MQTT-4.8.2] and persistent sessions.

use std::collections::HashSet;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::{AsyncClient, Event, Packet};

use crate::{broker, filter, Client, QUIET, WAIT};

#[tokio::test]
async fn each_shared_message_goes_to_one_member_at_the_right_qos() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut a, _) = Client::connect(addr, "share-a").await;
    a.subscribe(filter("$share/g/sh/#", QoS::ExactlyOnce)).await;
    let (mut b, _) = Client::connect(addr, "share-b").await;
    b.subscribe(filter("$share/g/sh/#", QoS::ExactlyOnce)).await;
    let (mut publisher, _) = Client::connect(addr, "share-pub").await;
    for n in 0..10u8 {
        publisher
            .publish(
                "sh/x",
                QoS::AtLeastOnce,
                false,
                &[n],
                PublishProperties::default(),
            )
            .await;
    }
    let mut seen = Vec::new();
    for member in [&mut a, &mut b] {
        while let Some(p) = member.next_publish(QUIET).await {
            assert_eq!(p.qos, QoS::AtLeastOnce, "min(publish 1, granted 2)");
            seen.push(p.payload[0]);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<u8>>(),
        "each message exactly once"
    );
}

#[tokio::test]
async fn a_persistent_session_gets_what_was_published_while_it_was_away() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let options = || {
        let mut o = crate::common::v4_options(addr, "sleeper");
        o.set_clean_session(false);
        o
    };
    let (client, mut events) = AsyncClient::new(options(), 10);
    client
        .subscribe("away/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    client.disconnect().await.unwrap();
    while events.poll().await.is_ok() {}

    let (mut publisher, _) = Client::connect(addr, "away-pub").await;
    publisher
        .publish(
            "away/x",
            QoS::AtLeastOnce,
            false,
            b"while away",
            PublishProperties::default(),
        )
        .await;

    let (_client, mut events) = AsyncClient::new(options(), 10);
    let mut session_present = None;
    let mut got = HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.is_empty() && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                session_present = Some(ack.session_present)
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.insert(p.payload);
            }
            _ => {}
        }
    }
    assert_eq!(session_present, Some(true));
    assert!(got.contains(&Bytes::from_static(b"while away")));
}

/// [MQTT-4.8.2]: a share the chosen member leaves without acknowledging goes
/// to another member of the group.
#[tokio::test]
async fn a_share_left_unacknowledged_goes_to_another_member() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let manual = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_manual_acks(true);
    };
    let (mut a, _) = Client::connect_with(addr, "handoff-a", manual).await;
    a.subscribe(filter("$share/h/ho/#", QoS::AtLeastOnce)).await;
    let (mut b, _) = Client::connect_with(addr, "handoff-b", manual).await;
    b.subscribe(filter("$share/h/ho/#", QoS::AtLeastOnce)).await;
    let (mut publisher, _) = Client::connect(addr, "handoff-pub").await;
    publisher
        .publish(
            "ho/x",
            QoS::AtLeastOnce,
            false,
            b"one of you",
            PublishProperties::default(),
        )
        .await;
    // Whoever got it leaves without acknowledging it.
    let (first, mut other) = match a.next_publish(QUIET).await {
        Some(_) => (a, b),
        None => {
            assert!(b.next_publish(WAIT).await.is_some(), "one member got it");
            (b, a)
        }
    };
    assert!(
        other.next_publish(QUIET).await.is_none(),
        "only one member got it"
    );
    drop(first);
    let got = other
        .next_publish(WAIT)
        .await
        .expect("handed to the other member");
    assert_eq!(got.payload, Bytes::from_static(b"one of you"));
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert!(crate::common::metric(&server, "tributary_shares_handed_off_total").await >= 1.0);
}
