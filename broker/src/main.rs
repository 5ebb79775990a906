//! `tributary`: load the config, install logging and metrics, run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tributary::config::{Config, ConfigError};

/// jemalloc gives freed memory back to the system on its own (its background
/// threads purge pages left unused for ~10 s), so memory taken by a burst of
/// connections or stored sessions returns once they are gone; glibc's malloc
/// keeps most of it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An MQTT broker with a Kafka bridge built in.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Default: conf/tributary.toml if present, else
    /// built-in defaults. TRIBUTARY__SECTION__KEY environment variables override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the configuration, report every problem, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(ConfigError::Invalid(problems)) => {
            eprintln!("invalid configuration ({} problems):", problems.len());
            for problem in problems.iter() {
                eprintln!("  {problem}");
            }
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    tributary::telemetry::init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tributary::run_until_signal(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
