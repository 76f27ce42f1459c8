//! Owns the `command` probe: run a program (argv, no shell); success is the expected exit code and,
//! optionally, standard output matching a regex.

use std::process::Stdio;

use regex::Regex;

pub(crate) struct CommandCheck {
    pub(crate) argv: Vec<String>,
    pub(crate) expect_exit: i32,
    pub(crate) stdout: Option<Regex>,
}

impl CommandCheck {
    pub(crate) async fn check(&self) -> Result<(), String> {
        let output = tokio::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // The probe's timeout drops this future; the child must not outlive it.
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("failed to run `{}`: {e}", self.argv[0]))?;
        match output.status.code() {
            Some(code) if code == self.expect_exit => {}
            Some(code) => return Err(format!("exited with {code}, expected {}", self.expect_exit)),
            None => return Err("killed by a signal".to_owned()),
        }
        if let Some(re) = &self.stdout {
            let text = String::from_utf8_lossy(&output.stdout);
            if !re.is_match(&text) {
                return Err(format!("output did not match /{re}/"));
            }
        }
        Ok(())
    }
}
