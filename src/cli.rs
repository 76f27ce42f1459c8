//! Owns the command line: parses arguments, turns them into validated settings once, and calls the
//! part of the program that does the work. Returns the process exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod history;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};

mod gameday;

use crate::agent::{default_state_dir, server};
use crate::experiment;
use crate::fault::{Work, worker_main};
use crate::inventory;
use crate::model::Experiment;
use crate::progress::Progress;
use crate::report::{NotStarted, Report, html, json, junit, markdown, terminal};
use crate::run::RunOptions;
use crate::run::session::{self, Session, StartError};
use crate::units::Dur;

mod coordinator;

/// Exit code for usage errors and invalid experiments: nothing ran.
const EXIT_INVALID: u8 = crate::report::EXIT_INVALID;
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
    Budget {
        file: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Measure faultline itself and print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Check experiment files without touching anything.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// A stress worker process, started by the `cpu-stress` and `memory-stress` faults.
    #[command(name = "stress-worker", hide = true)]
    StressWorker(StressWorkerArgs),
    /// The embedded agent's dead-man switch: reverts a run's faults from its journal as soon as
    /// the run is gone, however it ended.
    #[command(name = "watchdog", hide = true)]
    Watchdog {
        #[arg(long)]
        parent: u32,
        #[arg(long)]
        state_dir: PathBuf,
        /// The run's lease: its faults are reverted when its heartbeat is older than this. The
        /// same bounds as `--lease` (300 ms to an hour): a lease of 0 would revert at once.
        #[arg(long, value_parser = clap::value_parser!(u64).range(300..=3_600_000))]
        lease_ms: u64,
        /// The run's row in the state directory's history, ended as `error` if the run dies
        /// before ending it.
        #[arg(long, value_name = "RUN_ID")]
        history_run: Option<String>,
    },
    /// The parent of one `[[setup]]` fixture: runs it and takes its process group down as soon as
    /// the run that started it is gone.
    #[command(name = "fixture-guard", hide = true)]
    FixtureGuard {
        /// The run's pid.
        #[arg(long)]
        parent: u32,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Print what a run would do — targets, timeline, changes — without doing it.
    Plan {
        file: PathBuf,
        /// Agent inventory: shows which agents each target group resolves to (contacts none).
        #[arg(long)]
        agents: Option<PathBuf>,
        /// Show the agents this seed would choose; without it, the matching agents are listed.
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Write a private CA, an agent certificate and key, a client certificate and a random token
    /// into a directory, for `faultline agent` and the inventory.
    Certs {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A DNS name or IP address the agent certificate is valid for (repeat for several)
        /// [default: localhost and 127.0.0.1].
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
    /// Run the agent daemon: serves the agent API over TLS until SIGTERM, then reverts every fault.
    Agent(AgentArgs),
    /// Kill switch: revert every fault on every agent now; agents refuse new faults until `resume`.
    Halt {
        /// The agent inventory: every agent in it is halted.
        #[arg(long, value_name = "INVENTORY")]
        agents: PathBuf,
    },
    /// Let halted agents accept faults again.
    Resume {
        /// The agent inventory: every agent in it is resumed.
        #[arg(long, value_name = "INVENTORY")]
        agents: PathBuf,
    },
    /// Revert the faults of one run, or all faults, on every agent.
    Revert(RevertArgs),
    /// Run a game day: fire its schedules, run their experiments and record every run, until
    /// SIGTERM (exit 0; a second SIGTERM reverts running runs at once; 2 invalid file).
    Coordinator(coordinator::CoordinatorArgs),
    /// List recorded runs, newest first (every `faultline run` and every coordinator run).
    History(history::HistoryArgs),
    /// Print a recorded run's report, as its run printed it at the end.
    Show(history::ShowArgs),
    /// Fuzz one of the program's input parsers with seeded mutations; exits 1 when any input
    /// panicked (for developers: `scripts/fuzz.sh` runs every target).
    #[command(name = "fuzz", hide = true)]
    Fuzz(FuzzArgs),
    /// Game-day schedules: `schedule next FILE` prints the coming fires and skipped slots.
    #[command(subcommand)]
    Schedule(gameday::ScheduleCommand),
}

/// `--var` and `--vars`, on every command that loads an experiment. Precedence: `--var` beats
/// `--vars` (the last file wins), which beats the experiment's `[vars]` defaults.
#[derive(Args, Default)]
struct VarArgs {
    /// Set a var of the experiment, used as `${NAME}` (repeatable; beats --vars and `[vars]`).
    /// A name the experiment neither declares nor uses is an error.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = experiment::vars::parse_flag)]
    var_flags: Vec<(String, String)>,
    /// A TOML file of vars, `NAME = value` lines (repeatable, later files win; beats `[vars]`).
    /// Names the experiment does not use are ignored: one file can serve many experiments.
    #[arg(long = "vars", value_name = "FILE")]
    var_files: Vec<PathBuf>,
}

#[derive(Args)]
struct FuzzArgs {
    /// What to fuzz (`--list` prints every target).
    #[arg(required_unless_present = "list")]
    target: Option<crate::fuzz::TargetName>,
    /// Stop after this many seconds [default: 60, unless --iterations is given].
    #[arg(long)]
    seconds: Option<u64>,
    /// Stop after this many mutated inputs.
    #[arg(long)]
    iterations: Option<u64>,
    /// Seed of every mutation; drawn and printed when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Extra seed inputs; inputs with outcomes not seen before are added to it.
    #[arg(long, value_name = "DIR")]
    corpus: Option<PathBuf>,
    /// Where panicking inputs are saved (in a subdirectory named after the target).
    #[arg(long, value_name = "DIR", default_value = "target/fuzz-crashes")]
    crash_dir: PathBuf,
    /// Print the targets, one per line.
    #[arg(long)]
    list: bool,
}

#[derive(Args)]
struct StressWorkerArgs {
    #[arg(long)]
    fault_id: String,
    /// The agent's pid: the worker exits as soon as it is no longer its parent.
    #[arg(long)]
    parent: u32,
    #[arg(long)]
    cpu_load: Option<f64>,
    #[arg(long)]
    memory: Option<u64>,
}

/// The command line of the dedicated agent executable (`faultline-agent`): exactly `faultline
/// agent`'s flags, parsed by the same [`AgentArgs`] and run by the same [`agent`].
#[derive(Parser)]
#[command(
    name = "faultline-agent",
    version,
    about = "The faultline agent daemon: serves the agent API over TLS until SIGTERM, then reverts every fault"
)]
struct AgentCli {
    #[command(flatten)]
    args: AgentArgs,
}

/// The one internal mode of the agent executable: the stress workers its faults start by running
/// their own executable again (`fault/stress.rs`).
#[derive(Parser)]
#[command(name = "faultline-agent")]
enum AgentWorkerCli {
    #[command(name = "stress-worker")]
    StressWorker(StressWorkerArgs),
}

/// The entry of the dedicated agent executable: `faultline agent`'s flags (the same parser and
/// the same code), and the hidden `stress-worker` mode its stress faults start.
pub(crate) fn run_agent() -> anyhow::Result<ExitCode> {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|mode| mode == crate::fault::STRESS_WORKER_COMMAND)
    {
        let AgentWorkerCli::StressWorker(args) = AgentWorkerCli::parse();
        return stress_worker(&args);
    }
    agent(AgentCli::parse().args)
}

#[derive(Args)]
struct AgentArgs {
    /// Address to listen on, e.g. 0.0.0.0:7443.
    #[arg(long, value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// File holding the bearer token every request must carry.
    #[arg(long, value_name = "PATH")]
    token_file: PathBuf,
    /// The agent's certificate chain (PEM), e.g. `agent.pem` from `faultline certs`.
    #[arg(long, value_name = "PATH")]
    tls_cert: PathBuf,
    /// The agent's private key (PEM), e.g. `agent-key.pem` from `faultline certs`.
    #[arg(long, value_name = "PATH")]
    tls_key: PathBuf,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, value_name = "PATH")]
    client_ca: Option<PathBuf>,
    /// Where the agent journals its faults [default: /var/lib/faultline/agent].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Safety envelope: allowed kinds, maximum duration and disk fill, protected processes.
    #[arg(long, value_name = "agent.toml")]
    config: Option<PathBuf>,
}

#[derive(Args)]
#[command(group(ArgGroup::new("which").required(true).args(["run", "all"])))]
struct RevertArgs {
    /// The agent inventory: every agent in it is asked.
    #[arg(long, value_name = "INVENTORY")]
    agents: PathBuf,
    /// Revert the faults of this run id (printed at the start of a run and in its report).
    #[arg(long, value_name = "RUN_ID")]
    run: Option<String>,
    /// Revert every active fault.
    #[arg(long)]
    all: bool,
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
        /// Run the proxy thread (and the OS-floor thread) at this SCHED_FIFO priority, 1 to 99,
        /// if permitted (off by default; FAULTLINE_PROXY_RT_PRIORITY does the same for agents).
        #[arg(long, value_name = "PRIORITY", value_parser = crate::proxy::priority::parse_priority)]
        realtime_priority: Option<u8>,
        /// Run only this section (all run by default).
        #[arg(long, value_enum, value_name = "SECTION")]
        only: Option<crate::bench::proxy::Section>,
    },
    /// The history's costs: `faultline history` on a database of N runs, and what a run
    /// spends writing its own rows (fills a temporary SQLite database).
    #[command(hide = true)]
    History {
        /// Synthetic runs in the database.
        #[arg(long, default_value_t = 100_000)]
        runs: usize,
    },
    /// What a coordinator's fire costs in each history store: open, try_lead, and claim_fire +
    /// start_run + finish_run, on a temporary SQLite file and (with --postgres) a temporary
    /// database on a PostgreSQL server.
    #[command(hide = true)]
    HistoryStore {
        /// A PostgreSQL server whose user may create (and drop) a database for the bench.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// Fires timed per store.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
        fires: u32,
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
    /// Write a self-contained HTML report (timeline picture, tables, postmortem) here.
    #[arg(long, value_name = "PATH")]
    report_html: Option<PathBuf>,
    /// Write a short Markdown summary here (GitHub-flavoured: for `$GITHUB_STEP_SUMMARY` and
    /// merge-request comments).
    #[arg(long, value_name = "PATH")]
    summary_md: Option<PathBuf>,
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
    /// Do not record this run in the state directory's history (`history.db`).
    #[arg(long)]
    no_history: bool,
    /// A regression-gate rule, added to the experiment's `[gate]` (replacing its rule for the
    /// same measure), e.g. `--gate 'time_to_recover=1.5x median of last 10 passed'`.
    #[arg(long = "gate", value_name = "NAME=RULE", value_parser = crate::gate::parse_flag)]
    gates: Vec<crate::gate::GateRule>,
    #[command(flatten)]
    vars: VarArgs,
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = s.parse::<Dur>()?.0;
    if d < Duration::from_millis(300) {
        return Err("the lease must be at least 300ms".to_owned());
    }
    // Agents refuse longer leases: a lost coordinator must not hold faults for hours.
    if d > crate::fault::check::MAX_LEASE {
        return Err(format!(
            "the lease must be at most {} (got {})",
            Dur(crate::fault::check::MAX_LEASE),
            Dur(d)
        ));
    }
    Ok(d)
}

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files, vars } => Ok(validate(&files, &vars)),
        Command::Plan {
            file,
            agents,
            seed,
            vars,
        } => {
            let Some(exp) = load(&file, &vars) else {
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            let selection = match runtime()?.block_on(session::resolve(
                &exp,
                agents.as_deref(),
                seed.unwrap_or(0),
            )) {
                Ok(selection) => selection,
                Err(e) => {
                    eprintln!("error: {}", redact(&format!("{e:#}")));
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            };
            // The plan shows resolved values; a secret among them is masked.
            print!("{}", redact(&crate::plan::render(&exp, true)));
            print!(
                "{}",
                redact(&crate::plan::render_selection(&selection, seed))
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_experiment(&args),
        Command::Bench(BenchCommand::Proxy {
            round_trips,
            delays_ms,
            bulk_bytes,
            connections,
            realtime_priority,
            only,
        }) => {
            let settings = crate::bench::proxy::Settings {
                round_trips,
                delays_ms,
                bulk_bytes,
                connections,
                realtime: realtime_priority,
                only,
            };
            crate::bench::proxy::run(&settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::StressWorker(args) => stress_worker(&args),
        Command::Watchdog {
            parent,
            state_dir,
            lease_ms,
            history_run,
        } => Ok(crate::agent::watchdog::main(
            parent,
            &state_dir,
            Duration::from_millis(lease_ms),
            history_run.as_deref(),
        )),
        Command::FixtureGuard { parent, argv } => Ok(crate::fixture::guard_main(parent, &argv)),
        Command::Certs { out, hosts } => {
            let written = crate::certs::generate(&out, &hosts).map_err(anyhow::Error::msg)?;
            println!(
                "wrote (certificates valid 10 years, for {}):",
                written.hosts.join(", ")
            );
            for file in &written.files {
                println!("  {}", file.display());
            }
            println!(
                "start an agent with: faultline agent --listen 0.0.0.0:7443 --token-file {0}/token --tls-cert {0}/agent.pem --tls-key {0}/agent-key.pem",
                out.display()
            );
            println!(
                "and point the inventory's `ca` at {0}/ca.pem and `token_file` at {0}/token",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => agent(args),
        Command::Halt { agents } => runtime()?.block_on(crate::fleet::halt(&agents)),
        Command::Resume { agents } => runtime()?.block_on(crate::fleet::resume(&agents)),
        Command::Revert(args) => {
            runtime()?.block_on(crate::fleet::revert(&args.agents, args.run.as_deref()))
        }
        Command::Budget { file, vars } => budget(&file, &vars),
        Command::Coordinator(args) => coordinator::run(&args),
        Command::Fuzz(args) => fuzz(args),
        Command::Schedule(command) => Ok(gameday::schedule(&command)),
        Command::History(args) => Ok(runtime()?.block_on(history::history(&args))),
        Command::Show(args) => Ok(runtime()?.block_on(history::show(&args))),
        Command::Bench(BenchCommand::History { runs }) => {
            print!(
                "{}",
                crate::bench::history::run(&crate::bench::history::Settings { runs })?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::HistoryStore { postgres, fires }) => {
            let settings = crate::bench::history_store::Settings {
                postgres,
                fires: fires as usize,
            };
            print!("{}", crate::bench::history_store::run(&settings)?);
            Ok(ExitCode::SUCCESS)
        }
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

/// `faultline agent` and the dedicated `faultline-agent` executable.
fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // Before anything opens: the proxies then keep a reserve of descriptors below this
    // limit for the API, whatever their peers do.
    crate::proxy::raise_descriptor_limit();
    let settings = server::Settings {
        listen: args.listen,
        token_file: args.token_file,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        client_ca: args.client_ca,
        state_dir: args
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/faultline/agent")),
        config: args.config,
    };
    runtime()?.block_on(server::run(settings))?;
    Ok(ExitCode::SUCCESS)
}

fn stress_worker(args: &StressWorkerArgs) -> anyhow::Result<ExitCode> {
    let work = match (args.cpu_load, args.memory) {
        (Some(load), None) => Work::Cpu { load },
        (None, Some(bytes)) => Work::Memory { bytes },
        _ => bail!("stress-worker takes exactly one of --cpu-load or --memory"),
    };
    worker_main(&work, args.parent);
    Ok(ExitCode::SUCCESS)
}

fn fuzz(args: FuzzArgs) -> anyhow::Result<ExitCode> {
    let Some(target) = args.target.filter(|_| !args.list) else {
        for t in crate::fuzz::TargetName::ALL {
            println!("{}", t.as_str());
        }
        return Ok(ExitCode::SUCCESS);
    };
    let settings = crate::fuzz::Settings {
        target,
        seconds: args.seconds,
        iterations: args.iterations,
        seed: args.seed.unwrap_or_else(rand::random),
        corpus: args.corpus,
        crash_dir: args.crash_dir,
    };
    let summary = crate::fuzz::run(&settings).map_err(anyhow::Error::msg)?;
    print!("{}", summary.render());
    Ok(if summary.panics.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn budget(file: &Path, vars: &VarArgs) -> anyhow::Result<ExitCode> {
    let Some(exp) = load(file, vars) else {
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
            eprintln!("error: could not check the error budget: {}", redact(&e));
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

fn validate(files: &[PathBuf], vars: &VarArgs) -> ExitCode {
    let mut ok = true;
    for file in files {
        if let Some(valid) = gameday::validate(file) {
            ok &= valid;
            continue;
        }
        match load(file, vars) {
            Some(exp) => println!(
                "{}: ok ({} probe(s), {} fault(s))",
                file.display(),
                exp.steady_state.probes.len(),
                exp.faults.len()
            ),
            None => ok = false,
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    }
}

/// Says what a probe does that weakens what it proves (`insecure = true`), on standard error,
/// however quiet the run: `validate`, `plan` and `run` all say it.
fn warn_probes(exp: &Experiment) {
    for w in crate::probe::warnings(&exp.steady_state.probes) {
        eprintln!("warning: {w}");
    }
}

/// Loads an experiment with the command line's vars; on failure prints why (exit 2 follows).
fn load(file: &Path, vars: &VarArgs) -> Option<Experiment> {
    let overrides = match experiment::vars::Overrides::new(&vars.var_files, &vars.var_flags) {
        Ok(overrides) => overrides,
        Err(e) => {
            eprintln!("error: {e}");
            return None;
        }
    };
    match experiment::load_with(file, &overrides) {
        Ok(exp) => {
            warn_probes(&exp);
            Some(exp)
        }
        // A file that is not there is not an invalid experiment: say which it is.
        Err(e) if e.unreadable => {
            eprintln!("error: {}", redact(&e.to_string()));
            None
        }
        Err(e) => {
            eprintln!("error: invalid experiment {}", redact(&e.to_string()));
            None
        }
    }
}

/// Masks the experiment's secrets in what is printed (`secrets.rs`).
fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    crate::secrets::redact(text)
}

fn run_experiment(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let Some(mut exp) = load(&args.file, &args.vars) else {
        // No report: without a loaded experiment there is nothing it could describe.
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    crate::gate::merge(&mut exp.gate, &args.gates);
    // Drawn here, not in the run, because the choice of agents already depends on it.
    let seed = args.seed.unwrap_or_else(rand::random);
    let runtime = runtime()?;
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let started_at = jiff::Timestamp::now();
    let run_id = crate::run::new_run_id(started_at);
    let history_dir = (!args.no_history).then_some(state_dir.as_path());
    // A run that ends before its baseline still writes every report it was asked for and its
    // history row (started and ended at once: nothing ran that the watchdog would have to end),
    // so a pipeline that uploads them finds them, and they say why.
    let not_started = |selection: Option<&inventory::Selection>, why: NotStarted| {
        let faults = session::planned_faults(&exp, selection);
        let report =
            Report::not_started(&exp, &run_id, seed, started_at, args.dry_run, faults, why);
        let recorder = runtime.block_on(history::Recorder::start(history_dir, &exp, &run_id, seed));
        end_run(&runtime, recorder, report, args, &exp.notify)
    };
    let selection = match runtime.block_on(session::resolve(&exp, args.agents.as_deref(), seed)) {
        Ok(selection) => selection,
        Err(e) => {
            let reason = format!("{e}; nothing was injected");
            eprintln!("error: {}", redact(&reason));
            // An unusable inventory is invalid input like a bad experiment: exit 2, with reports.
            let why = match e {
                StartError::Invalid(_) => NotStarted::Invalid(reason),
                StartError::Halted(_) | StartError::Unreachable(_) => NotStarted::Error(reason),
            };
            return not_started(None, why);
        }
    };
    if args.dry_run {
        // Fixtures are not running yet, so "what matches now" would mislead for self-contained experiments.
        print!(
            "{}",
            redact(&crate::plan::render(&exp, exp.setup.is_empty()))
        );
        print!(
            "{}",
            redact(&crate::plan::render_selection(&selection, Some(seed)))
        );
    }
    if !args.dry_run {
        if let Err(e) = runtime.block_on(session::preflight(&selection)) {
            let reason = format!("{e}; nothing was injected");
            eprintln!("error: {}", redact(&reason));
            return not_started(Some(&selection), NotStarted::Error(reason));
        }
    }
    // Recorded before the session recovers the journal: from here every exit path ends the row.
    let recorder = runtime.block_on(history::Recorder::start(history_dir, &exp, &run_id, seed));
    let progress = Progress::new(args.quiet);
    let recorded = (!args.no_history).then_some(run_id.as_str());
    let session = runtime.block_on(Session::open_for(
        state_dir.clone(),
        args.lease,
        &progress,
        recorded,
    ));
    let mut session = match session {
        Ok(session) => session,
        Err(e) => {
            progress.finish();
            let reason = format!("{e:#}; nothing was injected");
            eprintln!("error: {}", redact(&reason));
            let faults = session::planned_faults(&exp, Some(&selection));
            let why = NotStarted::Error(reason);
            let report =
                Report::not_started(&exp, &run_id, seed, started_at, args.dry_run, faults, why);
            return end_run(&runtime, recorder, report, args, &exp.notify);
        }
    };
    let opts = RunOptions {
        seed: Some(seed),
        dry_run: args.dry_run,
        lease: args.lease,
        recovered: session.take_recovered(),
        run_id: Some(run_id.clone()),
        stop: None,
    };
    let mut report = runtime.block_on(session.run(&exp, &selection, opts, &progress));
    progress.finish();
    // Judged before the row is ended, so the history keeps the gated verdict and reason. Only a
    // run that passed is judged, so a run that ended before its baseline never reaches it.
    runtime.block_on(crate::gate::judge_cli_run(
        &mut report,
        &exp.gate,
        history_dir,
    ));
    end_run(&runtime, recorder, report, args, &exp.notify)
}

/// How every `run` ends, however far it got: the terminal summary, the history row's end, every
/// report file asked for, and the report's exit code.
fn end_run(
    runtime: &tokio::runtime::Runtime,
    recorder: history::Recorder,
    mut report: Report,
    args: &RunArgs,
    notify: &[crate::notify::Notify],
) -> anyhow::Result<ExitCode> {
    // Every sink below (terminal, history, files, webhooks) gets the report with its secrets
    // masked; each also masks its own text again.
    report.redact_secrets();
    let report = &report;
    print!("{}", redact(&terminal::render(report)));
    runtime.block_on(recorder.finish(report));
    let written = write_reports(report, args);
    // After the verdict and the files, and bounded: a receiver never holds up or changes a run.
    runtime.block_on(crate::notify::send_within(
        notify,
        crate::notify::Outcome::of_report(report, None),
        crate::notify::CLI_WAIT,
        |l| eprintln!("warning: {}", redact(l)),
    ));
    written?;
    Ok(ExitCode::from(report.exit_code()))
}

/// Writes every report `run` was asked for, each from the same `Report`, so a run that ended
/// before its baseline and one that finished get the same files. One failed write does not stop
/// the others; the error names every file that could not be written.
fn write_reports(report: &Report, args: &RunArgs) -> anyhow::Result<()> {
    type Render = fn(&Report) -> String;
    let renderings: [(&str, &Option<PathBuf>, Render); 4] = [
        ("JSON report", &args.report_json, json::render),
        ("JUnit report", &args.junit, junit::render),
        ("HTML report", &args.report_html, html::render),
        ("Markdown summary", &args.summary_md, markdown::render),
    ];
    let mut failed = Vec::new();
    for (what, path, render) in renderings {
        let Some(path) = path else { continue };
        if let Err(e) = std::fs::write(path, redact(&render(report)).as_bytes()) {
            failed.push(format!(
                "failed to write the {what} to {}: {e}",
                path.display()
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, parse_lease};
    use crate::fault::check::MAX_LEASE;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap checks unique argument ids and the like only when asked (or at run time).
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn leases_are_bounded_on_the_command_line_and_for_the_watchdog() {
        assert_eq!(
            parse_lease("2h").unwrap_err(),
            "the lease must be at most 1h (got 2h)"
        );
        assert_eq!(
            parse_lease("100ms").unwrap_err(),
            "the lease must be at least 300ms"
        );
        let watchdog = |ms: &str| {
            Cli::try_parse_from([
                "faultline",
                "watchdog",
                "--parent",
                "1",
                "--state-dir",
                "/x",
                "--lease-ms",
                ms,
            ])
        };
        assert!(watchdog("0").is_err(), "a zero lease would revert at once");
        assert!(watchdog(&(MAX_LEASE.as_millis() + 1).to_string()).is_err());
        assert!(watchdog("5000").is_ok());
    }
}
