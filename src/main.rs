//! Owns the process entry: logging set-up, then the command line; errors are printed with their
//! causes and exit 5 ("the tool could not do what was asked").
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        // Secrets from `[secrets]` never reach the log: every event is redacted as it is written.
        .with_writer(secrets::RedactingStderr)
        .init();
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", secrets::redact(&format!("{e:#}")));
            ExitCode::from(5)
        }
    }
}
