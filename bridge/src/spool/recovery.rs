//! Recovery of one segment file when the spool is opened: validate the
//! header, walk every record, truncate a torn tail, move corrupt ranges aside.
//!
//! Only two repairs ever modify a segment: truncating the torn tail of the
//! *last* segment (bytes after the last valid record, with no valid record
//! after them, i.e. an unacknowledged write cut short) and rewriting a damaged
//! 20-byte segment header (it carries no entry data). It must never drop or
//! rewrite a valid record, never delete a corrupt range before copying it to
//! `corrupt/`, and never fail the open because of what a file contains: only
//! I/O errors and a segment from another format version stop it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::spool::error::SpoolError;
use crate::spool::files;
use crate::spool::format::{
    decode_segment_header, encode_segment_header, Cursor, SegmentHeader, SEGMENT_HEADER_LEN,
};
use crate::spool::scan::{scan_records, Window};

/// What `Spool::open` found and did. Counts cover pending (uncommitted) data;
/// damage entirely inside already-committed bytes is skipped silently.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Valid records not yet committed: what will be drained.
    pub records: u64,
    /// On-disk bytes (headers + payloads) of those records.
    pub bytes: u64,
    /// Bytes cut off the end of the last segment (torn tail).
    pub truncated_bytes: u64,
    /// Corrupt ranges moved aside: one per damaged record, or per run of
    /// damaged records whose boundaries were lost, or per damaged header.
    pub corrupt_records: u64,
    /// Total bytes of those ranges.
    pub corrupt_bytes: u64,
    /// Each corrupt range, for the operator's log.
    pub corrupt: Vec<CorruptRange>,
    /// The cursor file was unreadable: reading restarts at the oldest segment
    /// still on disk (already-delivered records may be sent again; none lost).
    pub cursor_reset: bool,
}

/// One damaged byte range found at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRange {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
    /// Copy under `corrupt/`, or `None` if copying failed (see `save_error`).
    /// The range is skipped either way: refusing to open would stop the
    /// drain, the only thing that frees a full disk.
    pub saved_to: Option<PathBuf>,
    pub save_error: Option<String>,
}

/// In-memory description of a segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub id: u64,
    pub path: PathBuf,
    /// Bytes that belong to the segment: header, records and holes. Appends
    /// go here; nothing at or beyond it is ever read.
    pub len: u64,
    /// Corrupt ranges `[start, end)` to step over when reading, sorted.
    pub holes: Vec<(u64, u64)>,
    /// Valid records after the committed cursor.
    pub pending: u64,
}

impl Segment {
    /// `offset`, or the end of the hole it falls into.
    pub fn skip_holes(&self, mut offset: u64) -> u64 {
        for &(start, end) in &self.holes {
            if start <= offset && offset < end {
                offset = end;
            }
        }
        offset
    }
}

/// Outcome for one segment: its state, an open read/write handle (kept as the
/// append handle if it is the last segment) and its first pending record.
pub(crate) struct Recovered {
    pub segment: Segment,
    pub file: File,
    /// Offset and appended_at_ms of the first pending record.
    pub first_pending: Option<(u64, u64)>,
}

pub(crate) fn recover_segment(
    dir: &Path,
    id: u64,
    path: PathBuf,
    is_last: bool,
    cursor: Option<&Cursor>,
    report: &mut Recovery,
) -> Result<Recovered, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(SpoolError::io(&path))?;
    let file_len = file.metadata().map_err(SpoolError::io(&path))?.len();
    let cursor = cursor.filter(|c| c.position.segment == id);
    let mut segment = Segment {
        id,
        path,
        len: file_len,
        holes: Vec::new(),
        pending: 0,
    };

    if file_len < SEGMENT_HEADER_LEN {
        if is_last {
            // A crash between creating the file and making its header durable:
            // the file cannot hold a record yet, so starting it afresh loses nothing.
            file.set_len(0)
                .and_then(|()| file.write_all_at(&encode_segment_header(id), 0))
                .and_then(|()| file.sync_all())
                .map_err(SpoolError::write(&segment.path))?;
            report.truncated_bytes += file_len;
            segment.len = SEGMENT_HEADER_LEN;
        } else if file_len > 0 {
            report_corrupt(dir, &segment, &file, (0, file_len), cursor, report);
        }
        return Ok(Recovered {
            segment,
            file,
            first_pending: None,
        });
    }

    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(SpoolError::io(&segment.path))?;
    let header_ok = match decode_segment_header(&header, id) {
        SegmentHeader::Valid => true,
        SegmentHeader::UnsupportedVersion(version) => {
            return Err(SpoolError::UnsupportedVersion {
                path: segment.path,
                version,
            });
        }
        SegmentHeader::Invalid => false,
    };

    let mut buf = Vec::new();
    let scan = {
        let mut w = Window::new(&file, file_len, &mut buf);
        scan_records(
            &mut w,
            SEGMENT_HEADER_LEN,
            cursor.map(|c| c.position.offset),
        )
        .map_err(SpoolError::io(&segment.path))?
    };

    if !header_ok {
        // Records carry their own magic and CRC, so they are still read; the
        // header is rewritten so the next open does not report it again.
        report_corrupt(
            dir,
            &segment,
            &file,
            (0, SEGMENT_HEADER_LEN),
            cursor,
            report,
        );
        file.write_all_at(&encode_segment_header(id), 0)
            .and_then(|()| file.sync_data())
            .map_err(SpoolError::write(&segment.path))?;
    }
    for &range in &scan.corrupt {
        report_corrupt(dir, &segment, &file, range, cursor, report);
        segment.holes.push(range);
    }
    match scan.tail {
        Some(tail) if is_last => {
            // Nothing valid follows: this is a write that never completed, so
            // never acknowledged. Cut it so appends continue on a clean end.
            file.set_len(tail)
                .and_then(|()| file.sync_all())
                .map_err(SpoolError::io(&segment.path))?;
            report.truncated_bytes += file_len - tail;
            segment.len = tail;
        }
        Some(tail) => {
            // A later segment exists, so this one was complete and fsynced
            // before it was created: damage here is corruption, not a tear.
            report_corrupt(dir, &segment, &file, (tail, file_len), cursor, report);
            segment.holes.push((tail, file_len));
        }
        None => {}
    }
    segment.pending = scan.pending;
    report.records += scan.pending;
    report.bytes += scan.pending_bytes;
    Ok(Recovered {
        segment,
        file,
        first_pending: scan.first_pending,
    })
}

/// Copies a damaged range aside and records it, unless it lies entirely in
/// bytes the cursor has already committed (already in Kafka: nothing to report).
fn report_corrupt(
    dir: &Path,
    segment: &Segment,
    file: &File,
    (start, end): (u64, u64),
    cursor: Option<&Cursor>,
    report: &mut Recovery,
) {
    if cursor.is_some_and(|c| end <= c.end) {
        return;
    }
    let (saved_to, save_error) =
        match files::quarantine(dir, segment.id, &segment.path, file, start, end) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.to_string())),
        };
    report.corrupt_records += 1;
    report.corrupt_bytes += end - start;
    report.corrupt.push(CorruptRange {
        segment: segment.id,
        offset: start,
        len: end - start,
        saved_to,
        save_error,
    });
}
