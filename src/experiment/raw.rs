//! Owns the TOML shape of an experiment file exactly as users write it.
//!
//! Every table denies unknown keys, and there is no `untagged` or `flatten`, so the TOML parser can
//! point at the exact line and column of any mistake. Cross-field rules live in `experiment.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::units::{ByteSize, Dur, LatencyBound, Percent, SuccessBound};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Experiment {
    pub(crate) title: String,
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) setup: Vec<Spanned<Setup>>,
    #[serde(default)]
    pub(crate) targets: BTreeMap<String, Spanned<Target>>,
    pub(crate) steady_state: SteadyState,
    #[serde(default)]
    pub(crate) fault: Vec<Spanned<Fault>>,
    #[serde(default)]
    pub(crate) abort: Vec<Spanned<Abort>>,
    pub(crate) recovery: Recovery,
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
    pub(crate) tcp: Option<String>,
    pub(crate) command: Option<Vec<String>>,
    /// For `command` probes: the exit code that counts as success.
    pub(crate) expect_exit: Option<i32>,
    /// For `command` probes: a regex the standard output must match.
    pub(crate) expect_stdout: Option<String>,
    pub(crate) every: Option<Dur>,
    pub(crate) timeout: Option<Dur>,
    pub(crate) slo: Option<Slo>,
    pub(crate) slo_during: Option<Slo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpProbe {
    pub(crate) url: String,
    pub(crate) status: Option<Vec<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Slo {
    pub(crate) success: Option<SuccessBound>,
    pub(crate) p50: Option<LatencyBound>,
    pub(crate) p95: Option<LatencyBound>,
    pub(crate) p99: Option<LatencyBound>,
}

/// One table for every fault kind: which keys apply is checked per kind in `experiment.rs`, where
/// the error can say "`fill_to` does not apply to `process-kill`" rather than a generic serde message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fault {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) on: Option<Spanned<String>>,
    pub(crate) at: Option<Dur>,
    pub(crate) duration: Option<Dur>,
    // process-kill, process-pause
    pub(crate) select: Option<Select>,
    pub(crate) count: Option<u32>,
    pub(crate) percent: Option<Percent>,
    pub(crate) signal: Option<String>,
    // disk-fill
    pub(crate) path: Option<PathBuf>,
    pub(crate) fill_to: Option<Percent>,
    pub(crate) size: Option<ByteSize>,
    pub(crate) leave_free: Option<ByteSize>,
    pub(crate) guard: Option<Percent>,
    // cpu-stress, memory-stress (memory-stress also takes `size`)
    pub(crate) workers: Option<u32>,
    pub(crate) load: Option<Percent>,
}

impl Fault {
    /// The keys that were given beyond the ones every fault takes, for per-kind checks.
    pub(crate) fn given_keys(&self) -> Vec<&'static str> {
        let present = [
            ("select", self.select.is_some()),
            ("count", self.count.is_some()),
            ("percent", self.percent.is_some()),
            ("signal", self.signal.is_some()),
            ("path", self.path.is_some()),
            ("fill_to", self.fill_to.is_some()),
            ("size", self.size.is_some()),
            ("leave_free", self.leave_free.is_some()),
            ("guard", self.guard.is_some()),
            ("workers", self.workers.is_some()),
            ("load", self.load.is_some()),
            ("duration", self.duration.is_some()),
        ];
        present
            .into_iter()
            .filter(|(_, given)| *given)
            .map(|(key, _)| key)
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Select {
    pub(crate) pid: Option<i32>,
    pub(crate) pidfile: Option<PathBuf>,
    pub(crate) name: Option<String>,
    pub(crate) cmdline: Option<String>,
    pub(crate) port: Option<u16>,
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
