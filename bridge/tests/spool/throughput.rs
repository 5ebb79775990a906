//! Throughput and fsync latency on this machine's disk (ignored; run with
//! `cargo test --release --test throughput -- --ignored --nocapture`).
//! Set SPOOL_BENCH_DIR to measure a specific file system (default: temp dir).

use crate::common;

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use common::config;
use tributary_bridge::spool::Spool;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("SPOOL_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn run(batch: usize, batches: usize) {
    let tmp = bench_dir();
    let (mut spool, _) = Spool::open(config(tmp.path(), 1 << 34, 64 << 20)).unwrap();
    let entry = vec![0xA5u8; 200];
    let refs: Vec<&[u8]> = (0..batch).map(|_| entry.as_slice()).collect();
    let mut lat = Vec::with_capacity(batches);
    let start = Instant::now();
    for _ in 0..batches {
        let t = Instant::now();
        spool.append(&refs).unwrap();
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    println!(
        "batch {batch:>3} x 200 B, fsync Always: {:>9.0} entries/s, {:>7.0} appends/s; \
         append (write+fdatasync) p50 {:?} p99 {:?} max {:?}",
        (batch * batches) as f64 / total.as_secs_f64(),
        batches as f64 / total.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
    );

    // Recovery speed: reopen validates every record (header + CRC).
    let bytes = spool.stats().bytes_on_disk;
    drop(spool);
    let t = Instant::now();
    let (mut spool, rec) = Spool::open(config(tmp.path(), 1 << 34, 64 << 20)).unwrap();
    let took = t.elapsed();
    assert_eq!(rec.records, (batch * batches) as u64);
    println!(
        "          reopen: {} records, {:.1} MB in {:?} ({:.0} MB/s)",
        rec.records,
        bytes as f64 / 1e6,
        took,
        bytes as f64 / 1e6 / took.as_secs_f64()
    );

    // Drain speed, for scale: read everything back and commit per 500.
    let t = Instant::now();
    let mut from = spool.read_start();
    let mut n = 0;
    loop {
        let b = spool.read(from, 500, 1 << 20).unwrap();
        let Some((last, _)) = b.entries.last() else {
            break;
        };
        spool.commit(*last).unwrap();
        n += b.entries.len();
        from = b.next;
    }
    println!(
        "          drain (read 500 + commit): {:>9.0} entries/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
}

/// The disk's own fdatasync latency for a 12.8 KB append, without the spool.
fn raw_fdatasync(iterations: usize) {
    let tmp = bench_dir();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.path().join("raw"))
        .unwrap();
    let buf = vec![0u8; 64 * 220];
    let mut lat = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        f.write_all(&buf).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "raw fdatasync after 14 KB append: p50 {:?} p99 {:?} max {:?}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
}

#[test]
#[ignore = "measurement; prints numbers"]
fn throughput() {
    raw_fdatasync(2000);
    run(64, 4000);
    run(1, 5000);
}
