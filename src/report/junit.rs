//! Owns the JUnit XML rendering, so CI systems show a resilience experiment like a test suite:
//! one test case per verdict criterion (error budget, steady state before, each fault, recovery).

use std::fmt::Write;

use super::{FaultState, Report, Verdict};

pub(crate) fn render(report: &Report) -> String {
    let mut cases: Vec<(String, Option<String>)> = Vec::new();
    // A run the error-budget gate refused never measured its steady state: the gate is the
    // criterion that failed, not the baseline.
    let budget_refused = report.budget.as_ref().is_some_and(|b| !b.enough());
    if let Some(b) = &report.budget {
        cases.push((
            "error budget".to_owned(),
            (!b.enough()).then(|| report.reason.clone()),
        ));
    }
    // A run stopped by an error before its baseline never met its steady state either.
    let before_failed = (report.verdict == Verdict::NotRun && !budget_refused)
        || (report.verdict == Verdict::Error && report.ended_before_baseline());
    cases.push((
        "steady state before the method".to_owned(),
        before_failed.then(|| report.reason.clone()),
    ));
    for f in &report.faults {
        let failure = match f.status {
            FaultState::InjectFailed => Some(format!("failed to inject: {}", f.detail)),
            FaultState::RevertFailed => Some(format!("failed to revert: {}", f.detail)),
            FaultState::EndedEarly => Some(format!("ended early: {}", f.detail)),
            FaultState::Skipped if !before_failed && !budget_refused => {
                Some("not started: the run stopped first".to_owned())
            }
            _ => None,
        };
        cases.push((
            format!("fault `{}` ({}) on {}", f.name, f.kind, f.agent),
            failure,
        ));
    }
    let recovery_failure = match report.verdict {
        Verdict::Passed | Verdict::NotRun => None,
        _ => Some(report.reason.clone()),
    };
    cases.push(("steady state recovered".to_owned(), recovery_failure));

    let failures = cases.iter().filter(|(_, f)| f.is_some()).count();
    let seconds = report
        .ended_at
        .duration_since(report.started_at)
        .as_secs_f64();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"faultline\" tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">",
        cases.len()
    );
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\" timestamp=\"{}\">",
        escape(&report.title),
        cases.len(),
        report.started_at
    );
    let _ = writeln!(
        xml,
        "    <properties><property name=\"run_id\" value=\"{}\"/><property name=\"verdict\" value=\"{}\"/><property name=\"seed\" value=\"{}\"/></properties>",
        escape(&report.run_id),
        report.verdict.as_str(),
        report.seed
    );
    for (name, failure) in &cases {
        let _ = write!(
            xml,
            "    <testcase classname=\"{}\" name=\"{}\"",
            escape(&report.file),
            escape(name)
        );
        match failure {
            None => xml.push_str("/>\n"),
            Some(message) => {
                let _ = writeln!(
                    xml,
                    ">\n      <failure type=\"{}\" message=\"{}\"/>\n    </testcase>",
                    report.verdict.as_str(),
                    escape(message)
                );
            }
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t') => {}
            c => out.push(c),
        }
    }
    out
}
