//! Owns the fault contract: every fault kind has the same life — read its TOML table and validate
//! it into a spec → check the spec's bounds (`validate` and every agent, same words) → describe
//! (for `plan`) → prepare (decide exactly what will change, change nothing) → inject → verify it
//! took effect → revert (idempotent, from the journaled [`Undo`] alone). Each kind's module owns
//! all of it; [`FaultSpec`] is a closed enum dispatching to them, with no default arm.
//!
//! Architecture invariant: only `fault/` changes the host, and only after the agent has journaled
//! the [`Undo`] that reverses the change.

mod bandwidth;
pub(crate) mod check;
mod command;
mod container_kill;
mod container_pause;
mod disk_fill;
mod http_action;
mod latency;
mod net;
mod netem;
mod network_loss;
mod partition;
mod process_kill;
mod process_pause;
pub(crate) mod serial;
mod stress;
pub(crate) mod table;
mod victims;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub(crate) use bandwidth::Bandwidth;
pub(crate) use check::{FieldError, Host};
pub(crate) use command::CommandAction;
pub(crate) use container_kill::ContainerKill;
pub(crate) use container_pause::ContainerPause;
pub(crate) use disk_fill::{DiskFill, FillAmount, forbid_fills_in};
pub(crate) use http_action::HttpAction;
pub(crate) use latency::{LatencyProxy, Via};
pub(crate) use net::Cidr;
pub(crate) use netem::NetemLatency;
pub(crate) use network_loss::NetworkLoss;
pub(crate) use partition::Partition;
pub(crate) use process_kill::ProcessKill;
pub(crate) use process_pause::ProcessPause;
pub(crate) use stress::{
    CpuStress, MemoryStress, WORKER_COMMAND as STRESS_WORKER_COMMAND, Work, worker_main,
};
pub(crate) use table::{FaultTable, Invalid};

use crate::model::Pick;
use crate::process::{self, ProcInfo, ProcRef, Selector};

/// What a fault does, as sent from the coordinator to an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum FaultSpec {
    ProcessKill(ProcessKill),
    ProcessPause(ProcessPause),
    DiskFill(DiskFill),
    CpuStress(CpuStress),
    MemoryStress(MemoryStress),
    NetworkLoss(NetworkLoss),
    Partition(Partition),
    Bandwidth(Bandwidth),
    /// `latency` with `backend = "netem"`; its own wire kind, so an agent never confuses it with
    /// the proxy backend.
    NetemLatency(NetemLatency),
    /// `latency` with `backend = "proxy"`; the wire tag keeps it apart from the netem backend.
    LatencyProxy(LatencyProxy),
    ContainerKill(ContainerKill),
    ContainerPause(ContainerPause),
    /// A custom action: programs to run, and the one that reverts it.
    Command(CommandAction),
    /// A custom action: an HTTP request, and the one that reverts it. Boxed: two requests would
    /// make every spec as large as this one.
    Http(Box<HttpAction>),
}

/// What the agent knows when it prepares a fault.
pub(crate) struct Context<'a> {
    pub(crate) fault_id: &'a str,
    /// Seeds every random choice of this fault, so `--seed` reproduces a run.
    pub(crate) seed: u64,
    /// The TCP port the agent's control channel listens on, which network faults never block.
    /// `None` for the embedded agent, which has no control channel.
    pub(crate) control_port: Option<u16>,
}

/// The kinds users write, for the error that names an unknown one.
const KINDS: &str = "process-kill, process-pause, disk-fill, latency, network-loss, partition, bandwidth, cpu-stress, memory-stress, container-kill, container-pause, command, http";

impl FaultSpec {
    /// Builds the spec of kind `kind` from the rest of its `[[fault]]` table (the keys every
    /// fault takes already taken out). The one place a kind's name is matched: a kind is one
    /// module (its table, `validate`, `check`, plan text, inject and undo) and one arm here.
    pub(crate) fn from_table(
        kind: &Spanned<String>,
        table: &mut FaultTable<'_>,
    ) -> Result<FaultSpec, Invalid> {
        let name = kind.get_ref().as_str();
        let spec = match name {
            "process-kill" => {
                build(table, name, process_kill::Table::validate).map(FaultSpec::ProcessKill)
            }
            "process-pause" => {
                build(table, name, process_pause::Table::validate).map(FaultSpec::ProcessPause)
            }
            "disk-fill" => build(table, name, disk_fill::Table::validate).map(FaultSpec::DiskFill),
            "cpu-stress" => {
                build(table, name, stress::CpuTable::validate).map(FaultSpec::CpuStress)
            }
            "memory-stress" => {
                build(table, name, stress::MemoryTable::validate).map(FaultSpec::MemoryStress)
            }
            "network-loss" => {
                build(table, name, network_loss::Table::validate).map(FaultSpec::NetworkLoss)
            }
            "partition" => build(table, name, partition::Table::validate).map(FaultSpec::Partition),
            "bandwidth" => build(table, name, bandwidth::Table::validate).map(FaultSpec::Bandwidth),
            "latency" => match table.take::<Spanned<String>>("backend")? {
                Some(b) if b.get_ref() == "netem" => {
                    build(table, name, netem::Table::validate).map(FaultSpec::NetemLatency)
                }
                Some(b) if b.get_ref() != "proxy" => Err(Invalid {
                    span: b.span(),
                    message: format!(
                        "unknown `backend` `{}`; use `proxy` (the default) or `netem`",
                        b.get_ref()
                    ),
                }),
                _ => build(table, name, latency::Table::validate).map(FaultSpec::LatencyProxy),
            },
            "container-kill" => {
                build(table, name, container_kill::Table::validate).map(FaultSpec::ContainerKill)
            }
            "container-pause" => {
                build(table, name, container_pause::Table::validate).map(FaultSpec::ContainerPause)
            }
            "command" => build(table, name, command::Table::validate).map(FaultSpec::Command),
            "http" => build(table, name, http_action::Table::validate)
                .map(|h| FaultSpec::Http(Box::new(h))),
            other => Err(Invalid {
                span: kind.span(),
                message: format!(
                    "unknown kind `{other}`; expected one of {KINDS}{}",
                    crate::experiment::closest(other, KINDS.split(", "))
                        .map_or_else(String::new, |k| format!("; did you mean `{k}`?"))
                ),
            }),
        }?;
        Ok(spec)
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FaultSpec::ProcessKill(_) => "process-kill",
            FaultSpec::ProcessPause(_) => "process-pause",
            FaultSpec::DiskFill(_) => "disk-fill",
            FaultSpec::CpuStress(_) => "cpu-stress",
            FaultSpec::MemoryStress(_) => "memory-stress",
            FaultSpec::NetworkLoss(_) => "network-loss",
            FaultSpec::Partition(_) => "partition",
            FaultSpec::Bandwidth(_) => "bandwidth",
            // Two backends, one kind for users and reports.
            FaultSpec::NetemLatency(_) | FaultSpec::LatencyProxy(_) => "latency",
            FaultSpec::ContainerKill(_) => "container-kill",
            FaultSpec::ContainerPause(_) => "container-pause",
            FaultSpec::Command(_) => "command",
            FaultSpec::Http(_) => "http",
        }
    }

    /// Checks the bounds that hold on any host. `validate` runs it on every spec it builds and
    /// an agent on every request, so both refuse the same spec with the same words.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        match self {
            FaultSpec::ProcessKill(f) => f.check(),
            FaultSpec::ProcessPause(f) => f.check(),
            FaultSpec::DiskFill(f) => f.check(),
            FaultSpec::CpuStress(f) => f.check(),
            FaultSpec::MemoryStress(f) => f.check(),
            FaultSpec::NetworkLoss(f) => f.check(),
            FaultSpec::Partition(f) => f.check(),
            FaultSpec::Bandwidth(f) => f.check(),
            FaultSpec::NetemLatency(f) => f.check(),
            FaultSpec::LatencyProxy(f) => f.check(),
            FaultSpec::ContainerKill(f) => f.check(),
            FaultSpec::ContainerPause(f) => f.check(),
            FaultSpec::Command(f) => f.check(),
            FaultSpec::Http(f) => f.check(),
        }
    }

    /// Checks what depends on the agent's host (devices, CPUs). Only an agent runs it; call it
    /// after [`FaultSpec::check`].
    pub(crate) fn check_host(&self, host: &Host) -> Result<(), FieldError> {
        match self {
            FaultSpec::CpuStress(f) => f.check_host(host),
            FaultSpec::MemoryStress(f) => f.check_host(host),
            FaultSpec::Bandwidth(f) => host.device(&f.device),
            FaultSpec::NetemLatency(f) => host.device(&f.device),
            FaultSpec::ProcessKill(_)
            | FaultSpec::ProcessPause(_)
            | FaultSpec::DiskFill(_)
            | FaultSpec::NetworkLoss(_)
            | FaultSpec::Partition(_)
            | FaultSpec::LatencyProxy(_)
            | FaultSpec::ContainerKill(_)
            | FaultSpec::ContainerPause(_)
            | FaultSpec::Command(_)
            | FaultSpec::Http(_) => Ok(()),
        }
    }

    /// Whether the fault is over the moment it is injected (a kill), rather than held for a duration.
    pub(crate) fn is_instant(&self) -> bool {
        matches!(
            self,
            FaultSpec::ProcessKill(_) | FaultSpec::ContainerKill(_)
        )
    }

    /// One sentence on what the fault will do. Pure: reads nothing.
    pub(crate) fn describe(&self) -> String {
        match self {
            FaultSpec::ProcessKill(f) => f.describe(),
            FaultSpec::ProcessPause(f) => f.describe(),
            FaultSpec::DiskFill(f) => f.describe(),
            FaultSpec::LatencyProxy(f) => f.describe(),
            FaultSpec::CpuStress(f) => f.describe(),
            FaultSpec::MemoryStress(f) => f.describe(),
            FaultSpec::NetworkLoss(f) => f.describe(),
            FaultSpec::Partition(f) => f.describe(),
            FaultSpec::Bandwidth(f) => f.describe(),
            FaultSpec::NetemLatency(f) => f.describe(),
            FaultSpec::ContainerKill(f) => f.describe(),
            FaultSpec::ContainerPause(f) => f.describe(),
            FaultSpec::Command(f) => f.describe(),
            FaultSpec::Http(f) => f.describe(),
        }
    }

    /// The exact changes the fault makes (an nft ruleset, tc commands), for `plan`; `None` for
    /// kinds whose one-sentence description says it all. Pure: `fault_id` names what the fault owns.
    pub(crate) fn changes(&self, fault_id: &str) -> Option<String> {
        match self {
            FaultSpec::ProcessKill(_)
            | FaultSpec::ProcessPause(_)
            | FaultSpec::DiskFill(_)
            | FaultSpec::CpuStress(_)
            | FaultSpec::MemoryStress(_)
            | FaultSpec::LatencyProxy(_)
            | FaultSpec::ContainerKill(_)
            | FaultSpec::ContainerPause(_) => None,
            FaultSpec::NetworkLoss(f) => Some(f.changes(fault_id)),
            FaultSpec::Partition(f) => Some(f.changes(fault_id)),
            FaultSpec::Bandwidth(f) => Some(f.changes(fault_id)),
            FaultSpec::NetemLatency(f) => Some(f.changes(fault_id)),
            FaultSpec::Command(f) => Some(f.changes()),
            FaultSpec::Http(f) => Some(f.changes()),
        }
    }

    /// What the fault would act on if injected now. Reads the host, changes nothing.
    pub(crate) fn preview(&self) -> String {
        match self {
            FaultSpec::ProcessKill(f) => preview_selection(&f.select),
            FaultSpec::ProcessPause(f) => preview_selection(&f.select),
            FaultSpec::DiskFill(f) => f.preview(),
            FaultSpec::CpuStress(f) => f.preview(),
            FaultSpec::MemoryStress(f) => f.preview(),
            FaultSpec::NetworkLoss(_) | FaultSpec::Partition(_) => net::preview_nft(),
            FaultSpec::Bandwidth(f) => f.preview(),
            FaultSpec::NetemLatency(f) => f.preview(),
            FaultSpec::LatencyProxy(f) => f.preview(),
            FaultSpec::ContainerKill(f) => match f.target.init() {
                Ok((id, init)) => format!("container {id}, init {init}"),
                Err(e) => e,
            },
            FaultSpec::ContainerPause(f) => match f.prepare(&Context {
                fault_id: "preview",
                seed: 0,
                control_port: None,
            }) {
                Ok(p) => format!(
                    "{} right now: {} process(es) through {}",
                    p.targets().join(", "),
                    p.procs.len(),
                    p.freezer
                ),
                Err(e) => e,
            },
            FaultSpec::Command(f) => f.preview(),
            FaultSpec::Http(_) => "sends nothing until injected".to_owned(),
        }
    }

    /// Decides exactly what will change. Changes nothing.
    pub(crate) fn prepare(&self, ctx: &Context<'_>) -> Result<Prepared, String> {
        match self {
            FaultSpec::ProcessKill(f) => f.prepare(ctx).map(Prepared::Kill),
            FaultSpec::ProcessPause(f) => f.prepare(ctx).map(Prepared::Pause),
            FaultSpec::DiskFill(f) => f.prepare(ctx).map(Prepared::Fill),
            FaultSpec::CpuStress(f) => f.prepare(ctx).map(Prepared::Stress),
            FaultSpec::MemoryStress(f) => f.prepare(ctx).map(Prepared::Stress),
            FaultSpec::NetworkLoss(f) => f.prepare(ctx).map(Prepared::Nft),
            FaultSpec::Partition(f) => f.prepare(ctx).map(Prepared::Nft),
            FaultSpec::Bandwidth(f) => f.prepare(ctx).map(Prepared::Qdisc),
            FaultSpec::NetemLatency(f) => f.prepare(ctx).map(Prepared::Qdisc),
            FaultSpec::LatencyProxy(f) => f.prepare(ctx).map(Prepared::Latency),
            FaultSpec::ContainerKill(f) => f.prepare(ctx).map(Prepared::ContainerKill),
            FaultSpec::ContainerPause(f) => f.prepare(ctx).map(Prepared::Freeze),
            FaultSpec::Command(f) => f.prepare().map(Prepared::Command),
            FaultSpec::Http(f) => Ok(Prepared::Http(f.prepare())),
        }
    }

    /// How much longer than ordinary bookkeeping applying this fault may take: an action kind
    /// waits for its programs or request, each bounded by its `timeout`. Zero for other kinds.
    pub(crate) fn apply_allowance(&self) -> std::time::Duration {
        match self {
            FaultSpec::Command(f) => f.apply_allowance(),
            FaultSpec::Http(f) => f.apply_allowance(),
            _ => std::time::Duration::ZERO,
        }
    }

    /// Like [`FaultSpec::apply_allowance`], for reverting.
    pub(crate) fn revert_allowance(&self) -> std::time::Duration {
        match self {
            FaultSpec::Command(f) => f.revert_allowance(),
            FaultSpec::Http(f) => f.revert_allowance(),
            _ => std::time::Duration::ZERO,
        }
    }

    /// What the fault needs for the whole run — opened before the steady state is measured,
    /// closed when the run ends — if anything.
    pub(crate) fn run_resource(&self) -> Option<RunResource> {
        match self {
            FaultSpec::LatencyProxy(f) => f.run_resource(),
            _ => None,
        }
    }
}

/// Reads a kind's table and validates it, pointing any refusal at the key it names.
fn build<T: DeserializeOwned, S>(
    table: &mut FaultTable<'_>,
    kind: &str,
    validate: fn(T) -> Result<S, FieldError>,
) -> Result<S, Invalid> {
    let raw: T = table.read(kind)?;
    validate(raw).map_err(|e| table.at_key(&e))
}

/// Something faults act through for the whole run rather than only while they are active: a
/// proxy the system under test is pointed at from before the steady state to the end. Opening
/// one is journaled like a fault, so the dead-man switch and crash recovery cover it too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "resource", rename_all = "kebab-case")]
pub(crate) enum RunResource {
    /// A transparent TCP proxy until a fault turns its toxics on.
    Proxy {
        name: String,
        listen: SocketAddr,
        upstream: String,
    },
}

impl RunResource {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            RunResource::Proxy { .. } => "proxy",
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            RunResource::Proxy {
                listen, upstream, ..
            } => format!("proxy {listen} -> {upstream}"),
        }
    }

    /// What closes the resource. Journaled before [`RunResource::open`] runs.
    pub(crate) fn undo(&self) -> Undo {
        match self {
            RunResource::Proxy { name, .. } => Undo::CloseProxy {
                proxy: name.clone(),
            },
        }
    }

    /// Opens the resource. Idempotent. Needs the async runtime (a blocking-pool thread is fine).
    pub(crate) fn open(&self) -> Result<String, String> {
        match self {
            RunResource::Proxy {
                name,
                listen,
                upstream,
            } => crate::proxy::registry().open(name, *listen, upstream),
        }
    }
}

/// A fault whose effect has been decided but not yet made.
#[derive(Debug)]
pub(crate) enum Prepared {
    Kill(process_kill::Prepared),
    Pause(process_pause::Prepared),
    Fill(disk_fill::Prepared),
    Stress(stress::Prepared),
    /// `network-loss` and `partition`: an nft table of the fault's own.
    Nft(net::NftTable),
    /// `bandwidth` and netem `latency`: a root qdisc of the fault's own.
    Qdisc(net::RootQdisc),
    Latency(latency::Prepared),
    ContainerKill(container_kill::Prepared),
    /// `container-pause`: a cgroup's freezer.
    Freeze(container_pause::Prepared),
    Command(command::Prepared),
    Http(http_action::Prepared),
}

impl Prepared {
    /// What reverses this fault. Journaled before [`Prepared::inject`] runs.
    pub(crate) fn undo(&self) -> Undo {
        match self {
            Prepared::Kill(_) | Prepared::ContainerKill(_) => Undo::Nothing,
            Prepared::Pause(p) => Undo::Resume {
                procs: p.victims.clone(),
            },
            Prepared::Stress(p) => Undo::KillWorkers {
                fault_id: p.fault_id.clone(),
            },
            Prepared::Fill(p) => Undo::RemoveFile {
                path: p.file.clone(),
            },
            Prepared::Nft(p) => Undo::DeleteNftTable {
                table: p.table.clone(),
            },
            Prepared::Qdisc(p) => Undo::DeleteRootQdisc {
                device: p.device.clone(),
                handle: p.handle,
                kind: p.kind.to_owned(),
            },
            Prepared::Latency(p) => Undo::ClearToxics {
                proxy: p.proxy.clone(),
                owner: p.owner.clone(),
            },
            Prepared::Freeze(p) => Undo::Thaw {
                freezer: p.freezer.clone(),
            },
            Prepared::Command(p) => Undo::Command(Box::new(p.revert.clone())),
            Prepared::Http(p) => Undo::Http(Box::new(p.revert.clone())),
        }
    }

    /// The things this fault acts on, for reports (`pid 123 (python3)`, a file path).
    pub(crate) fn targets(&self) -> Vec<String> {
        match self {
            Prepared::Kill(p) => p.victims.iter().map(ToString::to_string).collect(),
            Prepared::Pause(p) => p.victims.iter().map(ToString::to_string).collect(),
            Prepared::Fill(p) => vec![p.file.display().to_string()],
            Prepared::Stress(_) => vec!["this host".to_owned()],
            Prepared::Nft(p) => vec![format!("nft table inet {}", p.table)],
            Prepared::Qdisc(p) => vec![format!("{} qdisc {:x}: on {}", p.kind, p.handle, p.device)],
            Prepared::Latency(p) => vec![format!("proxy on {}", p.listen)],
            Prepared::ContainerKill(p) => p.targets(),
            Prepared::Freeze(p) => p.targets(),
            Prepared::Command(p) => p.targets(),
            Prepared::Http(p) => p.targets(),
        }
    }

    /// The processes this fault will signal, so an agent can refuse ones its envelope protects.
    pub(crate) fn processes(&self) -> &[ProcRef] {
        match self {
            Prepared::Kill(p) => &p.victims,
            Prepared::Pause(p) => &p.victims,
            Prepared::ContainerKill(p) => p.init(),
            Prepared::Freeze(p) => &p.procs,
            Prepared::Fill(_)
            | Prepared::Stress(_)
            | Prepared::Nft(_)
            | Prepared::Qdisc(_)
            | Prepared::Latency(_)
            | Prepared::Command(_)
            | Prepared::Http(_) => &[],
        }
    }

    /// What an action kind ran to inject and verify, for the report; empty for other kinds.
    pub(crate) fn actions(&self) -> Vec<crate::protocol::ActionOutput> {
        match self {
            Prepared::Command(p) => p.actions(),
            Prepared::Http(p) => p.actions(),
            _ => Vec::new(),
        }
    }

    /// Makes the change. On error, the caller reverts the journaled undo: a partial injection
    /// (some processes stopped, part of a file allocated) is undone like a whole one.
    pub(crate) fn inject(&self) -> Result<String, String> {
        match self {
            Prepared::Kill(p) => p.inject(),
            Prepared::Pause(p) => p.inject(),
            Prepared::Fill(p) => p.inject(),
            Prepared::Stress(p) => p.inject(),
            Prepared::Nft(p) => p.inject(),
            Prepared::Qdisc(p) => p.inject(),
            Prepared::Latency(p) => p.inject(),
            Prepared::ContainerKill(p) => p.inject(),
            Prepared::Freeze(p) => p.inject(),
            Prepared::Command(p) => p.inject(),
            Prepared::Http(p) => p.inject(),
        }
    }

    /// Checks the change really took effect, and says what was observed.
    pub(crate) fn verify(&self) -> Result<String, String> {
        match self {
            Prepared::Kill(p) => p.verify(),
            Prepared::Pause(p) => p.verify(),
            Prepared::Fill(p) => p.verify(),
            Prepared::Stress(p) => p.verify(),
            Prepared::Nft(p) => p.verify(),
            Prepared::Qdisc(p) => p.verify(),
            Prepared::Latency(p) => p.verify(),
            Prepared::ContainerKill(p) => p.verify(),
            Prepared::Freeze(p) => p.verify(),
            Prepared::Command(p) => p.verify(),
            Prepared::Http(p) => p.verify(),
        }
    }
}

/// What reverses a fault, self-contained so that an agent restarted after a crash can run it from
/// the journal alone, whether or not the original target still exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "undo", rename_all = "kebab-case")]
pub(crate) enum Undo {
    /// Instant faults leave nothing to undo.
    Nothing,
    /// Send SIGCONT to each process that still is the one that was stopped.
    Resume { procs: Vec<ProcRef> },
    /// Delete the fill file.
    RemoveFile { path: PathBuf },
    /// Kill the stress workers tagged with this fault id.
    KillWorkers { fault_id: String },
    /// Delete the fault's own nft table (family inet).
    DeleteNftTable { table: String },
    /// Delete the root qdisc of `device`, only if it still has this handle and kind.
    DeleteRootQdisc {
        device: String,
        handle: u16,
        kind: String,
    },
    /// Turn off the toxics this fault set on a proxy (nothing, if the proxy is gone: it lived in
    /// the process that crashed).
    ClearToxics { proxy: String, owner: String },
    /// Close a run-scoped proxy.
    CloseProxy { proxy: String },
    /// Thaw a cgroup that `container-pause` froze (nothing, if the cgroup is gone).
    Thaw { freezer: container_pause::Freezer },
    /// Run a `command` fault's `revert` program (resolved to an absolute path). Boxed, like the
    /// next, to keep every undo small.
    Command(Box<command::Invocation>),
    /// Send an `http` fault's `revert` request.
    Http(Box<http_action::Request>),
}

impl Undo {
    /// Reverses the fault. Idempotent: undoing twice, or undoing what never happened, succeeds.
    pub(crate) fn revert(&self) -> Result<String, String> {
        self.revert_reported().0
    }

    /// [`Undo::revert`], with what an action kind ran to revert (every attempt), for the report.
    pub(crate) fn revert_reported(
        &self,
    ) -> (Result<String, String>, Vec<crate::protocol::ActionOutput>) {
        let done = match self {
            Undo::Command(invocation) => return command::revert(invocation),
            Undo::Http(request) => return http_action::revert(request),
            other => other.revert_host(),
        };
        (done, Vec::new())
    }

    fn revert_host(&self) -> Result<String, String> {
        match self {
            Undo::Nothing => Ok("nothing to undo".to_owned()),
            Undo::Resume { procs } => process_pause::resume(procs),
            Undo::RemoveFile { path } => disk_fill::remove(path),
            Undo::KillWorkers { fault_id } => stress::kill_workers(fault_id),
            Undo::DeleteNftTable { table } => net::nft_delete_table(table),
            Undo::DeleteRootQdisc {
                device,
                handle,
                kind,
            } => net::tc_delete_root(device, *handle, kind),
            Undo::ClearToxics { proxy, owner } => Ok(latency::clear(proxy, owner)),
            Undo::CloseProxy { proxy } => Ok(crate::proxy::registry().close(proxy)),
            Undo::Thaw { freezer } => container_pause::thaw(freezer),
            Undo::Command(_) | Undo::Http(_) => self.revert_reported().0,
        }
    }
}

/// What [`choose_victims`] picked, and what it left out.
struct Chosen {
    victims: Vec<ProcRef>,
    /// Processes already stopped (state `T`/`t`) that a pattern matched, left out.
    stopped: Vec<ProcInfo>,
}

/// Whether a process is stopped (by a signal, or traced).
fn is_stopped(p: &ProcInfo) -> bool {
    matches!(p.state, 'T' | 't')
}

/// Resolves a selector and applies `count`/`percent` with a seeded shuffle. With `awake_only`
/// (a pause), a process already stopped is refused when the selector names it explicitly and
/// left out of a pattern's matches: continuing it on revert would resume a process the fault did
/// not stop (stopped by hand, or held by another fault).
fn choose_victims(
    select: &Selector,
    pick: Option<Pick>,
    seed: u64,
    awake_only: bool,
) -> Result<Chosen, String> {
    let matches = process::select(select)?;
    let excluded = matches.excluded.len();
    let (stopped, mut found): (Vec<ProcInfo>, Vec<ProcInfo>) = matches
        .procs
        .into_iter()
        .partition(|p| awake_only && is_stopped(p));
    if let (true, Some(p)) = (select.is_explicit(), stopped.first()) {
        return Err(format!(
            "refusing to pause pid {} ({}): it is already stopped (state {}), so continuing it on revert would resume a process this fault did not stop",
            p.pid, p.comm, p.state
        ));
    }
    if found.is_empty() {
        let mut notes = Vec::new();
        if excluded > 0 {
            notes.push(format!("{excluded} protected process(es) left out"));
        }
        if !stopped.is_empty() {
            notes.push(format!(
                "{} already-stopped process(es) left out",
                stopped.len()
            ));
        }
        let note = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        return Err(format!(
            "no process matched {select}{note}: nothing to inject"
        ));
    }
    found.sort_by_key(|p| p.pid);
    if let Some(pick) = pick {
        let take = pick.how_many(found.len());
        crate::model::seeded_shuffle(&mut found, seed);
        found.truncate(take);
        found.sort_by_key(|p| p.pid);
    }
    Ok(Chosen {
        victims: found.iter().map(ProcInfo::to_ref).collect(),
        stopped,
    })
}

fn preview_selection(select: &Selector) -> String {
    match process::select(select) {
        Ok(m) if m.procs.is_empty() => "matches no process right now".to_owned(),
        Ok(m) => {
            let listed: Vec<String> = m
                .procs
                .iter()
                .take(5)
                .map(|p| format!("pid {} ({})", p.pid, p.comm))
                .collect();
            let more = m.procs.len().saturating_sub(5);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(
                "matches {} right now: {}{more}",
                m.procs.len(),
                listed.join(", ")
            )
        }
        Err(e) => e,
    }
}
