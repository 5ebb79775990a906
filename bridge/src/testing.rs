//! Helpers for tests that run against a real Kafka (started by
//! `scripts/kafka-local start`). Compiled only with the `testing` feature.
//!
//! A test that needs Kafka fails, never skips, when Kafka does not answer.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message};

/// Environment variable naming the Kafka to test against.
pub const KAFKA_BOOTSTRAP_ENV: &str = "KAFKA_BOOTSTRAP";
pub const DEFAULT_KAFKA_BOOTSTRAP: &str = "127.0.0.1:9092";

/// The bootstrap address tests use: `$KAFKA_BOOTSTRAP` or `127.0.0.1:9092`.
pub fn bootstrap() -> String {
    std::env::var(KAFKA_BOOTSTRAP_ENV).unwrap_or_else(|_| DEFAULT_KAFKA_BOOTSTRAP.into())
}

/// Panics with instructions unless Kafka answers a metadata request.
pub fn require_kafka() -> String {
    let bootstrap = bootstrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("creating a Kafka client");
    if let Err(err) = consumer.fetch_metadata(None, Duration::from_secs(15)) {
        panic!(
            "this test needs a real Kafka at {bootstrap} ({err}); start one with \
             `scripts/kafka-local start` (or set {KAFKA_BOOTSTRAP_ENV})"
        );
    }
    bootstrap
}

/// A topic name no other test run uses.
pub fn unique_topic(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Creates `topic` with `partitions` partitions and waits until it exists.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    create_topic_with(bootstrap, topic, partitions, &[]).await
}

/// [`create_topic`] with topic-level settings (`max.message.bytes`, …).
pub async fn create_topic_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("creating a Kafka admin client");
    let results = admin
        .create_topics(
            &[settings.iter().fold(
                NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
                |new, (key, value)| new.set(key, value),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics request");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
}

/// Reads `topic` from the beginning until `expected` messages arrived or
/// `timeout` passed (then returns what it has, so the caller's assertion shows
/// what is missing).
pub fn consume(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_topic("tributary-test-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("creating a Kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribing");
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::with_capacity(expected.min(100_000));
    while messages.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => messages.push(message.detach()),
            Some(Err(err)) => eprintln!("consumer error (retrying): {err}"),
            None => {}
        }
    }
    messages
}

/// The value of header `name` of `message`, if present.
pub fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a [u8]> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}
