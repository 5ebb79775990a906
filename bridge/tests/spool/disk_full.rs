//! Real ENOSPC (ignored: needs a small file system). Run as root with e.g.
//! `mount -t tmpfs -o size=256k tmpfs /mnt/x` and
//! `SPOOL_SMALL_FS=/mnt/x cargo test --test disk_full -- --ignored`.

use crate::common;

use common::{config, read_all};
use tributary_bridge::spool::{Spool, SpoolError};

#[test]
#[ignore = "needs SPOOL_SMALL_FS pointing at a small, empty file system"]
fn enospc_rolls_back_and_the_spool_stays_valid() {
    let Some(dir) = std::env::var_os("SPOOL_SMALL_FS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join("spool");
    let cfg = config(&dir, 1 << 40, 1 << 40);
    let (mut spool, _) = Spool::open(cfg.clone()).unwrap();
    let entry = vec![3u8; 3000];
    let mut accepted = 0u64;
    let err = loop {
        match spool.append(&[&entry, &entry, &entry]) {
            Ok(_) => accepted += 3,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SpoolError::DiskFull { .. }), "{err:?}");
    // Smaller batches may still fit; the spool keeps working until they don't.
    while spool.append(&[b"small"]).is_ok() {
        accepted += 1;
    }
    assert_eq!(spool.stats().records_pending, accepted);
    drop(spool);
    let (mut spool, rec) = Spool::open(cfg).unwrap();
    assert_eq!((rec.records, rec.truncated_bytes), (accepted, 0), "{rec:?}");
    assert_eq!(read_all(&mut spool).len() as u64, accepted);
    println!("accepted {accepted} entries before ENOSPC; reopen clean");
}
