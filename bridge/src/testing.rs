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

/// Environment variable naming the schema registry (its Confluent API base
/// URL) to test against; `scripts/schema-registry start` prints it, and
/// `scripts/test` starts one and sets it.
pub const SCHEMA_REGISTRY_URL_ENV: &str = "SCHEMA_REGISTRY_URL";

/// The registry's basic-authentication user and password, when it has them
/// (`SCHEMA_REGISTRY_USER`, `SCHEMA_REGISTRY_PASSWORD`, as `scripts/schema-registry`
/// takes them); empty strings otherwise.
pub fn schema_registry_credentials() -> (String, String) {
    (
        std::env::var("SCHEMA_REGISTRY_USER").unwrap_or_default(),
        std::env::var("SCHEMA_REGISTRY_PASSWORD").unwrap_or_default(),
    )
}

fn registry_get(url: &str) -> Result<serde_json::Value, String> {
    use base64::Engine as _;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.get(url).header(
        "Accept",
        "application/vnd.schemaregistry.v1+json, application/json",
    );
    let (user, password) = schema_registry_credentials();
    if !user.is_empty() {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request = request.header("Authorization", format!("Basic {credentials}"));
    }
    request
        .call()
        .map_err(|e| format!("{url}: {e}"))?
        .body_mut()
        .read_json()
        .map_err(|e| format!("{url}: {e}"))
}

/// Panics with instructions unless a schema registry answers at
/// `$SCHEMA_REGISTRY_URL`; returns that URL. A test that needs the registry
/// fails without it, as one that needs Kafka does.
pub fn require_schema_registry() -> String {
    let url = std::env::var(SCHEMA_REGISTRY_URL_ENV).unwrap_or_default();
    if url.is_empty() {
        panic!(
            "this test needs a real schema registry: start one with \
             `scripts/schema-registry start` and set {SCHEMA_REGISTRY_URL_ENV} to the URL it prints \
             (`scripts/test` does both)"
        );
    }
    if let Err(error) = registry_get(&format!("{}/subjects", url.trim_end_matches('/'))) {
        panic!("the schema registry at {url} does not answer ({error}); `scripts/schema-registry start`");
    }
    url
}

/// The schema (its JSON text) the registry at `url` holds under `id`.
pub fn registry_schema(url: &str, id: u32) -> String {
    let answer = registry_get(&format!("{}/schemas/ids/{id}", url.trim_end_matches('/')))
        .unwrap_or_else(|e| panic!("reading schema {id}: {e}"));
    answer["schema"]
        .as_str()
        .unwrap_or_else(|| panic!("no schema in {answer}"))
        .to_owned()
}

/// The id of the latest schema the registry at `url` holds under `subject`.
pub fn registry_latest_id(url: &str, subject: &str) -> u32 {
    let answer = registry_get(&format!(
        "{}/subjects/{subject}/versions/latest",
        url.trim_end_matches('/')
    ))
    .unwrap_or_else(|e| panic!("reading {subject}: {e}"));
    answer["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .unwrap_or_else(|| panic!("no id in {answer}"))
}
