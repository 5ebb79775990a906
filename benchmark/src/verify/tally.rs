//! The accounting behind `verify`: which stamps of a run were seen, how often,
//! and in what order. Pure bookkeeping; it never talks to Kafka.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context as _};

use super::{Verdict, MISSING_EXAMPLES};
use crate::manifest::Manifest;
use crate::payload::Stamp;

/// Running account of the stamps seen.
pub(super) struct Tally<'m> {
    manifest: &'m Manifest,
    /// Per connection, one bit per seq in `0..sent`: seen at least once.
    seen: HashMap<u32, Vec<u64>>,
    /// Stamps of this run outside the manifest (should not exist, but count).
    seen_outside: HashSet<(u32, u64)>,
    /// Highest seq per (partition, connection) so far.
    highest: HashMap<(usize, u32), u64>,
    found: u64,
    duplicates: u64,
    order_violations: u64,
}

impl<'m> Tally<'m> {
    /// Checks the manifest is coherent and makes room for its messages.
    pub(super) fn new(manifest: &'m Manifest) -> anyhow::Result<Tally<'m>> {
        let mut seen = HashMap::new();
        for (&connection, account) in &manifest.connections {
            let distinct: HashSet<u64> = account.unacked.iter().copied().collect();
            if distinct.len() != account.unacked.len() {
                bail!("manifest: connection {connection} lists an unacked seq twice");
            }
            if let Some(seq) = account.unacked.iter().find(|&&seq| seq >= account.sent) {
                bail!(
                    "manifest: connection {connection} lists unacked seq {seq} but sent only {}",
                    account.sent
                );
            }
            let words = usize::try_from(account.sent.div_ceil(64))
                .context("manifest: too many messages")?;
            let mut bits = Vec::new();
            if bits.try_reserve_exact(words).is_err() {
                bail!(
                    "manifest: connection {connection} claims {} messages, too many to account for",
                    account.sent
                );
            }
            bits.resize(words, 0u64);
            seen.insert(connection, bits);
        }
        Ok(Tally {
            manifest,
            seen,
            seen_outside: HashSet::new(),
            highest: HashMap::new(),
            found: 0,
            duplicates: 0,
            order_violations: 0,
        })
    }

    /// Accounts for one stamp read from partition number `partition`; returns
    /// whether it belongs to this run.
    pub(super) fn see(&mut self, partition: usize, stamp: Stamp) -> bool {
        if stamp.run_id != self.manifest.run_id {
            return false;
        }
        let first = self.mark(stamp.connection, stamp.seq);
        if first {
            self.found += 1;
        } else {
            self.duplicates += 1;
        }
        let highest = self
            .highest
            .entry((partition, stamp.connection))
            .or_insert(stamp.seq);
        if stamp.seq > *highest {
            *highest = stamp.seq;
        } else if stamp.seq < *highest && first {
            // A redelivered copy arriving late is at-least-once, not disorder.
            self.order_violations += 1;
        }
        true
    }

    /// Marks a stamp seen; true on its first sighting.
    fn mark(&mut self, connection: u32, seq: u64) -> bool {
        let sent = self
            .manifest
            .connections
            .get(&connection)
            .map_or(0, |account| account.sent);
        match self.seen.get_mut(&connection) {
            // seq < sent, so the word index fits in the vector.
            Some(bits) if seq < sent => {
                let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                let first = bits[word] & bit == 0;
                bits[word] |= bit;
                first
            }
            _ => self.seen_outside.insert((connection, seq)),
        }
    }

    pub(super) fn finish(self) -> Verdict {
        let mut missing = 0;
        let mut missing_examples = Vec::new();
        for (&connection, account) in &self.manifest.connections {
            let unacked: HashSet<u64> = account.unacked.iter().copied().collect();
            let bits = &self.seen[&connection];
            for seq in 0..account.sent {
                let seen = bits[(seq / 64) as usize] & (1u64 << (seq % 64)) != 0;
                if !seen && !unacked.contains(&seq) {
                    missing += 1;
                    if missing_examples.len() < MISSING_EXAMPLES {
                        missing_examples.push((connection, seq));
                    }
                }
            }
        }
        Verdict {
            expected: self.manifest.acknowledged(),
            found: self.found,
            missing,
            duplicates: self.duplicates,
            order_violations: self.order_violations,
            missing_examples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ConnectionAccount;

    fn stamp(connection: u32, seq: u64) -> Stamp {
        Stamp {
            run_id: 9,
            connection,
            seq,
        }
    }

    #[test]
    fn tally_counts_missing_duplicates_and_disorder() {
        let mut manifest = Manifest {
            run_id: 9,
            qos: 1,
            ..Manifest::default()
        };
        for (connection, unacked) in [(0, vec![4]), (1, vec![])] {
            let account = ConnectionAccount { sent: 5, unacked };
            manifest.connections.insert(connection, account);
        }
        let mut tally = Tally::new(&manifest).expect("coherent manifest");
        // Connection 0: 0 1 3 2(late, first) 3(dup); 4 unacked and absent.
        for seq in [0, 1, 3, 2, 3] {
            assert!(tally.see(0, stamp(0, seq)));
        }
        // Connection 1 spread over two partitions, each in order; 2 is missing.
        for (partition, seq) in [(0, 0), (1, 1), (0, 3), (1, 4), (1, 0)] {
            tally.see(partition, stamp(1, seq));
        }
        assert!(!tally.see(
            0,
            Stamp {
                run_id: 8,
                ..stamp(0, 0)
            }
        ));
        let verdict = tally.finish();
        assert_eq!(verdict.expected, 9);
        assert_eq!(verdict.found, 8);
        assert_eq!(verdict.missing, 1);
        assert_eq!(verdict.missing_examples, vec![(1, 2)]);
        // 3 of connection 0 twice, and 0 of connection 1 again in partition 1.
        assert_eq!(verdict.duplicates, 2);
        assert_eq!(verdict.order_violations, 1);
        assert!(!verdict.passes(false));
    }

    #[test]
    fn incoherent_manifests_are_refused() {
        let mut manifest = Manifest::default();
        let account = ConnectionAccount {
            sent: 3,
            unacked: vec![3],
        };
        manifest.connections.insert(0, account);
        assert!(Tally::new(&manifest).is_err());
    }
}
