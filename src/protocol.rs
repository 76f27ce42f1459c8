//! Owns the wire types between the coordinator and an agent: what a fault request, its answer and
//! an agent's view of its faults look like. The embedded agent exchanges the same types in-process.
//!
//! Architecture invariant: the coordinator only talks to agents in these types, so it cannot tell
//! whether an agent is embedded or remote.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::fault::check::{self, FieldError, Host, MAX_LEASE};
use crate::fault::{FaultSpec, RunResource};

/// Apply a fault. The id (chosen by the coordinator) makes the request idempotent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplyRequest {
    pub(crate) run_id: String,
    pub(crate) spec: FaultSpec,
    /// How long the fault is held; `None` only for instant faults.
    pub(crate) duration_ms: Option<u64>,
    /// The agent reverts the fault on its own if the lease is not renewed within this time.
    pub(crate) lease_ms: u64,
    /// Seeds the agent's random choices (which processes of the matches), for reproducible runs.
    pub(crate) seed: u64,
}

/// Open a run resource (a proxy) for the whole run. Answered with [`Applied`]; closed by the same
/// revert as a fault, and held by the same lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenRequest {
    pub(crate) run_id: String,
    pub(crate) resource: RunResource,
    pub(crate) lease_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub(crate) id: String,
    pub(crate) targets: Vec<String>,
    pub(crate) detail: String,
    pub(crate) injected_at: Timestamp,
    /// True for instant faults: nothing is held, nothing will be reverted.
    pub(crate) instant: bool,
    /// What the action kinds (`command`, `http`) ran to inject and verify. Absent from older
    /// agents and empty for other kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) actions: Vec<ActionOutput>,
}

/// One program (or HTTP request) an action kind ran, as reports show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ActionOutput {
    /// `run`, `verify` or `revert` (`command`); `request` or `revert` (`http`).
    pub(crate) step: String,
    /// The argument vector on one line, or `METHOD URL`.
    pub(crate) command: String,
    /// Exit 0, or the expected HTTP status.
    pub(crate) ok: bool,
    #[serde(default)]
    pub(crate) exit_code: Option<i32>,
    /// The HTTP status, for a request.
    #[serde(default)]
    pub(crate) status: Option<u16>,
    /// One phrase: `exit 0`, `timed out after 30s; ...`, `status 503`.
    pub(crate) outcome: String,
    /// At most 4 KiB, sanitised (a response body, for a request).
    #[serde(default)]
    pub(crate) stdout: String,
    #[serde(default)]
    pub(crate) stderr: String,
    pub(crate) duration_ms: u64,
}

/// Why a fault was reverted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RevertCause {
    /// The coordinator asked.
    Requested,
    /// The fault's duration ended on the agent's clock.
    DurationEnded,
    /// The coordinator stopped renewing the lease: the dead-man switch.
    LeaseExpired,
    /// The agent was shutting down.
    Shutdown,
    /// Found in the journal after a crash.
    Recovered,
    /// `faultline halt`: the kill switch.
    Halted,
}

impl RevertCause {
    /// Why the agent reverted on its own, for reports; `None` when the coordinator asked.
    pub(crate) fn on_its_own(self) -> Option<&'static str> {
        match self {
            RevertCause::Requested => None,
            RevertCause::DurationEnded => Some("its duration ended on the agent's clock"),
            RevertCause::LeaseExpired => Some("its lease lapsed (the dead-man switch)"),
            RevertCause::Shutdown => Some("the agent shut down"),
            RevertCause::Recovered => Some("the agent recovered it from its journal"),
            RevertCause::Halted => Some("`faultline halt`"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Reverted {
    pub(crate) id: String,
    pub(crate) detail: String,
    pub(crate) at: Timestamp,
    pub(crate) cause: RevertCause,
    /// What an action kind's revert ran (every attempt). Absent from older agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) actions: Vec<ActionOutput>,
}

/// One fault as an agent lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FaultStatus {
    pub(crate) id: String,
    pub(crate) run_id: String,
    pub(crate) kind: String,
    pub(crate) targets: Vec<String>,
    pub(crate) injected_at: Timestamp,
}

/// Renew the leases of these faults (one call per agent covers all of a run's faults there).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewRequest {
    pub(crate) ids: Vec<String>,
}

/// What renewing found: ids the agent no longer holds (reverted, or never applied) are listed, so
/// the coordinator learns that a fault ended without it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[expect(
    clippy::struct_field_names,
    reason = "`renewed` is the wire name agents already send"
)]
pub(crate) struct Renewed {
    pub(crate) renewed: Vec<String>,
    pub(crate) unknown: Vec<String>,
    /// Faults among the asked ids that the agent ended on its own (lease lapsed, halt, its
    /// duration), with when and why. Absent from older agents, hence the default.
    #[serde(default)]
    pub(crate) ended: Vec<Reverted>,
}

/// The version of these wire types, `MAJOR.MINOR`. MINOR grows with additive changes (a new
/// optional field) that both sides can ignore; MAJOR with anything else, and a coordinator refuses
/// an agent whose MAJOR differs from its own.
pub(crate) const PROTOCOL_VERSION: &str = "1.0";

/// An agent's answer to `GET /v1/health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Health {
    pub(crate) ok: bool,
    pub(crate) halted: bool,
    pub(crate) active: usize,
    /// The agent's build (`CARGO_PKG_VERSION`), for people.
    pub(crate) version: String,
    /// The agent's [`PROTOCOL_VERSION`], for the coordinator's compatibility check. Agents built
    /// before it existed do not send it.
    #[serde(default)]
    pub(crate) protocol: Option<String>,
}

/// What `halt` (or a bulk revert) undid on one agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RevertedAll {
    pub(crate) reverted: Vec<Reverted>,
    pub(crate) failed: Vec<String>,
}

/// An error as an agent sends it: `kind` maps back onto the coordinator's error type.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) kind: String,
    pub(crate) error: String,
}

/// Checks an apply request as it arrives at an agent: the same bounds `validate` applies to the
/// spec (same words), the wire's own durations, then what depends on this host. The one entry
/// point an agent calls before acting on a request: a request is parsed and validated on arrival
/// like an experiment file, never trusted because it deserialised.
pub(crate) fn check_apply(req: &ApplyRequest) -> Result<(), FieldError> {
    check_apply_on(req, &Host::this())
}

pub(crate) fn check_apply_on(req: &ApplyRequest, host: &Host) -> Result<(), FieldError> {
    run_id(&req.run_id)?;
    req.spec.check()?;
    if let Some(ms) = req.duration_ms {
        check::hold("duration_ms", Duration::from_millis(ms))?;
    }
    lease(req.lease_ms)?;
    req.spec.check_host(host)
}

/// Checks an open request as it arrives at an agent, like [`check_apply`].
pub(crate) fn check_open(req: &OpenRequest) -> Result<(), FieldError> {
    run_id(&req.run_id)?;
    match &req.resource {
        RunResource::Proxy {
            listen, upstream, ..
        } => {
            crate::proxy::check_addresses(*listen, upstream)?;
        }
    }
    lease(req.lease_ms)
}

/// A run id: it groups faults for `faultline revert --run` and the journal, so an empty or odd one
/// would make a fault that no run can name. The same rules as a fault id.
fn run_id(id: &str) -> Result<(), FieldError> {
    if plain_token(id) {
        return Ok(());
    }
    Err(FieldError::new(
        "run_id",
        format!("must be 1 to 128 of [A-Za-z0-9._-], not starting with `.` or `-` (got `{id}`)"),
    ))
}

/// 1 to 128 of `[A-Za-z0-9._-]`, not starting with `.` or `-`: safe as a file name, a log line and a worker argument.
fn plain_token(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && !id.starts_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A lease: above zero (or it lapses at once), at most [`MAX_LEASE`].
fn lease(ms: u64) -> Result<(), FieldError> {
    if ms == 0 {
        return Err(FieldError::new(
            "lease_ms",
            "must be above 0: a lease of zero lapses before the fault is injected",
        ));
    }
    if Duration::from_millis(ms) > MAX_LEASE {
        return Err(FieldError::new(
            "lease_ms",
            format!("must be at most {} ms (got {ms})", MAX_LEASE.as_millis()),
        ));
    }
    Ok(())
}

/// Checks a coordinator-chosen fault id: it names a journal file, so it must be a plain token.
pub(crate) fn validate_fault_id(id: &str) -> Result<(), String> {
    if plain_token(id) {
        Ok(())
    } else {
        Err(format!(
            "invalid fault id `{id}`: use 1 to 128 of [A-Za-z0-9._-], not starting with `.` or `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    use crate::experiment::ONE_FAULT_HEAD as HEAD;

    /// A host with room for any worker count the static bounds allow, and no network devices.
    fn roomy_host() -> Host {
        Host {
            cpus: 4096,
            net_class: Path::new("/nonexistent-net-class"),
        }
    }

    fn apply(spec: &serde_json::Value) -> ApplyRequest {
        serde_json::from_value(serde_json::json!({
            "run_id": "r", "spec": spec, "duration_ms": 1000, "lease_ms": 5000, "seed": 1,
        }))
        .unwrap()
    }

    /// The same bad fault, as a user writes it and as a request carries it.
    fn bad_faults() -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        vec![
            (
                "kind = \"cpu-stress\"\nduration = \"1s\"\nworkers = 0\n",
                json!({"kind": "cpu-stress", "workers": 0, "load": 1.0}),
            ),
            (
                "kind = \"cpu-stress\"\nduration = \"1s\"\nworkers = 4294967295\n",
                json!({"kind": "cpu-stress", "workers": 4_294_967_295_u32, "load": 1.0}),
            ),
            (
                "kind = \"memory-stress\"\nduration = \"1s\"\nworkers = 0\nsize = \"1MiB\"\n",
                json!({"kind": "memory-stress", "workers": 0, "size": 1_048_576}),
            ),
            (
                "kind = \"memory-stress\"\nduration = \"1s\"\nsize = \"0\"\n",
                json!({"kind": "memory-stress", "workers": 1, "size": 0}),
            ),
            (
                "kind = \"disk-fill\"\nduration = \"1s\"\npath = \"/tmp\"\nfill_to = \"95%\"\nguard = \"90%\"\n",
                json!({"kind": "disk-fill", "path": "/tmp", "amount": {"fill_to": 0.95}, "guard": 0.9}),
            ),
            (
                "kind = \"disk-fill\"\nduration = \"1s\"\npath = \"/tmp\"\nsize = \"1MiB\"\nguard = \"0%\"\n",
                json!({"kind": "disk-fill", "path": "/tmp", "amount": {"size": 1_048_576}, "guard": 0.0}),
            ),
            (
                "kind = \"network-loss\"\nduration = \"1s\"\npercent = \"0.001%\"\nmatch = { port = 80 }\n",
                json!({"kind": "network-loss", "percent": 0.001 / 100.0, "match": {"port": 80, "direction": "both"}}),
            ),
            (
                "kind = \"network-loss\"\nduration = \"1s\"\npercent = \"0%\"\nmatch = { port = 80 }\n",
                json!({"kind": "network-loss", "percent": 0.0, "match": {"port": 80, "direction": "both"}}),
            ),
            (
                "kind = \"network-loss\"\nduration = \"1s\"\npercent = \"10%\"\nmatch = {}\n",
                json!({"kind": "network-loss", "percent": 0.1, "match": {}}),
            ),
            (
                "kind = \"network-loss\"\nduration = \"1s\"\npercent = \"10%\"\nmatch = { port = 0 }\n",
                json!({"kind": "network-loss", "percent": 0.1, "match": {"port": 0, "direction": "both"}}),
            ),
            (
                "kind = \"partition\"\nduration = \"1s\"\npeers = []\n",
                json!({"kind": "partition", "peers": []}),
            ),
            (
                "kind = \"partition\"\nduration = \"1s\"\npeers = [\"10.0.0.1\"]\nports = [0]\n",
                json!({"kind": "partition", "peers": ["10.0.0.1"], "ports": [0]}),
            ),
            (
                "kind = \"process-kill\"\nselect = { name = \"x\" }\nsignal = \"SIGSTOP\"\n",
                json!({"kind": "process-kill", "select": {"name": "x"}, "pick": null, "signal": "SIGSTOP"}),
            ),
            (
                "kind = \"process-kill\"\nselect = { name = \"x\" }\nsignal = \"TTOU\"\n",
                json!({"kind": "process-kill", "select": {"name": "x"}, "pick": null, "signal": "TTOU"}),
            ),
            (
                "kind = \"process-pause\"\nduration = \"1s\"\nselect = { pid = 1 }\n",
                json!({"kind": "process-pause", "select": {"pid": 1}, "pick": null}),
            ),
            (
                "kind = \"process-pause\"\nduration = \"1s\"\nselect = { cmdline = \"\" }\n",
                json!({"kind": "process-pause", "select": {"cmdline": ""}, "pick": null}),
            ),
            (
                "kind = \"container-kill\"\ncontainer = \"\"\n",
                json!({"kind": "container-kill", "target": {"container": ""}, "signal": "SIGKILL"}),
            ),
            (
                "kind = \"container-kill\"\ncontainer = \"abcd\"\nsignal = \"SIGNOPE\"\n",
                json!({"kind": "container-kill", "target": {"container": "abcd"}, "signal": "SIGNOPE"}),
            ),
            (
                "kind = \"container-pause\"\nduration = \"1s\"\ncgroup = \"system.slice/x\"\n",
                json!({"kind": "container-pause", "target": {"cgroup": "system.slice/x"}}),
            ),
            (
                "kind = \"container-pause\"\nduration = \"1s\"\ncgroup = \"/a/../b\"\n",
                json!({"kind": "container-pause", "target": {"cgroup": "/a/../b"}}),
            ),
            (
                "kind = \"process-kill\"\nselect = { cgroup = \"/\" }\n",
                json!({"kind": "process-kill", "select": {"cgroup": "/"}, "pick": null, "signal": "SIGKILL"}),
            ),
            (
                "kind = \"process-pause\"\nduration = \"1s\"\nselect = { name = \"x\", container = \"ab\" }\n",
                json!({"kind": "process-pause", "select": {"name": "x", "container": "ab"}, "pick": null}),
            ),
            (
                "kind = \"latency\"\nduration = \"1s\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:5432\"\ndelay = \"10ms\"\n",
                json!({"kind": "latency-proxy", "via": {"run": {"listen": "127.0.0.1:0", "upstream": "127.0.0.1:5432"}},
                       "toxics": {"direction": "both", "delay": {"secs": 0, "nanos": 10_000_000}, "jitter": {"secs": 0, "nanos": 0},
                                  "rate": null, "corrupt": 0.0, "timeout": null, "slow_close": null, "reset_after": null}}),
            ),
            (
                "kind = \"command\"\nduration = \"1s\"\nrun = []\nrevert = [\"true\"]\n",
                json!({"kind": "command", "run": [], "revert": ["true"], "timeout_ms": 30000}),
            ),
            (
                "kind = \"command\"\nduration = \"1s\"\nrun = [\"true\"]\nrevert = [\"./undo\"]\n",
                json!({"kind": "command", "run": ["true"], "revert": ["./undo"], "timeout_ms": 30000}),
            ),
            (
                "kind = \"command\"\nduration = \"1s\"\nrun = [\"true\"]\nrevert = [\"true\"]\ntimeout = \"10m\"\n",
                json!({"kind": "command", "run": ["true"], "revert": ["true"], "timeout_ms": 600_000}),
            ),
            (
                "kind = \"http\"\nduration = \"1s\"\nurl = \"ftp://h/x\"\nrevert = { url = \"http://h/\" }\n",
                json!({"kind": "http", "request": {"method": "GET", "url": "ftp://h/x", "timeout_ms": 30000},
                       "revert": {"method": "GET", "url": "http://h/", "timeout_ms": 30000}}),
            ),
            (
                "kind = \"http\"\nduration = \"1s\"\nmethod = \"FETCH\"\nurl = \"http://h/\"\nrevert = { url = \"http://h/\" }\n",
                json!({"kind": "http", "request": {"method": "FETCH", "url": "http://h/", "timeout_ms": 30000},
                       "revert": {"method": "GET", "url": "http://h/", "timeout_ms": 30000}}),
            ),
        ]
    }

    #[test]
    fn validate_and_an_agent_refuse_a_bad_fault_with_the_same_words() {
        for (toml, wire) in bad_faults() {
            let validated = crate::experiment::parse(Path::new("x.toml"), &format!("{HEAD}{toml}"))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            let req = apply(&wire);
            let agent = check_apply_on(&req, &roomy_host()).unwrap_err().to_string();
            assert!(
                validated.ends_with(&format!(": fault `f`: {agent}")),
                "validate and the agent disagree on {toml:?} / {wire}:\nvalidate: {validated}\nagent:    {agent}"
            );
            assert!(
                agent.starts_with('`') || agent.starts_with("refusing"),
                "the agent's answer names the field: {agent}"
            );
        }
    }

    #[test]
    fn requests_out_of_bounds_are_refused_naming_the_field() {
        let ok = serde_json::json!({"kind": "cpu-stress", "workers": 2, "load": 0.5});
        assert_eq!(check_apply_on(&apply(&ok), &roomy_host()), Ok(()));
        let mut req = apply(&ok);
        req.duration_ms = Some(u64::MAX);
        let e = check_apply_on(&req, &roomy_host()).unwrap_err().to_string();
        assert!(e.starts_with("`duration_ms` must be at most 1day"), "{e}");
        let mut req = apply(&ok);
        req.lease_ms = u64::MAX;
        let e = check_apply_on(&req, &roomy_host()).unwrap_err().to_string();
        assert!(
            e.starts_with("`lease_ms` must be at most 3600000 ms"),
            "{e}"
        );
        req.lease_ms = 0;
        let e = check_apply_on(&req, &roomy_host()).unwrap_err().to_string();
        assert!(e.starts_with("`lease_ms` must be above 0"), "{e}");
        let small = Host {
            cpus: 2,
            net_class: Path::new("/sys/class/net"),
        };
        let e = check_apply_on(&apply(&ok), &small);
        assert_eq!(e, Ok(()), "2 workers on 2 CPUs");
        let many = serde_json::json!({"kind": "cpu-stress", "workers": 9, "load": 0.5});
        let e = check_apply_on(&apply(&many), &small)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "`workers` must be at most 8 on this agent (4 per CPU, 2 CPU(s)); got 9"
        );
        let unset = serde_json::json!({"kind": "cpu-stress", "load": 0.5});
        assert_eq!(check_apply_on(&apply(&unset), &small), Ok(()));
        let bw = serde_json::json!({"kind": "bandwidth", "device": "nosuchdev0", "rate": "1mbit"});
        let e = check_apply_on(&apply(&bw), &small).unwrap_err().to_string();
        assert_eq!(
            e,
            "`device` `nosuchdev0` is not a network device of this agent (no /sys/class/net/nosuchdev0)"
        );
        let lo = serde_json::json!({"kind": "bandwidth", "device": "lo", "rate": "1mbit"});
        assert_eq!(check_apply_on(&apply(&lo), &small), Ok(()));
    }

    fn open_req(listen: &str, upstream: &str, run_id: &str) -> OpenRequest {
        OpenRequest {
            run_id: run_id.to_owned(),
            resource: RunResource::Proxy {
                name: format!("listen-{listen}"),
                listen: listen.parse().unwrap(),
                upstream: upstream.to_owned(),
            },
            lease_ms: 5000,
        }
    }

    #[test]
    fn a_proxy_whose_upstream_is_itself_is_refused_under_any_local_name() {
        for (listen, upstream) in [
            ("127.0.0.1:40012", "127.0.0.1:40012"),
            ("0.0.0.0:40012", "127.0.0.1:40012"),
            ("0.0.0.0:40012", "10.1.2.3:40012"),
            ("127.0.0.1:40012", "localhost:40012"),
            ("127.0.0.1:40012", "LOCALHOST:40012"),
            ("127.0.0.1:40012", "0.0.0.0:40012"),
            ("127.0.0.1:40012", "127.0.0.2:40012"),
            ("[::]:40012", "[::1]:40012"),
            ("[::]:40012", "127.0.0.1:40012"),
            ("[::1]:40012", "localhost:40012"),
        ] {
            let err = check_open(&open_req(listen, upstream, "r")).unwrap_err();
            assert_eq!(err.field, "upstream", "{listen} -> {upstream}: {err}");
            assert!(
                err.message.contains("the proxy would forward to itself"),
                "{listen} -> {upstream}: {err}"
            );
        }
        for (listen, upstream) in [
            ("127.0.0.1:40012", "127.0.0.1:40013"),
            ("10.0.0.1:40012", "10.0.0.2:40012"),
            ("10.0.0.1:40012", "127.0.0.1:40012"),
            ("127.0.0.1:40012", "db.example:40012"),
        ] {
            assert_eq!(
                check_open(&open_req(listen, upstream, "r")),
                Ok(()),
                "{listen} -> {upstream}"
            );
        }
    }

    #[test]
    fn an_empty_run_id_is_refused_on_apply_and_open() {
        let spec = serde_json::json!({"kind": "cpu-stress", "workers": 1, "load": 1.0});
        for bad in ["", ".hidden", "a/b", "a b"] {
            let mut req = apply(&spec);
            req.run_id = bad.to_owned();
            let err = check_apply_on(&req, &roomy_host()).unwrap_err();
            assert_eq!(err.field, "run_id", "{bad:?}: {err}");
            let err = check_open(&open_req("127.0.0.1:1", "127.0.0.1:2", bad)).unwrap_err();
            assert_eq!(err.field, "run_id", "{bad:?}: {err}");
        }
        assert_eq!(
            check_open(&open_req("127.0.0.1:1", "127.0.0.1:2", ""))
                .unwrap_err()
                .to_string(),
            "`run_id` must be 1 to 128 of [A-Za-z0-9._-], not starting with `.` or `-` (got ``)"
        );
        assert_eq!(check_apply_on(&apply(&spec), &roomy_host()), Ok(()));
    }

    #[test]
    fn fault_ids_cannot_escape_the_journal_directory() {
        assert!(validate_fault_id("20261126T141500Z-ab12-0").is_ok());
        assert!(validate_fault_id("../etc/passwd").is_err());
        assert!(validate_fault_id(".hidden").is_err());
        // A worker would read `--help` as a flag of its own.
        assert_eq!(
            validate_fault_id("--help"),
            Err("invalid fault id `--help`: use 1 to 128 of [A-Za-z0-9._-], not starting with `.` or `-`".to_owned())
        );
        assert!(validate_fault_id("-x").is_err());
        assert!(validate_fault_id("x-").is_ok());
        assert!(validate_fault_id("").is_err());
        assert!(validate_fault_id("a b").is_err());
    }
}
