//! The spool on a thread of its own, for callers on the async runtime.
//!
//! A caller hands over a batch and is answered once the batch is on stable
//! storage (with `FsyncPolicy::Always`): every append waiting when the thread
//! turns to the disk is written, then one fsync covers them all (group
//! commit), then each caller gets the position of its last entry. File I/O
//! never runs on the async workers.
//!
//! It never answers an append before its fsync (with `Always`), and never
//! reorders: appends are written in the order they were handed over.

use std::collections::VecDeque;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::log::{FsyncPolicy, ReadBatch, Spool, SpoolConfig, SpoolStats};
use super::{Position, Recovery, SpoolError};
use crate::events;

/// The spool's answer to one append: the position of its last entry once
/// durable.
pub type SpoolAck = oneshot::Receiver<Result<Position, SpoolError>>;

/// Requests waiting for the spool's thread at most; past it callers wait
/// (the backpressure of a slow disk).
const QUEUE: usize = 1024;
/// Appends one fsync covers at most.
const MAX_GROUP: usize = 256;
/// How often appends waiting for room try again without a commit.
const HELD_RETRY: Duration = Duration::from_secs(1);

enum Command {
    Append {
        entries: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<Position, SpoolError>>,
        /// When the spool is full: wait for room (in order, behind every
        /// other waiting append) instead of being refused.
        wait: bool,
    },
    Read {
        from: Position,
        max_entries: usize,
        max_bytes: usize,
        reply: oneshot::Sender<Result<ReadBatch, SpoolError>>,
    },
    Commit {
        upto: Position,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Stats {
        reply: oneshot::Sender<(SpoolStats, Position)>,
    },
    /// The thread's own: try the waiting appends again.
    RetryHeld,
}

/// A handle on the spool's thread; the thread ends (after a last fsync)
/// when every handle is dropped.
#[derive(Clone)]
pub struct SpoolHandle {
    commands: flume::Sender<Command>,
}

/// The spool's thread, to wait for at shutdown.
pub struct SpoolThread(JoinHandle<()>);

impl SpoolThread {
    /// Waits until the thread has ended (every handle dropped).
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl SpoolHandle {
    /// Opens the spool (recovering what a crash left) and starts its thread.
    /// Blocking: call it off the async workers.
    pub fn start(config: SpoolConfig) -> Result<(SpoolHandle, SpoolThread, Recovery), SpoolError> {
        let policy = config.fsync;
        // The thread decides when to fsync: the log itself never does on
        // append.
        let config = SpoolConfig {
            fsync: FsyncPolicy::Interval(Duration::MAX),
            ..config
        };
        let (spool, recovery) = Spool::open(config)?;
        let (commands, queue) = flume::bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("spool".into())
            .spawn(move || run(spool, policy, queue))
            .map_err(|_| SpoolError::Stopped)?;
        Ok((SpoolHandle { commands }, SpoolThread(thread), recovery))
    }

    /// Appends `entries` in order; answered once they are durable (with
    /// `FsyncPolicy::Always`), with the position of the last one.
    pub async fn append(&self, entries: Vec<Vec<u8>>) -> Result<Position, SpoolError> {
        self.submit(entries)
            .await?
            .await
            .map_err(|_| SpoolError::Stopped)?
    }

    /// Hands `entries` to the spool's thread now (so appends keep the order
    /// of the calls) and returns the answer to wait for. A full spool
    /// answers at once with [`SpoolError::Full`] (or `DiskFull`).
    pub async fn submit(&self, entries: Vec<Vec<u8>>) -> Result<SpoolAck, SpoolError> {
        self.send_append(entries, false).await
    }

    /// Like [`SpoolHandle::submit`], but a full spool keeps the entries (in
    /// memory, in order behind every other waiting submit) and answers once
    /// the drain made room for them: backpressure for callers that cannot be
    /// told "full". Only a batch larger than the whole spool is refused.
    pub async fn submit_waiting(&self, entries: Vec<Vec<u8>>) -> Result<SpoolAck, SpoolError> {
        self.send_append(entries, true).await
    }

    async fn send_append(&self, entries: Vec<Vec<u8>>, wait: bool) -> Result<SpoolAck, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send_async(Command::Append {
                entries,
                reply,
                wait,
            })
            .await
            .map_err(|_| SpoolError::Stopped)?;
        Ok(answer)
    }

    /// Entries from `from` on, in append order (see [`Spool::read`]).
    pub async fn read(
        &self,
        from: Position,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, SpoolError> {
        self.ask(|reply| Command::Read {
            from,
            max_entries,
            max_bytes,
            reply,
        })
        .await?
    }

    /// Everything up to `upto` reached Kafka (see [`Spool::commit`]).
    pub async fn commit(&self, upto: Position) -> Result<(), SpoolError> {
        self.ask(|reply| Command::Commit { upto, reply }).await?
    }

    /// What is on disk now, and where reading should start.
    pub async fn stats(&self) -> Result<(SpoolStats, Position), SpoolError> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send_async(command(reply))
            .await
            .map_err(|_| SpoolError::Stopped)?;
        answer.await.map_err(|_| SpoolError::Stopped)
    }
}

/// An append waiting for room in a full spool.
struct Held {
    entries: Vec<Vec<u8>>,
    reply: oneshot::Sender<Result<Position, SpoolError>>,
}

/// The appends of one group commit.
#[derive(Default)]
struct GroupCommit {
    /// Answered only after the group's fsync.
    durable_after_sync: Vec<(oneshot::Sender<Result<Position, SpoolError>>, Position)>,
    records: usize,
}

impl GroupCommit {
    /// An append was written: answered after the group's fsync (`Always`),
    /// or now (`Interval`, whose fsync comes later).
    fn written(
        &mut self,
        policy: FsyncPolicy,
        unsynced: &mut bool,
        reply: oneshot::Sender<Result<Position, SpoolError>>,
        position: Position,
        records: usize,
    ) {
        match policy {
            FsyncPolicy::Always => {
                self.records += records;
                self.durable_after_sync.push((reply, position));
            }
            FsyncPolicy::Interval(_) => {
                *unsynced = true;
                events::SpoolAppended {
                    records,
                    fsync: None,
                }
                .emit();
                let _ = reply.send(Ok(position));
            }
        }
    }
}

/// What became of one append.
enum Appended {
    /// Written (durable after the next fsync): the reply, the position of its
    /// last entry, its record count.
    Done(
        oneshot::Sender<Result<Position, SpoolError>>,
        Position,
        usize,
    ),
    /// The spool is full and the caller waits for room.
    Wait(Held),
    /// Refused, and the caller told why.
    Refused,
}

/// `retry`: an append that already waited (its refusal was counted).
fn try_append(spool: &mut Spool, append: Held, wait: bool, retry: bool) -> Appended {
    let refs: Vec<&[u8]> = append.entries.iter().map(Vec::as_slice).collect();
    match spool.append(&refs) {
        Ok(position) => Appended::Done(append.reply, position, append.entries.len()),
        Err(error) => {
            if !retry {
                events::SpoolRefused { error: &error }.emit();
            }
            if wait && matches!(error, SpoolError::Full { .. } | SpoolError::DiskFull { .. }) {
                Appended::Wait(append)
            } else {
                let _ = append.reply.send(Err(error));
                Appended::Refused
            }
        }
    }
}

/// Writes the waiting appends, oldest first, while they fit.
fn admit_held(
    spool: &mut Spool,
    held: &mut VecDeque<Held>,
    commit: &mut GroupCommit,
    policy: FsyncPolicy,
    unsynced: &mut bool,
) {
    while let Some(append) = held.pop_front() {
        match try_append(spool, append, true, true) {
            Appended::Done(reply, position, records) => {
                commit.written(policy, unsynced, reply, position, records);
            }
            Appended::Wait(append) => {
                held.push_front(append);
                return;
            }
            Appended::Refused => {}
        }
    }
}

/// The thread: takes every request waiting, appends in order, one fsync,
/// then answers.
fn run(mut spool: Spool, policy: FsyncPolicy, queue: flume::Receiver<Command>) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    // Appends waiting for room, oldest first.
    let mut held: VecDeque<Held> = VecDeque::new();
    loop {
        let first = match (policy, unsynced) {
            (FsyncPolicy::Interval(every), true) => {
                let wait = every.saturating_sub(last_sync.elapsed());
                match queue.recv_timeout(wait) {
                    Ok(command) => command,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        let _ = spool.sync();
                        last_sync = Instant::now();
                        unsynced = false;
                        continue;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            }
            // Appends wait for room: look again now and then, even if no
            // commit comes (a disk filled by others may have been freed).
            _ if !held.is_empty() => match queue.recv_timeout(HELD_RETRY) {
                Ok(command) => command,
                Err(flume::RecvTimeoutError::Timeout) => Command::RetryHeld,
                Err(flume::RecvTimeoutError::Disconnected) => break,
            },
            _ => match queue.recv() {
                Ok(command) => command,
                Err(_) => break,
            },
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(command) => group.push(command),
                Err(_) => break,
            }
        }
        let mut commit = GroupCommit::default();
        for command in group {
            match command {
                Command::Append {
                    entries,
                    reply,
                    wait,
                } => {
                    let append = Held { entries, reply };
                    if wait && !held.is_empty() {
                        // Behind the others waiting: order is kept.
                        held.push_back(append);
                        continue;
                    }
                    match try_append(&mut spool, append, wait, false) {
                        Appended::Done(reply, position, records) => {
                            commit.written(policy, &mut unsynced, reply, position, records);
                        }
                        Appended::Wait(append) => held.push_back(append),
                        Appended::Refused => {}
                    }
                }
                Command::Read {
                    from,
                    max_entries,
                    max_bytes,
                    reply,
                } => {
                    let _ = reply.send(spool.read(from, max_entries, max_bytes));
                }
                Command::Commit { upto, reply } => {
                    let committed = spool.commit(upto);
                    let freed = committed.is_ok();
                    let _ = reply.send(committed);
                    if freed {
                        // Room was made: what waited goes in, in order.
                        admit_held(&mut spool, &mut held, &mut commit, policy, &mut unsynced);
                    }
                }
                Command::RetryHeld => {
                    admit_held(&mut spool, &mut held, &mut commit, policy, &mut unsynced);
                }
                Command::Stats { reply } => {
                    let _ = reply.send((spool.stats(), spool.read_start()));
                }
            }
        }
        let GroupCommit {
            durable_after_sync,
            records: group_records,
        } = commit;
        if !durable_after_sync.is_empty() {
            let began = Instant::now();
            let synced = spool.sync();
            last_sync = Instant::now();
            if synced.is_ok() {
                events::SpoolAppended {
                    records: group_records,
                    fsync: Some(last_sync - began),
                }
                .emit();
            }
            if let Err(error) = &synced {
                events::SpoolRefused { error }.emit();
            }
            for (reply, position) in durable_after_sync {
                let _ = reply.send(match &synced {
                    Ok(()) => Ok(position),
                    // Not durable: never a positive answer.
                    Err(error) => Err(SpoolError::Poisoned {
                        reason: error.to_string(),
                    }),
                });
            }
        }
        if matches!(policy, FsyncPolicy::Interval(every) if unsynced && last_sync.elapsed() >= every)
        {
            let _ = spool.sync();
            last_sync = Instant::now();
            unsynced = false;
        }
    }
    // Every handle is gone: what was appended goes to disk before the end.
    let _ = spool.sync();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tributary-spool-worker-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_durable_in_each_callers_order() {
        let dir = temp_dir("concurrent");
        let (spool, thread, _) = SpoolHandle::start(SpoolConfig::new(&dir, 64 << 20)).unwrap();
        let mut tasks = Vec::new();
        for caller in 0..16u8 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = None;
                for i in 0..50u8 {
                    let position = spool.append(vec![vec![caller, i]]).await.unwrap();
                    // Each caller's entries go in the order it appended them.
                    assert!(last < Some(position));
                    last = Some(position);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        drop(spool);
        thread.join();

        // Reopened: all 800, each caller's in its order.
        let (spool, thread, recovery) =
            SpoolHandle::start(SpoolConfig::new(&dir, 64 << 20)).unwrap();
        assert_eq!(recovery.records, 800);
        let (_, start) = spool.stats().await.unwrap();
        let batch = spool.read(start, 1000, usize::MAX).await.unwrap();
        let mut next = [0u8; 16];
        for (_, entry) in &batch.entries {
            let (caller, i) = (entry[0] as usize, entry[1]);
            assert_eq!(i, next[caller], "caller {caller} out of order");
            next[caller] += 1;
        }
        assert!(next.iter().all(|&n| n == 50));
        drop(spool);
        thread.join();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_full_spool_refuses_one_caller_and_serves_the_next_after_a_commit() {
        let dir = temp_dir("full");
        let config = SpoolConfig {
            segment_bytes: 4096,
            ..SpoolConfig::new(&dir, 8192)
        };
        let (spool, thread, _) = SpoolHandle::start(config).unwrap();
        let mut accepted = Vec::new();
        let refused = loop {
            match spool.append(vec![vec![7u8; 500]]).await {
                Ok(position) => accepted.push(position),
                Err(error) => break error,
            }
            assert!(accepted.len() < 100, "never full");
        };
        assert!(matches!(refused, SpoolError::Full { .. }), "{refused}");
        let last = *accepted.last().unwrap();
        spool.commit(last).await.unwrap();
        spool.append(vec![vec![8u8; 500]]).await.unwrap();
        drop(spool);
        thread.join();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_waiting_submit_is_answered_in_order_once_a_commit_makes_room() {
        let dir = temp_dir("wait");
        let config = SpoolConfig {
            segment_bytes: 4096,
            ..SpoolConfig::new(&dir, 8192)
        };
        let (spool, thread, _) = SpoolHandle::start(config).unwrap();
        let mut accepted = Vec::new();
        loop {
            match spool.append(vec![vec![7u8; 500]]).await {
                Ok(position) => accepted.push(position),
                Err(_) => break,
            }
            assert!(accepted.len() < 100, "never full");
        }
        // Two waiters, then one that may not wait.
        let mut first = spool.submit_waiting(vec![vec![1u8; 500]]).await.unwrap();
        let mut second = spool.submit_waiting(vec![vec![2u8; 500]]).await.unwrap();
        let refused = spool
            .submit(vec![vec![3u8; 500]])
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(refused, Err(SpoolError::Full { .. })),
            "{refused:?}"
        );
        // Past one retry without a commit: still full, still waiting.
        tokio::time::sleep(HELD_RETRY + std::time::Duration::from_millis(200)).await;
        assert!(
            first.try_recv().is_err(),
            "answered while the spool is full"
        );
        assert!(second.try_recv().is_err());
        spool.commit(*accepted.last().unwrap()).await.unwrap();
        let first = first.await.unwrap().unwrap();
        let second = second.await.unwrap().unwrap();
        assert!(first < second, "in the order submitted");
        let read = spool.read(accepted[0], 100, 1 << 20).await.unwrap();
        let bytes: Vec<u8> = read.entries.iter().map(|(_, e)| e[0]).collect();
        assert_eq!(bytes, [1, 2], "both stored, in order, nothing else");
        drop(spool);
        thread.join();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
