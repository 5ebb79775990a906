//! The link fuzz target: no bytes a device sends may crash or hang its
//! connection task. Each input is what devices send on one connection (or a
//! few at once under one client id), generated from (seed, index) and served
//! in process by the real server, with a real Kafka behind its `fuzz/#` route.
//!
//! Environment:
//! - `FUZZ_INPUTS`: how many inputs (default 20,000, and then at most
//!   `FUZZ_SECONDS`, default 30 s: the short run of `cargo test`);
//! - `FUZZ_SECONDS`: a time limit (none by default when `FUZZ_INPUTS` is set);
//! - `FUZZ_SEED` (decimal or 0x-hex) and `FUZZ_FIRST` (first index): which
//!   inputs; `FUZZ_CONCURRENCY`: inputs in flight at once (default 8);
//! - `FUZZ_OUT`: where crashing and hanging inputs are saved;
//! - `FUZZ_SAVE_ALL=1`: save every input there too (to find what a finding
//!   depends on: sessions and retained messages outlive their inputs);
//! - `FUZZ_SKIP_KNOWN=1`: skip inputs that would hit a bug already reported
//!   (see `fuzz_link/known.rs`), to look for new ones;
//! - `FUZZ_LOG`: a tracing filter for the server's log on stderr (e.g.
//!   `rumqttd=error`, to see what the router said before a finding);
//! - `FUZZ_FRESH_EVERY`: start a new server after this many inputs (default
//!   100,000). The router keeps every distinct filter and every matched topic
//!   it has seen, and matches each new one against all the others; a run of
//!   millions of random filters and topics makes that slow enough to look like
//!   a hang past a few hundred thousand inputs.
//!
//! A panic in the router's thread stops all routing: the run reports it and
//! goes on with a new server.
//!
//! `scripts/dev/fuzz-link` runs the long run; the ignored test
//! `minimize_a_case` (with `FUZZ_CASE=path`, and `FUZZ_SETUP=path,...` for
//! connections to serve before it each time) shrinks a saved input.

mod common;

#[path = "fuzz_link/device.rs"]
mod device;
#[path = "fuzz_link/generate.rs"]
mod generate;
#[path = "fuzz_link/known.rs"]
mod known;
#[path = "fuzz_link/minimize.rs"]
mod minimize;
#[path = "fuzz_link/mutate.rs"]
mod mutate;
#[path = "fuzz_link/panics.rs"]
mod panics;
#[path = "fuzz_link/rng.rs"]
mod rng;
#[path = "fuzz_link/wire5.rs"]
mod wire5;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tributary::Server;
use tributary_bridge::testing::{create_topic, require_kafka, unique_topic};

use device::Outcome;
use panics::PanicRecord;

const DEFAULT_SEED: u64 = 0x7e1b_0a2f_f022_2e09;
const DEFAULT_INPUTS: u64 = 20_000;
const DEFAULT_SECONDS: u64 = 30;
const DEFAULT_CONCURRENCY: usize = 8;
const DEFAULT_FRESH_EVERY: u64 = 100_000;
/// The route whose Kafka path half the generated topics take.
const ROUTE_FILTER: &str = "fuzz/#";
/// Small, so generated packets cross it.
const MAX_PACKET_SIZE: usize = 4096;
/// Small, so bursts cross it (MQTT 5) and fill the window (3.1.1).
const RECEIVE_MAXIMUM: u16 = 20;
/// Inputs saved per finding (the same bug is usually found many times).
const SAVED_PER_FINDING: usize = 5;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_bytes_crash_or_hang_a_connection() {
    panics::install();
    if let Ok(filter) = std::env::var("FUZZ_LOG") {
        // e.g. FUZZ_LOG=rumqttd=error: what the router said before a finding.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let settings = Settings::from_env();
    let mut server = Arc::new(fuzz_server().await);

    let report = fuzz(&mut server, &settings).await;
    report.print(&settings);
    print_close_reasons(&server).await;

    // The server still serves a well-behaved device.
    let answer = device::answer(
        &server,
        &[common::connect_v4("after-fuzz"), vec![0xc0, 0x00]].concat(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
    )
    .await;
    assert_eq!(answer, [0x20, 2, 0, 0, 0xd0, 0], "CONNACK and PINGRESP");

    let first: Vec<String> = report
        .findings
        .iter()
        .take(10)
        .map(|f| format!("input {} connection {}: {}", f.index, f.connection, f.place))
        .collect();
    assert!(
        report.findings.is_empty(),
        "{} panics and {} hangs (inputs saved in {}), first:\n{}",
        report.panics,
        report.hangs,
        settings.out.display(),
        first.join("\n")
    );
    if let Ok(server) = Arc::try_unwrap(server) {
        server.shutdown().await;
    }
}

/// Shrinks the input saved at `FUZZ_CASE` to the fewest bytes that still panic
/// at the same place, and prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a tool: FUZZ_CASE=path cargo test --test fuzz_link -- --ignored minimize"]
async fn minimize_a_case() {
    panics::install();
    let path = std::env::var("FUZZ_CASE").expect("FUZZ_CASE=path of a saved input");
    let bytes = std::fs::read(&path).expect("reading FUZZ_CASE");
    let setup: Vec<Vec<u8>> = std::env::var("FUZZ_SETUP")
        .map(|paths| {
            paths
                .split(',')
                .map(|p| std::fs::read(p).expect("reading FUZZ_SETUP"))
                .collect()
        })
        .unwrap_or_default();
    let minimal = minimize::minimize(&setup, bytes).await;
    std::fs::write(format!("{path}.min"), &minimal).unwrap();
    println!("minimal ({} bytes): {}", minimal.len(), hex(&minimal));
}

/// Serves the input saved at `FUZZ_CASE` `FUZZ_REPEAT` times (default 1), one
/// after the other on one server, and says where each panicked, if it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a tool: FUZZ_CASE=path cargo test --test fuzz_link -- --ignored replay"]
async fn replay_a_case() {
    panics::install();
    let path = std::env::var("FUZZ_CASE").expect("FUZZ_CASE=path of a saved input");
    let bytes = std::fs::read(&path).expect("reading FUZZ_CASE");
    let repeat = std::env::var("FUZZ_REPEAT").map_or(1, |n| n.parse().expect("FUZZ_REPEAT"));
    let mut server = Arc::new(fuzz_server().await);
    for i in 0..repeat {
        let chunks = vec![generate::Chunk {
            bytes: bytes.clone(),
            pause_ms: 0,
        }];
        let outcome = device::run(server.clone(), chunks, peer(i, 0), device::HANG_AFTER).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let elsewhere = panics::take_all();
        println!("replay {i}: {outcome:?}; elsewhere: {elsewhere:?}");
        if panics::take_router_died() {
            server = Arc::new(fuzz_server().await);
        }
    }
}

/// Tributary as the fuzz target sees it: one Kafka route, small limits.
pub async fn fuzz_server() -> Server {
    static TOPIC: tokio::sync::OnceCell<(String, String)> = tokio::sync::OnceCell::const_new();
    let (bootstrap, topic) = TOPIC
        .get_or_init(|| async {
            let bootstrap = require_kafka();
            let topic = unique_topic("tributary-fuzz");
            create_topic(&bootstrap, &topic, 1).await;
            (bootstrap, topic)
        })
        .await;
    common::start(bootstrap, &[(ROUTE_FILTER, topic)], |config| {
        config.mqtt.max_packet_size = MAX_PACKET_SIZE;
        config.mqtt.receive_maximum = RECEIVE_MAXIMUM;
    })
    .await
}

struct Settings {
    seed: u64,
    first: u64,
    inputs: u64,
    time_limit: Option<Duration>,
    concurrency: usize,
    out: PathBuf,
    skip_known: bool,
    save_all: bool,
    fresh_every: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str| {
            std::env::var(name).ok().map(|value| {
                let value = value.replace('_', "");
                match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => value.parse(),
                }
                .unwrap_or_else(|_| panic!("{name}={value} is not a number"))
            })
        };
        let inputs = number("FUZZ_INPUTS");
        let seconds = number("FUZZ_SECONDS").or(match inputs {
            Some(_) => None,
            None => Some(DEFAULT_SECONDS),
        });
        Settings {
            seed: number("FUZZ_SEED").unwrap_or(DEFAULT_SEED),
            first: number("FUZZ_FIRST").unwrap_or(0),
            inputs: inputs.unwrap_or(DEFAULT_INPUTS),
            time_limit: seconds.map(Duration::from_secs),
            concurrency: number("FUZZ_CONCURRENCY").map_or(DEFAULT_CONCURRENCY, |n| n as usize),
            out: std::env::var_os("FUZZ_OUT").map_or_else(
                || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-link"),
                PathBuf::from,
            ),
            skip_known: std::env::var("FUZZ_SKIP_KNOWN").is_ok_and(|v| v == "1"),
            save_all: std::env::var("FUZZ_SAVE_ALL").is_ok_and(|v| v == "1"),
            fresh_every: number("FUZZ_FRESH_EVERY")
                .unwrap_or(DEFAULT_FRESH_EVERY)
                .max(1),
        }
    }
}

/// A panic or a hang, and the input that caused it.
struct Finding {
    index: u64,
    connection: usize,
    /// The panic's location, or "hang".
    place: String,
}

#[derive(Default)]
struct Report {
    inputs: u64,
    connections: u64,
    bytes: u64,
    panics: u64,
    hangs: u64,
    /// Inputs not run: they would hit this known bug.
    skipped: HashMap<&'static str, u64>,
    /// Servers started again after their router died.
    restarts: u64,
    /// Servers started again after `fresh_every` inputs.
    fresh: u64,
    elapsed: Duration,
    findings: Vec<Finding>,
    /// Findings per place, for the summary.
    places: HashMap<String, u64>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn print(&self, settings: &Settings) {
        println!(
            "fuzz-link: seed {:#x}, inputs {}..{}: {} inputs, {} connections, {} bytes in {:.1} s \
             ({:.0} inputs/s); {} panics, {} hangs",
            settings.seed,
            settings.first,
            settings.first + self.inputs,
            self.inputs,
            self.connections,
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.panics,
            self.hangs,
        );
        for (place, count) in &self.places {
            println!("fuzz-link: {count} x {place}");
        }
        for (known, count) in &self.skipped {
            println!("fuzz-link: skipped {count} inputs (known bug: {known})");
        }
        if self.restarts > 0 {
            println!("fuzz-link: the router died {} times", self.restarts);
        }
        if self.fresh > 0 {
            println!(
                "fuzz-link: a fresh server every {} inputs ({} started)",
                settings.fresh_every, self.fresh
            );
        }
    }
}

/// Runs the inputs `settings` asks for, `concurrency` at a time.
async fn fuzz(server: &mut Arc<Server>, settings: &Settings) -> Report {
    std::fs::create_dir_all(&settings.out).expect("creating FUZZ_OUT");
    let started = Instant::now();
    let mut report = Report::default();
    let mut running = JoinSet::new();
    let mut next = settings.first;
    let mut fresh_at = next.saturating_add(settings.fresh_every);
    let end = settings.first.saturating_add(settings.inputs);
    let mut last_progress = Instant::now();
    loop {
        let out_of_time = settings
            .time_limit
            .is_some_and(|limit| started.elapsed() >= limit);
        while running.len() < settings.concurrency && next < end && !out_of_time {
            let input = generate::input(settings.seed, next);
            next += 1;
            if settings.save_all {
                save(settings, "input", &input);
            }
            if settings.skip_known {
                let known = input
                    .connections
                    .iter()
                    .find_map(|c| known::hit_by(&c.bytes()));
                if let Some(known) = known {
                    *report.skipped.entry(known.name).or_default() += 1;
                    continue;
                }
            }
            running.spawn(run_input(server.clone(), input));
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        record(&mut report, settings, done.expect("the harness's own task"));
        if panics::take_router_died() {
            // Nothing is routed any more: finish what runs, then start over.
            while let Some(done) = running.join_next().await {
                record(&mut report, settings, done.expect("the harness's own task"));
            }
            eprintln!("fuzz-link: the router died; starting a new server");
            report.restarts += 1;
            replace_server(server).await;
        } else if next >= fresh_at && next < end {
            while let Some(done) = running.join_next().await {
                record(&mut report, settings, done.expect("the harness's own task"));
            }
            fresh_at = next.saturating_add(settings.fresh_every);
            report.fresh += 1;
            replace_server(server).await;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            report.elapsed = started.elapsed();
            eprintln!(
                "fuzz-link: {} inputs ({:.0}/s), {} connections, {} panics, {} hangs, next index {}",
                report.inputs,
                report.rate(),
                report.connections,
                report.panics,
                report.hangs,
                next
            );
        }
    }
    report.elapsed = started.elapsed();
    // Panics no connection task claimed (a task the link spawned, the router).
    for record in panics::take_all() {
        report.panics += 1;
        println!(
            "fuzz-link: PANIC outside a connection task (thread {}), inputs in flight {:?}: {} at {}",
            record.thread, record.in_flight, record.message, record.location
        );
        if let Some(backtrace) = &record.backtrace {
            println!("{backtrace}");
        }
        report.findings.push(Finding {
            index: record.in_flight.first().copied().unwrap_or(u64::MAX),
            connection: 0,
            place: record.location.clone(),
        });
        *report.places.entry(record.location).or_default() += 1;
    }
    report
}

/// Shuts the server down (its tasks end and its memory is returned; a
/// dropped `Server` would keep running) and starts a new one.
async fn replace_server(server: &mut Arc<Server>) {
    let old = std::mem::replace(server, Arc::new(fuzz_server().await));
    match Arc::try_unwrap(old) {
        Ok(old) => old.shutdown().await,
        Err(_) => eprintln!("fuzz-link: the old server is still in use; it keeps running"),
    }
}

/// Adds how an input's connections ended to the report.
fn record(report: &mut Report, settings: &Settings, done: (generate::Input, Vec<Outcome>)) {
    let (input, outcomes) = done;
    report.inputs += 1;
    for (connection, outcome) in outcomes.into_iter().enumerate() {
        report.connections += 1;
        report.bytes += input.connections[connection].bytes().len() as u64;
        match outcome {
            Outcome::Closed => {}
            Outcome::Panicked(records) => {
                report.panics += 1;
                let place = records
                    .first()
                    .map_or("(no record)".into(), |r| r.location.clone());
                found(report, settings, &input, connection, place, &records);
            }
            Outcome::Hung => {
                report.hangs += 1;
                found(report, settings, &input, connection, "hang".into(), &[]);
            }
        }
    }
}

/// Runs an input's connections at once; how each ended.
async fn run_input(server: Arc<Server>, input: generate::Input) -> (generate::Input, Vec<Outcome>) {
    panics::started(input.index);
    let runs: Vec<_> = input
        .connections
        .iter()
        .enumerate()
        .map(|(i, connection)| {
            let chunks = connection.chunks.clone();
            device::run(
                server.clone(),
                chunks,
                peer(input.index, i),
                device::HANG_AFTER,
            )
        })
        .collect();
    let outcomes = futures::future::join_all(runs).await;
    panics::finished(input.index);
    (input, outcomes)
}

/// A made-up loopback peer address naming the input in the server's logs.
fn peer(index: u64, connection: usize) -> SocketAddr {
    let port = 1024 + (index % 60_000) as u16;
    SocketAddr::from((Ipv4Addr::new(127, 0, connection as u8 + 1, 1), port))
}

/// Records a finding; the first few of each place are saved and printed.
fn found(
    report: &mut Report,
    settings: &Settings,
    input: &generate::Input,
    connection: usize,
    place: String,
    records: &[PanicRecord],
) {
    let seen = report.places.entry(place.clone()).or_default();
    *seen += 1;
    if *seen as usize <= SAVED_PER_FINDING {
        let kind = if place == "hang" { "hang" } else { "crash" };
        save(settings, kind, input);
        let bytes = input.connections[connection].bytes();
        println!(
            "fuzz-link: {} in input {} (seed {:#x}) connection {connection} of {}, saved in {}:\n  {}",
            kind.to_uppercase(),
            input.index,
            settings.seed,
            input.connections.len(),
            settings.out.display(),
            hex(&bytes)
        );
        for record in records {
            println!("  panicked at {}: {}", record.location, record.message);
            if let Some(backtrace) = &record.backtrace {
                println!("{backtrace}");
            }
        }
    }
    report.findings.push(Finding {
        index: input.index,
        connection,
        place,
    });
}

/// Saves each connection of `input` as `{kind}-{seed}-{index}-{connection}.bin`.
fn save(settings: &Settings, kind: &str, input: &generate::Input) {
    for (i, c) in input.connections.iter().enumerate() {
        let name = format!("{kind}-{:x}-{}-{i}.bin", settings.seed, input.index);
        std::fs::write(settings.out.join(&name), c.bytes()).expect("saving an input");
    }
}

/// How the server says the connections ended, from its own metrics.
async fn print_close_reasons(server: &Server) {
    let (_, metrics) = common::http_get(server.http_addr(), "/metrics").await;
    for line in metrics.lines().filter(|l| {
        l.starts_with("tributary_connections_closed_total")
            || l.starts_with("tributary_connections_refused_total")
            || l.starts_with("tributary_mqtt_publishes_")
    }) {
        println!("fuzz-link: {line}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
