//! The spool as devices and Kafka consumers see it: with `[spool]` on, QoS 1
//! publishes are acknowledged while Kafka is stopped, and after Kafka
//! returns every acknowledged message is in Kafka, each device's in order.

mod common;

use std::time::Duration;

use common::Raw;
use rdkafka::Message as _;
use tributary_bridge::testing::{consume, create_topic, unique_topic};
use tributary_bridge::{KeySource, RouteConfig, RouteSpool};
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

/// A config of a process of the test's own: loopback listeners, the spool
/// on in `dir/spool` (plus `spool_extra`), one route `spooled/#` → `topic`
/// keyed by client id. Returns its path.
fn write_config(
    dir: &std::path::Path,
    bootstrap: &str,
    topic: &str,
    delivery_timeout_ms: u32,
    spool_extra: &str,
) -> std::path::PathBuf {
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
delivery_timeout_ms = {delivery_timeout_ms}
[spool]
enabled = true
dir = "{}"
{spool_extra}
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
    config
}

/// The payloads in `topic`, from its start, read again until `done` holds
/// for them or 120 s pass (then what was read: the assertions say what is
/// missing).
fn payloads_until(bootstrap: &str, topic: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let payloads: Vec<String> = consume(bootstrap, topic, 100_000, Duration::from_secs(5))
            .iter()
            .map(|r| String::from_utf8_lossy(r.payload().unwrap_or_default()).into_owned())
            .collect();
        if done(&payloads) || std::time::Instant::now() > deadline {
            return payloads;
        }
    }
}

/// Each distinct item once, in the order of its first appearance (what
/// at-least-once delivery keeps).
fn first_seen<T: Clone + Eq + std::hash::Hash>(items: &[T]) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items
        .iter()
        .filter(|item| seen.insert(*item))
        .cloned()
        .collect()
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
        for (name, filter, spool) in [
            ("direct", "direct/#", RouteSpool::Off),
            ("everything", "all/#", RouteSpool::All),
        ] {
            config.routes.push(RouteConfig {
                name: name.into(),
                mqtt_filters: vec![filter.into()],
                kafka_topic: topic.clone(),
                key: KeySource::ClientId,
                spool,
                ..RouteConfig::default()
            });
        }
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

    // A route with `spool = "all"` keeps QoS 0 publishes through the outage.
    let mut qos0 = Raw::connect(addr).await;
    qos0.send(&connect(4, "qos0-publisher")).await;
    assert!(qos0
        .read_until(&[0x20], Duration::from_secs(5))
        .await
        .is_some());
    for i in 1..=5 {
        qos0.send(&common::publish_v4("all/dev", format!("q0-{i}").as_bytes()))
            .await;
    }
    // A will goes through the spool like a publish.
    let mut doomed = Raw::connect(addr).await;
    let mut body = [&string(b"MQTT")[..], &[4, 0x02 | 0x04 | 0x08, 0, 60]].concat();
    body.extend(string(b"will-owner"));
    body.extend(string(b"spooled/will"));
    body.extend(string(b"will-1"));
    doomed.send(&packet(0x10, &body)).await;
    assert!(doomed
        .read_until(&[0x20], Duration::from_secs(5))
        .await
        .is_some());
    drop(doomed); // gone without DISCONNECT: the will is published
                  // A route with `spool = "off"` still acknowledges only what Kafka has:
                  // an MQTT 5 publisher gets a failure once the delivery timeout passes.
    let mut direct = Raw::connect(addr).await;
    direct.send(&connect(5, "direct-publisher")).await;
    assert!(direct
        .read_until(&[0x20], Duration::from_secs(5))
        .await
        .is_some());
    direct
        .send(&publish_qos1(5, "direct/dev", 1, b"direct-1"))
        .await;
    let puback = direct
        .read_packet(0x40, Duration::from_secs(15))
        .await
        .expect("a PUBACK for the publish on the route without spool");
    assert!(
        puback.len() >= 5 && puback[4] >= 0x80,
        "a route with spool = \"off\" acknowledged a publish Kafka never had: {puback:02x?}"
    );
    // QoS 2, both versions: PUBREC and PUBCOMP while Kafka is gone.
    for version in [4u8, 5] {
        let mut q2 = Raw::connect(addr).await;
        q2.send(&connect(version, &format!("qos2-{version}"))).await;
        assert!(q2
            .read_until(&[0x20], Duration::from_secs(5))
            .await
            .is_some());
        let mut body = string(b"spooled/q2");
        body.extend(7u16.to_be_bytes());
        if version == 5 {
            body.push(0);
        }
        body.extend(format!("q2-v{version}").as_bytes());
        q2.send(&packet(0x34, &body)).await;
        let pubrec = q2
            .read_packet(0x50, Duration::from_secs(5))
            .await
            .expect("a PUBREC");
        assert!(
            pubrec.len() == 4 || pubrec[4] == 0,
            "MQTT {version}: QoS 2 refused while Kafka is down: {pubrec:02x?}"
        );
        q2.send(&packet(0x62, &7u16.to_be_bytes())).await;
        assert!(
            q2.read_packet(0x70, Duration::from_secs(5)).await.is_some(),
            "MQTT {version}: no PUBCOMP"
        );
    }
    common::eventually(
        Duration::from_secs(10),
        "the QoS 0 and QoS 2 publishes and the will in the spool",
        || async { common::metric(&server, "tributary_spool_records").await >= 48.0 },
    )
    .await;

    kafka.restart();

    // Everything acknowledged reaches Kafka, each device's in its order (of
    // first delivery: a batch produced again after a failure may repeat).
    let expected = |version: u8| -> Vec<String> {
        (1..=MESSAGES)
            .map(|i| format!("v{version}-{i:02}"))
            .collect()
    };
    let first_seen_of = |payloads: &[String], version: u8| -> Vec<String> {
        let prefix = format!("v{version}-");
        let of_version: Vec<String> = payloads
            .iter()
            .filter(|p| p.starts_with(&prefix))
            .cloned()
            .collect();
        first_seen(&of_version)
    };
    let payloads = payloads_until(&bootstrap, &topic, |payloads| {
        [4, 5]
            .iter()
            .all(|&v| first_seen_of(payloads, v).len() == MESSAGES as usize)
            && payloads.iter().any(|p| p == "will-1")
            && payloads.iter().any(|p| p == "q2-v4")
            && payloads.iter().any(|p| p == "q2-v5")
            && payloads.iter().filter(|p| p.starts_with("q0-")).count() >= 5
    });
    for version in [4, 5] {
        assert_eq!(
            first_seen_of(&payloads, version),
            expected(version),
            "MQTT {version}: not every acknowledged message, or out of order: {payloads:?}"
        );
    }
    let qos0: Vec<&String> = payloads.iter().filter(|p| p.starts_with("q0-")).collect();
    assert_eq!(
        qos0,
        ["q0-1", "q0-2", "q0-3", "q0-4", "q0-5"],
        "QoS 0 publishes on a route with spool = \"all\""
    );
    assert!(
        payloads.iter().any(|p| p == "will-1"),
        "the will published during the outage is not in Kafka: {payloads:?}"
    );
    for q2 in ["q2-v4", "q2-v5"] {
        assert!(
            payloads.iter().any(|p| p == q2),
            "{q2}, completed during the outage, is not in Kafka"
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
    let config = write_config(&dir, &bootstrap, &topic, 3000, "");

    kafka.stop();
    let first = common::Process::start(&config);
    let addr = first.mqtt_addr();
    publish_all_acknowledged(addr, 4, "killed-while-spooling", "k").await;
    // The operator is told why records wait.
    first.wait_for(Duration::from_secs(10), |line| line.contains("spooling:"));
    // Killed with everything acknowledged and nothing in Kafka.
    drop(first);

    kafka.restart();
    let second = common::Process::start(&config);
    let _ = second.mqtt_addr();
    let payloads = payloads_until(&bootstrap, &topic, |payloads| {
        payloads.len() >= MESSAGES as usize
    });
    let expected: Vec<String> = (1..=MESSAGES).map(|i| format!("k-{i:02}")).collect();
    assert_eq!(payloads, expected, "after a SIGKILL and a restart");
    drop(second);
    drop(kafka);
    let _ = std::fs::remove_dir_all(dir);
}

/// Publishes `count` QoS 1 messages `{label}-00001`... from one MQTT 3.1.1
/// device, up to 100 unacknowledged at a time; returns once all are
/// acknowledged (PUBACKs come in publish order).
async fn publish_many(addr: std::net::SocketAddr, client_id: &str, label: &str, count: u32) {
    let mut raw = Raw::connect(addr).await;
    raw.send(&connect(4, client_id)).await;
    assert!(raw
        .read_until(&[0x20], Duration::from_secs(5))
        .await
        .is_some());
    let mut sent = 0u32;
    while sent < count {
        let window = (count - sent).min(100);
        let mut burst = Vec::new();
        let mut last_pkid = 0u16;
        for i in sent + 1..=sent + window {
            last_pkid = (i % 65_535 + 1) as u16;
            let payload = format!("{label}-{i:05}");
            burst.extend(publish_qos1(
                4,
                "spooled/dev",
                last_pkid,
                payload.as_bytes(),
            ));
        }
        raw.send(&burst).await;
        let puback = [0x40, 0x02, (last_pkid >> 8) as u8, last_pkid as u8];
        assert!(
            raw.read_until(&puback, Duration::from_secs(30))
                .await
                .is_some(),
            "no PUBACK for {label}-{:05}",
            sent + window
        );
        sent += window;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_while_draining_loses_nothing_and_repeats_at_most_the_batches_in_flight() {
    const COUNT: u32 = 20_000;
    let kafka = common::OwnKafka::start(KAFKA_PORT + 4);
    let bootstrap = kafka.bootstrap();
    let topic = unique_topic("tributary-spool-drain-kill");
    create_topic(&bootstrap, &topic, 1).await;
    let dir = common::pki::dir("spool-drain-kill");
    let config = write_config(&dir, &bootstrap, &topic, 5000, "");

    kafka.stop();
    let first = common::Process::start(&config);
    let (addr, http) = first.addrs();
    publish_many(addr, "killed-while-draining", "d", COUNT).await;

    // Kafka returns; the drain starts; SIGKILL in the middle of it.
    kafka.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let drained_before_kill = loop {
        let drained = common::metric_at(http, "tributary_spool_drained_total").await;
        if drained > 0.0 {
            break drained;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drain never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(first);
    assert!(
        drained_before_kill < f64::from(COUNT),
        "the spool had drained entirely before the kill: nothing tested"
    );

    let second = common::Process::start(&config);
    let _ = second.mqtt_addr();
    let payloads = payloads_until(&bootstrap, &topic, |payloads| {
        first_seen(payloads).len() >= COUNT as usize
    });
    let distinct = first_seen(&payloads);
    let expected: Vec<String> = (1..=COUNT).map(|i| format!("d-{i:05}")).collect();
    assert!(
        distinct.iter().eq(expected.iter()),
        "after a SIGKILL while draining: {} of {COUNT} distinct, or out of order",
        distinct.len()
    );
    let duplicates = payloads.len() - distinct.len();
    println!(
        "killed after {drained_before_kill} drained: {} records in Kafka for {COUNT} acknowledged, {duplicates} duplicates",
        payloads.len()
    );
    // What the README promises: at most what Kafka had taken and the spool
    // had not yet committed away, 8 batches of 500.
    assert!(duplicates <= 4_000, "{duplicates} duplicates");
    drop(second);
    drop(kafka);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_refuses_mqtt5_with_0x97_holds_mqtt311_and_loses_nothing() {
    let kafka = common::OwnKafka::start(KAFKA_PORT + 6);
    let bootstrap = kafka.bootstrap();
    let topic = unique_topic("tributary-spool-full");
    create_topic(&bootstrap, &topic, 1).await;
    let dir = common::pki::dir("spool-full");
    let config = write_config(&dir, &bootstrap, &topic, 3000, "max_bytes = 1048576");
    kafka.stop();
    let server = common::Process::start(&config);
    let addr = server.mqtt_addr();

    // MQTT 5: acknowledged until the spool is full, then Quota exceeded.
    let mut v5 = Raw::connect(addr).await;
    v5.send(&connect(5, "filler")).await;
    assert!(v5
        .read_until(&[0x20], Duration::from_secs(5))
        .await
        .is_some());
    let payload = vec![b'x'; 1000];
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 1..=5_000u16 {
        let body = [format!("{i:05}-").as_bytes(), &payload].concat();
        v5.send(&publish_qos1(5, "spooled/dev", i, &body)).await;
        let puback = v5
            .read_packet(0x40, Duration::from_secs(10))
            .await
            .expect("a PUBACK, positive or not");
        match puback.get(4).copied().unwrap_or(0) {
            0 => acknowledged.push(format!("{i:05}")),
            code => {
                refusal = Some(code);
                break;
            }
        }
    }
    assert_eq!(
        refusal,
        Some(0x97),
        "MQTT 5: Quota exceeded once the spool is full (after {} acknowledged)",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() > 100,
        "{} acknowledged",
        acknowledged.len()
    );

    // MQTT 3.1.1 cannot be told: no PUBACK, the connection stays, and the
    // publish waits for room (as large as the one refused: it does not fit).
    let mut v4 = Raw::connect(addr).await;
    v4.send(&connect(4, "old-device")).await;
    assert!(v4
        .read_until(&[0x20], Duration::from_secs(5))
        .await
        .is_some());
    let body = [&b"v4old-"[..], &payload].concat();
    v4.send(&publish_qos1(4, "spooled/old", 1, &body)).await;
    assert_eq!(
        v4.read_packet(0x40, Duration::from_secs(3)).await,
        None,
        "MQTT 3.1.1: no PUBACK while the spool is full"
    );

    // Kafka returns, the drain makes room: the waiting publish is stored and
    // acknowledged on the same connection.
    kafka.restart();
    let puback = v4.read_packet(0x40, Duration::from_secs(120)).await;
    assert_eq!(
        puback,
        Some(vec![0x40, 0x02, 0x00, 0x01]),
        "MQTT 3.1.1: acknowledged once there was room"
    );

    // Everything acknowledged is in Kafka, each device's in order.
    let id = |payload: &String| payload.split('-').next().unwrap_or_default().to_owned();
    let payloads = payloads_until(&bootstrap, &topic, |payloads| {
        first_seen(&payloads.iter().map(id).collect::<Vec<_>>()).len() > acknowledged.len()
    });
    let ids: Vec<String> = payloads.iter().map(id).collect();
    let seen = first_seen(&ids);
    let v5_seen: Vec<&String> = seen.iter().filter(|id| *id != "v4old").collect();
    assert!(
        v5_seen.iter().copied().eq(acknowledged.iter()),
        "MQTT 5: every acknowledged message, in order ({} of {})",
        v5_seen.len(),
        acknowledged.len()
    );
    assert!(
        seen.iter().any(|id| id == "v4old"),
        "the MQTT 3.1.1 publish"
    );
    drop(server);
    drop(kafka);
    let _ = std::fs::remove_dir_all(dir);
}

/// A spooled record Kafka refuses for good (too large for its topic) would
/// hold every record behind it in the spool forever; with a dead-letter
/// topic it is written there and the drain goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_record_kafka_refuses_for_good_goes_to_the_dead_letters_and_the_rest_follow() {
    let bootstrap = tributary_bridge::testing::require_kafka();
    let topic = unique_topic("tributary-spool-poison");
    let dead = unique_topic("tributary-spool-dead");
    tributary_bridge::testing::create_topic_with(
        &bootstrap,
        &topic,
        1,
        &[("max.message.bytes", "2000")],
    )
    .await;
    create_topic(&bootstrap, &dead, 1).await;
    let dir = common::pki::dir("spool-poison");
    let spool_dir = dir.join("spool");
    let server = common::start(&bootstrap, &[], |config| {
        config.spool.enabled = true;
        config.spool.dir = spool_dir.clone();
        config.routes = vec![RouteConfig {
            name: "spooled".into(),
            mqtt_filters: vec!["spooled/#".into()],
            kafka_topic: topic.clone(),
            key: KeySource::ClientId,
            on_failure: tributary_bridge::OnFailure::DeadLetter,
            dead_letter_topic: dead.clone(),
            ..RouteConfig::default()
        }];
    })
    .await;
    let mut device = Raw::connect(server.mqtt_addr()).await;
    device.send(&common::connect_v4("poisoner")).await;
    assert!(device
        .read_until(&[0x20], Duration::from_secs(5))
        .await
        .is_some());
    // QoS 1: acknowledged once in the spool; the large one first.
    let qos1 = |pkid: u16, payload: &[u8]| {
        let mut body = Vec::new();
        body.extend((b"spooled/x".len() as u16).to_be_bytes());
        body.extend(b"spooled/x");
        body.extend(pkid.to_be_bytes());
        body.extend(payload);
        packet(0x32, &body)
    };
    device.send(&qos1(1, &vec![b'x'; 3_000])).await;
    for i in 2..=4u16 {
        device.send(&qos1(i, format!("after-{i}").as_bytes())).await;
    }
    // Acknowledgements go out in order: the last one means all four.
    let acks = device
        .read_until(&[0x40, 2, 0, 4], Duration::from_secs(10))
        .await
        .expect("PUBACK 4");
    assert!(
        acks.windows(4).any(|w| w == [0x40, 2, 0, 1]),
        "PUBACK 1 (the large one): {acks:?}"
    );
    let after = payloads_until(&bootstrap, &topic, |seen| seen.len() >= 3);
    assert_eq!(
        after,
        ["after-2", "after-3", "after-4"],
        "not held behind the refused one"
    );
    let letters = consume(&bootstrap, &dead, 1, Duration::from_secs(20));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload().map(<[u8]>::len), Some(3_000));
    assert_eq!(
        tributary_bridge::testing::header(&letters[0], "tributary.dead_letter.reason"),
        Some(&b"message_too_large"[..])
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
