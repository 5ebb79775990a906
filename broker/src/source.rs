//! Kafka -> MQTT: publishes what each `[[kafka_sources]]` consumer reads into
//! the embedded router, as a will is published (an [`Origin`] carries QoS,
//! retain and arrival through the router; retained messages are the
//! gateway's), on a lane of the source's own.
//!
//! **At least once.** A batch's offsets are handed back to the consumer for
//! commit only once [`Lane::taken`] says the router took every message of
//! it. What that guarantees: the router has appended each message to the log
//! of every filter it matches and forwards it from there to every link
//! subscribed to one: connected subscribers, and the persistent sessions
//! whose devices are away (a stored session keeps its router link while it
//! has subscriptions, and a task of its own queues what comes into the
//! session's outbox). What it does not: those logs, sessions and outboxes
//! are in memory, so a record committed is not kept across a crash or a
//! restart of Tributary; a stored session queues at most
//! `outbox::MAX_QUEUED` messages while its device is away (beyond that its
//! QoS 1/2 messages are dropped and counted, as for any publisher); and a
//! filter's log holds `SEGMENT_SIZE * SEGMENT_COUNT` bytes, so a subscriber
//! that falls further behind than that misses messages, as it would from
//! devices.
//!
//! **Backpressure.** While the router is behind on the lane, `send_paced`
//! waits and nothing more is read from Kafka; nothing is ever dropped here.
//!
//! **No loop.** Messages from Kafka go into the router only, never through
//! the routes (`Forwarder`): a route matching their topic does not write
//! them back to Kafka.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tributary_bridge::source::{Source, SourceConfig, SourceMessage, MAX_BATCH};
use tributary_bridge::KafkaConfig;

use crate::events;
use crate::link::origin::Origin;
use crate::link::retained::{Retained, RetainedMessage};
use crate::router::{EmbeddedRouter, Lane, RESERVED_CLIENT_PREFIX};

/// How long one wait for the router to take a batch lasts before it is
/// logged and waited for again.
const TAKEN_WAIT: Duration = Duration::from_secs(5);
/// How often a source held by subscribers behind looks again.
const BEHIND_RECHECK: Duration = Duration::from_millis(5);
/// What one hand-over to the router carries at most, records and bytes.
const CHUNK_RECORDS: usize = 64;
const CHUNK_BYTES: usize = 128 * 1024;

/// Waits while any subscriber is behind; false if `stop` came first.
async fn subscribers_caught_up(behind: &AtomicUsize, stop: &CancellationToken) -> bool {
    while behind.load(Ordering::Relaxed) > 0 {
        tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(BEHIND_RECHECK) => {}
        }
    }
    true
}

/// Starts one task per source; each stops at `stop`, once its current batch
/// is handed over and its offsets committed.
pub async fn start(
    sources: &[SourceConfig],
    kafka: &KafkaConfig,
    router: &EmbeddedRouter,
    retained: Arc<Retained>,
    subscribers_behind: Arc<AtomicUsize>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    for config in sources {
        let source = Source::start(config, kafka)?;
        let lane = router
            .dedicated_lane(&format!("source_{}", config.name))
            .await
            .map_err(|error| anyhow::anyhow!("kafka source {}: {error}", config.name))?;
        let publisher = Publisher {
            lane,
            retained: retained.clone(),
            client_id: format!("{RESERVED_CLIENT_PREFIX}_source_{}", config.name),
        };
        events::SourceStarted { config }.emit();
        tasks.spawn(run(
            source,
            publisher,
            subscribers_behind.clone(),
            stop.clone(),
        ));
    }
    Ok(())
}

/// Publishes one source's messages into the router.
struct Publisher {
    lane: Lane,
    retained: Arc<Retained>,
    /// The publisher the origin names: a reserved client id no device can
    /// take, so a device's No Local subscription never hides these.
    client_id: String,
}

impl Publisher {
    /// The router packet of `message` (retained ones are stored first, as
    /// the gateway keeps retained messages itself).
    fn packet(&self, message: SourceMessage) -> Packet {
        let origin = Origin::now(message.qos, message.retain, &self.client_id);
        let properties = origin.attach(Some(PublishProperties {
            message_expiry_interval: message.expiry,
            user_properties: message.user_properties,
            ..PublishProperties::default()
        }));
        let topic = Bytes::from(message.topic);
        if message.retain {
            self.retained.update(RetainedMessage {
                topic: topic.clone(),
                payload: message.payload.clone(),
                properties: properties.clone(),
                origin,
            });
        }
        Packet::Publish(Publish::new(topic, message.payload, false), properties)
    }
}

/// Reads, publishes, hands back: one batch at a time, so a batch's offsets
/// are stored only after the router took all of it.
async fn run(
    mut source: Source,
    publisher: Publisher,
    subscribers_behind: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            batch = source.next_batch(MAX_BATCH) => batch,
        };
        let mut packets = batch
            .messages
            .into_iter()
            .map(|message| publisher.packet(message))
            .peekable();
        // Handed over in small chunks, each only while no subscriber is
        // behind (its outbox full, or its device not reading): the router's
        // log for a filter is bounded, and a subscriber it passes by misses
        // messages. At most one chunk goes in after a subscriber falls behind.
        while packets.peek().is_some() {
            if !subscribers_caught_up(&subscribers_behind, &stop).await {
                // Not handed over: not stored, read again after the restart.
                source.close().await;
                return;
            }
            let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
            let mut bytes = 0;
            while let Some(packet) =
                packets.next_if(|_| chunk.len() < CHUNK_RECORDS && bytes < CHUNK_BYTES)
            {
                if let Packet::Publish(publish, _) = &packet {
                    bytes += publish.payload.len() + publish.topic.len();
                }
                chunk.push(packet);
            }
            if publisher.lane.send_paced(chunk).await.is_err() {
                // Nothing of this batch is stored: it is read again after a restart.
                events::SourceRouterGone {
                    source: source.name(),
                }
                .emit();
                source.close().await;
                return;
            }
            while !publisher.lane.taken(TAKEN_WAIT).await {
                events::SourceRouterSlow {
                    source: source.name(),
                    waited: TAKEN_WAIT,
                }
                .emit();
                if stop.is_cancelled() {
                    // Not taken: not stored, read again after the restart.
                    source.close().await;
                    return;
                }
            }
        }
        source.handed_over(batch.handoff);
    }
    source.close().await;
}
