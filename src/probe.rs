//! Owns probing: one task per probe runs its check every `every` for the whole run and sends each
//! [`Sample`] to the run loop. The checks themselves are one file each.

mod command;
mod http;
mod tcp;

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::model::{Check, ProbeSpec};

/// One observation of one probe.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) probe: usize,
    /// When the check started.
    pub(crate) at: Instant,
    pub(crate) ok: bool,
    pub(crate) latency: Duration,
    pub(crate) error: Option<String>,
}

/// A check ready to run repeatedly, built once per probe.
enum Prober {
    Http(http::HttpCheck),
    Tcp(String),
    Command(command::CommandCheck),
}

impl Prober {
    fn new(check: &Check, timeout: Duration) -> Result<Prober, String> {
        Ok(match check {
            Check::Http { url, status } => {
                Prober::Http(http::HttpCheck::new(url, status, timeout)?)
            }
            Check::Tcp { addr } => Prober::Tcp(addr.clone()),
            Check::Command {
                argv,
                expect_exit,
                stdout,
            } => Prober::Command(command::CommandCheck {
                argv: argv.clone(),
                expect_exit: *expect_exit,
                stdout: stdout.clone(),
            }),
        })
    }

    async fn check(&self) -> Result<(), String> {
        match self {
            Prober::Http(h) => h.check().await,
            Prober::Tcp(addr) => tcp::check(addr).await,
            Prober::Command(c) => c.check().await,
        }
    }
}

/// Starts every probe. They stop when `stop` turns true or the receiver is dropped.
pub(crate) fn spawn_all(
    probes: &[ProbeSpec],
    tx: &mpsc::UnboundedSender<Sample>,
    stop: &watch::Receiver<bool>,
) -> Result<JoinSet<()>, String> {
    let mut set = JoinSet::new();
    for (index, spec) in probes.iter().enumerate() {
        let prober = Prober::new(&spec.check, spec.timeout)
            .map_err(|e| format!("probe `{}`: {e}", spec.name))?;
        let (every, timeout) = (spec.every, spec.timeout);
        let tx = tx.clone();
        let mut stop = stop.clone();
        set.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                if *stop.borrow() {
                    return;
                }
                let at = Instant::now();
                let outcome = match tokio::time::timeout(timeout, prober.check()).await {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "timed out after {}",
                        humantime::format_duration(timeout)
                    )),
                };
                let latency = at.elapsed();
                let sample = Sample {
                    probe: index,
                    at,
                    ok: outcome.is_ok(),
                    latency,
                    error: outcome.err(),
                };
                if tx.send(sample).is_err() {
                    return;
                }
            }
        });
    }
    Ok(set)
}
