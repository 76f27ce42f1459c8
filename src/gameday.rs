//! Owns the TOML of game-day files (`[coordinator]`, `[[schedule]]`, `[[blackout]]`): strict like
//! experiments (unknown keys and bad values are errors naming file, line, column and key), turned
//! once into a validated `GameDay` whose timing lives in `schedule::Calendar`.
//!
//! Decided here (documented in `gamedays/README.md`): relative paths (`state_dir`, `agents`,
//! `experiments`) are read against the game-day file's directory; `[coordinator].timezone`
//! defaults to `UTC`; `lease` has `run --lease`'s bounds; `missed` defaults to `skip`.

mod raw;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::experiment::{key_before, line_col};
use crate::fault::check::MAX_LEASE;
use crate::schedule::{
    Blackout, BlackoutWhen, Calendar, Concurrency, MAX_DEADLINE, MAX_JITTER, Missed, MissedPolicy,
    OnConflict, Schedule, Window,
};
use crate::units::Dur;

/// The lease when `[coordinator]` names none (as `run --lease`).
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// The shortest lease (as `run --lease`): a shorter one reverts faults on a scheduling hiccup.
pub(crate) const MIN_LEASE: Duration = Duration::from_millis(300);

/// A validated game-day file.
#[derive(Debug, Clone)]
pub(crate) struct GameDay {
    pub(crate) file: PathBuf,
    pub(crate) coordinator: Coordinator,
    pub(crate) calendar: Calendar,
    /// `[[notify]]`: webhooks told of every run the coordinator makes (besides each experiment's own).
    pub(crate) notify: Vec<crate::notify::Notify>,
}

/// `[coordinator]`.
#[derive(Debug, Clone)]
pub(crate) struct Coordinator {
    /// History database (SQLite `history.db`), the embedded agent's journal, stored reports.
    pub(crate) state_dir: PathBuf,
    /// The default zone of every schedule and blackout, as written (IANA name).
    pub(crate) timezone: String,
    /// Agent inventory, resolved against the game-day file's directory (as `run --agents`).
    pub(crate) agents: Option<PathBuf>,
    /// `postgres://…`: the history lives there and coordinators sharing it elect who fires.
    pub(crate) database: Option<String>,
    /// No chaos during an incident: fires are skipped while a matching alert fires.
    pub(crate) outage: Option<Outage>,
    /// The lease of every run's faults (as `run --lease`) [default 5s].
    pub(crate) lease: Duration,
    /// The coordinator's name in the history and logs [default: the host name].
    pub(crate) name: String,
    /// Seed of every schedule's jitter (`schedule::jitter`) [default 0].
    pub(crate) seed: u64,
    /// The dashboard, JSON API and `/metrics` (`listen`); None: no web server.
    pub(crate) web: Option<Web>,
}

/// `listen`, `token_file`, `dashboard_token` of `[coordinator]`.
#[derive(Debug, Clone)]
pub(crate) struct Web {
    /// Plain HTTP: bind it to loopback or put it behind a TLS proxy.
    pub(crate) listen: std::net::SocketAddr,
    /// The bearer token of the actions (and of reading, with `dashboard_token`), read at start.
    /// None: actions are refused.
    pub(crate) token_file: Option<PathBuf>,
    /// Reading (pages, API, `/metrics`) needs the token too.
    pub(crate) dashboard_token: bool,
}

/// `outage = { alertmanager = "http://…", matchers = ['severity="critical"'] }`.
#[derive(Debug, Clone)]
pub(crate) struct Outage {
    /// Base URL of Alertmanager (the API v2 lives under `/api/v2/`).
    pub(crate) alertmanager: String,
    /// Alertmanager matchers as written (`name="value"`, `name=~"regex"`, `!=`, `!~`); an alert
    /// counts when it is active and matches all of them.
    pub(crate) matchers: Vec<String>,
}

/// Why a game-day file was refused; `Display` names the file, line, column and key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct GameDayError(pub(crate) String);

/// Reads and validates a game-day file.
pub(crate) fn load(path: &Path) -> Result<GameDay, GameDayError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        GameDayError(format!(
            "{}: failed to read the game-day file: {e}",
            path.display()
        ))
    })?;
    parse(path, &text)
}

/// Validates game-day text; `path` names the file in messages and is the base of relative paths.
pub(crate) fn parse(path: &Path, text: &str) -> Result<GameDay, GameDayError> {
    let v = Validator {
        path,
        text,
        base: match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        },
    };
    let root = DeTable::parse(text).map_err(|e| v.toml_error(&e))?;
    let raw = raw::GameDay::deserialize(toml::de::Deserializer::from(root))
        .map_err(|e| v.toml_error(&e))?;
    v.gameday(raw)
}

/// Whether a TOML text is a game day rather than an experiment (it has `[coordinator]`,
/// `[[schedule]]` or `[[blackout]]` at the top level), so `validate` can take either. Text that is
/// not TOML is judged by its table headers, so its syntax error is reported by the right reader.
pub(crate) fn is_gameday(text: &str) -> bool {
    const TABLES: [&str; 3] = ["coordinator", "schedule", "blackout"];
    if let Ok(root) = DeTable::parse(text) {
        return root
            .get_ref()
            .keys()
            .any(|k| TABLES.contains(&k.get_ref().as_ref()));
    }
    text.lines().any(|l| {
        let header: String = l
            .split('#')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '[' && *c != ']')
            .collect();
        l.trim_start().starts_with('[') && TABLES.contains(&header.as_str())
    })
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    base: PathBuf,
}

type VResult<T> = Result<T, GameDayError>;

impl Validator<'_> {
    /// An error at `span`, naming `key`.
    fn at(&self, span: Range<usize>, key: &str, message: impl std::fmt::Display) -> GameDayError {
        let (line, col) = line_col(self.text, span.start);
        GameDayError(format!(
            "{}: line {line}, column {col}: `{key}`: {message}",
            self.path.display()
        ))
    }

    fn toml_error(&self, e: &toml::de::Error) -> GameDayError {
        let mut message = crate::experiment::suggest_field(e.message().trim());
        // A bad value's span points at the value; name the key it belongs to as well.
        if let Some(key) = e.span().and_then(|span| key_before(self.text, span.start)) {
            if !message.contains(&format!("`{key}`")) {
                message = format!("`{key}`: {message}");
            }
        }
        match e.span() {
            Some(span) => {
                let (line, col) = line_col(self.text, span.start);
                GameDayError(format!(
                    "{}: line {line}, column {col}: {message}",
                    self.path.display()
                ))
            }
            None => GameDayError(format!("{}: {message}", self.path.display())),
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    fn gameday(&self, raw: raw::GameDay) -> VResult<GameDay> {
        let coordinator = self.coordinator(raw.coordinator)?;
        let default_zone = jiff::tz::TimeZone::get(&coordinator.timezone)
            .expect("the coordinator's zone was checked");
        let mut schedules: Vec<Schedule> = Vec::new();
        for s in raw.schedule {
            if schedules
                .iter()
                .any(|o| o.name == s.get_ref().name.get_ref().trim())
            {
                return Err(self.at(
                    s.get_ref().name.span(),
                    "name",
                    format!(
                        "two schedules are named `{}`: schedule names must be unique",
                        s.get_ref().name.get_ref().trim()
                    ),
                ));
            }
            let schedule = self.schedule(s.into_inner(), &coordinator.timezone, &default_zone)?;
            schedules.push(schedule);
        }
        let mut blackouts: Vec<Blackout> = Vec::new();
        for b in raw.blackout {
            if blackouts
                .iter()
                .any(|o| o.name == b.get_ref().name.get_ref().trim())
            {
                return Err(self.at(
                    b.get_ref().name.span(),
                    "name",
                    format!(
                        "two blackouts are named `{}`: blackout names must be unique",
                        b.get_ref().name.get_ref().trim()
                    ),
                ));
            }
            let span = b.span();
            let blackout =
                self.blackout(span, b.get_ref(), &coordinator.timezone, &default_zone)?;
            blackouts.push(blackout);
        }
        let notify = crate::notify::validate_all(raw.notify).map_err(|e| {
            let (line, col) = line_col(self.text, e.span.start);
            GameDayError(format!(
                "{}: line {line}, column {col}: {}",
                self.path.display(),
                e.message
            ))
        })?;
        Ok(GameDay {
            file: self.path.to_owned(),
            coordinator,
            notify,
            calendar: Calendar {
                schedules,
                blackouts,
            },
        })
    }

    fn coordinator(&self, raw: raw::Coordinator) -> VResult<Coordinator> {
        if raw.state_dir.get_ref().trim().is_empty() {
            return Err(self.at(raw.state_dir.span(), "state_dir", "must not be empty"));
        }
        let timezone = match &raw.timezone {
            Some(tz) => {
                self.zone(tz)?;
                tz.get_ref().clone()
            }
            None => "UTC".to_owned(),
        };
        let agents = match raw.agents {
            None => None,
            Some(a) => {
                let p = self.resolve(a.get_ref());
                if !p.is_file() {
                    return Err(self.at(
                        a.span(),
                        "agents",
                        format!("no inventory file at {}", p.display()),
                    ));
                }
                Some(p)
            }
        };
        let database = match raw.database {
            None => None,
            Some(d) => {
                let url = d.get_ref();
                // The URL may hold a password: messages never repeat it.
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(self.at(
                        d.span(),
                        "database",
                        "must be a PostgreSQL URL starting with `postgres://` or `postgresql://`",
                    ));
                }
                if let Err(e) = tokio_postgres::Config::from_str(url) {
                    return Err(self.at(
                        d.span(),
                        "database",
                        format!("invalid PostgreSQL URL: {e}"),
                    ));
                }
                Some(url.clone())
            }
        };
        let outage = raw.outage.map(|o| self.outage(o)).transpose()?;
        let lease = match raw.lease {
            None => DEFAULT_LEASE,
            Some(l) => {
                let d = l.get_ref().0;
                if d < MIN_LEASE {
                    return Err(self.at(
                        l.span(),
                        "lease",
                        format!("the lease must be at least 300ms (got {})", Dur(d)),
                    ));
                }
                // Agents refuse longer leases: a lost coordinator must not hold faults for hours.
                if d > MAX_LEASE {
                    return Err(self.at(
                        l.span(),
                        "lease",
                        format!(
                            "the lease must be at most {} (got {})",
                            Dur(MAX_LEASE),
                            Dur(d)
                        ),
                    ));
                }
                d
            }
        };
        let name = match raw.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                return Err(self.at(n.span(), "name", "must not be empty"));
            }
            Some(n) => n.into_inner(),
            None => host_name(),
        };
        let web = self.web(raw.listen, raw.token_file, raw.dashboard_token.as_ref())?;
        Ok(Coordinator {
            web,
            state_dir: self.resolve(raw.state_dir.get_ref()),
            timezone,
            agents,
            database,
            outage,
            lease,
            name,
            seed: raw.seed.unwrap_or(0),
        })
    }

    /// `listen`, `token_file` and `dashboard_token`: the last two mean nothing without the first,
    /// and a token required for reading must exist.
    fn web(
        &self,
        listen: Option<Spanned<String>>,
        token_file: Option<Spanned<String>>,
        dashboard_token: Option<&Spanned<bool>>,
    ) -> VResult<Option<Web>> {
        let Some(listen) = listen else {
            if let Some(t) = &token_file {
                return Err(self.at(t.span(), "token_file", "needs `listen` (the web server)"));
            }
            if let Some(d) = dashboard_token {
                return Err(self.at(
                    d.span(),
                    "dashboard_token",
                    "needs `listen` (the web server)",
                ));
            }
            return Ok(None);
        };
        let addr = listen
            .get_ref()
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                self.at(
                    listen.span(),
                    "listen",
                    format!(
                        "must be an address and port such as \"127.0.0.1:7070\" (got {:?}: {e})",
                        listen.get_ref()
                    ),
                )
            })?;
        let token_file = match token_file {
            None => None,
            Some(t) => {
                let p = self.resolve(t.get_ref());
                if !p.is_file() {
                    return Err(self.at(
                        t.span(),
                        "token_file",
                        format!("no token file at {}", p.display()),
                    ));
                }
                Some(p)
            }
        };
        let required = dashboard_token.is_some_and(|d| *d.get_ref());
        if required && token_file.is_none() {
            let d = dashboard_token.map(Spanned::span).unwrap_or_default();
            return Err(self.at(
                d,
                "dashboard_token",
                "`dashboard_token = true` needs `token_file`",
            ));
        }
        Ok(Some(Web {
            listen: addr,
            token_file,
            dashboard_token: required,
        }))
    }

    fn outage(&self, raw: raw::Outage) -> VResult<Outage> {
        let url = raw.alertmanager.get_ref();
        crate::outage::check_alertmanager_url(url).map_err(|why| {
            self.at(
                raw.alertmanager.span(),
                "alertmanager",
                format!(
                    "invalid URL `{url}`: {why}; write the base URL, e.g. `http://alertmanager:9093`"
                ),
            )
        })?;
        let mut matchers = Vec::new();
        for m in raw.matchers {
            crate::outage::check_matcher(m.get_ref()).map_err(|e| {
                self.at(
                    m.span(),
                    "matchers",
                    format!("invalid matcher `{}`: {e}", m.get_ref()),
                )
            })?;
            matchers.push(m.into_inner());
        }
        Ok(Outage {
            alertmanager: url.trim_end_matches('/').to_owned(),
            matchers,
        })
    }

    fn zone(&self, name: &Spanned<String>) -> VResult<jiff::tz::TimeZone> {
        jiff::tz::TimeZone::get(name.get_ref()).map_err(|_| {
            let mut message = format!("unknown time zone `{}`", name.get_ref());
            let close = close_zone_names(name.get_ref());
            if !close.is_empty() {
                message.push_str(&format!(" (did you mean {}?)", close.join(" or ")));
            }
            message.push_str(": write an IANA name such as `Europe/Berlin` or `UTC`");
            self.at(name.span(), "timezone", message)
        })
    }

    fn schedule(
        &self,
        raw: raw::Schedule,
        default_name: &str,
        default_zone: &jiff::tz::TimeZone,
    ) -> VResult<Schedule> {
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(self.at(
                raw.name.span(),
                "name",
                "a schedule's name must not be empty",
            ));
        }
        let context = format!("schedule `{name}`");
        if raw.experiments.get_ref().is_empty() {
            return Err(self.at(
                raw.experiments.span(),
                "experiments",
                format!("{context}: name at least one experiment file"),
            ));
        }
        let vars = match &raw.vars {
            None => crate::experiment::vars::Overrides::default(),
            Some(table) => crate::experiment::vars::Overrides::of_schedule(&name, table.get_ref())
                .map_err(|e| self.at(table.span(), "vars", format!("{context}: {e}")))?,
        };
        let mut experiments = Vec::new();
        for e in raw.experiments.get_ref() {
            let p = self.resolve(e.get_ref());
            if let Err(err) = crate::experiment::load_with(&p, &vars) {
                // A missing file is not an invalid experiment: the message says which it is.
                let what = if err.unreadable {
                    ""
                } else {
                    "invalid experiment "
                };
                return Err(self.at(
                    e.span(),
                    "experiments",
                    crate::secrets::redact(&format!("{context}: {what}{err}")).into_owned(),
                ));
            }
            experiments.push(p);
        }
        let cron = crate::schedule::parse_cron(raw.cron.get_ref())
            .map_err(|e| self.at(raw.cron.span(), "cron", format!("{context}: {e}")))?;
        let (zone_name, zone) = match &raw.timezone {
            Some(tz) => (tz.get_ref().clone(), self.zone(tz)?),
            None => (default_name.to_owned(), default_zone.clone()),
        };
        let only_within = raw
            .only_within
            .iter()
            .map(|w| {
                w.get_ref()
                    .parse::<Window>()
                    .map_err(|e| self.at(w.span(), "only_within", format!("{context}: {e}")))
            })
            .collect::<VResult<Vec<_>>>()?;
        let jitter = match raw.jitter {
            None => Duration::ZERO,
            Some(j) if j.get_ref().0 > MAX_JITTER => {
                return Err(self.at(
                    j.span(),
                    "jitter",
                    format!(
                        "{context}: the jitter must be at most {} (got {})",
                        Dur(MAX_JITTER),
                        j.get_ref()
                    ),
                ));
            }
            Some(j) => j.get_ref().0,
        };
        let missed = match raw.missed {
            None => Missed {
                policy: MissedPolicy::Skip,
                deadline: Duration::ZERO,
            },
            Some(m) => {
                let span = m.span();
                let m = m.into_inner();
                match (m.policy, m.deadline) {
                    (raw::MissedPolicy::Skip, None) => Missed {
                        policy: MissedPolicy::Skip,
                        deadline: Duration::ZERO,
                    },
                    (raw::MissedPolicy::Skip, Some(d)) => {
                        return Err(self.at(
                            d.span(),
                            "deadline",
                            format!("{context}: a deadline only applies to policy = \"run-once\""),
                        ));
                    }
                    (raw::MissedPolicy::RunOnce, None) => {
                        return Err(self.at(
                            span,
                            "missed",
                            format!(
                                "{context}: policy = \"run-once\" needs a `deadline`, e.g. deadline = \"15m\""
                            ),
                        ));
                    }
                    (raw::MissedPolicy::RunOnce, Some(d)) => {
                        let deadline = d.get_ref().0;
                        if deadline.is_zero() || deadline > MAX_DEADLINE {
                            return Err(self.at(
                                d.span(),
                                "deadline",
                                format!(
                                    "{context}: the deadline must be above 0 and at most {} (got {})",
                                    Dur(MAX_DEADLINE),
                                    d.get_ref()
                                ),
                            ));
                        }
                        Missed {
                            policy: MissedPolicy::RunOnce,
                            deadline,
                        }
                    }
                }
            }
        };
        Ok(Schedule {
            name,
            experiments,
            vars,
            keep_going: raw.keep_going,
            cron_text: raw.cron.get_ref().trim().to_owned(),
            zone_name,
            zone,
            only_within,
            jitter,
            missed,
            concurrency: match raw.concurrency {
                raw::Concurrency::Forbid => Concurrency::Forbid,
                raw::Concurrency::Allow => Concurrency::Allow,
            },
            on_conflict: match raw.on_conflict {
                raw::OnConflict::Queue => OnConflict::Queue,
                raw::OnConflict::Skip => OnConflict::Skip,
            },
            suspend: raw.suspend,
            cron,
        })
    }

    fn blackout(
        &self,
        span: Range<usize>,
        raw: &raw::Blackout,
        default_name: &str,
        default_zone: &jiff::tz::TimeZone,
    ) -> VResult<Blackout> {
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return Err(self.at(
                raw.name.span(),
                "name",
                "a blackout's name must not be empty",
            ));
        }
        let context = format!("blackout `{name}`");
        let (zone_name, zone) = match &raw.timezone {
            Some(tz) => (tz.get_ref().clone(), self.zone(tz)?),
            None => (default_name.to_owned(), default_zone.clone()),
        };
        let civil = |s: &Spanned<String>, key: &str| -> VResult<jiff::Timestamp> {
            let dt = jiff::civil::DateTime::from_str(s.get_ref().trim()).map_err(|_| {
                self.at(
                    s.span(),
                    key,
                    format!(
                        "{context}: invalid civil time `{}`: write e.g. `2026-12-20T00:00`, read in the blackout's zone",
                        s.get_ref()
                    ),
                )
            })?;
            zone.to_ambiguous_timestamp(dt)
                .compatible()
                .map_err(|e| self.at(s.span(), key, format!("{context}: {e}")))
        };
        let when = match (&raw.from, &raw.until, &raw.weekly) {
            (Some(from), Some(until), None) => {
                let (f, u) = (civil(from, "from")?, civil(until, "until")?);
                if u <= f {
                    return Err(self.at(
                        until.span(),
                        "until",
                        format!(
                            "{context}: `until` ({}) must be after `from` ({})",
                            until.get_ref(),
                            from.get_ref()
                        ),
                    ));
                }
                BlackoutWhen::Between { from: f, until: u }
            }
            (None, None, Some(weekly)) => BlackoutWhen::Weekly(
                weekly
                    .get_ref()
                    .parse::<Window>()
                    .map_err(|e| self.at(weekly.span(), "weekly", format!("{context}: {e}")))?,
            ),
            (Some(from), None, None) => {
                return Err(self.at(
                    from.span(),
                    "from",
                    format!("{context}: `from` needs an `until`"),
                ));
            }
            (None, Some(until), None) => {
                return Err(self.at(
                    until.span(),
                    "until",
                    format!("{context}: `until` needs a `from`"),
                ));
            }
            (_, _, Some(weekly)) => {
                return Err(self.at(
                    weekly.span(),
                    "weekly",
                    format!("{context}: give either `from` and `until` or `weekly`, not both"),
                ));
            }
            (None, None, None) => {
                return Err(self.at(
                    span,
                    "blackout",
                    format!("{context}: give either `from` and `until` or `weekly`"),
                ));
            }
        };
        Ok(Blackout {
            name,
            zone_name,
            zone,
            when,
        })
    }
}

/// The host name, for the coordinator's default name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "coordinator".to_owned())
}

/// Zone names within two edits of `name` (case-insensitive), closest first, at most three.
fn close_zone_names(name: &str) -> Vec<String> {
    let wanted = name.to_ascii_lowercase();
    let mut close: Vec<(usize, String)> = jiff::tz::db()
        .available()
        .filter_map(|n| {
            let n = n.as_str().to_owned();
            let d = edit_distance(&wanted, &n.to_ascii_lowercase());
            (d <= 2).then_some((d, n))
        })
        .collect();
    close.sort();
    close.dedup_by(|a, b| a.1 == b.1);
    close
        .into_iter()
        .take(3)
        .map(|(_, n)| format!("`{n}`"))
        .collect()
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
