//! Owns the HTML report of one run: one self-contained page (inline CSS and SVG, no script, no
//! network) with the verdict, the experiment, the timeline (`html/timeline.rs`), the per-phase
//! tables, the golden signals and a postmortem in sentences (`html/postmortem.rs`).
//!
//! Everything is read from the `Report`, and every duration is rounded the way the JSON report
//! keeps it, so a stored report (`faultline show --html`) renders byte for byte like the live run.

mod postmortem;
mod timeline;

use std::fmt::Write as _;
use std::time::Duration;

use super::terminal::signal_cell;
use super::{FaultState, ProbePhase, Report, Verdict};
use crate::model::GoldenSignal;
use crate::units::{Percent, format_ms};

/// The page forbids every load and every script: what it shows is in the file, and a string from
/// the report that slipped past escaping still could not run.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'";

const CSS: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px auto; max-width: 1260px; color: #1f2328; padding: 0 16px; }
h1 { font-size: 24px; margin: 0 0 8px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.badge { display: inline-block; padding: 4px 12px; border-radius: 14px; color: #fff; font-weight: 600; font-size: 15px; letter-spacing: 0.04em; }
.reason { font-size: 16px; margin: 8px 0 16px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; font-size: 14px; }
dl.meta dt { color: #59636e; }
dl.meta dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
table { border-collapse: collapse; font-size: 14px; margin: 4px 0 12px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.met { color: #1a7f37; font-weight: 600; }
.notmet { color: #cf222e; font-weight: 600; }
.postmortem p { margin: 6px 0; line-height: 1.5; }
code { font-family: ui-monospace, monospace; background: #f6f8fa; padding: 0 3px; border-radius: 3px; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font-family: system-ui, sans-serif; }
";

/// The whole page.
pub(crate) fn render(report: &Report) -> String {
    let mut out = String::with_capacity(16 * 1024 + report.samples.len() * 64);
    let title = escape(&report.title);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{verdict}: {title} (run {run})</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        verdict = report.verdict.as_str(),
        run = escape(&report.run_id),
    );
    let _ = writeln!(out, "<h1>{title}</h1>");
    let _ = writeln!(
        out,
        "<p class=\"reason\"><span class=\"badge\" id=\"verdict\" style=\"background:{}\">{}</span> \
         exit {} — {}</p>",
        verdict_colour(report.verdict),
        report.verdict.as_str().to_uppercase(),
        report.exit_code(),
        code_spans(&escape(&report.reason))
    );
    meta(&mut out, report);
    out.push_str("<h2>Timeline</h2>\n");
    out.push_str(&timeline::render(report));
    out.push_str("<h2>What happened</h2>\n<div class=\"postmortem\" id=\"postmortem\">\n");
    for sentence in postmortem::sentences(report) {
        let _ = writeln!(out, "<p>{}</p>", code_spans(&escape(&sentence)));
    }
    out.push_str("</div>\n");
    phases(&mut out, report);
    signals(&mut out, report);
    faults(&mut out, report);
    out.push_str("</body>\n</html>\n");
    out
}

fn meta(out: &mut String, report: &Report) {
    let mut agents: Vec<&str> = report.faults.iter().map(|f| f.agent.as_str()).collect();
    agents.sort_unstable();
    agents.dedup();
    let rows = [
        ("run", report.run_id.clone()),
        ("experiment file", report.file.clone()),
        ("sha256", report.sha256.clone()),
        ("seed", report.seed.to_string()),
        ("started", report.started_at.to_string()),
        ("ended", report.ended_at.to_string()),
        (
            "agents",
            if agents.is_empty() {
                "-".to_owned()
            } else {
                agents.join(", ")
            },
        ),
        (
            "dry run",
            if report.dry_run { "yes" } else { "no" }.to_owned(),
        ),
    ];
    out.push_str("<dl class=\"meta\">\n");
    for (key, value) in rows {
        let _ = writeln!(out, "<dt>{key}</dt><dd>{}</dd>", escape(&value));
    }
    out.push_str("</dl>\n");
}

fn phases(out: &mut String, report: &Report) {
    let lists = [
        ("before", &report.before),
        ("during", &report.during),
        ("after", &report.after),
    ];
    if lists.iter().all(|(_, l)| l.is_empty()) {
        return;
    }
    out.push_str(
        "<h2>Probes by phase</h2>\n<table id=\"phases\">\n<tr><th>phase</th><th>probe</th>\
         <th>samples</th><th>success</th><th>p50</th><th>p95</th><th>p99</th><th>SLO</th></tr>\n",
    );
    for (phase, list) in lists {
        for p in list {
            let slo = match p.slo_met {
                Some(true) => "<td class=\"met\">met</td>",
                Some(false) => "<td class=\"notmet\">NOT met</td>",
                None => "<td>-</td>",
            };
            let _ = writeln!(
                out,
                "<tr><td>{phase}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>{slo}</tr>",
                escape(&p.probe),
                p.stats.samples,
                ratio(p),
                ms(p.stats.p50),
                ms(p.stats.p95),
                ms(p.stats.p99),
            );
        }
    }
    out.push_str("</table>\n");
}

/// The golden signals, one row per tagged probe and one column per phase, as in the terminal.
fn signals(out: &mut String, report: &Report) {
    let mut tagged: Vec<(GoldenSignal, &ProbePhase)> = report
        .before
        .iter()
        .filter_map(|p| p.signal.map(|s| (s, p)))
        .collect();
    if tagged.is_empty() {
        return;
    }
    tagged.sort_by_key(|(s, _)| *s);
    out.push_str(
        "<h2>Golden signals</h2>\n<table id=\"signals\">\n<tr><th>signal</th><th>probe</th>\
         <th>before</th><th>during</th><th>after</th></tr>\n",
    );
    let cell = |list: &[ProbePhase], name: &str, signal| {
        list.iter()
            .find(|p| p.probe == name)
            .map_or_else(|| "-".to_owned(), |p| signal_cell(signal, p))
    };
    for (signal, p) in tagged {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            signal.as_str(),
            escape(&p.probe),
            escape(&signal_cell(signal, p)),
            escape(&cell(&report.during, &p.probe, signal)),
            escape(&cell(&report.after, &p.probe, signal)),
        );
    }
    out.push_str("</table>\n");
    if let Some(b) = &report.budget {
        let _ = writeln!(out, "<p>Error budget: {}</p>", escape(&b.summary()));
    }
}

fn faults(out: &mut String, report: &Report) {
    if report.faults.is_empty() {
        return;
    }
    out.push_str(
        "<h2>Faults</h2>\n<table id=\"faults\">\n<tr><th>fault</th><th>kind</th><th>agent</th>\
         <th>targets</th><th>injected</th><th>reverted</th><th>status</th><th>detail</th></tr>\n",
    );
    let time = |t: Option<jiff::Timestamp>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.strftime("%H:%M:%S%.3f").to_string(),
        )
    };
    for f in &report.faults {
        let reverted = if f.status == FaultState::Completed {
            "(instant)".to_owned()
        } else {
            time(f.reverted_at)
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.name),
            escape(&f.kind),
            escape(&f.agent),
            escape(&f.targets.join(", ")),
            time(f.injected_at),
            reverted,
            status_text(f.status),
            escape(&f.detail),
        );
    }
    out.push_str("</table>\n");
}

pub(super) fn status_text(status: FaultState) -> &'static str {
    match status {
        FaultState::Skipped => "skipped",
        FaultState::Completed => "completed",
        FaultState::Reverted => "reverted",
        FaultState::EndedEarly => "ended early",
        FaultState::InjectFailed => "inject failed",
        FaultState::RevertFailed => "revert failed",
    }
}

fn verdict_colour(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Passed => "#1a7f37",
        Verdict::Failed => "#cf222e",
        Verdict::Aborted => "#bc4c00",
        Verdict::NotRun => "#6e7781",
        Verdict::Error => "#8250df",
    }
}

fn ratio(p: &ProbePhase) -> String {
    p.stats
        .success_ratio()
        .map_or_else(|| "-".to_owned(), |r| Percent(r).to_string())
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format_ms(stored(d)))
}

/// A duration as the JSON report keeps it (whole microseconds), so a live report and the same
/// report read back from the history print the same numbers.
fn stored(d: Duration) -> Duration {
    Duration::from_micros((d.as_secs_f64() * 1_000_000.0).round() as u64)
}

/// Escaped text with each pair of backticks (how reasons and sentences quote names) turned into
/// a `<code>` element. Runs on escaped text, so it adds markup and never lets any through; an odd
/// backtick is left as it is.
fn code_spans(escaped: &str) -> String {
    let parts: Vec<&str> = escaped.split('`').collect();
    if parts.len() % 2 == 0 {
        return escaped.to_owned();
    }
    let mut out = String::with_capacity(escaped.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        if i % 2 == 1 {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Text for HTML element content and attribute values (both quote kinds).
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
