//! Owns the coordinator's decision of what to do with a schedule's slots at a given instant: wait,
//! take the one slot that is due on time, or treat several due (or one very late) slots as missed
//! and catch up on at most one. Pure: the instant is an argument and the calendar does the cron
//! arithmetic, so downtime and stalls are unit tests.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::schedule::{Calendar, Slot};

/// How late a lone due slot may be and still count as on time. Beyond it (or when a later slot is
/// due too) the coordinator was down or stalled, and the schedule's `missed` policy decides: at
/// most one catch-up fire, never a burst.
pub(crate) const LATE_GRACE: Duration = Duration::from_secs(2);

/// How many missed slots a log line counts before it says "or more".
const COUNT_LIMIT: usize = 1000;

/// What to do next for one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing is due; the next slot (fired or skipped) is at this instant.
    Wait(Timestamp),
    /// The schedule has no slot left (a cron that names a date in the past).
    Idle,
    /// This slot is due and on time: fire it, or record why it is skipped. The cursor moves to it.
    OnTime(Slot),
    /// Slots were missed; the cursor moves to `now`.
    Missed(Missed),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Missed {
    /// The earliest missed slot (recorded as skipped unless it is the one caught up).
    pub(crate) first: Timestamp,
    /// How many slots were missed, at most `COUNT_LIMIT`; `more` when there were more.
    pub(crate) count: usize,
    pub(crate) more: bool,
    /// The one slot to run now (`missed = run-once` within its deadline), if any.
    pub(crate) catch_up: Option<Timestamp>,
}

/// Decides for schedule `schedule` whose slots up to `cursor` are dealt with, at `now`.
pub(crate) fn step(cal: &Calendar, schedule: usize, cursor: Timestamp, now: Timestamp) -> Step {
    let next = cal.slots(schedule, cursor, 2);
    let Some(first) = next.first() else {
        return Step::Idle;
    };
    if first.at > now {
        return Step::Wait(first.at);
    }
    let late = now.duration_since(first.at);
    let second_due = next.get(1).is_some_and(|s| s.at <= now);
    if !second_due && late <= SignedDuration::try_from(LATE_GRACE).unwrap_or_default() {
        return Step::OnTime(first.clone());
    }
    let due = cal.slots(schedule, cursor, COUNT_LIMIT + 1);
    let count = due.iter().take_while(|s| s.at <= now).count();
    Step::Missed(Missed {
        first: first.at,
        count: count.min(COUNT_LIMIT),
        more: count > COUNT_LIMIT,
        catch_up: cal.catch_up(schedule, Some(cursor), now),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::Timestamp;
    use jiff::tz::TimeZone;

    use super::{Missed, Step, step};
    use crate::schedule::{
        Calendar, Concurrency, Missed as Policy, MissedPolicy, OnConflict, Schedule, parse_cron,
    };

    fn calendar(policy: MissedPolicy) -> Calendar {
        Calendar {
            schedules: vec![Schedule {
                name: "s".into(),
                experiments: Vec::new(),
                vars: crate::experiment::vars::Overrides::default(),
                keep_going: false,
                cron_text: "*/2 * * * * *".into(),
                zone_name: "UTC".into(),
                zone: TimeZone::UTC,
                only_within: Vec::new(),
                jitter: Duration::ZERO,
                missed: Policy {
                    policy,
                    deadline: Duration::from_secs(60),
                },
                concurrency: Concurrency::Forbid,
                on_conflict: OnConflict::Queue,
                suspend: false,
                cron: parse_cron("*/2 * * * * *").unwrap(),
            }],
            blackouts: Vec::new(),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn before_a_slot_it_waits_for_it_and_a_slot_just_passed_is_on_time() {
        let cal = calendar(MissedPolicy::Skip);
        let cursor = t("2027-03-01T10:00:00Z");
        assert_eq!(
            step(&cal, 0, cursor, t("2027-03-01T10:00:01.5Z")),
            Step::Wait(t("2027-03-01T10:00:02Z"))
        );
        let Step::OnTime(slot) = step(&cal, 0, cursor, t("2027-03-01T10:00:02.001Z")) else {
            panic!("not on time")
        };
        assert_eq!(slot.at, t("2027-03-01T10:00:02Z"));
        // Once dealt with, the next slot is 2 s later: no drift, no second fire of the same slot.
        assert_eq!(
            step(&cal, 0, slot.at, t("2027-03-01T10:00:02.001Z")),
            Step::Wait(t("2027-03-01T10:00:04Z"))
        );
    }

    #[test]
    fn ten_seconds_down_is_missed_slots_with_one_catch_up_under_run_once_and_none_under_skip() {
        let cursor = t("2027-03-01T10:00:00Z");
        let now = t("2027-03-01T10:00:10.5Z");
        let missed = |policy| match step(&calendar(policy), 0, cursor, now) {
            Step::Missed(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            missed(MissedPolicy::RunOnce),
            Missed {
                first: t("2027-03-01T10:00:02Z"),
                count: 5,
                more: false,
                catch_up: Some(t("2027-03-01T10:00:10Z")),
            }
        );
        assert_eq!(missed(MissedPolicy::Skip).catch_up, None);
    }

    #[test]
    fn a_lone_slot_later_than_the_grace_counts_as_missed() {
        // A stall of 3 s with a 2 s cron: two slots due, so not on time even though the latest
        // is only 1 s late.
        let cal = calendar(MissedPolicy::Skip);
        let cursor = t("2027-03-01T10:00:00Z");
        assert!(matches!(
            step(&cal, 0, cursor, t("2027-03-01T10:00:05Z")),
            Step::Missed(Missed { count: 2, .. })
        ));
    }
}
