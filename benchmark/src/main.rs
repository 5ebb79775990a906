//! `tributary-bench`: load generator and end-to-end verifier for Tributary.
//!
//! It talks to Tributary only over the network, like a user. The subcommands
//! (`publish`, `verify`, `direct`, `suite`) are still to be built; until then the
//! binary says so and exits with a failure, so no script mistakes it for a result.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("tributary-bench: no benchmark is implemented yet (see the benchmark issue)");
    ExitCode::FAILURE
}
