//! Owns the arithmetic of game days: when each schedule fires, which slots are skipped and why
//! (blackouts, `only_within` windows, suspension), jitter and missed-run catch-up. Pure: no IO and
//! no clock; every decision is a function of the validated game day and an instant, so daylight-
//! saving changes, windows across midnight and leap days are unit tests with fixed instants.
//!
//! SKELETON (lead): the types and signatures below are the contract the coordinator codes against;
//! the schedule engineer fills in the bodies and may add fields and functions, never remove these.
#![allow(dead_code, clippy::unused_self)] // SKELETON: the engineer filling this file removes this line

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// One `[[schedule]]` of a game-day file, validated.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub(crate) name: String,
    /// Experiment files, resolved against the game-day file's directory; run in order.
    pub(crate) experiments: Vec<PathBuf>,
    /// `continue = true`: run the next experiment even when one did not pass.
    pub(crate) keep_going: bool,
    /// The cron text as written, for logs and `schedule next`.
    pub(crate) cron_text: String,
    /// The IANA name of `zone`, as written (or inherited from `[coordinator]`).
    pub(crate) zone_name: String,
    pub(crate) zone: TimeZone,
    pub(crate) only_within: Vec<Window>,
    pub(crate) jitter: Duration,
    pub(crate) missed: Missed,
    pub(crate) concurrency: Concurrency,
    pub(crate) on_conflict: OnConflict,
    pub(crate) suspend: bool,
}

/// A weekly window such as `Mon-Fri 09:00-17:00` or `Fri 22:00-02:00` (crossing midnight), read in
/// a zone's civil time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// As written, for messages.
    pub(crate) text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissedPolicy {
    /// After downtime, run the latest missed fire once if it is within the deadline.
    RunOnce,
    /// Never run a missed fire.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Missed {
    pub(crate) policy: MissedPolicy,
    pub(crate) deadline: Duration,
}

/// What happens when a schedule fires while its previous run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Concurrency {
    /// The new fire is skipped ("the previous run of this schedule is still going").
    Forbid,
    /// Runs of the schedule may overlap (still subject to `on_conflict` for shared hosts).
    Allow,
}

/// What happens when a fire's faults would reach a host that another run is acting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnConflict {
    /// Wait until the other run ends, then run.
    Queue,
    /// Skip this fire, recording the conflict.
    Skip,
}

/// One `[[blackout]]`: no schedule fires inside it.
#[derive(Debug, Clone)]
pub(crate) struct Blackout {
    pub(crate) name: String,
    pub(crate) zone_name: String,
    pub(crate) zone: TimeZone,
    pub(crate) when: BlackoutWhen,
}

#[derive(Debug, Clone)]
pub(crate) enum BlackoutWhen {
    /// `from`/`until`, civil times in the blackout's zone; `until` is exclusive.
    Between { from: Timestamp, until: Timestamp },
    /// `weekly = "Sat 00:00-Mon 06:00"`.
    Weekly(Window),
}

/// Every schedule and blackout of one game day.
#[derive(Debug, Clone, Default)]
pub(crate) struct Calendar {
    pub(crate) schedules: Vec<Schedule>,
    pub(crate) blackouts: Vec<Blackout>,
}

/// Why a slot the cron expression names does not fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SkipReason {
    Suspended,
    /// Inside the named blackout.
    Blackout(String),
    /// Outside every `only_within` window (the windows as written).
    OutsideWindows(Vec<String>),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Suspended => write!(f, "suspended"),
            SkipReason::Blackout(name) => write!(f, "blackout `{name}`"),
            SkipReason::OutsideWindows(w) => write!(f, "outside only_within {}", w.join(", ")),
        }
    }
}

/// One cron slot of one schedule: fires at `at`, unless `skipped` says why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Index into `Calendar::schedules`.
    pub(crate) schedule: usize,
    /// The nominal fire time (before jitter). The identity of a fire: a fire is recorded once per
    /// (schedule name, at).
    pub(crate) at: Timestamp,
    pub(crate) skipped: Option<SkipReason>,
}

impl Calendar {
    /// The slots of one schedule strictly after `after`, in order, skipped ones included (each
    /// with its reason), at most `limit` of them.
    pub(crate) fn slots(&self, schedule: usize, after: Timestamp, limit: usize) -> Vec<Slot> {
        let _ = (&self.schedules, schedule, after, limit);
        Vec::new()
    }

    /// The first slot of `schedule` strictly after `after` that fires (is not skipped).
    pub(crate) fn next_fire(&self, schedule: usize, after: Timestamp) -> Option<Timestamp> {
        let _ = (schedule, after);
        None
    }

    /// The next `count` fires of all schedules from `from` on, merged in time order, with every
    /// skipped slot in between (for `schedule next`).
    pub(crate) fn upcoming(&self, from: Timestamp, count: usize) -> Vec<Slot> {
        let _ = (from, count);
        Vec::new()
    }

    /// After downtime: the fire to catch up on, if any. `last` is the latest fire recorded for the
    /// schedule (None: never fired), `now` the present. Returns the latest non-skipped slot in
    /// `(last, now)` when the policy is `RunOnce` and `now - slot <= deadline`; never more than one.
    pub(crate) fn catch_up(
        &self,
        schedule: usize,
        last: Option<Timestamp>,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let _ = (schedule, last, now);
        None
    }
}

/// The seeded random delay in `[0, jitter]` of one fire, the same for the same (seed, schedule
/// name, nominal time), so a restarted coordinator draws the same delay and the history records it.
pub(crate) fn jitter(schedule: &Schedule, at: Timestamp, seed: u64) -> Duration {
    let _ = (at, seed);
    schedule.jitter.min(Duration::ZERO)
}
