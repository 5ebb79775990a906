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
    let status = std::process::Command::new("kill")
        .args(["-HUP", &process.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    process.wait_for(Duration::from_secs(15), |line| {
        line.contains("routes reloaded")
    });
    publish(&client, &mut eventloop, "data/1", "back to first").await;
    // SIGHUP with nothing changed: nothing happens to the routes.
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &process.pid().to_string()])
        .status();
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
