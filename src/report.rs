//! Owns the result of a run — verdict, reason, per-phase SLIs, faults — and its renderings, one
//! file each: `json.rs` (the schema_version 1 journal), `junit.rs` (for CI), `terminal.rs` (people).

pub(crate) mod json;
pub(crate) mod junit;
pub(crate) mod terminal;

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::budget::Budget;
use crate::model::GoldenSignal;
use crate::sli::Stats;

/// The outcome a pipeline gates on. Exit codes are part of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
}

/// One probe's numbers in one phase.
#[derive(Clone, Debug)]
pub(crate) struct ProbePhase {
    pub(crate) probe: String,
    pub(crate) signal: Option<GoldenSignal>,
    pub(crate) stats: Stats,
    /// `None` when no SLO applies to this phase (the `during` phase without `slo_during`).
    pub(crate) slo_met: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultState {
    /// Never started: the run stopped first.
    Skipped,
    /// An instant fault (a kill) that was carried out.
    Completed,
    Reverted,
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
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct SampleRecord {
    pub(crate) probe: String,
    /// Milliseconds since the run started.
    pub(crate) t_ms: f64,
    pub(crate) phase: Phase,
    pub(crate) ok: bool,
    pub(crate) latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<f64>,
}

impl Report {
    /// Records a fault that outlived the run loop: the run's verdict can no longer be trusted.
    pub(crate) fn note_leftover(&mut self, line: &str) {
        self.reason = format!("{line}; before that: {}", self.reason);
        self.verdict = Verdict::Error;
    }

    /// The process exit code. A dry run whose steady state held exits 0: nothing was meant to run.
    pub(crate) fn exit_code(&self) -> u8 {
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
