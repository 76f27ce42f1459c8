//! Owns `faultline bench probes`: how many probe samples one run sustains on this machine and
//! what they cost in CPU. It drives the real probe tasks (the same `probe::spawn_all` a run uses)
//! with TCP probes against a listener on loopback, collects samples the way the run loop does,
//! and prints figures. A benchmark, not a test: nothing here asserts a speed.
//! `faultline bench proxy` is in `bench/proxy.rs`, `faultline bench history` in `bench/history.rs`.

pub(crate) mod history;
pub(crate) mod history_store;
pub(crate) mod proxy;

use std::fmt::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::model::{Check, ProbeSpec, Slo};
use crate::probe::{self, Sample};
use crate::sli::Stats;
use crate::units::{Dur, Percent, SuccessBound, format_ms};

pub(crate) struct BenchSettings {
    pub(crate) probes: usize,
    pub(crate) every: Duration,
    pub(crate) duration: Duration,
}

/// CPU time used so far, in seconds: user + system.
fn cpu_seconds(stat: &procfs::process::Stat) -> f64 {
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

fn process_cpu() -> Result<f64, String> {
    let me = procfs::process::Process::myself()
        .map_err(|e| format!("failed to read /proc/self: {e}"))?;
    me.stat()
        .map(|s| cpu_seconds(&s))
        .map_err(|e| format!("failed to read /proc/self/stat: {e}"))
}

fn thread_cpu(tid: i32) -> Result<f64, String> {
    let me = procfs::process::Process::myself()
        .map_err(|e| format!("failed to read /proc/self: {e}"))?;
    let task = me
        .task_from_tid(tid)
        .map_err(|e| format!("failed to read thread {tid}: {e}"))?;
    task.stat()
        .map(|s| cpu_seconds(&s))
        .map_err(|e| format!("failed to read thread {tid} stat: {e}"))
}

/// Peak resident memory of this process, from `VmHWM` in /proc/self/status.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The listener the probes connect to: a plain thread accepting and dropping connections, so
/// its CPU can be read on its own and taken out of the probing figure.
struct Listener {
    port: u16,
    tid: i32,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Listener {
    fn start() -> Result<Listener, String> {
        let socket = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("failed to bind a loopback port: {e}"))?;
        let port = socket
            .local_addr()
            .map_err(|e| format!("failed to read the bound port: {e}"))?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let _ = tid_tx.send(nix::unistd::gettid().as_raw());
            for conn in socket.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                drop(conn);
            }
        });
        let tid = tid_rx
            .recv()
            .map_err(|_| "the listener thread died at start".to_owned())?;
        Ok(Listener {
            port,
            tid,
            stop,
            thread,
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // One more connection wakes the blocking accept so the thread sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        let _ = self.thread.join();
    }
}

/// Runs the benchmark and returns the figures as text.
pub(crate) fn probes(settings: &BenchSettings) -> anyhow::Result<String> {
    let listener = Listener::start().map_err(anyhow::Error::msg)?;
    let addr = format!("127.0.0.1:{}", listener.port);
    let specs: Vec<ProbeSpec> = (0..settings.probes)
        .map(|i| ProbeSpec {
            name: format!("tcp {i}"),
            check: Check::Tcp { addr: addr.clone() },
            every: settings.every,
            timeout: Duration::from_secs(1),
            slo: Slo {
                success: SuccessBound::Absolute(1.0),
                p50: None,
                p95: None,
                p99: None,
            },
            slo_during: None,
            signal: None,
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cpu_before = process_cpu().map_err(anyhow::Error::msg)?;
    let listener_before = thread_cpu(listener.tid).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let (samples, wall) = runtime.block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks = probe::spawn_all(&specs, &tx, &stop_rx).map_err(anyhow::Error::msg)?;
        drop(tx);
        // Kept per probe, as the run loop keeps them, so the cost of holding them is counted.
        let mut kept: Vec<Vec<Sample>> = vec![Vec::new(); specs.len()];
        let deadline = tokio::time::sleep(settings.duration);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                Some(sample) = rx.recv() => kept[sample.probe].push(sample),
                () = &mut deadline => break,
            }
        }
        // Checks still in flight finish after this; their samples are not counted.
        let wall = started.elapsed();
        let _ = stop_tx.send(true);
        tasks.join_all().await;
        anyhow::Ok((kept, wall))
    })?;
    let cpu = process_cpu().map_err(anyhow::Error::msg)? - cpu_before;
    let listener_cpu = thread_cpu(listener.tid).map_err(anyhow::Error::msg)? - listener_before;
    listener.stop();
    drop(runtime);

    let stats = Stats::of(samples.iter().flatten());
    let asked = settings.probes as f64 / settings.every.as_secs_f64();
    let rate = stats.samples as f64 / wall.as_secs_f64();
    let probing_cpu = (cpu - listener_cpu).max(0.0);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let ms = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), format_ms);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench probes: {} TCP probes every {} for {} against a listener on {addr} ({cores} CPU(s))",
        settings.probes,
        Dur(settings.every),
        Dur(settings.duration)
    );
    let _ = writeln!(
        out,
        "samples:        {} in {:.2} s = {:.0} per second ({} of the {:.0}/s asked), {} failed",
        stats.samples,
        wall.as_secs_f64(),
        rate,
        Percent((rate / asked).min(1.0)),
        asked,
        stats.samples - stats.successes
    );
    let mut causes: Vec<(usize, &str)> = Vec::new();
    for error in samples.iter().flatten().filter_map(|s| s.error.as_deref()) {
        match causes.iter_mut().find(|(_, e)| *e == error) {
            Some((n, _)) => *n += 1,
            None => causes.push((1, error)),
        }
    }
    causes.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    if let Some((n, error)) = causes.first() {
        let _ = writeln!(out, "failures:       most common ({n}): {error}");
    }
    let _ = writeln!(
        out,
        "CPU, probing:   {probing_cpu:.2} s = {:.1}% of one core; {:.1} µs per sample",
        100.0 * probing_cpu / wall.as_secs_f64(),
        1e6 * probing_cpu / (stats.samples.max(1) as f64)
    );
    let _ = writeln!(
        out,
        "CPU, listener:  {listener_cpu:.2} s (the accepting side, left out of the figure above)"
    );
    let _ = writeln!(
        out,
        "connect time:   p50 {}, p99 {}, max {}",
        ms(stats.p50),
        ms(stats.p99),
        ms(stats.max)
    );
    if let Some(kib) = peak_rss_kib() {
        let _ = writeln!(out, "peak RSS:       {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(out)
}
