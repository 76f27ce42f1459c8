//! A `faultline coordinator` process for integration tests: its log in a file next to its game
//! day; dropped, it gets two SIGTERMs (the second reverts at once), then SIGKILL if still there.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

pub struct Coordinator {
    child: Child,
    log: PathBuf,
}

impl Coordinator {
    pub fn start(gameday: &Path) -> Coordinator {
        Coordinator::start_with(gameday, &[])
    }

    pub fn start_with(gameday: &Path, env: &[(&str, &str)]) -> Coordinator {
        let log = gameday.with_extension("log");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the coordinator log");
        let child = Command::new(BIN)
            .arg("coordinator")
            .arg(gameday)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .envs(env.iter().copied())
            .spawn()
            .expect("start faultline coordinator");
        Coordinator { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Waits for the process to exit; panics with its log when it does not within `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the coordinator") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the coordinator did not exit within {within:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if !self.running() {
            return;
        }
        // Not `signal`, which asserts: a panic here, while a failed test unwinds, would abort.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(100));
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
