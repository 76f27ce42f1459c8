//! Owns `faultline coordinator FILE`: reads the game day (exit 2 when it is invalid) and runs the
//! daemon until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{EXIT_INVALID, runtime};
use crate::gameday;

#[derive(Args)]
pub(super) struct CoordinatorArgs {
    /// The game-day file (`[coordinator]`, `[[schedule]]`, `[[blackout]]`).
    file: PathBuf,
}

pub(super) fn run(args: &CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let gameday = match gameday::load(&args.file) {
        Ok(gameday) => gameday,
        Err(e) => {
            eprintln!("error: invalid game day {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    runtime()?.block_on(crate::coordinator::run(gameday))?;
    Ok(ExitCode::SUCCESS)
}
