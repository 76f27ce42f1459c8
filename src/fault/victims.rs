//! Owns the keys `process-kill` and `process-pause` share: `select` (which processes) and
//! `count`/`percent` (how many of them), as written in TOML and as validated.

use std::path::PathBuf;

use serde::Deserialize;

use super::check::FieldError;
use crate::model::Pick;
use crate::process::Selector;
use crate::units::Percent;

/// `select = { pid | pidfile | name | cmdline | port }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SelectTable {
    pid: Option<i32>,
    pidfile: Option<PathBuf>,
    name: Option<String>,
    cmdline: Option<String>,
    port: Option<u16>,
}

/// Exactly one way of finding the victims.
pub(crate) fn selector(select: Option<SelectTable>) -> Result<Selector, FieldError> {
    let Some(s) = select else {
        return Err(FieldError::raw(
            "select",
            "needs `select` with one of `pid`, `pidfile`, `name`, `cmdline` or `port`".to_owned(),
        ));
    };
    let mut chosen: Vec<Selector> = [
        s.pid.map(Selector::Pid),
        s.pidfile.map(Selector::Pidfile),
        s.name.map(Selector::Name),
        s.cmdline.map(Selector::Cmdline),
        s.port.map(Selector::Port),
    ]
    .into_iter()
    .flatten()
    .collect();
    if chosen.len() != 1 {
        return Err(FieldError::raw(
            "select",
            "`select` takes exactly one of `pid`, `pidfile`, `name`, `cmdline` or `port`"
                .to_owned(),
        ));
    }
    Ok(chosen.remove(0))
}

/// `count` or `percent`, or neither (all of the matches). Their bounds are the spec's check.
pub(crate) fn pick(
    count: Option<u32>,
    percent: Option<Percent>,
) -> Result<Option<Pick>, FieldError> {
    match (count, percent) {
        (Some(_), Some(_)) => Err(FieldError::raw(
            "percent",
            "give `count` or `percent`, not both".to_owned(),
        )),
        (Some(n), None) => Ok(Some(Pick::Count(n))),
        (None, Some(p)) => Ok(Some(Pick::Percent(p.0))),
        (None, None) => Ok(None),
    }
}
