//! Owns the postmortem section: plain sentences generated from the report — what was injected
//! where and for how long, what users would have seen, how long recovery took against what was
//! allowed, and what the SLOs and the error budget say. Pure: a report in, strings out.

use std::time::Duration;

use super::stored;
use crate::report::{FaultState, ProbePhase, Report, Verdict};
use crate::units::{Percent, format_ms};

pub(super) fn sentences(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if report.dry_run {
        out.push(
            "This was a dry run: the steady state was measured and nothing was injected."
                .to_owned(),
        );
    }
    for f in &report.faults {
        out.push(fault_sentence(report, f));
    }
    for before in &report.before {
        if let Some(during) = report.during.iter().find(|p| p.probe == before.probe) {
            if let Some(s) = users_sentence(before, during) {
                out.push(s);
            }
        }
    }
    // An instant fault (a kill) acts in a moment: what users saw comes after it, until recovery.
    // Only what the stored JSON keeps, so a stored report says the same.
    for after in &report.after {
        let failed = after.stats.samples - after.stats.successes;
        if failed > 0 {
            out.push(format!(
                "Between the end of the faults and the end of the run, `{}` failed {failed} of {} samples.",
                after.probe, after.stats.samples
            ));
        }
    }
    out.extend(recovery_sentence(report));
    let missed: Vec<&str> = report
        .after
        .iter()
        .filter(|p| p.slo_met == Some(false))
        .map(|p| p.probe.as_str())
        .collect();
    if !missed.is_empty() {
        out.push(format!(
            "After the faults, {} did not meet {} SLO.",
            quoted_list(&missed),
            if missed.len() == 1 { "its" } else { "their" }
        ));
    } else if !report.after.is_empty() && report.after.iter().all(|p| p.slo_met == Some(true)) {
        out.push("After the faults, every probe met its SLO again.".to_owned());
    }
    if let Some(b) = &report.budget {
        out.push(format!("Error budget: {}.", b.summary()));
    }
    for line in &report.recovered_from_journal {
        out.push(format!(
            "Before this run began, faultline reverted a fault left by an earlier crashed run: {line}."
        ));
    }
    out.push(format!(
        "Verdict: {} (exit {}) — {}.",
        report.verdict.as_str(),
        report.exit_code(),
        report.reason.trim_end_matches('.')
    ));
    out
}

fn fault_sentence(report: &Report, f: &crate::report::FaultRecord) -> String {
    let what = format!("`{}` ({})", f.name, f.kind);
    let target = if f.targets.is_empty() {
        String::new()
    } else {
        format!(" {}", f.targets.join(", "))
    };
    let at = |t: jiff::Timestamp| {
        let d = t.duration_since(report.started_at);
        format_ms(stored(Duration::from_secs_f64(d.as_secs_f64().max(0.0))))
    };
    let held = |from: jiff::Timestamp, to: jiff::Timestamp| {
        let d = to.duration_since(from);
        format_ms(stored(Duration::from_secs_f64(d.as_secs_f64().max(0.0))))
    };
    match (f.status, f.injected_at, f.reverted_at) {
        (FaultState::InjectFailed, ..) => {
            format!("Injecting {what} on {} failed: {}.", f.agent, f.detail)
        }
        (FaultState::Skipped, ..) | (_, None, _) => {
            format!(
                "{what} on {} was never injected: the run stopped first.",
                f.agent
            )
        }
        (FaultState::Completed, Some(i), _) => {
            format!(
                "{what} hit{target} on {} at {} into the run; it acts at once and has nothing to revert.",
                f.agent,
                at(i)
            )
        }
        (FaultState::Reverted, Some(i), Some(r)) => format!(
            "{what} acted on{target} on {} from {} into the run for {}, then was reverted.",
            f.agent,
            at(i),
            held(i, r)
        ),
        (FaultState::EndedEarly, Some(i), Some(r)) => format!(
            "{what} acted on{target} on {} from {} into the run and ended early after {}: {}.",
            f.agent,
            at(i),
            held(i, r),
            f.detail
        ),
        (FaultState::RevertFailed, Some(i), _) => format!(
            "{what} acted on{target} on {} from {} into the run and could NOT be reverted: {}.",
            f.agent,
            at(i),
            f.detail
        ),
        (_, Some(i), _) => format!(
            "{what} acted on{target} on {} from {} into the run.",
            f.agent,
            at(i)
        ),
    }
}

/// What the users of one probe saw during the method, against the baseline.
fn users_sentence(before: &ProbePhase, during: &ProbePhase) -> Option<String> {
    let (b, d) = (before.stats.success_ratio()?, during.stats.success_ratio()?);
    let mut s = format!(
        "Users of `{}` saw {} of requests succeed while the faults acted ({} of {} samples), against {} before",
        during.probe,
        Percent(d),
        during.stats.successes,
        during.stats.samples,
        Percent(b)
    );
    match (during.stats.p99, before.stats.p99) {
        (Some(dp), Some(bp)) => s.push_str(&format!(
            "; p99 latency was {} against {} before.",
            format_ms(stored(dp)),
            format_ms(stored(bp))
        )),
        (None, Some(_)) => s.push_str("; no request succeeded, so there is no latency to compare."),
        _ => s.push('.'),
    }
    Some(s)
}

fn recovery_sentence(report: &Report) -> Option<String> {
    let allowed = format_ms(report.recovery_within);
    if let (Some(rule), Some(tta)) = (&report.aborted_by, report.time_to_abort) {
        return Some(format!(
            "The run was aborted by `{rule}`: every fault was reverted {} after the breach began.",
            format_ms(stored(tta))
        ));
    }
    if let Some(ttr) = report.time_to_recover {
        let within = if ttr <= report.recovery_within {
            "within"
        } else {
            "beyond"
        };
        return Some(format!(
            "The steady state came back {} after the last fault ended, {within} the allowed {allowed}.",
            format_ms(stored(ttr))
        ));
    }
    (report.verdict == Verdict::Failed && !report.during.is_empty() && !report.after.is_empty())
        .then(|| format!("The steady state did not come back within the allowed {allowed}."))
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
