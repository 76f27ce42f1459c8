//! The `faultline-agent` executable: the agent daemon alone, with exactly `faultline agent`'s
//! flags and the same code (see `lib.rs`). It links none of the coordinator, reports, probes or
//! dashboard, so a deployed agent maps and touches less of its executable.

fn main() -> std::process::ExitCode {
    faultline::agent_main()
}
