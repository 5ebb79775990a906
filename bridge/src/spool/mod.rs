//! Durable local spool for Tributary: when Kafka is unreachable, acknowledged
//! MQTT messages are appended here, fsynced, and later drained into Kafka in
//! append order.
//!
//! The promise this crate keeps: an entry whose `append` returned (with
//! `FsyncPolicy::Always`) is on stable storage and is returned by `read`, in
//! order, until `commit` passes it. Nothing uncommitted is ever evicted: a
//! full spool refuses new batches (`SpoolError::Full`) instead. A crash or
//! power cut at any moment loses nothing that was fsynced; `Spool::open`
//! truncates a torn tail, moves corrupt records aside into `corrupt/`, and
//! keeps draining the rest. No file content can make it panic.
//!
//! It never encodes Kafka records (entries are opaque bytes) and never talks
//! to Kafka or MQTT. Layout on disk: see [`format`](mod@format).
//!
//! Directory contents:
//! - `NNNNNNNNNNNNNNNNNNNN.spool`: segment files (see [`format`](mod@format));
//! - `cursor`: last committed position, replaced atomically on `commit`;
//! - `LOCK`: flock held while a `Spool` is open;
//! - `corrupt/<segment>-<offset>.bin`: copies of corrupt ranges found at open.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod config;
mod drain;
pub mod entry;
mod error;
mod files;
pub mod format;
mod log;
mod recovery;
mod scan;
mod worker;

pub use config::SpoolSettings;
pub use drain::{drain, DeadLetterTopics};
pub use entry::{EntryError, SpooledRecord};
pub use error::SpoolError;
pub use format::Position;
pub use log::{FsyncPolicy, ReadBatch, Spool, SpoolConfig, SpoolStats};
pub use recovery::{CorruptRange, Recovery};
pub use worker::{SpoolAck, SpoolHandle, SpoolThread};
