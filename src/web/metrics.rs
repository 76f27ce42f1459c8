//! Owns `/metrics`: the Prometheus text format (0.0.4), written by hand. Counts come from the
//! history (so they survive restarts and agree with `faultline history`), timing and phases from
//! the dispatcher's snapshot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::history::Filter;

use super::{FirePhase, FireState, Shared, next_slots};

/// Upper bounds of the time-to-recover buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A label value in the text format: backslash, double quote and newline escaped.
pub(super) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

pub(super) async fn metrics(State(web): State<Shared>) -> Response {
    let rows = match web.history.runs_without_reports(&Filter::default()).await {
        Ok(rows) => rows,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    // Runs without a schedule were started by `faultline run` on the same history.
    let mut totals: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut last: BTreeMap<String, (String, f64)> = BTreeMap::new();
    let mut ttr: BTreeMap<String, Histogram> = BTreeMap::new();
    // Newest first: the first ended run of a schedule is its last verdict.
    for row in &rows {
        let Some(end) = &row.end else { continue };
        let schedule = row.start.schedule.clone().unwrap_or_default();
        *totals
            .entry((schedule.clone(), end.verdict.clone()))
            .or_default() += 1;
        last.entry(schedule.clone()).or_insert_with(|| {
            (
                end.verdict.clone(),
                end.ended_at.as_millisecond() as f64 / 1000.0,
            )
        });
        if let Some(d) = end.time_to_recover {
            let h = ttr.entry(schedule).or_default();
            let secs = d.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP faultline_runs_total Ended runs in the history, by schedule (empty: faultline run) and verdict.\n# TYPE faultline_runs_total counter"
    );
    for ((schedule, verdict), n) in &totals {
        let _ = writeln!(
            out,
            "faultline_runs_total{{schedule=\"{}\",verdict=\"{}\"}} {n}",
            label(schedule),
            label(verdict)
        );
    }
    let _ = writeln!(
        out,
        "# HELP faultline_last_verdict The verdict of the latest ended run of each schedule (1).\n# TYPE faultline_last_verdict gauge"
    );
    for (schedule, (verdict, _)) in &last {
        let _ = writeln!(
            out,
            "faultline_last_verdict{{schedule=\"{}\",verdict=\"{}\"}} 1",
            label(schedule),
            label(verdict)
        );
    }
    let _ = writeln!(
        out,
        "# HELP faultline_last_verdict_timestamp_seconds When the latest ended run of each schedule ended (Unix time).\n# TYPE faultline_last_verdict_timestamp_seconds gauge"
    );
    for (schedule, (_, at)) in &last {
        let _ = writeln!(
            out,
            "faultline_last_verdict_timestamp_seconds{{schedule=\"{}\"}} {at:.3}",
            label(schedule)
        );
    }
    let _ = writeln!(
        out,
        "# HELP faultline_time_to_recover_seconds Time to recover of the runs in the history that recovered.\n# TYPE faultline_time_to_recover_seconds histogram"
    );
    for (schedule, h) in &ttr {
        let s = label(schedule);
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "faultline_time_to_recover_seconds_bucket{{schedule=\"{s}\",le=\"{bound}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "faultline_time_to_recover_seconds_bucket{{schedule=\"{s}\",le=\"+Inf\"}} {}\nfaultline_time_to_recover_seconds_sum{{schedule=\"{s}\"}} {}\nfaultline_time_to_recover_seconds_count{{schedule=\"{s}\"}} {}",
            h.count, h.sum, h.count
        );
    }
    let snap = web.snapshot.borrow().clone();
    let _ = writeln!(
        out,
        "# HELP faultline_next_fire_timestamp_seconds When each schedule fires next, past skipped slots (Unix time; absent: no fire ahead).\n# TYPE faultline_next_fire_timestamp_seconds gauge"
    );
    for (i, s) in web.gameday.calendar.schedules.iter().enumerate() {
        let next = next_slots(&web, &snap, i, super::api::SLOTS_SHOWN)
            .into_iter()
            .find(|(_, why)| why.is_empty());
        if let Some((at, _)) = next {
            let _ = writeln!(
                out,
                "faultline_next_fire_timestamp_seconds{{schedule=\"{}\"}} {:.3}",
                label(&s.name),
                at.as_millisecond() as f64 / 1000.0
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP faultline_run_phase Where each schedule's latest fire stands (1 for its phase, 0 for the others).\n# TYPE faultline_run_phase gauge"
    );
    for s in &web.gameday.calendar.schedules {
        let current = snap
            .fires
            .iter()
            .rev()
            .find(|f| f.schedule == s.name)
            .map_or("idle", FireState::phase_name);
        let phases = std::iter::once("idle")
            .chain(FirePhase::ALL.iter().map(|p| p.as_str()))
            .chain(["before", "during", "after"]);
        for phase in phases {
            let _ = writeln!(
                out,
                "faultline_run_phase{{schedule=\"{}\",phase=\"{phase}\"}} {}",
                label(&s.name),
                u8::from(phase == current)
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
