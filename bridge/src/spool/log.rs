//! The spool itself: an append-only log of opaque entries in numbered segment
//! files, a committed read cursor, and the size limit.
//!
//! Its contract: once `append` returns a position under `FsyncPolicy::Always`,
//! that entry is on stable storage and will be returned by `read` (in append
//! order) until `commit` moves past it. It must never evict or overwrite an
//! uncommitted record, never write part of a batch it refuses (`Full`), never
//! leave a file that does not end on a record boundary after an error it
//! reports as recoverable, and never panic on what it reads back from disk.
//!
//! Synchronous and single-owner (`&mut self`): the broker runs it on a
//! dedicated thread.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::spool::error::SpoolError;
use crate::spool::files;
use crate::spool::format::{
    encode_record, encode_segment_header, parse_segment_file_name, segment_file_name, Cursor,
    Position, CURSOR_TMP_FILE, LOCK_FILE, MAX_ENTRY_LIMIT, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::spool::recovery::{self, Recovery, Segment};
use crate::spool::scan::Window;

/// When appended data is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before `append` returns: one fsync per batch (group commit). Required
    /// for the "acknowledged means durable" promise.
    Always,
    /// At the first `append` at least this long after the previous fsync, and
    /// on `sync`, segment roll and drop. Entries acknowledged in between can be
    /// lost by a power cut (not by a process crash).
    Interval(Duration),
}

#[derive(Clone, Debug)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Limit on the bytes of all segment files. Committed records still inside
    /// a segment that also holds pending ones count until that segment goes.
    pub max_bytes: u64,
    /// A segment is closed and a new one started when the next batch would
    /// take it past this size (a single larger batch still goes in whole).
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Largest entry `append` accepts; at most `format::MAX_ENTRY_LIMIT`.
    pub max_entry_bytes: u32,
}

impl SpoolConfig {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
    pub const DEFAULT_MAX_ENTRY_BYTES: u32 = 16 * 1024 * 1024;

    /// Defaults: 64 MiB segments, fsync `Always`, 16 MiB entries.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            max_bytes,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            fsync: FsyncPolicy::Always,
            max_entry_bytes: Self::DEFAULT_MAX_ENTRY_BYTES,
        }
    }

    fn validate(&self) -> Result<(), SpoolError> {
        if self.max_entry_bytes == 0 || self.max_entry_bytes > MAX_ENTRY_LIMIT {
            return Err(SpoolError::Config(
                "max_entry_bytes must be in 1..=MAX_ENTRY_LIMIT",
            ));
        }
        if self.segment_bytes < SEGMENT_HEADER_LEN + RECORD_HEADER_LEN {
            return Err(SpoolError::Config(
                "segment_bytes must hold a header and one record",
            ));
        }
        if self.max_bytes < SEGMENT_HEADER_LEN + RECORD_HEADER_LEN {
            return Err(SpoolError::Config(
                "max_bytes must hold one segment and one record",
            ));
        }
        Ok(())
    }
}

/// Observability snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolStats {
    /// Sum of the segment file sizes (what `max_bytes` limits).
    pub bytes_on_disk: u64,
    pub records_pending: u64,
    pub oldest_pending_position: Option<Position>,
    /// Wall-clock append time of the oldest pending record (ms since epoch);
    /// `None` when nothing is pending or its header could not be read.
    pub oldest_pending_appended_at_ms: Option<u64>,
    pub segments: usize,
}

impl SpoolStats {
    /// Age of the oldest pending record (zero when none is pending).
    pub fn oldest_pending_age(&self) -> Duration {
        self.oldest_pending_appended_at_ms
            .map_or(Duration::ZERO, |at| {
                Duration::from_millis(now_ms().saturating_sub(at))
            })
    }
}

/// Result of `read`: entries in append order, and where the next `read`
/// should start to continue after them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadBatch {
    pub entries: Vec<(Position, Vec<u8>)>,
    /// Pass this as `from` to the following `read`. It is a resume point, not
    /// necessarily a record position: commit the positions of entries instead.
    pub next: Position,
}

/// An open spool directory. One per directory (enforced by a lock file);
/// see the crate docs for the durability contract.
pub struct Spool {
    cfg: SpoolConfig,
    /// Held (flock) for the life of the spool; released by the OS if the
    /// process dies, so a crash never leaves the spool locked.
    _lock: File,
    /// Ascending ids; `active`, when set, is the last one.
    segments: Vec<Segment>,
    /// Append handle of the last segment. `None`: the next append starts a
    /// new segment (no segment yet, or the last one was fully committed).
    active: Option<(u64, File)>,
    /// Cached handle of the non-active segment being read.
    read_handle: Option<(u64, File)>,
    next_segment_id: u64,
    cursor: Option<Cursor>,
    pending_records: u64,
    bytes_on_disk: u64,
    oldest_pending: Option<(Position, Option<u64>)>,
    /// Unsynced appends exist (Interval policy).
    dirty: bool,
    last_sync: Instant,
    poisoned: Option<String>,
    /// Reused for encoding batches.
    batch_buf: Vec<u8>,
    /// Reused read window for `read`/`commit`.
    window_buf: Vec<u8>,
    /// Test hook: the next batch write stops after this many bytes with ENOSPC.
    #[cfg(test)]
    fail_write_after: Option<usize>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `config.dir`, recovering every
    /// segment. See `Recovery` for what is reported. Reading resumes after the
    /// committed cursor: start from `read_start()`.
    pub fn open(config: SpoolConfig) -> Result<(Spool, Recovery), SpoolError> {
        config.validate()?;
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(SpoolError::io(&dir))?;
        let lock = acquire_lock(&dir)?;

        // Left by a crash inside commit before the rename: the real cursor is intact.
        let tmp = dir.join(CURSOR_TMP_FILE);
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(SpoolError::io(&tmp)(e)),
            _ => {}
        }
        let (cursor, cursor_reset) = files::load_cursor(&dir)?;
        let mut report = Recovery {
            cursor_reset,
            ..Recovery::default()
        };

        let mut listed = list_segments(&dir)?;
        let highest_id = listed.last().map_or(0, |(id, _)| *id);
        if let Some(c) = cursor {
            // Wholly committed; still here after a crash between commit's
            // cursor write and its deletions.
            let (behind, rest): (Vec<_>, Vec<_>) = listed
                .into_iter()
                .partition(|(id, _)| *id < c.position.segment);
            for (_, path) in behind {
                remove_segment_file(&path)?;
            }
            listed = rest;
        }

        let count = listed.len();
        let mut segments = Vec::with_capacity(count);
        let mut active = None;
        let mut oldest_pending = None;
        for (i, (id, path)) in listed.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let r =
                recovery::recover_segment(&dir, id, path, is_last, cursor.as_ref(), &mut report)?;
            if oldest_pending.is_none() {
                oldest_pending = r.first_pending.map(|(offset, ts)| {
                    (
                        Position {
                            segment: id,
                            offset,
                        },
                        Some(ts),
                    )
                });
            }
            if is_last {
                active = Some((id, r.file));
            }
            segments.push(r.segment);
        }

        let cursor_segment = cursor.map_or(0, |c| c.position.segment);
        let mut spool = Spool {
            _lock: lock,
            pending_records: segments.iter().map(|s| s.pending).sum(),
            bytes_on_disk: segments.iter().map(|s| s.len).sum(),
            segments,
            active,
            read_handle: None,
            // Never reuse an id: positions must keep growing past the cursor
            // even when every segment has been deleted.
            next_segment_id: highest_id.max(cursor_segment).saturating_add(1),
            cursor,
            oldest_pending,
            dirty: false,
            last_sync: Instant::now(),
            poisoned: None,
            batch_buf: Vec::new(),
            window_buf: Vec::new(),
            cfg: config,
            #[cfg(test)]
            fail_write_after: None,
        };
        spool.collect_garbage()?;
        Ok((spool, report))
    }

    /// Appends `entries` as one batch and returns the position of the last.
    ///
    /// The batch is encoded into one buffer and written with one positioned
    /// write, then fsynced per policy (`Always`: one fsync for the whole batch).
    /// All-or-nothing for the errors it reports as recoverable: `Full`,
    /// `BatchTooLarge`, `EntryTooLarge`, `EmptyBatch` write nothing; `DiskFull`
    /// cuts the file back to where the batch began.
    pub fn append(&mut self, entries: &[&[u8]]) -> Result<Position, SpoolError> {
        if let Some(reason) = &self.poisoned {
            return Err(SpoolError::Poisoned {
                reason: reason.clone(),
            });
        }
        let Some(last_entry) = entries.last() else {
            return Err(SpoolError::EmptyBatch);
        };
        let appended_at_ms = now_ms();
        self.batch_buf.clear();
        for e in entries {
            let len = u32::try_from(e.len())
                .ok()
                .filter(|l| *l <= self.cfg.max_entry_bytes)
                .ok_or(SpoolError::EntryTooLarge {
                    len: e.len(),
                    max: self.cfg.max_entry_bytes,
                })?;
            encode_record(&mut self.batch_buf, e, len, appended_at_ms);
        }
        let batch_len = self.batch_buf.len() as u64;

        if batch_len.saturating_add(SEGMENT_HEADER_LEN) > self.cfg.max_bytes {
            return Err(SpoolError::BatchTooLarge {
                needed: batch_len.saturating_add(SEGMENT_HEADER_LEN),
                max_bytes: self.cfg.max_bytes,
            });
        }
        let roll = self.needs_roll(batch_len);
        let needed = batch_len + if roll { SEGMENT_HEADER_LEN } else { 0 };
        if self.bytes_on_disk.saturating_add(needed) > self.cfg.max_bytes {
            return Err(SpoolError::Full {
                needed,
                on_disk: self.bytes_on_disk,
                max_bytes: self.cfg.max_bytes,
            });
        }
        if roll {
            self.roll()?;
        }

        #[cfg(test)]
        let fail_after = self.fail_write_after.take();
        #[cfg(not(test))]
        let fail_after: Option<usize> = None;

        let (Some((id, file)), Some(seg)) = (self.active.as_ref(), self.segments.last_mut()) else {
            return Err(self.poison("no active segment after roll".into()));
        };
        let id = *id;
        let start = seg.len;
        let sync_now = match self.cfg.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
        };
        let written = write_all_at(file, &self.batch_buf, start, fail_after);
        let write_ok = written.is_ok();
        let result = written.and_then(|()| if sync_now { file.sync_data() } else { Ok(()) });
        if let Err(e) = result {
            // Cut the partial batch off so the file ends on a record boundary
            // and the next append (or the next open) finds it clean.
            let rolled_back = file.set_len(start).is_ok();
            let path = seg.path.clone();
            let err = SpoolError::write(&path)(e);
            // After a failed fsync the kernel may have dropped dirty pages and
            // will not report it again: nothing written since the last good
            // fsync can be trusted until a reopen re-validates the file.
            // (An error after a successful write came from the fsync.)
            if write_ok || !rolled_back {
                self.poisoned = Some(format!("{err}"));
            }
            return Err(err);
        }
        if sync_now {
            self.dirty = false;
            self.last_sync = Instant::now();
        } else {
            self.dirty = true;
        }

        let n = entries.len() as u64;
        seg.len += batch_len;
        seg.pending += n;
        self.pending_records += n;
        self.bytes_on_disk += batch_len;
        if self.oldest_pending.is_none() {
            self.oldest_pending = Some((
                Position {
                    segment: id,
                    offset: start,
                },
                Some(appended_at_ms),
            ));
        }
        Ok(Position {
            segment: id,
            offset: start + batch_len - RECORD_HEADER_LEN - last_entry.len() as u64,
        })
    }

    /// Where a drain should start: the oldest pending record, or the point
    /// right after the committed cursor if nothing is pending.
    pub fn read_start(&self) -> Position {
        if let Some((p, _)) = self.oldest_pending {
            return p;
        }
        match self.cursor {
            Some(c) => Position {
                segment: c.position.segment,
                offset: c.end,
            },
            None => Position::START,
        }
    }

    /// Reads up to `max_entries` entries starting at `from` (inclusive), in
    /// append order across segments, stopping before an entry that would take
    /// the payload total past `max_bytes` — except that the first entry is
    /// always returned, so an entry bigger than `max_bytes` cannot stall a drain.
    ///
    /// `from` is `read_start()`, a position returned by `append`/`read`, or a
    /// previous `ReadBatch::next`. A `from` in a segment that is gone (fully
    /// committed) continues at the next segment. Corrupt ranges found at open
    /// are skipped. Reading does not commit: the same range can be read again.
    pub fn read(
        &mut self,
        from: Position,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, SpoolError> {
        let mut entries = Vec::new();
        let mut next = from;
        let mut bytes = 0usize;
        let mut idx = self.segments.partition_point(|s| s.id < from.segment);
        let mut offset = match self.segments.get(idx) {
            Some(s) if s.id == from.segment => from.offset,
            _ => 0,
        };
        while entries.len() < max_entries {
            let Some(seg) = self.segments.get(idx) else {
                break;
            };
            let file = segment_file(&self.active, &mut self.read_handle, seg)?;
            let mut w = Window::new(file, seg.len, &mut self.window_buf);
            let mut off = seg.skip_holes(offset.max(SEGMENT_HEADER_LEN));
            while off < seg.len && entries.len() < max_entries {
                let corrupt = || SpoolError::Corrupt {
                    path: seg.path.clone(),
                    offset: off,
                };
                let meta = w
                    .header(off)
                    .map_err(SpoolError::io(&seg.path))?
                    .ok_or_else(corrupt)?;
                let len = meta.len as usize;
                if !entries.is_empty() && bytes.saturating_add(len) > max_bytes {
                    return Ok(ReadBatch {
                        entries,
                        next: Position {
                            segment: seg.id,
                            offset: off,
                        },
                    });
                }
                let payload = w
                    .payload(&meta)
                    .map_err(SpoolError::io(&seg.path))?
                    .ok_or_else(corrupt)?;
                entries.push((
                    Position {
                        segment: seg.id,
                        offset: off,
                    },
                    payload,
                ));
                bytes = bytes.saturating_add(len);
                off = seg.skip_holes(meta.end());
            }
            next = Position {
                segment: seg.id,
                offset: off.min(seg.len),
            };
            if off < seg.len {
                break;
            }
            idx += 1;
            offset = 0;
        }
        Ok(ReadBatch { entries, next })
    }

    /// Records that everything up to and including `upto` has reached Kafka.
    ///
    /// The cursor file is replaced atomically and durably before anything is
    /// deleted; then segments wholly behind the cursor are removed. Committing
    /// a position at or before the current cursor does nothing (retry-safe).
    /// `upto` must be a position returned by `append` or `read`.
    pub fn commit(&mut self, upto: Position) -> Result<(), SpoolError> {
        if self.cursor.is_some_and(|c| upto <= c.position) {
            return Ok(());
        }
        let idx = self
            .segments
            .binary_search_by_key(&upto.segment, |s| s.id)
            .map_err(|_| SpoolError::InvalidPosition(upto))?;
        let Some(seg) = self.segments.get(idx) else {
            return Err(SpoolError::InvalidPosition(upto));
        };
        let walk_from = match self.cursor {
            Some(c) if c.position.segment == seg.id => c.end,
            _ => SEGMENT_HEADER_LEN,
        };
        // Walk record headers from the old cursor to `upto`: proves `upto`
        // is a record start, and counts the records leaving the pending set.
        let file = segment_file(&self.active, &mut self.read_handle, seg)?;
        let mut w = Window::new(file, seg.len, &mut self.window_buf);
        let mut off = seg.skip_holes(walk_from);
        let mut count = 0u64;
        let end = loop {
            if off > upto.offset || off >= seg.len {
                return Err(SpoolError::InvalidPosition(upto));
            }
            let meta = w
                .header(off)
                .map_err(SpoolError::io(&seg.path))?
                .ok_or_else(|| SpoolError::Corrupt {
                    path: seg.path.clone(),
                    offset: off,
                })?;
            count += 1;
            if off == upto.offset {
                break meta.end();
            }
            off = seg.skip_holes(meta.end());
        };

        let cursor = Cursor {
            position: upto,
            end,
        };
        files::store_cursor(&self.cfg.dir, &cursor)?;
        self.cursor = Some(cursor);

        for s in self.segments.iter_mut().take(idx) {
            self.pending_records = self.pending_records.saturating_sub(s.pending);
            s.pending = 0;
        }
        if let Some(s) = self.segments.get_mut(idx) {
            s.pending = s.pending.saturating_sub(count);
        }
        self.pending_records = self.pending_records.saturating_sub(count);
        self.oldest_pending = self.find_oldest_pending(idx, end);
        self.collect_garbage()
    }

    /// Fsyncs appended data now (for `Interval`: call it on shutdown or from
    /// a timer to bound the loss window when appends stop).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if !self.dirty {
            return Ok(());
        }
        if let Some((id, file)) = &self.active {
            if let Err(e) = file.sync_data() {
                let path = self.cfg.dir.join(segment_file_name(*id));
                let err = SpoolError::io(&path)(e);
                self.poisoned = Some(format!("{err}"));
                return Err(err);
            }
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            bytes_on_disk: self.bytes_on_disk,
            records_pending: self.pending_records,
            oldest_pending_position: self.oldest_pending.map(|(p, _)| p),
            oldest_pending_appended_at_ms: self.oldest_pending.and_then(|(_, t)| t),
            segments: self.segments.len(),
        }
    }

    /// The committed cursor (last record known to be in Kafka), if any.
    pub fn committed(&self) -> Option<Position> {
        self.cursor.map(|c| c.position)
    }

    fn poison(&mut self, reason: String) -> SpoolError {
        self.poisoned = Some(reason.clone());
        SpoolError::Poisoned { reason }
    }

    fn needs_roll(&self, batch_len: u64) -> bool {
        let (Some((id, _)), Some(seg)) = (&self.active, self.segments.last()) else {
            return true;
        };
        if seg.id != *id {
            return true;
        }
        // Appends must land after the committed cursor. If the cursor's
        // record was lost from this segment (unsynced under Interval, then a
        // power cut) its offsets would be reused: start a new segment instead.
        if self
            .cursor
            .is_some_and(|c| c.position.segment == seg.id && seg.len < c.end)
        {
            return true;
        }
        seg.len > SEGMENT_HEADER_LEN && seg.len.saturating_add(batch_len) > self.cfg.segment_bytes
    }

    /// Starts a new segment file and makes it the append target.
    fn roll(&mut self) -> Result<(), SpoolError> {
        // The old segment must be durable before a newer one exists: recovery
        // treats damage in a non-last segment as corruption, not as a tear.
        self.sync()?;
        let id = self.next_segment_id;
        // Advance first: if creation fails half-way a file may linger, and
        // its id must not be handed out again.
        self.next_segment_id = id.saturating_add(1);
        let path = self.cfg.dir.join(segment_file_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(SpoolError::write(&path))?;
        // The directory entry must be durable too, or a power cut could take
        // the whole file (and every fsynced record in it) away.
        let init = file
            .write_all_at(&encode_segment_header(id), 0)
            .and_then(|()| file.sync_all())
            .map_err(SpoolError::write(&path))
            .and_then(|()| files::sync_dir(&self.cfg.dir));
        if let Err(e) = init {
            drop(file);
            // Best effort: a leftover header-only file is recovered as an
            // empty segment on the next open.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.segments.push(Segment {
            id,
            path,
            len: SEGMENT_HEADER_LEN,
            holes: Vec::new(),
            pending: 0,
        });
        self.bytes_on_disk += SEGMENT_HEADER_LEN;
        self.active = Some((id, file));
        Ok(())
    }

    /// First pending record at or after `offset` in segment `idx`, or in a
    /// later segment. Its timestamp is read best-effort (stats only).
    fn find_oldest_pending(&mut self, idx: usize, offset: u64) -> Option<(Position, Option<u64>)> {
        let mut offset = offset;
        for seg in self.segments.iter().skip(idx) {
            if seg.pending > 0 {
                let off = seg.skip_holes(offset.max(SEGMENT_HEADER_LEN));
                let ts = segment_file(&self.active, &mut self.read_handle, seg)
                    .ok()
                    .and_then(|file| {
                        Window::new(file, seg.len, &mut self.window_buf)
                            .header(off)
                            .ok()
                            .flatten()
                    })
                    .map(|m| m.appended_at_ms);
                return Some((
                    Position {
                        segment: seg.id,
                        offset: off,
                    },
                    ts,
                ));
            }
            offset = SEGMENT_HEADER_LEN;
        }
        None
    }

    /// Deletes segments wholly behind the cursor. A segment whose deletion
    /// fails stays listed (and counted) and is retried on the next commit.
    /// No directory fsync: a deletion undone by a power cut leaves a segment
    /// behind the durable cursor, which the next open deletes again.
    fn collect_garbage(&mut self) -> Result<(), SpoolError> {
        let Some(c) = self.cursor else {
            return Ok(());
        };
        let mut first_err = None;
        let mut kept = Vec::with_capacity(self.segments.len());
        for seg in std::mem::take(&mut self.segments) {
            let behind =
                seg.id < c.position.segment || (seg.id == c.position.segment && seg.pending == 0);
            if !behind {
                kept.push(seg);
                continue;
            }
            if self.active.as_ref().is_some_and(|(id, _)| *id == seg.id) {
                // Its records are all committed; unsynced bytes no longer matter.
                self.active = None;
                self.dirty = false;
            }
            if self
                .read_handle
                .as_ref()
                .is_some_and(|(id, _)| *id == seg.id)
            {
                self.read_handle = None;
            }
            match remove_segment_file(&seg.path) {
                Ok(()) => self.bytes_on_disk = self.bytes_on_disk.saturating_sub(seg.len),
                Err(e) => {
                    first_err.get_or_insert(e);
                    kept.push(seg);
                }
            }
        }
        self.segments = kept;
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Best effort for Interval: nothing can be reported from a drop.
        let _ = self.sync();
    }
}

fn write_all_at(file: &File, buf: &[u8], at: u64, fail_after: Option<usize>) -> io::Result<()> {
    if let Some(n) = fail_after {
        // Test hook: a partial write followed by "no space".
        file.write_all_at(buf.get(..n.min(buf.len())).unwrap_or_default(), at)?;
        return Err(io::Error::from(io::ErrorKind::StorageFull));
    }
    file.write_all_at(buf, at)
}

fn segment_file<'a>(
    active: &'a Option<(u64, File)>,
    read_handle: &'a mut Option<(u64, File)>,
    seg: &Segment,
) -> Result<&'a File, SpoolError> {
    if let Some((id, f)) = active {
        if *id == seg.id {
            return Ok(f);
        }
    }
    if read_handle.as_ref().map(|(id, _)| *id) != Some(seg.id) {
        let f = File::open(&seg.path).map_err(SpoolError::io(&seg.path))?;
        *read_handle = Some((seg.id, f));
    }
    match read_handle {
        Some((_, f)) => Ok(f),
        None => Err(SpoolError::io(&seg.path)(io::Error::other(
            "read handle missing",
        ))),
    }
}

fn acquire_lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(SpoolError::io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(SpoolError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(SpoolError::io(&path)(e)),
    }
}

/// Segment files in `dir`, ascending by id. Other entries are ignored.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(SpoolError::io(dir))? {
        let entry = entry.map_err(SpoolError::io(dir))?;
        let Some(id) = entry.file_name().to_str().and_then(parse_segment_file_name) else {
            continue;
        };
        if entry
            .file_type()
            .map_err(SpoolError::io(&entry.path()))?
            .is_file()
        {
            out.push((id, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(id, _)| *id);
    Ok(out)
}

fn remove_segment_file(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SpoolError::io(path)(e)),
        _ => Ok(()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            segment_bytes: 4096,
            ..SpoolConfig::new(dir, 1 << 20)
        }
    }

    #[test]
    fn disk_full_mid_write_rolls_back_and_spool_stays_usable() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(config(tmp.path())).unwrap();
        let first = spool.append(&[b"one", b"two"]).unwrap();
        let seg_path = tmp.path().join(segment_file_name(first.segment));
        let len_before = fs::metadata(&seg_path).unwrap().len();
        let stats_before = spool.stats();

        // Write 30 bytes of a 3-record batch, then "no space".
        spool.fail_write_after = Some(30);
        let err = spool
            .append(&[b"three-three", b"four-four", b"five"])
            .unwrap_err();
        assert!(matches!(err, SpoolError::DiskFull { .. }), "{err:?}");
        assert_eq!(fs::metadata(&seg_path).unwrap().len(), len_before);
        assert_eq!(spool.stats(), stats_before);

        // Not poisoned: the retry lands exactly where the failed batch would have.
        let last = spool.append(&[b"three", b"four"]).unwrap();
        assert_eq!(last.segment, first.segment);
        let got = spool.read(spool.read_start(), 100, usize::MAX).unwrap();
        let payloads: Vec<&[u8]> = got.entries.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, [&b"one"[..], b"two", b"three", b"four"]);
        assert_eq!(got.entries.last().unwrap().0, last);
        drop(spool);

        let (mut spool, rec) = Spool::open(config(tmp.path())).unwrap();
        assert_eq!(
            (rec.records, rec.truncated_bytes, rec.corrupt_records),
            (4, 0, 0)
        );
        assert_eq!(
            spool
                .read(spool.read_start(), 100, usize::MAX)
                .unwrap()
                .entries
                .len(),
            4
        );
    }
}
