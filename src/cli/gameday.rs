//! Owns the game-day commands: `faultline schedule next` (the coming fires and skipped slots of a
//! game-day file) and the game-day half of `faultline validate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use clap::Subcommand;
use jiff::Timestamp;

use super::EXIT_INVALID;
use crate::gameday::{self, GameDay};
use crate::schedule::{self, MAX_SKIPPED_LISTED};
use crate::units::Dur;

#[derive(Subcommand)]
pub(super) enum ScheduleCommand {
    /// Print the next fires of a game-day file, each in UTC and in its schedule's zone, with every
    /// slot skipped in between and why (suspended, blackout, outside only_within).
    Next {
        /// The game-day file.
        file: PathBuf,
        /// Stop after this many fires.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Start here instead of now: RFC 3339 (`2027-03-28T01:00:00Z`) or a civil time
        /// (`2027-03-28T01:00`) read in `[coordinator].timezone`. A slot at this time is listed.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
    },
}

pub(super) fn schedule(command: &ScheduleCommand) -> ExitCode {
    match command {
        ScheduleCommand::Next { file, count, from } => next(file, *count, from.as_deref()),
    }
}

fn next(file: &Path, count: usize, from: Option<&str>) -> ExitCode {
    let gameday = match gameday::load(file) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: invalid game day {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let from = match from.map(|t| parse_from(t, &gameday)) {
        None => Timestamp::now(),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let slots = gameday.calendar.upcoming(from, count);
    for slot in &slots {
        println!("{}", render_slot(&gameday, slot));
    }
    let fires = slots.iter().filter(|s| s.skipped.is_none()).count();
    if fires < count {
        let skipped = slots.len() - fires;
        if skipped >= MAX_SKIPPED_LISTED {
            eprintln!(
                "note: stopped after {skipped} skipped slots with {fires} of {count} fire(s) found"
            );
        } else {
            eprintln!("note: only {fires} of {count} fire(s): no schedule has a slot left");
        }
    }
    ExitCode::SUCCESS
}

/// One line of `schedule next`: what happens, the nominal time in UTC and in the schedule's zone
/// (with its offset and abbreviation), the schedule, and the jitter or the reason for a skip.
pub(crate) fn render_slot(gameday: &GameDay, slot: &schedule::Slot) -> String {
    let s = &gameday.calendar.schedules[slot.schedule];
    let utc = slot.at.strftime("%Y-%m-%dT%H:%M:%SZ");
    let local = slot
        .at
        .to_zoned(s.zone.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z %Z");
    if let Some(reason) = &slot.skipped {
        return format!("skip  {utc}  {local}  `{}`: {reason}", s.name);
    }
    let jitter = schedule::jitter(s, slot.at, gameday.coordinator.seed);
    if jitter.is_zero() {
        format!("fire  {utc}  {local}  `{}`", s.name)
    } else {
        format!(
            "fire  {utc}  {local}  `{}` (jitter +{})",
            s.name,
            Dur(jitter)
        )
    }
}

fn parse_from(text: &str, gameday: &GameDay) -> Result<Timestamp, String> {
    if let Ok(t) = Timestamp::from_str(text) {
        return Ok(t);
    }
    let zone = jiff::tz::TimeZone::get(&gameday.coordinator.timezone)
        .map_err(|e| format!("{}: {e}", gameday.coordinator.timezone))?;
    jiff::civil::DateTime::from_str(text)
        .ok()
        .and_then(|dt| zone.to_ambiguous_timestamp(dt).compatible().ok())
        .ok_or_else(|| {
            format!(
                "invalid --from `{text}`: write RFC 3339 (`2027-03-28T01:00:00Z`) or a civil time (`2027-03-28T01:00`, read in {})",
                gameday.coordinator.timezone
            )
        })
}

/// `validate` for one file when it is a game day: prints `ok (…)` or the error and says whether it
/// is valid; `None` when the file is not a game day (or cannot be read: the experiment reader then
/// reports it as before).
pub(super) fn validate(file: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(file).ok()?;
    if !gameday::is_gameday(&text) {
        return None;
    }
    match gameday::parse(file, &text) {
        Ok(g) => {
            println!(
                "{}: ok ({} schedule(s), {} blackout(s))",
                file.display(),
                g.calendar.schedules.len(),
                g.calendar.blackouts.len()
            );
            Some(true)
        }
        Err(e) => {
            eprintln!("error: invalid game day {e}");
            Some(false)
        }
    }
}
