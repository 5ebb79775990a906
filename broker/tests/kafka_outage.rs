//! What an operator sees of a Kafka outage, on the real binary: `/readyz` turns
//! 503 within moments of Kafka going away and 200 once it is back, and the log
//! says so once each way instead of repeating librdkafka's complaints.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::OwnKafka;

/// This test's own Kafka, which it stops and restarts (kafka_down.rs has 19392).
const KAFKA_PORT: u16 = 19394;

/// Set in the config; must never show in the log.
const SECRET: &str = "never-log-this-password";

/// A `tributary` process whose log (stderr) is collected line by line.
struct Tributary {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    config_dir: PathBuf,
}

impl Tributary {
    fn start(config: &str) -> Tributary {
        let config_dir =
            std::env::temp_dir().join(format!("tributary-outage-{}", std::process::id()));
        std::fs::create_dir_all(&config_dir).unwrap();
        let path = config_dir.join("tributary.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Tributary {
            child,
            log,
            config_dir,
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Log lines from the `from`th on that contain `text`.
    fn lines_with(&self, text: &str, from: usize) -> Vec<String> {
        self.log()
            .into_iter()
            .skip(from)
            .filter(|line| line.contains(text))
            .collect()
    }

    /// The HTTP address it logged when it bound port 0.
    fn http_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.log().iter().find_map(|line| {
                let (_, rest) = line.split_once("protocol=\"http\" addr=")?;
                rest.split_whitespace().next()?.parse().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no HTTP listener logged:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tributary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}

/// Polls `/readyz` until it answers `status`; returns how long that took and
/// the body.
async fn readyz_becomes(http: SocketAddr, status: u16, within: Duration) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let (got, body) = common::http_get(http, "/readyz").await;
        if got == status {
            return (started.elapsed(), body);
        }
        assert!(
            started.elapsed() < within,
            "/readyz still {got} after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_the_log_follow_a_kafka_outage() {
    let kafka = OwnKafka::start(KAFKA_PORT);
    let tributary = Tributary::start(&format!(
        r##"
[mqtt]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[kafka]
bootstrap_servers = "{bootstrap}"
metadata_probe_interval_ms = 1000
metadata_max_age_ms = 10000
[kafka.properties]
"sasl.username" = "gateway"
"sasl.password" = "{SECRET}"
[[routes]]
name = "telemetry"
mqtt_filters = ["sensors/#"]
kafka_topic = "sensors"
"##,
        bootstrap = kafka.bootstrap(),
    ));
    let http = tributary.http_addr();
    readyz_becomes(http, 200, Duration::from_secs(30)).await;

    let before_outage = tributary.log().len();
    kafka.stop();
    // Long before a metadata fetch could be called stale (10 s here).
    let (took, body) = readyz_becomes(http, 503, Duration::from_secs(3)).await;
    assert!(
        body.contains("Kafka unreachable (all brokers down)"),
        "{body}"
    );
    println!("/readyz 503 {took:?} after Kafka stopped");

    // librdkafka retries many times a second; the log stays readable.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during_outage = tributary.log()[before_outage..].to_vec();
    println!("log during the outage:\n{}", during_outage.join("\n"));
    assert!(
        during_outage.len() <= 10,
        "{} lines in 5 s of outage:\n{}",
        during_outage.len(),
        during_outage.join("\n")
    );
    assert!(
        !during_outage
            .iter()
            .any(|line| line.contains("Kafka client error") && line.contains("AllBrokersDown")),
        "all brokers down is told by \"Kafka unreachable\" alone"
    );

    kafka.restart();
    readyz_becomes(http, 200, Duration::from_secs(60)).await;
    let again = tributary.lines_with("Kafka reachable again", before_outage);
    assert_eq!(again.len(), 1, "{}", tributary.log().join("\n"));
    assert!(again[0].contains("down_for="), "{}", again[0]);
    assert_eq!(
        tributary
            .lines_with("Kafka unreachable", before_outage)
            .len(),
        1,
        "one line for the outage:\n{}",
        tributary.log().join("\n")
    );
    let log = tributary.log().join("\n");
    assert!(!log.contains(SECRET), "a secret in the log:\n{log}");
    assert!(!log.contains('\x1b'), "colour codes in a piped log");
}
