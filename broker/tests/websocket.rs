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

/// A listener on 127.0.0.1:0 named `name`, with `cert` for TLS.
fn listener(name: &str, transport: TransportKind, cert: Option<&pki::Issued>) -> ListenerConfig {
    ListenerConfig {
        name: name.into(),
        transport,
        cert_file: cert.map(|c| c.cert_path.clone()),
        key_file: cert.map(|c| c.key_path.clone()),
        ..ListenerConfig::plain("127.0.0.1:0")
    }
}

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
            listener("ws", TransportKind::Ws, None),
            listener("wss", TransportKind::Wss, Some(&server_cert)),
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

#[tokio::test]
async fn hostile_bytes_on_tls_and_websocket_listeners_close_only_their_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bootstrap = require_kafka();
    let dir = pki::dir("ws-hostile");
    let ca = Ca::new(&dir, "ca");
    let server_cert = ca.server(&dir, "tributary");
    let server = common::start(&bootstrap, &[], |config| {
        config.mqtt.connect_timeout_ms = 1_000;
        config.listeners = vec![
            listener("ws", TransportKind::Ws, None),
            listener("tls", TransportKind::Tls, Some(&server_cert)),
        ];
    })
    .await;
    let inputs: [&[u8]; 6] = [
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", // plain MQTT on a TLS/WS port
        b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n",        // HTTP without the upgrade
        b"\x16\x03\x01\xff\xff\x01\x00\xff\xfb",         // a TLS record that lies about its length
        &[0u8; 4096],
        &[0xffu8; 70_000],
        b"", // nothing at all: the timeout
    ];
    for name in ["ws", "tls"] {
        let addr = server.listener_addr(name).unwrap();
        for (i, input) in inputs.iter().enumerate() {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = stream.write_all(input).await;
            let mut sink = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
            assert!(
                closed.is_ok(),
                "{name} input {i}: the connection was not closed"
            );
        }
    }
    // Every one failed its handshake and was counted; nothing panicked, and
    // the listeners still serve a real client.
    let panicked = common::metric(
        &server,
        r#"tributary_connections_closed_total{reason="internal_error"}"#,
    )
    .await;
    assert_eq!(panicked, 0.0);
    let ws = server.listener_addr("ws").unwrap().port().to_string();
    let (acknowledged, stderr) =
        paho(&["127.0.0.1", &ws, "/mqtt", "5", "1", "after/hostile", "x"]).await;
    assert!(acknowledged, "{stderr}");
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}
