//! `verify`: accounts in Kafka for every message a run acknowledged.
//!
//! It reads the run's topics from the beginning up to the high watermarks it
//! finds at start and compares the stamps there with the run's [`Manifest`]. It
//! only reads: it never produces, never commits offsets, and never lets a
//! timeout pass for success (whatever was not read by then counts as missing).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::payload::Stamp;
use crate::progress::Progress;

mod tally;
use tally::Tally;

/// How many missing messages a verdict names.
const MISSING_EXAMPLES: usize = 20;
/// How long one consumer poll may block, so the deadline is checked often.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Least time a metadata or watermark lookup is given.
const LOOKUP_FLOOR: Duration = Duration::from_secs(10);
/// Consumer errors printed before the rest are only counted.
const ERRORS_SHOWN: usize = 10;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topics the run's messages went to (one or more).
    #[arg(long, num_args = 1.., required = true)]
    pub topic: Vec<String>,
    /// The manifest the run wrote (`publish --manifest-out`, `direct --manifest-out`).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Give up reading after this long; whatever was not read counts as missing.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Also fail on duplicates and order violations (at-least-once allows them).
    #[arg(long)]
    pub strict: bool,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

/// What Kafka holds of one run, against what the run says was acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Verdict {
    /// Messages acknowledged according to the manifest: all must be in Kafka.
    pub expected: u64,
    /// Distinct stamps of this run found (acknowledged or not).
    pub found: u64,
    /// Acknowledged messages never seen.
    pub missing: u64,
    /// Extra copies: sightings of a (connection, seq) beyond its first.
    pub duplicates: u64,
    /// First sightings, within one partition, of a seq lower than one that
    /// connection already had there.
    pub order_violations: u64,
    /// The first missing (connection, seq) pairs, in order.
    pub missing_examples: Vec<(u32, u64)>,
}

impl Verdict {
    /// Whether the run passes: nothing acknowledged is missing and, when
    /// `strict`, nothing is duplicated or out of order either.
    pub fn passes(&self, strict: bool) -> bool {
        self.missing == 0 && (!strict || self.duplicates == 0 && self.order_violations == 0)
    }

    /// Human report lines.
    pub fn report(&self) -> String {
        let mut out = format!(
            "expected: {} acknowledged messages\nfound: {} distinct messages of this run\nmissing: {}",
            self.expected, self.found, self.missing
        );
        if !self.missing_examples.is_empty() {
            let examples: Vec<String> = self
                .missing_examples
                .iter()
                .map(|(connection, seq)| format!("{connection}/{seq}"))
                .collect();
            let more = if self.missing > self.missing_examples.len() as u64 {
                ", ..."
            } else {
                ""
            };
            out.push_str(&format!(" (connection/seq: {}{more})", examples.join(", ")));
        }
        out.push_str(&format!(
            "\nduplicates: {}\norder violations: {}",
            self.duplicates, self.order_violations
        ));
        out
    }
}

/// Reads `topics` up to their current end and accounts for `manifest`'s run.
/// Blocks (call it off the async runtime); gives up reading after `timeout`.
pub fn verify(
    bootstrap: &str,
    topics: &[String],
    manifest: &Manifest,
    timeout: Duration,
) -> anyhow::Result<Verdict> {
    verify_with_progress(bootstrap, topics, manifest, timeout, None)
}

/// [`verify`], counting each message of the run on `progress`.
fn verify_with_progress(
    bootstrap: &str,
    topics: &[String],
    manifest: &Manifest,
    timeout: Duration,
    progress: Option<&Progress>,
) -> anyhow::Result<Verdict> {
    let deadline = Instant::now()
        .checked_add(timeout)
        .context("the timeout is too large")?;
    let mut tally = Tally::new(manifest)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // A group of its own, never committed: verifying leaves no trace.
        .set("group.id", unique_group(manifest.run_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the Kafka consumer")?;

    let mut targets = partitions_to_read(&consumer, topics, deadline)?;
    let mut assignment = TopicPartitionList::new();
    for target in targets.iter().filter(|t| !t.done) {
        assignment
            .add_partition_offset(&target.topic, target.partition, Offset::Beginning)
            .context("building the partition assignment")?;
    }
    consumer
        .assign(&assignment)
        .context("assigning partitions")?;
    // Messages name their partition by topic and number; find ours quickly.
    let mut index: HashMap<String, HashMap<i32, usize>> = HashMap::new();
    for (i, target) in targets.iter().enumerate() {
        index
            .entry(target.topic.clone())
            .or_default()
            .insert(target.partition, i);
    }

    let mut remaining = targets.iter().filter(|t| !t.done).count();
    let mut errors = 0usize;
    while remaining > 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match consumer.poll((deadline - now).min(POLL_INTERVAL)) {
            Some(Ok(message)) => {
                let Some(&i) = index
                    .get(message.topic())
                    .and_then(|partitions| partitions.get(&message.partition()))
                else {
                    continue;
                };
                if let Some(stamp) = message.payload().and_then(Stamp::read_any) {
                    if tally.see(i, stamp) {
                        if let Some(progress) = progress {
                            progress.add(1);
                        }
                    }
                }
                let target = &mut targets[i];
                if !target.done && message.offset() + 1 >= target.high {
                    target.done = true;
                    remaining -= 1;
                }
            }
            Some(Err(err)) => {
                // Usually transient (a broker reconnecting); the deadline bounds it.
                errors += 1;
                if errors <= ERRORS_SHOWN {
                    eprintln!("verify: Kafka consumer error (still reading): {err}");
                }
            }
            None => {
                // Idle: a partition whose last records are not data (transaction
                // markers) never delivers its last offset, so ask its position.
                if let Ok(positions) = consumer.position() {
                    for target in targets.iter_mut().filter(|t| !t.done) {
                        let position = positions
                            .find_partition(&target.topic, target.partition)
                            .map(|p| p.offset());
                        if let Some(Offset::Offset(offset)) = position {
                            if offset >= target.high {
                                target.done = true;
                                remaining -= 1;
                            }
                        }
                    }
                }
            }
        }
    }
    if remaining > 0 {
        let unread: Vec<String> = targets
            .iter()
            .filter(|t| !t.done)
            .map(|t| format!("{}[{}]", t.topic, t.partition))
            .collect();
        eprintln!(
            "verify: timed out after {} s before reading to the end of {}; \
             messages not read count as missing",
            timeout.as_secs(),
            unread.join(", ")
        );
    }
    Ok(tally.finish())
}

/// One partition to read, up to the high watermark seen at start.
struct Target {
    topic: String,
    partition: i32,
    high: i64,
    done: bool,
}

/// Every partition of `topics`, with its high watermark now.
fn partitions_to_read(
    consumer: &BaseConsumer,
    topics: &[String],
    deadline: Instant,
) -> anyhow::Result<Vec<Target>> {
    // Lookups get at least LOOKUP_FLOOR: a tiny --timeout-secs should report
    // unread messages as missing, not fail on a metadata timeout.
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(LOOKUP_FLOOR)
    };
    let mut targets = Vec::new();
    // The same topic named twice must not be read (and counted) twice.
    let topics: BTreeSet<&String> = topics.iter().collect();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), left())
            .with_context(|| format!("fetching metadata for topic {topic}"))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            bail!("Kafka returned no metadata for topic {topic}");
        };
        if let Some(err) = found.error() {
            bail!("topic {topic}: {}", RDKafkaErrorCode::from(err));
        }
        if found.partitions().is_empty() {
            bail!("topic {topic} has no partitions");
        }
        for partition in found.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), left())
                .with_context(|| format!("fetching watermarks of {topic}[{}]", partition.id()))?;
            targets.push(Target {
                topic: topic.clone(),
                partition: partition.id(),
                high,
                done: high <= low,
            });
        }
    }
    Ok(targets)
}

/// A consumer group id no other reader uses.
fn unique_group(run_id: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("tributary-verify-{run_id}-{}-{nanos}", std::process::id())
}

pub async fn main(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::read(&args.manifest)
        .with_context(|| format!("reading manifest {}", args.manifest.display()))?;
    println!(
        "verify: run {} on {} at {}",
        manifest.run_id,
        args.topic.join(", "),
        args.bootstrap
    );
    let progress = Progress::start("verify", manifest.acknowledged(), args.quiet);
    let timeout = Duration::from_secs(args.timeout_secs);
    let verdict = {
        let progress = progress.clone();
        let (bootstrap, topics) = (args.bootstrap.clone(), args.topic.clone());
        tokio::task::spawn_blocking(move || {
            verify_with_progress(&bootstrap, &topics, &manifest, timeout, Some(&progress))
        })
        .await
        .context("the verifier thread failed")??
    };
    progress.finish();
    println!("{}", verdict.report());
    if verdict.passes(args.strict) {
        println!("PASS");
        Ok(ExitCode::SUCCESS)
    } else {
        if verdict.missing > 0 {
            println!(
                "FAIL: {} acknowledged messages are not in Kafka",
                verdict.missing
            );
        } else {
            println!("FAIL (--strict): duplicates or order violations");
        }
        Ok(ExitCode::FAILURE)
    }
}
