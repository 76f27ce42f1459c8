//! Owns the TOML shape of an experiment file exactly as users write it.
//!
//! Every table denies unknown keys, and there is no `untagged` or `flatten`, so the TOML parser can
//! point at the exact line and column of any mistake. Cross-field rules live in `experiment.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::fault::{BitRate, Cidr, Direction, Distribution};
use crate::model::GoldenSignal;
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
    pub(crate) slo_budget: Option<Spanned<SloBudget>>,
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
    pub(crate) url: String,
    pub(crate) status: Option<Vec<u16>>,
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
    // network-loss, partition, bandwidth, and latency with backend = "netem"
    pub(crate) backend: Option<String>,
    #[serde(rename = "match")]
    pub(crate) matching: Option<NetMatch>,
    pub(crate) peers: Option<Vec<Cidr>>,
    pub(crate) ports: Option<Vec<u16>>,
    pub(crate) device: Option<String>,
    pub(crate) rate: Option<BitRate>,
    pub(crate) delay: Option<Dur>,
    pub(crate) jitter: Option<Dur>,
    pub(crate) correlation: Option<Percent>,
    pub(crate) distribution: Option<Distribution>,
    pub(crate) loss: Option<Percent>,
    pub(crate) duplicate: Option<Percent>,
    pub(crate) corrupt: Option<Percent>,
    pub(crate) reorder: Option<Percent>,
    // latency with backend = "proxy" (the default); also `delay`, `jitter`, `rate`, `corrupt` above
    pub(crate) listen: Option<String>,
    pub(crate) upstream: Option<String>,
    /// A persistent proxy of the agent, instead of `listen` and `upstream`.
    pub(crate) proxy: Option<String>,
    pub(crate) direction: Option<String>,
    pub(crate) timeout: Option<Dur>,
    pub(crate) slow_close: Option<Dur>,
    /// A size (`64KiB`) or a duration (`2s`).
    pub(crate) reset_after: Option<String>,
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
            ("backend", self.backend.is_some()),
            ("match", self.matching.is_some()),
            ("peers", self.peers.is_some()),
            ("ports", self.ports.is_some()),
            ("device", self.device.is_some()),
            ("rate", self.rate.is_some()),
            ("delay", self.delay.is_some()),
            ("jitter", self.jitter.is_some()),
            ("correlation", self.correlation.is_some()),
            ("distribution", self.distribution.is_some()),
            ("loss", self.loss.is_some()),
            ("duplicate", self.duplicate.is_some()),
            ("corrupt", self.corrupt.is_some()),
            ("reorder", self.reorder.is_some()),
            ("listen", self.listen.is_some()),
            ("upstream", self.upstream.is_some()),
            ("proxy", self.proxy.is_some()),
            ("direction", self.direction.is_some()),
            ("timeout", self.timeout.is_some()),
            ("slow_close", self.slow_close.is_some()),
            ("reset_after", self.reset_after.is_some()),
            ("duration", self.duration.is_some()),
        ];
        present
            .into_iter()
            .filter(|(_, given)| *given)
            .map(|(key, _)| key)
            .collect()
    }
}

/// `match = { dst, src, port, direction }` of the network faults; which keys apply is checked per kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetMatch {
    pub(crate) dst: Option<Cidr>,
    pub(crate) src: Option<Cidr>,
    pub(crate) port: Option<u16>,
    pub(crate) direction: Option<Direction>,
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
