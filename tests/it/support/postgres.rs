//! PostgreSQL for the integration tests: the server `scripts/postgres.sh` started for the run
//! (its superuser URL in `FAULTLINE_TEST_POSTGRES`), one fresh database per test, dropped with its
//! open sessions when the test's guard drops, whether the test passed or not.
//!
//! ```text
//! let Some(db) = support::postgres::database("coordinator::two_share_one_database") else { return };
//! // give db.url() to `database = "…"`, then count rows:
//! let fires = db.query("SELECT at_us, count(*) FROM fires GROUP BY at_us");
//! ```

use std::time::Duration;

/// The variable holding the test server's superuser URL (a `postgres` database).
pub const VAR: &str = "FAULTLINE_TEST_POSTGRES";

/// A database of this test's own on the test server; dropped on drop.
pub struct Database {
    admin: String,
    name: String,
    url: String,
}

/// A fresh database for `test`, or None (after saying so loudly) when no server was given; with
/// `FAULTLINE_REQUIRE_PRIVILEGED=1` a missing server fails the test instead.
#[must_use]
pub fn database(test: &str) -> Option<Database> {
    let Ok(admin) = std::env::var(VAR) else {
        assert!(
            std::env::var("FAULTLINE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "{test} needs a PostgreSQL server ({VAR}, started by scripts/test.sh or \
             `eval \"$(scripts/postgres.sh start)\"`) and FAULTLINE_REQUIRE_PRIVILEGED=1 forbids skipping it"
        );
        eprintln!("SKIPPED {test}: {VAR} is unset (eval \"$(scripts/postgres.sh start)\" sets it)");
        return None;
    };
    let name = format!("t_{:016x}", rand::random::<u64>());
    simple_query(&admin, &format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("create database {name} on {admin}: {e}"));
    Some(Database {
        url: with_database(&admin, &name),
        admin,
        name,
    })
}

impl Database {
    /// The URL of this database, for `database = "…"` or `--db`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rows of `sql` run in this database, every value as text (None for NULL).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        simple_query(&self.url, sql).unwrap_or_else(|e| panic!("{sql} in {}: {e}", self.name))
    }

    /// Ends every session on this database (as a crash of the server side would), returning how
    /// many there were.
    pub fn terminate_sessions(&self) -> usize {
        simple_query(
            &self.admin,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                self.name
            ),
        )
        .unwrap_or_else(|e| panic!("terminate sessions on {}: {e}", self.name))
        .len()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // FORCE ends the sessions a coordinator under test may still hold.
        if let Err(e) = simple_query(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Runs `sql` (one or more statements, no parameters: the tests' own text) at `url` on a
/// short-lived runtime and connection, so sync tests and drop guards can use it.
fn simple_query(url: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("build a runtime: {e}"))?;
    runtime.block_on(async {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e:?}"))?;
        config.connect_timeout(Duration::from_secs(10));
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect to {url}: {e:?}"))?;
        let connection = tokio::spawn(connection);
        let messages = client
            .simple_query(sql)
            .await
            .map_err(|e| format!("{e:?}"))?;
        drop(client);
        let _ = connection.await;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    })
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

/// The guard's promise, since every PostgreSQL test leans on it: the database exists while the
/// guard lives, and is gone after it drops even with a session still open on it.
#[test]
fn test_database_is_dropped_with_its_open_sessions() {
    let Some(db) = database("support::postgres::test_database_is_dropped_with_its_open_sessions")
    else {
        return;
    };
    let admin = std::env::var(VAR).expect("set when a database was made");
    let name = db.name().to_owned();
    let exists = |name: &str| {
        simple_query(
            &admin,
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        )
        .expect("list databases")
        .len()
            == 1
    };
    assert!(exists(&name), "{name} was not created");
    db.query("CREATE TABLE t (x INT); INSERT INTO t VALUES (7)");
    assert_eq!(db.query("SELECT x FROM t"), [[Some("7".to_owned())]]);

    // Sessions that stay open, as a coordinator's would: one ended by `terminate_sessions`, one
    // still open when the guard drops.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let connect = || {
        let (client, connection) = runtime
            .block_on(tokio_postgres::connect(db.url(), tokio_postgres::NoTls))
            .expect("connect");
        (client, runtime.spawn(connection))
    };
    let (ended, ended_task) = connect();
    assert!(db.terminate_sessions() >= 1, "no session to terminate");
    assert!(runtime.block_on(ended_task).expect("join").is_err());
    assert!(ended.is_closed());
    let (open, open_task) = connect();
    drop(db);
    assert!(
        !exists(&name),
        "{name} is still there after its guard dropped"
    );
    drop(open);
    let _ = runtime.block_on(open_task);
}
