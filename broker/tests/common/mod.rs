//! A small story-telling kit for integration tests: a real Tributary on
//! 127.0.0.1:0, real MQTT clients, a real Kafka.
#![allow(dead_code)] // each test binary uses its own part of the kit

pub mod pki;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary::config::Config;
use tributary::Server;
use tributary_bridge::{KeySource, RouteConfig};

/// Starts Tributary on ephemeral loopback ports with Kafka at `bootstrap` and
/// one route per `(filter, kafka_topic)`; `tweak` adjusts the config further.
pub async fn start(
    bootstrap: &str,
    routes: &[(&str, &str)],
    tweak: impl FnOnce(&mut Config),
) -> Server {
    let mut config = Config::from_toml(
        r#"
        [mqtt]
        listen = "127.0.0.1:0"
        [http]
        listen = "127.0.0.1:0"
        [kafka]
        metadata_probe_interval_ms = 500
        metadata_max_age_ms = 2000
        "#,
    )
    .unwrap();
    config.kafka.bootstrap_servers = bootstrap.into();
    config.routes = routes
        .iter()
        .enumerate()
        .map(|(i, (filter, topic))| RouteConfig {
            name: format!("route{i}"),
            mqtt_filters: vec![filter.to_string()],
            kafka_topic: topic.to_string(),
            key: KeySource::ClientId,
            ..RouteConfig::default()
        })
        .collect();
    tweak(&mut config);
    tributary::start(config).await.expect("Tributary starts")
}

/// A plain HTTP/1.0 GET: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
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

/// The value of a Prometheus sample (`name{labels}` exactly as rendered), or 0.
pub async fn metric(server: &Server, sample: &str) -> f64 {
    metric_at(server.http_addr(), sample).await
}

/// [`metric`] of the server whose HTTP endpoint is `addr`.
pub async fn metric_at(addr: SocketAddr, sample: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// rumqttc MQTT 3.1.1 options for Tributary at `addr`.
pub fn v4_options(addr: SocketAddr, client_id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// rumqttc MQTT 5 options for Tributary at `addr`.
/// Waits (30 s at most) for the next PUBACK on an MQTT 5 client's event
/// loop and returns its reason code.
pub async fn next_puback_v5(
    eventloop: &mut rumqttc::v5::EventLoop,
) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
    use rumqttc::v5::{mqttbytes::v5::Packet, Event};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => return ack.reason,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("the connection failed: {error}"),
            Err(_) => panic!("no PUBACK within 30 s"),
        }
    }
}

pub fn v5_options(addr: SocketAddr, client_id: &str) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// A raw TCP connection speaking bytes, for malformed input.
pub struct Raw(pub TcpStream);

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw(TcpStream::connect(addr).await.unwrap())
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed; that is what some tests expect.
        let _ = self.0.write_all(bytes).await;
    }

    /// Everything read up to and including `expected`; `None` when the
    /// connection closed or `expected` did not arrive within `within`.
    pub async fn read_until(&mut self, expected: &[u8], within: Duration) -> Option<Vec<u8>> {
        let mut received = Vec::new();
        let arrived = tokio::time::timeout(within, async {
            let mut buf = [0u8; 1024];
            while !received.windows(expected.len()).any(|w| w == expected) {
                match self.0.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
            true
        })
        .await;
        (arrived == Ok(true)).then_some(received)
    }

    /// The first whole packet of type byte `first` (remaining length under
    /// 128), skipping what comes before; `None` if none within `within`.
    pub async fn read_packet(&mut self, first: u8, within: Duration) -> Option<Vec<u8>> {
        let mut received: Vec<u8> = Vec::new();
        tokio::time::timeout(within, async {
            let mut buf = [0u8; 1024];
            loop {
                let mut at = 0;
                while at + 1 < received.len() {
                    let len = usize::from(received[at + 1]);
                    if received[at] == first && received.len() >= at + 2 + len {
                        return Some(received[at..at + 2 + len].to_vec());
                    }
                    at += 2 + len;
                }
                match self.0.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Reads until the server closes the connection; returns what it sent.
    /// Panics if it is still open after `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> Vec<u8> {
        let mut received = Vec::new();
        let result = tokio::time::timeout(timeout, async {
            let mut buf = [0u8; 1024];
            loop {
                match self.0.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(result.is_ok(), "the server kept the connection open");
        received
    }
}

/// An MQTT 3.1.1 CONNECT for `client_id`, clean session, keep-alive 60 s.
pub fn connect_v4(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    tributary_wire::packet(0x10, &body)
}

/// An MQTT 3.1.1 QoS 0 PUBLISH.
pub fn publish_v4(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    tributary_wire::packet(0x30, &body)
}

/// A Kafka of the test's own, on its own port, that the test may stop and
/// restart (`scripts/kafka-local` with `KAFKA_PORT`). Stopped when dropped.
pub struct OwnKafka {
    port: u16,
}

impl OwnKafka {
    pub fn start(port: u16) -> OwnKafka {
        let kafka = OwnKafka { port };
        kafka.run("start");
        kafka
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&self) {
        self.run("stop");
    }

    pub fn restart(&self) {
        self.run("start");
    }

    fn run(&self, command: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka-local");
        let output = std::process::Command::new(script)
            .arg(command)
            .env("KAFKA_PORT", self.port.to_string())
            .output()
            .expect("running scripts/kafka-local");
        assert!(
            output.status.success(),
            "scripts/kafka-local {command} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka-local");
        let _ = std::process::Command::new(script)
            .arg("stop")
            .env("KAFKA_PORT", self.port.to_string())
            .output();
    }
}

/// A `mosquitto_sub` process (Debian mosquitto-clients) against `port`, started
/// with `args` and returned once its SUBACK arrived, with a task collecting
/// the rest of its output lines.
pub async fn mosquitto_sub(
    port: u16,
    args: &[&str],
) -> (tokio::process::Child, tokio::task::JoinHandle<Vec<String>>) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    // Line-buffered (stdbuf), so its debug lines arrive as they happen.
    let mut child = tokio::process::Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
        ])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is installed (apt-get install mosquitto-clients)");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let suback = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("SUBACK") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(suback, Ok(true), "mosquitto_sub got no SUBACK");
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });
    (child, rest)
}

/// A Tributary process of the test's own (the built binary, without the
/// operator's `TRIBUTARY__` overrides), its log read line by line as it runs.
/// Killed (SIGKILL: no goodbye, no flush) when dropped.
pub struct Process {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Process {
    pub fn start(config: &std::path::Path) -> Process {
        use std::io::BufRead;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TRIBUTARY__") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Process { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal` (`"HUP"`, `"TERM"`, …) with kill(1): only the
    /// process this test started, by its PID.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// How it ended, if it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The log's lines up to and including the first for which `done` is
    /// true; panics with what was read if none comes within `timeout`.
    pub fn wait_for(&self, timeout: Duration, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut read = Vec::new();
        while Instant::now() < deadline {
            let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let found = done(&line);
            read.push(line);
            if found {
                return read;
            }
        }
        panic!("not in the log within {timeout:?}:\n{}", read.join("\n"));
    }

    /// The MQTT and HTTP addresses it says it listens on.
    pub fn addrs(&self) -> (SocketAddr, SocketAddr) {
        let addr_of =
            |line: &str| -> Option<SocketAddr> { line.split("addr=").nth(1)?.trim().parse().ok() };
        let (mut mqtt, mut http) = (None, None);
        self.wait_for(Duration::from_secs(30), |line| {
            if line.contains("listener=\"mqtt\"") {
                mqtt = mqtt.or(addr_of(line));
            } else if line.contains("listener=\"http\"") {
                http = http.or(addr_of(line));
            }
            mqtt.is_some() && http.is_some()
        });
        (mqtt.unwrap(), http.unwrap())
    }

    /// The MQTT address it says it listens on.
    pub fn mqtt_addr(&self) -> SocketAddr {
        let lines = self.wait_for(Duration::from_secs(30), |line| {
            line.contains("listener=\"mqtt\"") && line.contains("addr=")
        });
        let line = lines.last().map(String::as_str).unwrap_or_default();
        line.split("addr=")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
