//! `faultline coordinator`: real coordinator processes firing 2 s crons against the embedded agent
//! and sleeper processes the tests start, their history read straight from the SQLite file they
//! write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::support::agent::TlsAgent;
use crate::support::alertmanager::Alertmanager;
use crate::support::coordinator::Coordinator;
use crate::support::{self, BIN, Proc, ProcState, state_of, wait_until};

/// One run as the history stores it (instants in µs since the epoch).
#[derive(Debug, Clone)]
struct RunRow {
    id: String,
    schedule: Option<String>,
    fire_at: Option<i64>,
    started: i64,
    ended: Option<i64>,
    verdict: Option<String>,
    reason: Option<String>,
    recover_us: Option<i64>,
}

/// One recorded slot.
#[derive(Debug, Clone)]
struct FireRow {
    schedule: String,
    at: i64,
    skipped: Option<String>,
}

fn open(db: &Path) -> Option<Connection> {
    if !db.exists() {
        return None;
    }
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    Some(conn)
}

/// Every run, oldest first; none while the database does not exist yet.
fn runs(db: &Path) -> Vec<RunRow> {
    let Some(conn) = open(db) else {
        return Vec::new();
    };
    let Ok(mut q) = conn.prepare(
        "SELECT run_id, schedule, fire_at_us, started_at_us, ended_at_us, verdict, reason,
                time_to_recover_us FROM runs ORDER BY started_at_us",
    ) else {
        return Vec::new();
    };
    q.query_map([], |r| {
        Ok(RunRow {
            id: r.get(0)?,
            schedule: r.get(1)?,
            fire_at: r.get(2)?,
            started: r.get(3)?,
            ended: r.get(4)?,
            verdict: r.get(5)?,
            reason: r.get(6)?,
            recover_us: r.get(7)?,
        })
    })
    .expect("read runs")
    .collect::<Result<_, _>>()
    .expect("read runs")
}

/// Every recorded slot, oldest first.
fn fires(db: &Path) -> Vec<FireRow> {
    let Some(conn) = open(db) else {
        return Vec::new();
    };
    let Ok(mut q) = conn.prepare("SELECT schedule, at_us, skipped FROM fires ORDER BY at_us")
    else {
        return Vec::new();
    };
    q.query_map([], |r| {
        Ok(FireRow {
            schedule: r.get(0)?,
            at: r.get(1)?,
            skipped: r.get(2)?,
        })
    })
    .expect("read fires")
    .collect::<Result<_, _>>()
    .expect("read fires")
}

fn finished(db: &Path) -> usize {
    runs(db).iter().filter(|r| r.ended.is_some()).count()
}

/// An experiment that pauses `victim` for `pause` on this host (the local group).
fn pause_experiment(dir: &Path, name: &str, victim: u32, pause: &str) -> PathBuf {
    let fault = format!(
        r#"[[fault]]
name = "pause"
kind = "process-pause"
select = {{ pid = {victim} }}
duration = "{pause}""#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, support::always_steady_experiment(name, "", &fault)).unwrap();
    path
}

/// Writes a game day into `dir` whose state (history.db, journal) is `dir/state`, and returns
/// its path.
fn gameday(dir: &Path, file: &str, extra: &str, schedules: &str) -> PathBuf {
    let text = format!(
        r#"[coordinator]
state_dir = "state"
timezone = "UTC"
name = "test-coordinator"
lease = "2s"
{extra}

{schedules}
"#
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

fn schedule(name: &str, experiment: &Path, extra: &str) -> String {
    format!(
        r#"[[schedule]]
name = "{name}"
experiments = ["{}"]
cron = "*/2 * * * * *"
{extra}
"#,
        experiment.display()
    )
}

fn sleeper() -> Proc {
    Proc::spawn(&["sleep", "600"])
}

/// Fire times (µs) are whole multiples of the 2 s cron and none appears twice.
fn assert_distinct_slots(fires: &[FireRow]) {
    let mut seen = std::collections::BTreeSet::new();
    for f in fires {
        assert_eq!(f.at % 2_000_000, 0, "a fire off the 2 s grid: {f:?}");
        assert!(
            seen.insert((f.schedule.clone(), f.at)),
            "fire time recorded twice: {f:?}"
        );
    }
}

#[test]
fn a_two_second_cron_runs_its_experiment_three_times_and_records_each_run() {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "300ms");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &schedule("every 2s", &exp, ""),
    );
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    wait_until("three finished runs", Duration::from_secs(30), || {
        finished(&db) >= 3
    });
    coordinator.signal("-TERM");
    let status = coordinator.wait(Duration::from_secs(15));
    let log = coordinator.log();
    assert_eq!(status.code(), Some(0), "{log}");
    let runs = runs(&db);
    // A fourth fire may have started just before SIGTERM; it was let finish.
    assert!((3..=4).contains(&runs.len()), "{runs:#?}\n{log}");
    for run in &runs {
        assert_eq!(run.verdict.as_deref(), Some("passed"), "{run:?}\n{log}");
        assert_eq!(run.schedule.as_deref(), Some("every 2s"));
        let recover = run.recover_us.expect("a time to recover");
        assert!(recover < 5_000_000, "{run:?}");
        let at = run.fire_at.expect("a fire time");
        assert!(run.started >= at, "started before its slot: {run:?}");
    }
    // What an operator sees: `faultline history --json`, newest first, with the same runs.
    let out = Command::new(BIN)
        .args(["history", "--json", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .expect("run faultline history");
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), runs.len(), "{listed:#?}");
    for (shown, run) in listed.iter().zip(runs.iter().rev()) {
        assert_eq!(shown["run_id"], run.id.as_str());
        assert_eq!(shown["schedule"], "every 2s");
        assert_eq!(shown["coordinator"], "test-coordinator");
        assert_eq!(shown["verdict"], "passed");
        assert!(shown["time_to_recover_ms"].as_f64().is_some(), "{shown:#}");
    }
    let fires = fires(&db);
    assert_distinct_slots(&fires);
    assert!(log.contains("fired `every 2s` at "), "{log}");
    assert!(log.contains("next fire of `every 2s`: "), "{log}");
    assert!(log.contains("ended: passed, time to recover "), "{log}");
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
}

#[test]
fn a_coordinator_killed_mid_pause_is_reverted_by_its_watchdog_and_the_run_closed_after_restart() {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "long pause", victim.pid(), "30s");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &schedule(
            "pauses",
            &exp,
            r#"missed = { policy = "run-once", deadline = "1m" }"#,
        ),
    );
    let db = dir.path().join("state/history.db");
    let mut first = Coordinator::start(&file);
    wait_until("the victim paused", Duration::from_secs(20), || {
        state_of(victim.pid()) == ProcState::Stopped
    });
    first.signal("-KILL");
    first.wait(Duration::from_secs(5));
    // The watchdog notices its coordinator is gone and continues the victim, long before 30 s.
    wait_until("the victim continued", Duration::from_secs(10), || {
        state_of(victim.pid()) == ProcState::Awake
    });
    let killed = runs(&db);
    assert_eq!(killed.len(), 1, "{killed:#?}\n{}", first.log());
    assert!(killed[0].ended.is_none());
    drop(first);

    let short = pause_experiment(dir.path(), "long pause", victim.pid(), "300ms");
    assert_eq!(short, exp, "the same file, now with a short pause");
    let mut second = Coordinator::start(&file);
    wait_until(
        "the killed run closed and a new run finished",
        Duration::from_secs(30),
        || finished(&db) >= 2,
    );
    second.signal("-TERM");
    second.wait(Duration::from_secs(40));
    let log = second.log();
    let runs = runs(&db);
    let closed = runs.iter().find(|r| r.id == killed[0].id).unwrap();
    assert_eq!(closed.verdict.as_deref(), Some("error"), "{closed:?}");
    assert!(
        closed
            .reason
            .as_deref()
            .unwrap()
            .starts_with("the coordinator stopped during the run"),
        "{closed:?}"
    );
    let after: Vec<&RunRow> = runs.iter().filter(|r| r.id != killed[0].id).collect();
    assert!(!after.is_empty(), "{runs:#?}\n{log}");
    assert!(
        after.iter().all(|r| r.verdict.as_deref() == Some("passed")),
        "{runs:#?}\n{log}"
    );
    assert_distinct_slots(&fires(&db));
    let mut slots: Vec<i64> = runs.iter().filter_map(|r| r.fire_at).collect();
    slots.dedup();
    assert_eq!(slots.len(), runs.len(), "a fire time ran twice: {runs:#?}");
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
}

/// When a coordinator judged slots missed (µs), from its log line "... from A to T while the
/// coordinator was down or stalled": slots up to T were missed, later ones are regular fires.
fn judged_at(log: &str) -> i64 {
    log.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" to ")?;
            let (at, _) = rest.split_once(" while the coordinator was down")?;
            at.parse::<jiff::Timestamp>().ok()
        })
        .unwrap_or_else(|| panic!("no missed line in:\n{log}"))
        .as_microsecond()
}

/// Runs a coordinator until its first run ended, stops it for 10 s, restarts it until one more
/// slot after the restart has run, and returns the runs whose slots fell in the downtime.
fn runs_missed_in_ten_seconds_down(policy: &str) -> (Vec<RunRow>, String) {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "short pause", victim.pid(), "100ms");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &schedule(
            "catch",
            &exp,
            &if policy == "skip" {
                r#"missed = { policy = "skip" }"#.to_owned()
            } else {
                format!(r#"missed = {{ policy = "{policy}", deadline = "1m" }}"#)
            },
        ),
    );
    let db = dir.path().join("state/history.db");
    let mut first = Coordinator::start(&file);
    let ran = support::poll_until(Duration::from_secs(20), || finished(&db) >= 1);
    assert!(ran.is_some(), "no first run:\n{}", first.log());
    first.signal("-TERM");
    first.wait(Duration::from_secs(15));
    let down_from = jiff::Timestamp::now().as_microsecond();
    std::thread::sleep(Duration::from_secs(10));
    let before = runs(&db).len();
    let mut second = Coordinator::start(&file);
    // The instant the restarted coordinator judged the gap, as its log says ("... to T while the
    // coordinator was down"): slots up to it were missed, later ones are regular fires.
    let seen = support::poll_until(Duration::from_secs(20), || {
        second.log().contains("while the coordinator was down")
    });
    assert!(seen.is_some(), "{}", second.log());
    let up_at = judged_at(&second.log());
    wait_until(
        "a regular run after the restart",
        Duration::from_secs(20),
        || {
            runs(&db)
                .iter()
                .any(|r| r.ended.is_some() && r.fire_at.is_some_and(|at| at > up_at))
        },
    );
    second.signal("-TERM");
    second.wait(Duration::from_secs(15));
    let log = format!("{}\n{}", first.log(), second.log());
    let runs = runs(&db);
    assert!(runs.len() > before);
    assert_distinct_slots(&fires(&db));
    let missed = runs
        .into_iter()
        .filter(|r| r.fire_at.is_some_and(|at| at > down_from && at <= up_at))
        .collect();
    (missed, log)
}

#[test]
fn after_ten_seconds_down_run_once_catches_up_exactly_one_slot_and_skip_none() {
    let once = std::thread::spawn(|| runs_missed_in_ten_seconds_down("run-once"));
    let skip = std::thread::spawn(|| runs_missed_in_ten_seconds_down("skip"));
    let (once, once_log) = once.join().unwrap();
    let (skip, skip_log) = skip.join().unwrap();
    assert_eq!(once.len(), 1, "{once:#?}\n{once_log}");
    assert_eq!(once[0].verdict.as_deref(), Some("passed"), "{once_log}");
    assert!(once_log.contains("(catch-up)"), "{once_log}");
    assert!(skip.is_empty(), "{skip:#?}\n{skip_log}");
    assert!(skip_log.contains("none is run"), "{skip_log}");
}

#[test]
fn two_schedules_whose_faults_reach_this_host_never_overlap() {
    let dir = support::tempdir();
    let (a, b) = (sleeper(), sleeper());
    let exp_a = pause_experiment(dir.path(), "pause a", a.pid(), "700ms");
    let exp_b = pause_experiment(dir.path(), "pause b", b.pid(), "700ms");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &format!(
            "{}\n{}",
            schedule("a", &exp_a, ""),
            schedule("b", &exp_b, "")
        ),
    );
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    wait_until("two finished runs of each", Duration::from_secs(40), || {
        let runs = runs(&db);
        ["a", "b"].iter().all(|s| {
            runs.iter()
                .filter(|r| r.schedule.as_deref() == Some(s) && r.ended.is_some())
                .count()
                >= 2
        })
    });
    coordinator.signal("-TERM");
    coordinator.wait(Duration::from_secs(20));
    let log = coordinator.log();
    let runs = runs(&db);
    for x in &runs {
        for y in &runs {
            if x.id >= y.id {
                continue;
            }
            let (xe, ye) = (x.ended.unwrap(), y.ended.unwrap());
            assert!(
                xe <= y.started || ye <= x.started,
                "runs overlap:\n{x:?}\n{y:?}\n{log}"
            );
        }
    }
    assert!(log.contains("waits for a run on the same host(s)"), "{log}");
}

#[test]
fn nothing_runs_while_a_blackout_is_in_force_and_each_slot_records_it() {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "100ms");
    let now = jiff::Timestamp::now();
    let day = jiff::SignedDuration::from_hours(24);
    let blackout = format!(
        r#"[[blackout]]
name = "test freeze"
from = "{}"
until = "{}"
"#,
        (now - day).strftime("%Y-%m-%dT%H:%M"),
        (now + day).strftime("%Y-%m-%dT%H:%M")
    );
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &format!("{}\n{blackout}", schedule("frozen", &exp, "")),
    );
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    wait_until("three skipped slots", Duration::from_secs(20), || {
        fires(&db).len() >= 3
    });
    coordinator.signal("-TERM");
    assert_eq!(coordinator.wait(Duration::from_secs(10)).code(), Some(0));
    let log = coordinator.log();
    assert!(runs(&db).is_empty(), "{log}");
    let fires = fires(&db);
    assert_distinct_slots(&fires);
    for f in &fires {
        assert_eq!(
            f.skipped.as_deref(),
            Some("blackout `test freeze`"),
            "{f:?}\n{log}"
        );
    }
    assert!(log.contains("skipped `frozen` at "), "{log}");
    // Nothing fires for a day: the log names no slot of it as the next fire.
    assert!(!log.contains("next fire of `frozen`"), "{log}");
    assert_eq!(state_of(victim.pid()), ProcState::Awake);

    // What an operator reads: the slots with their reason, from the game day's own history, and
    // the coming slots, skipped for the same blackout.
    let listed = Command::new(BIN)
        .args(["history", "--fires", "--json", "--gameday"])
        .arg(&file)
        .output()
        .expect("run faultline history --fires");
    let listed: serde_json::Value =
        serde_json::from_slice(&listed.stdout).expect("history --fires --json prints JSON");
    let listed = listed.as_array().expect("a list of slots");
    assert_eq!(listed.len(), fires.len());
    for slot in listed {
        assert_eq!(slot["schedule"], "frozen");
        assert_eq!(slot["state"], "skipped");
        assert_eq!(slot["reason"], "blackout `test freeze`");
    }
    let next = Command::new(BIN)
        .args(["schedule", "next", "--count", "1"])
        .arg(&file)
        .output()
        .expect("run faultline schedule next");
    let next = String::from_utf8_lossy(&next.stdout);
    let first = next.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("skip ") && first.ends_with("`frozen`: blackout `test freeze`"),
        "{next}"
    );
}

#[test]
fn a_first_sigterm_lets_the_run_finish_and_a_second_reverts_it_at_once() {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "3s");
    let file = gameday(dir.path(), "gameday.toml", "", &schedule("p", &exp, ""));
    let db = dir.path().join("state/history.db");

    // One SIGTERM: the pause holds to its end, the run passes, the coordinator exits 0.
    let mut coordinator = Coordinator::start(&file);
    wait_until("the victim paused", Duration::from_secs(20), || {
        state_of(victim.pid()) == ProcState::Stopped
    });
    coordinator.signal("-TERM");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        state_of(victim.pid()),
        ProcState::Stopped,
        "the first SIGTERM cut the run short:\n{}",
        coordinator.log()
    );
    assert_eq!(coordinator.wait(Duration::from_secs(20)).code(), Some(0));
    let first = runs(&db);
    assert_eq!(first.len(), 1, "{first:#?}\n{}", coordinator.log());
    assert_eq!(first[0].verdict.as_deref(), Some("passed"), "{first:#?}");
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
    drop(coordinator);

    // Two: the pause is reverted at once and the run recorded as an error that says why.
    let mut coordinator = Coordinator::start(&file);
    wait_until("the victim paused again", Duration::from_secs(20), || {
        state_of(victim.pid()) == ProcState::Stopped
    });
    coordinator.signal("-TERM");
    std::thread::sleep(Duration::from_millis(100));
    coordinator.signal("-TERM");
    let continued = support::poll_until(Duration::from_secs(10), || {
        state_of(victim.pid()) == ProcState::Awake
    });
    assert!(continued.is_some(), "{}", coordinator.log());
    assert_eq!(coordinator.wait(Duration::from_secs(20)).code(), Some(0));
    let log = coordinator.log();
    let second: Vec<RunRow> = runs(&db).into_iter().skip(1).collect();
    assert_eq!(second.len(), 1, "{second:#?}\n{log}");
    assert_eq!(second[0].verdict.as_deref(), Some("error"), "{log}");
    assert!(
        second[0].reason.as_deref().unwrap().contains("SIGTERM"),
        "{second:#?}"
    );
    assert!(log.contains("received again: reverting"), "{log}");
}

#[test]
fn a_matching_alert_in_alertmanager_skips_fires_naming_it_until_it_is_resolved() {
    let alertmanager = Alertmanager::start();
    let alert = [("alertname", "CheckoutDown"), ("severity", "critical")];
    alertmanager.fire(&alert);
    // Not matched: only critical alerts stop chaos.
    alertmanager.fire(&[("alertname", "DiskAlmostFull"), ("severity", "warning")]);
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "100ms");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        &alertmanager.outage_toml(&[r#"severity="critical""#]),
        &schedule("guarded", &exp, ""),
    );
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    wait_until("two skipped slots", Duration::from_secs(20), || {
        fires(&db).len() >= 2
    });
    assert!(runs(&db).is_empty(), "{}", coordinator.log());
    alertmanager.resolve(&alert);
    let resolved = jiff::Timestamp::now().as_microsecond();
    let ran = support::poll_until(Duration::from_secs(20), || finished(&db) >= 1);
    assert!(
        ran.is_some(),
        "no run after the alert was resolved:\n{}",
        coordinator.log()
    );
    coordinator.signal("-TERM");
    coordinator.wait(Duration::from_secs(15));
    let log = coordinator.log();
    let fires = fires(&db);
    assert_distinct_slots(&fires);
    let skipped: Vec<&FireRow> = fires.iter().filter(|f| f.skipped.is_some()).collect();
    assert!(skipped.len() >= 2, "{fires:#?}");
    for f in &skipped {
        let reason = f.skipped.as_deref().unwrap();
        assert!(
            reason.starts_with("outage in progress: alert `CheckoutDown` firing since "),
            "{f:?}"
        );
        assert!(
            f.at < resolved,
            "skipped after the alert was resolved: {f:?}"
        );
    }
    let runs = runs(&db);
    assert!(
        runs.iter()
            .all(|r| r.fire_at.unwrap() > skipped.last().unwrap().at)
    );
    assert_eq!(runs[0].verdict.as_deref(), Some("passed"), "{log}");
    assert!(log.contains("alert `CheckoutDown`"), "{log}");
    assert!(!log.contains("DiskAlmostFull"), "{log}");
}

#[test]
fn two_coordinators_on_one_postgres_run_every_fire_once_and_the_survivor_takes_over_within_a_lease()
{
    let Some(db) = support::postgres::database("coordinator::two_coordinators_on_one_postgres")
    else {
        return;
    };
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "100ms");
    let start = |name: &str| {
        let text = format!(
            r#"[coordinator]
state_dir = "state-{name}"
timezone = "UTC"
name = "{name}"
lease = "2s"
database = "{}"

{}"#,
            db.url(),
            schedule("shared", &exp, "")
        );
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        Coordinator::start(&file)
    };
    let mut a = start("a");
    let mut b = start("b");
    // Both opened (and migrated) the database before it is read here.
    let up = support::poll_until(Duration::from_secs(20), || {
        a.log().contains("coordinator `a` started") && b.log().contains("coordinator `b` started")
    });
    assert!(up.is_some(), "not started:\n{}\n{}", a.log(), b.log());
    let finished_by = |who: &str| -> usize {
        db.query(&format!(
            "SELECT run_id FROM runs WHERE coordinator = '{who}' AND ended_at_us IS NOT NULL"
        ))
        .len()
    };
    let ran = support::poll_until(Duration::from_secs(30), || {
        finished_by("a") + finished_by("b") >= 3
    });
    assert!(ran.is_some(), "no runs:\n{}\n{}", a.log(), b.log());
    let (holder, survivor) = if finished_by("a") > 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let survivor_name = if finished_by("a") > 0 { "b" } else { "a" };
    assert_eq!(
        finished_by(survivor_name),
        0,
        "both fired:\n{}\n{}",
        holder.log(),
        survivor.log()
    );
    // Killed mid-run, so the survivor must also close that run.
    let holder_name = if survivor_name == "a" { "b" } else { "a" };
    let unfinished = format!(
        "SELECT run_id FROM runs WHERE coordinator = '{holder_name}' AND ended_at_us IS NULL"
    );
    let mid_run = support::poll_until(Duration::from_secs(10), || {
        !db.query(&unfinished).is_empty()
    });
    assert!(mid_run.is_some(), "{}", holder.log());
    let cut = db.query(&unfinished)[0][0].clone().unwrap();
    holder.signal("-KILL");
    holder.wait(Duration::from_secs(5));
    let killed_at = jiff::Timestamp::now().as_microsecond();
    let took_over =
        support::poll_until(Duration::from_secs(20), || finished_by(survivor_name) >= 1);
    assert!(took_over.is_some(), "no takeover:\n{}", survivor.log());
    survivor.signal("-TERM");
    survivor.wait(Duration::from_secs(15));
    let log = survivor.log();
    // Within one lease (2 s) of the holder's last renewal the survivor leads; its first fire is
    // the next 2 s slot after that, or a catch-up of the one missed.
    let first: i64 = db.query(&format!(
        "SELECT min(fire_at_us) FROM runs WHERE coordinator = '{survivor_name}'"
    ))[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        first - killed_at <= 2_000_000 + 2_000_000 + 1_000_000,
        "first fire of the survivor {} µs after the kill:\n{log}",
        first - killed_at
    );
    assert!(log.contains("took the lead"), "{log}");
    // Every fire ran exactly once: one run per slot, and no run left without an end.
    let per_slot = db.query("SELECT fire_at_us, count(*) FROM runs GROUP BY fire_at_us");
    assert!(per_slot.len() >= 4, "{per_slot:?}");
    for row in &per_slot {
        assert_eq!(
            row[1].as_deref(),
            Some("1"),
            "a slot ran twice: {per_slot:?}\n{log}"
        );
    }
    let closed = db.query(&format!(
        "SELECT verdict, reason FROM runs WHERE run_id = '{cut}'"
    ));
    assert_eq!(closed[0][0].as_deref(), Some("error"), "{closed:?}\n{log}");
    assert_eq!(
        closed[0][1].as_deref(),
        Some(
            format!(
                "the coordinator stopped during the run (coordinator `{holder_name}` lost the lead; closed by `{survivor_name}`)"
            )
            .as_str()
        ),
        "{log}"
    );
    let open = db.query("SELECT run_id, coordinator FROM runs WHERE ended_at_us IS NULL");
    assert!(open.is_empty(), "{open:?}\n{log}");
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
}

#[test]
fn a_halted_agent_skips_fires_and_an_unreachable_one_makes_the_run_an_error_with_nothing_injected()
{
    let dir = support::tempdir();
    let mut agent = TlsAgent::start(&dir.path().join("agent"));
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "ca = \"{}\"\ntoken_file = \"{}\"\n\n[[agent]]\nname = \"w1\"\naddress = \"{}\"\ntags = {{ role = \"web\" }}\n",
            agent.certs.ca().display(),
            agent.certs.file("token").display(),
            agent.url("")
        ),
    )
    .unwrap();
    let victim = sleeper();
    let exp = dir.path().join("remote.toml");
    std::fs::write(
        &exp,
        support::always_steady_experiment(
            "remote pause",
            "[targets.web]\ntags = { role = \"web\" }",
            &format!(
                "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\non = \"web\"\nselect = {{ pid = {} }}\nduration = \"300ms\"",
                victim.pid()
            ),
        ),
    )
    .unwrap();
    let file = gameday(
        dir.path(),
        "gameday.toml",
        r#"agents = "inventory.toml""#,
        &schedule("remote", &exp, ""),
    );
    let db = dir.path().join("state/history.db");
    let halt = Command::new(BIN)
        .args(["halt", "--agents"])
        .arg(&inventory)
        .output()
        .unwrap();
    assert!(halt.status.success(), "{halt:?}");

    let mut coordinator = Coordinator::start(&file);
    wait_until("two skipped slots", Duration::from_secs(20), || {
        fires(&db).len() >= 2
    });
    coordinator.signal("-TERM");
    coordinator.wait(Duration::from_secs(15));
    let log = coordinator.log();
    assert!(runs(&db).is_empty(), "{log}");
    for f in fires(&db) {
        let reason = f.skipped.unwrap_or_default();
        assert!(
            reason.starts_with("agents halted: agent `w1` is halted"),
            "{reason}\n{log}"
        );
    }
    drop(coordinator);

    agent.kill();
    let mut coordinator = Coordinator::start(&file);
    let ran = support::poll_until(Duration::from_secs(20), || finished(&db) >= 1);
    assert!(ran.is_some(), "{}", coordinator.log());
    coordinator.signal("-TERM");
    coordinator.wait(Duration::from_secs(15));
    let log = coordinator.log();
    let run = &runs(&db)[0];
    assert_eq!(run.verdict.as_deref(), Some("error"), "{run:?}\n{log}");
    let reason = run.reason.as_deref().unwrap();
    assert!(reason.ends_with("; nothing was injected"), "{reason}");
    assert!(reason.contains(&agent.listen), "{reason}");
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
}

#[test]
fn a_coordinator_killed_without_its_watchdog_reverts_the_journal_at_restart_and_says_so() {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "long pause", victim.pid(), "30s");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &schedule("pauses", &exp, ""),
    );
    let db = dir.path().join("state/history.db");
    // No watchdog: only the journal remembers the pause once the coordinator is gone.
    let mut first = Coordinator::start_with(&file, &[("FAULTLINE_NO_WATCHDOG", "1")]);
    wait_until("the victim paused", Duration::from_secs(20), || {
        state_of(victim.pid()) == ProcState::Stopped
    });
    first.signal("-KILL");
    first.wait(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        state_of(victim.pid()),
        ProcState::Stopped,
        "{}",
        first.log()
    );
    let killed = runs(&db)[0].id.clone();

    let mut second = Coordinator::start(&file);
    wait_until("the killed run closed", Duration::from_secs(20), || {
        runs(&db)
            .iter()
            .any(|r| r.id == killed && r.ended.is_some())
    });
    assert_eq!(state_of(victim.pid()), ProcState::Awake, "{}", second.log());
    second.signal("-TERM");
    second.signal("-TERM");
    second.wait(Duration::from_secs(15));
    let log = second.log();
    let closed = runs(&db).into_iter().find(|r| r.id == killed).unwrap();
    assert_eq!(closed.verdict.as_deref(), Some("error"));
    let reason = closed.reason.unwrap();
    assert!(
        reason.starts_with(&format!(
            "the coordinator stopped during the run; reverted from the journal at restart: {killed}-0 (process-pause, run {killed}): "
        )),
        "{reason}\n{log}"
    );
}

#[test]
fn a_fire_stops_at_the_first_experiment_that_does_not_pass_unless_continue_is_set() {
    let dir = support::tempdir();
    let victim = sleeper();
    // Its steady state never holds, so it does not pass (nothing is injected).
    let failing = dir.path().join("fails.toml");
    std::fs::write(
        &failing,
        support::always_steady_experiment(
            "fails",
            "",
            &format!(
                "[[fault]]\nname = \"pause\"\nkind = \"process-pause\"\nselect = {{ pid = {} }}\nduration = \"100ms\"",
                victim.pid()
            ),
        )
        .replace(r#"command = ["true"]"#, r#"command = ["false"]"#),
    )
    .unwrap();
    let passing = pause_experiment(dir.path(), "passes", victim.pid(), "100ms");
    let both = |name: &str, keep_going: bool| {
        format!(
            "[[schedule]]\nname = \"{name}\"\nexperiments = [\"{}\", \"{}\"]\ncontinue = {keep_going}\ncron = \"*/2 * * * * *\"\n",
            failing.display(),
            passing.display()
        )
    };
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &format!("{}\n{}", both("stops", false), both("goes on", true)),
    );
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    let of = |runs: &[RunRow], s: &str| -> Vec<RunRow> {
        runs.iter()
            .filter(|r| r.schedule.as_deref() == Some(s) && r.ended.is_some())
            .cloned()
            .collect()
    };
    let ran = support::poll_until(Duration::from_secs(30), || {
        let runs = runs(&db);
        of(&runs, "stops").len() >= 2 && of(&runs, "goes on").len() >= 4
    });
    assert!(ran.is_some(), "{}", coordinator.log());
    coordinator.signal("-TERM");
    coordinator.wait(Duration::from_secs(15));
    let log = coordinator.log();
    let runs = runs(&db);
    let of_fire = |s: &str, at: i64| -> usize {
        runs.iter()
            .filter(|r| r.schedule.as_deref() == Some(s) && r.fire_at == Some(at))
            .count()
    };
    for r in of(&runs, "stops") {
        assert_eq!(of_fire("stops", r.fire_at.unwrap()), 1, "{runs:#?}\n{log}");
        assert_ne!(r.verdict.as_deref(), Some("passed"), "{r:?}");
    }
    let goes_on = of(&runs, "goes on");
    let fire = goes_on[0].fire_at.unwrap();
    let per_fire: Vec<&RunRow> = goes_on.iter().filter(|r| r.fire_at == Some(fire)).collect();
    assert_eq!(per_fire.len(), 2, "{goes_on:#?}\n{log}");
    assert_ne!(per_fire[0].verdict.as_deref(), Some("passed"));
    assert_eq!(
        per_fire[1].verdict.as_deref(),
        Some("passed"),
        "{per_fire:#?}"
    );
}

#[test]
fn a_stalled_coordinator_catches_up_one_slot_instead_of_a_burst() {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "short pause", victim.pid(), "100ms");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &schedule(
            "steady",
            &exp,
            r#"missed = { policy = "run-once", deadline = "1m" }"#,
        ),
    );
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    let ran = support::poll_until(Duration::from_secs(20), || finished(&db) >= 1);
    assert!(ran.is_some(), "{}", coordinator.log());
    // Between runs (a run takes well under the 2 s period), stop it for 5 s: two or three slots
    // pass while it cannot see them.
    coordinator.signal("-STOP");
    let stopped_at = jiff::Timestamp::now().as_microsecond();
    std::thread::sleep(Duration::from_secs(5));
    let continued_at = jiff::Timestamp::now().as_microsecond();
    coordinator.signal("-CONT");
    let more = support::poll_until(Duration::from_secs(20), || {
        runs(&db)
            .iter()
            .any(|r| r.ended.is_some() && r.fire_at.is_some_and(|at| at > continued_at))
    });
    assert!(more.is_some(), "{}", coordinator.log());
    coordinator.signal("-TERM");
    coordinator.wait(Duration::from_secs(15));
    let log = coordinator.log();
    let runs = runs(&db);
    let in_stall: Vec<&RunRow> = runs
        .iter()
        .filter(|r| {
            r.fire_at
                .is_some_and(|at| at > stopped_at && at <= judged_at(&log))
        })
        .collect();
    assert_eq!(in_stall.len(), 1, "{runs:#?}\n{log}");
    assert!(
        log.contains("while the coordinator was down or stalled"),
        "{log}"
    );
    assert_distinct_slots(&fires(&db));
}

#[test]
fn a_bad_game_day_file_exits_2_naming_line_column_and_key() {
    let dir = support::tempdir();
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        "[[schedule]]\nname = \"x\"\nexperiments = [\"missing.toml\"]\ncron = \"61 * * * *\"\n",
    );
    let out = Command::new(BIN)
        .arg("coordinator")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: invalid game day {}: line ",
            file.display()
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("state").exists(), "nothing is created");
}

#[test]
fn on_conflict_skip_records_the_run_and_schedule_that_hold_the_host() {
    let dir = support::tempdir();
    let (a, b) = (sleeper(), sleeper());
    // `a` holds this host from each even second for about 2 s; `b` fires on odd seconds.
    let exp_a = pause_experiment(dir.path(), "long a", a.pid(), "1500ms");
    let exp_b = pause_experiment(dir.path(), "short b", b.pid(), "100ms");
    let b_schedule = schedule("b", &exp_b, r#"on_conflict = "skip""#)
        .replace(r#"cron = "*/2 * * * * *""#, r#"cron = "1-59/2 * * * * *""#);
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &format!("{}\n{b_schedule}", schedule("a", &exp_a, "")),
    );
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    let conflicts = |fires: &[FireRow]| -> Vec<FireRow> {
        fires
            .iter()
            .filter(|f| f.schedule == "b" && f.skipped.is_some())
            .cloned()
            .collect()
    };
    let seen = support::poll_until(Duration::from_secs(20), || {
        conflicts(&fires(&db)).len() >= 2
    });
    assert!(seen.is_some(), "{}", coordinator.log());
    coordinator.signal("-TERM");
    coordinator.signal("-TERM");
    coordinator.wait(Duration::from_secs(15));
    let log = coordinator.log();
    let runs = runs(&db);
    for f in conflicts(&fires(&db)) {
        let reason = f.skipped.unwrap();
        let holder = runs
            .iter()
            .find(|r| reason.contains(&format!("(run {})", r.id)))
            .unwrap_or_else(|| panic!("no run named in {reason}\n{log}"));
        assert_eq!(holder.schedule.as_deref(), Some("a"));
        assert!(
            reason.starts_with("conflict: schedule `a` (fire at ")
                && reason.ends_with(") is acting on host(s) local"),
            "{reason}"
        );
    }
    // `b` runs only when it finds the host free (e.g. when `a` skipped a slot of its own).
    for x in runs.iter().filter(|r| r.schedule.as_deref() == Some("b")) {
        for y in runs.iter().filter(|r| r.schedule.as_deref() == Some("a")) {
            assert!(
                x.ended.unwrap() <= y.started || y.ended.unwrap() <= x.started,
                "runs overlap:\n{x:?}\n{y:?}\n{log}"
            );
        }
    }
}

/// A coordinator named `name` on the PostgreSQL database `url` with `schedules`, its state in
/// `dir/state-NAME` and lease 2 s.
fn postgres_coordinator(dir: &Path, url: &str, name: &str, schedules: &str) -> Coordinator {
    let text = format!(
        r#"[coordinator]
state_dir = "state-{name}"
timezone = "UTC"
name = "{name}"
lease = "2s"
database = "{url}"

{schedules}"#
    );
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    Coordinator::start(&file)
}

/// The unfinished runs of coordinator `who`: (run id, fire time in µs).
fn unfinished_of(db: &support::postgres::Database, who: &str) -> Vec<(String, i64)> {
    db.query(&format!(
        "SELECT run_id, fire_at_us FROM runs WHERE coordinator = '{who}' AND ended_at_us IS NULL"
    ))
    .into_iter()
    .map(|r| {
        (
            r[0].clone().unwrap(),
            r[1].as_deref().unwrap().parse().unwrap(),
        )
    })
    .collect()
}

#[test]
fn a_follower_that_takes_the_lead_fires_the_slots_after_the_last_recorded_one() {
    let Some(db) = support::postgres::database("coordinator::a_follower_that_takes_the_lead")
    else {
        return;
    };
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "1500ms");
    let shared = schedule(
        "shared",
        &exp,
        r#"missed = { policy = "run-once", deadline = "1m" }"#,
    );
    let mut a = postgres_coordinator(dir.path(), db.url(), "a", &shared);
    wait_until("a leads", Duration::from_secs(20), || {
        a.log().contains("took the lead")
    });
    let b = postgres_coordinator(dir.path(), db.url(), "b", &shared);
    wait_until("b follows", Duration::from_secs(20), || {
        b.log().contains("following")
    });
    // A run of `a` that starts after `b` follows, killed 800 ms into its slot: `a`'s lease (2 s,
    // renewed every 0.67 s) lapses after the next slot, so `b` takes the lead after that slot
    // has passed and must still fire it: nobody recorded it.
    // (On a loaded machine a run may be seen too late in its slot: the next one will do.)
    let after = jiff::Timestamp::now().as_microsecond();
    let mut last = None;
    wait_until(
        "a run of a seen early in its slot",
        Duration::from_secs(20),
        || {
            let now = jiff::Timestamp::now().as_microsecond();
            last = unfinished_of(&db, "a")
                .into_iter()
                .map(|(_, at)| at)
                .find(|at| *at > after && now < at + 600_000);
            last.is_some()
        },
    );
    let last = last.unwrap();
    let kill_at = last + 800_000;
    let now = jiff::Timestamp::now().as_microsecond();
    std::thread::sleep(Duration::from_micros((kill_at - now).max(0).unsigned_abs()));
    a.signal("-KILL");
    a.wait(Duration::from_secs(5));
    let next = last + 2_000_000;
    let recorded = |at: i64| {
        !db.query(&format!(
            "SELECT at_us FROM fires WHERE schedule = 'shared' AND at_us = {at}"
        ))
        .is_empty()
    };
    let ran = support::poll_until(Duration::from_secs(20), || recorded(next + 4_000_000));
    assert!(ran.is_some(), "b does not fire:\n{}", b.log());
    let log = b.log();
    drop(b);
    let runs = db.query(&format!(
        "SELECT run_id, coordinator FROM runs WHERE fire_at_us = {next}"
    ));
    assert_eq!(
        runs.len(),
        1,
        "the slot after a's last ({next} µs) was lost in the takeover: {runs:?}\n{log}"
    );
    assert_eq!(runs[0][1].as_deref(), Some("b"));
}

#[test]
fn a_leader_stopped_by_sigterm_keeps_the_lead_until_its_run_ends_so_none_overlaps_it() {
    let Some(db) = support::postgres::database("coordinator::a_leader_stopped_by_sigterm") else {
        return;
    };
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "long pause", victim.pid(), "4s");
    let shared = schedule("shared", &exp, "");
    let mut a = postgres_coordinator(dir.path(), db.url(), "a", &shared);
    wait_until("a leads", Duration::from_secs(20), || {
        a.log().contains("took the lead")
    });
    let mut b = postgres_coordinator(dir.path(), db.url(), "b", &shared);
    wait_until("b follows", Duration::from_secs(20), || {
        b.log().contains("following")
    });
    let mut run = None;
    wait_until("a run of a", Duration::from_secs(20), || {
        run = unfinished_of(&db, "a").into_iter().next();
        run.is_some()
    });
    let (run, _) = run.unwrap();
    // The first SIGTERM lets the 4 s pause finish; meanwhile `a` is alive and acting on this
    // host, so `b` must neither close its run nor fire onto the host.
    a.signal("-TERM");
    assert_eq!(
        a.wait(Duration::from_secs(20)).code(),
        Some(0),
        "{}",
        a.log()
    );
    let ended_by_b = support::poll_until(Duration::from_secs(20), || {
        !db.query("SELECT run_id FROM runs WHERE coordinator = 'b' AND ended_at_us IS NOT NULL")
            .is_empty()
    });
    assert!(ended_by_b.is_some(), "b never fired:\n{}", b.log());
    b.signal("-TERM");
    b.wait(Duration::from_secs(15));
    let log = b.log();
    assert!(!log.contains("closed as error"), "{log}");
    let a_run = db.query(&format!(
        "SELECT verdict, ended_at_us FROM runs WHERE run_id = '{run}'"
    ));
    assert_eq!(a_run[0][0].as_deref(), Some("passed"), "{}", a.log());
    let a_ended: i64 = a_run[0][1].as_deref().unwrap().parse().unwrap();
    let b_first: i64 = db.query("SELECT min(started_at_us) FROM runs WHERE coordinator = 'b'")[0]
        [0]
    .as_deref()
    .unwrap()
    .parse()
    .unwrap();
    assert!(
        b_first >= a_ended,
        "b started a run {} µs before a's run ended:\n{log}",
        a_ended - b_first
    );
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
}

#[test]
fn a_run_that_ends_while_the_history_is_locked_still_gets_its_end_recorded() {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "1s");
    let file = gameday(dir.path(), "gameday.toml", "", &schedule("p", &exp, ""));
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    wait_until("a run started", Duration::from_secs(20), || {
        runs(&db).iter().any(|r| r.ended.is_none())
    });
    // Another writer (a long `faultline run` write, a backup) holds the file past the history's
    // 5 s busy timeout while the run ends: its end must be written once the file is free, not
    // left for the next start to call the run abandoned.
    let conn = Connection::open(&db).expect("open the history");
    conn.execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the history");
    std::thread::sleep(Duration::from_secs(7));
    conn.execute_batch("COMMIT").expect("unlock the history");
    drop(conn);
    let recorded = support::poll_until(Duration::from_secs(20), || {
        let runs = runs(&db);
        !runs.is_empty() && runs.iter().all(|r| r.ended.is_some())
    });
    coordinator.signal("-TERM");
    coordinator.wait(Duration::from_secs(40));
    let log = coordinator.log();
    assert!(recorded.is_some(), "{:#?}\n{log}", runs(&db));
    let runs = runs(&db);
    assert_eq!(
        runs[0].verdict.as_deref(),
        Some("passed"),
        "{runs:#?}\n{log}"
    );
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
}

#[test]
fn a_leader_whose_lease_lapsed_while_it_was_stopped_fires_nothing_when_it_resumes() {
    let Some(db) = support::postgres::database("coordinator::a_leader_whose_lease_lapsed") else {
        return;
    };
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "100ms");
    let shared = schedule(
        "shared",
        &exp,
        r#"missed = { policy = "run-once", deadline = "1m" }"#,
    );
    let mut a = postgres_coordinator(dir.path(), db.url(), "a", &shared);
    wait_until("a leads", Duration::from_secs(20), || {
        a.log().contains("took the lead")
    });
    let mut b = postgres_coordinator(dir.path(), db.url(), "b", &shared);
    wait_until("b follows", Duration::from_secs(20), || {
        b.log().contains("following")
    });
    wait_until("a run of a", Duration::from_secs(20), || {
        !db.query("SELECT run_id FROM runs WHERE coordinator = 'a' AND ended_at_us IS NOT NULL")
            .is_empty()
            && unfinished_of(&db, "a").is_empty()
    });
    // Stopped past its 2 s lease (as a VM pause or a long stall would): `b` leads meanwhile, so
    // when `a` wakes it must not act on the slots it slept through before it hears that.
    a.signal("-STOP");
    std::thread::sleep(Duration::from_secs(4));
    let mark = a.log().len();
    a.signal("-CONT");
    wait_until("a hears it lost the lead", Duration::from_secs(10), || {
        a.log()[mark..].contains("lost the lead")
    });
    std::thread::sleep(Duration::from_secs(2));
    a.signal("-TERM");
    a.wait(Duration::from_secs(15));
    b.signal("-TERM");
    b.wait(Duration::from_secs(15));
    let after = a.log()[mark..].to_owned();
    for acted in ["missed", "fired `", "already recorded", "skipped `"] {
        assert!(
            !after.contains(acted),
            "`a` acted on a slot after its lease lapsed ({acted}):\n{after}"
        );
    }
    let per_slot = db.query("SELECT fire_at_us, count(*) FROM runs GROUP BY fire_at_us");
    for row in &per_slot {
        assert_eq!(
            row[1].as_deref(),
            Some("1"),
            "a slot ran twice: {per_slot:?}"
        );
    }
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
}

/// An Alertmanager that lists no alert, but only after `delay` (a loaded or distant one): the
/// window in which a fire has passed its first checks and not yet claimed its slot.
struct SlowAlertmanager {
    url: String,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowAlertmanager {
    fn start(delay: Duration) -> SlowAlertmanager {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (asked_in, stop_in) = (asked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop_in.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                asked_in.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(delay);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]",
                );
            }
        });
        SlowAlertmanager {
            url,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SlowAlertmanager {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_sigterm_during_a_fires_checks_starts_no_run() {
    let alertmanager = SlowAlertmanager::start(Duration::from_millis(1500));
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "300ms");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        &format!(
            r#"outage = {{ alertmanager = "{}", matchers = ['severity="critical"'] }}"#,
            alertmanager.url
        ),
        &schedule("checked", &exp, ""),
    );
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    wait_until("the outage check", Duration::from_secs(20), || {
        alertmanager.asked() >= 1
    });
    coordinator.signal("-TERM");
    assert_eq!(coordinator.wait(Duration::from_secs(15)).code(), Some(0));
    let log = coordinator.log();
    assert!(runs(&db).is_empty(), "a run started after SIGTERM:\n{log}");
    assert!(
        fires(&db).iter().all(|f| f.skipped.is_some()),
        "a slot was claimed after SIGTERM:\n{log}"
    );
    assert!(
        log.contains("not started: the coordinator is stopping"),
        "{log}"
    );
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
}

#[test]
fn a_second_sigterm_exits_at_once_even_while_the_history_refuses_the_runs_end() {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "pause", victim.pid(), "30s");
    let file = gameday(dir.path(), "gameday.toml", "", &schedule("p", &exp, ""));
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    wait_until("the victim paused", Duration::from_secs(20), || {
        state_of(victim.pid()) == ProcState::Stopped
    });
    // Held until the test ends: every write of the coordinator fails after the busy timeout.
    let conn = Connection::open(&db).expect("open the history");
    conn.execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the history");
    coordinator.signal("-TERM");
    coordinator.signal("-TERM");
    wait_until("the victim continued", Duration::from_secs(10), || {
        state_of(victim.pid()) == ProcState::Awake
    });
    // One try of the end (the 5 s busy timeout), then no waiting to try again.
    let status = coordinator.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", coordinator.log());
    conn.execute_batch("ROLLBACK").expect("unlock the history");
    assert!(
        coordinator.log().contains("gave up"),
        "{}",
        coordinator.log()
    );
}

#[test]
fn a_coordinator_restarted_under_another_name_closes_the_run_its_predecessor_left() {
    // A Kubernetes Deployment on a volume: the game day names no coordinator, so each pod is
    // named after its host name, which a restarted pod does not keep.
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "long pause", victim.pid(), "30s");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &schedule("pauses", &exp, ""),
    );
    let db = dir.path().join("state/history.db");
    let mut first = Coordinator::start(&file);
    wait_until("the victim paused", Duration::from_secs(20), || {
        state_of(victim.pid()) == ProcState::Stopped
    });
    first.signal("-KILL");
    first.wait(Duration::from_secs(5));
    wait_until("the victim continued", Duration::from_secs(10), || {
        state_of(victim.pid()) == ProcState::Awake
    });
    let killed = runs(&db)[0].id.clone();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace(r#"name = "test-coordinator""#, r#"name = "next-pod""#),
    )
    .unwrap();
    // A CLI run in the same history is nobody's to close: it may well be running.
    let cli = Connection::open(&db).unwrap();
    cli.execute(
        "INSERT INTO runs (run_id, title, file, sha256, seed, started_at_us) \
         VALUES ('cli-run', 'by hand', 'x.toml', '', '1', 1)",
        [],
    )
    .unwrap();
    drop(cli);
    let mut second = Coordinator::start(&file);
    let closed = support::poll_until(Duration::from_secs(15), || {
        runs(&db)
            .iter()
            .any(|r| r.id == killed && r.ended.is_some())
    });
    second.signal("-TERM");
    second.signal("-TERM");
    second.wait(Duration::from_secs(15));
    let log = second.log();
    assert!(closed.is_some(), "the killed run is still open:\n{log}");
    let runs = runs(&db);
    let run = runs.iter().find(|r| r.id == killed).unwrap();
    assert_eq!(run.verdict.as_deref(), Some("error"), "{run:?}");
    assert!(
        run.reason
            .as_deref()
            .unwrap()
            .starts_with("the coordinator stopped during the run (coordinator `test-coordinator`"),
        "{run:?}"
    );
    let cli = runs.iter().find(|r| r.id == "cli-run").unwrap();
    assert!(cli.ended.is_none(), "{cli:?}\n{log}");
}

#[test]
fn runs_longer_than_the_period_on_one_host_queue_at_most_one_fire_of_a_schedule() {
    let dir = support::tempdir();
    let victim = sleeper();
    let exp = pause_experiment(dir.path(), "long pause", victim.pid(), "3s");
    let file = gameday(
        dir.path(),
        "gameday.toml",
        "",
        &schedule("backlog", &exp, r#"concurrency = "allow""#),
    );
    let db = dir.path().join("state/history.db");
    let mut coordinator = Coordinator::start(&file);
    // Fires every 2 s, runs of about 3.5 s on this host: without a bound the queue grows by a
    // fire every 7 s or so, for ever.
    wait_until("three runs ended", Duration::from_secs(30), || {
        finished(&db) >= 3
    });
    coordinator.signal("-TERM");
    coordinator.signal("-TERM");
    coordinator.wait(Duration::from_secs(15));
    let log = coordinator.log();
    let queued_at_stop = log
        .matches("not started: the coordinator is stopping")
        .count();
    assert!(
        queued_at_stop <= 1,
        "{queued_at_stop} fires were queued:\n{log}"
    );
    assert!(
        fires(&db).iter().any(|f| f
            .skipped
            .as_deref()
            .is_some_and(|r| r.contains("still waits for its host(s)"))),
        "{log}"
    );
    assert_eq!(state_of(victim.pid()), ProcState::Awake);
}
