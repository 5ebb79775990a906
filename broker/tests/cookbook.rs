//! The README's routes cookbook, run as written: each example's TOML block is
//! read from README.md itself, so the README cannot drift from what works.
//! Only Kafka topic and group names get a unique suffix (Kafka outlives test
//! runs), relative paths are taken from the repository's root, and the
//! schema registry is the real one `scripts/test` starts. Devices are real
//! MQTT clients (mosquitto_pub/mosquitto_sub, rumqttc for MQTT 5 reason
//! codes); Kafka is real.

mod common;

use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use serde_json::Value;
use tributary::config::Config;
use tributary::Server;
use tributary_bridge::testing::{
    consume, create_topic, header, registry_latest_id, registry_schema, require_kafka,
    require_schema_registry, schema_registry_credentials, unique_topic,
};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The TOML block that follows `<!-- cookbook: NAME -->` in the README.
fn example(name: &str) -> String {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README.md");
    let marker = format!("<!-- cookbook: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("the README has no {marker}"))
        .1;
    let block = after
        .trim_start()
        .strip_prefix("```toml\n")
        .unwrap_or_else(|| panic!("a ```toml block right after {marker}"));
    block
        .split_once("```")
        .expect("the block's closing fence")
        .0
        .to_owned()
}

/// The example's configuration, with each quoted `from` renamed `to` (whole
/// strings only, quotes included) and `conf/…` paths from the repository root.
fn configured(name: &str, renames: &[(&str, &str)]) -> Config {
    let mut text = example(name);
    for (from, to) in renames {
        let quoted = format!("\"{from}\"");
        assert!(text.contains(&quoted), "example {name} names {quoted}");
        text = text.replace(&quoted, &format!("\"{to}\""));
    }
    let text = text.replace("\"conf/", &format!("\"{ROOT}/conf/"));
    Config::from_toml(&text).unwrap_or_else(|e| panic!("example {name} is valid: {e}"))
}

async fn start(bootstrap: &str, example: Config) -> Server {
    common::start(bootstrap, &[], |config| {
        config.routes = example.routes;
        config.kafka_sources = example.kafka_sources;
    })
    .await
}

/// `mosquitto_pub -q 1` of `message` to `topic`: true once its PUBACK came.
fn mosquitto_pub(server: &Server, topic: &str, message: &str) {
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p"])
        .arg(server.mqtt_addr().port().to_string())
        .args(["-q", "1", "-t", topic, "-m", message])
        .status()
        .expect("mosquitto_pub is installed (apt-get install mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub {topic}: {status}");
}

/// One MQTT 5 QoS 1 publish; the PUBACK's reason code.
async fn publish_v5(server: &Server, client_id: &str, topic: &str, payload: &[u8]) -> PubAckReason {
    let (client, mut eventloop) =
        AsyncClient::new(common::v5_options(server.mqtt_addr(), client_id), 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .unwrap();
    let reason = common::next_puback_v5(&mut eventloop).await;
    let _ = client.disconnect().await;
    reason
}

fn json(message: &OwnedMessage) -> Value {
    serde_json::from_slice(message.payload().expect("a value")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_site_topics_keyed_by_device() {
    let bootstrap = require_kafka();
    let prefix = unique_topic("cookbook-telemetry");
    let server = start(
        &bootstrap,
        configured(
            "sites",
            &[("telemetry.{topic.2}", &format!("{prefix}.{{topic.2}}"))],
        ),
    )
    .await;
    for site in ["berlin", "lyon"] {
        create_topic(&bootstrap, &format!("{prefix}.{site}"), 3).await;
    }
    mosquitto_pub(&server, "site/berlin/pump-7/telemetry", r#"{"rpm":1450}"#);
    mosquitto_pub(&server, "site/lyon/fan-2/telemetry", r#"{"rpm":900}"#);
    // Not the filter's shape: no route, nothing in Kafka.
    mosquitto_pub(&server, "site/berlin/telemetry", "x");

    let berlin = consume(
        &bootstrap,
        &format!("{prefix}.berlin"),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(berlin.len(), 1);
    assert_eq!(berlin[0].key(), Some(&b"pump-7"[..]));
    assert_eq!(berlin[0].payload(), Some(&br#"{"rpm":1450}"#[..]));
    let lyon = consume(
        &bootstrap,
        &format!("{prefix}.lyon"),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(lyon[0].key(), Some(&b"fan-2"[..]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_services_json_envelope() {
    let bootstrap = require_kafka();
    let topic = unique_topic("cookbook-plant");
    create_topic(&bootstrap, &topic, 1).await;
    let server = start(
        &bootstrap,
        configured("envelope", &[("plant-events", &topic)]),
    )
    .await;
    mosquitto_pub(&server, "plant/line1/door", "open");
    let records = consume(&bootstrap, &topic, 1, Duration::from_secs(20));
    assert_eq!(
        records[0].payload(),
        Some(&br#"{"topic":"plant/line1/door","payload":"b3Blbg=="}"#[..]),
        "byte for byte the README's example"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ais_positions_as_avro_with_a_registry_and_dead_letters() {
    let bootstrap = require_kafka();
    let registry = require_schema_registry();
    let topic = unique_topic("cookbook-ais");
    let dead = unique_topic("cookbook-ais-dead");
    create_topic(&bootstrap, &topic, 3).await;
    create_topic(&bootstrap, &dead, 1).await;
    let mut example = configured(
        "ais",
        &[
            ("ais.positions", &topic),
            ("ais.dead-letters", &dead),
            ("http://127.0.0.1:8081/apis/ccompat/v7", &registry),
        ],
    );
    // The registry `scripts/test` starts asks for basic authentication.
    let (username, password) = schema_registry_credentials();
    for route in &mut example.routes {
        if let Some(registry) = route.schema_registry.as_mut() {
            registry.username = username.clone();
            registry.password = password.clone();
        }
    }
    let server = start(&bootstrap, example).await;
    mosquitto_pub(
        &server,
        "ais/north-sea/position",
        r#"{"mmsi":235001234,"lat":53.54,"lon":8.58,"sog":12.5,"name":"Ever Given"}"#,
    );
    assert_eq!(
        publish_v5(
            &server,
            "ais-v5",
            "ais/north-sea/position",
            br#"{"mmsi":"none"}"#
        )
        .await,
        PubAckReason::PayloadFormatInvalid,
        "what does not fit the schema is refused to an MQTT 5 device"
    );

    let records = consume(&bootstrap, &topic, 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key(), Some(&b"235001234"[..]), "keyed by MMSI");
    let value = records[0].payload().expect("a value");
    assert_eq!(value[0], 0, "Confluent wire format");
    let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    assert_eq!(id, registry_latest_id(&registry, &format!("{topic}-value")));
    let schema = apache_avro::Schema::parse_str(&registry_schema(&registry, id)).unwrap();
    let decoded: Value = apache_avro::from_avro_datum(&schema, &mut &value[5..], None)
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(decoded["mmsi"], 235001234);
    assert_eq!(decoded["sog"], 12.5);
    assert_eq!(decoded["name"], "Ever Given");

    let letters = consume(&bootstrap, &dead, 1, Duration::from_secs(20));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload(), Some(&br#"{"mmsi":"none"}"#[..]));
    assert_eq!(
        header(&letters[0], "tributary.dead_letter.reason"),
        Some(&b"invalid_payload"[..])
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_readings_in_an_envelope_with_bad_ones_kept_aside() {
    let bootstrap = require_kafka();
    let topic = unique_topic("cookbook-meters");
    let dead = unique_topic("cookbook-meters-dead");
    create_topic(&bootstrap, &topic, 3).await;
    create_topic(&bootstrap, &dead, 1).await;
    let server = start(
        &bootstrap,
        configured(
            "meters",
            &[
                ("meter-readings", &topic),
                ("meter-readings.dead-letters", &dead),
            ],
        ),
    )
    .await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(
        publish_v5(
            &server,
            "meter-17",
            "meters/17/reading",
            br#"{"kwh":1234.5}"#
        )
        .await,
        PubAckReason::Success
    );
    assert_eq!(
        publish_v5(&server, "meter-18", "meters/18/reading", b"\x00garbled").await,
        PubAckReason::Success,
        "dead_letter_acknowledge: a success even for a bad reading"
    );
    let records = consume(&bootstrap, &topic, 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1, "only the good reading in the topic");
    assert_eq!(records[0].key(), Some(&b"meter-17"[..]));
    let envelope = json(&records[0]);
    assert_eq!(envelope["topic"], "meters/17/reading");
    assert_eq!(envelope["payload"]["kwh"], 1234.5, "embedded as JSON");
    assert_eq!(envelope["client_id"], "meter-17");
    assert_eq!(envelope["qos"], 1);
    assert!(envelope["timestamp"].as_u64().is_some_and(|t| t >= before));
    let letters = consume(&bootstrap, &dead, 1, Duration::from_secs(20));
    assert_eq!(letters[0].payload(), Some(&b"\x00garbled"[..]));
    assert_eq!(letters[0].key(), Some(&b"meter-18"[..]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_channel_from_kafka_to_a_device() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let bootstrap = require_kafka();
    let topic = unique_topic("cookbook-commands");
    let group = unique_topic("cookbook-group");
    create_topic(&bootstrap, &topic, 1).await;
    let server = start(
        &bootstrap,
        configured(
            "commands",
            &[("device-commands", &topic), ("tributary-commands", &group)],
        ),
    )
    .await;
    let (mut device, output) = common::mosquitto_sub(
        server.mqtt_addr().port(),
        &["-q", "1", "-t", "devices/pump-7/commands", "-C", "1"],
    )
    .await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("a Kafka producer");
    // `auto_offset_reset = "latest"`: a command written before the source
    // has its partition is not for it. Written again until the device has
    // one, a bounded number of times.
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("pump-7")
                    .payload(r#"{"set_rpm":1200}"#),
                Duration::from_secs(10),
            )
            .await
            .expect("Kafka took the command");
        match tokio::time::timeout(Duration::from_millis(500), device.wait()).await {
            Ok(status) => break status.expect("mosquitto_sub ran"),
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => panic!("the device got no command within 30 s"),
        }
    };
    assert!(
        exited.success(),
        "mosquitto_sub -C 1 exits after one message"
    );
    let lines = output.await.unwrap();
    assert!(
        lines.iter().any(|line| line == r#"{"set_rpm":1200}"#),
        "the command as written: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("PUBLISH") && line.contains("q1")),
        "at QoS 1: {lines:?}"
    );
    server.shutdown().await;
}
