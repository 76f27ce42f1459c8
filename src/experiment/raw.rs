//! Owns the TOML shape of an experiment file exactly as users write it.
//!
//! Every table denies unknown keys, and there is no `untagged` or `flatten`, so the TOML parser can
//! point at the exact line and column of any mistake. Cross-field rules live in `experiment.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::model::GoldenSignal;
use crate::units::{Dur, LatencyBound, Percent, SuccessBound};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Experiment {
    pub(crate) title: String,
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) setup: Vec<Spanned<Setup>>,
    /// `[[notify]]`: its shape and checks are `notify.rs`'s, shared with game days.
    #[serde(default)]
    pub(crate) notify: Vec<crate::notify::RawNotify>,
    #[serde(default)]
    pub(crate) targets: BTreeMap<String, Spanned<Target>>,
    pub(crate) steady_state: SteadyState,
    // `[[fault]]` tables are taken out before this is deserialised and read per kind by
    // `fault::FaultTable`.
    #[serde(default)]
    pub(crate) abort: Vec<Spanned<Abort>>,
    pub(crate) recovery: Recovery,
    pub(crate) slo_budget: Option<Spanned<SloBudget>>,
    pub(crate) gate: Option<Gate>,
    /// `[vars]` and `[secrets]` are taken out and applied before this is deserialised
    /// (`experiment/vars.rs`); named here so a typo of them gets a "did you mean".
    #[expect(
        dead_code,
        reason = "always taken out before; listed for the expected keys"
    )]
    pub(crate) vars: Option<serde::de::IgnoredAny>,
    #[expect(
        dead_code,
        reason = "always taken out before; listed for the expected keys"
    )]
    pub(crate) secrets: Option<serde::de::IgnoredAny>,
}

/// `[gate]`: one rule per measure (`gate::Metric`); a bad rule is reported at its value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Gate {
    pub(crate) time_to_recover: Option<crate::gate::Rule>,
    pub(crate) p99_during: Option<crate::gate::Rule>,
    pub(crate) p99_after: Option<crate::gate::Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Setup {
    pub(crate) name: String,
    pub(crate) run: Vec<String>,
    pub(crate) ready: Option<Ready>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ready {
    pub(crate) tcp: Option<String>,
    pub(crate) http: Option<String>,
    pub(crate) within: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Target {
    #[serde(default)]
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) count: Option<u32>,
    pub(crate) percent: Option<Percent>,
    /// At most this many agents, whatever `percent` says.
    pub(crate) max: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SteadyState {
    pub(crate) window: Dur,
    pub(crate) probe: Vec<Spanned<Probe>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Probe {
    pub(crate) name: String,
    pub(crate) http: Option<HttpProbe>,
    pub(crate) grpc: Option<GrpcProbe>,
    pub(crate) tcp: Option<String>,
    pub(crate) command: Option<Vec<String>>,
    pub(crate) prometheus: Option<PrometheusProbe>,
    /// For `command` probes: the exit code that counts as success.
    pub(crate) expect_exit: Option<i32>,
    /// For `command` probes: a regex the standard output must match.
    pub(crate) expect_stdout: Option<String>,
    /// For `command` probes: read standard output as a number (for saturation and the report).
    pub(crate) value: Option<bool>,
    /// The golden signal this probe stands for.
    pub(crate) signal: Option<GoldenSignal>,
    pub(crate) every: Option<Dur>,
    pub(crate) timeout: Option<Dur>,
    pub(crate) slo: Option<Slo>,
    pub(crate) slo_during: Option<Slo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpProbe {
    pub(crate) url: Spanned<String>,
    pub(crate) method: Option<Spanned<String>>,
    pub(crate) headers: Option<BTreeMap<String, Spanned<String>>>,
    /// The request body as text.
    pub(crate) body: Option<Spanned<String>>,
    /// The request body as JSON (any TOML value), sent with `content-type: application/json`.
    pub(crate) json_body: Option<Spanned<toml::Value>>,
    pub(crate) status: Option<super::probes::StatusKey>,
    pub(crate) body_matches: Option<Spanned<String>>,
    /// The response check `{ pointer, equals }`.
    pub(crate) json: Option<Spanned<JsonCheck>>,
    pub(crate) redirects: Option<super::probes::Redirects>,
    pub(crate) ca: Option<Spanned<String>>,
    pub(crate) client_cert: Option<Spanned<String>>,
    pub(crate) client_key: Option<Spanned<String>>,
    pub(crate) insecure: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JsonCheck {
    pub(crate) pointer: Spanned<String>,
    pub(crate) equals: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrpcProbe {
    pub(crate) address: Spanned<String>,
    #[serde(default)]
    pub(crate) service: String,
    /// TLS with the built-in roots; `ca`, `client_cert` and `insecure` imply it.
    pub(crate) tls: Option<bool>,
    pub(crate) ca: Option<Spanned<String>>,
    pub(crate) client_cert: Option<Spanned<String>>,
    pub(crate) client_key: Option<Spanned<String>>,
    pub(crate) insecure: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrometheusProbe {
    pub(crate) url: String,
    pub(crate) query: String,
    pub(crate) below: Option<f64>,
    pub(crate) above: Option<f64>,
    pub(crate) equals: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SloBudget {
    pub(crate) prometheus: String,
    pub(crate) target: Percent,
    pub(crate) good: String,
    pub(crate) total: String,
    pub(crate) min_remaining: Option<Percent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Slo {
    pub(crate) success: Option<SuccessBound>,
    pub(crate) p50: Option<LatencyBound>,
    pub(crate) p95: Option<LatencyBound>,
    pub(crate) p99: Option<LatencyBound>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Abort {
    pub(crate) probe: Spanned<String>,
    pub(crate) when: AbortWhen,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbortWhen {
    pub(crate) success_below: Option<Percent>,
    pub(crate) p99_above: Option<Dur>,
    pub(crate) over: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Recovery {
    pub(crate) within: Dur,
}
