//! Owns the command line: parses arguments, turns them into validated settings once, and calls the
//! part of the program that does the work. Returns the process exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::agent::{Agent, AgentCore, default_state_dir};
use crate::experiment;
use crate::fault::{Work, worker_main};
use crate::model::{Experiment, LOCAL_GROUP};
use crate::progress::Progress;
use crate::protocol::RevertCause;
use crate::report::{json, junit, terminal};
use crate::run::{self, RunOptions};
use crate::units::Dur;

/// Exit code for usage errors and invalid experiments: nothing ran.
const EXIT_INVALID: u8 = 2;
/// Exit code of `budget` when too little error budget is left (the same as a `not_run` verdict).
const EXIT_NOT_ENOUGH: u8 = 4;
/// Exit code when the tool could not do what was asked (here: Prometheus could not be read).
const EXIT_ERROR: u8 = 5;

#[derive(Parser)]
#[command(
    name = "faultline",
    version,
    about = "Chaos experiments with verdicts a release pipeline can trust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment: baseline, faults, recovery, verdict (exit 0 passed, 1 failed, 2 invalid,
    /// 3 aborted, 4 not run, 5 error).
    Run(RunArgs),
    /// Print the error budget of an experiment's `[slo_budget]` (exit 0 enough left, 2 invalid or no
    /// `[slo_budget]`, 4 less than `min_remaining` left, 5 Prometheus could not be read).
    Budget { file: PathBuf },
    /// Measure faultline itself and print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Check experiment files without touching anything.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// A stress worker process, started by the `cpu-stress` and `memory-stress` faults.
    #[command(name = "stress-worker", hide = true)]
    StressWorker {
        #[arg(long)]
        fault_id: String,
        /// The agent's pid: the worker exits as soon as it is no longer its parent.
        #[arg(long)]
        parent: u32,
        #[arg(long)]
        cpu_load: Option<f64>,
        #[arg(long)]
        memory: Option<u64>,
    },
    /// Print what a run would do — targets, timeline, changes — without doing it.
    Plan {
        file: PathBuf,
        /// Agent inventory (network agents are not available in this build).
        #[arg(long)]
        agents: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The latency proxy: delay precision (vs a plain tokio-sleep proxy), throughput, 1000
    /// connections (build with --release for meaningful figures).
    Proxy {
        /// Round trips per precision figure, after 50 of warm-up.
        #[arg(long, default_value_t = 1000)]
        round_trips: usize,
        /// Delays to measure, in milliseconds.
        #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
        delays_ms: Vec<u64>,
        /// Bytes of the bulk transfer.
        #[arg(long, default_value_t = 1 << 30)]
        bulk_bytes: u64,
        /// Concurrent connections of the scale figure.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// How many probe samples per second one run sustains, and the CPU they cost: TCP probes
    /// against a listener on loopback, driven by the same probe tasks as a run.
    Probes {
        /// How many probes run at once.
        #[arg(long, default_value_t = 100)]
        probes: usize,
        /// How often each probe checks.
        #[arg(long, default_value = "10ms", value_parser = parse_dur)]
        every: Duration,
        /// How long to measure.
        #[arg(long = "for", default_value = "10s", value_parser = parse_dur)]
        duration: Duration,
    },
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    s.parse::<Dur>().map(|d| d.0)
}

#[derive(Args)]
struct RunArgs {
    file: PathBuf,
    /// Agent inventory; without it, faults act on this host through the embedded agent.
    #[arg(long)]
    agents: Option<PathBuf>,
    /// Write the JSON report (schema_version 1) here.
    #[arg(long, value_name = "PATH")]
    report_json: Option<PathBuf>,
    /// Write a JUnit XML report here, for CI.
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
    /// Seed for every random choice, to reproduce a run; drawn and reported when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the plan and measure the steady state, but inject nothing.
    #[arg(long)]
    dry_run: bool,
    /// Agents revert a fault by themselves if the coordinator stops renewing it for this long.
    #[arg(long, default_value = "5s", value_parser = parse_lease)]
    lease: Duration,
    /// Where the embedded agent journals its faults [default: $FAULTLINE_STATE_DIR, else
    /// /var/lib/faultline/embedded for root, else the XDG state directory].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// No live progress display; plain lines only.
    #[arg(long)]
    quiet: bool,
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = s.parse::<Dur>()?.0;
    if d < Duration::from_millis(300) {
        return Err("the lease must be at least 300ms".to_owned());
    }
    Ok(d)
}

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files } => Ok(validate(&files)),
        Command::Plan { file, agents } => {
            let Some(exp) = load(&file) else {
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            if let Err(e) = check_targets(&exp, agents.as_deref()) {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            print!("{}", crate::plan::render(&exp, true));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_experiment(&args),
        Command::Bench(BenchCommand::Proxy {
            round_trips,
            delays_ms,
            bulk_bytes,
            connections,
        }) => {
            let settings = crate::bench::proxy::Settings {
                round_trips,
                delays_ms,
                bulk_bytes,
                connections,
            };
            crate::bench::proxy::run(&settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::StressWorker {
            fault_id: _,
            parent,
            cpu_load,
            memory,
        } => {
            let work = match (cpu_load, memory) {
                (Some(load), None) => Work::Cpu { load },
                (None, Some(bytes)) => Work::Memory { bytes },
                _ => bail!("stress-worker takes exactly one of --cpu-load or --memory"),
            };
            worker_main(&work, parent);
            Ok(ExitCode::SUCCESS)
        }
        Command::Budget { file } => budget(&file),
        Command::Bench(BenchCommand::Probes {
            probes,
            every,
            duration,
        }) => {
            if probes == 0 || every.is_zero() || duration.is_zero() {
                eprintln!("error: --probes, --every and --for must be above zero");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            let settings = crate::bench::BenchSettings {
                probes,
                every,
                duration,
            };
            print!("{}", crate::bench::probes(&settings)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn budget(file: &Path) -> anyhow::Result<ExitCode> {
    let Some(exp) = load(file) else {
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    let Some(spec) = &exp.budget else {
        eprintln!(
            "error: {} has no [slo_budget] table; add one to gate runs on the error budget",
            file.display()
        );
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    match runtime.block_on(crate::budget::check(spec)) {
        Ok(numbers) => {
            println!("error budget for `{}`", exp.title);
            print!("{}", numbers.table());
            if numbers.enough() {
                println!("enough budget left: {}", numbers.summary());
                Ok(ExitCode::SUCCESS)
            } else {
                println!("NOT enough budget left: {}", numbers.summary());
                Ok(ExitCode::from(EXIT_NOT_ENOUGH))
            }
        }
        Err(e) => {
            eprintln!("error: could not check the error budget: {e}");
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match experiment::load(file) {
            Ok(exp) => println!(
                "{}: ok ({} probe(s), {} fault(s))",
                file.display(),
                exp.steady_state.probes.len(),
                exp.faults.len()
            ),
            Err(e) => {
                eprintln!("error: invalid experiment {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    }
}

fn load(file: &Path) -> Option<Experiment> {
    match experiment::load(file) {
        Ok(exp) => Some(exp),
        Err(e) => {
            eprintln!("error: invalid experiment {e}");
            None
        }
    }
}

/// Checks that every target group can be resolved with the agents at hand.
fn check_targets(exp: &Experiment, agents: Option<&Path>) -> anyhow::Result<()> {
    if let Some(inventory) = agents {
        bail!(
            "--agents {}: network agents are not available in this build yet; run without --agents to use the embedded agent",
            inventory.display()
        );
    }
    if let Some(f) = exp.faults.iter().find(|f| f.on != LOCAL_GROUP) {
        bail!(
            "{}: fault `{}` targets group `{}`, which needs an agent inventory (--agents); without one only `local` exists",
            exp.file.display(),
            f.name,
            f.on
        );
    }
    Ok(())
}

fn run_experiment(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let Some(exp) = load(&args.file) else {
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    if let Err(e) = check_targets(&exp, args.agents.as_deref()) {
        eprintln!("error: {e:#}");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    if args.dry_run {
        // Fixtures are not running yet, so "what matches now" would mislead for self-contained experiments.
        print!("{}", crate::plan::render(&exp, exp.setup.is_empty()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let report = runtime.block_on(async {
        let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
        let (core, recovery) = AgentCore::open(&state_dir).map_err(anyhow::Error::msg)?;
        let progress = Progress::new(args.quiet);
        for line in &recovery.reverted {
            progress.log(&format!("reverted a fault left by an earlier crashed run: {line}"));
        }
        if !recovery.failed.is_empty() {
            bail!(
                "faults left by an earlier crashed run could not be reverted ({}); fix them before running again (journal: {})",
                recovery.failed.join("; "),
                core.state_dir().display()
            );
        }
        core.spawn_reaper();
        let opts = RunOptions { seed: args.seed, dry_run: args.dry_run, lease: args.lease, recovered: recovery.reverted };
        let mut report = run::run(&exp, Agent::Embedded(core.clone()), opts, &progress).await;
        // The run reverts every fault it injected; this is the backstop should one have slipped
        // through (a revert that timed out). Anything found here is reported as a failed revert.
        let leftovers = tokio::task::spawn_blocking(move || core.revert_all_blocking(RevertCause::Shutdown)).await?;
        for left in leftovers {
            let line = match left {
                Ok(r) => format!("fault {} was still active at the end of the run and was reverted now: {}", r.id, r.detail),
                Err(e) => format!("a fault was still active at the end of the run and could NOT be reverted: {e}"),
            };
            progress.log(&line);
            report.note_leftover(&line);
        }
        progress.finish();
        Ok(report)
    })?;
    print!("{}", terminal::render(&report));
    if let Some(path) = &args.report_json {
        std::fs::write(path, json::render(&report))
            .with_context(|| format!("failed to write the JSON report to {}", path.display()))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, junit::render(&report))
            .with_context(|| format!("failed to write the JUnit report to {}", path.display()))?;
    }
    Ok(ExitCode::from(report.exit_code()))
}
