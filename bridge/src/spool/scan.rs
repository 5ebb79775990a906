//! Reading records out of a segment file: a buffered positioned reader, record
//! validation (magic, length, CRC), and resynchronisation after damage.
//!
//! Shared by recovery (`Spool::open`) and by `read`/`commit`. It must never
//! write to a file, and never trust a length from the file before checking it
//! against the file size and `MAX_ENTRY_LIMIT` (a damaged length must not cause
//! a huge allocation, an overflow or an out-of-bounds slice).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::spool::format::{RecordHeader, MAX_ENTRY_LIMIT, RECORD_HEADER_LEN, RECORD_MAGIC};

/// Bytes fetched per read syscall. Records are small and read in order, so one
/// fetch serves hundreds of them.
pub(crate) const WINDOW: usize = 256 * 1024;

/// A record whose header and bounds were checked (and, where stated, its CRC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    pub offset: u64,
    pub len: u32,
    /// Stored CRC; only trusted once `Window::record`/`payload` compared it.
    pub crc: u32,
    pub appended_at_ms: u64,
}

impl RecordMeta {
    pub fn payload_start(&self) -> u64 {
        self.offset.saturating_add(RECORD_HEADER_LEN)
    }
    pub fn end(&self) -> u64 {
        self.payload_start().saturating_add(u64::from(self.len))
    }
}

/// Positioned, buffered reads of `[0, limit)` of a file. `limit` is the length
/// the caller vouches for (the file length at recovery, or the valid length of
/// a segment later); nothing at or past it is ever read.
pub(crate) struct Window<'a> {
    file: &'a File,
    limit: u64,
    buf: &'a mut Vec<u8>,
    start: u64,
}

impl<'a> Window<'a> {
    /// `buf` is caller-owned so that a long-lived spool reuses one allocation.
    pub fn new(file: &'a File, limit: u64, buf: &'a mut Vec<u8>) -> Window<'a> {
        buf.clear();
        Window {
            file,
            limit,
            buf,
            start: 0,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The `n` bytes at `pos`, or `None` if they are not all below `limit`.
    /// `n` should be at most `WINDOW`; larger requests work but grow the buffer.
    pub fn get(&mut self, pos: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let Some(end) = pos.checked_add(n as u64) else {
            return Ok(None);
        };
        if end > self.limit {
            return Ok(None);
        }
        let buf_end = self.start.saturating_add(self.buf.len() as u64);
        if pos < self.start || end > buf_end {
            // Refill from `pos`: reads go forward, so start the window there.
            let want = (self.limit - pos).min(n.max(WINDOW) as u64);
            let want = usize::try_from(want).unwrap_or(n.max(WINDOW));
            self.buf.resize(want, 0);
            self.start = pos;
            if let Err(e) = self.file.read_exact_at(self.buf, pos) {
                // Leave the window empty so a later call does not serve
                // bytes from a half-completed read.
                self.buf.clear();
                return Err(e);
            }
        }
        let from = usize::try_from(pos - self.start).unwrap_or(usize::MAX);
        Ok(from.checked_add(n).and_then(|to| self.buf.get(from..to)))
    }

    /// Header at `pos` if its magic is right, its length possible and the
    /// whole record lies below `limit`. The payload CRC is not checked.
    pub fn header(&mut self, pos: u64) -> io::Result<Option<RecordMeta>> {
        let Some(bytes) = self.get(pos, RECORD_HEADER_LEN as usize)? else {
            return Ok(None);
        };
        let Some(h) = RecordHeader::decode(bytes) else {
            return Ok(None);
        };
        if !h.plausible() {
            return Ok(None);
        }
        let meta = RecordMeta {
            offset: pos,
            len: h.len,
            crc: h.crc,
            appended_at_ms: h.appended_at_ms,
        };
        if pos
            .checked_add(RECORD_HEADER_LEN + u64::from(h.len))
            .is_none()
            || meta.end() > self.limit
        {
            return Ok(None);
        }
        Ok(Some(meta))
    }

    /// Fully validated record at `pos` (magic, length within bounds, CRC).
    pub fn record(&mut self, pos: u64) -> io::Result<Option<RecordMeta>> {
        let Some(meta) = self.header(pos)? else {
            return Ok(None);
        };
        // CRC the payload in window-sized pieces: a large record never needs
        // a buffer of its own size just to be validated.
        let mut crc = crc32c::crc32c(&meta.appended_at_ms.to_le_bytes());
        let mut at = meta.payload_start();
        let mut left = u64::from(meta.len);
        while left > 0 {
            let n = usize::try_from(left.min(WINDOW as u64)).unwrap_or(WINDOW);
            let Some(chunk) = self.get(at, n)? else {
                return Ok(None);
            };
            crc = crc32c::crc32c_append(crc, chunk);
            at += n as u64;
            left -= n as u64;
        }
        Ok((crc == meta.crc).then_some(meta))
    }

    /// Payload of a record whose header was already checked, verified against
    /// its CRC; `None` if the bytes no longer match.
    pub fn payload(&mut self, meta: &RecordMeta) -> io::Result<Option<Vec<u8>>> {
        let n = meta.len as usize;
        let payload = if n <= WINDOW {
            match self.get(meta.payload_start(), n)? {
                Some(p) => p.to_vec(),
                None => return Ok(None),
            }
        } else {
            // Big payloads go straight into their own buffer instead of
            // growing the shared window.
            if meta.end() > self.limit || meta.len > MAX_ENTRY_LIMIT {
                return Ok(None);
            }
            let mut p = vec![0u8; n];
            self.file.read_exact_at(&mut p, meta.payload_start())?;
            p
        };
        let crc = crate::spool::format::record_crc(meta.appended_at_ms, &payload);
        Ok((crc == meta.crc).then_some(payload))
    }

    /// First offset at or after `from` where a fully valid record starts.
    ///
    /// Used after damage: any byte may be a record start, so scan for the magic
    /// and accept the first candidate whose length and CRC also check out.
    pub fn find_next_record(&mut self, from: u64) -> io::Result<Option<RecordMeta>> {
        let magic = RECORD_MAGIC.to_le_bytes();
        let mut pos = from;
        while pos.saturating_add(RECORD_HEADER_LEN) <= self.limit {
            let n = usize::try_from((self.limit - pos).min(WINDOW as u64)).unwrap_or(WINDOW);
            let Some(chunk) = self.get(pos, n)? else {
                return Ok(None);
            };
            match chunk.windows(magic.len()).position(|w| w == magic) {
                Some(i) => {
                    let candidate = pos + i as u64;
                    if let Some(meta) = self.record(candidate)? {
                        return Ok(Some(meta));
                    }
                    pos = candidate + 1;
                }
                // Step back 3 bytes so a magic straddling two chunks is seen;
                // n >= RECORD_HEADER_LEN here, so this always moves forward.
                None => pos += (n as u64).saturating_sub(3).max(1),
            }
        }
        Ok(None)
    }
}

/// What one pass over a segment's records found.
#[derive(Debug, Default)]
pub(crate) struct RecordScan {
    /// Valid records in the file.
    pub records: u64,
    /// Valid records after the commit floor.
    pub pending: u64,
    /// On-disk bytes (header + payload) of the pending records.
    pub pending_bytes: u64,
    /// First pending record: offset and appended_at_ms.
    pub first_pending: Option<(u64, u64)>,
    /// Damaged ranges `[start, end)` that have a valid record after them.
    pub corrupt: Vec<(u64, u64)>,
    /// Start of a damaged range that runs to the end of the file with no
    /// valid record after it.
    pub tail: Option<u64>,
}

/// Walks `[from, limit)` record by record; records at or before `commit_floor`
/// (the offset of the last committed record in this segment) are not pending.
pub(crate) fn scan_records(
    w: &mut Window<'_>,
    from: u64,
    commit_floor: Option<u64>,
) -> io::Result<RecordScan> {
    let mut scan = RecordScan::default();
    let note = |scan: &mut RecordScan, m: &RecordMeta| {
        scan.records += 1;
        if commit_floor.is_none_or(|floor| m.offset > floor) {
            scan.pending += 1;
            scan.pending_bytes += m.end() - m.offset;
            if scan.first_pending.is_none() {
                scan.first_pending = Some((m.offset, m.appended_at_ms));
            }
        }
    };
    let mut pos = from;
    while pos < w.limit() {
        if let Some(m) = w.record(pos)? {
            note(&mut scan, &m);
            pos = m.end();
            continue;
        }
        match w.find_next_record(pos.saturating_add(1))? {
            Some(m) => {
                scan.corrupt.push((pos, m.offset));
                note(&mut scan, &m);
                pos = m.end();
            }
            None => {
                scan.tail = Some(pos);
                break;
            }
        }
    }
    Ok(scan)
}
