//! Owns the validated experiment: the only form of an experiment the rest of the program sees.
//!
//! Everything here was checked by `experiment.rs`; code that holds a [`Experiment`] never re-validates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use crate::fault::FaultSpec;
use crate::units::{LatencyBound, SuccessBound};

/// The name of the target group that means "the agent embedded in this process".
pub(crate) const LOCAL_GROUP: &str = "local";

#[derive(Debug)]
pub(crate) struct Experiment {
    pub(crate) title: String,
    pub(crate) description: Option<String>,
    pub(crate) file: PathBuf,
    pub(crate) sha256: String,
    pub(crate) setup: Vec<Fixture>,
    /// `[[notify]]`: webhooks told of the run's verdict after it ends.
    pub(crate) notify: Vec<crate::notify::Notify>,
    pub(crate) targets: BTreeMap<String, TargetGroup>,
    pub(crate) steady_state: SteadyState,
    pub(crate) faults: Vec<FaultStep>,
    pub(crate) aborts: Vec<AbortRule>,
    pub(crate) recovery_within: Duration,
    /// The error-budget gate, checked before anything else in a run.
    pub(crate) budget: Option<BudgetSpec>,
    /// `[gate]`: the regression gate against earlier runs of the same title, in `Metric::ALL`
    /// order; empty when the experiment has none.
    pub(crate) gate: Vec<crate::gate::GateRule>,
    /// The vars and secrets it was loaded with, one `name = value (where from)` line each, for
    /// `plan` (secrets read `***`).
    pub(crate) vars: Vec<String>,
}

impl Experiment {
    /// When the method ends if every fault runs its course: the latest `at + duration`.
    pub(crate) fn method_length(&self) -> Duration {
        self.faults
            .iter()
            .map(|f| f.at + f.duration.unwrap_or_default())
            .max()
            .unwrap_or_default()
    }
}

/// A process the run starts before anything else and stops after everything else.
#[derive(Debug)]
pub(crate) struct Fixture {
    pub(crate) name: String,
    pub(crate) argv: Vec<String>,
    pub(crate) ready: Option<ReadyCheck>,
}

#[derive(Debug)]
pub(crate) struct ReadyCheck {
    pub(crate) kind: ReadyKind,
    pub(crate) within: Duration,
}

#[derive(Debug)]
pub(crate) enum ReadyKind {
    Tcp(String),
    Http(String),
}

#[derive(Debug)]
pub(crate) struct TargetGroup {
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) pick: Option<Pick>,
    /// A cap on how many agents the group acts on, applied after `pick`.
    pub(crate) max: Option<u32>,
}

/// How many of the matching targets to act on; rounding is up, and never below one.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Pick {
    Count(u32),
    /// A fraction in `0.0..=1.0`.
    Percent(f64),
}

impl Pick {
    /// How many of `available` to take: `count` capped at what exists, `percent` rounded up, at least one.
    pub(crate) fn how_many(self, available: usize) -> usize {
        let wanted = match self {
            Pick::Count(n) => n as usize,
            Pick::Percent(p) => (available as f64 * p).ceil() as usize,
        };
        wanted.clamp(1, available.max(1)).min(available)
    }
}

/// Shuffles `items` into an order fixed by `seed` for good, so `--seed` reproduces a run's choice
/// of agents and of processes across builds. `StdRng` and `SliceRandom::shuffle` are documented as
/// free to change between rand releases; ChaCha8 is a named algorithm whose output is specified,
/// seeded here from the seed's bytes directly (not `seed_from_u64`, whose expansion is rand's
/// choice), and the Fisher–Yates walk below is ours.
pub(crate) fn seeded_shuffle<T>(items: &mut [T], seed: u64) {
    use rand::{RngCore, SeedableRng};
    let mut key = [0_u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(key);
    for i in (1..items.len()).rev() {
        // The modulo bias is below 2^-50 for any slice that fits in memory: irrelevant to a pick.
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[derive(Debug)]
pub(crate) struct SteadyState {
    pub(crate) window: Duration,
    pub(crate) probes: Vec<ProbeSpec>,
}

#[derive(Debug)]
pub(crate) struct ProbeSpec {
    pub(crate) name: String,
    pub(crate) check: Check,
    pub(crate) every: Duration,
    pub(crate) timeout: Duration,
    pub(crate) slo: Slo,
    /// An optional SLO for the `during` phase, for hypotheses like "users don't notice".
    pub(crate) slo_during: Option<Slo>,
    /// Which of the four golden signals this probe stands for, if any.
    pub(crate) signal: Option<GoldenSignal>,
}

#[derive(Debug)]
pub(crate) enum Check {
    /// Boxed: it is much larger than the other checks.
    Http(Box<HttpSpec>),
    /// `grpc.health.v1.Health/Check` against one service.
    Grpc(Box<GrpcSpec>),
    Tcp {
        addr: String,
    },
    /// `value`: read standard output as a number for the report.
    Command {
        argv: Vec<String>,
        expect_exit: i32,
        stdout: Option<Regex>,
        value: bool,
    },
    /// An instant PromQL query whose single value must meet `threshold`.
    Prometheus {
        url: String,
        query: String,
        threshold: Threshold,
    },
}

/// An `http` probe: the request it sends and what the response must show.
#[derive(Debug)]
pub(crate) struct HttpSpec {
    pub(crate) url: String,
    /// One of [`HTTP_METHODS`].
    pub(crate) method: &'static str,
    /// Names and values already checked against the HTTP rules, in the file's order.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Option<RequestBody>,
    pub(crate) status: StatusSet,
    /// A regex the (first [`MAX_CHECKED_BODY`] bytes of the) response body must match.
    pub(crate) body_matches: Option<Regex>,
    pub(crate) json: Option<JsonCheck>,
    pub(crate) tls: TlsSpec,
    /// How many redirects to follow; 0 (the default) takes a 3xx as the response.
    pub(crate) redirects: u8,
}

/// The methods an `http` probe may send.
pub(crate) const HTTP_METHODS: [&str; 7] =
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// At most this much of a response body is read for `body_matches` and `json`.
pub(crate) const MAX_CHECKED_BODY: usize = 1024 * 1024;

#[derive(Debug)]
pub(crate) enum RequestBody {
    Text(String),
    /// Sent with `content-type: application/json` unless the headers name another.
    Json(serde_json::Value),
}

/// The statuses a response may have: inclusive ranges; empty means any 2xx.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct StatusSet(pub(crate) Vec<(u16, u16)>);

impl StatusSet {
    pub(crate) fn allows(&self, code: u16) -> bool {
        if self.0.is_empty() {
            return (200..300).contains(&code);
        }
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl std::fmt::Display for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("2xx");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| match (lo, hi) {
                _ if lo == hi => lo.to_string(),
                _ if lo % 100 == 0 && hi == lo + 99 => format!("{}xx", lo / 100),
                _ => format!("{lo}-{hi}"),
            })
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// `json = { pointer, equals }`: the value at an RFC 6901 pointer in the JSON response body must
/// equal `equals`, or merely exist when `equals` is not given.
#[derive(Debug)]
pub(crate) struct JsonCheck {
    pub(crate) pointer: String,
    pub(crate) equals: Option<serde_json::Value>,
}

/// The TLS settings of a probe; paths were readable PEM when the experiment was validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TlsSpec {
    /// Trust only this CA (PEM) instead of the built-in roots.
    pub(crate) ca: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), for servers that ask for one.
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate. Reported loudly at validate, plan and in the report.
    pub(crate) insecure: bool,
}

impl TlsSpec {
    pub(crate) fn is_default(&self) -> bool {
        *self == TlsSpec::default()
    }
}

/// A `grpc` probe: `grpc.health.v1.Health/Check` for `service` at `address` (`host:port`).
#[derive(Debug)]
pub(crate) struct GrpcSpec {
    pub(crate) address: String,
    /// The service name asked about; empty asks about the server as a whole.
    pub(crate) service: String,
    /// `None`: plaintext HTTP/2.
    pub(crate) tls: Option<TlsSpec>,
}

/// What a Prometheus probe's value must be. Comparisons are strict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Threshold {
    Below(f64),
    Above(f64),
    Equals(f64),
}

/// The four golden signals of monitoring (Google SRE book, ch. 6); a probe may stand for one.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GoldenSignal {
    Latency,
    Traffic,
    Errors,
    Saturation,
}

impl GoldenSignal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GoldenSignal::Latency => "latency",
            GoldenSignal::Traffic => "traffic",
            GoldenSignal::Errors => "errors",
            GoldenSignal::Saturation => "saturation",
        }
    }
}

/// `[slo_budget]`: refuse to run while the service's error budget is (nearly) spent.
#[derive(Debug)]
pub(crate) struct BudgetSpec {
    pub(crate) prometheus: String,
    /// The SLO target as a fraction, strictly between 0 and 1 (`99.9%` = 0.999).
    pub(crate) target: f64,
    pub(crate) good: String,
    pub(crate) total: String,
    /// The share of the budget that must be left for the run to go ahead.
    pub(crate) min_remaining: f64,
}

#[derive(Clone, Debug)]
pub(crate) struct Slo {
    pub(crate) success: SuccessBound,
    pub(crate) p50: Option<LatencyBound>,
    pub(crate) p95: Option<LatencyBound>,
    pub(crate) p99: Option<LatencyBound>,
}

#[derive(Debug)]
pub(crate) struct FaultStep {
    pub(crate) name: String,
    pub(crate) on: String,
    pub(crate) at: Duration,
    /// `None` for instant faults (a kill); persistent faults always have one.
    pub(crate) duration: Option<Duration>,
    pub(crate) spec: FaultSpec,
}

#[derive(Debug)]
pub(crate) struct AbortRule {
    /// A readable name for reports: `front page success below 50% over 3s`.
    pub(crate) name: String,
    pub(crate) probe: usize,
    pub(crate) condition: AbortCondition,
    pub(crate) over: Duration,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum AbortCondition {
    SuccessBelow(f64),
    P99Above(Duration),
}

#[cfg(test)]
mod tests {
    use super::{Pick, seeded_shuffle};

    #[test]
    fn a_seed_shuffles_into_the_same_order_in_every_build() {
        let mut items: Vec<u32> = (0..10).collect();
        seeded_shuffle(&mut items, 42);
        assert_eq!(items, EXPECTED_42);
        let mut again: Vec<u32> = (0..10).collect();
        seeded_shuffle(&mut again, 42);
        assert_eq!(again, items);
        let mut other: Vec<u32> = (0..10).collect();
        seeded_shuffle(&mut other, 43);
        assert_ne!(other, items);
    }

    /// Recorded once from ChaCha8; a change here changes every seeded run ever reported.
    const EXPECTED_42: [u32; 10] = [2, 1, 4, 3, 7, 0, 5, 8, 6, 9];

    #[test]
    fn picking_rounds_up_and_never_selects_zero_of_something() {
        assert_eq!(Pick::Percent(0.2).how_many(2), 1);
        assert_eq!(Pick::Percent(0.5).how_many(3), 2);
        assert_eq!(Pick::Percent(1.0).how_many(3), 3);
        assert_eq!(Pick::Count(5).how_many(3), 3);
        assert_eq!(Pick::Count(2).how_many(3), 2);
        assert_eq!(Pick::Count(2).how_many(0), 0);
    }
}
