//! `publish`: N MQTT connections publishing stamped messages, each keeping up to
//! `--inflight` unacknowledged, timing every publish → PUBACK (QoS 1) or
//! publish → PUBCOMP (QoS 2).
//!
//! It records exactly which messages were acknowledged (the manifest), so
//! `verify` can hold Tributary to them; it never counts a message as done
//! without the broker's acknowledgement (QoS 0 excepted: sent is done).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::sync::Barrier;

use crate::manifest::{ConnectionAccount, Manifest};
use crate::payload::{PayloadFormat, Stamp};
use crate::progress::Progress;
use crate::report::{self, RunResult};

mod qos0;

/// How long a connection may take to get its CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, after the last publish, the run waits for outstanding acks.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// MQTT connections.
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Unacknowledged publishes per connection.
    #[arg(long, default_value_t = 64)]
    pub inflight: u16,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least 24: the stamp).
    #[arg(long, default_value_t = 64)]
    pub payload_size: usize,
    /// How the stamp is written: `binary`, or `json` for routes whose
    /// format needs a JSON payload (`avro`, an embedded `json_envelope`).
    #[arg(long, value_enum, default_value_t = PayloadFormat::Binary)]
    pub payload_format: PayloadFormat,
    /// Messages in total, split evenly over connections.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Publish for this long instead of a message count.
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Total publish rate limit, messages per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Topic; `{conn}` becomes the connection number.
    #[arg(long, default_value = "bench/{conn}")]
    pub topic: String,
    /// MQTT protocol version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub protocol: u8,
    /// Identifies this run's messages; default: from the clock.
    #[arg(long)]
    pub run_id: Option<u64>,
    /// Client ids are `<prefix>-<run id>-<conn>`.
    #[arg(long, default_value = "bench")]
    pub client_prefix: String,
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Where to write which messages were acknowledged, for `verify`.
    #[arg(long)]
    pub manifest_out: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
}

pub async fn main(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let (result, manifest) = run(&args).await?;
    report::finish(
        &result,
        &manifest,
        args.json_out.as_ref(),
        args.manifest_out.as_ref(),
    )
}

/// Runs the load; returns the figures and the manifest.
pub async fn run(args: &PublishArgs) -> anyhow::Result<(RunResult, Manifest)> {
    let run_id = args.run_id.unwrap_or_else(clock_run_id);
    let per_connection = args.messages.div_ceil(u64::from(args.connections.max(1)));
    let total = per_connection * u64::from(args.connections);
    let progress = Progress::start(
        "publish",
        if args.duration_secs.is_some() {
            0
        } else {
            total
        },
        args.quiet,
    );
    let start = Arc::new(Barrier::new(args.connections as usize + 1));
    let mut tasks = Vec::new();
    for connection in 0..args.connections {
        let args = args.clone();
        let start = start.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            run_connection(&args, run_id, connection, per_connection, start, progress).await
        }));
    }
    // Everyone connected: the clock starts for all at once.
    start.wait().await;
    let started = Instant::now();

    let mut histogram = report::latency_histogram();
    let mut manifest = Manifest {
        run_id,
        qos: args.qos,
        connections: Default::default(),
    };
    let (mut done, mut failures, mut disconnects) = (0, 0, 0);
    let mut last_done = started;
    for (connection, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.context("connection task")??;
        done += outcome.done;
        failures += outcome.failures;
        disconnects += outcome.disconnects;
        histogram.add(&outcome.histogram)?;
        last_done = last_done.max(outcome.finished);
        manifest
            .connections
            .insert(connection as u32, outcome.account);
    }
    progress.finish();
    let result = RunResult::new(
        done,
        failures,
        disconnects,
        args.payload_size.max(crate::payload::HEADER_LEN),
        last_done - started,
        &histogram,
    );
    Ok((result, manifest))
}

fn clock_run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Runs `connect` (up to its CONNACK), then waits at `start` for every other
/// connection, so the clock starts for all at once; a failure is reported only
/// after the barrier, which must be reached either way.
async fn connect_before_start<T>(
    client_id: &str,
    start: Arc<Barrier>,
    connect: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect).await;
    start.wait().await;
    connected
        .map_err(|_| anyhow::anyhow!("{client_id}: no CONNACK within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("{client_id}: connecting"))
}

/// When a connection stops publishing, and how fast it may go.
struct Pace {
    /// End of a `--duration-secs` run.
    deadline: Option<Instant>,
    /// This connection's share of `--rate`.
    per_connection_rate: Option<f64>,
}

impl Pace {
    /// Starts the clock for one connection.
    fn start(args: &PublishArgs) -> Pace {
        Pace {
            deadline: args
                .duration_secs
                .map(|secs| Instant::now() + Duration::from_secs_f64(secs)),
            per_connection_rate: args.rate.map(|rate| rate / f64::from(args.connections)),
        }
    }
}

/// What one connection did.
struct Outcome {
    done: u64,
    failures: u64,
    disconnects: u64,
    histogram: Histogram<u64>,
    account: ConnectionAccount,
    finished: Instant,
}

/// Follows one connection's messages from publish to acknowledgement.
struct Tracker {
    qos: u8,
    /// Sequence numbers handed to the client, not yet on the wire, in order.
    queued: VecDeque<u64>,
    /// On the wire, awaiting acknowledgement: packet id → (seq, sent at).
    in_flight: HashMap<u16, (u64, Instant)>,
    sent: u64,
    done: u64,
    failed: Vec<u64>,
    histogram: Histogram<u64>,
}

impl Tracker {
    /// A publish went out; true when that completed it (QoS 0).
    fn on_sent(&mut self, pkid: u16) -> bool {
        // A packet id already in flight is a re-send after reconnecting.
        if self.qos > 0 && self.in_flight.contains_key(&pkid) {
            return false;
        }
        let Some(seq) = self.queued.pop_front() else {
            return false;
        };
        self.sent += 1;
        if self.qos == 0 {
            self.done += 1;
            return true;
        }
        self.in_flight.insert(pkid, (seq, Instant::now()));
        false
    }

    fn on_acked(&mut self, pkid: u16, ok: bool) -> bool {
        let Some((seq, sent_at)) = self.in_flight.remove(&pkid) else {
            return false;
        };
        if ok {
            self.done += 1;
            report::record(&mut self.histogram, sent_at.elapsed());
        } else {
            self.failed.push(seq);
        }
        true
    }

    fn settled(&self) -> u64 {
        self.done + self.failed.len() as u64
    }
}

/// What the event loop reported, in protocol-neutral terms.
enum Seen {
    Sent(u16),
    /// Acknowledgement ending the flow, positive or not.
    Acked(u16, bool),
    Other,
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// One per connection, so the size difference between the variants is of no
/// consequence.
#[allow(clippy::large_enum_variant)]
enum Events {
    V4(rumqttc::EventLoop),
    V5(rumqttc::v5::EventLoop),
}

impl Client {
    async fn publish(&self, topic: &str, qos: u8, payload: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Client::V4(client) => {
                let qos = rumqttc::qos(qos).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                client.publish(topic, qos, false, payload).await?;
            }
            Client::V5(client) => {
                let qos = rumqttc::v5::mqttbytes::qos(qos)
                    .ok_or_else(|| anyhow::anyhow!("bad QoS {qos}"))?;
                client.publish(topic, qos, false, payload).await?;
            }
        }
        Ok(())
    }

    async fn disconnect(&self) {
        let _ = match self {
            Client::V4(client) => client.disconnect().await.map_err(drop),
            Client::V5(client) => client.disconnect().await.map_err(drop),
        };
    }
}

impl Events {
    async fn poll(&mut self, qos: u8) -> Result<Seen, String> {
        match self {
            Events::V4(events) => {
                use rumqttc::{Event, Outgoing, Packet};
                Ok(match events.poll().await.map_err(|e| e.to_string())? {
                    Event::Outgoing(Outgoing::Publish(pkid)) => Seen::Sent(pkid),
                    Event::Incoming(Packet::PubAck(ack)) if qos == 1 => Seen::Acked(ack.pkid, true),
                    Event::Incoming(Packet::PubComp(ack)) if qos == 2 => {
                        Seen::Acked(ack.pkid, true)
                    }
                    _ => Seen::Other,
                })
            }
            Events::V5(events) => {
                use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason};
                use rumqttc::v5::Event;
                use rumqttc::Outgoing;
                Ok(match events.poll().await.map_err(|e| e.to_string())? {
                    Event::Outgoing(Outgoing::Publish(pkid)) => Seen::Sent(pkid),
                    Event::Incoming(Packet::PubAck(ack)) if qos == 1 => {
                        Seen::Acked(ack.pkid, ack.reason == PubAckReason::Success)
                    }
                    // A failed PUBREC ends a QoS 2 flow [MQTT-4.3.3].
                    Event::Incoming(Packet::PubRec(rec))
                        if qos == 2 && rec.reason != PubRecReason::Success =>
                    {
                        Seen::Acked(rec.pkid, false)
                    }
                    Event::Incoming(Packet::PubComp(comp)) if qos == 2 => {
                        Seen::Acked(comp.pkid, true)
                    }
                    _ => Seen::Other,
                })
            }
        }
    }
}

fn open(args: &PublishArgs, client_id: &str) -> (Client, Events) {
    if args.protocol == 5 {
        let mut options = rumqttc::v5::MqttOptions::new(client_id, &args.host, args.port);
        options
            .set_keep_alive(Duration::from_secs(60))
            .set_max_packet_size(Some(16 * 1024 * 1024))
            .set_outgoing_inflight_upper_limit(args.inflight);
        let (client, events) = rumqttc::v5::AsyncClient::new(options, usize::from(args.inflight));
        (Client::V5(client), Events::V5(events))
    } else {
        let mut options = rumqttc::MqttOptions::new(client_id, &args.host, args.port);
        options
            .set_keep_alive(Duration::from_secs(60))
            .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024)
            .set_inflight(args.inflight);
        let (client, events) = rumqttc::AsyncClient::new(options, usize::from(args.inflight));
        (Client::V4(client), Events::V4(events))
    }
}

async fn run_connection(
    args: &PublishArgs,
    run_id: u64,
    connection: u32,
    messages: u64,
    start: Arc<Barrier>,
    progress: Progress,
) -> anyhow::Result<Outcome> {
    let client_id = format!("{}-{run_id}-{connection}", args.client_prefix);
    let topic = args.topic.replace("{conn}", &connection.to_string());
    if args.qos == 0 {
        return qos0::run(
            args, &client_id, &topic, run_id, connection, messages, start, progress,
        )
        .await;
    }
    let (client, mut events) = open(args, &client_id);
    connect_before_start(&client_id, start, async {
        loop {
            match &mut events {
                Events::V4(e) => {
                    if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) = e.poll().await? {
                        return Ok::<_, anyhow::Error>(());
                    }
                }
                Events::V5(e) => {
                    if let rumqttc::v5::Event::Incoming(
                        rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_),
                    ) = e.poll().await?
                    {
                        return Ok(());
                    }
                }
            }
        }
    })
    .await?;

    let Pace {
        deadline,
        per_connection_rate,
    } = Pace::start(args);
    let mut tracker = Tracker {
        qos: args.qos,
        queued: VecDeque::new(),
        in_flight: HashMap::new(),
        sent: 0,
        done: 0,
        failed: Vec::new(),
        histogram: report::latency_histogram(),
    };
    let mut disconnects = 0;
    let mut next_seq = 0u64;
    let mut ticker = per_connection_rate.map(|rate| {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticker
    });
    let mut finishing_since: Option<Instant> = None;
    loop {
        let publishing_done = match deadline {
            Some(deadline) => Instant::now() >= deadline,
            None => next_seq >= messages,
        };
        if publishing_done {
            let since = *finishing_since.get_or_insert_with(Instant::now);
            let outstanding = next_seq - tracker.settled();
            if outstanding == 0 || since.elapsed() > DRAIN_TIMEOUT {
                break;
            }
        }
        // Keep the client's request queue fed, up to the in-flight window.
        let room = next_seq - tracker.sent < u64::from(args.inflight);
        tokio::select! {
            biased;
            seen = events.poll(args.qos) => match seen {
                Ok(Seen::Sent(pkid)) => {
                    if tracker.on_sent(pkid) {
                        progress.add(1);
                    }
                }
                Ok(Seen::Acked(pkid, ok)) => {
                    if tracker.on_acked(pkid, ok) {
                        progress.add(1);
                    }
                }
                Ok(Seen::Other) => {}
                Err(_) => {
                    disconnects += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tick(&mut ticker), if room && !publishing_done => {
                let payload = Stamp { run_id, connection, seq: next_seq }
                    .encode(args.payload_format, args.payload_size);
                tracker.queued.push_back(next_seq);
                next_seq += 1;
                client.publish(&topic, args.qos, payload).await?;
            }
        }
    }
    let finished = Instant::now();
    client.disconnect().await;
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll(args.qos)).await;

    let mut unacked: Vec<u64> = tracker.in_flight.values().map(|(seq, _)| *seq).collect();
    unacked.extend(&tracker.failed);
    unacked.sort_unstable();
    Ok(Outcome {
        done: tracker.done,
        failures: tracker.failed.len() as u64,
        disconnects,
        histogram: tracker.histogram,
        account: ConnectionAccount {
            sent: tracker.sent,
            unacked: if args.qos == 0 { Vec::new() } else { unacked },
        },
        finished,
    })
}

/// Waits for the rate limiter's next tick, or not at all without a limit.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    if let Some(ticker) = ticker {
        ticker.tick().await;
    }
}
