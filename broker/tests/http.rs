//! The operator's endpoints on a real running Tributary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary::config::Config;
use tributary_bridge::testing::require_kafka;

/// A plain HTTP/1.0 GET: status code and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to HTTP");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn config(bootstrap: &str) -> Config {
    let mut config = Config::from_toml(
        r#"
        [mqtt]
        listen = "127.0.0.1:0"
        [http]
        listen = "127.0.0.1:0"
        [kafka]
        metadata_probe_interval_ms = 200
        metadata_max_age_ms = 1000
        "#,
    )
    .unwrap();
    config.kafka.bootstrap_servers = bootstrap.into();
    config
}

#[tokio::test]
async fn ready_with_kafka_and_metrics_in_prometheus_format() {
    let bootstrap = require_kafka();
    let server = tributary::start(config(&bootstrap)).await.unwrap();
    let http = server.http_addr();

    assert_eq!(get(http, "/healthz").await, (200, "ok\n".to_owned()));

    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut status, mut body) = get(http, "/readyz").await;
    while status != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status, body) = get(http, "/readyz").await;
    }
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let (status, metrics) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE tributary_kafka_up gauge"),
        "{metrics}"
    );
    assert!(metrics.contains("tributary_kafka_up 1"), "{metrics}");

    // A connection shows in the counters.
    drop(TcpStream::connect(server.mqtt_addr()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = get(http, "/metrics").await;
        if metrics.contains("tributary_connections_accepted_total") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection counter:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn not_ready_while_kafka_is_unreachable() {
    // Nothing listens on port 1 of loopback.
    let server = tributary::start(config("127.0.0.1:1")).await.unwrap();
    let (status, body) = get(server.http_addr(), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Kafka metadata"), "{body}");
    // Alive all the same.
    assert_eq!(get(server.http_addr(), "/healthz").await.0, 200);
    server.shutdown().await;
}
