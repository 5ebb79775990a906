//! Errors of the spool, one variant per outcome the caller must treat
//! differently (back-pressure, retry later, reopen, operator action).
//!
//! It must never lose the path or the OS error behind a failure: every I/O
//! variant carries the file it concerns.

use std::io;
use std::path::{Path, PathBuf};

use crate::spool::format::Position;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Accepting the batch would take the segment files past `max_bytes`.
    /// Nothing of the batch was written; commit (drain) to free space.
    #[error("spool full: {on_disk} bytes on disk + {needed} needed > max_bytes {max_bytes}")]
    Full {
        needed: u64,
        on_disk: u64,
        max_bytes: u64,
    },

    /// The batch alone is larger than `max_bytes` allows: it can never fit,
    /// however much is drained, so retrying it is pointless.
    #[error("batch of {needed} bytes can never fit in max_bytes {max_bytes}")]
    BatchTooLarge { needed: u64, max_bytes: u64 },

    /// One entry exceeds the configured `max_entry_bytes`.
    #[error("entry of {len} bytes exceeds max_entry_bytes {max}")]
    EntryTooLarge { len: usize, max: u32 },

    /// `append` was given no entries, so there is no position to return.
    #[error("empty batch")]
    EmptyBatch,

    /// The file system ran out of space (or quota). The partial write was
    /// rolled back: the spool is unchanged and the batch may be retried.
    #[error("disk full writing {path}: {source}")]
    DiskFull {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A record that was valid when the spool was opened or appended no longer
    /// checks out (the disk changed it underneath). Reopening the spool moves
    /// it aside into `corrupt/` and draining continues past it.
    #[error("corrupt record in {path} at offset {offset}; reopen the spool to quarantine it")]
    Corrupt { path: PathBuf, offset: u64 },

    /// The position does not name a record of this spool (for `commit`), e.g.
    /// it was not returned by `append`/`read`.
    #[error("position {0} is not a record in this spool")]
    InvalidPosition(Position),

    /// A segment was written by a different format version; the spool is left
    /// untouched rather than misread.
    #[error("{path} has unsupported format version {version}")]
    UnsupportedVersion { path: PathBuf, version: u8 },

    /// Another `Spool` (in this or another process) holds the directory.
    #[error("spool directory {path} is locked by another open spool")]
    Locked { path: PathBuf },

    /// An earlier fsync failed, or a failed write could not be rolled back.
    /// After a failed fsync the kernel may have dropped the dirty pages, so
    /// what is on disk is unknown: appends are refused until the spool is
    /// reopened, which re-validates every record. Reads and commits still work.
    #[error("spool must be reopened: {reason}")]
    Poisoned { reason: String },

    #[error("invalid spool configuration: {0}")]
    Config(&'static str),

    /// The spool's thread is gone (it stops only when every handle is
    /// dropped, or if it panicked).
    #[error("the spool's thread has stopped")]
    Stopped,
}

impl SpoolError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
        move |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// For errors from writes that add data: "no space" becomes `DiskFull`,
    /// which tells the caller the spool is intact and the batch can be retried.
    pub(crate) fn write(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
        move |source| {
            if is_no_space(&source) {
                SpoolError::DiskFull {
                    path: path.to_path_buf(),
                    source,
                }
            } else {
                SpoolError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        }
    }
}

/// ENOSPC or EDQUOT.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
