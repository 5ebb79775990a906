//! `suite`: the fixed matrix on this machine, against a real Kafka, plus two
//! light-load latency scenarios (one connection, 1 or 10 in flight). Starts
//! Tributary (and Mosquitto for the broker-only comparison) itself, runs every
//! scenario while sampling the server's CPU time and RSS from /proc, verifies
//! every routed QoS 1/2 run in Kafka, and writes `<out>/<name>.md` and SVG
//! charts.
//!
//! It measures and reports; it never turns a missed target into a failure,
//! except that an acknowledged message missing from Kafka fails the suite.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::direct::{self, DirectArgs};
use crate::publish::{self, PublishArgs};
use crate::report::RunResult;
use crate::suite_report::{self, Row, Target};
use crate::verify;

#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// Short runs (about 2 s each): the whole matrix in a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Report name: writes `<out-dir>/<name>.md` and `<name>-*.svg`.
    #[arg(long, default_value = "latest")]
    pub name: String,
    #[arg(long, default_value = "benchmark/results")]
    pub out_dir: PathBuf,
    /// The Tributary binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/tributary")]
    pub tributary_bin: PathBuf,
    #[arg(long, default_value = "mosquitto")]
    pub mosquitto_bin: String,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// First of the loopback ports used (MQTT, HTTP, Mosquitto).
    #[arg(long, default_value_t = 21883)]
    pub base_port: u16,
    /// Only the route formats' comparison, not the matrix.
    #[arg(long)]
    pub formats_only: bool,
}

/// Route formats compared (routed QoS 1, JSON payload): label, the route's
/// settings (`{schema}` is the Avro schema file's path).
pub const FORMATS: [(&str, &str); 4] = [
    ("raw", "format = \"raw\"\n"),
    ("json_envelope", "format = \"json_envelope\"\n"),
    (
        "json_envelope (payload = json, 3 fields)",
        "format = \"json_envelope\"\n\
         envelope = { payload = \"json\", fields = [\"client_id\", \"qos\", \"timestamp\"] }\n",
    ),
    ("avro", "format = \"avro\"\navro_schema = \"{schema}\"\n"),
];
/// The formats comparison's scenario: QoS 1, a JSON stamp of this size.
pub const FORMAT_SCENARIO: Scenario = Scenario {
    qos: 1,
    payload: 128,
    connections: 16,
    inflight: MATRIX_INFLIGHT,
};

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    pub qos: u8,
    pub payload: usize,
    pub connections: u32,
    /// Unacknowledged publishes per connection.
    pub inflight: u16,
}

pub const QOS: [u8; 3] = [0, 1, 2];
pub const PAYLOADS: [usize; 2] = [64, 1024];
pub const CONNECTIONS: [u32; 3] = [1, 16, 256];
/// In flight per connection in the throughput matrix (and for `direct`).
pub const MATRIX_INFLIGHT: u16 = 64;
/// In flight on the single connection of the light-load latency scenarios:
/// what one device waiting for each PUBACK, or keeping a few outstanding, sees.
pub const LIGHT_INFLIGHT: [u16; 2] = [1, 10];

impl Scenario {
    /// QoS 1, 64 B, one connection with `inflight` outstanding.
    pub fn light(inflight: u16) -> Scenario {
        Scenario {
            qos: 1,
            payload: 64,
            connections: 1,
            inflight,
        }
    }

    pub fn is_light(&self) -> bool {
        self.inflight != MATRIX_INFLIGHT
    }
}

/// The throughput matrix, then the light-load latency scenarios.
fn scenarios() -> Vec<Scenario> {
    let mut all = Vec::new();
    for qos in QOS {
        for payload in PAYLOADS {
            for connections in CONNECTIONS {
                all.push(Scenario {
                    qos,
                    payload,
                    connections,
                    inflight: MATRIX_INFLIGHT,
                });
            }
        }
    }
    all.extend(LIGHT_INFLIGHT.map(Scenario::light));
    all
}

pub async fn main(args: SuiteArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.tributary_bin.exists(),
        "{} not found: build it with `cargo build --release -p tributary`",
        args.tributary_bin.display()
    );
    let seconds = if args.quick { 2.0 } else { 10.0 };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let scenarios = if args.formats_only {
        Vec::new()
    } else {
        scenarios()
    };
    let routed_topic = |i: usize| format!("bench-{stamp}-r{i}");
    let format_topic = |i: usize| format!("bench-{stamp}-f{i}");

    let mqtt_port = args.base_port;
    let http_port = args.base_port + 1;
    let mosquitto_port = args.base_port + 2;
    let work = std::env::temp_dir().join(format!("tributary-suite-{stamp}"));
    std::fs::create_dir_all(&work)?;
    let config = work.join("tributary.toml");
    let schema = work.join("stamp.avsc");
    std::fs::write(&schema, crate::payload::AVRO_SCHEMA)?;
    let mut text = tributary_config(
        mqtt_port,
        http_port,
        &args.bootstrap,
        scenarios.len(),
        routed_topic,
    );
    for (i, (_, settings)) in FORMATS.iter().enumerate() {
        let _ = write!(
            text,
            "[[routes]]\nname = \"f{i}\"\nmqtt_filters = [\"bench/f{i}/#\"]\n\
             kafka_topic = \"{}\"\nkey = \"client_id\"\n{}",
            format_topic(i),
            settings.replace("{schema}", &schema.display().to_string())
        );
    }
    std::fs::write(&config, text)?;
    let tributary = Server::start(
        "tributary",
        Command::new(&args.tributary_bin)
            .arg("--config")
            .arg(&config),
        mqtt_port,
    )
    .await?;
    let mosquitto_config = work.join("mosquitto.conf");
    std::fs::write(
        &mosquitto_config,
        format!("listener {mosquitto_port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n"),
    )?;
    // The formats' comparison alone needs no Mosquitto.
    let mosquitto = if args.formats_only {
        None
    } else {
        Some(
            Server::start(
                "mosquitto",
                Command::new(&args.mosquitto_bin)
                    .arg("-c")
                    .arg(&mosquitto_config),
                mosquitto_port,
            )
            .await
            .context("starting Mosquitto (apt-get install mosquitto)")?,
        )
    };

    let mut rows = Vec::new();
    let mut missing_total = 0;
    for (i, scenario) in scenarios.iter().enumerate() {
        for target in [Target::Routed, Target::Unrouted, Target::Mosquitto] {
            let (server, port, topic) = match target {
                Target::Routed => (&tributary, mqtt_port, format!("bench/r{i}/{{conn}}")),
                Target::Unrouted => (&tributary, mqtt_port, "bench/u/{conn}".to_owned()),
                Target::Mosquitto => match &mosquitto {
                    Some(mosquitto) => (mosquitto, mosquitto_port, "bench/u/{conn}".to_owned()),
                    None => continue,
                },
                Target::Direct => unreachable!(),
            };
            let publish_args = suite_publish(
                port,
                scenario,
                seconds,
                topic,
                crate::payload::PayloadFormat::Binary,
                format!("suite{i}{}", target.short()),
            );
            let sampler = server.sample();
            let (result, manifest) = publish::run(&publish_args).await?;
            let usage = sampler.stop().await;
            let mut verdict = None;
            if target == Target::Routed && scenario.qos > 0 {
                let checked = in_kafka(&args.bootstrap, routed_topic(i), manifest).await?;
                missing_total += checked.missing;
                verdict = Some(checked);
            }
            eprintln!("{}", progress_line(target, scenario, &result));
            rows.push(Row {
                target,
                scenario: *scenario,
                result,
                usage: Some(usage),
                verdict,
            });
        }
    }
    let mut format_rows = Vec::new();
    for (i, (label, _)) in FORMATS.iter().enumerate() {
        let scenario = FORMAT_SCENARIO;
        let publish_args = suite_publish(
            mqtt_port,
            &scenario,
            seconds,
            format!("bench/f{i}/{{conn}}"),
            crate::payload::PayloadFormat::Json,
            format!("suitef{i}"),
        );
        let sampler = tributary.sample();
        let (result, manifest) = publish::run(&publish_args).await?;
        let usage = sampler.stop().await;
        let checked = in_kafka(&args.bootstrap, format_topic(i), manifest).await?;
        missing_total += checked.missing;
        eprintln!(
            "{}  format {label}",
            progress_line(Target::Routed, &scenario, &result)
        );
        format_rows.push((
            *label,
            Row {
                target: Target::Routed,
                scenario,
                result,
                usage: Some(usage),
                verdict: Some(checked),
            },
        ));
    }
    for payload in PAYLOADS {
        if args.formats_only {
            break;
        }
        for connections in CONNECTIONS {
            let scenario = Scenario {
                qos: 1,
                payload,
                connections,
                inflight: MATRIX_INFLIGHT,
            };
            let direct_args = DirectArgs {
                bootstrap: args.bootstrap.clone(),
                topic: format!("bench-{stamp}-direct"),
                connections,
                inflight: u32::from(MATRIX_INFLIGHT),
                payload_size: payload,
                messages: 0,
                duration_secs: Some(seconds),
                run_id: None,
                json_out: None,
                manifest_out: None,
                quiet: true,
            };
            let (result, _) = direct::run(&direct_args).await?;
            eprintln!("{}", progress_line(Target::Direct, &scenario, &result));
            rows.push(Row {
                target: Target::Direct,
                scenario,
                result,
                usage: None,
                verdict: None,
            });
        }
    }
    tributary.stop().await;
    if let Some(mosquitto) = mosquitto {
        mosquitto.stop().await;
    }

    std::fs::create_dir_all(&args.out_dir)?;
    let mut markdown = if args.formats_only {
        format!("# Route formats: {}\n", args.name)
    } else {
        suite_report::markdown(&rows, &args.name, seconds, &machine())
    };
    markdown.push_str(&suite_report::formats_markdown(&format_rows, seconds));
    let path = args.out_dir.join(format!("{}.md", args.name));
    std::fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
    if !args.formats_only {
        suite_report::charts(&rows, &args.out_dir, &args.name)?;
    }
    println!("wrote {}", path.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(if missing_total > 0 {
        eprintln!("{missing_total} acknowledged messages are missing from Kafka");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Accounts in Kafka's `topic` for every message `manifest` says was
/// acknowledged.
async fn in_kafka(
    bootstrap: &str,
    topic: String,
    manifest: crate::manifest::Manifest,
) -> anyhow::Result<crate::verify::Verdict> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        verify::verify(&bootstrap, &[topic], &manifest, Duration::from_secs(60))
    })
    .await?
}

/// One timed run of the suite's load on `port`.
fn suite_publish(
    port: u16,
    scenario: &Scenario,
    seconds: f64,
    topic: String,
    payload_format: crate::payload::PayloadFormat,
    client_prefix: String,
) -> PublishArgs {
    PublishArgs {
        host: "127.0.0.1".into(),
        port,
        connections: scenario.connections,
        inflight: scenario.inflight,
        qos: scenario.qos,
        payload_size: scenario.payload,
        payload_format,
        messages: 0,
        duration_secs: Some(seconds),
        rate: None,
        topic,
        protocol: 4,
        run_id: None,
        client_prefix,
        json_out: None,
        manifest_out: None,
        quiet: true,
    }
}

fn progress_line(target: Target, scenario: &Scenario, result: &RunResult) -> String {
    format!(
        "{:<10} qos {} {:>4} B {:>3} conn {:>2} in flight: {:>9.0} msg/s  p99 {:>7.2} ms",
        target.label(),
        scenario.qos,
        scenario.payload,
        scenario.connections,
        scenario.inflight,
        result.msgs_per_sec,
        result.latency_us.map_or(0.0, |p| p.p99 as f64 / 1000.0)
    )
}

fn tributary_config(
    mqtt_port: u16,
    http_port: u16,
    bootstrap: &str,
    routes: usize,
    topic: impl Fn(usize) -> String,
) -> String {
    let mut config = format!(
        "[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\nmax_connections = 2000\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
         [log]\nlevel = \"warn\"\n\
         [kafka]\nbootstrap_servers = \"{bootstrap}\"\n"
    );
    for i in 0..routes {
        let _ = write!(
            config,
            "[[routes]]\nname = \"r{i}\"\nmqtt_filters = [\"bench/r{i}/#\"]\n\
             kafka_topic = \"{}\"\nkey = \"client_id\"\n",
            topic(i)
        );
    }
    config
}

/// CPU time used and peak RSS of a server during one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub wall_secs: f64,
    pub peak_rss_mb: f64,
}

/// A server process this suite started.
struct Server {
    name: &'static str,
    child: Child,
    pid: u32,
}

impl Server {
    async fn start(name: &'static str, command: &mut Command, port: u16) -> anyhow::Result<Server> {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("server pid")?;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Server { name, child, pid });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("{name} did not listen on port {port} within 10 s")
    }

    /// Starts sampling this server's CPU time and RSS.
    fn sample(&self) -> Sampler {
        let pid = self.pid;
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let cpu_before = cpu_secs(pid);
            let mut peak = rss_mb(pid);
            while flag.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                peak = peak.max(rss_mb(pid));
            }
            Usage {
                cpu_secs: cpu_secs(pid) - cpu_before,
                wall_secs: started.elapsed().as_secs_f64(),
                peak_rss_mb: peak,
            }
        });
        Sampler { running, task }
    }

    /// Ends the process this suite started (by its own handle: only ours).
    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        eprintln!("stopped {}", self.name);
    }
}

struct Sampler {
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Usage>,
}

impl Sampler {
    async fn stop(self) -> Usage {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// User + system CPU seconds of `pid` (from /proc/<pid>/stat, in clock ticks of
/// 1/100 s, the Linux default).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A line describing this machine for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cpu}, {cores} cores, {memory:.0} GiB RAM")
}
