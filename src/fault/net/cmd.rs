//! Owns running `nft`, `tc` and friends: an argument vector (never a shell), the C locale, and the
//! one place a tool's error output is turned into a typed [`Failure`].

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

/// One program run with an argument vector, printable for `plan`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cmd {
    pub(crate) program: &'static str,
    pub(crate) args: Vec<String>,
}

impl Cmd {
    pub(crate) fn new(program: &'static str, args: &[&str]) -> Cmd {
        Cmd {
            program,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// Runs the program, feeding `stdin` if given, and returns its standard output. The tool runs
    /// in the C locale, so its messages are the ones [`Failure::of`] knows, whatever the host's
    /// language.
    pub(crate) fn run(&self, stdin: Option<&str>) -> Result<String, CmdError> {
        let mut child = Command::new(self.program)
            .args(&self.args)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CmdError::Spawn {
                program: self.program,
                source,
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|source| CmdError::Io {
                    cmd: self.to_string(),
                    source,
                })?;
        }
        let out = child.wait_with_output().map_err(|source| CmdError::Io {
            cmd: self.to_string(),
            source,
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(CmdError::Failed {
                cmd: self.to_string(),
                status: out.status,
                failure: Failure::of(&stderr),
                stderr: one_line(&stderr),
            })
        }
    }
}

/// Commands one per line, as `plan` prints them.
pub(crate) fn lines(cmds: &[Cmd]) -> String {
    cmds.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why a tool run failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CmdError {
    #[error("failed to run `{program}`: {source}{}", install_hint(program))]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("failed to talk to `{cmd}`: {source}")]
    Io { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        failure: Failure,
        stderr: String,
    },
}

impl CmdError {
    /// What kind of failure the tool reported; [`Failure::Other`] when it did not run at all.
    pub(crate) fn failure(&self) -> Failure {
        match self {
            CmdError::Failed { failure, .. } => *failure,
            CmdError::Spawn { .. } | CmdError::Io { .. } => Failure::Other,
        }
    }
}

impl From<CmdError> for String {
    fn from(e: CmdError) -> String {
        e.to_string()
    }
}

fn install_hint(program: &str) -> &'static str {
    match program {
        "nft" => " (is the `nftables` package installed?)",
        "tc" | "ip" => " (is the `iproute2` package installed?)",
        _ => "",
    }
}

/// The failures callers decide on, read from a tool's error output in the C locale. The one
/// place faultline reads a tool's English.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// nft: the table (or other object) named does not exist (ENOENT).
    NoSuchObject,
    /// tc: the device named does not exist.
    NoDevice,
    /// tc: the kernel has no such qdisc kind (not built, no module).
    UnknownQdisc,
    Other,
}

impl Failure {
    fn of(stderr: &str) -> Failure {
        if stderr.contains("Cannot find device") {
            Failure::NoDevice
        } else if stderr.contains("Specified qdisc kind is unknown") {
            Failure::UnknownQdisc
        } else if stderr.contains("No such file or directory") {
            Failure::NoSuchObject
        } else {
            Failure::Other
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// Joins the lines of a program's error output, so a message stays one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_typed_from_the_tools_c_locale_output() {
        assert_eq!(
            Failure::of("Error: No such file or directory\nlist table inet faultline_x"),
            Failure::NoSuchObject
        );
        assert_eq!(
            Failure::of("Cannot find device \"nosuch0\""),
            Failure::NoDevice
        );
        assert_eq!(
            Failure::of("Error: Specified qdisc kind is unknown."),
            Failure::UnknownQdisc
        );
        assert_eq!(
            Failure::of("Error: Operation not permitted"),
            Failure::Other
        );
    }

    #[test]
    fn a_tool_runs_in_the_c_locale_and_its_failure_is_typed() {
        // `sh -c` with a fixed script (no data in it) stands in for a tool: it reports its
        // locale and fails like nft does on a missing table.
        let cmd = Cmd::new(
            "sh",
            &[
                "-c",
                "echo \"$LC_ALL\"; echo 'Error: No such file or directory' >&2; exit 1",
            ],
        );
        let e = cmd.run(None).unwrap_err();
        assert_eq!(e.failure(), Failure::NoSuchObject, "{e}");
        let out = Cmd::new("sh", &["-c", "echo \"$LC_ALL\""])
            .run(None)
            .unwrap();
        assert_eq!(out.trim(), "C");
        let missing = Cmd::new("faultline-no-such-tool", &[])
            .run(None)
            .unwrap_err();
        assert_eq!(missing.failure(), Failure::Other);
        assert!(
            missing
                .to_string()
                .starts_with("failed to run `faultline-no-such-tool`"),
            "{missing}"
        );
    }
}
