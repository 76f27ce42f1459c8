//! Owns the terminal summary: per-phase probe results, faults with their times, and the verdict
//! with its reason in one sentence.

use std::time::Duration;

use tabled::settings::Style;
use tabled::{Table, Tabled};

use super::{FaultState, ProbePhase, Report};
use crate::model::GoldenSignal;
use crate::probe::prometheus::format_number_full;
use crate::units::{Percent, format_ms};

#[derive(Tabled)]
struct ProbeRow {
    phase: &'static str,
    probe: String,
    samples: usize,
    success: String,
    p50: String,
    p95: String,
    p99: String,
    #[tabled(rename = "SLO")]
    slo: &'static str,
}

/// One golden signal, side by side across the phases.
#[derive(Tabled)]
struct SignalRow {
    signal: &'static str,
    probe: String,
    before: String,
    during: String,
    after: String,
}

#[derive(Tabled)]
struct FaultRow {
    fault: String,
    kind: String,
    agent: String,
    injected: String,
    reverted: String,
    status: String,
    detail: String,
}

pub(crate) fn render(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\n{}  (run {}, seed {})\n",
        report.title, report.run_id, report.seed
    ));
    let mut rows = Vec::new();
    for (phase, list) in [
        ("before", &report.before),
        ("during", &report.during),
        ("after", &report.after),
    ] {
        rows.extend(list.iter().map(|p| probe_row(phase, p)));
    }
    if !rows.is_empty() {
        out.push_str(&Table::new(rows).with(Style::rounded()).to_string());
        out.push('\n');
    }
    let signals = signal_rows(report);
    if !signals.is_empty() {
        out.push_str("golden signals:\n");
        out.push_str(&Table::new(signals).with(Style::rounded()).to_string());
        out.push('\n');
    }
    if let Some(b) = &report.budget {
        out.push_str(&format!("error budget: {}\n", b.summary()));
    }
    let time = |t: Option<jiff::Timestamp>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.strftime("%H:%M:%S%.3f").to_string(),
        )
    };
    let faults: Vec<FaultRow> = report
        .faults
        .iter()
        .map(|f| FaultRow {
            fault: f.name.clone(),
            kind: f.kind.clone(),
            agent: f.agent.clone(),
            injected: time(f.injected_at),
            reverted: match f.status {
                FaultState::Completed => "(instant)".to_owned(),
                _ => time(f.reverted_at),
            },
            status: match f.status {
                FaultState::Skipped => "skipped",
                FaultState::Completed => "completed",
                FaultState::Reverted => "reverted",
                FaultState::EndedEarly => "ended early",
                FaultState::InjectFailed => "inject failed",
                FaultState::RevertFailed => "revert failed",
            }
            .to_owned(),
            detail: wrap(&f.detail, 60),
        })
        .collect();
    if !faults.is_empty() {
        out.push_str(&Table::new(faults).with(Style::rounded()).to_string());
        out.push('\n');
    }
    for f in &report.faults {
        for a in &f.actions {
            out.push_str(&action_line(&f.name, a));
        }
    }
    if let Some(ttr) = report.time_to_recover {
        out.push_str(&format!(
            "time to recover: {} (allowed {})\n",
            format_ms(as_stored(ttr)),
            format_ms(Duration::from_millis(
                report.recovery_within.as_millis() as u64
            ))
        ));
    }
    if let (Some(rule), Some(tta)) = (&report.aborted_by, report.time_to_abort) {
        out.push_str(&format!(
            "aborted by: {rule} (faults reverted {} after the breach began)\n",
            format_ms(as_stored(tta))
        ));
    }
    for line in &report.recovered_from_journal {
        out.push_str(&format!("reverted from an earlier crashed run: {line}\n"));
    }
    for line in &report.warnings {
        out.push_str(&format!("warning: {line}\n"));
    }
    out.push_str(&format!(
        "verdict: {} (exit {}) — {}\n",
        report.verdict.as_str().to_uppercase(),
        report.exit_code(),
        report.reason
    ));
    out
}

/// One line per program or request an action kind ran: its step, what it ran, how it ended and
/// how long it took, with the first line of its standard error when it failed (the JSON report
/// keeps the whole bounded output).
fn action_line(fault: &str, a: &crate::protocol::ActionOutput) -> String {
    let mut line = format!(
        "action: {fault} {}: {} → {} in {}\n",
        a.step,
        a.command,
        a.outcome,
        format_ms(Duration::from_millis(a.duration_ms))
    );
    if !a.ok {
        if let Some(first) = a.stderr.lines().find(|l| !l.trim().is_empty()) {
            let first: String = first.chars().take(120).collect();
            line.push_str(&format!("        stderr: {first}\n"));
        }
    }
    line
}

/// A duration as the JSON report keeps it (whole microseconds; `recovery_within` whole
/// milliseconds), so a stored report (`faultline show`) prints exactly what the run printed.
fn as_stored(d: Duration) -> Duration {
    Duration::from_micros((d.as_secs_f64() * 1_000_000.0).round() as u64)
}

fn probe_row(phase: &'static str, p: &ProbePhase) -> ProbeRow {
    let ms = |d: Option<std::time::Duration>| d.map_or_else(|| "-".to_owned(), format_ms);
    ProbeRow {
        phase,
        probe: p.probe.clone(),
        samples: p.stats.samples,
        success: p
            .stats
            .success_ratio()
            .map_or_else(|| "-".to_owned(), |r| Percent(r).to_string()),
        p50: ms(p.stats.p50),
        p95: ms(p.stats.p95),
        p99: ms(p.stats.p99),
        slo: match p.slo_met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "-",
        },
    }
}

/// Rows for the probes that carry a golden-signal role, in the book's order, one column per phase.
fn signal_rows(report: &Report) -> Vec<SignalRow> {
    let mut tagged: Vec<(GoldenSignal, &ProbePhase)> = report
        .before
        .iter()
        .filter_map(|p| p.signal.map(|s| (s, p)))
        .collect();
    tagged.sort_by_key(|(s, _)| *s);
    let cell = |list: &[ProbePhase], name: &str, signal: GoldenSignal| {
        list.iter()
            .find(|p| p.probe == name)
            .map_or_else(|| "-".to_owned(), |p| signal_cell(signal, p))
    };
    tagged
        .into_iter()
        .map(|(signal, p)| SignalRow {
            signal: signal.as_str(),
            probe: p.probe.clone(),
            before: signal_cell(signal, p),
            during: cell(&report.during, &p.probe, signal),
            after: cell(&report.after, &p.probe, signal),
        })
        .collect()
}

/// The number that stands for a signal in one phase: the value the probe read when it reads one
/// (a PromQL rate, a queue depth), otherwise what the samples themselves say.
pub(super) fn signal_cell(signal: GoldenSignal, p: &ProbePhase) -> String {
    if p.stats.samples == 0 {
        return "-".to_owned();
    }
    if let Some(v) = p.stats.values {
        let (mean, max) = (format_number_full(v.mean), format_number_full(v.max));
        return if (v.max - v.min).abs() < f64::EPSILON {
            mean
        } else {
            format!("mean {mean}, max {max}")
        };
    }
    let ms = |d: Option<std::time::Duration>| d.map_or_else(|| "-".to_owned(), format_ms);
    match signal {
        GoldenSignal::Latency => format!("p50 {}, p99 {}", ms(p.stats.p50), ms(p.stats.p99)),
        GoldenSignal::Errors => p.stats.success_ratio().map_or_else(
            || "-".to_owned(),
            |r| format!("{} failed", Percent(1.0 - r)),
        ),
        GoldenSignal::Traffic | GoldenSignal::Saturation => {
            format!("{} answered of {}", p.stats.successes, p.stats.samples)
        }
    }
}

fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split(' ') {
        if line > 0 && line + word.len() > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{GoldenSignal, ProbePhase, signal_cell};
    use crate::probe::Sample;
    use crate::sli::Stats;

    fn phase(samples: &[(bool, u64, Option<f64>)]) -> ProbePhase {
        let at = Instant::now();
        let samples: Vec<Sample> = samples
            .iter()
            .map(|&(ok, ms, value)| Sample {
                probe: 0,
                at,
                ok,
                latency: Duration::from_millis(ms),
                error: None,
                cause: None,
                value,
                timing: crate::probe::Timing::default(),
            })
            .collect();
        ProbePhase {
            probe: "p".into(),
            signal: None,
            stats: Stats::of(&samples),
            slo_met: None,
            p99_limit: None,
        }
    }

    #[test]
    fn signal_cells_show_the_number_that_stands_for_the_signal() {
        let timed = phase(&[
            (true, 50, None),
            (true, 52, None),
            (false, 1, None),
            (true, 51, None),
        ]);
        assert_eq!(
            signal_cell(GoldenSignal::Latency, &timed),
            "p50 51.01 ms, p99 52.03 ms"
        );
        assert_eq!(signal_cell(GoldenSignal::Errors, &timed), "25% failed");
        assert_eq!(
            signal_cell(GoldenSignal::Traffic, &timed),
            "3 answered of 4"
        );
        let read = phase(&[(true, 1, Some(0.25)), (false, 1, Some(0.97))]);
        assert_eq!(
            signal_cell(GoldenSignal::Saturation, &read),
            "mean 0.61, max 0.97"
        );
        let flat = phase(&[(true, 1, Some(3.0)), (true, 1, Some(3.0))]);
        assert_eq!(signal_cell(GoldenSignal::Saturation, &flat), "3");
        assert_eq!(signal_cell(GoldenSignal::Latency, &phase(&[])), "-");
    }
}
