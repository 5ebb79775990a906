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

    // A connection shows in the counters.
    drop(TcpStream::connect(server.mqtt_addr()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = common::http_get(http, "/metrics").await;
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
