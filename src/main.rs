//! The `faultline` executable: every subcommand (see `lib.rs`).

fn main() -> std::process::ExitCode {
    faultline::main()
}
