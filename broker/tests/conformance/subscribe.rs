//! SUBSCRIBE / UNSUBSCRIBE [MQTT-3.8, 3.10]: options, retained messages,
//! UNSUBACK reason codes.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PublishProperties, RetainForwardRule, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS;

use crate::common::Raw;
use crate::{broker, filter, raw5, Client, QUIET, WAIT};

fn with_options(path: &str, nolocal: bool, rap: bool, rule: RetainForwardRule) -> Filter {
    Filter {
        path: path.into(),
        qos: QoS::AtLeastOnce,
        nolocal,
        preserve_retain: rap,
        retain_forward_rule: rule,
    }
}

#[tokio::test]
async fn an_empty_subscribe_is_a_protocol_error() {
    let server = broker().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    raw.send(&raw5::connect("empty-sub")).await;
    raw.send(&[0x82, 0x03, 0x00, 0x01, 0x00]).await; // pkid 1, no properties, no filters
    raw.closed_within(WAIT).await;
}

#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut me, _) = Client::connect(addr, "nl-me").await;
    me.subscribe(with_options("nl/x", true, false, RetainForwardRule::Never))
        .await;
    me.publish(
        "nl/x",
        QoS::AtLeastOnce,
        false,
        b"mine",
        PublishProperties::default(),
    )
    .await;
    let (mut other, _) = Client::connect(addr, "nl-other").await;
    other
        .publish(
            "nl/x",
            QoS::AtLeastOnce,
            false,
            b"theirs",
            PublishProperties::default(),
        )
        .await;
    let got = me
        .next_publish(WAIT)
        .await
        .expect("the other client's message");
    assert_eq!(got.payload, Bytes::from_static(b"theirs"));
    assert!(me.next_publish(QUIET).await.is_none());
}

#[tokio::test]
async fn retain_as_published_keeps_the_flag_on_live_messages() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut keep, _) = Client::connect(addr, "rap-keep").await;
    keep.subscribe(with_options("rap/x", false, true, RetainForwardRule::Never))
        .await;
    let (mut clear, _) = Client::connect(addr, "rap-clear").await;
    clear
        .subscribe(with_options(
            "rap/x",
            false,
            false,
            RetainForwardRule::Never,
        ))
        .await;
    let (mut publisher, _) = Client::connect(addr, "rap-pub").await;
    publisher
        .publish(
            "rap/x",
            QoS::AtLeastOnce,
            true,
            b"r",
            PublishProperties::default(),
        )
        .await;
    assert!(keep.next_publish(WAIT).await.expect("delivered").retain);
    assert!(!clear.next_publish(WAIT).await.expect("delivered").retain);
}

#[tokio::test]
async fn retained_messages_at_subscribe_follow_retain_handling() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut publisher, _) = Client::connect(addr, "rh-pub").await;
    publisher
        .publish(
            "rh/x",
            QoS::AtLeastOnce,
            true,
            b"kept",
            PublishProperties::default(),
        )
        .await;

    let (mut always, _) = Client::connect(addr, "rh-0").await;
    always
        .subscribe(with_options(
            "rh/x",
            false,
            false,
            RetainForwardRule::OnEverySubscribe,
        ))
        .await;
    let got = always
        .next_publish(WAIT)
        .await
        .expect("retained at subscribe");
    assert_eq!(got.payload, Bytes::from_static(b"kept"));
    assert!(
        got.retain,
        "a retained message sent at subscribe has RETAIN set"
    );

    let (mut never, _) = Client::connect(addr, "rh-2").await;
    never
        .subscribe(with_options("rh/x", false, false, RetainForwardRule::Never))
        .await;
    assert!(
        never.next_publish(QUIET).await.is_none(),
        "handling 2: not sent"
    );

    // A zero-length retained message deletes it [MQTT-3.3.1-10].
    publisher
        .publish(
            "rh/x",
            QoS::AtLeastOnce,
            true,
            b"",
            PublishProperties::default(),
        )
        .await;
    let (mut late, _) = Client::connect(addr, "rh-late").await;
    late.subscribe(filter("rh/x", QoS::AtLeastOnce)).await;
    assert!(late.next_publish(QUIET).await.is_none(), "deleted");
}

#[tokio::test]
async fn unsuback_says_whether_the_subscription_existed() {
    let server = broker().await;
    let (mut client, _) = Client::connect(server.mqtt_addr(), "unsub").await;
    client.subscribe(filter("un/a", QoS::AtLeastOnce)).await;
    for (path, expected) in [
        ("un/a", UnsubAckReason::Success),
        ("un/a", UnsubAckReason::NoSubscriptionExisted),
        ("un/never", UnsubAckReason::NoSubscriptionExisted),
    ] {
        client.client.unsubscribe(path).await.unwrap();
        let ack = loop {
            match client.next(WAIT).await.expect("UNSUBACK") {
                Packet::UnsubAck(ack) => break ack,
                _ => continue,
            }
        };
        assert_eq!(ack.reasons, [expected], "{path}");
    }
    // And the subscription is really gone.
    let (mut publisher, _) = Client::connect(server.mqtt_addr(), "unsub-pub").await;
    publisher
        .publish(
            "un/a",
            QoS::AtLeastOnce,
            false,
            b"x",
            PublishProperties::default(),
        )
        .await;
    assert!(client.next_publish(QUIET).await.is_none());
}

/// [MQTT-3.8.4-3]: a re-subscribe with Retain Handling 0 gets the retained
/// messages again; Retain Handling 1 gets them only for a new subscription.
#[tokio::test]
async fn resubscribing_sends_retained_messages_again_only_with_handling_0() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut publisher, _) = Client::connect(addr, "resub-pub").await;
    publisher
        .publish(
            "resub/x",
            QoS::AtLeastOnce,
            true,
            b"kept",
            PublishProperties::default(),
        )
        .await;
    let (mut sub, _) = Client::connect(addr, "resub-sub").await;
    for rule in [
        RetainForwardRule::OnEverySubscribe,
        RetainForwardRule::OnEverySubscribe,
    ] {
        sub.subscribe(with_options("resub/x", false, false, rule))
            .await;
        let got = sub.next_publish(WAIT).await.expect("retained at subscribe");
        assert_eq!(got.payload, Bytes::from_static(b"kept"));
        assert!(got.retain);
    }
    sub.subscribe(with_options(
        "resub/x",
        false,
        false,
        RetainForwardRule::OnNewSubscribe,
    ))
    .await;
    assert!(
        sub.next_publish(QUIET).await.is_none(),
        "handling 1: not for an existing subscription"
    );
    sub.subscribe(with_options(
        "resub/+",
        false,
        false,
        RetainForwardRule::OnNewSubscribe,
    ))
    .await;
    assert!(
        sub.next_publish(WAIT).await.is_some(),
        "handling 1: sent for a new subscription"
    );
}

/// Only a *retained* zero-length publish deletes the retained message
/// [MQTT-3.3.1-10]; a plain empty one is just a message.
#[tokio::test]
async fn a_plain_empty_publish_leaves_the_retained_message_alone() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut publisher, _) = Client::connect(addr, "empty-pub").await;
    for (retain, payload) in [(true, &b"kept"[..]), (false, &b""[..])] {
        publisher
            .publish(
                "empty/x",
                QoS::AtLeastOnce,
                retain,
                payload,
                PublishProperties::default(),
            )
            .await;
    }
    let (mut late, _) = Client::connect(addr, "empty-late").await;
    late.subscribe(filter("empty/x", QoS::AtLeastOnce)).await;
    let got = late.next_publish(WAIT).await.expect("still retained");
    assert_eq!(got.payload, Bytes::from_static(b"kept"));
}

#[tokio::test]
async fn a_client_that_subscribes_then_publishes_at_once_gets_its_own_messages_in_order() {
    use tokio::io::AsyncReadExt;
    let server = broker().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    // CONNECT, SUBSCRIBE self/t QoS 0, then 20 QoS 0 PUBLISHes to it, in one
    // write: no waiting for the CONNACK or the SUBACK.
    let mut bytes = crate::common::connect_v4("self-order");
    let mut subscribe = vec![0x00, 0x01, 0x00, 0x06];
    subscribe.extend_from_slice(b"self/t");
    subscribe.push(0x00);
    bytes.extend_from_slice(&tributary_wire::packet(0x82, &subscribe));
    for i in 0..20u8 {
        bytes.extend_from_slice(&crate::common::publish_v4("self/t", &[i]));
    }
    raw.send(&bytes).await;
    let mut got = Vec::new();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < 20 && tokio::time::Instant::now() < deadline {
        let mut chunk = [0u8; 1024];
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, raw.0.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        while let Ok(Some(header)) = tributary_wire::FixedHeader::peek(&buf) {
            if buf.len() < header.frame_len() {
                break;
            }
            let frame: Vec<u8> = buf.drain(..header.frame_len()).collect();
            if header.packet_type() == tributary_wire::packet_type::PUBLISH {
                got.push(*frame.last().unwrap_or(&0xff));
            }
        }
    }
    assert_eq!(
        got,
        (0..20u8).collect::<Vec<_>>(),
        "all of its own, in order"
    );
}
