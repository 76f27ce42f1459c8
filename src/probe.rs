//! Owns probing: one task per probe runs its check every `every` for the whole run and sends each
//! [`Sample`] to the run loop. The checks themselves are one file each.

mod command;
mod grpc;
mod http;
pub(crate) mod prometheus;
mod tcp;
pub(crate) mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The short, stable cause of a failed sample (`status 503`, `connection refused`), the same
    /// for every sample that failed the same way, so the verdict can count them.
    pub(crate) cause: Option<String>,
    /// The number the check read, for probes that read one (a Prometheus query, a command's
    /// output with `value = true`); kept for failed samples too, since the value is often why.
    pub(crate) value: Option<f64>,
    /// Where the time went, for probes that can tell (`http`, `grpc`).
    pub(crate) timing: Timing,
}

/// The parts of a sample's latency. `None` is "not measured", never zero: a request sent on a
/// connection kept from an earlier sample made no connection, so it has no connect time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Timing {
    /// Name resolution, TCP connect and the TLS handshake of a new connection.
    pub(crate) connect: Option<Duration>,
    /// From sending the request to the response's status line and headers.
    pub(crate) first_byte: Option<Duration>,
}

/// Times the connections a client makes, so a sample can tell whether its request made one and
/// how long it took. Each sample starts a new generation; a connection counts for the sample
/// whose generation it was started in, so one finishing late for an earlier (timed out) sample
/// is never taken as this sample's.
#[derive(Clone, Default)]
pub(crate) struct ConnectTimer {
    generation: Arc<AtomicU64>,
    last: Arc<Mutex<Option<(u64, Duration)>>>,
}

impl ConnectTimer {
    /// Starts a sample's generation.
    pub(crate) fn begin(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The connect time of a connection made for generation `g`, if one was.
    pub(crate) fn connect_time(&self, g: u64) -> Option<Duration> {
        let last = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.filter(|(made_in, _)| *made_in == g).map(|(_, d)| d)
    }

    /// Times `connecting`, recording it when it succeeds.
    pub(crate) fn time<F, T, E>(
        &self,
        connecting: F,
    ) -> impl std::future::Future<Output = Result<T, E>> + Send + 'static
    where
        F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    {
        let generation = self.generation.load(Ordering::SeqCst);
        let last = Arc::clone(&self.last);
        async move {
            let start = Instant::now();
            let made = connecting.await;
            if made.is_ok() {
                *last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((generation, start.elapsed()));
            }
            made
        }
    }
}

/// The warnings an experiment's probes deserve, said at `validate`, `plan` and `run`:
/// certificate checks turned off.
pub(crate) fn warnings(probes: &[ProbeSpec]) -> Vec<String> {
    probes
        .iter()
        .filter(|p| match &p.check {
            Check::Http(h) => h.tls.insecure,
            Check::Grpc(g) => g.tls.as_ref().is_some_and(|t| t.insecure),
            _ => false,
        })
        .map(|p| {
            format!(
                "probe `{}` has `insecure = true`: its server's TLS certificate is not checked, so it may be talking to anyone",
                p.name
            )
        })
        .collect()
}

/// The `plan` line of an `http` or `grpc` probe; `None` for the other kinds. Header values are
/// not shown (they often hold credentials), nor are bodies.
pub(crate) fn describe(check: &Check) -> Option<String> {
    match check {
        Check::Http(h) => Some(http::describe(h)),
        Check::Grpc(g) => Some(grpc::describe(g)),
        _ => None,
    }
}

/// Why one check failed: a short cause shared by every sample that failed the same way, so a
/// reason can say "status 503 in 17/20", and the full message kept in the report's samples.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Failure {
    pub(crate) cause: String,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(cause: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            cause: cause.into(),
            message: message.into(),
        }
    }

    /// A failure whose message is already short and stable enough to count.
    pub(crate) fn plain(message: impl Into<String>) -> Failure {
        let message = message.into();
        Failure {
            cause: message.clone(),
            message,
        }
    }
}

/// The operating system's name for the first IO error in an error's chain ("connection refused",
/// "timed out"): stable across samples, unlike the message around it.
pub(crate) fn io_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind().to_string());
        }
        source = err.source();
    }
    None
}

/// A check ready to run repeatedly, built once per probe.
enum Prober {
    Http(Box<http::HttpCheck>),
    Grpc(Box<grpc::GrpcCheck>),
    Tcp(String),
    Command(command::CommandCheck),
    Prometheus(prometheus::PrometheusCheck),
}

impl Prober {
    fn new(check: &Check, timeout: Duration) -> Result<Prober, String> {
        Ok(match check {
            Check::Http(spec) => Prober::Http(Box::new(http::HttpCheck::new(spec, timeout)?)),
            Check::Grpc(spec) => Prober::Grpc(Box::new(grpc::GrpcCheck::new(spec, timeout)?)),
            Check::Tcp { addr } => Prober::Tcp(addr.clone()),
            Check::Command {
                argv,
                expect_exit,
                stdout,
                value,
            } => Prober::Command(command::CommandCheck {
                argv: argv.clone(),
                expect_exit: *expect_exit,
                stdout: stdout.clone(),
                value: *value,
            }),
            Check::Prometheus {
                url,
                query,
                threshold,
            } => Prober::Prometheus(prometheus::PrometheusCheck::new(
                url, query, *threshold, timeout,
            )?),
        })
    }

    /// The value read, if the check reads one, where the time went, and whether it passed.
    async fn check(&self) -> (Option<f64>, Timing, Result<(), Failure>) {
        match self {
            Prober::Http(h) => {
                let (timing, outcome) = h.check().await;
                (None, timing, outcome)
            }
            Prober::Grpc(g) => {
                let (timing, outcome) = g.check().await;
                (None, timing, outcome)
            }
            Prober::Tcp(addr) => (None, Timing::default(), tcp::check(addr).await),
            Prober::Command(c) => {
                let (value, outcome) = c.check().await;
                (value, Timing::default(), outcome)
            }
            Prober::Prometheus(p) => {
                let (value, outcome) = p.check().await;
                (value, Timing::default(), outcome)
            }
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
                let (value, timing, outcome) =
                    match tokio::time::timeout(timeout, prober.check()).await {
                        Ok(checked) => checked,
                        Err(_) => (
                            None,
                            Timing::default(),
                            Err(Failure::new(
                                "timed out",
                                format!("timed out after {}", humantime::format_duration(timeout)),
                            )),
                        ),
                    };
                let latency = at.elapsed();
                let (error, cause) = match outcome {
                    Ok(()) => (None, None),
                    Err(f) => (Some(f.message), Some(f.cause)),
                };
                let sample = Sample {
                    probe: index,
                    at,
                    ok: error.is_none(),
                    latency,
                    error,
                    cause,
                    value,
                    timing,
                };
                if tx.send(sample).is_err() {
                    return;
                }
            }
        });
    }
    Ok(set)
}
