//! Owns the JSON report (schema_version 1): the machine-readable journal of a run.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
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
        "values": p.stats.values.map(|v| json!({ "count": v.count, "min": v.min, "mean": v.mean, "max": v.max })),
    })
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
    })
    .unwrap_or(Value::Null)
}
