//! `direct`: the MQTT publisher's load produced straight to Kafka, with the
//! producer settings Tributary uses: the ceiling Tributary is measured against.
//!
//! It only produces stamped records and times their delivery reports; it never
//! talks MQTT and never counts a record as delivered without Kafka's report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::manifest::{ConnectionAccount, Manifest};
use crate::payload::{Stamp, HEADER_LEN};
use crate::progress::Progress;
use crate::report::{self, RunResult};

/// First wait when librdkafka's local queue is full and nothing of ours is in
/// flight to wait on instead; doubles up to [`QUEUE_FULL_MAX_BACKOFF`].
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);
const QUEUE_FULL_MAX_BACKOFF: Duration = Duration::from_millis(100);
/// The warm-up record's payload: no stamp, so no run counts it.
const WARM_UP_PAYLOAD: &[u8] = b"tributary-bench direct warm-up";
/// How long to wait for Kafka's metadata (and the warm-up) before starting.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, clap::Args)]
pub struct DirectArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to produce to.
    #[arg(long, default_value = "bench-direct")]
    pub topic: String,
    /// Concurrent streams (the MQTT publisher's connections).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Records outstanding per stream.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub inflight: u32,
    /// Payload bytes per record (at least the stamp header).
    #[arg(long, default_value_t = 64)]
    pub payload_size: usize,
    /// Records in total, split evenly over the streams.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Run for this long instead of a fixed number of records.
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Run id stamped into every payload (default: from the current time).
    #[arg(long)]
    pub run_id: Option<u64>,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Write the manifest (for `verify`) here.
    #[arg(long)]
    pub manifest_out: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

/// When a stream stops starting new records.
#[derive(Debug, Clone, Copy)]
enum Quota {
    Messages(u64),
    Until(Instant),
}

impl Quota {
    fn allows(self, seq: u64) -> bool {
        match self {
            Quota::Messages(n) => seq < n,
            Quota::Until(deadline) => Instant::now() < deadline,
        }
    }
}

/// One stream's outcome.
struct StreamOutcome {
    delivered: u64,
    failures: u64,
    account: ConnectionAccount,
    latency: Histogram<u64>,
    first_send: Option<Instant>,
    last_report: Option<Instant>,
}

/// Runs the load and returns its figures and the manifest of what Kafka took.
pub async fn run(args: &DirectArgs) -> anyhow::Result<(RunResult, Manifest)> {
    let duration = match args.duration_secs {
        Some(secs) => match Duration::try_from_secs_f64(secs) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            _ => bail!("--duration-secs must be a positive number of seconds, not {secs}"),
        },
        None if args.messages == 0 => {
            bail!("--messages must be at least 1 (or give --duration-secs)")
        }
        None => None,
    };
    let run_id = args.run_id.unwrap_or_else(run_id_from_clock);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("client.id", "tributary-bench-direct")
        // As Tributary's producer (bridge KafkaConfig defaults).
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "65536")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the Kafka producer")?;
    // Fail fast on an unreachable Kafka or a topic that cannot exist, and keep
    // topic creation (auto-create) and leader lookup out of the measurement.
    {
        let (producer, topic) = (producer.clone(), args.topic.clone());
        tokio::task::spawn_blocking(move || wait_for_topic(&producer, &topic))
            .await
            .context("the metadata thread failed")?
            .with_context(|| format!("Kafka at {}", args.bootstrap))?;
    }
    warm_up(&producer, &args.topic).await?;

    let streams = u64::from(args.connections);
    let total = if duration.is_some() { 0 } else { args.messages };
    let deadline = match duration {
        Some(duration) => Some(
            Instant::now()
                .checked_add(duration)
                .context("--duration-secs is too large")?,
        ),
        None => None,
    };
    let progress = Progress::start("direct", total, args.quiet);
    let topic: Arc<str> = args.topic.as_str().into();
    let mut tasks = Vec::new();
    for stream in 0..args.connections {
        let quota = match deadline {
            Some(deadline) => Quota::Until(deadline),
            // Even split; the first `messages % streams` streams take one more.
            None => Quota::Messages(
                args.messages / streams + u64::from(u64::from(stream) < args.messages % streams),
            ),
        };
        let stream_run = StreamRun {
            producer: producer.clone(),
            topic: topic.clone(),
            stamp: Stamp {
                run_id,
                connection: stream,
                seq: 0,
            },
            quota,
            inflight: args.inflight as usize,
            payload_size: args.payload_size,
            progress: progress.clone(),
        };
        tasks.push(tokio::spawn(stream_run.run()));
    }

    let mut latency = report::latency_histogram();
    let (mut delivered, mut failures) = (0, 0);
    let (mut first_send, mut last_report) = (None::<Instant>, None::<Instant>);
    let mut manifest = Manifest {
        run_id,
        qos: 1,
        ..Manifest::default()
    };
    for (stream, task) in (0u32..).zip(tasks) {
        let outcome = task.await.context("a producing task failed")?;
        delivered += outcome.delivered;
        failures += outcome.failures;
        latency
            .add(&outcome.latency)
            .context("merging latency histograms")?;
        first_send = first_send.into_iter().chain(outcome.first_send).min();
        last_report = last_report.into_iter().chain(outcome.last_report).max();
        manifest.connections.insert(stream, outcome.account);
    }
    progress.finish();
    let elapsed = match (first_send, last_report) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    // Report the bytes actually sent: payloads never shrink below the stamp.
    let payload_size = args.payload_size.max(HEADER_LEN);
    let result = RunResult::new(delivered, failures, 0, payload_size, elapsed, &latency);
    Ok((result, manifest))
}

/// One stream: keeps up to `inflight` records outstanding until its quota ends.
struct StreamRun {
    producer: FutureProducer,
    topic: Arc<str>,
    /// Run id and stream; `seq` is the next record's.
    stamp: Stamp,
    quota: Quota,
    inflight: usize,
    payload_size: usize,
    progress: Progress,
}

impl StreamRun {
    async fn run(mut self) -> StreamOutcome {
        let key = format!("direct-{}", self.stamp.connection);
        let mut pending = FuturesUnordered::new();
        let mut outcome = StreamOutcome {
            delivered: 0,
            failures: 0,
            account: ConnectionAccount::default(),
            latency: report::latency_histogram(),
            first_send: None,
            last_report: None,
        };
        let mut backoff = QUEUE_FULL_BACKOFF;
        loop {
            let mut queue_full = false;
            while pending.len() < self.inflight && self.quota.allows(self.stamp.seq) {
                let seq = self.stamp.seq;
                let payload = self.stamp.payload(self.payload_size);
                let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
                let sent_at = Instant::now();
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        outcome.first_send.get_or_insert(sent_at);
                        pending.push(async move { (seq, sent_at, delivery.await) });
                        backoff = QUEUE_FULL_BACKOFF;
                    }
                    // Local queue full: not a failure, wait and send it again.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        queue_full = true;
                        break;
                    }
                    // Refused outright (say, too large): it will never be in Kafka.
                    Err((err, _)) => {
                        if outcome.failures == 0 {
                            eprintln!(
                                "direct: stream {}: seq {seq} not queued: {err}",
                                self.stamp.connection
                            );
                        }
                        outcome.failures += 1;
                        outcome.account.unacked.push(seq);
                        self.progress.add(1);
                    }
                }
                self.stamp.seq += 1;
            }
            if pending.is_empty() {
                if !queue_full {
                    break; // Quota done and everything reported.
                }
                // Nothing of ours to wait for (other streams fill the queue).
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(QUEUE_FULL_MAX_BACKOFF);
                continue;
            }
            // A report frees a slot (and room in librdkafka's queue).
            if let Some((seq, sent_at, report)) = pending.next().await {
                let now = Instant::now();
                outcome.last_report = Some(now);
                match report {
                    Ok(Ok(_)) => {
                        outcome.delivered += 1;
                        report::record(&mut outcome.latency, now - sent_at);
                    }
                    Ok(Err((err, _))) => {
                        if outcome.failures == 0 {
                            eprintln!(
                                "direct: stream {}: delivery failed: {err}",
                                self.stamp.connection
                            );
                        }
                        outcome.failures += 1;
                        outcome.account.unacked.push(seq);
                    }
                    // The producer dropped the record without a report.
                    Err(_canceled) => {
                        outcome.failures += 1;
                        outcome.account.unacked.push(seq);
                    }
                }
                self.progress.add(1);
            }
        }
        outcome.account.sent = self.stamp.seq;
        outcome.account.unacked.sort_unstable();
        outcome
    }
}

/// Blocks until `topic` has partitions that all have a leader, asking Kafka
/// again while it is being auto-created, for at most [`METADATA_TIMEOUT`].
fn wait_for_topic(producer: &FutureProducer, topic: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + METADATA_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), left)
            .context("fetching metadata (is Kafka running?)")?;
        let problem = match metadata.topics().iter().find(|t| t.name() == topic) {
            None => "no metadata for it".to_owned(),
            Some(found) => match found.error() {
                Some(err) => RDKafkaErrorCode::from(err).to_string(),
                None if found.partitions().is_empty() => "no partitions".to_owned(),
                None if found.partitions().iter().any(|p| p.leader() < 0) => {
                    "a partition without a leader".to_owned()
                }
                None => return Ok(()),
            },
        };
        if Instant::now() >= deadline {
            bail!(
                "topic {topic} not ready after {} s: {problem}",
                METADATA_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one unstamped record (which `verify` ignores) and waits for its
/// report. A fresh idempotent producer holds its first records until it has a
/// producer id, ~500 ms here; Tributary's long-lived producer never pays that
/// during a run, so the ceiling must not either.
async fn warm_up(producer: &FutureProducer, topic: &str) -> anyhow::Result<()> {
    let record = FutureRecord::to(topic)
        .key("direct-warm-up")
        .payload(WARM_UP_PAYLOAD);
    match producer.send(record, METADATA_TIMEOUT).await {
        Ok(_) => Ok(()),
        Err((err, _)) => bail!("the warm-up record to {topic} was not delivered: {err}"),
    }
}

/// A run id unlikely to repeat: nanoseconds since the Unix epoch.
fn run_id_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

pub async fn main(args: DirectArgs) -> anyhow::Result<ExitCode> {
    let (result, manifest) = run(&args).await?;
    println!(
        "direct: run {} to {} ({} streams, {} in flight each)",
        manifest.run_id, args.topic, args.connections, args.inflight
    );
    report::finish(
        &result,
        &manifest,
        args.json_out.as_ref(),
        args.manifest_out.as_ref(),
    )
}
