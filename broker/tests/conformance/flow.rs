//! Flow control (MQTT 5): Receive Maximum both ways, the client's Maximum
//! Packet Size.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;

use crate::common::Raw;
use crate::{broker, broker_with, filter, raw5, Client, QUIET, WAIT};

#[tokio::test]
async fn a_client_over_the_receive_maximum_gets_disconnect_0x93() {
    let server = broker_with(|c| c.mqtt.receive_maximum = 2).await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    raw.send(&raw5::connect("greedy")).await;
    // QoS 2 publishes stay in flight until PUBREL, which never comes.
    for pkid in 1..=3 {
        raw.send(&raw5::publish_qos2("flow/x", pkid, b"x")).await;
    }
    let answer = raw.closed_within(WAIT).await;
    let disconnect = answer.windows(3).rev().find(|w| w[0] == 0xe0).map(|w| w[2]);
    assert_eq!(disconnect, Some(0x93), "{answer:?}");
}

#[tokio::test]
async fn the_clients_receive_maximum_holds_back_further_messages() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut slow, _) = Client::connect_with(addr, "slow", |o| {
        o.set_receive_maximum(Some(1));
        o.set_manual_acks(true);
    })
    .await;
    slow.subscribe(filter("rm/#", QoS::AtLeastOnce)).await;
    let (mut publisher, _) = Client::connect(addr, "rm-pub").await;
    for n in 0..3u8 {
        publisher
            .publish(
                "rm/x",
                QoS::AtLeastOnce,
                false,
                &[n],
                PublishProperties::default(),
            )
            .await;
    }
    for n in 0..3u8 {
        let got = slow.next_publish(WAIT).await.expect("the next message");
        assert_eq!(got.payload, Bytes::from(vec![n]));
        // Nothing more arrives while this one is unacknowledged.
        assert!(
            !matches!(slow.next(QUIET).await, Some(Packet::Publish(_))),
            "more than Receive Maximum in flight"
        );
        slow.client.ack(&got).await.unwrap();
    }
}

#[tokio::test]
async fn a_message_larger_than_the_client_accepts_is_not_sent_to_it() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut small, _) = Client::connect_with(addr, "small", |o| {
        o.set_max_packet_size(Some(200));
    })
    .await;
    small.subscribe(filter("mps/#", QoS::AtLeastOnce)).await;
    let (mut publisher, _) = Client::connect(addr, "mps-pub").await;
    publisher
        .publish(
            "mps/x",
            QoS::AtLeastOnce,
            false,
            &[7u8; 500],
            PublishProperties::default(),
        )
        .await;
    publisher
        .publish(
            "mps/x",
            QoS::AtLeastOnce,
            false,
            b"fits",
            PublishProperties::default(),
        )
        .await;
    let got = small.next_publish(WAIT).await.expect("the small message");
    assert_eq!(
        got.payload,
        Bytes::from_static(b"fits"),
        "the large one was skipped"
    );
}
