//! `tributary-bench`: load generator and end-to-end verifier for Tributary.
//!
//! It talks to Tributary only over the network, like a user: MQTT in, Kafka
//! out. `publish` drives MQTT load and records what was acknowledged; `verify`
//! accounts for every acknowledged message in Kafka; `direct` runs the same load
//! straight into Kafka (the ceiling); `suite` runs the fixed matrix and writes
//! the report.

mod direct;
mod manifest;
mod payload;
mod progress;
mod publish;
mod report;
mod suite;
mod suite_report;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// MQTT load: N connections publishing, with PUBACK latency.
    Publish(publish::PublishArgs),
    /// Accounts in Kafka for every message a `publish` run had acknowledged.
    Verify(verify::VerifyArgs),
    /// The same load produced straight to Kafka (acks=all): the ceiling.
    Direct(direct::DirectArgs),
    /// The fixed scenario matrix on this machine; writes benchmark/results/.
    Suite(suite::SuiteArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    let outcome = runtime.block_on(async {
        match args.command {
            Command::Publish(args) => publish::main(args).await,
            Command::Verify(args) => verify::main(args).await,
            Command::Direct(args) => direct::main(args).await,
            Command::Suite(args) => suite::main(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tributary-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
