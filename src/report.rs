//! Owns the result of a run — verdict, reason, per-phase SLIs, faults — and its renderings, one
//! file each: `json.rs` (the schema_version 1 journal), `junit.rs` (for CI), `markdown.rs` (CI
//! summaries and merge-request comments), `terminal.rs` (people), `html.rs` (one self-contained
//! page with the timeline picture).

pub(crate) mod html;
pub(crate) mod json;
pub(crate) mod junit;
pub(crate) mod markdown;
pub(crate) mod terminal;

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::budget::Budget;
use crate::model::{Experiment, GoldenSignal};
use crate::sli::Stats;

/// The exit code of a run whose input was invalid: an experiment file, an inventory or a target
/// group that cannot be used. Nothing ran.
pub(crate) const EXIT_INVALID: u8 = 2;

/// The outcome a pipeline gates on. Exit codes are part of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    Passed,
    Failed,
    Aborted,
    NotRun,
    Error,
}

impl Verdict {
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Verdict::Passed => 0,
            Verdict::Failed => 1,
            Verdict::Aborted => 3,
            Verdict::NotRun => 4,
            Verdict::Error => 5,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Aborted => "aborted",
            Verdict::NotRun => "not_run",
            Verdict::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    Before,
    During,
    After,
}

#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) run_id: String,
    pub(crate) title: String,
    pub(crate) file: String,
    pub(crate) sha256: String,
    pub(crate) seed: u64,
    pub(crate) started_at: Timestamp,
    pub(crate) ended_at: Timestamp,
    pub(crate) dry_run: bool,
    pub(crate) verdict: Verdict,
    pub(crate) reason: String,
    pub(crate) before: Vec<ProbePhase>,
    pub(crate) during: Vec<ProbePhase>,
    pub(crate) after: Vec<ProbePhase>,
    pub(crate) faults: Vec<FaultRecord>,
    pub(crate) time_to_recover: Option<Duration>,
    pub(crate) recovery_within: Duration,
    pub(crate) aborted_by: Option<String>,
    pub(crate) time_to_abort: Option<Duration>,
    /// Faults found in the journal from an earlier, crashed run and reverted before this one began.
    pub(crate) recovered_from_journal: Vec<String>,
    /// The error-budget gate's numbers, when the experiment has one and they could be read.
    pub(crate) budget: Option<Budget>,
    pub(crate) samples: Vec<SampleRecord>,
    /// What weakens what the run proves, said in every report: a probe with `insecure = true`.
    pub(crate) warnings: Vec<String>,
    /// The run never started because its inventory or target groups were invalid: it exits
    /// `EXIT_INVALID` like an invalid experiment, whatever its verdict (`error`) says.
    pub(crate) input_invalid: bool,
}

/// Why a run ended before its baseline, outside the run loop (which reports the budget gate and
/// failed fixtures itself): nothing was injected.
#[derive(Debug)]
pub(crate) enum NotStarted {
    /// The inventory or a target group could not be used (exit 2).
    Invalid(String),
    /// An agent was unreachable or halted, or the embedded agent could not be opened (exit 5).
    Error(String),
}

/// One probe's numbers in one phase.
#[derive(Clone, Debug)]
pub(crate) struct ProbePhase {
    pub(crate) probe: String,
    pub(crate) signal: Option<GoldenSignal>,
    pub(crate) stats: Stats,
    /// `None` when no SLO applies to this phase (the `during` phase without `slo_during`).
    pub(crate) slo_met: Option<bool>,
    /// The p99 latency bound this phase's SLO check used (`"2x baseline"` resolved against the
    /// baseline), when the SLO has one: the line the HTML timeline draws.
    pub(crate) p99_limit: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultState {
    /// Never started: the run stopped first.
    Skipped,
    /// An instant fault (a kill) that was carried out.
    Completed,
    Reverted,
    /// Stopped acting before its planned end without the run asking (the agent restarted, its
    /// lease lapsed, a halt, the watchdog): `reverted_at` is when, `detail` says why.
    EndedEarly,
    InjectFailed,
    RevertFailed,
}

#[derive(Clone, Debug)]
pub(crate) struct FaultRecord {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) agent: String,
    pub(crate) targets: Vec<String>,
    pub(crate) injected_at: Option<Timestamp>,
    pub(crate) reverted_at: Option<Timestamp>,
    pub(crate) status: FaultState,
    pub(crate) detail: String,
    /// What an action kind (`command`, `http`) ran: programs or requests, exit codes or
    /// statuses, bounded output. Empty for other kinds.
    pub(crate) actions: Vec<crate::protocol::ActionOutput>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SampleRecord {
    pub(crate) probe: String,
    /// Milliseconds since the run started.
    pub(crate) t_ms: f64,
    pub(crate) phase: Phase,
    pub(crate) ok: bool,
    pub(crate) latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// The short cause the reason counts (`status 503`), when the sample failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<f64>,
    /// The connect time of a sample that opened a connection (`http`, `grpc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) connect_ms: Option<f64>,
    /// The time to the response's headers (`http`, `grpc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_byte_ms: Option<f64>,
}

impl Report {
    /// Masks every registered secret (`secrets.rs`) in every text the report holds, before any
    /// rendering: a rendering that cuts or escapes a text could otherwise show part of one.
    pub(crate) fn redact_secrets(&mut self) {
        use crate::secrets::redact_in_place as r;
        if !crate::secrets::any() {
            return;
        }
        for text in [&mut self.title, &mut self.file, &mut self.reason] {
            r(text);
        }
        for phase in [&mut self.before, &mut self.during, &mut self.after] {
            for p in phase {
                r(&mut p.probe);
                if let Some((cause, _)) = &mut p.stats.top_cause {
                    r(cause);
                }
            }
        }
        for f in &mut self.faults {
            for text in [&mut f.name, &mut f.kind, &mut f.agent, &mut f.detail] {
                r(text);
            }
            f.targets.iter_mut().for_each(r);
        }
        if let Some(rule) = &mut self.aborted_by {
            r(rule);
        }
        self.recovered_from_journal.iter_mut().for_each(r);
        if let Some(budget) = &mut self.budget {
            r(&mut budget.prometheus);
        }
        for s in &mut self.samples {
            r(&mut s.probe);
            if let Some(e) = &mut s.error {
                r(e);
            }
            if let Some(c) = &mut s.cause {
                r(c);
            }
        }
    }

    /// The report of a run of `exp` that ended before its baseline: no phases, `faults` (the ones
    /// it would have run, if known) all skipped, and the reason. Every rendering and the history
    /// take it like any other report, so a pipeline finds every file it asked for.
    pub(crate) fn not_started(
        exp: &Experiment,
        run_id: &str,
        seed: u64,
        started_at: Timestamp,
        dry_run: bool,
        faults: Vec<FaultRecord>,
        why: NotStarted,
    ) -> Report {
        let (input_invalid, reason) = match why {
            NotStarted::Invalid(reason) => (true, reason),
            NotStarted::Error(reason) => (false, reason),
        };
        Report {
            run_id: run_id.to_owned(),
            title: exp.title.clone(),
            file: exp.file.display().to_string(),
            sha256: exp.sha256.clone(),
            seed,
            started_at,
            ended_at: Timestamp::now().max(started_at),
            dry_run,
            verdict: Verdict::Error,
            reason,
            before: Vec::new(),
            during: Vec::new(),
            after: Vec::new(),
            faults,
            time_to_recover: None,
            recovery_within: exp.recovery_within,
            aborted_by: None,
            time_to_abort: None,
            recovered_from_journal: Vec::new(),
            budget: None,
            samples: Vec::new(),
            warnings: crate::probe::warnings(&exp.steady_state.probes),
            input_invalid,
        }
    }

    /// Whether the run ended before it measured its baseline: no probe numbers in any phase and
    /// no fault started (a refused preflight, a failed fixture, the budget gate).
    pub(crate) fn ended_before_baseline(&self) -> bool {
        self.before.is_empty()
            && self.during.is_empty()
            && self.after.is_empty()
            && self.faults.iter().all(|f| f.status == FaultState::Skipped)
    }

    /// Records a fault that outlived the run loop: the run's verdict can no longer be trusted.
    pub(crate) fn note_leftover(&mut self, line: &str) {
        self.reason = format!("{line}; before that: {}", self.reason);
        self.verdict = Verdict::Error;
    }

    /// The process exit code. A dry run whose steady state held exits 0: nothing was meant to run.
    pub(crate) fn exit_code(&self) -> u8 {
        if self.input_invalid {
            return EXIT_INVALID;
        }
        let dry_run_held = self.dry_run
            && self.verdict == Verdict::NotRun
            && !self.before.is_empty()
            && self.before.iter().all(|p| p.slo_met == Some(true));
        if dry_run_held {
            0
        } else {
            self.verdict.exit_code()
        }
    }
}

pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{FaultRecord, FaultState, Report, Verdict};

    /// A run whose kill worked but whose pause could not be reverted: the worst case a report
    /// must still say plainly.
    fn revert_failed_report() -> Report {
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        Report {
            run_id: "20261126T141500Z-ab12".to_owned(),
            title: "kill & pause <web>".to_owned(),
            file: "experiments/x.toml".to_owned(),
            sha256: "0".repeat(64),
            seed: 7,
            started_at: at("2026-11-26T14:15:00Z"),
            ended_at: at("2026-11-26T14:15:09.5Z"),
            dry_run: false,
            verdict: Verdict::Error,
            reason: "fault `pause` on local could NOT be reverted (SIGCONT failed: \"EPERM\")"
                .to_owned(),
            before: Vec::new(),
            during: Vec::new(),
            after: Vec::new(),
            faults: vec![
                FaultRecord {
                    name: "kill".to_owned(),
                    kind: "process-kill".to_owned(),
                    agent: "local".to_owned(),
                    targets: vec!["pid 42 (python3)".to_owned()],
                    injected_at: Some(at("2026-11-26T14:15:02Z")),
                    reverted_at: None,
                    status: FaultState::Completed,
                    detail: "sent SIGKILL to pid 42 (python3)".to_owned(),
                    actions: Vec::new(),
                },
                FaultRecord {
                    name: "pause".to_owned(),
                    kind: "process-pause".to_owned(),
                    agent: "local".to_owned(),
                    targets: vec!["pid 43 (sleep)".to_owned()],
                    injected_at: Some(at("2026-11-26T14:15:02Z")),
                    reverted_at: None,
                    status: FaultState::RevertFailed,
                    detail: "stopped pid 43 (sleep); REVERT FAILED: EPERM".to_owned(),
                    actions: Vec::new(),
                },
            ],
            time_to_recover: Some(Duration::from_micros(674_620)),
            recovery_within: Duration::from_secs(5),
            aborted_by: None,
            time_to_abort: None,
            recovered_from_journal: Vec::new(),
            budget: None,
            samples: Vec::new(),
            warnings: Vec::new(),
            input_invalid: false,
        }
    }

    /// The revert-failed report with probes in every phase, a budget, samples and durations
    /// finer than the JSON keeps, read back from its JSON.
    #[test]
    fn a_report_read_back_from_json_renders_exactly_like_the_live_one() {
        use crate::sli::{Stats, ValueStats};
        let mut report = revert_failed_report();
        report.warnings = vec!["probe `web` has `insecure = true`: ...".to_owned()];
        report.time_to_recover = Some(Duration::from_nanos(1_234_999_600));
        report.aborted_by = Some("errors above 50%".to_owned());
        // 12.3446 ms prints as 12.34 ms, but the JSON keeps 12.345 ms, which prints as 12.35 ms:
        // the live rendering must round like the JSON does.
        report.time_to_abort = Some(Duration::from_nanos(12_344_600));
        report.recovery_within = Duration::from_millis(2500);
        let stats = Stats {
            samples: 7,
            successes: 6,
            p50: Some(Duration::from_micros(51_010)),
            p95: Some(Duration::from_micros(52_300)),
            p99: Some(Duration::from_micros(1_052_300)),
            max: Some(Duration::from_micros(1_052_301)),
            values: Some(ValueStats {
                count: 7,
                min: 0.001_25,
                mean: 0.333_333_333_333_333_3,
                max: 0.97,
            }),
            top_cause: None,
            connect: Some(crate::sli::Split {
                count: 2,
                p50: Duration::from_micros(1_250),
                p99: Duration::from_micros(3_500),
            }),
            first_byte: None,
        };
        let phase = |probe: &str, signal, slo_met| super::ProbePhase {
            probe: probe.to_owned(),
            signal,
            stats: stats.clone(),
            slo_met,
            p99_limit: Some(Duration::from_micros(250_500)),
        };
        report.before = vec![
            phase("web", Some(crate::model::GoldenSignal::Latency), Some(true)),
            phase(
                "queue",
                Some(crate::model::GoldenSignal::Saturation),
                Some(true),
            ),
        ];
        report.during = vec![phase("web", None, None)];
        report.after = vec![phase("web", None, Some(false))];
        report.budget = Some(
            crate::budget::Budget::compute("http://prom:9090", 0.999, 0.25, 99_950.0, 100_000.0)
                .unwrap(),
        );
        report.recovered_from_journal = vec!["fault x-0 (process-pause)".to_owned()];
        report.samples = vec![super::SampleRecord {
            probe: "web".to_owned(),
            t_ms: 12.5,
            phase: super::Phase::During,
            ok: false,
            latency_ms: 3.25,
            error: Some("connection refused".to_owned()),
            cause: Some("refused".to_owned()),
            value: None,
            connect_ms: Some(1.5),
            first_byte_ms: None,
        }];
        let text = super::json::render(&report);
        let back = super::json::parse(&text).unwrap();
        assert_eq!(super::json::render(&back), text);
        assert_eq!(
            super::terminal::render(&back),
            super::terminal::render(&report)
        );
        let shown = super::terminal::render(&back);
        assert!(
            shown.contains("time to recover: 1.23 s (allowed 2.5 s)\n"),
            "{shown}"
        );
        assert!(shown.contains("faults reverted 12.35 ms after"), "{shown}");
    }

    /// A run stopped by an unusable inventory exits 2 like an invalid experiment; its stored
    /// report keeps that exit code, and a run stopped by an unreachable agent keeps 5.
    #[test]
    fn a_report_of_a_run_that_never_started_keeps_its_exit_code_when_read_back() {
        let toml = "title = \"t\"\n[steady_state]\nwindow = \"1s\"\n[[steady_state.probe]]\nname = \"p\"\ncommand = [\"true\"]\n[[fault]]\nname = \"kill\"\nkind = \"process-kill\"\nselect = { name = \"x\" }\n[recovery]\nwithin = \"3s\"\n";
        let exp = crate::experiment::parse(std::path::Path::new("x.toml"), toml).unwrap();
        let at: jiff::Timestamp = "2026-12-02T07:00:00Z".parse().unwrap();
        let faults = crate::run::session::planned_faults(&exp, None);
        for (why, exit) in [
            (super::NotStarted::Invalid("bad inventory".to_owned()), 2),
            (
                super::NotStarted::Error("agent `a` is halted".to_owned()),
                5,
            ),
        ] {
            let report = Report::not_started(&exp, "r-1", 3, at, false, faults.clone(), why);
            assert_eq!(report.verdict, Verdict::Error);
            assert_eq!(report.exit_code(), exit);
            assert_eq!(report.recovery_within, Duration::from_secs(3));
            assert_eq!(report.faults.len(), 1, "the local kill, skipped");
            assert_eq!(report.faults[0].status, FaultState::Skipped);
            let text = super::json::render(&report);
            assert!(text.contains(&format!("\"exit_code\": {exit},")), "{text}");
            let back = super::json::parse(&text).unwrap();
            assert_eq!(back.exit_code(), exit);
            assert!(back.ended_before_baseline());
            // Nothing was measured: the baseline's test case fails with the reason, not passes.
            let xml = super::junit::render(&back);
            assert!(
                xml.contains(&format!("name=\"steady state before the method\">\n      <failure type=\"error\" message=\"{}", back.reason)),
                "{xml}"
            );
            assert_eq!(super::json::render(&back), text);
            assert_eq!(
                super::terminal::render(&back),
                super::terminal::render(&report)
            );
        }
    }

    #[test]
    fn a_report_of_another_schema_version_is_refused() {
        let text = super::json::render(&revert_failed_report())
            .replace("\"schema_version\": 1", "\"schema_version\": 2");
        assert_eq!(
            super::json::parse(&text).unwrap_err().to_string(),
            "the report has schema_version 2; this faultline reads 1"
        );
    }

    #[test]
    fn junit_marks_the_failed_revert_and_escapes_what_it_quotes() {
        let xml = super::junit::render(&revert_failed_report());
        let expected = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="faultline" tests="4" failures="2" time="9.500">
  <testsuite name="kill &amp; pause &lt;web&gt;" tests="4" failures="2" time="9.500" timestamp="2026-11-26T14:15:00Z">
    <properties><property name="run_id" value="20261126T141500Z-ab12"/><property name="verdict" value="error"/><property name="seed" value="7"/></properties>
    <testcase classname="experiments/x.toml" name="steady state before the method"/>
    <testcase classname="experiments/x.toml" name="fault `kill` (process-kill) on local"/>
    <testcase classname="experiments/x.toml" name="fault `pause` (process-pause) on local">
      <failure type="error" message="failed to revert: stopped pid 43 (sleep); REVERT FAILED: EPERM"/>
    </testcase>
    <testcase classname="experiments/x.toml" name="steady state recovered">
      <failure type="error" message="fault `pause` on local could NOT be reverted (SIGCONT failed: &quot;EPERM&quot;)"/>
    </testcase>
  </testsuite>
</testsuites>
"#;
        assert_eq!(xml, expected);
    }

    #[test]
    fn the_terminal_summary_ends_with_the_verdict_and_its_reason() {
        let text = super::terminal::render(&revert_failed_report());
        assert!(
            text.contains("time to recover: 675 ms (allowed 5 s)\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "verdict: ERROR (exit 5) — fault `pause` on local could NOT be reverted (SIGCONT failed: \"EPERM\")\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("revert failed"),
            "the fault table shows the failed revert: {text}"
        );
    }

    #[test]
    fn the_terminal_summary_says_what_an_action_ran_and_why_a_step_failed() {
        let mut report = revert_failed_report();
        let step =
            |step: &str, ok: bool, outcome: &str, stderr: &str| crate::protocol::ActionOutput {
                step: step.to_owned(),
                command: format!("/usr/bin/flagctl {step}"),
                ok,
                exit_code: Some(i32::from(!ok)),
                status: None,
                outcome: outcome.to_owned(),
                stdout: String::new(),
                stderr: stderr.to_owned(),
                duration_ms: 12,
            };
        report.faults[0].actions = vec![
            step("run", true, "exit 0", ""),
            step(
                "revert",
                false,
                "exit 1",
                "\nflag service unreachable\nmore",
            ),
        ];
        let text = super::terminal::render(&report);
        assert!(
            text.contains("action: kill run: /usr/bin/flagctl run → exit 0 in 12 ms\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "action: kill revert: /usr/bin/flagctl revert → exit 1 in 12 ms\n        stderr: flag service unreachable\n"
            ),
            "{text}"
        );
    }
}
