//! Kafka -> MQTT: delivers what each `[[kafka_sources]]` consumer reads
//! straight into the sessions subscribed to it (see `link::directory`), as
//! the router would forward a device's publish: an [`Origin`] carries QoS,
//! retain and arrival, and each session decides delivery by the MQTT rules.
//! Retained messages are stored first (the gateway keeps them itself).
//!
//! **At least once.** A batch's offsets are handed back to the consumer for
//! commit only once every message of it is in every session that subscribes
//! to its topic (one member of each shared subscription): queued for the
//! device, or waiting in the session's bounded mailbox, whose device is
//! connected or away (a persistent session gets it on reconnect). A session
//! takes from its mailbox only while its outbox has room, so nothing a
//! source delivers is dropped for want of room: the source waits instead.
//! What is not covered: sessions live in memory, so a message committed is
//! not kept across a crash or restart of Tributary; a session that ends
//! (clean, expired, or its subscription gone) before its device got a
//! message is owed nothing more, as MQTT says.
//!
//! **Backpressure.** While a subscriber's mailbox is full (its device reads
//! slower than commands come, or is away with a full queue), the source
//! waits, and nothing more is read from Kafka. A persistent session whose
//! device never returns holds its sources until the session expires.
//!
//! **No loop.** Messages from Kafka go to sessions only, never through the
//! routes (`Forwarder`): a route matching their topic does not write them
//! back to Kafka; nor do they reach the router.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::{Publish, PublishProperties};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tributary_bridge::source::{Source, SourceConfig, SourceMessage, MAX_BATCH};
use tributary_bridge::KafkaConfig;

use crate::events;
use crate::link::directory::{Directory, Letter, Post, Recipients};
use crate::link::origin::Origin;
use crate::link::retained::{Retained, RetainedMessage};
use crate::router::RESERVED_CLIENT_PREFIX;

/// How long one wait for a full mailbox lasts before it is logged and the
/// recipients looked at again.
const MAILBOX_WAIT: Duration = Duration::from_secs(5);

/// Starts one task per source; each stops at `stop`, once its current
/// message is delivered and its offsets committed.
pub fn start(
    sources: &[SourceConfig],
    kafka: &KafkaConfig,
    directory: Arc<Directory>,
    retained: Arc<Retained>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    for config in sources {
        let source = Source::start(config, kafka)?;
        let publisher = Publisher {
            directory: directory.clone(),
            retained: retained.clone(),
            client_id: format!("{RESERVED_CLIENT_PREFIX}_source_{}", config.name),
            turn: 0,
        };
        events::SourceStarted { config }.emit();
        tasks.spawn(run(source, publisher, stop.clone()));
    }
    Ok(())
}

/// Delivers one source's messages into the sessions.
struct Publisher {
    directory: Arc<Directory>,
    retained: Arc<Retained>,
    /// The publisher the origin names: a reserved client id no device can
    /// take, so a device's No Local subscription never hides these.
    client_id: String,
    /// Turns through the members of shared subscriptions.
    turn: usize,
}

impl Publisher {
    /// The letter of `message` (retained ones are stored first, as the
    /// gateway keeps retained messages itself).
    fn letter(&self, message: SourceMessage) -> Letter {
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
        Letter {
            publish: Publish::new(topic, message.payload, false),
            properties,
        }
    }

    /// Puts `message` into every recipient's mailbox, waiting while one is
    /// full; false if `stop` came first (then it is not delivered to all).
    async fn deliver(
        &mut self,
        message: SourceMessage,
        source: &str,
        stop: &CancellationToken,
    ) -> bool {
        let Recipients { sessions, groups } = self.directory.recipients(&message.topic);
        let letter = self.letter(message);
        for session in sessions {
            // An error: the session ended meanwhile, and is owed nothing.
            if matches!(put(&session, &letter, source, stop).await, Put::Stopped) {
                return false;
            }
        }
        for members in groups {
            self.turn = self.turn.wrapping_add(1);
            if !self.deliver_to_one(&members, &letter, source, stop).await {
                return false;
            }
        }
        true
    }

    /// One member of a shared subscription gets `letter`: the first, in
    /// turn, with room; else the first still there, once it has room.
    async fn deliver_to_one(
        &self,
        members: &[Post],
        letter: &Letter,
        source: &str,
        stop: &CancellationToken,
    ) -> bool {
        loop {
            let start = self.turn % members.len().max(1);
            let mut full = None;
            for member in members[start..].iter().chain(&members[..start]) {
                match member.try_send(Box::new(letter.clone())) {
                    Ok(()) => return true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        full.get_or_insert(member);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            // Every member gone: the group is owed nothing.
            let Some(member) = full else { return true };
            match put(member, letter, source, stop).await {
                Put::Stopped => return false,
                Put::Done => return true,
                // That member left while waiting: try the others again.
                Put::Gone => {}
            }
        }
    }
}

enum Put {
    Done,
    /// The session ended: its mailbox is gone.
    Gone,
    Stopped,
}

/// Puts a copy of `letter` into `mailbox` once it has room.
async fn put(mailbox: &Post, letter: &Letter, source: &str, stop: &CancellationToken) -> Put {
    let mut waited = Duration::ZERO;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Put::Stopped,
            room = tokio::time::timeout(MAILBOX_WAIT, mailbox.reserve()) => match room {
                Ok(Ok(permit)) => {
                    permit.send(Box::new(letter.clone()));
                    return Put::Done;
                }
                Ok(Err(_)) => return Put::Gone,
                Err(_) => {
                    waited += MAILBOX_WAIT;
                    events::SourceWaiting { source, waited }.emit();
                }
            }
        }
    }
}

/// Reads and delivers, one batch at a time; a batch's offsets are stored
/// only after all of it is delivered.
async fn run(mut source: Source, mut publisher: Publisher, stop: CancellationToken) {
    let name = source.name().to_owned();
    loop {
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            batch = source.next_batch(MAX_BATCH) => batch,
        };
        for message in batch.messages {
            if !publisher.deliver(message, &name, &stop).await {
                // Not delivered to all: not stored, read again after the restart.
                source.close().await;
                return;
            }
        }
        source.handed_over(batch.handoff);
    }
    source.close().await;
}
