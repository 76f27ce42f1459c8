//! Owns the `command` probe: run a program (argv, no shell); success is the expected exit code and,
//! optionally, standard output matching a regex. With `value = true` the output is also read as a
//! number (a queue depth, a load average), which is how a probe reports saturation.

use std::process::Stdio;

use regex::Regex;

use super::Failure;

pub(crate) struct CommandCheck {
    pub(crate) argv: Vec<String>,
    pub(crate) expect_exit: i32,
    pub(crate) stdout: Option<Regex>,
    pub(crate) value: bool,
}

impl CommandCheck {
    /// The number printed (when `value` is set) and whether the command passed.
    pub(crate) async fn check(&self) -> (Option<f64>, Result<(), Failure>) {
        let output = match tokio::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // The probe's timeout drops this future; the child must not outlive it.
            .kill_on_drop(true)
            .output()
            .await
        {
            Ok(output) => output,
            Err(e) => {
                let cause = format!("failed to run `{}` ({})", self.argv[0], e.kind());
                let message = format!("failed to run `{}`: {e}", self.argv[0]);
                return (None, Err(Failure::new(cause, message)));
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let value = if self.value {
            text.trim().parse::<f64>().ok()
        } else {
            None
        };
        (value, self.judge(output.status.code(), &text, value))
    }

    fn judge(&self, code: Option<i32>, text: &str, value: Option<f64>) -> Result<(), Failure> {
        match code {
            Some(code) if code == self.expect_exit => {}
            Some(code) => {
                return Err(Failure::new(
                    format!("exit code {code}"),
                    format!("exited with {code}, expected {}", self.expect_exit),
                ));
            }
            None => return Err(Failure::plain("killed by a signal")),
        }
        if self.value && value.is_none() {
            let shown: String = text.trim().chars().take(40).collect();
            return Err(Failure::new(
                "output is not a number",
                format!("output `{shown}` is not a number (the probe has `value = true`)"),
            ));
        }
        if let Some(re) = &self.stdout {
            if !re.is_match(text) {
                return Err(Failure::plain(format!("output did not match /{re}/")));
            }
        }
        Ok(())
    }
}
