//! Owns what the fuzzer feeds: one target per input the program reads from outside — experiment
//! files, the inventory, `agent.toml`, the agent's request bodies, journal entries — each with its
//! seeds (the repository's own files, bodies built from the real types) and one execution that
//! runs the same parsing and checks the program runs, and never anything that changes the host.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::agent::journal::{Entry, Journal};
use crate::agent::{AgentCore, Envelope};
use crate::fault::{FaultSpec, RunResource, Undo};
use crate::protocol::{ApplyRequest, OpenRequest, RenewRequest};

/// The inputs the fuzzer knows, as `faultline fuzz TARGET` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TargetName {
    /// An experiment file: `experiment::parse`, then the plan text of what it accepted.
    Experiment,
    /// The `--agents` inventory file (DNS names other than IP literals and localhost are skipped).
    Inventory,
    /// An agent's `agent.toml`: the envelope and its `[[proxy]]` tables, then admitting requests.
    AgentToml,
    /// The body of `PUT /v1/faults/ID`.
    ApplyRequest,
    /// The body of `PUT /v1/resources/ID`.
    OpenRequest,
    /// The body of `POST /v1/renew`.
    RenewRequest,
    /// One file of the agent's journal, as recovery reads it.
    JournalEntry,
    /// A game-day file: `gameday::parse` (experiments resolved against `gamedays/`), then the
    /// next fires of what it accepted.
    GameDay,
    /// A stored JSON report, as `faultline show` reads it back from the history and renders it.
    StoredReport,
}

impl TargetName {
    pub(crate) const ALL: [TargetName; 9] = [
        TargetName::Experiment,
        TargetName::Inventory,
        TargetName::AgentToml,
        TargetName::ApplyRequest,
        TargetName::OpenRequest,
        TargetName::RenewRequest,
        TargetName::JournalEntry,
        TargetName::GameDay,
        TargetName::StoredReport,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TargetName::Experiment => "experiment",
            TargetName::Inventory => "inventory",
            TargetName::AgentToml => "agent-toml",
            TargetName::ApplyRequest => "apply-request",
            TargetName::OpenRequest => "open-request",
            TargetName::RenewRequest => "renew-request",
            TargetName::JournalEntry => "journal-entry",
            TargetName::GameDay => "game-day",
            TargetName::StoredReport => "stored-report",
        }
    }
}

/// One fuzz target. `exec` returns one line on what became of the input (the error, or what was
/// accepted); the fuzzer keeps inputs whose line it has not seen before.
pub(crate) trait Target {
    fn seeds(&self) -> Vec<Vec<u8>>;
    fn exec(&mut self, input: &[u8]) -> String;
    /// Called after an execution panicked, to drop state the panic may have left half-done.
    fn reset(&mut self) {}
}

pub(crate) fn open(name: TargetName) -> Result<Box<dyn Target>, String> {
    Ok(match name {
        TargetName::Experiment => Box::new(ExperimentTarget),
        TargetName::Inventory => Box::new(InventoryTarget::new()?),
        TargetName::AgentToml => Box::new(AgentTomlTarget::new()?),
        TargetName::ApplyRequest => Box::new(ApplyTarget),
        TargetName::OpenRequest => Box::new(OpenTarget),
        TargetName::RenewRequest => Box::new(RenewTarget::new()?),
        TargetName::JournalEntry => Box::new(JournalTarget::new()?),
        TargetName::GameDay => Box::new(GameDayTarget),
        TargetName::StoredReport => Box::new(StoredReportTarget),
    })
}

/// The repository's files: seeds are read from the source tree this binary was built from, else
/// from the working directory.
fn repo_files(dir: &str, ext: &str) -> Vec<Vec<u8>> {
    let dir = repo_dir(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == ext));
    // Sorted, so the corpus (and with it every input) is the same for the same seed.
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// A directory of the source tree this binary was built from, else of the working directory.
fn repo_dir(dir: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    if built.is_dir() {
        built
    } else {
        PathBuf::from(dir)
    }
}

/// The seeds plus, for each, a copy with its commented-out settings (`# key = value`, `# [[x]]`)
/// switched on, so optional keys the examples only mention are fuzzed too.
fn with_uncommented(seeds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for seed in seeds {
        let text = String::from_utf8_lossy(&seed);
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let changed = uncommented.trim_end() != text.trim_end();
        out.push(seed);
        if changed {
            out.push(uncommented.into_bytes());
        }
    }
    out
}

/// The fault specs of the repository's experiments: what the coordinator really sends.
fn example_specs() -> Vec<(FaultSpec, Option<u64>)> {
    let mut specs = Vec::new();
    for text in repo_files("experiments", "toml") {
        let text = String::from_utf8_lossy(&text);
        if let Ok(exp) = crate::experiment::parse(Path::new("seed.toml"), &text) {
            for f in exp.faults {
                let ms = f.duration.map(|d| d.as_millis() as u64);
                specs.push((f.spec, ms));
            }
        }
    }
    specs
}

fn example_requests() -> Vec<ApplyRequest> {
    example_specs()
        .into_iter()
        .enumerate()
        .map(|(i, (spec, duration_ms))| ApplyRequest {
            run_id: format!("20261202T040000Z-ab{i:02}"),
            spec,
            duration_ms,
            lease_ms: 5000,
            seed: i as u64,
        })
        .collect()
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("the wire types serialize")
}

/// A directory of the fuzzer's own, on tmpfs when there is one (every execution writes a file),
/// removed when the target is dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch, String> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("faultline-fuzz-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn write(&self, name: &str, input: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        // A failed write shows up as the read error of the target, which is an outcome like any.
        let _ = std::fs::write(&path, input);
        path
    }

    /// An error message without the scratch directory's name, so outcomes do not depend on it.
    fn strip(&self, message: &str) -> String {
        message.replace(&*self.0.to_string_lossy(), "DIR")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct ExperimentTarget;

impl Target for ExperimentTarget {
    fn seeds(&self) -> Vec<Vec<u8>> {
        with_uncommented(repo_files("experiments", "toml"))
    }

    fn exec(&mut self, input: &[u8]) -> String {
        // `load` reads the file as UTF-8; invalid bytes are its error, not the parser's, so the
        // parser is given the text it would get from the nearest valid file instead.
        let text = String::from_utf8_lossy(input);
        match crate::experiment::parse(Path::new("fuzz.toml"), &text) {
            Ok(exp) => {
                // The plan without a preview is pure: it formats every validated value once.
                let plan = crate::plan::render(&exp, false);
                format!(
                    "ok: {} fault(s), {} probe(s), plan of {} line(s)",
                    exp.faults.len(),
                    exp.steady_state.probes.len(),
                    plan.lines().count()
                )
            }
            Err(e) => e.message,
        }
    }
}

struct GameDayTarget;

impl Target for GameDayTarget {
    fn seeds(&self) -> Vec<Vec<u8>> {
        with_uncommented(repo_files("gamedays", "toml"))
    }

    fn exec(&mut self, input: &[u8]) -> String {
        let text = String::from_utf8_lossy(input);
        // In `gamedays/`, so the examples' `../experiments/…` resolve to the repository's files.
        let path = repo_dir("gamedays").join("fuzz.toml");
        match crate::gameday::parse(&path, &text) {
            Ok(day) => {
                // The fire-time arithmetic on what was accepted: pure, from a fixed instant.
                let from = jiff::Timestamp::from_second(1_800_000_000).expect("a valid instant");
                let slots = day.calendar.upcoming(from, 20);
                format!(
                    "ok: {} schedule(s), {} blackout(s), {} slot(s)",
                    day.calendar.schedules.len(),
                    day.calendar.blackouts.len(),
                    slots.len()
                )
            }
            Err(e) => e.to_string().replace(&*path.to_string_lossy(), "FILE"),
        }
    }
}

struct StoredReportTarget;

impl Target for StoredReportTarget {
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![include_bytes!("seeds/report.json").to_vec()]
    }

    fn exec(&mut self, input: &[u8]) -> String {
        match crate::report::json::parse(&String::from_utf8_lossy(input)) {
            // `show` renders what it read exactly as a run ends.
            Ok(report) => format!(
                "ok: {} line(s)",
                crate::report::terminal::render(&report).lines().count()
            ),
            Err(e) => e.to_string(),
        }
    }
}

struct InventoryTarget {
    scratch: Scratch,
    runtime: Option<tokio::runtime::Runtime>,
}

impl InventoryTarget {
    fn new() -> Result<InventoryTarget, String> {
        let scratch = Scratch::new("inventory")?;
        // Real credentials where the seeds point, so inputs get past reading them.
        crate::certs::generate(&scratch.0.join("certs"), &[])?;
        Ok(InventoryTarget {
            scratch,
            runtime: None,
        })
    }
}

/// Whether loading would resolve a DNS name: only IP literals and localhost are looked up, so an
/// input never waits on (or sends queries to) a resolver.
fn resolves_a_name(input: &[u8]) -> bool {
    let Ok(table) = toml::from_str::<toml::Table>(&String::from_utf8_lossy(input)) else {
        return false;
    };
    let Some(dns) = table.get("dns").and_then(toml::Value::as_str) else {
        return false;
    };
    let host = dns.rsplit_once(':').map_or(dns, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host != "localhost" && host.parse::<std::net::IpAddr>().is_err()
}

impl Target for InventoryTarget {
    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut seeds = with_uncommented(repo_files("agents", "toml"));
        seeds.extend(with_uncommented(repo_files("agents/kubernetes", "toml")));
        seeds.retain(|s| String::from_utf8_lossy(s).contains("token_file"));
        // The Kubernetes inventory's paths and service name, moved to where this target has them.
        seeds
            .into_iter()
            .map(|s| {
                String::from_utf8_lossy(&s)
                    .replace("/etc/faultline/credentials/", "certs/")
                    .replace("faultline-agent.chaos.svc.cluster.local", "localhost")
                    .into_bytes()
            })
            .collect()
    }

    fn exec(&mut self, input: &[u8]) -> String {
        if resolves_a_name(input) {
            return "skipped: `dns` names a host that would need a resolver".to_owned();
        }
        let path = self.scratch.write("inventory.toml", input);
        let runtime = match &self.runtime {
            Some(r) => r,
            None => match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => self.runtime.insert(r),
                Err(e) => return format!("no runtime: {e}"),
            },
        };
        match runtime.block_on(crate::inventory::load(&path)) {
            Ok(inv) => format!("ok: {} agent(s)", inv.agents.len()),
            Err(e) => self.scratch.strip(&e),
        }
    }

    fn reset(&mut self) {
        self.runtime = None;
    }
}

struct AgentTomlTarget {
    scratch: Scratch,
    requests: Vec<ApplyRequest>,
}

impl AgentTomlTarget {
    fn new() -> Result<AgentTomlTarget, String> {
        Ok(AgentTomlTarget {
            scratch: Scratch::new("agent-toml")?,
            requests: example_requests(),
        })
    }
}

impl Target for AgentTomlTarget {
    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut seeds: Vec<Vec<u8>> = with_uncommented(repo_files("agents", "toml"));
        seeds.retain(|s| !String::from_utf8_lossy(s).contains("token_file"));
        seeds.push(
            b"allowed_kinds = [\"latency\"]\nmax_duration = \"1m\"\nmax_disk_fill = \"80%\"\n\
              [[proxy]]\nname = \"db\"\nlisten = \"127.0.0.1:15432\"\nupstream = \"db.internal:5432\"\n\
              [[proxy]]\nname = \"cache\"\nlisten = \"[::1]:16379\"\nupstream = \"cache:6379\"\n"
                .to_vec(),
        );
        seeds
    }

    fn exec(&mut self, input: &[u8]) -> String {
        let path = self.scratch.write("agent.toml", input);
        let envelope = match Envelope::load(&path) {
            Ok(e) => e,
            Err(e) => return self.scratch.strip(&e),
        };
        // What the envelope then decides: every example request, admitted or refused.
        let mut admitted = 0;
        for req in &self.requests {
            if envelope.admit(req).is_ok() {
                admitted += 1;
            }
            if let Some(resource) = req.spec.run_resource() {
                let _ = envelope.admit_resource(&resource);
            }
        }
        format!(
            "ok: {} proxies, {admitted} of {} example requests admitted",
            envelope.proxies.len(),
            self.requests.len()
        )
    }
}

/// What the agent does with an apply body before it touches the host: today serde (done by the
/// caller) and the envelope's admission. The wire validation `protocol::check_apply` goes here too,
/// as one more line: `crate::protocol::check_apply(req)?;`.
fn agent_checks_apply(req: &ApplyRequest) -> Result<String, String> {
    // The agent's own validation comes first, as in `AgentCore::apply_inner`.
    crate::protocol::check_apply(req).map_err(|e| e.to_string())?;
    let admitted = Envelope::default().admit(req)?;
    // The texts the agent and `plan` derive from a spec: its sentence and its exact commands.
    let described = admitted.spec.describe();
    let changes = admitted
        .spec
        .changes("fuzz-0")
        .map_or(0, |c| c.lines().count());
    let resource = admitted.spec.run_resource().map(|r| r.describe());
    Ok(format!(
        "ok: {} ({} chars, {changes} command line(s), resource {})",
        admitted.spec.kind(),
        described.len(),
        resource.is_some()
    ))
}

struct ApplyTarget;

impl Target for ApplyTarget {
    fn seeds(&self) -> Vec<Vec<u8>> {
        example_requests().iter().map(json).collect()
    }

    fn exec(&mut self, input: &[u8]) -> String {
        match serde_json::from_slice::<ApplyRequest>(input) {
            Ok(req) => agent_checks_apply(&req).unwrap_or_else(|e| e),
            Err(e) => e.to_string(),
        }
    }
}

struct OpenTarget;

impl Target for OpenTarget {
    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut resources: Vec<RunResource> = example_specs()
            .iter()
            .filter_map(|(s, _)| s.run_resource())
            .collect();
        resources.push(RunResource::Proxy {
            name: "listen-127.0.0.1-18080".to_owned(),
            listen: "[::1]:18080".parse().expect("a literal address"),
            upstream: "localhost:8080".to_owned(),
        });
        resources
            .into_iter()
            .enumerate()
            .map(|(i, resource)| {
                json(&OpenRequest {
                    run_id: format!("20261202T040000Z-cd{i:02}"),
                    resource,
                    lease_ms: 5000,
                })
            })
            .collect()
    }

    fn exec(&mut self, input: &[u8]) -> String {
        match serde_json::from_slice::<OpenRequest>(input) {
            Ok(req) => match crate::protocol::check_open(&req)
                .map_err(|e| e.to_string())
                .and_then(|()| Envelope::default().admit_resource(&req.resource))
            {
                Ok(()) => format!(
                    "ok: {} ({}), undone by {:?}",
                    req.resource.kind(),
                    req.resource.describe().len(),
                    req.resource.undo()
                ),
                Err(e) => e,
            },
            Err(e) => e.to_string(),
        }
    }
}

struct RenewTarget {
    /// An agent core with an empty journal of its own: renewing only looks up its slots.
    core: std::sync::Arc<AgentCore>,
    _scratch: Scratch,
}

impl RenewTarget {
    fn new() -> Result<RenewTarget, String> {
        let scratch = Scratch::new("renew")?;
        let (core, _) = AgentCore::open(&scratch.0.join("state"), Envelope::default(), None)?;
        Ok(RenewTarget {
            core,
            _scratch: scratch,
        })
    }
}

impl Target for RenewTarget {
    fn seeds(&self) -> Vec<Vec<u8>> {
        let ids = |n: usize| RenewRequest {
            ids: (0..n)
                .map(|i| format!("20261202T040000Z-ef01-{i}"))
                .collect(),
        };
        vec![json(&ids(0)), json(&ids(1)), json(&ids(3))]
    }

    fn exec(&mut self, input: &[u8]) -> String {
        match serde_json::from_slice::<RenewRequest>(input) {
            Ok(req) => {
                let renewed = self.core.renew(&req.ids);
                format!(
                    "ok: {} renewed, {} unknown",
                    renewed.renewed.len(),
                    renewed.unknown.len()
                )
            }
            Err(e) => e.to_string(),
        }
    }
}

struct JournalTarget {
    scratch: Scratch,
    journal: Journal,
}

impl JournalTarget {
    fn new() -> Result<JournalTarget, String> {
        let scratch = Scratch::new("journal")?;
        let journal = Journal::open(&scratch.0)?;
        Ok(JournalTarget { scratch, journal })
    }
}

impl Target for JournalTarget {
    fn seeds(&self) -> Vec<Vec<u8>> {
        let me = crate::process::read(std::process::id() as i32).map_or(
            crate::process::ProcRef {
                pid: 4242,
                start_time: 1,
                comm: "faultline".to_owned(),
            },
            |p| p.to_ref(),
        );
        let undos = [
            Undo::Nothing,
            Undo::Resume {
                procs: vec![me.clone()],
            },
            Undo::RemoveFile {
                path: PathBuf::from("/tmp/faultline-fill-20261202T040000Z-ab01-0"),
            },
            Undo::KillWorkers {
                fault_id: "20261202T040000Z-ab01-0".to_owned(),
            },
            Undo::DeleteNftTable {
                table: "faultline_20261202T040000Z_ab01_0".to_owned(),
            },
            Undo::DeleteRootQdisc {
                device: "eth0".to_owned(),
                handle: 0x1abc,
                kind: "htb".to_owned(),
            },
            Undo::ClearToxics {
                proxy: "listen-127.0.0.1-18080".to_owned(),
                owner: "20261202T040000Z-ab01-0".to_owned(),
            },
            Undo::CloseProxy {
                proxy: "listen-127.0.0.1-18080".to_owned(),
            },
            serde_json::from_value(serde_json::json!({"undo": "command",
                "argv": ["/usr/bin/rm", "-f", "/tmp/marker"], "env": {"A": "b"}, "cwd": "/", "timeout_ms": 1000}))
            .expect("a command undo"),
            serde_json::from_value(serde_json::json!({"undo": "http", "method": "PUT",
                "url": "http://127.0.0.1:1/flag", "headers": {"X-A": "b"}, "body": "off", "status": [200], "timeout_ms": 1000}))
            .expect("an http undo"),
        ];
        undos
            .into_iter()
            .enumerate()
            .map(|(i, undo)| {
                json(&Entry {
                    id: format!("20261202T040000Z-ab01-{i}"),
                    run_id: "20261202T040000Z-ab01".to_owned(),
                    kind: "process-pause".to_owned(),
                    undo,
                    owner: me.clone(),
                    written_at: Timestamp::UNIX_EPOCH,
                    // Every other seed entry has a deadline, so the mutations reach that field too.
                    deadline: (i % 2 == 0).then_some(Timestamp::UNIX_EPOCH),
                    // One seed carries a secret, so the mutations reach that field too.
                    secrets: if i == 1 {
                        vec!["s3cret-value".to_owned()]
                    } else {
                        Vec::new()
                    },
                    // One seed comes from another boot, so the mutations reach that field too.
                    boot: (i == 2).then(|| "6f1c2a4e-0000-4000-8000-000000000000".to_owned()),
                })
            })
            .collect()
    }

    fn exec(&mut self, input: &[u8]) -> String {
        // Read only, never reverted: an entry names files to delete and processes to signal.
        self.scratch.write("20261202T040000Z-ab01-0.json", input);
        let entries = self.journal.entries();
        match entries.first() {
            Some(Ok(entry)) => format!("ok: {} {:?}", entry.kind, entry.undo),
            Some(Err(e)) => self.scratch.strip(e),
            None => "no entry".to_owned(),
        }
    }
}
