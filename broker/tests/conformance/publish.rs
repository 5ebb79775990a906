//! PUBLISH [MQTT-3.3]: topic names, topic aliases, properties passed through,
//! Message Expiry Interval.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

use crate::common::Raw;
use crate::{broker, filter, raw5, Client, WAIT};

#[tokio::test]
async fn a_wildcard_topic_name_gets_disconnect_0x90() {
    let server = broker().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    raw.send(&raw5::connect("wild5")).await;
    raw.send(&raw5::publish("a/+", &[], b"x")).await;
    let answer = raw.closed_within(WAIT).await;
    assert_eq!(raw5::disconnect_reason(&answer), Some(0x90), "{answer:?}");
}

#[tokio::test]
async fn an_empty_topic_without_alias_gets_disconnect_0x82() {
    let server = broker().await;
    let mut raw = Raw::connect(server.mqtt_addr()).await;
    raw.send(&raw5::connect("empty5")).await;
    raw.send(&raw5::publish("", &[], b"x")).await;
    let answer = raw.closed_within(WAIT).await;
    assert_eq!(raw5::disconnect_reason(&answer), Some(0x82), "{answer:?}");
}

#[tokio::test]
async fn topic_aliases_resolve_and_an_unknown_one_gets_0x94() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut sub, _) = Client::connect(addr, "alias-sub").await;
    sub.subscribe(filter("alias/#", QoS::AtMostOnce)).await;

    let mut raw = Raw::connect(addr).await;
    raw.send(&raw5::connect("alias-pub")).await;
    raw.send(&raw5::publish("alias/one", &raw5::topic_alias(3), b"first"))
        .await;
    raw.send(&raw5::publish("", &raw5::topic_alias(3), b"second"))
        .await;
    for expected in ["first", "second"] {
        let p = sub.next_publish(WAIT).await.expect("aliased publish");
        assert_eq!(p.topic, Bytes::from_static(b"alias/one"));
        assert_eq!(p.payload, Bytes::from(expected));
    }
    raw.send(&raw5::publish("", &raw5::topic_alias(9), b"unknown"))
        .await;
    let answer = raw.closed_within(WAIT).await;
    assert_eq!(raw5::disconnect_reason(&answer), Some(0x94), "{answer:?}");
}

#[tokio::test]
async fn publish_properties_reach_subscribers_unchanged() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut sub, _) = Client::connect(addr, "props-sub").await;
    sub.subscribe(filter("props/#", QoS::AtLeastOnce)).await;
    let (mut publisher, _) = Client::connect(addr, "props-pub").await;
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("site".into(), "north".into()),
            ("site".into(), "two".into()),
        ],
        ..PublishProperties::default()
    };
    publisher
        .publish("props/a", QoS::AtLeastOnce, false, b"{}", sent.clone())
        .await;
    let got = sub.next_publish(WAIT).await.expect("delivered");
    let props = got.properties.expect("properties delivered");
    assert_eq!(
        props.payload_format_indicator,
        sent.payload_format_indicator
    );
    assert_eq!(props.content_type, sent.content_type);
    assert_eq!(props.response_topic, sent.response_topic);
    assert_eq!(props.correlation_data, sent.correlation_data);
    assert_eq!(
        props.user_properties, sent.user_properties,
        "and nothing of ours"
    );
}

#[tokio::test]
async fn message_expiry_counts_down_and_expired_messages_are_not_sent() {
    let server = broker().await;
    let addr = server.mqtt_addr();
    let (mut publisher, _) = Client::connect(addr, "expiry-pub").await;
    let expiring = |secs| PublishProperties {
        message_expiry_interval: Some(secs),
        ..PublishProperties::default()
    };
    publisher
        .publish("expiry/long", QoS::AtLeastOnce, true, b"long", expiring(60))
        .await;
    publisher
        .publish(
            "expiry/short",
            QoS::AtLeastOnce,
            true,
            b"short",
            expiring(1),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    let (mut sub, _) = Client::connect(addr, "expiry-sub").await;
    sub.subscribe(filter("expiry/#", QoS::AtLeastOnce)).await;
    let got = sub
        .next_publish(WAIT)
        .await
        .expect("the long-lived message");
    assert_eq!(got.payload, Bytes::from_static(b"long"));
    let left = got.properties.and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(left, Some(54..=58)),
        "the remaining interval is sent on [MQTT-3.3.2-6]: {left:?}"
    );
    assert!(
        sub.next_publish(Duration::from_secs(1)).await.is_none(),
        "the expired message is not sent"
    );
}
