//! Owns the keys `process-kill` and `process-pause` share: `select` (which processes) and
//! `count`/`percent` (how many of them), as written in TOML and as validated. Several `select`
//! keys may be given: a process must match every one (a conjunction).

use std::path::PathBuf;

use serde::Deserialize;

use super::check::{FieldError, SELECT_KEYS};
use crate::model::Pick;
use crate::process::Selector;
use crate::units::Percent;

/// `select = { pid, pidfile, name, cmdline, port, container, container_name, cgroup }`: any of
/// them, at least one; a process must match all that are given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SelectTable {
    pid: Option<i32>,
    pidfile: Option<PathBuf>,
    name: Option<String>,
    cmdline: Option<String>,
    port: Option<u16>,
    container: Option<String>,
    container_name: Option<String>,
    cgroup: Option<String>,
}

/// The ways of finding the victims, all of which must match. Their bounds are the spec's check.
pub(crate) fn selector(select: Option<SelectTable>) -> Result<Selector, FieldError> {
    let Some(s) = select else {
        return Err(FieldError::raw(
            "select",
            format!("needs `select` with at least one of {SELECT_KEYS}"),
        ));
    };
    let selector = Selector {
        pid: s.pid,
        pidfile: s.pidfile,
        name: s.name,
        cmdline: s.cmdline,
        port: s.port,
        container: s.container,
        container_name: s.container_name,
        cgroup: s.cgroup,
    };
    if selector.is_empty() {
        return Err(FieldError::raw(
            "select",
            format!("`select` needs at least one of {SELECT_KEYS}"),
        ));
    }
    Ok(selector)
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
