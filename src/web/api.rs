//! Owns the JSON API under `/api/v1/`: schedules, runs (filtered), one run's stored JSON report,
//! and the actions (run now, suspend, resume), which go to the dispatcher through `web::act`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::history::{Filter, RunRow};

use super::{Action, Client, Shared, act, local_and_utc, next_slots};

/// How many slots ahead a schedule's skipped slots are listed.
pub(super) const SLOTS_SHOWN: usize = 5;

pub(super) async fn schedules(State(web): State<Shared>) -> Json<Value> {
    let snap = web.snapshot.borrow().clone();
    let mut out = Vec::new();
    for (i, s) in web.gameday.calendar.schedules.iter().enumerate() {
        let slots = next_slots(&web, &snap, i, SLOTS_SHOWN);
        let next_fire = slots.iter().find(|(_, why)| why.is_empty()).map(|(at, _)| {
            let (local, utc) = local_and_utc(&web, i, *at);
            json!({ "utc": utc, "local": local })
        });
        let skipped: Vec<Value> = slots
            .iter()
            .filter(|(_, why)| !why.is_empty())
            .map(|(at, why)| {
                let (local, utc) = local_and_utc(&web, i, *at);
                json!({ "utc": utc, "local": local, "reason": why })
            })
            .collect();
        let state = snap.schedules.get(i);
        let fires: Vec<Value> = snap
            .fires
            .iter()
            .filter(|f| f.schedule == s.name)
            .map(|f| json!({ "at": format!("{:.0}", f.at), "phase": f.phase_name(), "run_id": f.run }))
            .collect();
        out.push(json!({
            "name": s.name,
            "cron": s.cron_text,
            "timezone": s.zone_name,
            "experiments": s.experiments.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "suspended": state.is_some_and(|s| s.suspended),
            "suspended_at_runtime": state.is_some_and(|s| s.overridden),
            "next_fire": next_fire,
            "skipped_before_next_fire": skipped,
            "in_progress": fires,
        }));
    }
    Json(json!({ "leading": snap.leading, "schedules": out }))
}

/// `?experiment=TITLE&schedule=NAME&verdict=failed&last=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsQuery {
    experiment: Option<String>,
    schedule: Option<String>,
    verdict: Option<String>,
    last: Option<usize>,
}

/// What `verdict=` may ask for.
const VERDICTS: [&str; 6] = ["passed", "failed", "aborted", "not_run", "error", "running"];

/// Runs when `last` is not given: a list, not a dump of the whole history.
const DEFAULT_LAST: usize = 100;
/// The most runs one request may ask for: reading needs no token by default, so one request
/// must not make the coordinator read and send its whole history.
const MAX_LAST: usize = 1000;

pub(super) async fn runs(
    State(web): State<Shared>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    if let Some(v) = &q.verdict {
        if !VERDICTS.contains(&v.as_str()) {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown verdict {v:?} (one of {})\n", VERDICTS.join(", ")),
            )
                .into_response();
        }
    }
    let last = q.last.unwrap_or(DEFAULT_LAST);
    if !(1..=MAX_LAST).contains(&last) {
        return (
            StatusCode::BAD_REQUEST,
            format!("last must be from 1 to {MAX_LAST} (got {last})\n"),
        )
            .into_response();
    }
    // The verdict is not a column filter of the history: filter here, then keep `last`.
    let filter = Filter {
        experiment: q.experiment,
        schedule: q.schedule,
        last: q.verdict.is_none().then_some(last),
    };
    let rows = match web.history.runs_without_reports(&filter).await {
        Ok(rows) => rows,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let runs: Vec<Value> = rows
        .iter()
        .filter(|r| q.verdict.as_deref().is_none_or(|v| verdict(r) == v))
        .take(last)
        .map(row_json)
        .collect();
    Json(json!({ "runs": runs })).into_response()
}

/// The stored JSON report, byte for byte as the run wrote it.
pub(super) async fn run(State(web): State<Shared>, Path(id): Path<String>) -> Response {
    match web.history.run(&id).await {
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("no run {id:?} in the history\n"),
        )
            .into_response(),
        Ok(Some(row)) => match row.end.as_ref().and_then(|e| e.report_json.clone()) {
            Some(report) => ([(header::CONTENT_TYPE, "application/json")], report).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                format!(
                    "run {id:?} has no report: {}\n",
                    match &row.end {
                        None => "it has not ended".to_owned(),
                        Some(end) => format!("it ended as {} ({})", end.verdict, end.reason),
                    }
                ),
            )
                .into_response(),
        },
    }
}

pub(super) async fn run_now(
    State(web): State<Shared>,
    client: Client,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    act(&web, client.0, &headers, name, Action::RunNow).await
}

pub(super) async fn suspend(
    State(web): State<Shared>,
    client: Client,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    act(&web, client.0, &headers, name, Action::Suspend).await
}

pub(super) async fn resume(
    State(web): State<Shared>,
    client: Client,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    act(&web, client.0, &headers, name, Action::Resume).await
}

/// A run's verdict, `running` while it has no end.
pub(super) fn verdict(row: &RunRow) -> &str {
    row.end.as_ref().map_or("running", |e| e.verdict.as_str())
}

fn row_json(row: &RunRow) -> Value {
    let s = &row.start;
    let e = row.end.as_ref();
    json!({
        "run_id": s.run_id,
        "title": s.title,
        "file": s.file,
        "sha256": s.sha256,
        "seed": s.seed,
        "schedule": s.schedule,
        "fire_at": s.fire_at.map(|t| format!("{t:.0}")),
        "coordinator": s.coordinator,
        "started_at": format!("{:.3}", s.started_at),
        "ended_at": e.map(|e| format!("{:.3}", e.ended_at)),
        "verdict": verdict(row),
        "exit_code": e.map(|e| e.exit_code),
        "reason": e.map(|e| e.reason.clone()),
        "time_to_recover_seconds": e.and_then(|e| e.time_to_recover).map(|d| d.as_secs_f64()),
        "time_to_abort_seconds": e.and_then(|e| e.time_to_abort).map(|d| d.as_secs_f64()),
        "agents": e.map(|e| e.agents.clone()).unwrap_or_default(),
    })
}
