//! Small durable file operations: directory fsync, the atomic cursor file,
//! and copying a damaged byte range into `corrupt/`.
//!
//! Each operation either completes durably or leaves the previous state in
//! place; none may leave a half-written cursor visible under its real name.
//! It never touches segment contents (only reads them for quarantine).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::spool::error::SpoolError;
use crate::spool::format::{
    corrupt_file_name, decode_cursor, encode_cursor, Cursor, CORRUPT_DIR, CURSOR_FILE, CURSOR_LEN,
    CURSOR_TMP_FILE,
};

/// Makes creations, renames and deletions inside `dir` survive a power cut:
/// fsyncing a file does not persist its directory entry.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SpoolError::io(dir))
}

/// Reads the committed cursor. `Ok((None, false))`: none was ever written.
/// `Ok((None, true))`: the file exists but is not a valid cursor; the caller
/// then re-drains from the oldest segment (duplicates, never loss).
pub(crate) fn load_cursor(dir: &Path) -> Result<(Option<Cursor>, bool), SpoolError> {
    let path = dir.join(CURSOR_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, false)),
        Err(e) => return Err(SpoolError::io(&path)(e)),
    };
    // Read at most one byte more than a cursor, so an oversized (damaged)
    // file is rejected without reading all of it.
    let mut buf = Vec::with_capacity(CURSOR_LEN + 1);
    file.take(CURSOR_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(SpoolError::io(&path))?;
    let cursor = decode_cursor(&buf);
    let reset = cursor.is_none();
    Ok((cursor, reset))
}

/// Persists the cursor atomically: write a temp file, fsync it, rename it
/// over the old one, fsync the directory. A crash at any point leaves either
/// the old or the new cursor, both valid.
pub(crate) fn store_cursor(dir: &Path, cursor: &Cursor) -> Result<(), SpoolError> {
    let tmp = dir.join(CURSOR_TMP_FILE);
    let dst = dir.join(CURSOR_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(SpoolError::write(&tmp))?;
    f.write_all(&encode_cursor(cursor))
        .and_then(|()| f.sync_all())
        .map_err(SpoolError::write(&tmp))?;
    drop(f);
    fs::rename(&tmp, &dst).map_err(SpoolError::io(&dst))?;
    sync_dir(dir)
}

/// Copies `[start, end)` of a segment into `corrupt/<segment>-<start>.bin` and
/// returns that path. Idempotent: a range quarantined by an earlier open (same
/// name, same size) is not copied again.
pub(crate) fn quarantine(
    dir: &Path,
    segment: u64,
    seg_path: &Path,
    file: &File,
    start: u64,
    end: u64,
) -> Result<PathBuf, SpoolError> {
    let cdir = dir.join(CORRUPT_DIR);
    fs::create_dir_all(&cdir).map_err(SpoolError::write(&cdir))?;
    let dst = cdir.join(corrupt_file_name(segment, start));
    let len = end.saturating_sub(start);
    if fs::metadata(&dst).is_ok_and(|m| m.len() == len) {
        return Ok(dst);
    }
    let tmp = dst.with_extension("bin.tmp");
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(SpoolError::write(&tmp))?;
    // Copy in bounded chunks: a damaged range can be as large as a segment.
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = start;
    while at < end {
        let n = usize::try_from((end - at).min(chunk.len() as u64)).unwrap_or(0);
        let Some(piece) = chunk.get_mut(..n) else {
            break;
        };
        if piece.is_empty() {
            break;
        }
        file.read_exact_at(piece, at)
            .map_err(SpoolError::io(seg_path))?;
        out.write_all(piece).map_err(SpoolError::write(&tmp))?;
        at += n as u64;
    }
    out.sync_all().map_err(SpoolError::write(&tmp))?;
    drop(out);
    fs::rename(&tmp, &dst).map_err(SpoolError::io(&dst))?;
    sync_dir(&cdir)?;
    Ok(dst)
}
