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
/// URL) to test against; `scripts/schema-registry start` prints it.
pub const SCHEMA_REGISTRY_URL_ENV: &str = "SCHEMA_REGISTRY_URL";

fn registry_get(url: &str) -> Result<serde_json::Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.get(url).header(
        "Accept",
        "application/vnd.schemaregistry.v1+json, application/json",
    );
    if let Some(auth) = STAND_IN_AUTH.get() {
        request = request.header("Authorization", auth);
    }
    request
        .call()
        .map_err(|e| format!("{url}: {e}"))?
        .body_mut()
        .read_json()
        .map_err(|e| format!("{url}: {e}"))
}

/// Panics with instructions unless a schema registry answers at
/// `$SCHEMA_REGISTRY_URL`; returns that URL.
pub fn require_schema_registry() -> String {
    let url = std::env::var(SCHEMA_REGISTRY_URL_ENV).unwrap_or_default();
    if url.is_empty() {
        panic!(
            "this test needs a real schema registry: start one with \
             `scripts/schema-registry start` and set {SCHEMA_REGISTRY_URL_ENV} to the URL it prints"
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

/// A minimal schema registry STAND-IN for tests, started in-process: the
/// three calls of the Confluent API Tributary and the tests use (register a
/// schema under a subject, read a schema by id, read a subject's latest
/// version), same schema same id, with optional basic authentication.
/// Used because no real registry can be assembled on this machine (see the
/// README's *Formats*); the tests take a real one from
/// `$SCHEMA_REGISTRY_URL` when it is set.
pub struct RegistryStandIn {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RegistryStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The credentials a stand-in started with, for the tests' own reads.
static STAND_IN_AUTH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[derive(Default)]
struct StandInState {
    /// Schemas by id (id = index + 1).
    schemas: Vec<String>,
    /// Subject → ids of its versions.
    subjects: std::collections::HashMap<String, Vec<u32>>,
}

impl RegistryStandIn {
    /// Starts it on a loopback port; `credentials` (user, password) makes it
    /// refuse requests without them (401).
    pub async fn start(credentials: Option<(&str, &str)>) -> RegistryStandIn {
        use base64::Engine as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the registry stand-in");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let expected = credentials.map(|(user, password)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        });
        if let Some(auth) = &expected {
            // The tests' own reads of the stand-in present the same.
            let _ = STAND_IN_AUTH.set(auth.clone());
        }
        let state = std::sync::Arc::new(std::sync::Mutex::new(StandInState::default()));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, expected) = (state.clone(), expected.clone());
                tokio::spawn(async move {
                    let _ = serve_stand_in(stream, &state, expected.as_deref()).await;
                });
            }
        });
        RegistryStandIn { url, task }
    }
}

async fn serve_stand_in(
    mut stream: tokio::net::TcpStream,
    state: &std::sync::Mutex<StandInState>,
    expected_auth: Option<&str>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if request.len() > 1 << 20 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while request.len() < head_end + length {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body = &request[head_end..(head_end + length).min(request.len())];
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let authorized = expected_auth.is_none_or(|expected| {
        head.lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("authorization") && value.trim() == expected
            })
        })
    });
    let (status, answer) = if !authorized {
        (
            "401 Unauthorized",
            serde_json::json!({"error_code": 401, "message": "Unauthorized"}),
        )
    } else {
        stand_in_answer(state, method, path, body)
    };
    let answer = answer.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn stand_in_answer(
    state: &std::sync::Mutex<StandInState>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (&'static str, serde_json::Value) {
    use serde_json::json;
    let not_found = (
        "404 Not Found",
        json!({"error_code": 40401, "message": "not found"}),
    );
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["subjects"]) => ("200 OK", json!(state.subjects.keys().collect::<Vec<_>>())),
        ("POST", ["subjects", subject, "versions"]) => {
            let Some(schema) = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["schema"].as_str().map(str::to_owned))
            else {
                return (
                    "422 Unprocessable Entity",
                    json!({"error_code": 42201, "message": "no schema"}),
                );
            };
            let id = match state.schemas.iter().position(|s| *s == schema) {
                Some(i) => i as u32 + 1,
                None => {
                    state.schemas.push(schema);
                    state.schemas.len() as u32
                }
            };
            let versions = state.subjects.entry((*subject).to_owned()).or_default();
            if !versions.contains(&id) {
                versions.push(id);
            }
            ("200 OK", json!({"id": id}))
        }
        ("GET", ["schemas", "ids", id]) => match id
            .parse::<usize>()
            .ok()
            .and_then(|id| state.schemas.get(id.wrapping_sub(1)))
        {
            Some(schema) => ("200 OK", json!({"schema": schema})),
            None => not_found,
        },
        ("GET", ["subjects", subject, "versions", "latest"]) => {
            match state.subjects.get(*subject).and_then(|v| v.last()) {
                Some(id) => {
                    let version = state.subjects[*subject].len();
                    let schema = &state.schemas[*id as usize - 1];
                    (
                        "200 OK",
                        json!({"subject": subject, "version": version, "id": id, "schema": schema}),
                    )
                }
                None => not_found,
            }
        }
        _ => not_found,
    }
}
