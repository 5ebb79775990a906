//! Authentication and authorization as devices meet them: a password file
//! written by Mosquitto's own `mosquitto_passwd` (and by `tributary passwd`),
//! JWTs in the password field, and a Mosquitto ACL file, checked with raw
//! MQTT 3.1.1 and 5 packets so every reason code is the one on the wire.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{pki, Raw};
use rdkafka::Message as _;
use tokio::io::AsyncReadExt;
use tributary::auth::jwt::{JwtAlgorithm, Secret};
use tributary::auth::{AuthConfig, JwtConfig};
use tributary::Server;
use tributary_bridge::testing::{consume, create_topic, header, require_kafka, unique_topic};
use tributary_wire::packet;

const WAIT: Duration = Duration::from_secs(5);

/// The metrics are the process's: tests that count refusals and denials run
/// one at a time, so that each sees only its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn string(bytes: &[u8]) -> Vec<u8> {
    [&(bytes.len() as u16).to_be_bytes()[..], bytes].concat()
}

/// A CONNECT of `version` (4 or 5), clean, keep-alive 60 s, with optional
/// credentials and a QoS 0 will.
fn connect(
    version: u8,
    client_id: &str,
    user: Option<&str>,
    password: Option<&[u8]>,
    will: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut flags = 0x02;
    if user.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    if will.is_some() {
        flags |= 0x04;
    }
    let mut body = [&string(b"MQTT")[..], &[version, flags, 0, 60]].concat();
    if version == 5 {
        body.push(0);
    }
    body.extend(string(client_id.as_bytes()));
    if let Some((topic, message)) = will {
        if version == 5 {
            body.push(0);
        }
        body.extend(string(topic.as_bytes()));
        body.extend(string(message));
    }
    if let Some(user) = user {
        body.extend(string(user.as_bytes()));
    }
    if let Some(password) = password {
        body.extend(string(password));
    }
    packet(0x10, &body)
}

/// The CONNACK's return code (3.1.1) or reason code (5).
async fn connack_code(addr: std::net::SocketAddr, connect: &[u8]) -> (u8, Raw) {
    let mut raw = Raw::connect(addr).await;
    raw.send(connect).await;
    let mut head = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(20), raw.0.read_exact(&mut head))
        .await
        .expect("a CONNACK")
        .expect("a CONNACK");
    assert_eq!(head[0], 0x20, "not a CONNACK: {head:?}");
    (head[3], raw)
}

/// Reads until `expected` arrives (true) or `within` passes (false).
async fn receives(raw: &mut Raw, expected: &[u8], within: Duration) -> bool {
    raw.read_until(expected, within).await.is_some()
}

fn subscribe(version: u8, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if version == 5 {
        body.push(0);
    }
    for filter in filters {
        body.extend(string(filter.as_bytes()));
        body.push(1);
    }
    packet(0x82, &body)
}

fn publish(version: u8, qos: u8, topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic.as_bytes());
    if qos > 0 {
        body.extend(pkid.to_be_bytes());
    }
    if version == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// Users alice and bob, written by the real `mosquitto_passwd`.
fn mosquitto_password_file(dir: &Path) -> PathBuf {
    let path = dir.join("passwords");
    for (i, (user, password)) in [("alice", "alice-pw"), ("bob", "bob-pw")]
        .iter()
        .enumerate()
    {
        let mut command = std::process::Command::new("mosquitto_passwd");
        command.arg("-b");
        if i == 0 {
            command.arg("-c");
        }
        let status = command
            .arg(&path)
            .arg(user)
            .arg(password)
            .status()
            .expect("mosquitto_passwd is installed (apt-get install mosquitto)");
        assert!(status.success());
    }
    path
}

const ACL: &str = "\
# Anonymous clients: nothing.
user alice
topic readwrite sensors/alice/#
topic read public/#
topic deny sensors/alice/secret

user bob
topic readwrite #

pattern readwrite devices/%c/#
pattern read users/%u/#
";

fn refused(reason: &str) -> String {
    format!(r#"tributary_connections_refused_total{{reason="{reason}"}}"#)
}

const DENIED_QOS1: &str = r#"tributary_mqtt_publishes_denied_total{qos="1"}"#;

async fn server_with(bootstrap: &str, routes: &[(&str, &str)], auth: AuthConfig) -> Server {
    common::start(bootstrap, routes, move |config| config.auth = auth).await
}

#[tokio::test]
async fn mosquitto_passwd_users_get_in_and_wrong_or_missing_credentials_are_refused() {
    let _serial = SERIAL.lock().await;
    let bootstrap = require_kafka();
    let dir = pki::dir("auth-passwd");
    let passwords = mosquitto_password_file(&dir);
    // `tributary passwd` adds carol to the same file.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["passwd", passwords.to_str().unwrap(), "carol"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"carol-pw\n")
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&passwords).unwrap();
    assert!(text.contains("carol:$7$"), "{text}");
    assert!(!text.contains("carol-pw"), "the password is in the file");

    let server = server_with(
        &bootstrap,
        &[],
        AuthConfig {
            password_file: Some(passwords.clone()),
            failure_delay_ms: 100,
            ..AuthConfig::default()
        },
    )
    .await;
    let addr = server.mqtt_addr();
    // (protocol level, user name, password, the CONNACK code expected)
    type Case<'a> = (u8, Option<&'a str>, Option<&'a [u8]>, u8);
    let cases: [Case; 9] = [
        (4, Some("alice"), Some(b"alice-pw"), 0x00),
        (5, Some("bob"), Some(b"bob-pw"), 0x00),
        (4, Some("carol"), Some(b"carol-pw"), 0x00),
        (4, Some("alice"), Some(b"wrong"), 0x04),
        (5, Some("alice"), Some(b"wrong"), 0x86),
        (4, Some("mallory"), Some(b"x"), 0x04),
        (5, Some("alice"), None, 0x86),
        (4, None, None, 0x05),
        (5, None, None, 0x87),
    ];
    let mut refused_before = std::collections::HashMap::new();
    for reason in ["bad_password", "unknown_user", "anonymous"] {
        refused_before.insert(reason, common::metric(&server, &refused(reason)).await);
    }
    let good = connect(4, "good", Some("alice"), Some(b"alice-pw"), None);
    for (i, (version, user, password, expected)) in cases.into_iter().enumerate() {
        let bytes = connect(version, &format!("c{i}"), user, password, None);
        let (code, _) = connack_code(addr, &bytes).await;
        assert_eq!(code, expected, "case {i}: {version} {user:?}");
        // A success forgets this address's failures: each case waits little.
        assert_eq!(connack_code(addr, &good).await.0, 0x00);
    }
    for (reason, count) in [
        ("bad_password", 3.0),
        ("unknown_user", 1.0),
        ("anonymous", 2.0),
    ] {
        let now = common::metric(&server, &refused(reason)).await;
        assert_eq!(now - refused_before[reason], count, "{reason}");
    }

    // Each failure from one address waits longer than the one before
    // (100 ms, 200 ms, 400 ms here).
    let bad = connect(4, "brute", Some("alice"), Some(b"guess"), None);
    let mut took = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(connack_code(addr, &bad).await.0, 0x04);
        took.push(started.elapsed());
    }
    assert!(
        took[0] >= Duration::from_millis(100) && took[2] >= Duration::from_millis(400),
        "no growing delay: {took:?}"
    );
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

fn token(claims: serde_json::Value, secret: &str) -> Vec<u8> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
    .into_bytes()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn jwt_tokens_are_verified_and_an_expiring_one_ends_its_connection() {
    let _serial = SERIAL.lock().await;
    let bootstrap = require_kafka();
    let mut jwt = JwtConfig::new(JwtAlgorithm::Hs256);
    jwt.secret = Some(Secret::new(SECRET));
    jwt.leeway_secs = 0;
    let server = server_with(
        &bootstrap,
        &[],
        AuthConfig {
            jwt: Some(jwt),
            failure_delay_ms: 10,
            ..AuthConfig::default()
        },
    )
    .await;
    let addr = server.mqtt_addr();
    let valid = token(
        serde_json::json!({"sub": "fleet-1", "exp": now() + 600}),
        SECRET,
    );
    let expired = token(
        serde_json::json!({"sub": "fleet-1", "exp": now() - 60}),
        SECRET,
    );
    let forged = token(
        serde_json::json!({"sub": "fleet-1", "exp": now() + 600}),
        "another-secret-of-at-least-32-bytes!!",
    );
    let other_client = token(
        serde_json::json!({"sub": "fleet-1", "exp": now() + 600, "client_id": "someone-else"}),
        SECRET,
    );
    let cases: [(u8, &[u8], u8); 5] = [
        (5, &valid, 0x00),
        (4, &valid, 0x00),
        (5, &expired, 0x86),
        (5, &forged, 0x86),
        (5, &other_client, 0x87),
    ];
    for (i, (version, token, expected)) in cases.into_iter().enumerate() {
        let bytes = connect(
            version,
            &format!("jwt{i}"),
            Some("fleet-1"),
            Some(token),
            None,
        );
        let (code, _) = connack_code(addr, &bytes).await;
        assert_eq!(code, expected, "case {i}");
    }

    // A token expiring in 2 s: connected, then DISCONNECT 0xA0 when it expires.
    let short = token(
        serde_json::json!({"sub": "fleet-1", "exp": now() + 2}),
        SECRET,
    );
    let (code, mut raw) = connack_code(
        addr,
        &connect(5, "short-lived", Some("fleet-1"), Some(&short), None),
    )
    .await;
    assert_eq!(code, 0x00);
    let received = raw.closed_within(Duration::from_secs(10)).await;
    assert!(
        received.windows(3).any(|w| w == [0xe0, 0x01, 0xa0]),
        "no DISCONNECT 0xA0 at expiry: {received:02x?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_acl_decides_subscriptions_publishes_wills_and_deliveries() {
    let _serial = SERIAL.lock().await;
    let bootstrap = require_kafka();
    let kafka_topic = unique_topic("tributary-acl");
    create_topic(&bootstrap, &kafka_topic, 1).await;
    let dir = pki::dir("auth-acl");
    let passwords = mosquitto_password_file(&dir);
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let server = server_with(
        &bootstrap,
        &[("#", &kafka_topic)],
        AuthConfig {
            password_file: Some(passwords),
            acl_file: Some(acl),
            ..AuthConfig::default()
        },
    )
    .await;
    let addr = server.mqtt_addr();
    let denied_before = common::metric(&server, DENIED_QOS1).await;
    let login = |version, id: &str, user: &str, password: &[u8]| {
        connect(version, id, Some(user), Some(password), None)
    };

    // Bob may read everything: he watches what reaches subscribers.
    let (_, mut bob) = connack_code(addr, &login(4, "bob-watch", "bob", b"bob-pw")).await;
    bob.send(&subscribe(4, 1, &["#"])).await;
    assert!(receives(&mut bob, &[0x90, 0x03, 0x00, 0x01, 0x01], WAIT).await);

    // Denied filters fail at their place; the others are granted.
    let (_, mut alice4) = connack_code(addr, &login(4, "alice-4", "alice", b"alice-pw")).await;
    alice4
        .send(&subscribe(
            4,
            7,
            &["sensors/alice/#", "secret/#", "public/#"],
        ))
        .await;
    assert!(
        receives(
            &mut alice4,
            &[0x90, 0x05, 0x00, 0x07, 0x01, 0x80, 0x01],
            WAIT
        )
        .await,
        "3.1.1 SUBACK with 0x80 for the refused filter"
    );
    let (_, mut alice5) = connack_code(addr, &login(5, "alice-5", "alice", b"alice-pw")).await;
    alice5.send(&subscribe(5, 8, &["secret/#", "#"])).await;
    assert!(
        receives(
            &mut alice5,
            &[0x90, 0x05, 0x00, 0x08, 0x00, 0x87, 0x01],
            WAIT
        )
        .await,
        "MQTT 5 SUBACK with 0x87 for the refused filter"
    );

    // Publishes: allowed ones reach Kafka and subscribers; MQTT 5 hears 0x87
    // for a denied one, MQTT 3.1.1 an acknowledgement, and neither reaches
    // anything.
    alice5
        .send(&publish(5, 1, "sensors/alice/t", 1, b"allowed"))
        .await;
    assert!(receives(&mut alice5, &[0x40, 0x02, 0x00, 0x01], WAIT).await);
    alice5
        .send(&publish(5, 1, "sensors/bob/t", 2, b"denied-5"))
        .await;
    assert!(
        receives(&mut alice5, &[0x40, 0x04, 0x00, 0x02, 0x87, 0x00], WAIT).await,
        "PUBACK 0x87 for a denied publish"
    );
    alice4
        .send(&publish(4, 1, "sensors/alice/secret", 3, b"denied-4"))
        .await;
    assert!(receives(&mut alice4, &[0x40, 0x02, 0x00, 0x03], WAIT).await);

    // Patterns: %c and %u.
    let (_, mut dev) = connack_code(addr, &login(5, "dev-1", "alice", b"alice-pw")).await;
    dev.send(&publish(5, 1, "devices/dev-1/up", 1, b"own-device"))
        .await;
    assert!(receives(&mut dev, &[0x40, 0x02, 0x00, 0x01], WAIT).await);
    dev.send(&publish(5, 1, "devices/dev-2/up", 2, b"other-device"))
        .await;
    assert!(receives(&mut dev, &[0x40, 0x04, 0x00, 0x02, 0x87, 0x00], WAIT).await);
    dev.send(&subscribe(5, 3, &["users/alice/#", "users/bob/#"]))
        .await;
    assert!(receives(&mut dev, &[0x90, 0x05, 0x00, 0x03, 0x00, 0x01, 0x87], WAIT).await);

    // Bob publishes where alice's `#` (granted: it meets public/#) may and
    // may not read; she gets only the first.
    let (_, mut bob_pub) = connack_code(addr, &login(4, "bob-pub", "bob", b"bob-pw")).await;
    bob_pub
        .send(&publish(4, 0, "private/x", 0, b"not-for-alice"))
        .await;
    bob_pub
        .send(&publish(4, 0, "public/x", 0, b"for-everyone"))
        .await;
    let seen_by_alice = alice5
        .read_until(b"for-everyone", WAIT)
        .await
        .expect("alice's # subscription gets what she may read");
    assert!(
        !seen_by_alice.windows(13).any(|w| w == b"not-for-alice"),
        "a # subscriber received a topic it may not read"
    );

    // Wills: a denied one is never published, an allowed one is.
    let (_, denied_will) = connack_code(
        addr,
        &connect(
            4,
            "will-1",
            Some("alice"),
            Some(b"alice-pw"),
            Some(("secret/will", b"denied-will")),
        ),
    )
    .await;
    let (_, allowed_will) = connack_code(
        addr,
        &connect(
            4,
            "will-2",
            Some("alice"),
            Some(b"alice-pw"),
            Some(("sensors/alice/will", b"allowed-will")),
        ),
    )
    .await;
    drop(denied_will);
    drop(allowed_will);
    assert!(receives(&mut bob, b"allowed-will", WAIT).await);

    // What bob saw, and what Kafka got: only what was allowed.
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), bob.0.read_to_end(&mut seen)).await;
    for forbidden in [
        &b"denied-5"[..],
        b"denied-4",
        b"other-device",
        b"denied-will",
    ] {
        assert!(
            !seen.windows(forbidden.len()).any(|w| w == forbidden),
            "{} reached a subscriber",
            String::from_utf8_lossy(forbidden)
        );
    }
    let records = consume(&bootstrap, &kafka_topic, 10, Duration::from_secs(8));
    let mut payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.payload().unwrap_or_default()).into_owned())
        .collect();
    payloads.sort();
    assert_eq!(
        payloads,
        [
            "allowed",
            "allowed-will",
            "for-everyone",
            "not-for-alice",
            "own-device"
        ]
    );
    let denied = common::metric(&server, DENIED_QOS1).await;
    assert_eq!(denied - denied_before, 3.0);
    // Who published travels with each record.
    let by_payload = |payload: &[u8]| {
        records
            .iter()
            .find(|r| r.payload() == Some(payload))
            .and_then(|r| header(r, "mqtt.username"))
            .map(<[u8]>::to_vec)
    };
    assert_eq!(by_payload(b"allowed"), Some(b"alice".to_vec()));
    assert_eq!(by_payload(b"not-for-alice"), Some(b"bob".to_vec()));
    assert_eq!(by_payload(b"allowed-will"), Some(b"alice".to_vec()));

    // The ACL is reloaded when its file changes: alice may now write
    // sensors/bob/#, on the connection she already has.
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        format!("{ACL}\nuser alice\ntopic write sensors/bob/#\n"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        alice5
            .send(&publish(5, 1, "sensors/bob/t", 9, b"after-reload"))
            .await;
        let accepted = alice5
            .read_until(&[0x40, 0x02, 0x00, 0x09], Duration::from_millis(500))
            .await;
        if accepted.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changed ACL was not reloaded"
        );
    }
    server.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn each_listener_has_its_own_anonymous_setting_and_a_token_carries_its_acl() {
    let _serial = SERIAL.lock().await;
    use tributary::listener::config::ListenerConfig;
    let bootstrap = require_kafka();
    let mut jwt = JwtConfig::new(JwtAlgorithm::Hs256);
    jwt.secret = Some(Secret::new(SECRET));
    let server = common::start(&bootstrap, &[], |config| {
        config.auth = AuthConfig {
            jwt: Some(jwt),
            ..AuthConfig::default()
        };
        config.listeners = vec![
            ListenerConfig {
                name: "local".into(),
                allow_anonymous: Some(true),
                ..ListenerConfig::plain("127.0.0.1:0")
            },
            ListenerConfig {
                name: "devices".into(),
                ..ListenerConfig::plain("127.0.0.1:0")
            },
        ];
    })
    .await;
    let local = server.listener_addr("local").unwrap();
    let devices = server.listener_addr("devices").unwrap();
    let anonymous = connect(4, "tool", None, None, None);
    assert_eq!(connack_code(local, &anonymous).await.0, 0x00);
    assert_eq!(connack_code(devices, &anonymous).await.0, 0x05);

    let token = token(
        serde_json::json!({
            "sub": "truck-fleet",
            "exp": now() + 600,
            "acl": {"pub": ["fleet/%c/#"], "sub": ["cmd/${clientid}"]}
        }),
        SECRET,
    );
    let (code, mut truck) = connack_code(
        devices,
        &connect(5, "truck-1", Some("any"), Some(&token), None),
    )
    .await;
    assert_eq!(code, 0x00);
    truck
        .send(&publish(5, 1, "fleet/truck-1/gps", 1, b"own"))
        .await;
    assert!(receives(&mut truck, &[0x40, 0x02, 0x00, 0x01], WAIT).await);
    truck
        .send(&publish(5, 1, "fleet/truck-2/gps", 2, b"other"))
        .await;
    assert!(receives(&mut truck, &[0x40, 0x04, 0x00, 0x02, 0x87, 0x00], WAIT).await);
    truck
        .send(&subscribe(5, 3, &["cmd/truck-1", "cmd/truck-2"]))
        .await;
    assert!(
        receives(
            &mut truck,
            &[0x90, 0x05, 0x00, 0x03, 0x00, 0x01, 0x87],
            WAIT
        )
        .await,
        "the token's sub rule decides"
    );
    server.shutdown().await;
}
