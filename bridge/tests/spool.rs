//! Behaviour of the spool as its user (the broker's drain and ingest paths)
//! observes it: round trips, recovery from torn and corrupt files, limits.

#[path = "spool/common.rs"]
mod common;
#[path = "spool/disk_full.rs"]
mod disk_full;
#[path = "spool/throughput.rs"]
mod throughput;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::{config, payload, read_all, segment_files, segment_path, Rng};
use tributary_bridge::spool::format::{
    encode_segment_header, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use tributary_bridge::spool::{FsyncPolicy, Position, Spool, SpoolConfig, SpoolError};

/// Appends entries `0..n` in batches of 1..=4 and returns (position, payload)
/// for every entry, positions derived from the returned last positions.
fn fill(spool: &mut Spool, n: u64) -> Vec<(Position, Vec<u8>)> {
    let mut expected = Vec::new();
    let mut i = 0;
    while i < n {
        let k = (1 + i % 4).min(n - i);
        let batch: Vec<Vec<u8>> = (i..i + k).map(payload).collect();
        let refs: Vec<&[u8]> = batch.iter().map(|b| b.as_slice()).collect();
        let last = spool.append(&refs).unwrap();
        // Entries of a batch are contiguous and end with the returned one.
        let before_last: u64 = batch[..batch.len() - 1]
            .iter()
            .map(|b| RECORD_HEADER_LEN + b.len() as u64)
            .sum();
        let mut off = last.offset - before_last;
        let mut positions = Vec::new();
        for b in &batch {
            positions.push(Position {
                segment: last.segment,
                offset: off,
            });
            off += RECORD_HEADER_LEN + b.len() as u64;
        }
        expected.extend(positions.into_iter().zip(batch));
        i += k;
    }
    expected
}

fn open(cfg: &SpoolConfig) -> (Spool, tributary_bridge::spool::Recovery) {
    Spool::open(cfg.clone()).unwrap()
}

#[test]
fn round_trip_across_segments_commit_reopen_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1 << 20, 1024);
    let (mut spool, rec) = open(&cfg);
    assert_eq!(rec, tributary_bridge::spool::Recovery::default());

    let expected = fill(&mut spool, 120);
    assert!(
        expected.windows(2).all(|w| w[0].0 < w[1].0),
        "positions ordered"
    );
    let stats = spool.stats();
    assert!(stats.segments >= 5, "{stats:?}");
    assert_eq!(stats.records_pending, 120);
    assert_eq!(stats.oldest_pending_position, Some(expected[0].0));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ts = stats.oldest_pending_appended_at_ms.unwrap();
    assert!(ts <= now_ms && now_ms - ts < 60_000, "{ts} vs {now_ms}");
    assert_eq!(read_all(&mut spool), expected);

    // One big read returns the same, and `max_bytes` smaller than an entry
    // still makes progress one entry at a time.
    let all = spool
        .read(spool.read_start(), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(all.entries, expected);
    let one = spool.read(spool.read_start(), 10, 1).unwrap();
    assert_eq!(one.entries, expected[..1]);
    assert!(spool
        .read(spool.read_start(), 0, 100)
        .unwrap()
        .entries
        .is_empty());

    // Commit part-way: earlier segments go, the rest is pending.
    let k = 70;
    spool.commit(expected[k].0).unwrap();
    spool.commit(expected[3].0).unwrap(); // older position: no-op
    let stats = spool.stats();
    assert_eq!(stats.records_pending, 120 - k as u64 - 1);
    assert_eq!(stats.oldest_pending_position, Some(expected[k + 1].0));
    // Segments holding only committed records are gone; the first file left
    // is the one holding the first pending record.
    let first_kept = segment_files(tmp.path())[0].clone();
    assert_eq!(
        first_kept,
        tributary_bridge::spool::format::segment_file_name(expected[k + 1].0.segment)
    );
    assert_eq!(read_all(&mut spool), expected[k + 1..]);
    drop(spool);

    // Reopen: resumes after the committed cursor.
    let (mut spool, rec) = open(&cfg);
    assert_eq!(rec.records, 120 - k as u64 - 1);
    assert_eq!((rec.truncated_bytes, rec.corrupt_records), (0, 0));
    assert_eq!(spool.committed(), Some(expected[k].0));
    assert_eq!(read_all(&mut spool), expected[k + 1..]);

    // Commit everything: every segment file is deleted.
    spool.commit(expected[119].0).unwrap();
    assert!(segment_files(tmp.path()).is_empty());
    let stats = spool.stats();
    assert_eq!(
        (stats.bytes_on_disk, stats.records_pending, stats.segments),
        (0, 0, 0)
    );
    assert_eq!(stats.oldest_pending_position, None);
    assert!(read_all(&mut spool).is_empty());

    // Appending continues in a fresh segment with a higher id.
    let p = spool.append(&[b"after"]).unwrap();
    assert!(p > expected[119].0);
    drop(spool);
    let (mut spool, rec) = open(&cfg);
    assert_eq!(rec.records, 1);
    assert_eq!(read_all(&mut spool), vec![(p, b"after".to_vec())]);
}

#[test]
fn commit_rejects_positions_that_are_not_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(&config(tmp.path(), 1 << 20, 1 << 20));
    let expected = fill(&mut spool, 5);
    let mid = Position {
        segment: expected[2].0.segment,
        offset: expected[2].0.offset + 1,
    };
    assert!(matches!(
        spool.commit(mid),
        Err(SpoolError::InvalidPosition(_))
    ));
    let ghost = Position {
        segment: 99,
        offset: SEGMENT_HEADER_LEN,
    };
    assert!(matches!(
        spool.commit(ghost),
        Err(SpoolError::InvalidPosition(_))
    ));
    assert_eq!(spool.stats().records_pending, 5);
    spool.commit(expected[2].0).unwrap();
    assert_eq!(spool.stats().records_pending, 2);
}

#[test]
fn argument_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), 1 << 20, 1 << 20);
    cfg.max_entry_bytes = 100;
    let (mut spool, _) = open(&cfg);
    assert!(matches!(spool.append(&[]), Err(SpoolError::EmptyBatch)));
    let big = vec![0u8; 101];
    assert!(matches!(
        spool.append(&[b"ok", &big]),
        Err(SpoolError::EntryTooLarge { len: 101, .. })
    ));
    assert_eq!(spool.stats().records_pending, 0);
    assert!(segment_files(tmp.path()).is_empty(), "nothing written");
}

#[test]
fn second_open_is_refused_while_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1 << 20, 1 << 20);
    let (spool, _) = open(&cfg);
    assert!(matches!(
        Spool::open(cfg.clone()),
        Err(SpoolError::Locked { .. })
    ));
    drop(spool);
    open(&cfg);
}

#[test]
fn interval_policy_keeps_everything_across_clean_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), 1 << 20, 2048);
    cfg.fsync = FsyncPolicy::Interval(std::time::Duration::from_secs(3600));
    let (mut spool, _) = open(&cfg);
    let expected = fill(&mut spool, 60);
    spool.sync().unwrap();
    drop(spool);
    let (mut spool, rec) = open(&cfg);
    assert_eq!(rec.records, 60);
    assert_eq!(read_all(&mut spool), expected);
}

/// Returns the bytes of segment 1 holding `n` entries each appended alone.
fn single_segment(dir: &Path, n: u64) -> (Vec<(Position, Vec<u8>)>, Vec<u8>) {
    let cfg = config(dir, 1 << 20, 1 << 20);
    let (mut spool, _) = open(&cfg);
    let mut expected = Vec::new();
    for i in 0..n {
        let p = payload(i);
        let pos = spool.append(&[&p]).unwrap();
        expected.push((pos, p));
    }
    drop(spool);
    let bytes = fs::read(segment_path(dir, 1)).unwrap();
    (expected, bytes)
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record() {
    let src = tempfile::tempdir().unwrap();
    let (expected, bytes) = single_segment(src.path(), 6);
    let last = expected.last().unwrap().0.offset as usize;
    assert_eq!(
        bytes.len(),
        last + RECORD_HEADER_LEN as usize + expected[5].1.len()
    );

    for cut in last..bytes.len() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(segment_path(tmp.path(), 1), &bytes[..cut]).unwrap();
        let cfg = config(tmp.path(), 1 << 20, 1 << 20);
        let (mut spool, rec) = open(&cfg);
        assert_eq!(rec.records, 5, "cut {cut}");
        assert_eq!(rec.truncated_bytes, (cut - last) as u64, "cut {cut}");
        assert_eq!(rec.corrupt_records, 0, "cut {cut}");
        assert_eq!(read_all(&mut spool), expected[..5], "cut {cut}");
        assert_eq!(
            fs::metadata(segment_path(tmp.path(), 1)).unwrap().len(),
            last as u64
        );

        // The next append continues exactly where the valid data ends.
        let pos = spool.append(&[b"next"]).unwrap();
        assert_eq!(pos, expected[5].0, "cut {cut}");
        drop(spool);
        let (mut spool, rec) = open(&cfg);
        assert_eq!((rec.records, rec.truncated_bytes), (6, 0), "cut {cut}");
        let got = read_all(&mut spool);
        assert_eq!(got[..5], expected[..5]);
        assert_eq!(got[5], (pos, b"next".to_vec()));
    }
}

#[test]
fn torn_multi_record_batch_keeps_its_complete_records() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1 << 20, 1 << 20);
    let (mut spool, _) = open(&cfg);
    spool.append(&[b"a0", b"a1"]).unwrap();
    let batch: Vec<Vec<u8>> = (10..14).map(payload).collect();
    let refs: Vec<&[u8]> = batch.iter().map(|b| b.as_slice()).collect();
    let last = spool.append(&refs).unwrap();
    drop(spool);
    // Cut inside the third record of the batch.
    let third = last.offset - RECORD_HEADER_LEN - batch[2].len() as u64;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(segment_path(tmp.path(), 1))
        .unwrap();
    f.set_len(third + 7).unwrap();
    let (mut spool, rec) = open(&cfg);
    assert_eq!((rec.records, rec.truncated_bytes), (4, 7));
    let got: Vec<Vec<u8>> = read_all(&mut spool).into_iter().map(|e| e.1).collect();
    assert_eq!(
        got,
        vec![
            b"a0".to_vec(),
            b"a1".to_vec(),
            batch[0].clone(),
            batch[1].clone()
        ]
    );
}

/// Applies `damage` to segment 1 of a fresh 10-entry spool, opens it and
/// checks that exactly entry `victim` is reported corrupt and moved aside,
/// and every other entry reads back in order.
fn assert_one_corrupt(victim: usize, damage: impl Fn(&mut Vec<u8>, &[(Position, Vec<u8>)])) {
    let tmp = tempfile::tempdir().unwrap();
    let (expected, mut bytes) = single_segment(tmp.path(), 10);
    damage(&mut bytes, &expected);
    fs::write(segment_path(tmp.path(), 1), &bytes).unwrap();
    let start = expected[victim].0.offset as usize;
    let end = expected[victim + 1].0.offset as usize;

    let cfg = config(tmp.path(), 1 << 20, 1 << 20);
    let (mut spool, rec) = open(&cfg);
    assert_eq!(rec.corrupt_records, 1, "{rec:?}");
    assert_eq!(rec.corrupt_bytes, (end - start) as u64);
    assert_eq!((rec.records, rec.truncated_bytes), (9, 0));
    let saved = rec.corrupt[0].saved_to.clone().unwrap();
    assert_eq!(
        saved,
        tmp.path()
            .join("corrupt")
            .join(format!("00000000000000000001-{start}.bin"))
    );
    assert_eq!(fs::read(&saved).unwrap(), bytes[start..end]);

    let mut others = expected.clone();
    others.remove(victim);
    assert_eq!(read_all(&mut spool), others);
    // Committing across the hole and appending after it both work.
    spool.commit(expected[victim + 1].0).unwrap();
    assert_eq!(spool.stats().records_pending, 10 - victim as u64 - 2);
    let p = spool.append(&[b"tail"]).unwrap();
    drop(spool);

    // Reopen: the range is still skipped and still reported while pending,
    // but not copied a second time.
    let (mut spool, rec) = open(&cfg);
    assert_eq!(rec.corrupt_records, 0, "behind the cursor now: {rec:?}");
    let got = read_all(&mut spool);
    assert_eq!(got.last().unwrap(), &(p, b"tail".to_vec()));
    assert_eq!(got.len(), 10 - victim - 2 + 1);
    assert_eq!(fs::read_dir(tmp.path().join("corrupt")).unwrap().count(), 1);
}

#[test]
fn corrupt_payload_in_the_middle_is_moved_aside() {
    assert_one_corrupt(4, |bytes, expected| {
        let at = expected[4].0.offset as usize + RECORD_HEADER_LEN as usize + 3;
        bytes[at] ^= 0x01;
    });
}

#[test]
fn corrupt_timestamp_and_crc_fields_are_detected() {
    for field_at in [8usize, 12, 19] {
        assert_one_corrupt(3, |bytes, expected| {
            bytes[expected[3].0.offset as usize + field_at] ^= 0x80;
        });
    }
}

#[test]
fn corrupt_length_in_the_middle_resyncs_on_the_next_record() {
    for new_len in [u32::MAX, 1 << 29, 0, 1, 5000] {
        assert_one_corrupt(4, |bytes, expected| {
            let at = expected[4].0.offset as usize + 4;
            bytes[at..at + 4].copy_from_slice(&new_len.to_le_bytes());
        });
    }
    // Longer and shorter by a little, still inside the file.
    for delta in [-3i64, 7, 40] {
        assert_one_corrupt(4, |bytes, expected| {
            let at = expected[4].0.offset as usize + 4;
            let len = expected[4].1.len() as i64 + delta;
            bytes[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
        });
    }
    // Magic destroyed.
    assert_one_corrupt(2, |bytes, expected| {
        bytes[expected[2].0.offset as usize] = 0;
    });
}

#[test]
fn corrupt_reopen_before_commit_reports_again_without_copying_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (expected, mut bytes) = single_segment(tmp.path(), 5);
    bytes[expected[1].0.offset as usize + 25] ^= 0xff;
    fs::write(segment_path(tmp.path(), 1), &bytes).unwrap();
    let cfg = config(tmp.path(), 1 << 20, 1 << 20);
    for _ in 0..2 {
        let (mut spool, rec) = open(&cfg);
        assert_eq!(rec.corrupt_records, 1);
        assert_eq!(read_all(&mut spool).len(), 4);
    }
    assert_eq!(fs::read_dir(tmp.path().join("corrupt")).unwrap().count(), 1);
}

#[test]
fn damaged_end_of_a_non_last_segment_is_corruption_not_a_tear() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1 << 20, 600);
    let (mut spool, _) = open(&cfg);
    let expected = fill(&mut spool, 30);
    drop(spool);
    // Last record of segment 1.
    let victim = expected.iter().rposition(|(p, _)| p.segment == 1).unwrap();
    assert!(expected.last().unwrap().0.segment > 1);
    let path = segment_path(tmp.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    let end = bytes.len();
    bytes[end - 1] ^= 0x10;
    fs::write(&path, &bytes).unwrap();

    let (mut spool, rec) = open(&cfg);
    assert_eq!(
        (rec.corrupt_records, rec.truncated_bytes),
        (1, 0),
        "{rec:?}"
    );
    let mut others = expected.clone();
    others.remove(victim);
    assert_eq!(read_all(&mut spool), others);
}

#[test]
fn damaged_segment_header_is_reported_and_records_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let (expected, mut bytes) = single_segment(tmp.path(), 5);
    bytes[9] ^= 0x04; // segment id
    fs::write(segment_path(tmp.path(), 1), &bytes).unwrap();
    let cfg = config(tmp.path(), 1 << 20, 1 << 20);
    let (mut spool, rec) = open(&cfg);
    assert_eq!(
        (rec.corrupt_records, rec.corrupt_bytes),
        (1, SEGMENT_HEADER_LEN)
    );
    assert_eq!(read_all(&mut spool), expected);
    drop(spool);
    // Repaired: not reported again.
    let (_, rec) = open(&cfg);
    assert_eq!(rec.corrupt_records, 0);
}

#[test]
fn garbage_only_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed);
    let garbage: Vec<u8> = (0..10_000).map(|_| rng.next() as u8).collect();
    fs::write(segment_path(tmp.path(), 1), &garbage).unwrap();
    let cfg = config(tmp.path(), 1 << 20, 1 << 20);
    let (mut spool, rec) = open(&cfg);
    assert_eq!(rec.records, 0);
    assert_eq!(rec.corrupt_records, 1, "the header: {rec:?}");
    assert_eq!(rec.truncated_bytes, 10_000 - SEGMENT_HEADER_LEN);
    assert!(read_all(&mut spool).is_empty());
    let p = spool.append(&[b"fresh"]).unwrap();
    drop(spool);
    let (mut spool, rec) = open(&cfg);
    assert_eq!(
        (rec.records, rec.corrupt_records, rec.truncated_bytes),
        (1, 0, 0)
    );
    assert_eq!(read_all(&mut spool), vec![(p, b"fresh".to_vec())]);
}

#[test]
fn empty_and_partial_header_last_segment_are_reinitialised() {
    for len in [0usize, 1, 7, 19] {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            segment_path(tmp.path(), 1),
            &encode_segment_header(1)[..len],
        )
        .unwrap();
        let cfg = config(tmp.path(), 1 << 20, 1 << 20);
        let (mut spool, rec) = open(&cfg);
        assert_eq!(rec.records, 0);
        assert_eq!(rec.truncated_bytes, len as u64);
        assert_eq!(rec.corrupt_records, 0);
        let p = spool.append(&[b"x"]).unwrap();
        assert_eq!(
            p,
            Position {
                segment: 1,
                offset: SEGMENT_HEADER_LEN
            }
        );
        drop(spool);
        let (mut spool, rec) = open(&cfg);
        assert_eq!((rec.records, rec.truncated_bytes), (1, 0));
        assert_eq!(read_all(&mut spool).len(), 1);
    }
}

#[test]
fn empty_partial_and_garbage_segments_between_valid_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1 << 20, 400);
    let (mut spool, _) = open(&cfg);
    let expected = fill(&mut spool, 20);
    drop(spool);
    let last_seg = expected.last().unwrap().0.segment;
    assert!(last_seg >= 5);
    fs::write(segment_path(tmp.path(), 2), b"").unwrap();
    fs::write(segment_path(tmp.path(), 3), &encode_segment_header(3)[..7]).unwrap();
    let mut rng = Rng(42);
    let garbage: Vec<u8> = (0..3000).map(|_| rng.next() as u8).collect();
    fs::write(segment_path(tmp.path(), 4), &garbage).unwrap();
    // Things that are not segments are ignored.
    fs::write(tmp.path().join("notes.txt"), b"hello").unwrap();
    fs::create_dir(tmp.path().join("00000000000000000099.spool")).unwrap();

    let (mut spool, rec) = open(&cfg);
    let survivors: Vec<_> = expected
        .iter()
        .filter(|(p, _)| ![2, 3, 4].contains(&p.segment))
        .cloned()
        .collect();
    assert_eq!(read_all(&mut spool), survivors);
    // Segment 3's 7 bytes, segment 4's header, segment 4's body.
    assert_eq!(rec.corrupt_records, 3, "{rec:?}");
    assert_eq!(rec.corrupt_bytes, 7 + 3000);
    assert_eq!(rec.truncated_bytes, 0);
    let p = spool.append(&[b"more"]).unwrap();
    assert!(p > expected.last().unwrap().0);
}

#[test]
fn unsupported_version_is_an_error_not_a_misread() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut bytes) = single_segment(tmp.path(), 2);
    bytes[4] = 9;
    let crc = crc32c::crc32c(&bytes[..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    fs::write(segment_path(tmp.path(), 1), &bytes).unwrap();
    let err = Spool::open(config(tmp.path(), 1 << 20, 1 << 20))
        .err()
        .unwrap();
    assert!(
        matches!(err, SpoolError::UnsupportedVersion { version: 9, .. }),
        "{err:?}"
    );
    // The file was not touched.
    assert_eq!(fs::read(segment_path(tmp.path(), 1)).unwrap(), bytes);
}

#[test]
fn damaged_cursor_file_replays_instead_of_losing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1 << 20, 800);
    let (mut spool, _) = open(&cfg);
    let expected = fill(&mut spool, 40);
    spool.commit(expected[25].0).unwrap();
    drop(spool);
    let cursor = tmp.path().join("cursor");
    let mut c = fs::read(&cursor).unwrap();
    c[10] ^= 1;
    fs::write(&cursor, &c).unwrap();

    let (mut spool, rec) = open(&cfg);
    assert!(rec.cursor_reset);
    let got = read_all(&mut spool);
    // Everything uncommitted is there, after some already-delivered replays.
    assert!(got.len() > 40 - 26);
    assert_eq!(got[..], expected[40 - got.len()..]);
}

#[test]
fn full_refuses_whole_batch_and_recovers_after_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 3000, 700);
    let (mut spool, _) = open(&cfg);
    let entry = vec![7u8; 100];
    let mut positions = Vec::new();
    let full = loop {
        match spool.append(&[&entry, &entry]) {
            Ok(p) => positions.push(p),
            Err(e) => break e,
        }
    };
    assert!(matches!(full, SpoolError::Full { .. }), "{full:?}");
    let sizes = |dir: &Path| -> BTreeMap<String, u64> {
        segment_files(dir)
            .into_iter()
            .map(|n| {
                let len = fs::metadata(dir.join(&n)).unwrap().len();
                (n, len)
            })
            .collect()
    };
    let before = sizes(tmp.path());
    let stats = spool.stats();
    assert!(stats.bytes_on_disk <= 3000);
    assert!(matches!(
        spool.append(&[&entry]),
        Err(SpoolError::Full { .. })
    ));
    assert!(matches!(
        spool.append(&[b"x"]),
        Err(SpoolError::Full { .. })
    ));
    assert_eq!(
        sizes(tmp.path()),
        before,
        "nothing of a refused batch is written"
    );
    assert_eq!(spool.stats(), stats);
    // The refused appends wrote nothing: reopen finds only accepted records.
    let pending = spool.stats().records_pending;
    drop(spool);
    let (mut spool, rec) = open(&cfg);
    assert_eq!(rec.records, pending);
    assert_eq!(rec.truncated_bytes, 0);

    // A batch that can never fit is told apart from a full spool.
    let huge = vec![0u8; 4000];
    assert!(matches!(
        spool.append(&[&huge]),
        Err(SpoolError::BatchTooLarge { .. })
    ));

    // Draining the first segment frees its space.
    let first_seg_last = *positions
        .iter()
        .filter(|p| p.segment == positions[0].segment)
        .max()
        .unwrap();
    spool.commit(first_seg_last).unwrap();
    assert!(spool.stats().bytes_on_disk < stats.bytes_on_disk);
    spool.append(&[&entry, &entry]).unwrap();
}

#[test]
fn full_spool_drains_to_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 2000, 1 << 20);
    let (mut spool, _) = open(&cfg);
    let mut last = None;
    while let Ok(p) = spool.append(&[&[1u8; 150]]) {
        last = Some(p);
    }
    // One segment holding everything: only a full commit frees it.
    spool.commit(last.unwrap()).unwrap();
    assert_eq!(spool.stats().bytes_on_disk, 0);
    spool.append(&[&[1u8; 150]]).unwrap();
}

/// Random damage to a multi-segment spool: open never fails or panics, every
/// entry returned is exactly an original entry at its original position, and
/// every original entry whose bytes were not touched is returned.
#[test]
fn random_damage_never_panics_or_invents_records() {
    let src = tempfile::tempdir().unwrap();
    let cfg = config(src.path(), 1 << 20, 900);
    let (mut spool, _) = open(&cfg);
    let expected = fill(&mut spool, 60);
    drop(spool);
    let segs = expected.last().unwrap().0.segment;
    let originals: Vec<Vec<u8>> = (1..=segs)
        .map(|id| fs::read(segment_path(src.path(), id)).unwrap())
        .collect();
    let by_pos: BTreeMap<Position, Vec<u8>> = expected.iter().cloned().collect();

    let mut rng = Rng::from_time();
    let rounds = std::env::var("SPOOL_FUZZ_ROUNDS").map_or(150, |v| v.parse().unwrap());
    for round in 0..rounds {
        let tmp = tempfile::tempdir().unwrap();
        let mut files = originals.clone();
        for _ in 0..rng.range(1, 4) {
            let s = rng.range(0, files.len() as u64) as usize;
            let f = &mut files[s];
            if f.is_empty() {
                continue;
            }
            let at = rng.range(0, f.len() as u64) as usize;
            match rng.range(0, 4) {
                0 => f[at] ^= 1 << rng.range(0, 8),
                1 => {
                    let end = (at + rng.range(1, 64) as usize).min(f.len());
                    for b in &mut f[at..end] {
                        *b = rng.next() as u8;
                    }
                }
                2 => {
                    let end = (at + rng.range(1, 300) as usize).min(f.len());
                    f[at..end].fill(0);
                }
                _ => f.truncate(at),
            }
        }
        for (i, f) in files.iter().enumerate() {
            fs::write(segment_path(tmp.path(), i as u64 + 1), f).unwrap();
        }
        let cfg = config(tmp.path(), 1 << 20, 900);
        let (mut spool, rec) =
            Spool::open(cfg.clone()).unwrap_or_else(|e| panic!("round {round}: open failed: {e}"));
        let got = read_all(&mut spool);
        for (pos, p) in &got {
            assert_eq!(by_pos.get(pos), Some(p), "round {round}: invented {pos}");
        }
        let got_pos: Vec<Position> = got.iter().map(|e| e.0).collect();
        let intact: Vec<Position> = expected
            .iter()
            .filter(|(pos, p)| {
                // Intact: every byte of the record is still there, unchanged.
                let s = pos.segment as usize - 1;
                let start = pos.offset as usize;
                let end = start + RECORD_HEADER_LEN as usize + p.len();
                files[s].get(start..end) == Some(&originals[s][start..end])
            })
            .map(|e| e.0)
            .collect();
        assert_eq!(got_pos, intact, "round {round}: {rec:?}");
        assert_eq!(rec.records, intact.len() as u64);
        // Still usable.
        let p = spool.append(&[b"after damage"]).unwrap();
        drop(spool);
        let (mut spool, _) = Spool::open(cfg).unwrap();
        assert_eq!(read_all(&mut spool).last().unwrap().0, p, "round {round}");
    }
}
