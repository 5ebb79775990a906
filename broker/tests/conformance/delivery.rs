//! Delivery QoS [MQTT-3.8.4-8]: min(publish QoS, granted QoS), whatever the
//! router does; overlapping subscriptions [MQTT-3.3.4-2].

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;

use crate::{broker, filter, Client, QUIET, WAIT};

fn qos_name(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

#[tokio::test]
async fn delivered_at_the_lower_of_publish_and_subscription_qos() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let all = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let mut subscribers = Vec::new();
    for granted in all {
        let (mut sub, _) = Client::connect(addr, &format!("qos-sub-{}", qos_name(granted))).await;
        sub.subscribe(filter("qos/#", granted)).await;
        subscribers.push((granted, sub));
    }
    let (mut publisher, _) = Client::connect(addr, "qos-pub").await;
    // Twice over, so a broken acknowledgement flow would show on the second round.
    for round in 0..2 {
        for sent in all {
            let payload = format!("{round}-{}", qos_name(sent));
            publisher
                .publish(
                    "qos/x",
                    sent,
                    false,
                    payload.as_bytes(),
                    PublishProperties::default(),
                )
                .await;
            for (granted, sub) in subscribers.iter_mut() {
                let got = sub.next_publish(WAIT).await.expect("delivered");
                assert_eq!(got.payload, Bytes::from(payload.clone()));
                let expected = std::cmp::min(sent as u8, *granted as u8);
                assert_eq!(
                    got.qos as u8,
                    expected,
                    "published at {}, granted {}",
                    qos_name(sent),
                    qos_name(*granted)
                );
            }
        }
    }
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_at_the_highest_granted_qos() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut sub, _) = Client::connect(addr, "overlap-sub").await;
    for (path, qos, id) in [("ov/#", QoS::AtMostOnce, 1), ("ov/+", QoS::ExactlyOnce, 2)] {
        sub.client
            .subscribe_with_properties(
                path,
                qos,
                SubscribeProperties {
                    id: Some(id),
                    user_properties: Vec::new(),
                },
            )
            .await
            .unwrap();
        sub.suback().await;
    }
    let (mut publisher, _) = Client::connect(addr, "overlap-pub").await;
    publisher
        .publish(
            "ov/a",
            QoS::ExactlyOnce,
            false,
            b"both",
            PublishProperties::default(),
        )
        .await;
    let mut copies = Vec::new();
    while let Some(packet) = sub.next(QUIET).await {
        if let Packet::Publish(p) = packet {
            let ids = p
                .properties
                .map(|props| props.subscription_identifiers)
                .unwrap_or_default();
            copies.push((p.qos, ids));
        }
    }
    assert_eq!(
        copies,
        [(QoS::ExactlyOnce, vec![1, 2])],
        "one copy, at the highest granted QoS, with every matching subscription identifier"
    );
}

/// [MQTT-3.8.3-3] with overlapping subscriptions: the one without No Local
/// still delivers the client's own message, once.
#[tokio::test]
async fn no_local_on_one_of_overlapping_subscriptions_leaves_one_copy() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut client, _) = Client::connect(addr, "nl-overlap").await;
    for (path, nolocal) in [("nlo/#", true), ("nlo/+", false)] {
        let mut f = filter(path, QoS::AtLeastOnce);
        f.nolocal = nolocal;
        client.subscribe(f).await;
    }
    // Not through `Client::publish`, which skips what arrives before the PUBACK.
    client
        .client
        .publish("nlo/x", QoS::AtLeastOnce, false, &b"mine"[..])
        .await
        .unwrap();
    let mut copies = 0;
    while let Some(packet) = client.next(QUIET).await {
        if let Packet::Publish(p) = packet {
            assert_eq!(p.payload, Bytes::from_static(b"mine"));
            copies += 1;
        }
    }
    assert_eq!(copies, 1);
}

#[tokio::test]
async fn a_311_client_with_more_qos2_in_flight_than_the_window_completes() {
    let server = crate::broker_with(|c| c.mqtt.receive_maximum = 4).await;
    let mut options = crate::common::v4_options(server.mqtt_addr(), "qos2-window");
    options.set_inflight(32);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
    for n in 0..32u8 {
        client
            .publish("window/x", rumqttc::QoS::ExactlyOnce, false, vec![n])
            .await
            .unwrap();
    }
    let mut completed = 0;
    let all = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while completed < 32 {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_)) =
                events.poll().await.unwrap()
            {
                completed += 1;
            }
        }
    })
    .await;
    assert!(all.is_ok(), "only {completed} of 32 QoS 2 flows completed");
}

/// [MQTT-4.4.0-1]: a resumed session first re-sends what the device had not
/// acknowledged, with the original packet id and DUP set; once acknowledged
/// it is not sent again.
#[tokio::test]
async fn unacknowledged_messages_come_again_with_dup_after_reconnect() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
        o.set_manual_acks(true);
    };
    let (mut sub, _) = Client::connect_with(addr, "dup-sub", persistent).await;
    sub.subscribe(filter("dup/#", QoS::ExactlyOnce)).await;
    let (mut publisher, _) = Client::connect(addr, "dup-pub").await;
    for (topic, qos) in [("dup/1", QoS::AtLeastOnce), ("dup/2", QoS::ExactlyOnce)] {
        publisher
            .publish(
                topic,
                qos,
                false,
                topic.as_bytes(),
                PublishProperties::default(),
            )
            .await;
    }
    let mut first = Vec::new();
    for _ in 0..2 {
        let publish = sub.next_publish(WAIT).await.expect("delivered");
        assert!(!publish.dup, "a first delivery is not a duplicate");
        first.push((publish.topic, publish.pkid, publish.qos));
    }
    // Gone without acknowledging either.
    drop(sub);

    let (mut back, connack) = Client::connect_with(addr, "dup-sub", persistent).await;
    assert!(connack.session_present);
    for expected in &first {
        let again = back.next_publish(WAIT).await.expect("sent again");
        assert_eq!(&(again.topic.clone(), again.pkid, again.qos), expected);
        assert!(again.dup, "DUP is set on re-delivery");
        back.client.ack(&again).await.unwrap();
    }
    // Acknowledged now (QoS 2 through PUBREL/PUBCOMP): not sent a third time.
    assert!(back.next_publish(QUIET).await.is_none());
    drop(back);
    let (mut last, _) = Client::connect_with(addr, "dup-sub", persistent).await;
    assert!(
        last.next_publish(QUIET).await.is_none(),
        "nothing left owed"
    );
}

#[tokio::test]
async fn topics_whose_first_character_is_not_ascii_are_routed_like_any_other() {
    // Such a topic once stopped the router's thread (and all routing).
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut all, _) = Client::connect(addr, "utf8-all").await;
    all.subscribe(filter("#", QoS::AtLeastOnce)).await;
    let (mut one, _) = Client::connect(addr, "utf8-one").await;
    one.subscribe(filter("é/+", QoS::AtLeastOnce)).await;
    let (mut publisher, _) = Client::connect(addr, "utf8-pub").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        publisher
            .publish("é/x", qos, false, b"accent", PublishProperties::default())
            .await;
        for subscriber in [&mut all, &mut one] {
            let got = subscriber.next_publish(WAIT).await.expect("delivered");
            assert_eq!(&got.topic[..], "é/x".as_bytes());
        }
    }
    // Retained, and a wildcard subscription that must not see `$` topics.
    publisher
        .publish(
            "ü",
            QoS::AtLeastOnce,
            true,
            b"kept",
            PublishProperties::default(),
        )
        .await;
    let _ = all
        .next_publish(WAIT)
        .await
        .expect("live copy of the retained one");
    let (mut late, _) = Client::connect(addr, "utf8-late").await;
    late.subscribe(filter("+", QoS::AtLeastOnce)).await;
    let retained = late.next_publish(WAIT).await.expect("the retained message");
    assert_eq!(&retained.topic[..], "ü".as_bytes());
    publisher
        .publish(
            "$sys-like/x",
            QoS::AtLeastOnce,
            false,
            b"no",
            PublishProperties::default(),
        )
        .await;
    publisher
        .publish(
            "plain/x",
            QoS::AtLeastOnce,
            false,
            b"yes",
            PublishProperties::default(),
        )
        .await;
    let next = all.next_publish(WAIT).await.expect("routing goes on");
    assert_eq!(
        &next.topic[..],
        b"plain/x",
        "`#` does not match a `$` topic"
    );
}
