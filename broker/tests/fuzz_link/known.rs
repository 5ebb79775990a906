//! Bugs the fuzz target found and that are not fixed yet, each with its
//! regression test in `fuzz_regressions.rs`. With `FUZZ_SKIP_KNOWN=1` inputs
//! that would hit one are skipped (and counted), so a long run goes on finding
//! new bugs instead of the same one; without it they run like any other input.
//!
//! None now: the four found so far (a topic whose first character is not
//! ASCII, in the router and in the gateway's matching; a plain and a shared
//! subscription on one filter; a link leaving as the router unschedules it)
//! are fixed or no longer reachable, and their tests run in CI.

pub struct Known {
    pub name: &'static str,
    /// Whether a connection sending these bytes may hit it.
    pub hits: fn(&[u8]) -> bool,
}

pub const KNOWN: &[Known] = &[];

/// The first known bug `bytes` may hit.
pub fn hit_by(bytes: &[u8]) -> Option<&'static Known> {
    KNOWN.iter().find(|known| (known.hits)(bytes))
}
