//! A will published when a real client process is SIGKILLed reaches Kafka and a
//! subscriber; a clean DISCONNECT publishes no will.

mod common;

use std::time::Duration;

use rdkafka::Message;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::process::{Child, Command};
use tributary_bridge::testing::{consume, header, require_kafka, unique_topic};

/// A `mosquitto_sub` process holding a will, connected (its SUBACK seen).
async fn client_with_will(port: u16, client_id: &str, will_topic: &str) -> Child {
    let (child, _output) = common::mosquitto_sub(
        port,
        &[
            "-i",
            client_id,
            "-t",
            "nothing/here",
            "--will-topic",
            will_topic,
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
        ],
    )
    .await;
    child
}

async fn subscribe(addr: std::net::SocketAddr, filter: &str) -> EventLoop {
    let (client, mut eventloop) = AsyncClient::new(common::v4_options(addr, "watcher"), 10);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            // Keep the client alive as long as the event loop.
            std::mem::forget(client);
            return eventloop;
        }
    }
}

async fn next_publish(eventloop: &mut EventLoop, within: Duration) -> Option<rumqttc::Publish> {
    tokio::time::timeout(within, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_of_a_killed_client_reaches_kafka_and_subscribers() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-will");
    let server = common::start(&bootstrap, &[("status/#", &topic)], |_| {}).await;
    let addr = server.mqtt_addr();
    let mut watcher = subscribe(addr, "status/#").await;

    let mut device = client_with_will(addr.port(), "dev-will-1", "status/dev-will-1").await;
    device.start_kill().unwrap(); // SIGKILL: no DISCONNECT is sent
    device.wait().await.unwrap();

    let will = next_publish(&mut watcher, Duration::from_secs(10))
        .await
        .expect("the subscriber receives the will");
    assert_eq!(will.topic, "status/dev-will-1");
    assert_eq!(&will.payload[..], b"offline");

    let messages = consume(&bootstrap, &topic, 1, Duration::from_secs(20));
    assert_eq!(messages.len(), 1, "the will is in Kafka");
    assert_eq!(messages[0].payload(), Some(&b"offline"[..]));
    assert_eq!(
        header(&messages[0], "mqtt.client_id"),
        Some(&b"dev-will-1"[..])
    );
    assert_eq!(header(&messages[0], "mqtt.qos"), Some(&b"1"[..]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_disconnect_publishes_no_will() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-nowill");
    let server = common::start(&bootstrap, &[("status/#", &topic)], |_| {}).await;
    let addr = server.mqtt_addr();
    let mut watcher = subscribe(addr, "status/#").await;

    // A retained trigger: the device gets exactly one message on subscribing, and
    // `-C 1` makes it DISCONNECT cleanly after it. (A flood of messages would
    // make its socket close with unread data, i.e. a TCP reset that loses its
    // DISCONNECT: an abnormal close, rightly followed by the will.)
    let (client, mut eventloop) = AsyncClient::new(common::v4_options(addr, "trigger"), 10);
    client
        .publish("status/trigger", QoS::AtLeastOnce, true, "go")
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "trigger not acknowledged");
    let _trigger = next_publish(&mut watcher, Duration::from_secs(5)).await;
    let status = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-i",
            "dev-will-2",
        ])
        .args(["-t", "status/trigger", "-C", "1", "-W", "20"])
        .args([
            "--will-topic",
            "status/dev-will-2",
            "--will-payload",
            "offline",
        ])
        .kill_on_drop(true)
        .status()
        .await
        .unwrap();
    assert!(
        status.success(),
        "the device got the retained trigger and disconnected"
    );

    // The watcher sees triggers only, never the will.
    while let Some(p) = next_publish(&mut watcher, Duration::from_secs(2)).await {
        assert_eq!(p.topic, "status/trigger", "unexpected will: {p:?}");
    }
    let wills: Vec<_> = consume(&bootstrap, &topic, usize::MAX, Duration::from_secs(3))
        .into_iter()
        .filter(|m| header(m, "mqtt.topic") == Some(&b"status/dev-will-2"[..]))
        .collect();
    assert!(
        wills.is_empty(),
        "no will in Kafka after a clean DISCONNECT"
    );
    server.shutdown().await;
}
