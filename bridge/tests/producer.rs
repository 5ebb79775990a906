//! The producer against a real Kafka: what goes in comes back out, every record,
//! with its key, headers and per-key order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use rdkafka::Message;
use tributary_bridge::testing::{consume, create_topic, header, require_kafka, unique_topic};
use tributary_bridge::{
    DeliveryError, KafkaConfig, KeySource, MqttPublish, NotReady, Producer, Record, RouteConfig,
    RouteTable, Unreachable,
};

const RECORDS: usize = 10_000;
const DEVICES: usize = 20;
const PARTITIONS: i32 = 3;

fn producer(bootstrap: &str) -> Producer {
    Producer::new(&KafkaConfig {
        bootstrap_servers: bootstrap.into(),
        ..KafkaConfig::default()
    })
    .expect("producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_come_back_intact_and_in_order_per_key() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-producer");
    create_topic(&bootstrap, &topic, PARTITIONS).await;
    let table = RouteTable::compile(&[RouteConfig {
        name: "telemetry".into(),
        mqtt_filters: vec!["sensors/#".into()],
        kafka_topic: topic.clone(),
        key: KeySource::Topic,
        ..RouteConfig::default()
    }])
    .unwrap();
    let producer = producer(&bootstrap);

    let mut pending = Vec::with_capacity(RECORDS);
    for seq in 0..RECORDS {
        let device = seq % DEVICES;
        let mqtt_topic = format!("sensors/dev{device}/temp");
        let publish = MqttPublish {
            topic: mqtt_topic.as_str().into(),
            client_id: Arc::from(format!("client-{device}")),
            qos: (seq % 3) as u8,
            retain: seq.is_multiple_of(2),
            payload: Bytes::from(format!("{device}:{seq}")),
            ..MqttPublish::default()
        };
        let routes = table.matches(&publish.topic);
        assert_eq!(routes.len(), 1);
        let record = Record::build(routes[0], &publish).unwrap();
        pending.push(producer.enqueue(record).await.expect("enqueue"));
    }
    let reports = join_all(pending).await;
    let mut partition_of_key = HashMap::new();
    for report in &reports {
        let delivered = report.as_ref().expect("Kafka acknowledged the record");
        assert!((0..PARTITIONS).contains(&delivered.partition));
        assert!(delivered.offset >= 0);
    }

    let messages = consume(&bootstrap, &topic, RECORDS, Duration::from_secs(60));
    assert_eq!(
        messages.len(),
        RECORDS,
        "every acknowledged record is in Kafka"
    );

    let mut last_seq: HashMap<String, usize> = HashMap::new();
    for message in &messages {
        let payload = std::str::from_utf8(message.payload().unwrap()).unwrap();
        let (device, seq) = payload.split_once(':').unwrap();
        let seq: usize = seq.parse().unwrap();
        let key = std::str::from_utf8(message.key().unwrap())
            .unwrap()
            .to_owned();
        assert_eq!(key, format!("sensors/dev{device}/temp"));
        assert_eq!(header(message, "mqtt.topic"), Some(key.as_bytes()));
        assert_eq!(
            header(message, "mqtt.client_id"),
            Some(format!("client-{device}").as_bytes())
        );
        assert_eq!(
            header(message, "mqtt.qos"),
            Some(format!("{}", seq % 3).as_bytes())
        );
        let retain: &[u8] = if seq.is_multiple_of(2) {
            b"true"
        } else {
            b"false"
        };
        assert_eq!(header(message, "mqtt.retain"), Some(retain));
        // One key, one partition; within it, the order of sending.
        let partition = *partition_of_key
            .entry(key.clone())
            .or_insert(message.partition());
        assert_eq!(
            partition,
            message.partition(),
            "key {key} changed partition"
        );
        if let Some(previous) = last_seq.insert(key.clone(), seq) {
            assert!(previous < seq, "key {key}: {seq} arrived after {previous}");
        }
    }
    assert_eq!(last_seq.len(), DEVICES);
    let partitions_used: std::collections::HashSet<i32> =
        partition_of_key.values().copied().collect();
    assert!(partitions_used.len() > 1, "keys spread over partitions");
}

#[tokio::test]
async fn an_oversized_record_is_reported_as_a_typed_error_not_a_success() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-oversized");
    let producer = Producer::new(&KafkaConfig {
        bootstrap_servers: bootstrap.clone(),
        properties: [("message.max.bytes".to_owned(), "2000".to_owned())].into(),
        ..KafkaConfig::default()
    })
    .unwrap();
    let route = tributary_bridge::Route::new("big", topic.as_str(), KeySource::None);
    let publish = MqttPublish {
        topic: "a/b".into(),
        client_id: "c".into(),
        qos: 1,
        retain: false,
        payload: Bytes::from(vec![7u8; 10_000]),
        ..MqttPublish::default()
    };
    let result = producer
        .send(Record::build(&route, &publish).unwrap())
        .await;
    let err = result.expect_err("a 10 kB record over a 2 kB limit is not delivered");
    assert_eq!(err.reason(), "message_too_large", "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn an_unreachable_kafka_times_out_instead_of_succeeding() {
    // Nothing listens on port 1 of loopback: every attempt is refused.
    let producer = Producer::new(&KafkaConfig {
        bootstrap_servers: "127.0.0.1:1".into(),
        delivery_timeout_ms: 1_500,
        ..KafkaConfig::default()
    })
    .unwrap();
    let route = tributary_bridge::Route::new("nowhere", "nowhere", KeySource::Topic);
    let publish = MqttPublish {
        topic: "a".into(),
        client_id: "c".into(),
        qos: 1,
        retain: false,
        payload: Bytes::from_static(b"x"),
        ..MqttPublish::default()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        producer.send(Record::build(&route, &publish).unwrap()),
    )
    .await
    .expect("the delivery timeout bounds the wait");
    assert!(
        matches!(result, Err(DeliveryError::Rejected(_))),
        "{result:?}"
    );
    assert_eq!(result.unwrap_err().reason(), "timeout");
}

#[tokio::test]
async fn librdkafka_saying_all_brokers_are_down_makes_kafka_unreachable_at_once() {
    // Nothing listens on port 1 of loopback; no metadata probe runs here, so
    // only librdkafka's own error report can have said it.
    let producer = producer("127.0.0.1:1");
    let started = std::time::Instant::now();
    loop {
        match producer.health().readiness() {
            Err(NotReady::Unreachable {
                cause: Unreachable::AllBrokersDown,
                ..
            }) => break,
            other => assert!(
                started.elapsed() < Duration::from_secs(3),
                "still {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
