//! Unit tests of the fire-time arithmetic with fixed instants: daylight-saving changes in
//! Europe/Berlin and America/New_York, windows across midnight, blackouts, leap days, seconds,
//! jitter and catch-up.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{
    Blackout, BlackoutWhen, Calendar, Concurrency, Missed, MissedPolicy, OnConflict, Schedule,
    SkipReason, jitter, parse_cron,
};

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn schedule(name: &str, cron: &str, zone: &str) -> Schedule {
    Schedule {
        name: name.to_owned(),
        experiments: Vec::new(),
        vars: crate::experiment::vars::Overrides::default(),
        keep_going: false,
        cron_text: cron.to_owned(),
        zone_name: zone.to_owned(),
        zone: TimeZone::get(zone).unwrap(),
        only_within: Vec::new(),
        jitter: Duration::ZERO,
        missed: Missed {
            policy: MissedPolicy::Skip,
            deadline: Duration::ZERO,
        },
        concurrency: Concurrency::Forbid,
        on_conflict: OnConflict::Queue,
        suspend: false,
        cron: parse_cron(cron).unwrap(),
    }
}

fn calendar(schedules: Vec<Schedule>) -> Calendar {
    Calendar {
        schedules,
        blackouts: Vec::new(),
    }
}

/// The next `n` fire times of a schedule after `after`, as RFC 3339 UTC strings.
fn fires(s: &Schedule, after: &str, n: usize) -> Vec<String> {
    s.fire_times(ts(after))
        .take(n)
        .map(|t| t.to_string())
        .collect()
}

fn weekly(name: &str, window: &str, zone: &str) -> Blackout {
    Blackout {
        name: name.to_owned(),
        zone_name: zone.to_owned(),
        zone: TimeZone::get(zone).unwrap(),
        when: BlackoutWhen::Weekly(window.parse().unwrap()),
    }
}

#[test]
fn berlin_spring_forward_fires_a_missing_time_once_shifted_by_the_gap() {
    // 2027-03-28 02:30 does not exist in Berlin: it fires at 03:30 CEST (01:30Z).
    let s = schedule("s", "30 2 * * *", "Europe/Berlin");
    assert_eq!(
        fires(&s, "2027-03-27T00:00:00Z", 3),
        [
            "2027-03-27T01:30:00Z",
            "2027-03-28T01:30:00Z",
            "2027-03-29T00:30:00Z"
        ]
    );
    // Shifted fires that land on times the cron names fire once, in order.
    let half_hourly = schedule("h", "*/30 * * * *", "Europe/Berlin");
    assert_eq!(
        fires(&half_hourly, "2027-03-28T00:00:00Z", 4),
        [
            "2027-03-28T00:30:00Z",
            "2027-03-28T01:00:00Z",
            "2027-03-28T01:30:00Z",
            "2027-03-28T02:00:00Z"
        ]
    );
    // Starting inside the shifted hour still finds the shifted fire.
    assert_eq!(
        fires(&s, "2027-03-28T01:15:00Z", 1),
        ["2027-03-28T01:30:00Z"]
    );
}

#[test]
fn berlin_fall_back_fires_a_repeated_time_once_at_its_first_occurrence() {
    // 2027-10-31 02:30 happens at 00:30Z (CEST) and 01:30Z (CET): it fires at 00:30Z only.
    let s = schedule("s", "30 2 * * *", "Europe/Berlin");
    assert_eq!(
        fires(&s, "2027-10-30T00:00:00Z", 3),
        [
            "2027-10-30T00:30:00Z",
            "2027-10-31T00:30:00Z",
            "2027-11-01T01:30:00Z"
        ]
    );
    assert_eq!(
        fires(&s, "2027-10-31T00:30:00Z", 1),
        ["2027-11-01T01:30:00Z"],
        "after the first occurrence the second does not fire"
    );
}

#[test]
fn new_york_spring_forward_and_fall_back_fire_once() {
    // 2027-03-14 02:30 does not exist in New York: it fires at 03:30 EDT (07:30Z).
    let s = schedule("s", "30 2 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2027-03-13T00:00:00Z", 3),
        [
            "2027-03-13T07:30:00Z",
            "2027-03-14T07:30:00Z",
            "2027-03-15T06:30:00Z"
        ]
    );
    // 2027-11-07 01:30 happens twice (EDT 05:30Z, EST 06:30Z): it fires at 05:30Z only.
    let s = schedule("s", "30 1 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2027-11-06T00:00:00Z", 3),
        [
            "2027-11-06T05:30:00Z",
            "2027-11-07T05:30:00Z",
            "2027-11-08T06:30:00Z"
        ]
    );
}

#[test]
fn a_window_across_midnight_lets_fires_through_until_its_end() {
    let mut s = schedule("late", "0 * * * *", "UTC");
    s.only_within = vec!["Fri 22:00-02:00".parse().unwrap()];
    let cal = calendar(vec![s]);
    // 2027-03-05 is a Friday.
    let slots = cal.slots(0, ts("2027-03-05T20:30:00Z"), 6);
    let fired: Vec<_> = slots
        .iter()
        .map(|s| (s.at.to_string(), s.skipped.is_none()))
        .collect();
    assert_eq!(
        fired,
        [
            ("2027-03-05T21:00:00Z".to_owned(), false),
            ("2027-03-05T22:00:00Z".to_owned(), true),
            ("2027-03-05T23:00:00Z".to_owned(), true),
            ("2027-03-06T00:00:00Z".to_owned(), true),
            ("2027-03-06T01:00:00Z".to_owned(), true),
            ("2027-03-06T02:00:00Z".to_owned(), false),
        ]
    );
    assert_eq!(
        slots[0].skipped,
        Some(SkipReason::OutsideWindows(vec![
            "Fri 22:00-02:00".to_owned()
        ]))
    );
    assert_eq!(
        cal.next_fire(0, ts("2027-03-06T01:00:00Z")),
        Some(ts("2027-03-12T22:00:00Z")),
        "the next Friday night"
    );
}

#[test]
fn a_weekly_blackout_spans_the_weekend_and_an_absolute_one_its_dates() {
    let mut cal = calendar(vec![schedule("daily", "0 5 * * *", "Europe/Berlin")]);
    cal.blackouts
        .push(weekly("weekend", "Sat 00:00-Mon 06:00", "Europe/Berlin"));
    let zone = TimeZone::get("Europe/Berlin").unwrap();
    let civil = |s: &str| {
        zone.to_ambiguous_timestamp(s.parse().unwrap())
            .compatible()
            .unwrap()
    };
    cal.blackouts.push(Blackout {
        name: "release".to_owned(),
        zone_name: "Europe/Berlin".to_owned(),
        zone: zone.clone(),
        when: BlackoutWhen::Between {
            from: civil("2027-03-10T00:00"),
            until: civil("2027-03-11T00:00"),
        },
    });
    // Friday 2027-03-05 … Thursday 2027-03-11, 05:00 CET = 04:00Z.
    let reasons: Vec<_> = cal
        .slots(0, ts("2027-03-05T00:00:00Z"), 7)
        .into_iter()
        .map(|s| (s.at.to_string(), s.skipped.map(|r| r.to_string())))
        .collect();
    let blackout = |n: &str| Some(format!("blackout `{n}`"));
    assert_eq!(
        reasons,
        [
            ("2027-03-05T04:00:00Z".to_owned(), None),
            ("2027-03-06T04:00:00Z".to_owned(), blackout("weekend")),
            ("2027-03-07T04:00:00Z".to_owned(), blackout("weekend")),
            ("2027-03-08T04:00:00Z".to_owned(), blackout("weekend")),
            ("2027-03-09T04:00:00Z".to_owned(), None),
            ("2027-03-10T04:00:00Z".to_owned(), blackout("release")),
            ("2027-03-11T04:00:00Z".to_owned(), None),
        ]
    );
}

#[test]
fn skip_reasons_take_suspended_then_blackout_then_window() {
    let mut s = schedule("s", "0 * * * *", "UTC");
    s.only_within = vec!["Mon 09:00-10:00".parse().unwrap()];
    let mut cal = calendar(vec![s]);
    cal.blackouts
        .push(weekly("first", "Sat 00:00-Sun 00:00", "UTC"));
    cal.blackouts
        .push(weekly("second", "Sat 00:00-Mon 00:00", "UTC"));
    let saturday = ts("2027-03-06T12:00:00Z");
    let sunday = ts("2027-03-07T12:00:00Z");
    assert_eq!(
        cal.skip_reason(0, saturday),
        Some(SkipReason::Blackout("first".to_owned())),
        "the first blackout in file order names the reason"
    );
    assert_eq!(
        cal.skip_reason(0, sunday),
        Some(SkipReason::Blackout("second".to_owned()))
    );
    assert_eq!(
        cal.skip_reason(0, ts("2027-03-09T12:00:00Z"))
            .map(|r| r.to_string()),
        Some("outside only_within Mon 09:00-10:00".to_owned())
    );
    assert_eq!(cal.skip_reason(0, ts("2027-03-08T09:00:00Z")), None);
    cal.schedules[0].suspend = true;
    assert_eq!(cal.skip_reason(0, saturday), Some(SkipReason::Suspended));
    assert_eq!(cal.next_fire(0, saturday), None);
}

#[test]
fn a_leap_day_cron_fires_on_leap_days_only() {
    let s = schedule("leap", "0 12 29 2 *", "UTC");
    assert_eq!(
        fires(&s, "2027-01-01T00:00:00Z", 2),
        ["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"]
    );
}

#[test]
fn six_fields_put_seconds_first_and_nicknames_work() {
    let s = schedule("fast", "*/2 * * * * *", "UTC");
    assert_eq!(
        fires(&s, "2027-01-01T00:00:00Z", 3),
        [
            "2027-01-01T00:00:02Z",
            "2027-01-01T00:00:04Z",
            "2027-01-01T00:00:06Z"
        ]
    );
    let hourly = schedule("hourly", "@hourly", "Europe/Berlin");
    assert_eq!(
        fires(&hourly, "2027-01-01T00:10:00Z", 2),
        ["2027-01-01T01:00:00Z", "2027-01-01T02:00:00Z"]
    );
}

#[test]
fn bad_crons_are_refused_with_the_reason() {
    let err = parse_cron("61 * * * *").unwrap_err();
    assert!(err.starts_with("invalid cron `61 * * * *`: "), "{err}");
    assert!(
        err.ends_with("@hourly, @daily, @weekly, @monthly, @yearly"),
        "{err}"
    );
    assert_eq!(
        parse_cron("0 0 30 2 *").unwrap_err(),
        "cron `0 0 30 2 *` never matches a date"
    );
    assert!(parse_cron("0 0 0 1 1 * 2030").is_err(), "no year field");
}

#[test]
fn jitter_is_deterministic_and_within_bounds() {
    let mut s = schedule("j", "0 * * * *", "UTC");
    s.jitter = Duration::from_secs(600);
    let at = ts("2027-01-01T10:00:00Z");
    assert_eq!(jitter(&s, at, 7), jitter(&s, at, 7));
    let draws: Vec<Duration> = (0..1000)
        .map(|i| jitter(&s, at + jiff::SignedDuration::from_hours(i), 7))
        .collect();
    assert!(draws.iter().all(|d| *d <= s.jitter));
    // Spread over the range, not stuck at one end.
    assert!(draws.iter().any(|d| *d < Duration::from_secs(60)));
    assert!(draws.iter().any(|d| *d > Duration::from_secs(540)));
    let other_seed: Vec<Duration> = (0..10)
        .map(|i| jitter(&s, at + jiff::SignedDuration::from_hours(i), 8))
        .collect();
    assert_ne!(draws[..10], other_seed[..], "the seed changes the delays");
    s.jitter = Duration::ZERO;
    assert_eq!(jitter(&s, at, 7), Duration::ZERO);
}

#[test]
fn catch_up_runs_the_latest_missed_fire_once_within_the_deadline() {
    let mut s = schedule("c", "0 * * * *", "UTC");
    s.missed = Missed {
        policy: MissedPolicy::RunOnce,
        deadline: Duration::from_secs(15 * 60),
    };
    let mut cal = calendar(vec![s]);
    let last = Some(ts("2027-03-09T05:00:00Z"));
    // Down from 05:00 to 09:10: four slots missed, only the latest (09:00) runs.
    assert_eq!(
        cal.catch_up(0, last, ts("2027-03-09T09:10:00Z")),
        Some(ts("2027-03-09T09:00:00Z"))
    );
    assert_eq!(
        cal.catch_up(0, last, ts("2027-03-09T09:15:00Z")),
        Some(ts("2027-03-09T09:00:00Z")),
        "exactly at the deadline"
    );
    assert_eq!(
        cal.catch_up(0, last, ts("2027-03-09T09:20:00Z")),
        None,
        "past the deadline"
    );
    assert_eq!(
        cal.catch_up(
            0,
            Some(ts("2027-03-09T09:00:00Z")),
            ts("2027-03-09T09:10:00Z")
        ),
        None,
        "that fire was recorded"
    );
    assert_eq!(cal.catch_up(0, None, ts("2027-03-09T09:10:00Z")), None);
    // A missed slot in a blackout is not caught up, nor is one whose catch-up would land in one.
    cal.blackouts.push(weekly("nine", "Tue 09:00-09:05", "UTC"));
    assert_eq!(cal.catch_up(0, last, ts("2027-03-09T09:10:00Z")), None);
    cal.blackouts[0] = weekly("later", "Tue 09:05-10:00", "UTC");
    assert_eq!(cal.catch_up(0, last, ts("2027-03-09T09:10:00Z")), None);
    cal.blackouts.clear();
    cal.schedules[0].missed.policy = MissedPolicy::Skip;
    assert_eq!(cal.catch_up(0, last, ts("2027-03-09T09:10:00Z")), None);
}

#[test]
fn upcoming_merges_schedules_in_time_order_with_skipped_slots() {
    let mut a = schedule("a", "0 */2 * * *", "UTC");
    a.only_within = vec!["00:00-03:00".parse().unwrap()];
    let b = schedule("b", "30 * * * *", "UTC");
    let cal = calendar(vec![a, b]);
    let lines: Vec<_> = cal
        .upcoming(ts("2027-01-01T00:00:00Z"), 5)
        .into_iter()
        .map(|s| {
            (
                cal.schedules[s.schedule].name.clone(),
                s.at.to_string(),
                s.skipped.is_none(),
            )
        })
        .collect();
    let l = |n: &str, t: &str, f: bool| (n.to_owned(), t.to_owned(), f);
    assert_eq!(
        lines,
        [
            l("a", "2027-01-01T00:00:00Z", true),
            l("b", "2027-01-01T00:30:00Z", true),
            l("b", "2027-01-01T01:30:00Z", true),
            l("a", "2027-01-01T02:00:00Z", true),
            l("b", "2027-01-01T02:30:00Z", true),
        ]
    );
    // A schedule whose slots are all skipped ends the listing after a bounded number of lines.
    let mut suspended = schedule("s", "* * * * * *", "UTC");
    suspended.suspend = true;
    let cal = calendar(vec![suspended]);
    assert_eq!(
        cal.upcoming(ts("2027-01-01T00:00:00Z"), 3).len(),
        super::MAX_SKIPPED_LISTED
    );
}

#[test]
fn day_of_month_and_day_of_week_match_when_either_does() {
    // As Vixie cron: the 13th of any weekday, and every Friday.
    let s = schedule("either", "0 12 13 * FRI", "UTC");
    assert_eq!(
        fires(&s, "2027-01-01T00:00:00Z", 3),
        [
            "2027-01-01T12:00:00Z",
            "2027-01-08T12:00:00Z",
            "2027-01-13T12:00:00Z"
        ]
    );
}

#[test]
fn a_half_hour_gap_keeps_shifted_and_real_fires_in_order() {
    // Australia/Lord_Howe springs forward 30 minutes (02:00 → 02:30) on 2027-10-03: 02:15 is
    // shifted to 02:45, after the real 02:40.
    let s = schedule("howe", "15,40 2 * * *", "Australia/Lord_Howe");
    let zone = TimeZone::get("Australia/Lord_Howe").unwrap();
    let local: Vec<String> = s
        .fire_times(ts("2027-10-01T12:00:00Z"))
        .take(4)
        .map(|t| t.to_zoned(zone.clone()).strftime("%m-%d %H:%M").to_string())
        .collect();
    assert_eq!(
        local,
        ["10-02 02:15", "10-02 02:40", "10-03 02:40", "10-03 02:45"]
    );
}

#[test]
fn fire_times_strictly_increase_through_a_year_of_transitions() {
    for zone in [
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "America/Santiago",
    ] {
        for cron in [
            "*/30 * * * *",
            "0 0-3 * * *",
            "15,45 1-3 * * SUN",
            "7 2 * * *",
        ] {
            let s = schedule("p", cron, zone);
            let times: Vec<Timestamp> = s
                .fire_times(ts("2027-01-01T00:00:00Z"))
                .take_while(|t| *t < ts("2028-01-01T00:00:00Z"))
                .collect();
            assert!(times.len() > 50, "{zone} {cron}");
            assert!(
                times.windows(2).all(|w| w[0] < w[1]),
                "{zone} {cron}: not strictly increasing"
            );
            // The same set as mapping every matching civil time on its own and sorting: the
            // streaming order-keeping loses and duplicates nothing.
            let zoned = TimeZone::get(zone).unwrap();
            let start = super::Civil(jiff::civil::date(2026, 12, 30).at(0, 0, 0, 0));
            let reference: std::collections::BTreeSet<Timestamp> = s
                .cron
                .iter_after(start)
                .take_while(|c| c.0.year() < 2028 || c.0.day() < 3)
                .map(|c| zoned.to_ambiguous_timestamp(c.0).compatible().unwrap())
                .filter(|t| *t > ts("2027-01-01T00:00:00Z") && *t < ts("2028-01-01T00:00:00Z"))
                .collect();
            assert_eq!(
                times,
                reference.into_iter().collect::<Vec<_>>(),
                "{zone} {cron}"
            );
        }
    }
}
