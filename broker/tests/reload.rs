//! Routes change without a restart: edit the file (or send SIGHUP), and the
//! next publishes follow the new routes; an invalid file changes nothing.

mod common;

use std::time::Duration;

use rdkafka::Message;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tributary_bridge::testing::{consume, create_topic, require_kafka, unique_topic};

fn write_routes(path: &std::path::Path, bootstrap: &str, routes: &str) {
    // Written whole then renamed: the watcher never reads half a file.
    let partial = path.with_extension("partial");
    std::fs::write(
        &partial,
        format!(
            r#"
[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[kafka]
bootstrap_servers = "{bootstrap}"
{routes}
"#
        ),
    )
    .unwrap();
    std::fs::rename(&partial, path).unwrap();
}

fn route(name: &str, filter: &str, topic: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmqtt_filters = [\"{filter}\"]\nkafka_topic = \"{topic}\"\n"
    )
}

/// Publishes one QoS 1 message and waits for its PUBACK.
async fn publish(
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    topic: &str,
    payload: &str,
) {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("the connection failed: {error}"),
            Err(_) => panic!("no PUBACK for {payload}"),
        }
    }
}

fn payloads(bootstrap: &str, topic: &str, expected: usize) -> Vec<String> {
    consume(bootstrap, topic, expected, Duration::from_secs(20))
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_the_file_and_an_invalid_file_changes_nothing() {
    let bootstrap = require_kafka();
    let first = unique_topic("tributary-reload-a");
    let second = unique_topic("tributary-reload-b");
    for topic in [&first, &second] {
        create_topic(&bootstrap, topic, 1).await;
    }
    let dir = common::pki::dir("reload");
    let path = dir.join("tributary.toml");
    write_routes(&path, &bootstrap, &route("r", "data/#", &first));
    let process = common::Process::start(&path);
    let (mqtt, http) = process.addrs();
    let (client, mut eventloop) = AsyncClient::new(common::v4_options(mqtt, "reloader"), 10);

    publish(&client, &mut eventloop, "data/1", "before").await;

    // The same route now writes to the second topic; a new route appears.
    write_routes(
        &path,
        &bootstrap,
        &format!(
            "{}{}",
            route("r", "data/#", &second),
            route("more", "more/#", &second)
        ),
    );
    process.wait_for(Duration::from_secs(15), |line| {
        line.contains("routes reloaded")
    });
    publish(&client, &mut eventloop, "data/1", "after").await;
    publish(&client, &mut eventloop, "more/1", "new route").await;
    assert_eq!(
        common::metric_at(http, "tributary_route_reloads_total{result=\"ok\"}").await,
        1.0
    );

    // An invalid file: every problem logged, the routes in use stay.
    write_routes(
        &path,
        &bootstrap,
        &format!(
            "{}{}",
            route("r", "data/#", "bad topic"),
            route("r", "x/#", &first)
        ),
    );
    let lines = process.wait_for(Duration::from_secs(15), |line| {
        line.contains("routes not reloaded")
    });
    let text = lines.join("\n");
    assert!(text.contains("routes[0].kafka_topic"), "{text}");
    assert!(text.contains("routes[1].name"), "{text}");
    publish(&client, &mut eventloop, "data/1", "still second").await;
    assert_eq!(
        common::metric_at(http, "tributary_route_reloads_total{result=\"failed\"}").await,
        1.0
    );

    // Back to the first topic; SIGHUP reads the file at once (without
    // waiting for the next look at it).
    write_routes(&path, &bootstrap, &route("r", "data/#", &first));
    process.signal("HUP");
    process.wait_for(Duration::from_secs(15), |line| {
        line.contains("routes reloaded")
    });
    publish(&client, &mut eventloop, "data/1", "back to first").await;
    // SIGHUP with nothing changed: nothing happens to the routes.
    process.signal("HUP");
    process.wait_for(Duration::from_secs(15), |line| {
        line.contains("routes unchanged")
    });
    assert_eq!(
        common::metric_at(http, "tributary_route_reloads_total{result=\"ok\"}").await,
        2.0
    );
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(payloads(&bootstrap, &first, 2), ["before", "back to first"]);
    assert_eq!(
        payloads(&bootstrap, &second, 3),
        ["after", "new route", "still second"]
    );
}

/// An Avro schema file is watched like the configuration: a new schema
/// applies to the next publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_avro_schema_applies_to_the_next_publishes() {
    use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason};
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-reload-avro");
    create_topic(&bootstrap, &topic, 1).await;
    let dir = common::pki::dir("reload-avro");
    let schema = dir.join("s.avsc");
    let record_schema =
        |fields: &str| format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#);
    std::fs::write(&schema, record_schema(r#"{"name":"a","type":"long"}"#)).unwrap();
    let path = dir.join("tributary.toml");
    write_routes(
        &path,
        &bootstrap,
        &format!(
            "[[routes]]\nname = \"r\"\nmqtt_filters = [\"data/#\"]\nkafka_topic = \"{topic}\"\nformat = \"avro\"\navro_schema = \"{}\"\n",
            schema.display()
        ),
    );
    let process = common::Process::start(&path);
    let (mqtt, _) = process.addrs();
    let (client, mut eventloop) =
        rumqttc::v5::AsyncClient::new(common::v5_options(mqtt, "schema-user"), 10);
    let publish = |payload: &'static str| {
        let client = client.clone();
        async move {
            client
                .publish(
                    "data/1",
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
    };
    let mut next_ack = async || loop {
        match tokio::time::timeout(Duration::from_secs(20), eventloop.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(Packet5::PubAck(ack)))) => return ack.reason,
            Ok(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    };
    publish(r#"{"a": 1}"#).await;
    assert_eq!(next_ack().await, PubAckReason::Success);

    // Written elsewhere and renamed into place, like the configuration.
    let partial = dir.join("s.partial");
    std::fs::write(
        &partial,
        record_schema(r#"{"name":"a","type":"long"},{"name":"b","type":"string"}"#),
    )
    .unwrap();
    std::fs::rename(&partial, &schema).unwrap();
    process.wait_for(Duration::from_secs(15), |line| {
        line.contains("routes reloaded")
    });
    publish(r#"{"a": 2}"#).await;
    assert_eq!(
        next_ack().await,
        PubAckReason::PayloadFormatInvalid,
        "the new schema needs b"
    );
    publish(r#"{"a": 3, "b": "x"}"#).await;
    assert_eq!(next_ack().await, PubAckReason::Success);
    let _ = std::fs::remove_dir_all(&dir);
}
