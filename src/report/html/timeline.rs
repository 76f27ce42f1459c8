//! Owns the timeline picture: hand-written SVG (a few rects, lines and circles need no plotting
//! crate, and hand-written markup keeps ids and classes a browser test can find). x is seconds
//! since the run started; one lane per probe (latency dots, failures as red crosses above them),
//! phase bands behind everything, one bar per fault and agent, the abort and recovery moments.

use std::fmt::Write as _;
use std::time::Duration;

use super::{escape, status_text, stored};
use crate::report::{FaultState, Phase, Report};
use crate::units::format_ms;

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 24.0;
/// Phase labels, then the row the abort and recovery labels sit in.
const HEADER: f64 = 52.0;
const LANE_TITLE: f64 = 20.0;
const FAIL_STRIP: f64 = 16.0;
const PLOT: f64 = 110.0;
const LANE_GAP: f64 = 12.0;
const FAULT_ROW: f64 = 24.0;
const AXIS: f64 = 44.0;

/// A white outline under a label, so a marker line crossing it does not cross out its letters.
const HALO: &str =
    "paint-order=\"stroke\" stroke=\"#ffffff\" stroke-width=\"4\" stroke-linejoin=\"round\"";

const BEFORE_FILL: &str = "#eaeef2";
const DURING_FILL: &str = "#fff1e5";
const AFTER_FILL: &str = "#dafbe1";

/// A linear map from a domain to a range, as every axis of the picture uses.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Scale {
    pub(super) fn new(domain: (f64, f64), range: (f64, f64)) -> Scale {
        Scale {
            d0: domain.0,
            d1: domain.1,
            r0: range.0,
            r1: range.1,
        }
    }

    /// A value outside the domain is clamped: a late sample stays on the picture.
    pub(super) fn map(&self, v: f64) -> f64 {
        let span = self.d1 - self.d0;
        if span <= 0.0 {
            return self.r0;
        }
        let t = ((v - self.d0) / span).clamp(0.0, 1.0);
        self.r0 + t * (self.r1 - self.r0)
    }
}

/// A tick step of 1, 2 or 5 times a power of ten giving at most `max_ticks` steps over `span`.
pub(super) fn nice_step(span: f64, max_ticks: usize) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / max_ticks.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// The moments the picture marks, in milliseconds since the run started, all read from the report.
#[derive(Debug, PartialEq)]
pub(super) struct Moments {
    pub(super) end: f64,
    /// When the method began (the first fault injected, else the first `during` sample).
    pub(super) during: Option<f64>,
    /// When the last fault ended and the wait for recovery began.
    pub(super) after: Option<f64>,
    pub(super) recovered: Option<f64>,
    /// When the abort had every fault reverted.
    pub(super) aborted: Option<f64>,
}

impl Moments {
    pub(super) fn of(report: &Report) -> Moments {
        let since = |t: jiff::Timestamp| {
            let d = t.duration_since(report.started_at);
            d.as_secs_f64().max(0.0) * 1000.0
        };
        let first_sample = |phase: Phase| {
            report
                .samples
                .iter()
                .filter(|s| s.phase == phase)
                .map(|s| s.t_ms)
                .reduce(f64::min)
        };
        let injected = report
            .faults
            .iter()
            .filter_map(|f| f.injected_at.map(since))
            .reduce(f64::min);
        let during = injected.or_else(|| first_sample(Phase::During));
        // As the run decides it: the wait for recovery starts when the last fault ended (an
        // instant fault ends when it is carried out).
        let ended = report
            .faults
            .iter()
            .filter_map(|f| match f.status {
                FaultState::Completed => f.injected_at,
                _ => f.reverted_at,
            })
            .map(since)
            .reduce(f64::max);
        let after = first_sample(Phase::After)
            .map(|first| ended.map_or(first, |e| e.min(first)))
            .or(ended.filter(|_| during.is_some()));
        let recovered = match (after, report.time_to_recover) {
            (Some(a), Some(ttr)) => Some(a + stored(ttr).as_secs_f64() * 1000.0),
            _ => None,
        };
        let aborted = report.aborted_by.as_ref().and_then(|_| {
            report
                .faults
                .iter()
                .filter_map(|f| f.reverted_at.map(since))
                .reduce(f64::min)
        });
        let last_sample = report.samples.iter().map(|s| s.t_ms).reduce(f64::max);
        let end = [Some(since(report.ended_at)), last_sample, recovered, ended]
            .into_iter()
            .flatten()
            .fold(1.0, f64::max);
        Moments {
            end,
            during,
            after,
            recovered,
            aborted,
        }
    }
}

/// The timeline as one `<svg>` element.
pub(super) fn render(report: &Report) -> String {
    let m = Moments::of(report);
    let probes = probe_names(report);
    let lanes_height = probes.len() as f64 * (LANE_TITLE + FAIL_STRIP + PLOT + LANE_GAP);
    let faults_top = HEADER + lanes_height;
    let faults_height = if report.faults.is_empty() {
        0.0
    } else {
        LANE_TITLE + report.faults.len() as f64 * FAULT_ROW + LANE_GAP
    };
    let axis_top = faults_top + faults_height;
    let height = axis_top + AXIS;
    let x = Scale::new((0.0, m.end), (LEFT, WIDTH - RIGHT));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height}\" \
         width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"timeline of the run\" \
         font-size=\"12\">"
    );
    bands(&mut out, &m, &x, axis_top);
    for (i, probe) in probes.iter().enumerate() {
        let top = HEADER + i as f64 * (LANE_TITLE + FAIL_STRIP + PLOT + LANE_GAP);
        lane(&mut out, report, probe, top, &x);
    }
    if !report.faults.is_empty() {
        fault_rows(&mut out, report, faults_top, &x);
    }
    axis(&mut out, &m, &x, axis_top);
    markers(&mut out, report, &m, &x, axis_top);
    out.push_str("</svg>\n");
    out
}

/// Probe names in the order the report lists them, then any only the samples name.
fn probe_names(report: &Report) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let listed = report
        .before
        .iter()
        .chain(&report.during)
        .chain(&report.after)
        .map(|p| p.probe.as_str());
    for name in listed.chain(report.samples.iter().map(|s| s.probe.as_str())) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

fn bands(out: &mut String, m: &Moments, x: &Scale, bottom: f64) {
    let mut spans = Vec::new();
    let during_start = m.during.unwrap_or(m.end);
    spans.push(("before", 0.0, during_start, BEFORE_FILL));
    if let Some(d) = m.during {
        let after_start = m.after.unwrap_or(m.end);
        spans.push(("during", d, after_start, DURING_FILL));
        if let Some(a) = m.after {
            spans.push(("after", a, m.end, AFTER_FILL));
        }
    }
    for (name, from, to, fill) in spans {
        let (x0, x1) = (x.map(from), x.map(to));
        if x1 - x0 < 0.5 {
            continue;
        }
        let _ = writeln!(
            out,
            "<rect class=\"phase phase-{name}\" x=\"{x0:.1}\" y=\"0\" width=\"{:.1}\" height=\"{bottom:.1}\" fill=\"{fill}\"/>",
            x1 - x0
        );
        // A band too narrow for its word keeps the colour and loses the label.
        if x1 - x0 >= 48.0 {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"18\" text-anchor=\"middle\" font-weight=\"600\" fill=\"#424a53\">{name}</text>",
                f64::midpoint(x0, x1)
            );
        }
    }
}

fn lane(out: &mut String, report: &Report, probe: &str, top: f64, x: &Scale) {
    let strip = top + LANE_TITLE;
    let plot_top = strip + FAIL_STRIP;
    let plot_bottom = plot_top + PLOT;
    let samples: Vec<_> = report.samples.iter().filter(|s| s.probe == probe).collect();
    let failed = samples.iter().filter(|s| !s.ok).count();
    let max_latency = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency_ms)
        .fold(0.0, f64::max);
    // The steady-state SLO's p99 bound (as the recovery was judged, else the baseline).
    let limit = report
        .after
        .iter()
        .chain(&report.before)
        .find(|p| p.probe == probe && p.p99_limit.is_some())
        .and_then(|p| p.p99_limit)
        .map(|d| stored(d).as_secs_f64() * 1000.0);
    // The axis stretches to show the bound unless that would flatten the samples into the
    // bottom third; then the bound is named at the top instead.
    let shown_limit = limit.filter(|l| *l <= 3.0 * max_latency.max(1.0));
    let highest = shown_limit.map_or(max_latency, |l| l.max(max_latency));
    let step = nice_step(highest.max(1.0), 4);
    let top_value = (highest / step).ceil().max(1.0) * step;
    let y = Scale::new((0.0, top_value), (plot_bottom, plot_top));
    let _ = writeln!(
        out,
        "<g class=\"probe\"><text x=\"{LEFT}\" y=\"{:.1}\" font-weight=\"600\">probe {} — latency of {} samples, {} failed (red crosses)</text>",
        top + 14.0,
        escape(probe),
        samples.len(),
        failed
    );
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{plot_top:.1}\" width=\"{:.1}\" height=\"{PLOT}\" fill=\"none\" stroke=\"#afb8c1\"/>",
        WIDTH - RIGHT - LEFT
    );
    let mut v = 0.0;
    while v <= top_value + step / 2.0 {
        let yy = y.map(v);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#d0d7de\" stroke-dasharray=\"2 3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#59636e\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            format_ms(Duration::from_secs_f64(v / 1000.0))
        );
        v += step;
    }
    match (limit, shown_limit) {
        (Some(l), Some(_)) => {
            let yy = y.map(l);
            let _ = writeln!(
                out,
                "<line class=\"slo-line\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#8250df\" stroke-width=\"1.5\" stroke-dasharray=\"8 4\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#8250df\">SLO p99 ≤ {}</text>",
                WIDTH - RIGHT,
                WIDTH - RIGHT - 4.0,
                yy - 4.0,
                format_ms(Duration::from_secs_f64(l / 1000.0))
            );
        }
        (Some(l), None) => {
            let _ = writeln!(
                out,
                "<text class=\"slo-above\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#8250df\">SLO p99 ≤ {} (above this scale)</text>",
                WIDTH - RIGHT,
                top + 14.0,
                format_ms(Duration::from_secs_f64(l / 1000.0))
            );
        }
        _ => {}
    }
    let mut dots = String::new();
    let mut crosses = String::new();
    for s in &samples {
        let xx = x.map(s.t_ms);
        if s.ok {
            let _ = write!(
                dots,
                "<circle cx=\"{xx:.1}\" cy=\"{:.1}\" r=\"2.2\"/>",
                y.map(s.latency_ms)
            );
        } else {
            let cy = strip + FAIL_STRIP / 2.0;
            let _ = write!(
                crosses,
                "M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}",
                xx - 3.5,
                cy - 3.5,
                xx + 3.5,
                cy + 3.5,
                xx - 3.5,
                cy + 3.5,
                xx + 3.5,
                cy - 3.5
            );
        }
    }
    let _ = writeln!(
        out,
        "<g class=\"samples\" fill=\"#0969da\" fill-opacity=\"0.75\">{dots}</g>"
    );
    if !crosses.is_empty() {
        let _ = writeln!(
            out,
            "<path class=\"failures\" d=\"{crosses}\" stroke=\"#cf222e\" stroke-width=\"1.6\" fill=\"none\"/>"
        );
    }
    out.push_str("</g>\n");
}

fn fault_rows(out: &mut String, report: &Report, top: f64, x: &Scale) {
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{:.1}\" font-weight=\"600\">faults (inject → revert, per agent)</text>",
        top + 14.0
    );
    let since =
        |t: jiff::Timestamp| t.duration_since(report.started_at).as_secs_f64().max(0.0) * 1000.0;
    for (i, f) in report.faults.iter().enumerate() {
        let row = top + LANE_TITLE + i as f64 * FAULT_ROW;
        let label = format!(
            "{} ({}) on {} — {}",
            f.name,
            f.kind,
            f.agent,
            status_text(f.status)
        );
        let Some(injected) = f.injected_at.map(since) else {
            let _ = writeln!(
                out,
                "<text x=\"{LEFT}\" y=\"{:.1}\" fill=\"#59636e\">{} (never injected)</text>",
                row + 15.0,
                escape(&label)
            );
            continue;
        };
        let ended = match f.status {
            FaultState::Completed => injected,
            _ => f.reverted_at.map_or(x_end(x), since),
        };
        let (x0, x1) = (x.map(injected), x.map(ended));
        // A dashed line from the top of the lanes down to the bar, so a kill that lasts an
        // instant can be lined up with what the probes saw at that moment.
        let _ = writeln!(
            out,
            "<line class=\"fault-moment\" x1=\"{x0:.1}\" x2=\"{x0:.1}\" y1=\"{HEADER}\" y2=\"{:.1}\" stroke=\"#bc4c00\" stroke-width=\"1.2\" stroke-dasharray=\"3 3\"/>",
            row + 4.0
        );
        // An instant fault (a kill) still gets a bar a person can see.
        let w = (x1 - x0).max(4.0);
        let fill = match f.status {
            FaultState::RevertFailed | FaultState::InjectFailed => "#cf222e",
            _ => "#bc4c00",
        };
        let _ = writeln!(
            out,
            "<rect class=\"fault-bar\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"14\" rx=\"2\" fill=\"{fill}\"><title>{}</title></rect>",
            row + 4.0,
            escape(&label)
        );
        // The label goes right of the bar when it fits, else left of it.
        let text_width = label.chars().count() as f64 * 6.6;
        let (tx, anchor) = if x0 + w + 6.0 + text_width <= WIDTH - RIGHT {
            (x0 + w + 6.0, "start")
        } else {
            (x0 - 6.0, "end")
        };
        let _ = writeln!(
            out,
            "<text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" {HALO}>{}</text>",
            row + 15.0,
            escape(&label)
        );
    }
}

/// The domain end of the x scale: a fault never reverted runs to the edge of the picture.
fn x_end(x: &Scale) -> f64 {
    x.d1
}

fn axis(out: &mut String, m: &Moments, x: &Scale, top: f64) {
    let seconds = m.end / 1000.0;
    let step = nice_step(seconds, 12);
    let decimals = if step >= 1.0 {
        0
    } else if step >= 0.1 {
        1
    } else {
        2
    };
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{top:.1}\" y2=\"{top:.1}\" stroke=\"#59636e\"/>",
        WIDTH - RIGHT
    );
    let mut s = 0.0;
    while s <= seconds + step * 1e-6 {
        let xx = x.map(s * 1000.0);
        let _ = writeln!(
            out,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{top:.1}\" y2=\"{:.1}\" stroke=\"#59636e\"/>\
             <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#59636e\">{s:.decimals$} s</text>",
            top + 5.0,
            top + 18.0
        );
        s += step;
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#424a53\">seconds since the run started</text>",
        f64::midpoint(LEFT, WIDTH - RIGHT),
        top + 36.0
    );
}

/// The abort and recovery moments: a vertical line through every lane and a label in the
/// header's second row, on the side of the line where it fits.
fn markers(out: &mut String, report: &Report, m: &Moments, x: &Scale, bottom: f64) {
    let label_at = |xx: f64, text: &str| {
        let width = text.chars().count() as f64 * 6.8;
        if xx + 6.0 + width <= WIDTH - RIGHT {
            (xx + 6.0, "start")
        } else {
            (xx - 6.0, "end")
        }
    };
    if let Some(at) = m.aborted {
        let xx = x.map(at);
        let rule = report.aborted_by.as_deref().unwrap_or_default();
        let text = format!("aborted: {}", shorten(rule, 70));
        let (tx, anchor) = label_at(xx, &text);
        let _ = writeln!(
            out,
            "<g id=\"abort\"><line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"26\" y2=\"{bottom:.1}\" stroke=\"#cf222e\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{tx:.1}\" y=\"40\" text-anchor=\"{anchor}\" fill=\"#cf222e\" font-weight=\"600\">{}</text></g>",
            escape(&text)
        );
    }
    if let (Some(at), Some(ttr)) = (m.recovered, report.time_to_recover) {
        let xx = x.map(at);
        let text = format!("recovered in {}", format_ms(stored(ttr)));
        let (tx, anchor) = label_at(xx, &text);
        if let Some(from) = m.after {
            // The wait for recovery, drawn as a bracket from the last fault's end to the recovery.
            let x0 = x.map(from);
            let _ = writeln!(
                out,
                "<line x1=\"{x0:.1}\" x2=\"{xx:.1}\" y1=\"30\" y2=\"30\" stroke=\"#1a7f37\" stroke-width=\"2\"/>"
            );
        }
        let _ = writeln!(
            out,
            "<g id=\"recovery\"><line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"26\" y2=\"{bottom:.1}\" stroke=\"#1a7f37\" stroke-width=\"2\"/>\
             <circle cx=\"{xx:.1}\" cy=\"30\" r=\"4\" fill=\"#1a7f37\"/>\
             <text x=\"{tx:.1}\" y=\"44\" text-anchor=\"{anchor}\" fill=\"#1a7f37\" font-weight=\"600\">{}</text></g>",
            escape(&text)
        );
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}
