//! Owns the JSON report (schema_version 1): the machine-readable journal of a run.

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{FaultRecord, ProbePhase, Report, SampleRecord, millis};
use crate::budget::Budget;

pub(crate) const SCHEMA_VERSION: u32 = 1;

pub(crate) fn render(report: &Report) -> String {
    let phase = |list: &[ProbePhase]| -> Vec<Value> { list.iter().map(probe_phase).collect() };
    let value = json!({
        "schema_version": SCHEMA_VERSION,
        "run_id": report.run_id,
        "experiment": { "title": report.title, "file": report.file, "sha256": report.sha256 },
        "seed": report.seed,
        "started_at": report.started_at.to_string(),
        "ended_at": report.ended_at.to_string(),
        "dry_run": report.dry_run,
        "verdict": report.verdict.as_str(),
        "exit_code": report.exit_code(),
        "reason": report.reason,
        "phases": { "before": phase(&report.before), "during": phase(&report.during), "after": phase(&report.after) },
        "faults": report.faults.iter().map(fault).collect::<Vec<_>>(),
        "time_to_recover_ms": report.time_to_recover.map(millis),
        "recovery_within_ms": report.recovery_within.as_millis() as u64,
        "aborted_by": report.aborted_by,
        "time_to_abort_ms": report.time_to_abort.map(millis),
        "recovered_from_journal": report.recovered_from_journal,
        "budget": report.budget.as_ref().map(budget),
        "warnings": report.warnings,
    });
    let Value::Object(head) = value else {
        unreachable!("the report head is a json! object literal")
    };
    let document = Document {
        head,
        samples: &report.samples,
    };
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

/// The report object with `samples` last, serialized straight from the records: a long run with
/// fast probes keeps hundreds of thousands of samples, and a `Value` per sample costs about 2 KiB
/// (74k samples peaked at 148 MiB that way, against 28 MiB without a JSON report).
struct Document<'a> {
    head: serde_json::Map<String, Value>,
    samples: &'a [SampleRecord],
}

impl Serialize for Document<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.head.len() + 1))?;
        for (key, value) in &self.head {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("samples", self.samples)?;
        map.end()
    }
}

fn probe_phase(p: &ProbePhase) -> Value {
    let ms = |d: Option<std::time::Duration>| d.map(millis);
    json!({
        "probe": p.probe,
        "signal": p.signal.map(crate::model::GoldenSignal::as_str),
        "samples": p.stats.samples,
        "successes": p.stats.successes,
        "success_ratio": p.stats.success_ratio(),
        "p50_ms": ms(p.stats.p50),
        "p95_ms": ms(p.stats.p95),
        "p99_ms": ms(p.stats.p99),
        "max_ms": ms(p.stats.max),
        "slo_met": p.slo_met,
        "slo_p99_ms": p.p99_limit.map(millis),
        "values": p.stats.values.map(|v| json!({ "count": v.count, "min": v.min, "mean": v.mean, "max": v.max })),
        "connect": p.stats.connect.map(split),
        "first_byte": p.stats.first_byte.map(split),
    })
}

/// One part of the latency split (`http` and `grpc` probes).
fn split(s: crate::sli::Split) -> Value {
    json!({ "samples": s.count, "p50_ms": millis(s.p50), "p99_ms": millis(s.p99) })
}

/// Fractions, as everywhere in the report (`0.999` = 99.9%).
fn budget(b: &Budget) -> Value {
    json!({
        "prometheus": b.prometheus,
        "good": b.good,
        "total": b.total,
        "good_ratio": b.good_ratio,
        "target": b.target,
        "allowed_error": b.allowed_error,
        "consumed": b.consumed,
        "remaining": b.remaining,
        "min_remaining": b.min_remaining,
        "enough": b.enough(),
    })
}

fn fault(f: &FaultRecord) -> Value {
    #[derive(Serialize)]
    struct Out<'a> {
        name: &'a str,
        kind: &'a str,
        agent: &'a str,
        target: &'a [String],
        injected_at: Option<String>,
        reverted_at: Option<String>,
        status: super::FaultState,
        detail: &'a str,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        actions: &'a [crate::protocol::ActionOutput],
    }
    serde_json::to_value(Out {
        name: &f.name,
        kind: &f.kind,
        agent: &f.agent,
        target: &f.targets,
        injected_at: f.injected_at.map(|t| t.to_string()),
        reverted_at: f.reverted_at.map(|t| t.to_string()),
        status: f.status,
        detail: &f.detail,
        actions: &f.actions,
    })
    .unwrap_or(Value::Null)
}

/// Why a stored JSON report could not be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("the report is not a schema_version {SCHEMA_VERSION} JSON report: {0}")]
    Shape(#[from] serde_json::Error),
    #[error("the report has schema_version {0}; this faultline reads {SCHEMA_VERSION}")]
    Version(u32),
    #[error("the report's {field} is not an instant: {value:?}")]
    Instant { field: &'static str, value: String },
}

/// Reads back a report `render` wrote, so a stored report is shown by the same renderers as a
/// live one (`faultline show`). What the JSON rounds is rounded the same way by the terminal
/// rendering (durations to the microsecond, `recovery_within` to the millisecond), so both print
/// the same text. A probe's most common failure cause is not in the JSON and comes back empty;
/// a read value that was infinite (JSON has no infinity) comes back as NaN.
pub(crate) fn parse(text: &str) -> Result<Report, ParseError> {
    let doc: In = serde_json::from_str(text)?;
    if doc.schema_version != SCHEMA_VERSION {
        return Err(ParseError::Version(doc.schema_version));
    }
    let instant = |field: &'static str, value: &str| {
        value
            .parse::<jiff::Timestamp>()
            .map_err(|_| ParseError::Instant {
                field,
                value: value.to_owned(),
            })
    };
    let phases = |list: Vec<InPhase>| list.into_iter().map(InPhase::into_phase).collect();
    let mut faults = Vec::with_capacity(doc.faults.len());
    for f in doc.faults {
        faults.push(FaultRecord {
            injected_at: f
                .injected_at
                .as_deref()
                .map(|t| instant("injected_at", t))
                .transpose()?,
            reverted_at: f
                .reverted_at
                .as_deref()
                .map(|t| instant("reverted_at", t))
                .transpose()?,
            name: f.name,
            kind: f.kind,
            agent: f.agent,
            targets: f.target,
            status: f.status,
            detail: f.detail,
            actions: f.actions,
        });
    }
    Ok(Report {
        run_id: doc.run_id,
        title: doc.experiment.title,
        file: doc.experiment.file,
        sha256: doc.experiment.sha256,
        seed: doc.seed,
        started_at: instant("started_at", &doc.started_at)?,
        ended_at: instant("ended_at", &doc.ended_at)?,
        dry_run: doc.dry_run,
        verdict: doc.verdict,
        reason: doc.reason,
        before: phases(doc.phases.before),
        during: phases(doc.phases.during),
        after: phases(doc.phases.after),
        faults,
        time_to_recover: doc.time_to_recover_ms.map(from_millis),
        recovery_within: std::time::Duration::from_millis(doc.recovery_within_ms),
        aborted_by: doc.aborted_by,
        time_to_abort: doc.time_to_abort_ms.map(from_millis),
        recovered_from_journal: doc.recovered_from_journal,
        budget: doc.budget.map(|b| Budget {
            prometheus: b.prometheus,
            good: b.good,
            total: b.total,
            good_ratio: b.good_ratio,
            target: b.target,
            allowed_error: b.allowed_error,
            consumed: b.consumed,
            remaining: b.remaining,
            min_remaining: b.min_remaining,
        }),
        samples: doc.samples,
        warnings: doc.warnings,
        // Only a run whose input was invalid exits 2: every verdict has another code.
        input_invalid: doc.exit_code == super::EXIT_INVALID,
    })
}

/// The duration `millis` wrote: whole microseconds.
fn from_millis(ms: f64) -> std::time::Duration {
    std::time::Duration::from_micros((ms * 1000.0).round().max(0.0) as u64)
}

// The shape `render` writes, field for field; unknown fields are errors, so a report this
// faultline cannot fully show is refused instead of shown without what it does not know.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In {
    schema_version: u32,
    run_id: String,
    experiment: InExperiment,
    seed: u64,
    started_at: String,
    ended_at: String,
    dry_run: bool,
    verdict: super::Verdict,
    /// Derived from the verdict and the phases like `render` does, except for the exit code of
    /// an invalid input, which no verdict has.
    exit_code: u8,
    reason: String,
    phases: InPhases,
    faults: Vec<InFault>,
    time_to_recover_ms: Option<f64>,
    recovery_within_ms: u64,
    aborted_by: Option<String>,
    time_to_abort_ms: Option<f64>,
    recovered_from_journal: Vec<String>,
    budget: Option<InBudget>,
    samples: Vec<SampleRecord>,
    /// Absent from reports written before reports carried warnings.
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InExperiment {
    title: String,
    file: String,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InPhases {
    before: Vec<InPhase>,
    during: Vec<InPhase>,
    after: Vec<InPhase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InPhase {
    probe: String,
    signal: Option<crate::model::GoldenSignal>,
    samples: usize,
    successes: usize,
    #[expect(dead_code, reason = "derived from samples and successes")]
    success_ratio: Option<f64>,
    /// Absent from reports written before the HTML report drew it.
    #[serde(default)]
    slo_p99_ms: Option<f64>,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    slo_met: Option<bool>,
    values: Option<InValues>,
    /// Absent from reports written before probes split their latency.
    #[serde(default)]
    connect: Option<InSplit>,
    #[serde(default)]
    first_byte: Option<InSplit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InSplit {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
}

impl InSplit {
    fn into_split(self) -> crate::sli::Split {
        crate::sli::Split {
            count: self.samples,
            p50: from_millis(self.p50_ms),
            p99: from_millis(self.p99_ms),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InValues {
    count: usize,
    min: Option<f64>,
    mean: Option<f64>,
    max: Option<f64>,
}

impl InPhase {
    fn into_phase(self) -> ProbePhase {
        let number = |v: Option<f64>| v.unwrap_or(f64::NAN);
        ProbePhase {
            probe: self.probe,
            signal: self.signal,
            stats: crate::sli::Stats {
                samples: self.samples,
                successes: self.successes,
                p50: self.p50_ms.map(from_millis),
                p95: self.p95_ms.map(from_millis),
                p99: self.p99_ms.map(from_millis),
                max: self.max_ms.map(from_millis),
                values: self.values.map(|v| crate::sli::ValueStats {
                    count: v.count,
                    min: number(v.min),
                    mean: number(v.mean),
                    max: number(v.max),
                }),
                top_cause: None,
                connect: self.connect.map(InSplit::into_split),
                first_byte: self.first_byte.map(InSplit::into_split),
            },
            slo_met: self.slo_met,
            p99_limit: self.slo_p99_ms.map(from_millis),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InFault {
    name: String,
    kind: String,
    agent: String,
    target: Vec<String>,
    injected_at: Option<String>,
    reverted_at: Option<String>,
    status: super::FaultState,
    detail: String,
    #[serde(default)]
    actions: Vec<crate::protocol::ActionOutput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InBudget {
    prometheus: String,
    good: f64,
    total: f64,
    good_ratio: f64,
    target: f64,
    allowed_error: f64,
    consumed: f64,
    remaining: f64,
    min_remaining: f64,
    #[expect(dead_code, reason = "derived from remaining and min_remaining")]
    enough: bool,
}
