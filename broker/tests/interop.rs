//! Interoperability with the Debian `mosquitto-clients` tools, MQTT 3.1.1 and 5.

mod common;

use std::time::Duration;

use rdkafka::Message;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tributary_bridge::testing::{consume, header, require_kafka, unique_topic};

/// `mosquitto_sub` on `filter` in protocol `version`, exiting after `count`
/// messages.
async fn subscriber(
    port: u16,
    version: &str,
    filter: &str,
    count: usize,
) -> (Child, JoinHandle<Vec<String>>) {
    let count = count.to_string();
    common::mosquitto_sub(
        port,
        &[
            "-V", version, "-t", filter, "-q", "2", "-v", "-W", "30", "-C", &count,
        ],
    )
    .await
}

async fn publish(port: u16, version: &str, qos: &str, topic: &str, message: &str) {
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args([
            "-q",
            qos,
            "-t",
            topic,
            "-m",
            message,
            "-i",
            &format!("pub-{version}-{qos}"),
        ])
        .output()
        .await
        .expect("mosquitto_pub is installed");
    assert!(
        output.status.success(),
        "mosquitto_pub -V {version} -q {qos} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_and_sub_work_in_both_protocol_versions() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-interop");
    let server = common::start(&bootstrap, &[("interop/#", &topic)], |_| {}).await;
    let port = server.mqtt_addr().port();

    let sub_v311 = subscriber(port, "mqttv311", "interop/#", 4).await;
    let sub_v5 = subscriber(port, "mqttv5", "interop/#", 4).await;

    publish(port, "mqttv311", "1", "interop/a", "v311-q1").await;
    publish(port, "mqttv311", "2", "interop/b", "v311-q2").await;
    publish(port, "mqttv5", "1", "interop/c", "v5-q1").await;
    publish(port, "mqttv5", "2", "interop/d", "v5-q2").await;

    for (name, (mut child, output)) in [("3.1.1", sub_v311), ("5", sub_v5)] {
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("mosquitto_sub finishes after 4 messages")
            .unwrap();
        assert!(status.success(), "mosquitto_sub ({name}) failed");
        let output = output.await.unwrap();
        for line in [
            "interop/a v311-q1",
            "interop/b v311-q2",
            "interop/c v5-q1",
            "interop/d v5-q2",
        ] {
            assert!(
                output.iter().any(|l| l == line),
                "mosquitto_sub ({name}) did not print {line:?}: {output:?}"
            );
        }
    }

    let messages = consume(&bootstrap, &topic, 4, Duration::from_secs(30));
    let mut seen: Vec<(String, String, String)> = messages
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
                String::from_utf8_lossy(header(m, "mqtt.topic").unwrap()).into_owned(),
                String::from_utf8_lossy(header(m, "mqtt.qos").unwrap()).into_owned(),
            )
        })
        .collect();
    seen.sort();
    let expected = [
        ("v311-q1", "interop/a", "1"),
        ("v311-q2", "interop/b", "2"),
        ("v5-q1", "interop/c", "1"),
        ("v5-q2", "interop/d", "2"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(seen, expected);
    server.shutdown().await;
}

/// `mosquitto_pub -q 0` sends, disconnects and exits before Kafka reports on
/// its record: the record reaches Kafka, and the metrics still count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_publisher_gone_before_the_report_is_still_counted_delivered() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-interop-q0");
    // A route name of its own: the metrics are the test process's, shared
    // by the servers of other tests.
    let server = common::start(&bootstrap, &[("fleeting/#", &topic)], |config| {
        config.routes[0].name = "fleeting".into();
    })
    .await;
    let port = server.mqtt_addr().port();
    for (i, version) in ["mqttv311", "mqttv5", "mqttv311"].iter().enumerate() {
        publish(port, version, "0", "fleeting/x", &format!("gone-{i}")).await;
    }
    assert_eq!(
        consume(&bootstrap, &topic, 3, Duration::from_secs(30)).len(),
        3,
        "in Kafka"
    );
    common::eventually(Duration::from_secs(10), "3 counted delivered", || async {
        common::metric(
            &server,
            "tributary_kafka_delivered_total{route=\"fleeting\"}",
        )
        .await
            == 3.0
    })
    .await;
    server.shutdown().await;
}
