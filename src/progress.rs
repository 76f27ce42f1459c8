//! Owns what a person sees while a run is going: a live status line on a terminal, plain
//! timestamped log lines otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub(crate) struct Progress {
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A live display when stderr is a terminal, plain lines otherwise.
    pub(crate) fn new(quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .expect("valid progress template"),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress {
            started: Instant::now(),
            bar,
        }
    }

    /// A line that stays: phase changes, injections, reverts.
    pub(crate) fn log(&self, line: &str) {
        let stamp = format!("[{:>7.2}s] {line}", self.started.elapsed().as_secs_f64());
        match &self.bar {
            Some(bar) => bar.println(stamp),
            None => eprintln!("{stamp}"),
        }
    }

    /// The live status (phase, probe health). Only shown on a terminal.
    pub(crate) fn status(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_owned());
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
