//! Owns what a person sees while a run is going: a live status line on a terminal, plain
//! timestamped log lines otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub(crate) struct Progress {
    started: Instant,
    bar: Option<ProgressBar>,
    stage: Stage,
}

/// Where a run stands (before, during, after), shared with whoever shows it live: the
/// coordinator's dashboard and `/metrics` read it while the run loop sets it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stage(Arc<AtomicU8>);

impl Stage {
    const NAMES: [&'static str; 3] = ["before", "during", "after"];

    /// The phase of the run, once its baseline has started and until it is done.
    pub(crate) fn get(&self) -> Option<&'static str> {
        let i = self.0.load(Ordering::Relaxed);
        Stage::NAMES.get(usize::from(i).checked_sub(1)?).copied()
    }

    fn set(&self, name: Option<&str>) {
        let i = name
            .and_then(|n| Stage::NAMES.iter().position(|x| *x == n))
            .map_or(0, |i| i + 1);
        self.0.store(i as u8, Ordering::Relaxed);
    }
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
            stage: Stage::default(),
        }
    }

    /// A line that stays: phase changes, injections, reverts.
    pub(crate) fn log(&self, line: &str) {
        let line = crate::secrets::redact(line);
        let stamp = format!("[{:>7.2}s] {line}", self.started.elapsed().as_secs_f64());
        match &self.bar {
            Some(bar) => bar.println(stamp),
            None => eprintln!("{stamp}"),
        }
    }

    /// The run's phase as others see it live (`before`, `during`, `after`, or None when done).
    pub(crate) fn set_stage(&self, name: Option<&str>) {
        self.stage.set(name);
    }

    /// A handle on the run's phase, for a live display elsewhere.
    pub(crate) fn stage(&self) -> Stage {
        self.stage.clone()
    }

    /// The live status (phase, probe health). Only shown on a terminal.
    pub(crate) fn status(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(crate::secrets::redact(text).into_owned());
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
