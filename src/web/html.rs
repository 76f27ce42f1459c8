//! Owns the dashboard's server-rendered pages: `/` (schedules, fires in progress, recent runs),
//! `/runs/{id}` (one run's HTML report, as `show --html` writes it) and `/experiments/{title}` (its history as an inline SVG of
//! time to recover per run). Every value from the history or the files is escaped; no JavaScript.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use jiff::Timestamp;

use crate::history::{Filter, RunRow};

use super::api::{SLOTS_SHOWN, verdict};
use super::{Shared, local_and_utc, next_slots};

/// Recent runs on `/`.
const RECENT: usize = 50;
/// Runs drawn on an experiment's page (the newest).
const DRAWN: usize = 200;

/// Text made safe for HTML content and attribute values: the report's own escaping.
pub(super) fn esc(s: &str) -> String {
    crate::report::html::escape(s)
}

/// A path segment percent-encoded (titles hold spaces and slashes).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.badge{padding:.1em .5em;border-radius:.6em;color:#fff;font-size:.9em}\
.passed{background:#2e7d32}.failed{background:#c62828}.aborted{background:#ef6c00}.not_run{background:#757575}\
.error{background:#6a1b9a}.running{background:#1565c0}.muted{color:#777}pre{background:#f7f7f7;padding:1em;overflow:auto}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body><nav><a href=\"/\">faultline coordinator</a></nav>\n{body}</body></html>\n",
        esc(title)
    ))
}

fn badge(v: &str) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", esc(v))
}

fn not_found(message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        page("not found", &format!("<p>{}</p>", esc(message))),
    )
        .into_response()
}

fn failed(e: &dyn std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        page("error", &format!("<p>{}</p>", esc(&e.to_string()))),
    )
        .into_response()
}

fn secs(d: Option<std::time::Duration>) -> String {
    d.map_or_else(String::new, |d| format!("{:.2} s", d.as_secs_f64()))
}

fn run_rows(out: &mut String, rows: &[RunRow]) {
    out.push_str("<table><tr><th>verdict</th><th>run</th><th>experiment</th><th>schedule</th><th>started (UTC)</th><th>time to recover</th><th>reason</th></tr>\n");
    for r in rows {
        let s = &r.start;
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><a href=\"/runs/{}\">{}</a></td><td><a href=\"/experiments/{}\">{}</a></td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td></tr>",
            badge(verdict(r)),
            seg(&s.run_id),
            esc(&s.run_id),
            seg(&s.title),
            esc(&s.title),
            esc(s.schedule.as_deref().unwrap_or("(faultline run)")),
            s.started_at,
            secs(r.end.as_ref().and_then(|e| e.time_to_recover)),
            esc(r.end.as_ref().map_or("", |e| e.reason.as_str())),
        );
    }
    out.push_str("</table>\n");
}

pub(super) async fn index(State(web): State<Shared>) -> Response {
    let recent = match web
        .history
        .runs_without_reports(&Filter {
            last: Some(RECENT),
            ..Filter::default()
        })
        .await
    {
        Ok(rows) => rows,
        Err(e) => return failed(&e),
    };
    let snap = web.snapshot.borrow().clone();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<h1>faultline coordinator `{}`</h1><p class=\"muted\">{} · {} · now {:.0}</p>",
        esc(&web.gameday.coordinator.name),
        esc(&web.gameday.file.display().to_string()),
        if snap.leading {
            "firing (leader)"
        } else {
            "following: another coordinator fires"
        },
        Timestamp::now()
    );
    out.push_str("<h2>Schedules</h2><table id=\"schedules\"><tr><th>schedule</th><th>cron</th><th>state</th><th>next fire (local)</th><th>next fire (UTC)</th><th>skipped before it</th></tr>\n");
    for (i, s) in web.gameday.calendar.schedules.iter().enumerate() {
        let slots = next_slots(&web, &snap, i, SLOTS_SHOWN);
        let (local, utc) = slots.iter().find(|(_, why)| why.is_empty()).map_or_else(
            || ("none ahead".to_owned(), String::new()),
            |(at, _)| local_and_utc(&web, i, *at),
        );
        let mut skipped = String::new();
        for (at, why) in slots.iter().filter(|(_, why)| !why.is_empty()) {
            let (l, _) = local_and_utc(&web, i, *at);
            let _ = write!(skipped, "{} — {}<br>", esc(&l), esc(why));
        }
        let state = match snap.schedules.get(i) {
            Some(st) if st.suspended && st.overridden => "suspended (runtime)",
            Some(st) if st.suspended => "suspended (file)",
            Some(st) if st.overridden => "resumed (runtime)",
            _ => "active",
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code> in {}</td><td>{state}</td><td>{}</td><td>{}</td><td>{skipped}</td></tr>",
            esc(&s.name),
            esc(&s.cron_text),
            esc(&s.zone_name),
            esc(&local),
            esc(&utc)
        );
    }
    out.push_str("</table>\n<h2>In progress</h2>\n");
    if snap.fires.is_empty() {
        out.push_str("<p id=\"in-progress\" class=\"muted\">nothing is running</p>\n");
    } else {
        out.push_str("<table id=\"in-progress\"><tr><th>schedule</th><th>slot (UTC)</th><th>phase</th><th>run</th></tr>\n");
        for f in &snap.fires {
            let run = f.run.as_deref().map_or_else(String::new, |r| {
                format!("<a href=\"/runs/{}\">{}</a>", seg(r), esc(r))
            });
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{:.0}</td><td>{}</td><td>{run}</td></tr>",
                esc(&f.schedule),
                f.at,
                f.phase_name()
            );
        }
        out.push_str("</table>\n");
    }
    let _ = writeln!(out, "<h2>Recent runs</h2>");
    run_rows(&mut out, &recent);
    page("faultline coordinator", &out).into_response()
}

pub(super) async fn run(State(web): State<Shared>, Path(id): Path<String>) -> Response {
    let row = match web.history.run(&id).await {
        Ok(Some(row)) => row,
        Ok(None) => return not_found(&format!("no run {id:?} in the history")),
        Err(e) => return failed(&e),
    };
    let Some(end) = &row.end else {
        let body = format!(
            "<h1>run {}</h1><p>{} is running (started {:.0}); its report comes when it ends.</p>",
            esc(&id),
            esc(&row.start.title),
            row.start.started_at
        );
        return page(&format!("run {id}"), &body).into_response();
    };
    let Some(json) = &end.report_json else {
        let body = format!(
            "<h1>run {}</h1><p>{} {} — no report was written: {}</p>",
            esc(&id),
            badge(&end.verdict),
            esc(&row.start.title),
            esc(&end.reason)
        );
        return page(&format!("run {id}"), &body).into_response();
    };
    // The same bytes as `faultline show RUN_ID --html`: the report is one self-contained page.
    let json = json.clone();
    match tokio::task::spawn_blocking(move || {
        crate::report::json::parse(&json).map(|r| crate::report::html::render(&r))
    })
    .await
    {
        Ok(Ok(page)) => Html(page).into_response(),
        Ok(Err(e)) => failed(&format!(
            "the stored report of run {id:?} does not parse: {e}"
        )),
        Err(e) => failed(&e),
    }
}

pub(super) async fn experiment(State(web): State<Shared>, Path(title): Path<String>) -> Response {
    let rows = match web
        .history
        .runs_without_reports(&Filter {
            experiment: Some(title.clone()),
            last: Some(DRAWN),
            ..Filter::default()
        })
        .await
    {
        Ok(rows) => rows,
        Err(e) => return failed(&e),
    };
    if rows.is_empty() {
        return not_found(&format!(
            "no run of an experiment titled {title:?} in the history"
        ));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<h1>{}</h1><p class=\"muted\">the last {} run(s), oldest on the left; bar height: time to recover; a run without a time to recover is a short faded bar in its verdict colour</p>",
        esc(&title),
        rows.len()
    );
    chart(&mut out, &rows);
    run_rows(&mut out, &rows);
    page(&title, &out).into_response()
}

/// An axis value with as many decimals as its size needs (0.025, 0.5, 12).
fn tick(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Colours of the verdicts in the chart (the badges' colours).
fn colour(v: &str) -> &'static str {
    match v {
        "passed" => "#2e7d32",
        "failed" => "#c62828",
        "aborted" => "#ef6c00",
        "not_run" => "#757575",
        "error" => "#6a1b9a",
        _ => "#1565c0",
    }
}

/// Time to recover per run as bars (newest on the right), coloured by verdict, with a y axis in
/// seconds. Runs that did not recover get a short bar in their colour at the baseline.
fn chart(out: &mut String, newest_first: &[RunRow]) {
    const W: f64 = 900.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 50.0;
    const BOTTOM: f64 = 30.0;
    const TOP: f64 = 15.0;
    let runs: Vec<&RunRow> = newest_first.iter().rev().collect();
    let ttr = |r: &RunRow| {
        r.end
            .as_ref()
            .and_then(|e| e.time_to_recover)
            .map(|d| d.as_secs_f64())
    };
    let max = runs
        .iter()
        .filter_map(|r| ttr(r))
        .fold(0.0_f64, f64::max)
        .max(0.1);
    // A round top for the axis: 1, 2 or 5 times a power of ten.
    let mag = 10f64.powf(max.log10().floor());
    let top = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|t| *t >= max)
        .unwrap_or(max);
    let plot_h = H - BOTTOM - TOP;
    let step = (W - LEFT - 10.0) / runs.len() as f64;
    // Thin bars for long histories, never wider than 40 px for short ones.
    let bar = (step * 0.8).clamp(1.0, 40.0);
    let _ = writeln!(
        out,
        "<svg id=\"ttr-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"time to recover per run\">"
    );
    for k in 0..=4 {
        let v = top * f64::from(k) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(k) / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{} s</text>",
            W - 10.0,
            LEFT - 4.0,
            y + 4.0,
            tick(v)
        );
    }
    for (i, r) in runs.iter().enumerate() {
        let x = LEFT + step * i as f64 + (step - bar) / 2.0;
        let v = verdict(r);
        let (h, extra) = match ttr(r) {
            Some(t) => ((t / top * plot_h).max(1.0), String::new()),
            None => (4.0, " opacity=\"0.5\"".to_owned()),
        };
        let y = TOP + plot_h - h;
        let _ = writeln!(
            out,
            "<rect class=\"run {v}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{}\"{extra}><title>{} {} {}</title></rect>",
            colour(v),
            esc(&r.start.run_id),
            esc(v),
            ttr(r).map_or_else(
                || "no recovery measured".to_owned(),
                |t| format!("recovered in {t:.2} s")
            )
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#333\"/><text x=\"{LEFT}\" y=\"{2}\" font-size=\"11\">oldest</text><text x=\"{1}\" y=\"{2}\" font-size=\"11\" text-anchor=\"end\">newest</text></svg>",
        TOP + plot_h,
        W - 10.0,
        H - 8.0
    );
}
