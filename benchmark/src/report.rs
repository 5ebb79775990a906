//! One run's figures: throughput, latency percentiles, failures.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Option<Percentiles> {
        (!histogram.is_empty()).then(|| Percentiles {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        })
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Records `latency` in a histogram built by [`latency_histogram`].
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, 60_000_000));
}

/// The outcome of one load run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// Messages completed: acknowledged at QoS 1/2 (or by Kafka), sent at QoS 0.
    pub messages: u64,
    /// Messages refused (MQTT 5 failure reason codes, Kafka errors).
    pub failures: u64,
    /// Connections lost during the run.
    pub disconnects: u64,
    pub payload_size: usize,
    pub elapsed_secs: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    /// Publish → acknowledgement (or send → Kafka delivery report) latency.
    pub latency_us: Option<Percentiles>,
}

impl RunResult {
    pub fn new(
        messages: u64,
        failures: u64,
        disconnects: u64,
        payload_size: usize,
        elapsed: Duration,
        latency: &Histogram<u64>,
    ) -> RunResult {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let msgs_per_sec = messages as f64 / secs;
        RunResult {
            messages,
            failures,
            disconnects,
            payload_size,
            elapsed_secs: secs,
            msgs_per_sec,
            mb_per_sec: msgs_per_sec * payload_size as f64 / 1_000_000.0,
            latency_us: Percentiles::of(latency),
        }
    }

    /// Human summary lines.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} messages in {:.2} s: {:.0} msg/s, {:.2} MB/s; {} failures, {} disconnects",
            self.messages,
            self.elapsed_secs,
            self.msgs_per_sec,
            self.mb_per_sec,
            self.failures,
            self.disconnects
        );
        if let Some(p) = self.latency_us {
            out.push_str(&format!(
                "\nlatency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                p.p50 as f64 / 1000.0,
                p.p90 as f64 / 1000.0,
                p.p99 as f64 / 1000.0,
                p.p999 as f64 / 1000.0,
                p.max as f64 / 1000.0
            ));
        }
        out
    }
}

/// Prints a load run's summary, writes its result and manifest where asked, and
/// turns failures into the exit status (shared by `publish` and `direct`).
pub fn finish(
    result: &RunResult,
    manifest: &crate::manifest::Manifest,
    json_out: Option<&PathBuf>,
    manifest_out: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    println!("{}", result.summary());
    if let Some(path) = json_out {
        std::fs::write(path, serde_json::to_vec_pretty(result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = manifest_out {
        manifest
            .write(path)
            .with_context(|| format!("writing manifest {}", path.display()))?;
    }
    Ok(if result.failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
