//! MQTT over TLS, as devices use it: Debian's `mosquitto_pub`/`mosquitto_sub`
//! with client certificates into a real Kafka, refusals of clients without a
//! valid certificate, and a certificate rotated under running connections.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::pki::{self, Ca, Issued};
use rdkafka::Message as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tributary::listener::config::{ListenerConfig, TransportKind};
use tributary_bridge::testing::{consume, create_topic, header, require_kafka, unique_topic};

/// A TLS listener named `devices` on 127.0.0.1:0 with `server`'s certificate;
/// client certificates from `client_ca` required when `require` is set.
fn tls_listener(server: &Issued, client_ca: &Path, require: bool) -> ListenerConfig {
    ListenerConfig {
        name: "devices".into(),
        transport: TransportKind::Tls,
        cert_file: Some(server.cert_path.clone()),
        key_file: Some(server.key_path.clone()),
        client_ca_file: Some(client_ca.to_owned()),
        require_client_cert: require,
        ..ListenerConfig::plain("127.0.0.1:0")
    }
}

fn tls_args<'a>(ca: &'a Ca, client: Option<&'a Issued>) -> Vec<&'a str> {
    let mut args = vec!["--cafile", ca.pem_path.to_str().unwrap()];
    if let Some(client) = client {
        args.extend([
            "--cert",
            client.cert_path.to_str().unwrap(),
            "--key",
            client.key_path.to_str().unwrap(),
        ]);
    }
    args
}

/// `mosquitto_pub` over TLS: whether it exited successfully.
async fn mosquitto_pub(port: u16, tls: &[&str], topic: &str, message: &str) -> bool {
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(tls)
            .args(["-t", topic, "-m", message])
            .kill_on_drop(true)
            .status(),
    )
    .await
    .expect("mosquitto_pub ends")
    .expect("mosquitto_pub is installed (apt-get install mosquitto-clients)");
    status.success()
}

#[tokio::test]
async fn mosquitto_clients_publish_and_subscribe_over_mutual_tls_into_kafka() {
    let bootstrap = require_kafka();
    let topic = unique_topic("tributary-tls");
    create_topic(&bootstrap, &topic, 1).await;
    let dir = pki::dir("tls");
    let ca = Ca::new(&dir, "ca");
    let server_cert = ca.server(&dir, "tributary");
    let device = ca.client(&dir, "device-1");
    let server = common::start(&bootstrap, &[("tls/#", &topic)], |config| {
        config.listeners = vec![
            ListenerConfig::plain("127.0.0.1:0"),
            tls_listener(&server_cert, &ca.pem_path, true),
        ];
    })
    .await;
    let port = server.listener_addr("devices").unwrap().port();

    let mut sub_args = tls_args(&ca, Some(&device));
    sub_args.extend([
        "-i", "tls-sub", "-t", "tls/#", "-q", "1", "-C", "1", "-W", "20",
    ]);
    let (mut sub, lines) = common::mosquitto_sub(port, &sub_args).await;
    assert!(
        mosquitto_pub(port, &tls_args(&ca, Some(&device)), "tls/a", "over tls").await,
        "mosquitto_pub with a valid client certificate was refused"
    );
    let _ = tokio::time::timeout(Duration::from_secs(20), sub.wait()).await;
    let lines = lines.await.unwrap();
    assert!(
        lines.iter().any(|line| line == "over tls"),
        "the TLS subscriber did not get the message: {lines:?}"
    );

    let records = consume(&bootstrap, &topic, 1, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload(), Some(&b"over tls"[..]));
    // The verified certificate's identity travels with the record.
    assert_eq!(header(&records[0], "mqtt.cert_cn"), Some(&b"device-1"[..]));
    assert_eq!(header(&records[0], "mqtt.username"), None);
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_client_without_a_valid_certificate_is_refused() {
    let bootstrap = require_kafka();
    let dir = pki::dir("tls-refused");
    let ca = Ca::new(&dir, "ca");
    let other_ca = Ca::new(&dir, "other-ca");
    let server_cert = ca.server(&dir, "tributary");
    let good = ca.client(&dir, "device-1");
    let expired = ca.expired_client(&dir, "device-2");
    let foreign = other_ca.client(&dir, "device-3");
    let server = common::start(&bootstrap, &[], |config| {
        config.listeners = vec![tls_listener(&server_cert, &ca.pem_path, true)];
    })
    .await;
    let port = server.listener_addr("devices").unwrap().port();

    assert!(mosquitto_pub(port, &tls_args(&ca, Some(&good)), "t", "m").await);
    assert!(
        !mosquitto_pub(port, &tls_args(&ca, None), "t", "m").await,
        "a client without a certificate was let in"
    );
    assert!(
        !mosquitto_pub(port, &tls_args(&ca, Some(&expired)), "t", "m").await,
        "an expired certificate was accepted"
    );
    assert!(
        !mosquitto_pub(port, &tls_args(&ca, Some(&foreign)), "t", "m").await,
        "a certificate signed by another CA was accepted"
    );
    let failed = common::metric(
        &server,
        r#"tributary_handshakes_failed_total{listener="devices",reason="tls_handshake"}"#,
    )
    .await;
    assert_eq!(failed, 3.0);
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A TLS client with `client`'s certificate: the server certificate's DER
/// and the stream.
async fn tls_connect(
    addr: SocketAddr,
    ca: &Ca,
    client: &Issued,
) -> (
    Vec<u8>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca.pem_path).unwrap())
        .unwrap();
    let certs = CertificateDer::pem_file_iter(&client.cert_path)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&client.key_path).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (served, stream)
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_and_old_ones_continue() {
    let bootstrap = require_kafka();
    let dir = pki::dir("tls-rotate");
    let ca = Ca::new(&dir, "ca");
    let first = ca.server(&dir, "first");
    let device = ca.client(&dir, "device-1");
    // The listener reads these paths; rotation writes new contents into them.
    let cert_path = dir.join("live.pem");
    let key_path = dir.join("live.key");
    std::fs::copy(&first.cert_path, &cert_path).unwrap();
    std::fs::copy(&first.key_path, &key_path).unwrap();
    let live = Issued {
        cert_path: cert_path.clone(),
        key_path: key_path.clone(),
        der: first.der.clone(),
    };
    let server = common::start(&bootstrap, &[], |config| {
        config.listeners = vec![tls_listener(&live, &ca.pem_path, true)];
    })
    .await;
    let addr = server.listener_addr("devices").unwrap();

    let (served, mut old) = tls_connect(addr, &ca, &device).await;
    assert_eq!(served, first.der);
    old.write_all(&common::connect_v4("rotation-old"))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    old.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);

    // Rotation: a certificate whose file is broken is refused, and the one
    // serving serves on; then the new pair.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    common::eventually(
        Duration::from_secs(10),
        "the broken file refused",
        || async {
            common::metric(
                &server,
                r#"tributary_tls_reloads_total{listener="devices",outcome="refused"}"#,
            )
            .await
                >= 1.0
        },
    )
    .await;
    let (served, _) = tls_connect(addr, &ca, &device).await;
    assert_eq!(
        served, first.der,
        "a broken certificate replaced a good one"
    );

    let second = ca.server(&dir, "second");
    std::fs::copy(&second.key_path, &key_path).unwrap();
    std::fs::copy(&second.cert_path, &cert_path).unwrap();
    let mut served_new = false;
    for _ in 0..100 {
        let (served, _) = tls_connect(addr, &ca, &device).await;
        if served == second.der {
            served_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_new, "new connections never saw the new certificate");

    // The connection made before the rotation is still served.
    old.write_all(&[0xc0, 0x00]).await.unwrap();
    let mut pingresp = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), old.read_exact(&mut pingresp))
        .await
        .expect("PINGRESP on the old connection")
        .unwrap();
    assert_eq!(pingresp, [0xd0, 0x00]);
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}
