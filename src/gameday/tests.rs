//! Unit tests of reading game-day files: every field lands in the validated types, and every error
//! names file, line, column and key.

use std::path::Path;
use std::time::Duration;

use super::{is_gameday, load, parse};
use crate::schedule::{BlackoutWhen, Concurrency, MissedPolicy, OnConflict};

/// Parses `body` after a minimal `[coordinator]`, as a file in `gamedays/` (so
/// `../experiments/quickstart.toml` resolves from the crate root, where tests run).
fn parse_body(body: &str) -> Result<super::GameDay, String> {
    let text = format!("[coordinator]\nstate_dir = \"state\"\n{body}");
    parse(Path::new("gamedays/t.toml"), &text).map_err(|e| e.to_string())
}

const SCHEDULE: &str =
    "[[schedule]]\nname = \"a\"\nexperiments = [\"../experiments/quickstart.toml\"]\n";

#[test]
fn the_example_game_day_fills_every_field() {
    let g = load(Path::new("gamedays/weekday-mornings.toml")).unwrap();
    assert_eq!(g.file, Path::new("gamedays/weekday-mornings.toml"));
    let c = &g.coordinator;
    assert_eq!(c.timezone, "Europe/Berlin");
    assert_eq!(c.agents, None);
    assert_eq!(c.seed, 7);
    assert_eq!(c.lease, Duration::from_secs(5));
    let s = &g.calendar.schedules[0];
    assert_eq!(s.name, "web survives a kill");
    assert_eq!(
        s.experiments,
        [Path::new("gamedays/../experiments/quickstart.toml")]
    );
    assert_eq!(s.cron_text, "0 10 * * TUE-THU");
    assert_eq!(s.zone_name, "Europe/Berlin");
    assert_eq!(s.only_within[0].text, "Mon-Fri 09:00-17:00");
    assert_eq!(s.jitter, Duration::from_secs(600));
    assert_eq!(s.missed.policy, MissedPolicy::RunOnce);
    assert_eq!(s.missed.deadline, Duration::from_secs(900));
    assert_eq!(
        (s.concurrency, s.on_conflict, s.suspend, s.keep_going),
        (Concurrency::Forbid, OnConflict::Queue, false, false)
    );
    let b = &g.calendar.blackouts;
    assert_eq!(
        (b[0].name.as_str(), b[1].name.as_str()),
        ("year-end freeze", "weekend")
    );
    assert_eq!(b[1].zone_name, "Europe/Berlin", "the coordinator's zone");
    assert!(matches!(b[0].when, BlackoutWhen::Between { from, until }
        if from.to_string() == "2026-12-19T23:00:00Z" && until.to_string() == "2027-01-03T23:00:00Z"));
}

#[test]
fn defaults_are_utc_five_second_lease_skip_forbid_and_queue() {
    let g = parse_body(&format!("{SCHEDULE}cron = \"@daily\"\n")).unwrap();
    let c = &g.coordinator;
    assert_eq!(c.timezone, "UTC");
    assert_eq!(c.lease, Duration::from_secs(5));
    assert_eq!(c.seed, 0);
    assert!(!c.name.is_empty(), "the host name");
    assert_eq!(
        c.state_dir,
        Path::new("gamedays/state"),
        "relative to the file"
    );
    let s = &g.calendar.schedules[0];
    assert_eq!(s.zone_name, "UTC");
    assert_eq!(s.missed.policy, MissedPolicy::Skip);
    assert_eq!(s.jitter, Duration::ZERO);
    assert_eq!(
        (s.concurrency, s.on_conflict),
        (Concurrency::Forbid, OnConflict::Queue)
    );
}

#[test]
fn every_bad_value_is_named_with_its_position_and_key() {
    let cases = [
        (
            "[[schedule]]\nname = \"a\"\nexperiment = []\n",
            "gamedays/t.toml: line 5, column 1: unknown field `experiment`, expected one of `name`, `experiments`, `continue`, `cron`, `timezone`, `only_within`, `jitter`, `missed`, `concurrency`, `on_conflict`, `suspend`, `vars`; did you mean `experiments`?",
        ),
        (
            &format!("{SCHEDULE}cron = \"0 * * * *\"\ntimezone = \"Europe/Berln\"\n"),
            "gamedays/t.toml: line 7, column 12: `timezone`: unknown time zone `Europe/Berln` (did you mean `Europe/Berlin`?): write an IANA name such as `Europe/Berlin` or `UTC`",
        ),
        (
            &format!("{SCHEDULE}cron = \"61 * * * *\"\n"),
            "gamedays/t.toml: line 6, column 8: `cron`: schedule `a`: invalid cron `61 * * * *`: minute 61 is out of range 0-59; write 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly",
        ),
        (
            &format!("{SCHEDULE}cron = \"@daily\"\nonly_within = [\"Mon-Fri 09:00\"]\n"),
            "gamedays/t.toml: line 7, column 16: `only_within`: schedule `a`: invalid window `Mon-Fri 09:00`: expected a time range `HH:MM-HH:MM`, got `09:00`; write e.g. `Mon-Fri 09:00-17:00`, `Fri 22:00-02:00`, `Sat,Sun 10:00-12:00`, `09:00-17:00` (every day) or `Sat 00:00-Mon 06:00`",
        ),
        (
            &format!("{SCHEDULE}cron = \"@daily\"\njitter = \"2d\"\n"),
            "gamedays/t.toml: line 7, column 10: `jitter`: schedule `a`: the jitter must be at most 1day (got 2days)",
        ),
        (
            &format!(
                "{SCHEDULE}cron = \"@daily\"\nmissed = {{ policy = \"skip\", deadline = \"5m\" }}\n"
            ),
            "gamedays/t.toml: line 7, column 40: `deadline`: schedule `a`: a deadline only applies to policy = \"run-once\"",
        ),
        (
            &format!("{SCHEDULE}cron = \"@daily\"\n{SCHEDULE}cron = \"@daily\"\n"),
            "gamedays/t.toml: line 8, column 8: `name`: two schedules are named `a`: schedule names must be unique",
        ),
        (
            "[[schedule]]\nname = \"a\"\nexperiments = [\"missing.toml\"]\ncron = \"@daily\"\n",
            "gamedays/t.toml: line 5, column 16: `experiments`: schedule `a`: gamedays/missing.toml: cannot read the experiment file: No such file or directory (os error 2)",
        ),
        (
            "[[schedule]]\nname = \"a\"\nexperiments = []\ncron = \"@daily\"\n",
            "gamedays/t.toml: line 5, column 15: `experiments`: schedule `a`: name at least one experiment file",
        ),
        (
            "[[blackout]]\nname = \"b\"\nfrom = \"2026-12-20T00:00\"\nweekly = \"Sat 00:00-Mon 06:00\"\n",
            "gamedays/t.toml: line 6, column 10: `weekly`: blackout `b`: give either `from` and `until` or `weekly`, not both",
        ),
        (
            "[[blackout]]\nname = \"b\"\n",
            "gamedays/t.toml: line 3, column 1: `blackout`: blackout `b`: give either `from` and `until` or `weekly`",
        ),
        (
            "[[blackout]]\nname = \"b\"\nfrom = \"2026-12-20\"\nuntil = \"20.12.2026\"\n",
            "gamedays/t.toml: line 6, column 9: `until`: blackout `b`: invalid civil time `20.12.2026`: write e.g. `2026-12-20T00:00`, read in the blackout's zone",
        ),
        (
            "[[blackout]]\nname = \"b\"\nweekly = \"Sat-Mon\"\n",
            "gamedays/t.toml: line 5, column 10: `weekly`: blackout `b`: invalid window `Sat-Mon`: no time range `HH:MM-HH:MM`; write e.g. `Mon-Fri 09:00-17:00`, `Fri 22:00-02:00`, `Sat,Sun 10:00-12:00`, `09:00-17:00` (every day) or `Sat 00:00-Mon 06:00`",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(parse_body(body).unwrap_err(), want, "{body}");
    }
}

#[test]
fn coordinator_values_are_checked_without_echoing_secrets() {
    let coordinator = |extra: &str| {
        parse(
            Path::new("g.toml"),
            &format!("[coordinator]\nstate_dir = \"s\"\n{extra}\n"),
        )
        .map_err(|e| e.to_string())
    };
    let err = coordinator("database = \"mysql://u:hunter2@db/x\"").unwrap_err();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.starts_with("g.toml: line 3, column 12: `database`: must be a PostgreSQL URL"));
    assert_eq!(
        coordinator("lease = \"2h\"").unwrap_err(),
        "g.toml: line 3, column 9: `lease`: the lease must be at most 1h (got 2h)"
    );
    assert_eq!(
        coordinator("outage = { alertmanager = \"http://am:9093/\", matchers = ['severity=\"critical\"', 'job=~\"(\"'] }").unwrap_err(),
        "g.toml: line 3, column 81: `matchers`: invalid matcher `job=~\"(\"`: the regex of `job` does not compile: unclosed group"
    );
    // The loader checks matchers exactly as the outage check sends them, so a matcher Alertmanager
    // would refuse fails `validate` instead of skipping every fire.
    assert!(
        coordinator(
            "outage = { alertmanager = \"http://am:9093\", matchers = ['severity=\"crit\"ical\"'] }"
        )
        .unwrap_err()
        .starts_with(
            "g.toml: line 3, column 57: `matchers`: invalid matcher `severity=\"crit\"ical\"`: "
        )
    );
    assert!(
        coordinator("outage = { alertmanager = \"http://am:9093/?x=1\" }")
            .unwrap_err()
            .contains(
                "`alertmanager`: invalid URL `http://am:9093/?x=1`: the URL must not have a query"
            )
    );
    let g = coordinator("database = \"postgres://u:p@db/x\"\nname = \"coord-1\"\nlease = \"2s\"\noutage = { alertmanager = \"http://am:9093/\", matchers = ['severity=\"critical\"'] }").unwrap();
    let c = g.coordinator;
    assert_eq!(c.database.as_deref(), Some("postgres://u:p@db/x"));
    assert_eq!(c.name, "coord-1");
    assert_eq!(c.lease, Duration::from_secs(2));
    let outage = c.outage.unwrap();
    assert_eq!(outage.alertmanager, "http://am:9093");
    assert_eq!(outage.matchers, ["severity=\"critical\""]);
}

#[test]
fn game_days_are_told_apart_from_experiments() {
    assert!(is_gameday("[coordinator]\nstate_dir = \"s\"\n"));
    assert!(
        is_gameday("[ coordinator ] # comment\nstate_dir = \n"),
        "not TOML, judged by headers"
    );
    assert!(is_gameday("coordinator = { state_dir = \"s\" }\n"));
    assert!(!is_gameday(
        &std::fs::read_to_string("experiments/quickstart.toml").unwrap()
    ));
    assert!(!is_gameday(
        "title = \"x\"\n[[fault]]\nname = \"schedule\"\n"
    ));
}

#[test]
fn a_schedule_passes_vars_to_its_experiments_like_var_does() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("by-port.toml");
    let text = std::fs::read_to_string("experiments/quickstart.toml")
        .unwrap()
        .replace("[[setup]]", "[vars]\nport = 18080\n\n[[setup]]")
        .replace("http://127.0.0.1:18080/", "http://127.0.0.1:${port}/");
    std::fs::write(&exp, text).unwrap();
    let schedule = |vars: &str| {
        format!(
            "[[schedule]]\nname = \"a\"\nexperiments = [{:?}]\ncron = \"@daily\"\n{vars}",
            exp.display().to_string()
        )
    };
    // With its `[vars]` defaults only, and with a schedule's vars.
    assert!(parse_body(&schedule("")).is_ok());
    let g = parse_body(&schedule("vars = { port = 8081 }\n")).unwrap();
    let vars = &g.calendar.schedules[0].vars;
    let loaded = crate::experiment::load_with(&exp, vars).unwrap();
    assert!(
        loaded
            .vars
            .contains(&"port = 8081 (schedule `a`)".to_owned()),
        "{:?}",
        loaded.vars
    );
    let e = parse_body(&schedule("vars = { prot = 8081 }\n")).unwrap_err();
    assert!(
        e.contains("schedule `a`'s var `prot`: the experiment neither declares `prot`"),
        "{e}"
    );
    assert!(e.ends_with("did you mean `port`?"), "{e}");
    let e = parse_body(&schedule("vars = { port = [1] }\n")).unwrap_err();
    assert!(
        e.ends_with("line 7, column 8: `vars`: schedule `a`: var `port` must be a string (at most 64 KiB), an integer or a boolean (got array)"),
        "{e}"
    );
}
