//! Owns the arithmetic of game days: when each schedule fires, which slots are skipped and why
//! (blackouts, `only_within` windows, suspension), jitter and missed-run catch-up. Pure: no IO and
//! no clock; every decision is a function of the validated game day and an instant, so daylight-
//! saving changes, windows across midnight and leap days are unit tests with fixed instants.
//!
//! Semantics (the reference for `gamedays/README.md`):
//! - A cron expression is matched against the schedule zone's CIVIL (wall-clock) time: croner walks
//!   civil times and each is mapped to an instant with jiff's "compatible" disambiguation. A civil
//!   time that does not exist (spring forward: Europe/Berlin 2027-03-28 02:30) fires once, shifted
//!   forward by the gap (03:30 CEST); a civil time that happens twice (fall back: 2027-10-31 02:30)
//!   fires exactly once, at its first (earlier) occurrence. When a shifted fire lands on a time the
//!   cron also names, it fires once.
//! - A slot is skipped, in this order of precedence, when its schedule is suspended, when it falls
//!   in a blackout (the first in file order names the reason), or when it falls outside every
//!   `only_within` window. Windows and blackouts are decided at the slot's nominal time (before
//!   jitter), in the civil time of the schedule's zone (windows) or the blackout's zone.
//! - Jitter delays a fire by a seeded, deterministic amount in `[0, jitter]`.

mod civil;
#[cfg(test)]
mod tests;
mod window;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::{AmbiguousOffset, TimeZone};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use civil::Civil;
pub(crate) use window::Window;

/// The most slots `next_fire` and `catch_up` look at before they give up: a schedule whose every
/// slot is skipped (a window the cron never meets) must not keep the coordinator busy forever.
pub(crate) const MAX_SCAN: usize = 1_000_000;
/// The most skipped slots `upcoming` lists before it stops, however few fires it found.
pub(crate) const MAX_SKIPPED_LISTED: usize = 10_000;
/// The longest jitter a schedule may ask for.
pub(crate) const MAX_JITTER: Duration = Duration::from_secs(24 * 3600);
/// The longest `missed.deadline`.
pub(crate) const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// One `[[schedule]]` of a game-day file, validated.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub(crate) name: String,
    /// Experiment files, resolved against the game-day file's directory; run in order.
    pub(crate) experiments: Vec<PathBuf>,
    /// `vars = { … }`: its experiments are loaded with these, like `run --var`.
    pub(crate) vars: crate::experiment::vars::Overrides,
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
    /// The parsed cron expression (5 fields, 6 with seconds first, or `@hourly` …).
    pub(crate) cron: croner::Cron,
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

/// Parses a cron expression: 5 fields (minute hour day-of-month month day-of-week), 6 with seconds
/// first, or `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`. Day-of-month and day-of-week
/// both restricted match when either does (as Vixie cron). A pattern that never matches
/// (`0 0 30 2 *`) is refused.
pub(crate) fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    let help = "write 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly";
    if let Some(why) = out_of_range(text) {
        return Err(format!("invalid cron `{text}`: {why}; {help}"));
    }
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| {
            // croner's messages are capitalised sentences; ours are lowercase clauses.
            let why = e.to_string().trim_end_matches('.').to_lowercase();
            format!("invalid cron `{text}`: {why}; {help}")
        })?;
    // Every month and weekday recurs within 28 years, so a pattern with no match in the 28 years
    // after 2000 never matches.
    let start = Civil(jiff::civil::date(2000, 1, 1).at(0, 0, 0, 0));
    match cron.find_next_occurrence(&start, true) {
        Ok(Civil(at)) if at.year() < 2028 => Ok(cron),
        _ => Err(format!("cron `{text}` never matches a date")),
    }
}

/// Which field of a 5- or 6-field cron holds a number outside its range, if any: croner only says
/// "number out of bounds", and a user wants to know which field.
fn out_of_range(text: &str) -> Option<String> {
    const FIVE: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let fields: Vec<&str> = text.split_whitespace().collect();
    let names: Vec<(&str, u32, u32)> = match fields.len() {
        5 => FIVE.to_vec(),
        6 => std::iter::once(("second", 0, 59)).chain(FIVE).collect(),
        _ => return None,
    };
    for (field, (name, low, high)) in fields.iter().zip(names) {
        for item in field.split(',') {
            // A step (`*/90`) is not a value of the field.
            let values = item.split('/').next().unwrap_or("");
            for number in values.split('-') {
                if let Ok(n) = number.parse::<u32>() {
                    if n < low || n > high {
                        return Some(format!("{name} {n} is out of range {low}-{high}"));
                    }
                }
            }
        }
    }
    None
}

impl Blackout {
    /// Whether the instant `at` is inside the blackout (`from` inclusive, `until` exclusive).
    pub(crate) fn contains(&self, at: Timestamp) -> bool {
        match &self.when {
            BlackoutWhen::Between { from, until } => *from <= at && at < *until,
            BlackoutWhen::Weekly(window) => window.contains(self.zone.to_datetime(at)),
        }
    }
}

impl Schedule {
    /// The nominal fire times strictly after `after`, in order, each once (see the module's
    /// semantics for daylight-saving changes). Ends only where croner's calendar ends (year 5000)
    /// or when the cron never matches again.
    pub(crate) fn fire_times(&self, after: Timestamp) -> impl Iterator<Item = Timestamp> + '_ {
        FireTimes::new(self, after)
    }
}

/// The instants of one schedule's cron after a given instant.
///
/// croner walks civil times in order; each maps to an instant ("compatible": a time in a gap is
/// shifted forward by the gap, a repeated time takes its earlier instant). That mapping is
/// increasing except right after a gap, where shifted times interleave with the real times after
/// the gap; so instants wait in `pending` until no later civil time can map before them.
struct FireTimes<'a> {
    zone: &'a TimeZone,
    civil: croner::CronIterator<Civil>,
    after: Timestamp,
    pending: BTreeSet<Timestamp>,
    /// No civil time still to come maps to an instant at or before this.
    floor: Option<Timestamp>,
    exhausted: bool,
}

impl<'a> FireTimes<'a> {
    fn new(schedule: &'a Schedule, after: Timestamp) -> Self {
        // A civil time in a gap is read with the offset before the gap, so a fire shifted past
        // `after` can come from a civil time before `after`'s own: start from the smaller of the
        // two readings (transitions are more than a day apart in every zone in use).
        let now = schedule.zone.to_datetime(after);
        let day_before = after
            .checked_sub(jiff::SignedDuration::from_hours(26))
            .map_or(now, |t| schedule.zone.to_offset(t).to_datetime(after));
        FireTimes {
            zone: &schedule.zone,
            civil: schedule.cron.iter_after(Civil(now.min(day_before))),
            after,
            pending: BTreeSet::new(),
            floor: None,
            exhausted: false,
        }
    }
}

impl Iterator for FireTimes<'_> {
    type Item = Timestamp;

    fn next(&mut self) -> Option<Timestamp> {
        loop {
            if let Some(&first) = self.pending.first() {
                if self.exhausted || self.floor.is_some_and(|floor| first <= floor) {
                    self.pending.pop_first();
                    return Some(first);
                }
            } else if self.exhausted {
                return None;
            }
            let Some(Civil(civil)) = self.civil.next() else {
                self.exhausted = true;
                continue;
            };
            let ambiguous = self.zone.to_ambiguous_timestamp(civil);
            let Ok(at) = ambiguous.compatible() else {
                // Out of jiff's range (near year 9999): nothing later can be represented either.
                self.exhausted = true;
                continue;
            };
            // Any later civil time maps at or after the reading with the later offset; outside a
            // gap that is `at` itself.
            self.floor = Some(match ambiguous.offset() {
                AmbiguousOffset::Gap { after, .. } => after.to_timestamp(civil).unwrap_or(at),
                _ => at,
            });
            if at > self.after {
                self.pending.insert(at);
            }
        }
    }
}

impl Calendar {
    /// Why the nominal slot `at` of `schedule` does not fire, `None` when it fires. Precedence:
    /// suspended, then the first blackout (in file order) that holds `at`, then outside every
    /// `only_within` window (no windows: always inside).
    pub(crate) fn skip_reason(&self, schedule: usize, at: Timestamp) -> Option<SkipReason> {
        let s = &self.schedules[schedule];
        if s.suspend {
            return Some(SkipReason::Suspended);
        }
        if let Some(b) = self.blackouts.iter().find(|b| b.contains(at)) {
            return Some(SkipReason::Blackout(b.name.clone()));
        }
        let civil = s.zone.to_datetime(at);
        if !s.only_within.is_empty() && !s.only_within.iter().any(|w| w.contains(civil)) {
            return Some(SkipReason::OutsideWindows(
                s.only_within.iter().map(|w| w.text.clone()).collect(),
            ));
        }
        None
    }

    fn slot_iter(&self, schedule: usize, after: Timestamp) -> impl Iterator<Item = Slot> + '_ {
        self.schedules[schedule]
            .fire_times(after)
            .map(move |at| Slot {
                schedule,
                at,
                skipped: self.skip_reason(schedule, at),
            })
    }

    /// The slots of one schedule strictly after `after`, in order, skipped ones included (each
    /// with its reason), at most `limit` of them.
    pub(crate) fn slots(&self, schedule: usize, after: Timestamp, limit: usize) -> Vec<Slot> {
        self.slot_iter(schedule, after).take(limit).collect()
    }

    /// The first slot of `schedule` strictly after `after` that fires (is not skipped). `None`
    /// when the schedule is suspended, its cron never matches again, or none of the next
    /// `MAX_SCAN` slots fires.
    pub(crate) fn next_fire(&self, schedule: usize, after: Timestamp) -> Option<Timestamp> {
        if self.schedules[schedule].suspend {
            return None;
        }
        self.slot_iter(schedule, after)
            .take(MAX_SCAN)
            .find(|slot| slot.skipped.is_none())
            .map(|slot| slot.at)
    }

    /// The fires of all schedules from `from` on (a slot at `from` itself included), merged in
    /// time order (slots at the same instant in file order), with every skipped slot in between
    /// (for `schedule next`). Stops after `count` fires, or after `MAX_SKIPPED_LISTED` skipped
    /// slots, or when no schedule has a slot left.
    pub(crate) fn upcoming(&self, from: Timestamp, count: usize) -> Vec<Slot> {
        let after = from
            .checked_sub(jiff::SignedDuration::from_nanos(1))
            .unwrap_or(from);
        let mut iters: Vec<_> = (0..self.schedules.len())
            .map(|i| self.slot_iter(i, after).peekable())
            .collect();
        let (mut out, mut fires, mut skipped) = (Vec::new(), 0, 0);
        while fires < count && skipped < MAX_SKIPPED_LISTED {
            let next = iters
                .iter_mut()
                .enumerate()
                .filter_map(|(i, it)| it.peek().map(|slot| (slot.at, i)))
                .min();
            let Some((_, i)) = next else { break };
            let Some(slot) = iters[i].next() else { break };
            if slot.skipped.is_some() {
                skipped += 1;
            } else {
                fires += 1;
            }
            out.push(slot);
        }
        out
    }

    /// After downtime: the fire to catch up on, if any. `last` is the latest fire recorded for the
    /// schedule (None: never fired), `now` the present. Returns the latest non-skipped slot in
    /// `(last, now)` when the policy is `RunOnce` and `now - slot <= deadline`; never more than one.
    ///
    /// Decided here: a schedule that never fired has nothing to catch up on (`last = None` gives
    /// `None`: pass the coordinator's first start instead to catch up from then), and because the
    /// catch-up runs at `now`, it is also refused when `now` itself is in a blackout or outside the
    /// schedule's windows: a catch-up never lands where a normal fire could not.
    pub(crate) fn catch_up(
        &self,
        schedule: usize,
        last: Option<Timestamp>,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let s = &self.schedules[schedule];
        let last = last?;
        if s.missed.policy != MissedPolicy::RunOnce || s.suspend {
            return None;
        }
        let deadline = jiff::SignedDuration::try_from(s.missed.deadline).ok()?;
        let oldest = now.checked_sub(deadline).ok()?;
        // Slots at `oldest` itself are within the deadline: start just before it.
        let after = last.max(
            oldest
                .checked_sub(jiff::SignedDuration::from_nanos(1))
                .ok()?,
        );
        let missed = self
            .slot_iter(schedule, after)
            .take(MAX_SCAN)
            .take_while(|slot| slot.at < now)
            .filter(|slot| slot.skipped.is_none())
            .last()?;
        self.skip_reason(schedule, now)
            .is_none()
            .then_some(missed.at)
    }
}

/// The seeded random delay in `[0, jitter]` of one fire, the same for the same (seed, schedule
/// name, nominal time), so a restarted coordinator draws the same delay and the history records it.
/// Millisecond resolution; uniform (ChaCha8 seeded with a SHA-256 of the three).
pub(crate) fn jitter(schedule: &Schedule, at: Timestamp, seed: u64) -> Duration {
    if schedule.jitter.is_zero() {
        return Duration::ZERO;
    }
    let mut hash = Sha256::new();
    hash.update(seed.to_le_bytes());
    // The name's length first, so no (name, time) pair reads like another.
    hash.update((schedule.name.len() as u64).to_le_bytes());
    hash.update(schedule.name.as_bytes());
    hash.update(at.as_nanosecond().to_le_bytes());
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(hash.finalize().into());
    let max = u64::try_from(schedule.jitter.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=max))
}
