//! Game-day files on the command line: `faultline schedule next` prints the documented fire times
//! and skip reasons across daylight-saving changes, a window across midnight, blackouts and a leap
//! day; `faultline validate` accepts game days and refuses bad ones with exit 2, naming line,
//! column and key.

use std::path::{Path, PathBuf};

use crate::support::{faultline, tempdir};

/// The repository's quickstart experiment, by absolute path, so a game day in a temporary
/// directory can name it.
fn quickstart() -> PathBuf {
    std::env::current_dir()
        .unwrap()
        .join("experiments/quickstart.toml")
}

/// Writes a game-day file with `body` after a `[coordinator]` in UTC.
fn write_gameday(dir: &Path, body: &str) -> PathBuf {
    let file = dir.join("gameday.toml");
    let text = format!(
        "[coordinator]\nstate_dir = \"state\"\ntimezone = \"UTC\"\n{}",
        body.replace("QUICKSTART", quickstart().to_str().unwrap())
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// Runs `faultline ARGS` and returns (exit code, stdout, stderr).
fn run(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = faultline(args, &dir.join("state"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CALENDAR: &str = r#"
# Europe/Berlin 2027-03-28 02:30 does not exist: fires once at 03:30 CEST.
[[schedule]]
name = "berlin spring"
experiments = ["QUICKSTART"]
cron = "30 2 28 3 *"
timezone = "Europe/Berlin"

# Europe/Berlin 2027-10-31 02:30 happens twice: fires once, at the first (CEST).
[[schedule]]
name = "berlin fall"
experiments = ["QUICKSTART"]
cron = "30 2 31 10 *"
timezone = "Europe/Berlin"

# America/New_York 2027-03-14 02:30 does not exist: fires once at 03:30 EDT.
[[schedule]]
name = "new york spring"
experiments = ["QUICKSTART"]
cron = "30 2 14 3 *"
timezone = "America/New_York"

# Hourly around midnight on 5 and 6 March; only Friday 22:00 to Saturday 02:00 fires.
[[schedule]]
name = "friday late"
experiments = ["QUICKSTART"]
cron = "0 0-2,21-23 5,6 3 *"
only_within = ["Fri 22:00-02:00"]

[[schedule]]
name = "april"
experiments = ["QUICKSTART"]
cron = "0 12 1,2,7 4 *"

[[schedule]]
name = "paused"
experiments = ["QUICKSTART"]
cron = "0 6 30 3 *"
suspend = true

[[schedule]]
name = "leap"
experiments = ["QUICKSTART"]
cron = "0 12 29 2 *"

[[blackout]]
name = "release freeze"
from = "2027-04-01T00:00"
until = "2027-04-02T00:00"

[[blackout]]
name = "wednesday lunch"
weekly = "Wed 10:00-14:00"
"#;

#[test]
fn schedule_next_prints_fires_across_dst_windows_blackouts_and_a_leap_day() {
    let dir = tempdir();
    let file = write_gameday(dir.path(), CALENDAR);
    // A civil --from is read in [coordinator].timezone (UTC here).
    let (code, stdout, stderr) = run(
        dir.path(),
        &[
            "schedule",
            "next",
            file.to_str().unwrap(),
            "--count",
            "9",
            "--from",
            "2027-03-01T00:00",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    // Friday 00:00-02:00 belongs to Thursday's window (the days name where a window starts).
    let expected = "\
skip  2027-03-05T00:00:00Z  2027-03-05T00:00:00+00:00 UTC  `friday late`: outside only_within Fri 22:00-02:00
skip  2027-03-05T01:00:00Z  2027-03-05T01:00:00+00:00 UTC  `friday late`: outside only_within Fri 22:00-02:00
skip  2027-03-05T02:00:00Z  2027-03-05T02:00:00+00:00 UTC  `friday late`: outside only_within Fri 22:00-02:00
skip  2027-03-05T21:00:00Z  2027-03-05T21:00:00+00:00 UTC  `friday late`: outside only_within Fri 22:00-02:00
fire  2027-03-05T22:00:00Z  2027-03-05T22:00:00+00:00 UTC  `friday late`
fire  2027-03-05T23:00:00Z  2027-03-05T23:00:00+00:00 UTC  `friday late`
fire  2027-03-06T00:00:00Z  2027-03-06T00:00:00+00:00 UTC  `friday late`
fire  2027-03-06T01:00:00Z  2027-03-06T01:00:00+00:00 UTC  `friday late`
skip  2027-03-06T02:00:00Z  2027-03-06T02:00:00+00:00 UTC  `friday late`: outside only_within Fri 22:00-02:00
skip  2027-03-06T21:00:00Z  2027-03-06T21:00:00+00:00 UTC  `friday late`: outside only_within Fri 22:00-02:00
skip  2027-03-06T22:00:00Z  2027-03-06T22:00:00+00:00 UTC  `friday late`: outside only_within Fri 22:00-02:00
skip  2027-03-06T23:00:00Z  2027-03-06T23:00:00+00:00 UTC  `friday late`: outside only_within Fri 22:00-02:00
fire  2027-03-14T07:30:00Z  2027-03-14T03:30:00-04:00 EDT  `new york spring`
fire  2027-03-28T01:30:00Z  2027-03-28T03:30:00+02:00 CEST  `berlin spring`
skip  2027-03-30T06:00:00Z  2027-03-30T06:00:00+00:00 UTC  `paused`: suspended
skip  2027-04-01T12:00:00Z  2027-04-01T12:00:00+00:00 UTC  `april`: blackout `release freeze`
fire  2027-04-02T12:00:00Z  2027-04-02T12:00:00+00:00 UTC  `april`
skip  2027-04-07T12:00:00Z  2027-04-07T12:00:00+00:00 UTC  `april`: blackout `wednesday lunch`
fire  2027-10-31T00:30:00Z  2027-10-31T02:30:00+02:00 CEST  `berlin fall`
fire  2028-02-29T12:00:00Z  2028-02-29T12:00:00+00:00 UTC  `leap`
";
    assert_eq!(stdout, expected);
}

#[test]
fn schedule_next_from_an_rfc3339_instant_lists_a_slot_at_that_instant() {
    let dir = tempdir();
    let file = write_gameday(dir.path(), CALENDAR);
    let (code, stdout, stderr) = run(
        dir.path(),
        &[
            "schedule",
            "next",
            file.to_str().unwrap(),
            "--count",
            "1",
            "--from",
            "2027-03-28T03:30:00+02:00",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "fire  2027-03-28T01:30:00Z  2027-03-28T03:30:00+02:00 CEST  `berlin spring`\n"
    );
    let (code, _, stderr) = run(
        dir.path(),
        &["schedule", "next", file.to_str().unwrap(), "--from", "soon"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "error: invalid --from `soon`: write RFC 3339 (`2027-03-28T01:00:00Z`) or a civil time (`2027-03-28T01:00`, read in UTC)\n"
    );
}

#[test]
fn validate_takes_game_days_and_experiments_together() {
    let dir = tempdir();
    let file = write_gameday(dir.path(), CALENDAR);
    let (code, stdout, stderr) = run(
        dir.path(),
        &[
            "validate",
            file.to_str().unwrap(),
            quickstart().to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}: ok (7 schedule(s), 2 blackout(s))\n{}: ok (1 probe(s), 1 fault(s))\n",
            file.display(),
            quickstart().display()
        )
    );
}

/// Validates a game day whose `[[schedule]]` has `extra` lines; returns exit code and stderr.
fn validate_schedule(extra: &str) -> (Option<i32>, String, PathBuf, tempfile::TempDir) {
    let dir = tempdir();
    let file = write_gameday(
        dir.path(),
        &format!("[[schedule]]\nname = \"s\"\nexperiments = [\"QUICKSTART\"]\n{extra}"),
    );
    let (code, stdout, stderr) = run(dir.path(), &["validate", file.to_str().unwrap()]);
    assert_eq!(stdout, "", "nothing is ok");
    (code, stderr, file, dir)
}

#[test]
fn a_typo_in_a_game_day_exits_2_naming_line_column_and_key() {
    let (code, stderr, file, _dir) = validate_schedule("cron = \"@daily\"\ncontinu = true\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: invalid game day {}: line 8, column 1: unknown field `continu`, expected one of `name`, `experiments`, `continue`, `cron`, `timezone`, `only_within`, `jitter`, `missed`, `concurrency`, `on_conflict`, `suspend`, `vars`; did you mean `continue`?\n",
            file.display()
        )
    );
}

#[test]
fn an_unknown_zone_exits_2_and_suggests_the_close_name() {
    let (code, stderr, file, _dir) =
        validate_schedule("cron = \"@daily\"\ntimezone = \"Europe/Berln\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: invalid game day {}: line 8, column 12: `timezone`: unknown time zone `Europe/Berln` (did you mean `Europe/Berlin`?): write an IANA name such as `Europe/Berlin` or `UTC`\n",
            file.display()
        )
    );
}

#[test]
fn a_cron_minute_of_61_exits_2_naming_the_field() {
    let (code, stderr, file, _dir) = validate_schedule("cron = \"61 * * * *\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: invalid game day {}: line 7, column 8: `cron`: schedule `s`: invalid cron `61 * * * *`: minute 61 is out of range 0-59; write 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly\n",
            file.display()
        )
    );
}

#[test]
fn a_window_with_two_time_ranges_exits_2_naming_the_window() {
    let (code, stderr, file, _dir) =
        validate_schedule("cron = \"@daily\"\nonly_within = [\"Mon-Fri 09:00-12:00-17:00\"]\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: invalid game day {}: line 8, column 16: `only_within`: schedule `s`: invalid window `Mon-Fri 09:00-12:00-17:00`: invalid time `12:00-17:00`: write `HH:MM` from 00:00 to 23:59; write e.g. `Mon-Fri 09:00-17:00`, `Fri 22:00-02:00`, `Sat,Sun 10:00-12:00`, `09:00-17:00` (every day) or `Sat 00:00-Mon 06:00`\n",
            file.display()
        )
    );
}
