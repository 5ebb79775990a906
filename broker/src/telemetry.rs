//! Process-wide logging and the Prometheus recorder.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Histogram buckets for every `*_seconds` metric: 100 µs to 60 s, dense where
/// Kafka acknowledgements usually land (1–50 ms).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How often histogram samples are folded into their buckets. Until then each
/// sample is kept as it was recorded (8 bytes; several per message), so this
/// bounds what they hold whether or not anything scrapes `/metrics`.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Installs the `tracing` subscriber (human or JSON lines on stderr).
pub fn init_tracing(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes help a person at a terminal and litter a file or a log
    // collector with escape sequences.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // The embedded router opens an error-level span for every message it
    // routes, formatting the topic into it each time (a few per cent of the
    // CPU per message at load). Its log lines are kept; its spans are not
    // created at all.
    let no_router_spans = tracing_subscriber::filter::filter_fn(|metadata| {
        !(metadata.is_span() && metadata.target().starts_with("rumqttd"))
    });
    let _ = match log.format {
        LogFormat::Human => builder.finish().with(no_router_spans).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(no_router_spans)
            .try_init(),
    };
}

/// The process's Prometheus recorder, installed on first use, with every
/// metric described and the known series registered. One per process: tests
/// that start several servers share it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            let upkeep = handle.clone();
            // Another recorder may already be installed (an embedding program);
            // then our handle renders nothing, which /metrics shows plainly.
            let _ = metrics::set_global_recorder(recorder);
            // Every metric has its # HELP line, and the series users alert
            // on are there, at 0, before anything happens; so are the
            // process's own (`process_resident_memory_bytes`, CPU seconds,
            // open files, threads, read from /proc).
            crate::events::describe();
            let process = metrics_process::Collector::default();
            process.describe();
            process.collect();
            crate::events::register();
            // A thread of its own: the recorder outlives any one runtime
            // (tests start several), and the work is a few µs a second.
            let started = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    process.collect();
                    upkeep.run_upkeep();
                });
            if let Err(error) = started {
                tracing::error!(%error, "cannot start the metrics upkeep thread; histogram samples are folded only when /metrics is scraped");
            }
            handle
        })
        .clone()
}
