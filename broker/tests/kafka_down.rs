//! When Kafka is down no publish is acknowledged positively: MQTT 5 clients get
//! a failure reason code, MQTT 3.1.1 clients are disconnected without an ack and
//! re-send once Kafka is back. Unrouted topics keep working throughout.

mod common;

use std::time::Duration;

use rdkafka::Message;
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason};
use rumqttc::v5::{AsyncClient as AsyncClient5, Event as Event5};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tributary_bridge::testing::{consume, create_topic, unique_topic};

/// This test's own Kafka, which it stops and restarts.
const KAFKA_PORT: u16 = 19392;

async fn v5_publish_and_wait_ack(
    client: &AsyncClient5,
    eventloop: &mut rumqttc::v5::EventLoop,
    topic: &str,
    payload: &str,
    within: Duration,
) -> PubAckReason {
    client
        .publish(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            payload.to_owned(),
        )
        .await
        .unwrap();
    tokio::time::timeout(within, async {
        loop {
            match eventloop.poll().await {
                Ok(Event5::Incoming(Packet5::PubAck(ack))) => return ack.reason,
                Ok(_) => {}
                Err(e) => panic!("MQTT 5 client disconnected: {e}"),
            }
        }
    })
    .await
    .expect("a PUBACK, positive or not, within the delivery timeout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_down_means_no_positive_ack_and_resent_messages_arrive_after() {
    let kafka = OwnKafka::start(KAFKA_PORT);
    let bootstrap = kafka.bootstrap();
    let topic = unique_topic("tributary-down");
    create_topic(&bootstrap, &topic, 1).await;
    let server = common::start(&bootstrap, &[("down/#", &topic)], |config| {
        config.kafka.delivery_timeout_ms = 3_000;
    })
    .await;
    let addr = server.mqtt_addr();

    // MQTT 5 and 3.1.1 devices, both fine while Kafka is up.
    let (v5, mut v5_loop) = AsyncClient5::new(common::v5_options(addr, "dev-v5"), 10);
    let reason = v5_publish_and_wait_ack(
        &v5,
        &mut v5_loop,
        "down/v5",
        "before",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(reason, PubAckReason::Success);

    let mut v4_options = common::v4_options(addr, "dev-v4");
    v4_options.set_clean_session(false);
    let (v4, mut v4_loop) = AsyncClient::new(v4_options, 10);
    v4.publish("down/v4", QoS::AtLeastOnce, false, "before")
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = v4_loop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await;
    assert!(
        acked.is_ok(),
        "3.1.1 publish acknowledged while Kafka is up"
    );

    // A subscriber on an unrouted topic.
    let (sub, mut sub_loop) = AsyncClient::new(common::v4_options(addr, "watcher"), 10);
    sub.subscribe("free/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.unwrap() {
            break;
        }
    }

    kafka.stop();

    // MQTT 5: a PUBACK with a failure reason code, never Success.
    let reason = v5_publish_and_wait_ack(
        &v5,
        &mut v5_loop,
        "down/v5",
        "during",
        Duration::from_secs(20),
    )
    .await;
    assert_ne!(reason, PubAckReason::Success);
    assert_eq!(reason, PubAckReason::UnspecifiedError);

    // Unrouted topics keep working meanwhile.
    let (free, mut free_loop) = AsyncClient5::new(common::v5_options(addr, "free-pub"), 10);
    let reason = v5_publish_and_wait_ack(
        &free,
        &mut free_loop,
        "free/x",
        "unrouted",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reason, PubAckReason::Success);
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = sub_loop.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .expect("the subscriber still gets unrouted messages");
    assert_eq!(&got.payload[..], b"unrouted");

    // MQTT 3.1.1: no PUBACK; the connection is closed after the delivery timeout.
    for payload in ["during-1", "during-2"] {
        v4.publish("down/v4", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match v4_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    panic!("PUBACK {} while Kafka is down", ack.pkid)
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the 3.1.1 connection is closed without acks"
    );

    // Kafka comes back; the client reconnects and re-sends, and gets its acks.
    kafka.restart();
    let mut acks = 0;
    let resent = tokio::time::timeout(Duration::from_secs(90), async {
        while acks < 2 {
            match v4_loop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                Ok(_) => {}
                // Kafka may still be starting: closed again, reconnect again.
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    })
    .await;
    assert!(
        resent.is_ok(),
        "re-sent publishes acknowledged once Kafka is back"
    );

    let messages = consume(&bootstrap, &topic, 4, Duration::from_secs(30));
    let payloads: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap()).into_owned())
        .collect();
    for expected in ["before", "during-1", "during-2"] {
        assert!(
            payloads.iter().any(|p| p == expected),
            "{expected} missing from Kafka: {payloads:?}"
        );
    }
    let refused = common::metric(
        &server,
        "tributary_mqtt_publishes_refused_total{qos=\"1\",reason=\"timeout\"}",
    )
    .await;
    assert!(refused >= 2.0, "refusals counted: {refused}");
    server.shutdown().await;
}

use common::OwnKafka;
