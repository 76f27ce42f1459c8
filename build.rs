//! Link settings of the executables (not of the tests): packed relative relocations.
//!
//! A position-independent executable holds one relocation per pointer in its read-only data
//! (36 000 in `faultline`, 870 KB of `.rela.dyn`) that the dynamic loader reads and applies at
//! every start. `-z pack-relative-relocs` stores them as a bitmap (`.relr.dyn`, about 10 KB): the
//! loader reads 1% of the bytes, the process keeps fewer pages of the executable resident (an idle
//! agent about 0.3-0.6 MiB less, a run's peak 0.5 MiB less) and starts faster (issue 12;
//! `scripts/bench-run.sh`, `scripts/bench-agents.sh`). Needs GNU ld 2.38 or lld, and glibc 2.36
//! where the executables run (Debian 12, Ubuntu 22.10 and later); ASLR is unchanged.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
