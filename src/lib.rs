//! The faultline crate: every module of the program, and the two entries its executables call:
//! [`main`] for `faultline` (every subcommand) and [`agent_main`] for `faultline-agent`, the
//! dedicated agent daemon (the same agent code with only the agent's flags, so the deployed agent
//! maps none of the coordinator's, reports' or probes' code).
// `deny`, not `forbid`: src/proxy/timer.rs holds the one `unsafe` block, with its reason.
#![deny(unsafe_code)]

mod agent;
mod bench;
mod budget;
mod certs;
mod cli;
mod container;
mod coordinator;
mod experiment;
mod fault;
mod fixture;
mod fleet;
mod fuzz;
mod gameday;
mod gate;
mod history;
mod inventory;
mod model;
mod notify;
mod outage;
mod plan;
mod probe;
mod process;
mod progress;
mod protocol;
mod proxy;
mod report;
mod run;
mod schedule;
mod secrets;
mod sli;
mod units;
mod web;

use std::process::ExitCode;

/// The entry of `faultline`: logging set-up, then the command line; errors are printed with their
/// causes and exit 5 ("the tool could not do what was asked").
pub fn main() -> ExitCode {
    init_logging();
    finish(cli::run())
}

/// The entry of `faultline-agent`: `faultline agent`'s flags and nothing else (plus the hidden
/// stress-worker mode its own faults start), the same code as `faultline agent`.
pub fn agent_main() -> ExitCode {
    init_logging();
    finish(cli::run_agent())
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        // Secrets from `[secrets]` never reach the log: every event is redacted as it is written.
        .with_writer(secrets::RedactingStderr)
        .init();
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", secrets::redact(&format!("{e:#}")));
            ExitCode::from(5)
        }
    }
}
