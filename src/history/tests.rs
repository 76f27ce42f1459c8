//! The one suite of history-store tests, run against both stores: every case below becomes
//! `history::tests::sqlite::<case>` (a SQLite file in a temp dir) and
//! `history::tests::postgres::<case>` (a fresh database on the server named by
//! `FAULTLINE_TEST_POSTGRES`, dropped afterwards; skipped loudly when that is unset, unless
//! `FAULTLINE_REQUIRE_PRIVILEGED=1`). PostgreSQL-only behaviour (reconnects, TLS refusal) follows.

use std::time::Duration;

use jiff::Timestamp;

use super::{Filter, FireRow, FireState, History, Location, RunEnd, RunRow, RunStart};

/// Where one test's store lives, and what removes it when the test ends, passed or not.
struct TestStore {
    location: Location,
    #[expect(dead_code, reason = "held so the temp dir lives as long as the store")]
    sqlite: Option<tempfile::TempDir>,
    postgres: Option<TestDatabase>,
}

impl TestStore {
    fn sqlite() -> TestStore {
        let dir = tempfile::Builder::new()
            .prefix("faultline-history-")
            .tempdir()
            .expect("create a temp dir");
        TestStore {
            location: Location::in_state_dir(dir.path()),
            sqlite: Some(dir),
            postgres: None,
        }
    }

    /// A fresh database, or None (after saying so) when no server was given.
    async fn postgres(test: &str) -> Option<TestStore> {
        let Ok(admin) = std::env::var("FAULTLINE_TEST_POSTGRES") else {
            assert!(
                std::env::var("FAULTLINE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "{test} needs a PostgreSQL server (FAULTLINE_TEST_POSTGRES, started by \
                 scripts/test.sh) and FAULTLINE_REQUIRE_PRIVILEGED=1 forbids skipping it"
            );
            eprintln!(
                "SKIPPED {test}: FAULTLINE_TEST_POSTGRES is unset (scripts/postgres.sh start sets it)"
            );
            return None;
        };
        let db = TestDatabase::create(&admin).await;
        Some(TestStore {
            location: Location::Postgres(db.url.clone()),
            sqlite: None,
            postgres: Some(db),
        })
    }

    /// A new handle on the store (a new connection for PostgreSQL).
    async fn open(&self) -> History {
        History::open(&self.location)
            .await
            .unwrap_or_else(|e| panic!("open {:?}: {e}", self.location))
    }
}

/// A database of its own on the test server, dropped (with its open sessions) on drop.
struct TestDatabase {
    admin: String,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create(admin: &str) -> TestDatabase {
        let name = format!("t_{:016x}", rand::random::<u64>());
        let client = admin_client(admin).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name} on {admin}: {e:?}"));
        TestDatabase {
            admin: admin.to_owned(),
            url: with_database(admin, &name),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be the one this runs on: drop the
        // database from a thread with a runtime of its own, and wait for it.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop a test database")
                .block_on(async {
                    admin_client(&admin)
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

async fn admin_client(admin: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin}: {e:?}"));
    tokio::spawn(connection);
    client
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").expect("a postgres:// URL");
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// Every case runs once against each store.
macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = super::TestStore::sqlite();
                    super::$case(&store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let test = concat!("history::tests::postgres::", stringify!($case));
                    let Some(store) = super::TestStore::postgres(test).await else { return };
                    super::$case(&store).await;
                }
            )*
        }
    };
}

both_stores!(
    run_reads_back_as_started_then_as_finished,
    runs_are_listed_newest_first_and_filtered,
    lists_without_reports_leave_out_only_the_reports,
    fire_is_claimed_once_and_a_second_claim_changes_nothing,
    last_fire_is_the_latest_slot_of_its_schedule,
    unfinished_runs_are_those_without_an_end_by_coordinator,
    finishing_an_unknown_run_and_starting_a_run_twice_fail,
    lease_is_taken_renewed_refused_while_held_taken_after_expiry_and_released,
    concurrent_claims_from_two_handles_let_exactly_one_win,
    concurrent_opens_of_a_fresh_store_all_succeed_and_share_it,
);

/// An instant with whole milliseconds (what every store keeps exactly).
fn at(second: i64, millis: i64) -> Timestamp {
    Timestamp::from_millisecond(1_800_000_000_000 + second * 1000 + millis).expect("in range")
}

fn start(run_id: &str, title: &str, schedule: Option<&str>, second: i64) -> RunStart {
    RunStart {
        run_id: run_id.to_owned(),
        schedule: schedule.map(str::to_owned),
        fire_at: schedule.map(|_| at(second, 0)),
        title: title.to_owned(),
        file: format!("/experiments/{title}.toml"),
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        seed: u64::MAX - 7,
        started_at: at(second, 250),
        coordinator: schedule.map(|_| "coordinator-a".to_owned()),
    }
}

fn end(second: i64) -> RunEnd {
    RunEnd {
        ended_at: at(second, 750),
        verdict: "failed".to_owned(),
        exit_code: 1,
        reason: "p99 latency 812 ms above the 500 ms objective".to_owned(),
        // Microseconds: what every store keeps.
        time_to_recover: Some(Duration::from_micros(1_234_567)),
        time_to_abort: None,
        agents: vec!["web-1".to_owned(), "web-2".to_owned()],
        report_json: Some(r#"{"verdict":"failed","seed":42}"#.to_owned()),
    }
}

fn fire(schedule: &str, second: i64, by: &str, state: FireState) -> FireRow {
    FireRow {
        schedule: schedule.to_owned(),
        at: at(second, 0),
        state,
        by: by.to_owned(),
        recorded_at: at(second, 3),
        jitter: Duration::from_millis(1500),
    }
}

fn ids(rows: &[RunRow]) -> Vec<&str> {
    rows.iter().map(|r| r.start.run_id.as_str()).collect()
}

async fn run_reads_back_as_started_then_as_finished(store: &TestStore) {
    let history = store.open().await;
    let started = start("r1", "web survives a kill", Some("tuesdays"), 10);
    history.start_run(&started).await.expect("start run");
    let running = RunRow {
        start: started.clone(),
        end: None,
    };
    assert_eq!(history.run("r1").await.expect("read run"), Some(running));
    assert_eq!(history.run("nope").await.expect("read run"), None);

    let ended = end(20);
    history.finish_run("r1", &ended).await.expect("finish run");
    let finished = RunRow {
        start: started,
        end: Some(ended),
    };
    assert_eq!(
        history.run("r1").await.expect("read run"),
        Some(finished.clone())
    );
    assert_eq!(
        history.runs(&Filter::default()).await.expect("list runs"),
        vec![finished]
    );
}

async fn runs_are_listed_newest_first_and_filtered(store: &TestStore) {
    let history = store.open().await;
    // Started out of order, so the order read back is the stores' and not the insertion's.
    for (id, title, schedule, second) in [
        ("b", "kill", Some("nightly"), 20),
        ("a", "kill", None, 10),
        ("d", "pause", Some("nightly"), 40),
        ("c", "pause", Some("weekly"), 30),
    ] {
        history
            .start_run(&start(id, title, schedule, second))
            .await
            .expect("start run");
    }
    history.finish_run("b", &end(25)).await.expect("finish b");

    let list = |filter: Filter| {
        let history = history.clone();
        async move { history.runs(&filter).await.expect("list runs") }
    };
    assert_eq!(ids(&list(Filter::default()).await), ["d", "c", "b", "a"]);
    let kill = Filter {
        experiment: Some("kill".to_owned()),
        ..Filter::default()
    };
    assert_eq!(ids(&list(kill).await), ["b", "a"]);
    let nightly = Filter {
        schedule: Some("nightly".to_owned()),
        ..Filter::default()
    };
    assert_eq!(ids(&list(nightly).await), ["d", "b"]);
    let last_two = Filter {
        last: Some(2),
        ..Filter::default()
    };
    assert_eq!(ids(&list(last_two).await), ["d", "c"]);
    let both = Filter {
        experiment: Some("pause".to_owned()),
        schedule: Some("weekly".to_owned()),
        last: Some(5),
    };
    assert_eq!(ids(&list(both).await), ["c"]);
    let none = Filter {
        experiment: Some("no such experiment".to_owned()),
        ..Filter::default()
    };
    assert_eq!(ids(&list(none).await), Vec::<&str>::new());
}

async fn lists_without_reports_leave_out_only_the_reports(store: &TestStore) {
    let history = store.open().await;
    for (id, title, second) in [("a", "kill", 10), ("b", "pause", 20), ("c", "kill", 30)] {
        history
            .start_run(&start(id, title, Some("nightly"), second))
            .await
            .expect("start run");
        history
            .finish_run(id, &end(second + 1))
            .await
            .expect("finish run");
    }
    for filter in [
        Filter::default(),
        Filter {
            experiment: Some("kill".to_owned()),
            last: Some(1),
            ..Filter::default()
        },
    ] {
        let mut whole = history.runs(&filter).await.expect("runs");
        assert!(
            whole
                .iter()
                .all(|r| r.end.as_ref().is_some_and(|e| e.report_json.is_some()))
        );
        for row in &mut whole {
            row.end.as_mut().expect("finished").report_json = None;
        }
        let listed = history
            .runs_without_reports(&filter)
            .await
            .expect("runs without reports");
        assert_eq!(listed, whole, "{filter:?}");
    }
}

async fn fire_is_claimed_once_and_a_second_claim_changes_nothing(store: &TestStore) {
    let history = store.open().await;
    let first = fire("nightly", 60, "coordinator-a", FireState::Fired);
    assert!(history.claim_fire(&first).await.expect("claim"));
    let again = fire(
        "nightly",
        60,
        "coordinator-b",
        FireState::Skipped("blackout year-end freeze".to_owned()),
    );
    assert!(!history.claim_fire(&again).await.expect("claim again"));
    // Another schedule's slot at the same instant is its own.
    let skipped = fire(
        "weekly",
        60,
        "coordinator-b",
        FireState::Skipped("alert HighErrorRate is firing".to_owned()),
    );
    assert!(history.claim_fire(&skipped).await.expect("claim weekly"));

    assert_eq!(
        history.fires(Some("nightly")).await.expect("fires"),
        vec![first.clone()]
    );
    assert_eq!(
        history.fires(None).await.expect("fires"),
        vec![first, skipped]
    );
}

async fn last_fire_is_the_latest_slot_of_its_schedule(store: &TestStore) {
    let history = store.open().await;
    assert_eq!(history.last_fire("nightly").await.expect("last"), None);
    for (schedule, second, state) in [
        ("nightly", 120, FireState::Fired),
        (
            "nightly",
            180,
            FireState::Skipped("outside only_within".to_owned()),
        ),
        ("nightly", 60, FireState::Fired),
        ("weekly", 600, FireState::Fired),
    ] {
        let row = fire(schedule, second, "coordinator-a", state);
        assert!(history.claim_fire(&row).await.expect("claim"));
    }
    // A skipped slot counts: it was decided, and must not be decided again after a restart.
    assert_eq!(
        history.last_fire("nightly").await.expect("last"),
        Some(at(180, 0))
    );
    let ats: Vec<Timestamp> = history
        .fires(Some("nightly"))
        .await
        .expect("fires")
        .iter()
        .map(|f| f.at)
        .collect();
    assert_eq!(ats, [at(60, 0), at(120, 0), at(180, 0)]);
}

async fn unfinished_runs_are_those_without_an_end_by_coordinator(store: &TestStore) {
    let history = store.open().await;
    let mut by_a = start("a1", "kill", Some("nightly"), 10);
    by_a.coordinator = Some("coordinator-a".to_owned());
    let mut by_b = start("b1", "kill", Some("nightly"), 20);
    by_b.coordinator = Some("coordinator-b".to_owned());
    let cli = start("cli", "kill", None, 30);
    let mut done = start("a2", "kill", Some("nightly"), 5);
    done.coordinator = Some("coordinator-a".to_owned());
    for run in [&by_a, &by_b, &cli, &done] {
        history.start_run(run).await.expect("start run");
    }
    history.finish_run("a2", &end(6)).await.expect("finish");

    let unfinished = |coordinator: Option<&'static str>| {
        let history = history.clone();
        async move {
            let mut rows = history.unfinished(coordinator).await.expect("unfinished");
            rows.sort_by(|x, y| x.start.run_id.cmp(&y.start.run_id));
            rows
        }
    };
    let a = unfinished(Some("coordinator-a")).await;
    assert_eq!(
        a,
        vec![RunRow {
            start: by_a,
            end: None
        }]
    );
    assert_eq!(ids(&unfinished(None).await), ["a1", "b1", "cli"]);
    assert_eq!(
        ids(&unfinished(Some("coordinator-c")).await),
        Vec::<&str>::new()
    );
}

async fn finishing_an_unknown_run_and_starting_a_run_twice_fail(store: &TestStore) {
    let history = store.open().await;
    let err = history
        .finish_run("ghost", &end(1))
        .await
        .expect_err("finishing a run that never started");
    assert!(err.to_string().contains("ghost"), "{err}");

    let run = start("twice", "kill", None, 1);
    history.start_run(&run).await.expect("start run");
    let err = history
        .start_run(&run)
        .await
        .expect_err("starting the same run id twice");
    assert!(err.to_string().contains("twice"), "{err}");
    assert_eq!(
        ids(&history.runs(&Filter::default()).await.expect("runs")),
        ["twice"]
    );
}

async fn lease_is_taken_renewed_refused_while_held_taken_after_expiry_and_released(
    store: &TestStore,
) {
    let history = store.open().await;
    let long = Duration::from_secs(60);
    let short = Duration::from_millis(300);

    assert!(history.try_lead("lead", "a", short).await.expect("take"));
    assert!(
        !history
            .try_lead("lead", "b", long)
            .await
            .expect("held by a")
    );
    // Another name is another lease.
    assert!(history.try_lead("other", "b", long).await.expect("other"));

    // Past its 300 ms the lease is free for anyone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(history.try_lead("lead", "b", short).await.expect("expired"));
    assert!(
        !history
            .try_lead("lead", "a", long)
            .await
            .expect("held by b")
    );

    // The holder renews even after expiry (nobody took it), and the renewal is what counts:
    // 60 s from now, so the other is refused although the first 300 ms have long passed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(history.try_lead("lead", "b", long).await.expect("renew"));
    assert!(!history.try_lead("lead", "a", short).await.expect("renewed"));

    // Only the holder can release it; then the other takes it at once.
    history
        .release_lead("lead", "a")
        .await
        .expect("release by non-holder");
    assert!(
        !history
            .try_lead("lead", "a", short)
            .await
            .expect("still b's")
    );
    history.release_lead("lead", "b").await.expect("release");
    assert!(history.try_lead("lead", "a", long).await.expect("released"));
    history.release_lead("lead", "a").await.expect("release");
    history
        .release_lead("lead", "a")
        .await
        .expect("release twice");
}

async fn concurrent_claims_from_two_handles_let_exactly_one_win(store: &TestStore) {
    let one = store.open().await;
    let two = store.open().await;
    for second in 0..25 {
        let (a, b) = (one.clone(), two.clone());
        let claim_a = tokio::spawn(async move {
            a.claim_fire(&fire("every-2s", second, "coordinator-a", FireState::Fired))
                .await
        });
        let claim_b = tokio::spawn(async move {
            b.claim_fire(&fire("every-2s", second, "coordinator-b", FireState::Fired))
                .await
        });
        let a = claim_a.await.expect("join").expect("claim a");
        let b = claim_b.await.expect("join").expect("claim b");
        assert!(a ^ b, "slot {second}: a won {a}, b won {b}");

        let name = format!("lead-{second}");
        let (a, b) = (one.clone(), two.clone());
        let (na, nb) = (name.clone(), name);
        let lead_a =
            tokio::spawn(async move { a.try_lead(&na, "a", Duration::from_secs(60)).await });
        let lead_b =
            tokio::spawn(async move { b.try_lead(&nb, "b", Duration::from_secs(60)).await });
        let a = lead_a.await.expect("join").expect("lead a");
        let b = lead_b.await.expect("join").expect("lead b");
        assert!(a ^ b, "lease {second}: a took it {a}, b took it {b}");
    }
    let fires = one.fires(Some("every-2s")).await.expect("fires");
    assert_eq!(fires.len(), 25);
}

async fn concurrent_opens_of_a_fresh_store_all_succeed_and_share_it(store: &TestStore) {
    // Eight at once, as processes starting together on a new state directory or database would
    // (SQLite: `PRAGMA journal_mode = WAL` can answer SQLITE_BUSY without waiting on the busy
    // timeout when two connections race to switch a new file).
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let location = store.location.clone();
            tokio::spawn(async move { History::open(&location).await })
        })
        .collect();
    let mut handles = Vec::new();
    for open in opens {
        handles.push(open.await.expect("join").expect("open a fresh store"));
    }
    handles[0]
        .start_run(&start("shared", "kill", None, 1))
        .await
        .expect("start run");
    drop(handles);
    // Opening again finds the schema current and the run there.
    let again = store.open().await;
    assert_eq!(
        ids(&again.runs(&Filter::default()).await.expect("runs")),
        ["shared"]
    );
}

// PostgreSQL only.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_call_after_a_broken_connection_reconnects() {
    let test = "history::tests::postgres_call_after_a_broken_connection_reconnects";
    let Some(store) = TestStore::postgres(test).await else {
        return;
    };
    let history = store.open().await;
    let row = fire("nightly", 1, "coordinator-a", FireState::Fired);
    assert!(history.claim_fire(&row).await.expect("claim"));

    let db = store.postgres.as_ref().expect("a postgres store");
    let admin = admin_client(&db.admin).await;
    let killed = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .expect("terminate the store's sessions");
    assert!(killed >= 1, "no session of the store to terminate");

    // The call that finds the session dead may fail; the next one opens a new session.
    let first = history.last_fire("nightly").await;
    let second = history.last_fire("nightly").await.unwrap_or_else(|e| {
        panic!("a call after a broken connection: {e} (the first said {first:?})")
    });
    assert_eq!(second, Some(at(1, 0)));
}

#[tokio::test]
async fn postgres_sslmode_require_is_refused_before_connecting() {
    // Port 9 (discard) on loopback: nothing is contacted, the URL is refused first.
    let err = History::open(&Location::Postgres(
        "postgres://faultline:secret@127.0.0.1:9/history?sslmode=require".to_owned(),
    ))
    .await
    .expect_err("sslmode=require without TLS support");
    assert_eq!(
        err.to_string(),
        "postgres history at postgres://faultline:***@127.0.0.1:9/history?sslmode=require: \
         sslmode=require is not supported: faultline connects without TLS (use sslmode=disable, \
         over loopback or a private network)"
    );
}

#[test]
fn with_database_replaces_only_the_database() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "t_1"),
        "postgres://postgres@127.0.0.1:5432/t_1"
    );
    assert_eq!(
        with_database("postgresql://u:p@h:1/db?sslmode=disable", "t_2"),
        "postgresql://u:p@h:1/t_2?sslmode=disable"
    );
}

#[tokio::test]
async fn postgres_unreachable_server_is_named_without_its_password() {
    // A port that was free a moment ago: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let err = History::open(&Location::Postgres(format!(
        "postgres://faultline:hunter2@127.0.0.1:{port}/history"
    )))
    .await
    .expect_err("nothing listens there");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "postgres history at postgres://faultline:***@127.0.0.1:{port}/history: failed to connect: "
        )),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_from_a_newer_faultline_is_refused() {
    let test = "history::tests::postgres_schema_from_a_newer_faultline_is_refused";
    let Some(store) = TestStore::postgres(test).await else {
        return;
    };
    drop(store.open().await);
    let db = store.postgres.as_ref().expect("a postgres store");
    admin_client(&db.url)
        .await
        .batch_execute("UPDATE schema_version SET version = 99")
        .await
        .expect("pretend a newer faultline migrated");
    let err = History::open(&store.location)
        .await
        .expect_err("a schema newer than this faultline");
    assert_eq!(
        err.to_string(),
        format!(
            "postgres history at {}: the database has schema version 99, newer than the 1 this \
             faultline knows; use a newer faultline or another database",
            db.url
        )
    );
}

/// Continues a stopped process when dropped.
struct Continue(nix::unistd::Pid);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hung_database_refuses_the_lead_after_one_lease_then_reconnects() {
    let test =
        "history::tests::postgres_hung_database_refuses_the_lead_after_one_lease_then_reconnects";
    let Some(store) = TestStore::postgres(test).await else {
        return;
    };
    let history = store.open().await;
    assert!(
        history
            .try_lead("lead", "a", Duration::from_secs(1))
            .await
            .expect("take")
    );

    // Stop the server process serving this store's session, as a hung database would.
    let db = store.postgres.as_ref().expect("a postgres store");
    let admin = admin_client(&db.admin).await;
    let pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'faultline'",
            &[&db.name],
        )
        .await
        .expect("find the store's session")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pids.len(), 1, "sessions of the store: {pids:?}");
    let backend = nix::unistd::Pid::from_raw(pids[0]);
    if let Err(e) = nix::sys::signal::kill(backend, nix::sys::signal::Signal::SIGSTOP) {
        assert!(
            std::env::var("FAULTLINE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "{test} must stop a postgres process: {e}"
        );
        eprintln!("SKIPPED {test}: cannot stop postgres process {backend}: {e}");
        return;
    }
    // Continued however the test ends, or dropping the database would wait on it for ever.
    let stopped = Continue(backend);

    let err = history
        .try_lead("lead", "a", Duration::from_secs(1))
        .await
        .expect_err("no answer from a stopped server");
    assert_eq!(
        err.to_string(),
        format!(
            "postgres history at {}: failed to take the lead: no answer within 1000 ms",
            db.url
        )
    );
    drop(stopped);
    // The hung session was dropped; the next call opens a new one and renews.
    assert!(
        history
            .try_lead("lead", "a", Duration::from_secs(1))
            .await
            .expect("renew")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_current_schema_is_opened_without_the_migration_lock() {
    let test = "history::tests::postgres_current_schema_is_opened_without_the_migration_lock";
    let Some(store) = TestStore::postgres(test).await else {
        return;
    };
    drop(store.open().await);
    // Another process holds the migration lock (as a coordinator migrating would): an open that
    // finds the schema current must not wait for it.
    let db = store.postgres.as_ref().expect("a postgres store");
    let holder = admin_client(&db.url).await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&super::postgres::MIGRATION_LOCK],
        )
        .await
        .expect("take the migration lock");
    let opened = tokio::time::timeout(Duration::from_secs(10), History::open(&store.location))
        .await
        .expect("open waited on the migration lock although the schema is current");
    let history = opened.expect("open");
    assert_eq!(history.last_fire("nightly").await.expect("read"), None);
}
