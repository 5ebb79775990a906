//! Helpers shared by the integration tests: configs, deterministic payloads,
//! draining a spool the way the broker will, and a tiny seeded PRNG.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tributary_bridge::spool::format::segment_file_name;
use tributary_bridge::spool::{Position, Spool, SpoolConfig};

pub fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        segment_bytes,
        ..SpoolConfig::new(dir, max_bytes)
    }
}

/// Payload for entry number `i`: self-describing and of varying length, so a
/// misplaced or truncated entry cannot compare equal to the expected one.
pub fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("entry-{i}-").into_bytes();
    let extra = (i * 37 % 150) as usize;
    p.extend((0..extra).map(|k| (k as u64 + i) as u8));
    p
}

/// Entry number encoded by `payload`.
pub fn payload_index(p: &[u8]) -> u64 {
    let s =
        std::str::from_utf8(&p[6..p.iter().skip(6).position(|b| *b == b'-').unwrap() + 6]).unwrap();
    s.parse().unwrap()
}

/// Everything pending, read the way the drain loop does, in small pages so
/// that `next` chaining across records, holes and segments is exercised.
pub fn read_all(spool: &mut Spool) -> Vec<(Position, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = spool.read_start();
    loop {
        let batch = spool.read(from, 7, 600).unwrap();
        if batch.entries.is_empty() {
            return out;
        }
        from = batch.next;
        out.extend(batch.entries);
    }
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(segment_file_name(id))
}

pub fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".spool"))
        .collect();
    names.sort();
    names
}

/// xorshift64*: deterministic per seed, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn from_time() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        eprintln!("rng seed {seed}");
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}
