//! The operator's endpoints on a real running Tributary.

mod common;

use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tributary_bridge::testing::require_kafka;

#[tokio::test]
async fn ready_with_kafka_and_metrics_in_prometheus_format() {
    let bootstrap = require_kafka();
    let server = common::start(&bootstrap, &[], |_| {}).await;
    let http = server.http_addr();

    assert_eq!(
        common::http_get(http, "/healthz").await,
        (200, "ok\n".to_owned())
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut status, mut body) = common::http_get(http, "/readyz").await;
    while status != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status, body) = common::http_get(http, "/readyz").await;
    }
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let (status, metrics) = common::http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE tributary_kafka_up gauge"),
        "{metrics}"
    );
    assert!(metrics.contains("tributary_kafka_up 1"), "{metrics}");

    // A connection shows in the counters (there from the start, at 0).
    drop(TcpStream::connect(server.mqtt_addr()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if common::metric(&server, "tributary_connections_accepted_total").await >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connection was not counted:\n{}",
            common::http_get(http, "/metrics").await.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn not_ready_while_kafka_is_unreachable() {
    // Nothing listens on port 1 of loopback.
    let server = common::start("127.0.0.1:1", &[], |_| {}).await;
    let (status, body) = common::http_get(server.http_addr(), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("Kafka not reached yet") || body.contains("Kafka unreachable"),
        "{body}"
    );
    // Alive all the same.
    assert_eq!(
        common::http_get(server.http_addr(), "/healthz").await.0,
        200
    );
    server.shutdown().await;
}

/// `/metrics` as Prometheus's own linter reads it, right after start and
/// after traffic: every metric described, the series users alert on there
/// from the start (at 0), nothing `promtool check metrics` complains of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_alerting_series_exist_from_the_start() {
    use tributary::config::Config;
    use tributary_bridge::testing::unique_topic;
    use tributary_bridge::DeliveryFailure;

    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-promtool");
    let extra = Config::from_toml(&format!(
        r#"
        [[routes]]
        name = "promtool"
        mqtt_filters = ["promtool/#"]
        kafka_topic = "{topic}"
        on_failure = "dead_letter"
        dead_letter_topic = "{topic}.dead"

        [[kafka_sources]]
        name = "promtool"
        topics = ["{topic}.commands"]
        mqtt_topic = "promtool-commands/{{key}}"
        "#
    ))
    .unwrap();
    let server = common::start(&bootstrap, &[], |config| {
        config.routes = extra.routes;
        config.kafka_sources = extra.kafka_sources;
    })
    .await;
    let http = server.http_addr();

    // Right after start: before any device, any Kafka answer, any failure.
    let (status, at_start) = common::http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    promtool_accepts(&at_start);
    every_type_has_help(&at_start);
    let mut expected: Vec<String> = [
        "tributary_connections_current",
        "tributary_connections_accepted_total",
        "tributary_connections_refused_total{reason=\"connection_limit\"}",
        "tributary_mqtt_publishes_received_total{qos=\"0\"}",
        "tributary_mqtt_publishes_received_total{qos=\"1\"}",
        "tributary_mqtt_publishes_received_total{qos=\"2\"}",
        "tributary_mqtt_publish_ack_seconds_count{qos=\"1\"}",
        "tributary_mqtt_publish_ack_seconds_count{qos=\"2\"}",
        "tributary_inflight_messages",
        "tributary_kafka_up",
        "tributary_kafka_queued_records",
        "process_resident_memory_bytes",
        "process_open_fds",
        "tributary_kafka_delivered_total{route=\"promtool\"}",
        "tributary_spool_bytes",
        "tributary_spool_records",
        "tributary_spool_oldest_seconds",
        "tributary_spool_refused_total{reason=\"full\"}",
        "tributary_route_reloads_total{result=\"ok\"}",
        "tributary_route_reloads_total{result=\"failed\"}",
        "tributary_kafka_source_consumed_total{source=\"promtool\"}",
        "tributary_kafka_source_published_total{source=\"promtool\"}",
        "tributary_kafka_source_errors_total{source=\"promtool\"}",
        "tributary_kafka_source_commit_failures_total{source=\"promtool\"}",
    ]
    .map(String::from)
    .into();
    for failure in DeliveryFailure::ALL {
        let reason = failure.label();
        for qos in [1, 2] {
            expected.push(format!(
                "tributary_mqtt_publishes_refused_total{{qos=\"{qos}\",reason=\"{reason}\"}}"
            ));
        }
        expected.push(format!(
            "tributary_kafka_delivery_failures_total{{route=\"promtool\",reason=\"{reason}\"}}"
        ));
        if !failure.is_transient() {
            expected.push(format!(
                "tributary_dead_letters_total{{route=\"promtool\",reason=\"{reason}\"}}"
            ));
        }
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|series| !has_series(&at_start, series))
        .collect();
    assert!(
        missing.is_empty(),
        "series missing right after start: {missing:#?}\n{at_start}"
    );

    // Some traffic: a routed QoS 1 publish (acknowledged once in Kafka) and a
    // QoS 0 one.
    let options = common::v4_options(server.mqtt_addr(), "promtool-device");
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    client
        .publish("promtool/a", rumqttc::QoS::AtMostOnce, false, "0")
        .await
        .unwrap();
    client
        .publish("promtool/a", rumqttc::QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("connection failed: {error}"),
            Err(_) => panic!("no PUBACK within 30 s"),
        }
    }
    let (_, after) = common::http_get(http, "/metrics").await;
    promtool_accepts(&after);
    every_type_has_help(&after);
    assert!(
        common::metric(
            &server,
            "tributary_kafka_delivered_total{route=\"promtool\"}"
        )
        .await
            >= 1.0,
        "{after}"
    );
    drop(client);
    server.shutdown().await;
}

/// True when `series` (name and labels as rendered) has a sample.
fn has_series(metrics: &str, series: &str) -> bool {
    metrics.lines().any(|line| {
        line.strip_prefix(series)
            .is_some_and(|rest| rest.starts_with(' '))
    })
}

/// Every `# TYPE` line has its `# HELP` line.
fn every_type_has_help(metrics: &str) {
    let helped: std::collections::HashSet<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# HELP ")?.split(' ').next())
        .collect();
    let undescribed: Vec<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .filter(|name| !helped.contains(name))
        .collect();
    assert!(
        undescribed.is_empty(),
        "metrics without # HELP: {undescribed:?}"
    );
}

/// `promtool check metrics` (Debian's `prometheus` package) reads `metrics`
/// and finds nothing wrong. A missing promtool fails the test: scripts/test
/// installs it.
fn promtool_accepts(metrics: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run promtool ({error}): install Debian's prometheus package (scripts/test does)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(metrics.as_bytes())
        .expect("promtool reads the metrics");
    let output = child.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics: {}\n{}{}\n--- the metrics:\n{metrics}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}
