//! Owns the TOML shape of a game-day file exactly as users write it: every table denies unknown
//! keys and nothing is `untagged` or `flatten`, so the parser points at the line and column of any
//! mistake. Values that need more than serde (zones, cron, windows, paths) stay `Spanned` strings
//! and are checked in `gameday.rs`.

use serde::Deserialize;
use toml::Spanned;

use crate::units::Dur;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GameDay {
    pub(crate) coordinator: Coordinator,
    #[serde(default)]
    pub(crate) schedule: Vec<Spanned<Schedule>>,
    #[serde(default)]
    pub(crate) blackout: Vec<Spanned<Blackout>>,
    /// `[[notify]]`: its shape and checks are `notify.rs`'s, shared with experiments.
    #[serde(default)]
    pub(crate) notify: Vec<crate::notify::RawNotify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Coordinator {
    pub(crate) state_dir: Spanned<String>,
    pub(crate) timezone: Option<Spanned<String>>,
    pub(crate) agents: Option<Spanned<String>>,
    pub(crate) database: Option<Spanned<String>>,
    pub(crate) outage: Option<Outage>,
    pub(crate) lease: Option<Spanned<Dur>>,
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) seed: Option<u64>,
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) dashboard_token: Option<Spanned<bool>>,
    pub(crate) token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Outage {
    pub(crate) alertmanager: Spanned<String>,
    #[serde(default)]
    pub(crate) matchers: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Schedule {
    pub(crate) name: Spanned<String>,
    pub(crate) experiments: Spanned<Vec<Spanned<String>>>,
    #[serde(rename = "continue", default)]
    pub(crate) keep_going: bool,
    pub(crate) cron: Spanned<String>,
    pub(crate) timezone: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) only_within: Vec<Spanned<String>>,
    pub(crate) jitter: Option<Spanned<Dur>>,
    pub(crate) missed: Option<Spanned<Missed>>,
    #[serde(default)]
    pub(crate) concurrency: Concurrency,
    #[serde(default)]
    pub(crate) on_conflict: OnConflict,
    #[serde(default)]
    pub(crate) suspend: bool,
    /// Vars for this schedule's experiments, as `--var` gives them to `faultline run`.
    pub(crate) vars: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Missed {
    pub(crate) policy: MissedPolicy,
    pub(crate) deadline: Option<Spanned<Dur>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MissedPolicy {
    RunOnce,
    Skip,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Concurrency {
    #[default]
    Forbid,
    Allow,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OnConflict {
    #[default]
    Queue,
    Skip,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Blackout {
    pub(crate) name: Spanned<String>,
    pub(crate) from: Option<Spanned<String>>,
    pub(crate) until: Option<Spanned<String>>,
    pub(crate) weekly: Option<Spanned<String>>,
    pub(crate) timezone: Option<Spanned<String>>,
}
