//! Owns the `command` probe: run a program (argv, no shell); success is the expected exit code and,
//! optionally, standard output matching a regex. With `value = true` the output is also read as a
//! number (a queue depth, a load average), which is how a probe reports saturation.

use std::process::Stdio;

use regex::Regex;

pub(crate) struct CommandCheck {
    pub(crate) argv: Vec<String>,
    pub(crate) expect_exit: i32,
    pub(crate) stdout: Option<Regex>,
    pub(crate) value: bool,
}

impl CommandCheck {
    /// The number printed (when `value` is set) and whether the command passed.
    pub(crate) async fn check(&self) -> (Option<f64>, Result<(), String>) {
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
            Err(e) => return (None, Err(format!("failed to run `{}`: {e}", self.argv[0]))),
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let value = if self.value {
            text.trim().parse::<f64>().ok()
        } else {
            None
        };
        (value, self.judge(output.status.code(), &text, value))
    }

    fn judge(&self, code: Option<i32>, text: &str, value: Option<f64>) -> Result<(), String> {
        match code {
            Some(code) if code == self.expect_exit => {}
            Some(code) => return Err(format!("exited with {code}, expected {}", self.expect_exit)),
            None => return Err("killed by a signal".to_owned()),
        }
        if self.value && value.is_none() {
            let shown: String = text.trim().chars().take(40).collect();
            return Err(format!(
                "output `{shown}` is not a number (the probe has `value = true`)"
            ));
        }
        if let Some(re) = &self.stdout {
            if !re.is_match(text) {
                return Err(format!("output did not match /{re}/"));
            }
        }
        Ok(())
    }
}
