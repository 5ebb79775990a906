//! MQTT over WebSocket, as browsers and Python fleets use it: Eclipse Paho
//! (`paho-mqtt`) over `ws` and `wss` publishing through a route into a real
//! Kafka, in both protocol versions, acknowledged only once Kafka has it.

mod common;

use std::time::Duration;

use common::pki::{self, Ca};
use rdkafka::Message as _;
use tributary::listener::config::{ListenerConfig, TransportKind};
use tributary_bridge::testing::{consume, create_topic, require_kafka, unique_topic};

const PAHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_ws.py");

/// Runs the Paho client; its exit status and stderr.
async fn paho(args: &[&str]) -> (bool, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(PAHO)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Paho client ends")
    .expect("python3 runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn paho_publishes_over_websocket_and_secure_websocket_into_kafka() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-ws");
    create_topic(&bootstrap, &topic, 1).await;
    let dir = pki::dir("ws");
    let ca = Ca::new(&dir, "ca");
    let server_cert = ca.server(&dir, "tributary");
    let server = common::start(&bootstrap, &[("ws/#", &topic)], |config| {
        config.listeners = vec![
            ListenerConfig {
                name: "ws".into(),
                transport: TransportKind::Ws,
                ..ListenerConfig::plain("127.0.0.1:0")
            },
            ListenerConfig {
                name: "wss".into(),
                transport: TransportKind::Wss,
                cert_file: Some(server_cert.cert_path.clone()),
                key_file: Some(server_cert.key_path.clone()),
                ..ListenerConfig::plain("127.0.0.1:0")
            },
        ];
    })
    .await;
    let ws = server.listener_addr("ws").unwrap().port().to_string();
    let wss = server.listener_addr("wss").unwrap().port().to_string();
    let ca_path = ca.pem_path.to_str().unwrap();

    let runs: [(&str, &str, Option<&str>); 3] = [
        (&ws, "3.1.1", None),
        (&ws, "5", None),
        (&wss, "5", Some(ca_path)),
    ];
    for (port, version, ca) in runs {
        let message = format!("paho {version} tls={}", ca.is_some());
        let mut args = vec![
            "127.0.0.1",
            port,
            "/mqtt",
            version,
            "1",
            "ws/paho",
            &message,
        ];
        args.extend(ca);
        let (acknowledged, stderr) = paho(&args).await;
        assert!(acknowledged, "{message}: {stderr}");
    }

    // Each PUBACK came after Kafka had the record: all three are there.
    let records = consume(&bootstrap, &topic, 3, Duration::from_secs(20));
    let payloads: Vec<_> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.payload().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(
        payloads,
        [
            "paho 3.1.1 tls=false",
            "paho 5 tls=false",
            "paho 5 tls=true"
        ]
    );

    // A WebSocket request for another path is refused before any MQTT.
    let (refused, _) = paho(&["127.0.0.1", &ws, "/other", "5", "1", "ws/paho", "x"]).await;
    assert!(!refused, "a request for /other was served");
    let failed = common::metric(
        &server,
        r#"tributary_handshakes_failed_total{listener="ws",reason="ws_path"}"#,
    )
    .await;
    assert_eq!(failed, 1.0);
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}
