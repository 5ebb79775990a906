//! Bad input closes only the connection that sent it; everyone else carries on,
//! and the counters say what happened.

mod common;

use std::time::Duration;

use common::{connect_v4, publish_v4, Raw};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tributary_bridge::testing::{require_kafka, unique_topic};

const MAX_PACKET: usize = 1024;
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A healthy client publishes QoS 1 and gets its PUBACK.
async fn healthy_roundtrip(client: &AsyncClient, eventloop: &mut rumqttc::EventLoop) {
    client
        .publish("healthy/x", QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(e) => panic!("the healthy client was disconnected: {e}"),
            }
        }
    })
    .await;
    assert_eq!(acked, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_input_closes_only_its_own_connection() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-bad");
    let server = common::start(&bootstrap, &[("healthy/#", &topic)], |config| {
        config.mqtt.max_packet_size = MAX_PACKET;
        config.mqtt.connect_timeout_ms = 1_000;
    })
    .await;
    let addr = server.mqtt_addr();
    let (healthy, mut healthy_loop) = AsyncClient::new(common::v4_options(addr, "healthy"), 10);
    healthy_roundtrip(&healthy, &mut healthy_loop).await;

    // Random bytes.
    let mut raw = Raw::connect(addr).await;
    raw.send(&[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00])
        .await;
    raw.closed_within(CLOSE_WITHIN).await;

    // A first packet that is not CONNECT (PINGREQ).
    let mut raw = Raw::connect(addr).await;
    raw.send(&[0xc0, 0x00]).await;
    assert!(
        raw.closed_within(CLOSE_WITHIN).await.is_empty(),
        "no answer"
    );

    // Nothing at all: the connect timeout closes it.
    let mut raw = Raw::connect(addr).await;
    raw.closed_within(CLOSE_WITHIN).await;

    // A packet over the size limit.
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect_v4("big")).await;
    raw.send(&publish_v4("healthy/big", &vec![b'x'; MAX_PACKET * 2]))
        .await;
    let answer = raw.closed_within(CLOSE_WITHIN).await;
    assert_eq!(&answer[..], &[0x20, 0x02, 0x00, 0x00], "only the CONNACK");

    // A malformed PUBLISH: QoS 3 does not exist [MQTT-3.3.1-4].
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect_v4("qos3")).await;
    raw.send(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]).await;
    raw.closed_within(CLOSE_WITHIN).await;

    // A PUBLISH to a wildcard topic name [MQTT-3.3.2-2].
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect_v4("wild")).await;
    raw.send(&publish_v4("healthy/#", b"x")).await;
    raw.closed_within(CLOSE_WITHIN).await;

    // A client id the broker cannot hold gets a CONNACK refusal (0x02).
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect_v4("bad/id")).await;
    let answer = raw.closed_within(CLOSE_WITHIN).await;
    assert_eq!(&answer[..], &[0x20, 0x02, 0x00, 0x02]);

    // MQTT 3.1 (protocol level 3) is refused with 0x01.
    let mut raw = Raw::connect(addr).await;
    let mut connect = connect_v4("old");
    connect[8] = 3;
    raw.send(&connect).await;
    let answer = raw.closed_within(CLOSE_WITHIN).await;
    assert_eq!(&answer[..], &[0x20, 0x02, 0x00, 0x01]);

    // The healthy client never noticed.
    healthy_roundtrip(&healthy, &mut healthy_loop).await;

    for (sample, at_least) in [
        (
            "tributary_connections_refused_total{reason=\"malformed\"}",
            1.0,
        ),
        (
            "tributary_connections_refused_total{reason=\"not_connect\"}",
            1.0,
        ),
        (
            "tributary_connections_refused_total{reason=\"connect_timeout\"}",
            1.0,
        ),
        (
            "tributary_connections_refused_total{reason=\"client_id\"}",
            1.0,
        ),
        (
            "tributary_connections_refused_total{reason=\"unsupported_protocol\"}",
            1.0,
        ),
        (
            "tributary_connections_closed_total{reason=\"packet_too_large\"}",
            1.0,
        ),
        (
            "tributary_connections_closed_total{reason=\"malformed\"}",
            1.0,
        ),
        (
            "tributary_connections_closed_total{reason=\"invalid_topic_name\"}",
            1.0,
        ),
    ] {
        let value = common::metric(&server, sample).await;
        assert!(value >= at_least, "{sample} = {value}");
    }
    server.shutdown().await;
}
