//! The spool as devices and Kafka consumers see it: with `[spool]` on, QoS 1
//! publishes are acknowledged while Kafka is stopped, and after Kafka
//! returns every acknowledged message is in Kafka, each device's in order.

mod common;

use std::time::Duration;

use common::Raw;
use rdkafka::Message as _;
use tributary_bridge::testing::{consume, create_topic, unique_topic};
use tributary_wire::packet;

/// This test's own Kafka, which it stops and restarts.
const KAFKA_PORT: u16 = 19396;
const MESSAGES: u16 = 20;

fn string(bytes: &[u8]) -> Vec<u8> {
    [&(bytes.len() as u16).to_be_bytes()[..], bytes].concat()
}

fn connect(version: u8, client_id: &str) -> Vec<u8> {
    let mut body = [&string(b"MQTT")[..], &[version, 0x02, 0, 60]].concat();
    if version == 5 {
        body.push(0);
    }
    body.extend(string(client_id.as_bytes()));
    packet(0x10, &body)
}

fn publish_qos1(version: u8, topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic.as_bytes());
    body.extend(pkid.to_be_bytes());
    if version == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// A device of `version` publishes `{label}-01` ... at QoS 1 on
/// `spooled/dev`, each acknowledged positively before the next.
async fn publish_all_acknowledged(
    addr: std::net::SocketAddr,
    version: u8,
    client_id: &str,
    label: &str,
) {
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect(version, client_id)).await;
    assert!(raw
        .read_until(&[0x20], Duration::from_secs(5))
        .await
        .is_some());
    for i in 1..=MESSAGES {
        let payload = format!("{label}-{i:02}");
        raw.send(&publish_qos1(version, "spooled/dev", i, payload.as_bytes()))
            .await;
        let puback = [0x40, 0x02, (i >> 8) as u8, i as u8];
        assert!(
            raw.read_until(&puback, Duration::from_secs(5))
                .await
                .is_some(),
            "MQTT {version}: no positive PUBACK for {payload} while Kafka is down"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_spool_publishes_are_acknowledged_while_kafka_is_down_and_all_reach_it_in_order() {
    let kafka = common::OwnKafka::start(KAFKA_PORT);
    let bootstrap = kafka.bootstrap();
    let topic = unique_topic("tributary-spool");
    create_topic(&bootstrap, &topic, 1).await;
    let dir = common::pki::dir("spool");
    let spool_dir = dir.join("spool");
    let server = common::start(&bootstrap, &[("spooled/#", &topic)], |config| {
        config.spool.enabled = true;
        config.spool.dir = spool_dir.clone();
        config.kafka.delivery_timeout_ms = 3_000;
    })
    .await;
    let addr = server.mqtt_addr();

    kafka.stop();

    // Both protocol versions, QoS 1: every publish acknowledged positively,
    // at once, although Kafka is gone.
    for version in [4u8, 5] {
        publish_all_acknowledged(
            addr,
            version,
            &format!("spooler-{version}"),
            &format!("v{version}"),
        )
        .await;
    }

    // Not ready for Kafka, but devices are served: /readyz says so, 200.
    let mut readyz = (0, String::new());
    for _ in 0..100 {
        readyz = common::http_get(server.http_addr(), "/readyz").await;
        if readyz.1.contains("spooling") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(readyz.0, 200, "{}", readyz.1);
    assert!(readyz.1.contains("spooling (40 records"), "{}", readyz.1);

    kafka.restart();

    // Everything acknowledged reaches Kafka, each device's in its order (of
    // first delivery: a batch produced again after a failure may repeat).
    let expected = |version: u8| -> Vec<String> {
        (1..=MESSAGES)
            .map(|i| format!("v{version}-{i:02}"))
            .collect()
    };
    let first_seen = |payloads: &[String], version: u8| -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for p in payloads
            .iter()
            .filter(|p| p.starts_with(&format!("v{version}-")))
        {
            if !seen.contains(p) {
                seen.push(p.clone());
            }
        }
        seen
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let payloads = loop {
        let records = consume(&bootstrap, &topic, 10_000, Duration::from_secs(5));
        let payloads: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(r.payload().unwrap_or_default()).into_owned())
            .collect();
        let complete = [4, 5]
            .iter()
            .all(|&v| first_seen(&payloads, v).len() == MESSAGES as usize);
        if complete || std::time::Instant::now() > deadline {
            break payloads;
        }
    };
    for version in [4, 5] {
        assert_eq!(
            first_seen(&payloads, version),
            expected(version),
            "MQTT {version}: not every acknowledged message, or out of order: {payloads:?}"
        );
    }
    println!(
        "{} records in Kafka for {} acknowledged publishes",
        payloads.len(),
        2 * MESSAGES
    );
    // The spool's metrics say it drained.
    common::eventually(
        Duration::from_secs(10),
        "the spool drained, by its metrics",
        || async {
            common::metric(&server, "tributary_spool_records").await == 0.0
                && common::metric(&server, "tributary_spool_drained_total").await
                    >= f64::from(2 * MESSAGES)
        },
    )
    .await;
    server.shutdown().await;
    drop(kafka);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_while_spooling_loses_nothing_acknowledged() {
    let kafka = common::OwnKafka::start(KAFKA_PORT + 2);
    let bootstrap = kafka.bootstrap();
    let topic = unique_topic("tributary-spool-kill");
    create_topic(&bootstrap, &topic, 1).await;
    let dir = common::pki::dir("spool-kill");
    let config = dir.join("tributary.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[kafka]
bootstrap_servers = "{bootstrap}"
delivery_timeout_ms = 3000
[spool]
enabled = true
dir = "{}"
[[routes]]
name = "spooled"
mqtt_filters = ["spooled/#"]
kafka_topic = "{topic}"
key = "client_id"
"#,
            dir.join("spool").display()
        ),
    )
    .unwrap();

    kafka.stop();
    let first = common::Process::start(&config);
    let addr = first.mqtt_addr();
    publish_all_acknowledged(addr, 4, "killed-while-spooling", "k").await;
    // Killed with everything acknowledged and nothing in Kafka.
    drop(first);

    kafka.restart();
    let second = common::Process::start(&config);
    let _ = second.mqtt_addr();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let payloads = loop {
        let records = consume(&bootstrap, &topic, 10_000, Duration::from_secs(5));
        let payloads: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(r.payload().unwrap_or_default()).into_owned())
            .collect();
        if payloads.len() >= MESSAGES as usize || std::time::Instant::now() > deadline {
            break payloads;
        }
    };
    let expected: Vec<String> = (1..=MESSAGES).map(|i| format!("k-{i:02}")).collect();
    assert_eq!(payloads, expected, "after a SIGKILL and a restart");
    drop(second);
    drop(kafka);
    let _ = std::fs::remove_dir_all(dir);
}
