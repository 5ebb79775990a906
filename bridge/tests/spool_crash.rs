//! Crash safety: a child process appends (fsync Always) and commits, printing
//! each acknowledged position; it is SIGKILLed at a random moment; the parent
//! reopens the spool and checks that every acknowledged entry is still there,
//! with the right content and in order, and that acknowledged commits held.

#[path = "spool/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{config, payload, payload_index, read_all, Rng};
use tributary_bridge::spool::{Position, Spool};

const CHILD_DIR: &str = "SPOOL_CRASH_CHILD_DIR";
const CHILD_START: &str = "SPOOL_CRASH_CHILD_START";

/// Segment size small enough that the children roll segments (and commit
/// deletes them) many times per run.
const SEGMENT_BYTES: u64 = 512 * 1024;

/// Entry `i`: the common self-describing payload plus up to 6 KB of filler,
/// so that batches span many pages and a kill can land inside one write.
fn crash_payload(i: u64) -> Vec<u8> {
    let mut p = payload(i);
    p.extend(std::iter::repeat_n(
        (i % 251) as u8,
        (i * 7919 % 6000) as usize,
    ));
    p
}

/// Not a test on its own: the body of the child process. It appends until
/// killed, printing `ACK <segment> <offset> <index>` after each append
/// returns and `COMMIT <segment> <offset>` after each commit returns.
#[test]
#[ignore = "child process of crash_sigkill_loses_nothing_acknowledged"]
fn crash_child() {
    let (Ok(dir), Ok(start)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_START)) else {
        return;
    };
    let mut i: u64 = start.parse().unwrap();
    let (mut spool, _) = Spool::open(config(dir.as_ref(), 1 << 30, SEGMENT_BYTES)).unwrap();
    let mut out = std::io::stdout().lock();
    let mut acked: Vec<Position> = Vec::new();
    loop {
        let n = if i.is_multiple_of(10) { 64 } else { 1 + i % 13 };
        let batch: Vec<Vec<u8>> = (i..i + n).map(crash_payload).collect();
        let refs: Vec<&[u8]> = batch.iter().map(|b| b.as_slice()).collect();
        let pos = spool.append(&refs).unwrap();
        i += n;
        writeln!(out, "ACK {} {} {}", pos.segment, pos.offset, i - 1).unwrap();
        out.flush().unwrap();
        acked.push(pos);
        // Every few batches, commit one from a while back, as a drain would.
        if acked.len().is_multiple_of(5) && acked.len() > 20 {
            let upto = acked[acked.len() - 20];
            spool.commit(upto).unwrap();
            writeln!(out, "COMMIT {} {}", upto.segment, upto.offset).unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn crash_sigkill_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::from_time();
    let mut acked: BTreeMap<Position, u64> = BTreeMap::new();
    let mut last_commit: Option<Position> = None;
    let mut next_index = 0u64;
    let mut torn_rounds = 0;

    let rounds = std::env::var("SPOOL_CRASH_ROUNDS").map_or(12, |v| v.parse().unwrap());
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, tmp.path())
            .env(CHILD_START, next_index.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let kill_after = rng.range(5, 400);
        let mut seen = 0;
        let mut line = String::new();
        let mut handle = |line: &str, acked: &mut BTreeMap<Position, u64>| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["ACK", s, o, i] => {
                    let pos = Position {
                        segment: s.parse().unwrap(),
                        offset: o.parse().unwrap(),
                    };
                    acked.insert(pos, i.parse().unwrap());
                }
                ["COMMIT", s, o] => {
                    last_commit = Some(Position {
                        segment: s.parse().unwrap(),
                        offset: o.parse().unwrap(),
                    });
                }
                _ => {}
            }
        };
        while seen < kill_after {
            line.clear();
            if lines.read_line(&mut line).unwrap() == 0 {
                panic!("round {round}: child exited early");
            }
            if line.ends_with('\n') {
                handle(&line, &mut acked);
                seen += 1;
            }
        }
        // Let it run on for a random sliver of time so the kill lands anywhere
        // in append, fsync, roll or commit.
        std::thread::sleep(Duration::from_micros(rng.range(0, 3000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines printed before death were acknowledged too. A line cut short
        // (no newline) was not fully printed, so its append may not have returned.
        loop {
            line.clear();
            if lines.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if line.ends_with('\n') {
                handle(&line, &mut acked);
            }
        }

        let (mut spool, rec) = Spool::open(config(tmp.path(), 1 << 30, SEGMENT_BYTES)).unwrap();
        assert_eq!(rec.corrupt_records, 0, "round {round}: {rec:?}");
        let committed = spool.committed();
        assert!(committed >= last_commit, "round {round}: commit lost");
        let entries = read_all(&mut spool);
        let by_pos: BTreeMap<Position, u64> = entries
            .iter()
            .map(|(p, e)| (*p, payload_index(e)))
            .collect();
        for (pos, idx) in &acked {
            if committed.is_some_and(|c| *pos <= c) {
                continue;
            }
            assert_eq!(by_pos.get(pos), Some(idx), "round {round}: lost ack {pos}");
        }
        // In order and without gaps: indices run consecutively, and every
        // entry's content matches its index.
        for w in entries.windows(2) {
            assert_eq!(payload_index(&w[1].1), payload_index(&w[0].1) + 1);
        }
        for (_, e) in &entries {
            assert_eq!(*e, crash_payload(payload_index(e)));
        }
        let max_acked = acked.values().max().copied().unwrap_or(0);
        let max_on_disk = entries.last().map_or(0, |(_, e)| payload_index(e));
        next_index = max_acked.max(max_on_disk) + 1;
        drop(spool);
        eprintln!(
            "round {round}: {} acked, {} pending, truncated {} bytes",
            acked.len(),
            entries.len(),
            rec.truncated_bytes
        );
        torn_rounds += u32::from(rec.truncated_bytes > 0);
    }
    eprintln!("{torn_rounds} of {rounds} kills left a torn tail");
}
