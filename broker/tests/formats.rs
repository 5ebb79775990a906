//! Record formats, topic and key templates, and MQTT 5 headers, with a real
//! MQTT 5 client and a real Kafka read back by a consumer.

mod common;

use std::time::Duration;

use bytes::Bytes;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use serde_json::{json, Value};
use tributary_bridge::format::{Envelope, EnvelopeField, EnvelopePayload};
use tributary_bridge::testing::{consume, create_topic, header, require_kafka, unique_topic};
use tributary_bridge::{FormatName, KeySource, RouteConfig};

const PARTITIONS: i32 = 4;

/// Kafka's Java `Utils.murmur2`, which its default partitioner applies to a
/// record's key: the reference the records' partitions are checked against.
fn murmur2(data: &[u8]) -> i32 {
    const M: i32 = 0x5bd1_e995;
    let mut h: i32 = 0x9747_b28c_u32 as i32 ^ data.len() as i32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= ((k as u32) >> 24) as i32;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= i32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= i32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= i32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(M);
    h ^= ((h as u32) >> 15) as i32;
    h
}

/// The partition Kafka's Java producer chooses for `key`.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn the_reference_murmur2_is_kafkas() {
    // Kafka's own test vectors (UtilsTest.testMurmur2).
    for (input, expected) in [
        (&b"21"[..], -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ] {
        assert_eq!(
            murmur2(input),
            expected,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

fn envelope(message: &OwnedMessage) -> Value {
    serde_json::from_slice(message.payload().expect("a value")).expect("the value is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templated_topics_and_keys_json_envelopes_and_mqtt5_headers_reach_kafka() {
    let bootstrap = require_kafka();
    let base = unique_topic("tributary-formats");
    for region in ["eu", "us"] {
        create_topic(&bootstrap, &format!("{base}.{region}"), PARTITIONS).await;
    }
    let raw_topic = unique_topic("tributary-formats-raw");
    create_topic(&bootstrap, &raw_topic, PARTITIONS).await;
    let server = common::start(&bootstrap, &[], |config| {
        config.routes = vec![
            RouteConfig {
                name: "ais".into(),
                mqtt_filters: vec!["ships/+/position".into()],
                kafka_topic: format!("{base}.{{topic.2}}"),
                key: KeySource::Template("{payload.ship.mmsi}".into()),
                format: FormatName::JsonEnvelope,
                envelope: Envelope {
                    payload: EnvelopePayload::Json,
                    fields: vec![
                        EnvelopeField::ClientId,
                        EnvelopeField::Qos,
                        EnvelopeField::UserProperties,
                    ],
                },
                ..RouteConfig::default()
            },
            // The forwarding service's form: base64 payload, topic beside it.
            RouteConfig {
                name: "wrapped".into(),
                mqtt_filters: vec!["raw/#".into()],
                kafka_topic: raw_topic.clone(),
                key: KeySource::Template("{topic.2}".into()),
                format: FormatName::JsonEnvelope,
                ..RouteConfig::default()
            },
        ];
    })
    .await;

    let options = common::v5_options(server.mqtt_addr(), "ship-feed");
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let ships = [
        "235001234",
        "244660000",
        "311000123",
        "538001111",
        "636092000",
    ];
    for (i, mmsi) in ships.iter().enumerate() {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let properties = PublishProperties {
            content_type: Some("application/json".into()),
            correlation_data: Some(Bytes::from(vec![0, i as u8])),
            user_properties: vec![
                ("traceparent".into(), format!("00-{i:032x}-01")),
                ("mqtt.username".into(), "forged".into()),
            ],
            ..PublishProperties::default()
        };
        let payload = json!({"ship": {"mmsi": mmsi, "speed": 11.5}}).to_string();
        client
            .publish_with_properties(
                format!("ships/{region}/position"),
                QoS::AtLeastOnce,
                false,
                payload,
                properties,
            )
            .await
            .unwrap();
        assert_eq!(
            common::next_puback_v5(&mut eventloop).await,
            PubAckReason::Success
        );
    }
    // A payload without the key's field, and one that is not JSON: each is
    // refused on its own (0x99); the connection goes on.
    for bad in [&br#"{"ship":{}}"#[..], b"\xff not json"] {
        client
            .publish("ships/eu/position", QoS::AtLeastOnce, false, bad.to_vec())
            .await
            .unwrap();
        assert_eq!(
            common::next_puback_v5(&mut eventloop).await,
            PubAckReason::PayloadFormatInvalid
        );
    }
    client
        .publish(
            "raw/dev-9/temp",
            QoS::AtLeastOnce,
            false,
            &b"\x00\xff21.5"[..],
        )
        .await
        .unwrap();
    assert_eq!(
        common::next_puback_v5(&mut eventloop).await,
        PubAckReason::Success
    );

    let mut seen = Vec::new();
    for (region, expected) in [("eu", 3), ("us", 2)] {
        let topic = format!("{base}.{region}");
        let messages = consume(&bootstrap, &topic, expected, Duration::from_secs(30));
        assert_eq!(messages.len(), expected, "records in {topic}");
        for message in messages {
            let key = message.key().expect("a key").to_vec();
            let mmsi = String::from_utf8(key.clone()).unwrap();
            assert_eq!(
                message.partition(),
                java_partition(&key, PARTITIONS),
                "key {mmsi} is where Kafka's Java producer puts it"
            );
            let value = envelope(&message);
            assert_eq!(value["topic"], format!("ships/{region}/position"));
            assert_eq!(value["payload"]["ship"]["mmsi"], mmsi.as_str());
            assert_eq!(value["client_id"], "ship-feed");
            assert_eq!(value["qos"], 1);
            let i = ships.iter().position(|s| *s == mmsi).unwrap();
            assert_eq!(
                value["user_properties"],
                json!([
                    ["traceparent", format!("00-{i:032x}-01")],
                    ["mqtt.username", "forged"]
                ])
            );
            assert_eq!(
                header(&message, "mqtt.content_type"),
                Some(&b"application/json"[..])
            );
            assert_eq!(
                header(&message, "mqtt.correlation_data"),
                Some(&[0, i as u8][..])
            );
            assert_eq!(
                header(&message, "traceparent").map(<[u8]>::to_vec),
                Some(format!("00-{i:032x}-01").into_bytes())
            );
            assert_eq!(
                header(&message, "mqtt.username"),
                None,
                "a user property cannot pose as the authenticated user"
            );
            seen.push(mmsi);
        }
    }
    seen.sort();
    let mut all = ships.map(String::from).to_vec();
    all.sort();
    assert_eq!(seen, all, "every acknowledged ship once, none refused");

    let wrapped = consume(&bootstrap, &raw_topic, 1, Duration::from_secs(30));
    assert_eq!(wrapped.len(), 1);
    assert_eq!(
        wrapped[0].payload(),
        Some(&br#"{"topic":"raw/dev-9/temp","payload":"AP8yMS41"}"#[..])
    );
    assert_eq!(wrapped[0].key(), Some(&b"dev-9"[..]));
    assert_eq!(wrapped[0].partition(), java_partition(b"dev-9", PARTITIONS));
    server.shutdown().await;
}

/// One publish per client on `topic`; the PUBACK reason (MQTT 3.1.1: success
/// or the connection's end).
async fn publish_v5(
    client: &AsyncClient,
    eventloop: &mut rumqttc::v5::EventLoop,
    topic: &str,
    payload: Vec<u8>,
) -> PubAckReason {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    common::next_puback_v5(eventloop).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retrying_cannot_fix_go_to_the_dead_letter_topic() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-dl-main");
    let dead = unique_topic("tributary-dl-dead");
    // Records over 2,000 bytes are refused by Kafka itself (not by the
    // producer): a failure Kafka reports, for good.
    tributary_bridge::testing::create_topic_with(
        &bootstrap,
        &topic,
        1,
        &[("max.message.bytes", "2000")],
    )
    .await;
    create_topic(&bootstrap, &dead, 1).await;
    let server = common::start(&bootstrap, &[], |config| {
        let route = |name: &str, filter: &str, acknowledge: bool| RouteConfig {
            name: name.into(),
            mqtt_filters: vec![filter.into()],
            kafka_topic: topic.clone(),
            key: KeySource::Template("{payload.id}".into()),
            on_failure: tributary_bridge::OnFailure::DeadLetter,
            dead_letter_topic: dead.clone(),
            dead_letter_acknowledge: acknowledge,
            ..RouteConfig::default()
        };
        config.routes = vec![
            route("strict", "strict/#", false),
            route("lenient", "lenient/#", true),
        ];
    })
    .await;
    let addr = server.mqtt_addr();
    let (client, mut eventloop) = AsyncClient::new(common::v5_options(addr, "dev-5"), 10);

    // Good, bad (no id), too large for the topic: the device hears 0x99 for
    // the bad one and 0x83 for the large one, and both are kept.
    let large = format!(r#"{{"id":"big","pad":"{}"}}"#, "x".repeat(3_000));
    assert_eq!(
        publish_v5(
            &client,
            &mut eventloop,
            "strict/1",
            br#"{"id":"a"}"#.to_vec()
        )
        .await,
        PubAckReason::Success
    );
    assert_eq!(
        publish_v5(
            &client,
            &mut eventloop,
            "strict/1",
            br#"{"no_id":1}"#.to_vec()
        )
        .await,
        PubAckReason::PayloadFormatInvalid
    );
    assert_eq!(
        publish_v5(
            &client,
            &mut eventloop,
            "strict/1",
            large.clone().into_bytes()
        )
        .await,
        PubAckReason::ImplementationSpecificError
    );
    // A route that counts a dead letter as accepted says so.
    assert_eq!(
        publish_v5(&client, &mut eventloop, "lenient/1", b"not json".to_vec()).await,
        PubAckReason::Success
    );

    // An MQTT 3.1.1 device cannot be told: it gets its PUBACK, and keeps its
    // connection, once the dead letter is in Kafka.
    let (client4, mut eventloop4) =
        rumqttc::AsyncClient::new(common::v4_options(addr, "dev-4"), 10);
    client4
        .publish(
            "strict/4",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"\xff".to_vec(),
        )
        .await
        .unwrap();
    client4
        .publish(
            "strict/4",
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"id":"b"}"#.to_vec(),
        )
        .await
        .unwrap();
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked < 2 {
        match tokio::time::timeout_at(deadline, eventloop4.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("the 3.1.1 connection failed: {error}"),
            Err(_) => panic!("only {acked} PUBACKs for the 3.1.1 device"),
        }
    }

    let main = consume(&bootstrap, &topic, 2, Duration::from_secs(20));
    let keys: Vec<&[u8]> = main.iter().filter_map(|m| m.key()).collect();
    assert_eq!(
        keys,
        [&b"a"[..], b"b"],
        "only the good records in the route's topic"
    );

    let letters = consume(&bootstrap, &dead, 4, Duration::from_secs(20));
    assert_eq!(letters.len(), 4, "every failed publish kept once");
    let by_reason = |reason: &str| -> Vec<&OwnedMessage> {
        letters
            .iter()
            .filter(|m| header(m, "tributary.dead_letter.reason") == Some(reason.as_bytes()))
            .collect()
    };
    let invalid = by_reason("invalid_payload");
    assert_eq!(invalid.len(), 3, "no id, not JSON twice");
    let payloads: Vec<&[u8]> = invalid.iter().filter_map(|m| m.payload()).collect();
    assert!(
        payloads.contains(&&br#"{"no_id":1}"#[..]),
        "the payload as sent"
    );
    assert!(payloads.contains(&&b"\xff"[..]));
    let too_large = by_reason("message_too_large");
    assert_eq!(too_large.len(), 1);
    assert_eq!(too_large[0].payload(), Some(large.as_bytes()));
    assert_eq!(
        header(too_large[0], "tributary.dead_letter.kafka_topic"),
        Some(topic.as_bytes()),
        "the topic it was meant for"
    );
    assert_eq!(
        header(too_large[0], "tributary.dead_letter.route"),
        Some(&b"strict"[..])
    );
    assert_eq!(header(too_large[0], "mqtt.topic"), Some(&b"strict/1"[..]));
    assert_eq!(
        too_large[0].key(),
        Some(&b"dev-5"[..]),
        "keyed by client id"
    );
    assert!(header(invalid[0], "tributary.dead_letter.error").is_some());
    assert_eq!(
        common::metric(
            &server,
            "tributary_dead_letters_total{route=\"strict\",reason=\"invalid_payload\"}"
        )
        .await,
        2.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_carry_the_registry_id_and_decode_with_the_registered_schema() {
    use tributary_bridge::testing::{
        registry_latest_id, registry_schema, require_schema_registry, schema_registry_credentials,
    };
    let bootstrap = require_kafka();
    // The real registry `scripts/test` starts, with basic authentication on.
    let registry = require_schema_registry();
    let (username, password) = schema_registry_credentials();
    let topic = unique_topic("tributary-avro");
    create_topic(&bootstrap, &topic, 1).await;
    let dir = common::pki::dir("avro");
    let schema_file = dir.join("position.avsc");
    std::fs::write(
        &schema_file,
        r#"{"type": "record", "name": "Position", "namespace": "ais",
            "fields": [
              {"name": "mmsi", "type": "long"},
              {"name": "lat", "type": "double"},
              {"name": "lon", "type": "double"},
              {"name": "name", "type": ["null", "string"], "default": null}
            ]}"#,
    )
    .unwrap();
    let server = common::start(&bootstrap, &[], |config| {
        config.routes = vec![RouteConfig {
            name: "ais".into(),
            mqtt_filters: vec!["ais/#".into()],
            kafka_topic: topic.clone(),
            format: FormatName::Avro,
            avro_schema: Some(schema_file.clone()),
            schema_registry: Some(tributary_bridge::avro::RegistryConfig {
                url: registry.clone(),
                username: username.clone(),
                password: password.clone(),
                ca_file: None,
            }),
            ..RouteConfig::default()
        }];
    })
    .await;
    let (client, mut eventloop) =
        AsyncClient::new(common::v5_options(server.mqtt_addr(), "ais-feed"), 10);
    let positions = [
        json!({"mmsi": 235001234, "lat": 51.95, "lon": 4.05, "name": "Ever Given"}),
        json!({"mmsi": 244660000, "lat": 52.1, "lon": 4.2}),
    ];
    for position in &positions {
        assert_eq!(
            publish_v5(
                &client,
                &mut eventloop,
                "ais/pos",
                position.to_string().into_bytes()
            )
            .await,
            PubAckReason::Success
        );
    }
    // Not in the schema: refused on its own.
    assert_eq!(
        publish_v5(
            &client,
            &mut eventloop,
            "ais/pos",
            br#"{"mmsi": "x"}"#.to_vec()
        )
        .await,
        PubAckReason::PayloadFormatInvalid
    );

    let id = registry_latest_id(&registry, &format!("{topic}-value"));
    let registered = apache_avro::Schema::parse_str(&registry_schema(&registry, id))
        .expect("the registry holds an Avro schema");
    let messages = consume(&bootstrap, &topic, 2, Duration::from_secs(20));
    assert_eq!(messages.len(), 2);
    for (message, position) in messages.iter().zip(&positions) {
        let value = message.payload().expect("a value");
        assert_eq!(value[0], 0, "the wire format's magic byte");
        assert_eq!(
            u32::from_be_bytes([value[1], value[2], value[3], value[4]]),
            id,
            "the id the registry gave the topic's subject"
        );
        let decoded = apache_avro::from_avro_datum(&registered, &mut &value[5..], None).unwrap();
        let decoded: Value = decoded.try_into().unwrap();
        assert_eq!(decoded["mmsi"], position["mmsi"]);
        assert_eq!(decoded["lat"], position["lat"]);
        assert_eq!(
            decoded["name"],
            position.get("name").cloned().unwrap_or(Value::Null)
        );
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real registry behind TLS with a certificate from the test's own CA
/// (the registry itself speaks plain HTTP): `ca_file` makes Tributary trust it, and without it the registration
/// fails (for now: 0x80, never a dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_registry_is_trusted_through_its_ca_file_only() {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tributary_bridge::testing::{require_schema_registry, schema_registry_credentials};

    let bootstrap = require_kafka();
    let registry = require_schema_registry();
    let (username, password) = schema_registry_credentials();
    let dir = common::pki::dir("registry-tls");
    let ca = common::pki::Ca::new(&dir, "registry-ca");
    let server_cert = ca.server(&dir, "registry");
    // TLS in front of the registry.
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(server_cert.der.clone())],
        PrivateKeyDer::from_pem_file(&server_cert.key_path).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    // http://host:port/path → the terminator forwards to host:port, and
    // Tributary is given https://localhost:<terminator>/path.
    let (plain, path) = registry
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(authority, path)| (authority.to_owned(), format!("/{path}")))
        .expect("SCHEMA_REGISTRY_URL is http://host:port/path");
    let tls_url = format!("{tls_url}{path}");
    let terminator = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, plain) = (acceptor.clone(), plain.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(&plain).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                }
            });
        }
    });

    let schema_file = dir.join("t.avsc");
    std::fs::write(
        &schema_file,
        r#"{"type":"record","name":"T","fields":[{"name":"v","type":"long"}]}"#,
    )
    .unwrap();
    let mut topics = Vec::new();
    let mut routes = Vec::new();
    for (name, ca_file) in [
        ("trusting", Some(ca.pem_path.clone())),
        ("untrusting", None),
    ] {
        let topic = unique_topic(&format!("tributary-registry-tls-{name}"));
        create_topic(&bootstrap, &topic, 1).await;
        routes.push(RouteConfig {
            name: name.into(),
            mqtt_filters: vec![format!("{name}/#")],
            kafka_topic: topic.clone(),
            format: FormatName::Avro,
            avro_schema: Some(schema_file.clone()),
            schema_registry: Some(tributary_bridge::avro::RegistryConfig {
                url: tls_url.clone(),
                username: username.clone(),
                password: password.clone(),
                ca_file,
            }),
            ..RouteConfig::default()
        });
        topics.push(topic);
    }
    let server = common::start(&bootstrap, &[], |config| config.routes = routes).await;
    let (client, mut eventloop) =
        AsyncClient::new(common::v5_options(server.mqtt_addr(), "tls-registry"), 10);
    assert_eq!(
        publish_v5(
            &client,
            &mut eventloop,
            "trusting/1",
            br#"{"v": 1}"#.to_vec()
        )
        .await,
        PubAckReason::Success
    );
    assert_eq!(
        publish_v5(
            &client,
            &mut eventloop,
            "untrusting/1",
            br#"{"v": 1}"#.to_vec()
        )
        .await,
        PubAckReason::UnspecifiedError,
        "a registry whose certificate is not trusted is out of reach"
    );
    let records = consume(&bootstrap, &topics[0], 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload().map(|v| v[0]), Some(0), "wire format");
    assert!(
        common::metric(
            &server,
            "tributary_mqtt_publishes_refused_total{qos=\"1\",reason=\"schema_registry\"}"
        )
        .await
            >= 1.0,
        "the refusal is counted under its reason"
    );
    server.shutdown().await;
    terminator.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
