//! Owns `faultline bench proxy`: figures for the latency proxy — delay precision against a plain
//! `tokio::time::sleep` proxy, throughput against a direct connection, and the cost of 1000
//! concurrent connections. Everything runs on loopback inside this process; nothing is asserted,
//! the numbers are printed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::proxy::{self, ToxicSpec, Toxics};

/// What to measure and how much.
pub(crate) struct Settings {
    pub(crate) round_trips: usize,
    pub(crate) delays_ms: Vec<u64>,
    pub(crate) bulk_bytes: u64,
    pub(crate) connections: usize,
    /// `SCHED_FIFO` priority for the proxy thread (and the OS-floor thread), if any.
    pub(crate) realtime: Option<u8>,
    /// Only this section, if any (`--only`).
    pub(crate) only: Option<Section>,
}

/// A section of the bench that `--only` may pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Section {
    /// Bulk transfers direct and through the proxy, spliced and copying, without and with a
    /// 10 ms delay.
    Throughput,
}

/// Runs every figure and prints it. Takes a few minutes with the defaults (1000 round trips at
/// 50 ms is 50 s per proxy).
///
/// The proxies run on the proxy runtime of `faultline run` (one dedicated worker thread); the
/// clients on a separate single-threaded one, and the echo and bulk servers on a third, standing
/// in for other processes. The servers have their own thread so that a direct round trip crosses
/// threads (client → server → client) as a proxied one does: sharing the clients' thread, a
/// direct round trip never waited for another thread to wake, and the proxy was charged for every
/// wake-up. The tokio-sleep baseline runs on the proxy runtime too, so only the timer differs.
pub(crate) fn run(settings: &Settings) -> anyhow::Result<()> {
    if settings.realtime.is_some() {
        proxy::priority::set_realtime(settings.realtime).map_err(anyhow::Error::msg)?;
    }
    let proxies = proxy::runtime().map_err(anyhow::Error::msg)?;
    let servers = Servers::start()?;
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    clients.block_on(measure(settings, proxies, &servers.handle))
}

/// A single-threaded runtime on its own thread for the echo and bulk servers; stops when dropped.
struct Servers {
    handle: Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start() -> anyhow::Result<Servers> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-servers".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Servers {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn measure(settings: &Settings, proxies: &Handle, servers: &Handle) -> anyhow::Result<()> {
    if settings.only == Some(Section::Throughput) {
        return throughput(settings, proxies, servers).await;
    }
    let echo = echo_server(servers)?;
    let ours = Ours::open(echo, proxies)?;
    let sleepy = SleepProxy::open(echo, proxies)?;
    println!(
        "faultline bench proxy — loopback, 64-byte request/response on one persistent TCP_NODELAY connection"
    );
    println!(
        "error = RTT − delay − baseline RTT (the median direct RTT, so the proxy's own hop cost is part of the error), in µs"
    );
    let realtime = proxy::priority::realtime().map_err(anyhow::Error::msg)?;
    let window = proxy::spin_window();
    println!(
        "proxy thread and OS-floor thread: timer slack 1 ns, {}; proxy timers spin the last {} µs ({}, at most 2% of a core)\n",
        realtime.map_or("normal priority".to_owned(), |p| format!(
            "SCHED_FIFO priority {p} (if permitted; see the log)"
        )),
        window.as_micros(),
        proxy::SPIN_ENV
    );

    let direct = round_trips(echo, settings.round_trips).await?;
    let ours_base = round_trips(ours.listen, settings.round_trips).await?;
    let ours_copying = Ours::open_with(echo, proxies, proxy::Options { splice: false })?;
    let copying_base = round_trips(ours_copying.listen, settings.round_trips).await?;
    ours_copying.close();
    let sleepy_base = round_trips(sleepy.listen, settings.round_trips).await?;
    // The tail of the undelayed round trips is the machine's scheduling noise: delay errors
    // cannot be judged finer than it.
    println!(
        "{:<28} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "RTT with no delay", "", "p50", "p99", "max", "min"
    );
    for (label, rtts) in [
        ("direct", &direct),
        ("through faultline", &ours_base),
        ("through faultline, copying", &copying_base),
        ("through the sleep proxy", &sleepy_base),
    ] {
        println!(
            "{label:<28} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            "",
            percentile(rtts, 0.5),
            percentile(rtts, 0.99),
            percentile(rtts, 1.0),
            percentile(rtts, 0.0)
        );
    }
    println!();

    println!(
        "{:<28} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "precision", "delay", "p50", "p99", "max", "min"
    );
    for &ms in &settings.delays_ms {
        let delay = Duration::from_millis(ms);
        ours.set_delay(delay);
        let spun = proxy::spun();
        let measured = errors(
            &round_trips(ours.listen, settings.round_trips).await?,
            delay,
            &direct,
        );
        let spun = proxy::spun().saturating_sub(spun);
        print_errors("faultline (timerfd)", ms, &measured);
        ours.set_delay(Duration::ZERO);
        sleepy
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
        let measured = errors(
            &round_trips(sleepy.listen, settings.round_trips).await?,
            delay,
            &direct,
        );
        print_errors("baseline (tokio sleep)", ms, &measured);
        sleepy.delay_us.store(0, Ordering::Relaxed);
        // On a thread tuned like the proxy's (timer slack, priority), so the floor is the one
        // the proxy faces.
        let floor =
            on_tuned_thread(realtime, "OS-floor", move || os_sleep_lateness(delay, 200)).await?;
        print_errors("OS floor (thread::sleep)", ms, &floor);
        if !window.is_zero() {
            // The floor of a sleeper that spins like the proxy's timers: the proxy's line is
            // only comparable to this one.
            let spinning = on_tuned_thread(realtime, "spinning OS-floor", move || {
                os_spin_lateness(delay, window, 200)
            })
            .await?;
            print_errors("OS floor, sleep + spin", ms, &spinning);
        }
        let timerfd_floor = on_tuned_thread(realtime, "timerfd-floor", move || {
            timerfd_lateness(delay, 200)
        })
        .await??;
        print_errors(
            if window.is_zero() {
                "timerfd in tokio, no proxy"
            } else {
                "timerfd+spin, no proxy"
            },
            ms,
            &timerfd_floor,
        );
        let handoff = SleepEcho::start(delay, realtime)?;
        let measured = errors(
            &round_trips(handoff.listen, settings.round_trips).await?,
            delay,
            &direct,
        );
        drop(handoff);
        print_errors("sleep echo (floor+hand-off)", ms, &measured);
        print_lateness(&ours);
        if !window.is_zero() {
            println!(
                "  the proxy spun {:.1} µs of CPU per delayed round trip",
                spun.as_secs_f64() * 1e6 / settings.round_trips.max(1) as f64
            );
        }
    }
    println!(
        "(OS floor: how late a plain thread wakes from a {}-sample sleep of that length on this machine, with no proxy at all;",
        200
    );
    println!(
        " sleep echo: an echo server that sleeps that long (thread::sleep, tuned like the proxy thread) before it answers,"
    );
    println!(
        " measured by the same client as the proxy, so it adds the client's own wake-up: the best any delaying process can do here)"
    );

    throughput(settings, proxies, servers).await?;

    println!(
        "\nscale: {} concurrent connections through one proxy",
        settings.connections
    );
    scale(echo, &ours, settings.connections, &direct).await?;
    ours.close();
    Ok(())
}

/// Bulk transfers of the same server's stream: direct, then through the proxy spliced and
/// copying, without and with a 10 ms delay, [`BULK_ROUNDS`] times interleaved (the machine's
/// load drifts from second to second, so each round's ratios compare transfers made moments
/// apart). Prints the median rate of each, the ratio of the medians, and the spread of the
/// per-round ratios.
async fn throughput(settings: &Settings, proxies: &Handle, servers: &Handle) -> anyhow::Result<()> {
    println!(
        "\nthroughput: {} from a server to a client (downstream, the direction delays apply to), median of {BULK_ROUNDS} interleaved rounds",
        crate::units::format_bytes(settings.bulk_bytes)
    );
    let source = source_server(servers, settings.bulk_bytes)?;
    let spliced = Ours::open_with(source, proxies, proxy::Options { splice: true })?;
    let copying = Ours::open_with(source, proxies, proxy::Options { splice: false })?;
    let paths = [
        (&spliced, "spliced", 0),
        (&spliced, "spliced", 10),
        (&copying, "copying", 0),
        (&copying, "copying", 10),
    ];
    let mut direct = Vec::with_capacity(BULK_ROUNDS);
    // Per path: rates, per-round ratios to that round's direct rate, bytes moved, peak pipe bytes.
    let mut rates = vec![Vec::with_capacity(BULK_ROUNDS); paths.len()];
    let mut ratios = vec![Vec::with_capacity(BULK_ROUNDS); paths.len()];
    let mut moved = vec![(0_u64, 0_u64); paths.len()];
    let mut peaks = vec![0_usize; paths.len()];
    for _ in 0..BULK_ROUNDS {
        let direct_rate = bulk_read(source).await?;
        direct.push(direct_rate);
        for (i, (bulk, _, delay_ms)) in paths.iter().enumerate() {
            bulk.set_delay(Duration::from_millis(*delay_ms));
            let before = bulk.moved();
            let _ = proxy::pipe_usage();
            let rate = bulk_read(bulk.listen).await?;
            let after = bulk.moved();
            if let Some((_, peak, _)) = proxy::pipe_usage() {
                peaks[i] = peaks[i].max(peak);
            }
            bulk.set_delay(Duration::ZERO);
            rates[i].push(rate);
            ratios[i].push(rate / direct_rate);
            moved[i].0 += after.spliced - before.spliced;
            moved[i].1 += after.copied - before.copied;
        }
    }
    let direct_rate = percentile(&direct, 0.5);
    println!(
        "  direct                                  {:>8.0} MB/s  (runs {:.0}..{:.0})",
        direct_rate / 1e6,
        percentile(&direct, 0.0) / 1e6,
        percentile(&direct, 1.0) / 1e6,
    );
    let budget = proxy::pipe_usage().map_or(0, |(_, _, size)| size);
    for (i, (_, label, delay_ms)) in paths.iter().enumerate() {
        let toxic = if *delay_ms == 0 {
            "no toxic".to_owned()
        } else {
            format!("{delay_ms} ms delay")
        };
        let rate = percentile(&rates[i], 0.5);
        let rounds = BULK_ROUNDS as u64;
        println!(
            "  through the proxy, {label}, {toxic:<11} {:>8.0} MB/s  (ratio to direct {:.2}; {} spliced, {} copied per run; per-round ratios {:.2}..{:.2}, median {:.2})",
            rate / 1e6,
            rate / direct_rate,
            crate::units::format_bytes(moved[i].0 / rounds),
            crate::units::format_bytes(moved[i].1 / rounds),
            percentile(&ratios[i], 0.0),
            percentile(&ratios[i], 1.0),
            percentile(&ratios[i], 0.5),
        );
        if *label == "spliced" {
            println!(
                "    bytes held in the proxy's pipes at most {} (process budget beyond each direction's reserve: {})",
                crate::units::format_bytes(peaks[i] as u64),
                crate::units::format_bytes(budget as u64),
            );
        }
    }
    spliced.close();
    copying.close();
    Ok(())
}

/// Rounds of the throughput section.
const BULK_ROUNDS: usize = 3;

fn print_errors(label: &str, delay_ms: u64, errors: &[f64]) {
    println!(
        "{label:<28} {:>4}ms {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        delay_ms,
        percentile(errors, 0.5),
        percentile(errors, 0.99),
        percentile(errors, 1.0),
        percentile(errors, 0.0)
    );
}

/// How late `std::thread::sleep` (`clock_nanosleep`) returns, in microseconds: the scheduling
/// noise of the machine, which no timer in a process can beat.
fn os_sleep_lateness(d: Duration, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::thread::sleep(d);
            (t.elapsed().as_secs_f64() - d.as_secs_f64()) * 1e6
        })
        .collect()
}

/// Runs `measure` on a fresh thread tuned like the proxy's (timer slack, priority), so a floor
/// is the one the proxy faces, without holding a runtime worker while it sleeps.
async fn on_tuned_thread<T: Send + 'static>(
    realtime: Option<u8>,
    what: &str,
    measure: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            proxy::priority::tune_current_thread(realtime);
            measure()
        })
        .join()
    })
    .await?
    .map_err(|_| anyhow::anyhow!("the {what} thread panicked"))
}

/// How late a thread that sleeps `d − window` and spins the rest on the clock is, in
/// microseconds: the floor of a spinning sleeper, to compare a spinning proxy with.
fn os_spin_lateness(d: Duration, window: Duration, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let deadline = t + d;
            std::thread::sleep(d.saturating_sub(window));
            while Instant::now() < deadline {
                std::hint::spin_loop();
            }
            (t.elapsed().as_secs_f64() - d.as_secs_f64()) * 1e6
        })
        .collect()
}

/// How late the proxy's timer ([`proxy::PreciseTimer`], a timerfd polled by a tokio runtime on
/// this thread) wakes from a sleep of `d`, in microseconds: the OS floor plus the reactor's path.
fn timerfd_lateness(d: Duration, n: usize) -> anyhow::Result<Vec<f64>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let timer = proxy::PreciseTimer::new()?;
        let mut late = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            timer.sleep_until(t + d).await?;
            late.push((t.elapsed().as_secs_f64() - d.as_secs_f64()) * 1e6);
        }
        Ok(late)
    })
}

/// The delay error of each round trip, in microseconds.
fn errors(rtts: &[f64], delay: Duration, baseline: &[f64]) -> Vec<f64> {
    let base = percentile(baseline, 0.5);
    let d = delay.as_secs_f64() * 1e6;
    let mut e: Vec<f64> = rtts.iter().map(|r| r - d - base).collect();
    e.sort_by(f64::total_cmp);
    e
}

/// The `q` quantile (nearest rank) of `values`, which need not be sorted.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Round-trip times in microseconds on one connection, after a warm-up.
async fn round_trips(to: SocketAddr, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut conn = TcpStream::connect(to).await?;
    conn.set_nodelay(true)?;
    let request = [0x5a_u8; 64];
    let mut reply = [0_u8; 64];
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t = Instant::now();
        conn.write_all(&request).await?;
        conn.read_exact(&mut reply).await?;
        if i >= 50 {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(rtts)
}

/// Reads everything a server sends; returns bytes per second.
async fn bulk_read(from: SocketAddr) -> anyhow::Result<f64> {
    let mut conn = TcpStream::connect(from).await?;
    let mut buf = vec![0_u8; 256 << 10];
    let (t, mut total) = (Instant::now(), 0_u64);
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// Opens `n` connections direct and then through the proxy, reports the memory the proxied ones
/// cost beyond the direct ones (the client and echo ends are in both), then times round trips on
/// all of them at once, without and with a 10 ms delay.
async fn scale(echo: SocketAddr, ours: &Ours, n: usize, direct_rtts: &[f64]) -> anyhow::Result<()> {
    let rss0 = rss_kib();
    let direct = open_all(echo, n).await?;
    let rss1 = rss_kib();
    let proxied = open_all(ours.listen, n).await?;
    let rss2 = rss_kib();
    let per_direct = rss1.saturating_sub(rss0);
    let per_proxied = rss2.saturating_sub(rss1);
    println!(
        "  RSS: {} direct connections +{} KiB; {} proxied connections +{} KiB, so the proxy costs about {} KiB ({:.1} KiB per connection); whole process {} MiB",
        n,
        per_direct,
        n,
        per_proxied,
        per_proxied.saturating_sub(per_direct),
        per_proxied.saturating_sub(per_direct) as f64 / n as f64,
        rss2 / 1024
    );
    // Each connection does a round trip every 500 ms (starts staggered), 2000 round trips a
    // second through the one proxy for 1000 connections: load, but not a burst the single-threaded
    // client itself would queue. The same load on direct connections first: the clients' thread
    // and the echo server's queue and wake up in every figure, not the proxy's doing.
    let spacing = Duration::from_millis(500);
    let s0 = Sched::now();
    let (direct_paced, direct) = paced_round_trips(direct, 4, spacing).await?;
    drop(direct);
    let s1 = Sched::now();
    let (quiet, proxied) = paced_round_trips(proxied, 4, spacing).await?;
    let s2 = Sched::now();
    ours.set_delay(Duration::from_millis(10));
    let (delayed, proxied) = paced_round_trips(proxied, 4, spacing).await?;
    let s3 = Sched::now();
    let rss3 = rss_kib();
    ours.set_delay(Duration::ZERO);
    drop(proxied);
    let base = percentile(direct_rtts, 0.5);
    let direct_paced: Vec<f64> = direct_paced.iter().map(|r| r - base).collect();
    let quiet: Vec<f64> = quiet.iter().map(|r| r - base).collect();
    let early = delayed.iter().filter(|rtt| **rtt < 10_000.0).count();
    let total = delayed.len();
    let delayed = errors(&delayed, Duration::from_millis(10), direct_rtts);
    println!(
        "  all {n} connections at once, each a 64-byte round trip every {} ({:.0} round trips/s), error vs the direct RTT in µs:",
        crate::units::Dur(spacing),
        n as f64 / spacing.as_secs_f64()
    );
    println!(
        "{:<28} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "", "delay", "p50", "p99", "max", "min"
    );
    print_errors("direct (same load)", 0, &direct_paced);
    print_errors("no toxic (proxy hop cost)", 0, &quiet);
    println!(
        "  proxy vs direct under the same load: p50 +{:.1} µs, p99 +{:.1} µs",
        percentile(&quiet, 0.5) - percentile(&direct_paced, 0.5),
        percentile(&quiet, 0.99) - percentile(&direct_paced, 0.99)
    );
    print_errors("faultline (timerfd)", 10, &delayed);
    print_lateness(ours);
    println!(
        "  per round trip, µs on a CPU / µs runnable but waiting for one (schedstat), by thread:"
    );
    for (label, from, to, count) in [
        ("direct", &s0, &s1, direct_paced.len()),
        ("no toxic", &s1, &s2, quiet.len()),
        ("10 ms", &s2, &s3, total),
    ] {
        println!("    {label:<9} {}", to.since(from, count));
    }
    println!(
        "  {early} of {total} delayed round trips took less than 10 ms; RSS after them {} MiB",
        rss3 / 1024
    );
    Ok(())
}

async fn open_all(to: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = TcpStream::connect(to).await?;
        c.set_nodelay(true)?;
        // One round trip so the proxy has connected upstream and the connection is complete.
        c.write_all(&[1]).await?;
        c.read_exact(&mut [0]).await?;
        conns.push(c);
    }
    Ok(conns)
}

/// `each` round trips on every connection, `spacing` apart, all connections at once (their
/// starts spread over one `spacing`); RTTs in microseconds, and the connections back.
async fn paced_round_trips(
    conns: Vec<TcpStream>,
    each: usize,
    spacing: Duration,
) -> anyhow::Result<(Vec<f64>, Vec<TcpStream>)> {
    let n = conns.len().max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let stagger = spacing.mul_f64(i as f64 / n as f64);
        tasks.spawn(async move {
            let mut rtts = Vec::with_capacity(each);
            let mut reply = [0_u8; 64];
            let mut next = tokio::time::Instant::now() + stagger;
            for _ in 0..each {
                tokio::time::sleep_until(next).await;
                next += spacing;
                let t = Instant::now();
                c.write_all(&[7; 64]).await?;
                c.read_exact(&mut reply).await?;
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, std::io::Error>((rtts, c))
        });
    }
    let (mut all, mut back) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (rtts, c) = done??;
        all.extend(rtts);
        back.push(c);
    }
    Ok((all, back))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The faultline proxy, driven through its registry as a fault would.
struct Ours {
    name: String,
    listen: SocketAddr,
}

impl Ours {
    fn open(upstream: SocketAddr, proxies: &Handle) -> anyhow::Result<Ours> {
        Ours::open_with(upstream, proxies, proxy::Options::default())
    }

    fn open_with(
        upstream: SocketAddr,
        proxies: &Handle,
        options: proxy::Options,
    ) -> anyhow::Result<Ours> {
        let listen = free_addr()?;
        let name = format!("bench-{listen}");
        let _on_the_proxy_runtime = proxies.enter();
        proxy::registry()
            .open_with(&name, listen, &upstream.to_string(), options)
            .map_err(anyhow::Error::msg)?;
        Ok(Ours { name, listen })
    }

    fn moved(&self) -> proxy::Moved {
        proxy::registry().moved(&self.name).unwrap_or(proxy::Moved {
            spliced: 0,
            copied: 0,
        })
    }

    /// The proxy's release-lateness histogram so far (see [`proxy::LATENESS_BOUNDS_US`]).
    fn lateness(&self) -> Vec<u64> {
        proxy::registry()
            .release_lateness(&self.name)
            .unwrap_or_default()
    }

    fn set_delay(&self, delay: Duration) {
        proxy::registry().clear_toxics(&self.name, "bench");
        if !delay.is_zero() {
            let spec = ToxicSpec {
                delay,
                ..ToxicSpec::default()
            };
            let toxics = Toxics {
                spec,
                owner: "bench".to_owned(),
                since: Instant::now(),
                seed: 1,
            };
            proxy::registry()
                .set_toxics(&self.name, toxics)
                .expect("bench proxy runs");
        }
    }

    fn close(self) {
        proxy::registry().close(&self.name);
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The baseline: the same read → queue → write shape as the faultline proxy, but the writer
/// waits with `tokio::time::sleep_until`, whose timer wheel has millisecond granularity.
struct SleepProxy {
    listen: SocketAddr,
    delay_us: Arc<AtomicU64>,
}

impl SleepProxy {
    fn open(upstream: SocketAddr, proxies: &Handle) -> anyhow::Result<SleepProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listen = listener.local_addr()?;
        let delay_us = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_us);
        proxies.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((client, _)) = listener.accept().await {
                let delay = Arc::clone(&delay);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(sleep_pipe(cr, sw, None), sleep_pipe(sr, cw, Some(delay)));
                });
            }
        });
        Ok(SleepProxy { listen, delay_us })
    }
}

async fn sleep_pipe(
    mut src: impl AsyncRead + Unpin,
    mut dst: impl AsyncWrite + Unpin,
    delay: Option<Arc<AtomicU64>>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(128);
    let reader = async move {
        let mut buf = vec![0_u8; 32 << 10];
        while let Ok(n) = src.read(&mut buf).await {
            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((read_at, bytes)) = rx.recv().await {
            // Like the faultline proxy, skip the timer when nothing is left to wait: tokio rounds
            // even a past deadline up to its next millisecond tick.
            let release = read_at
                + Duration::from_micros(delay.as_ref().map_or(0, |d| d.load(Ordering::Relaxed)));
            if release > Instant::now() {
                tokio::time::sleep_until(release.into()).await;
            }
            if dst.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

fn echo_server(servers: &Handle) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    servers.spawn(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = conn.set_nodelay(true);
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// A server that sends `bytes` to every client, then closes.
fn source_server(servers: &Handle, bytes: u64) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    servers.spawn(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![0xab_u8; 256 << 10];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if conn.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    Ok(addr)
}

/// Prints how late the proxy itself released delayed chunks since the last call (its timer's
/// wake-up up to the write), as bucket bounds: what the client measures beyond it is the
/// receiver's own wake-up.
fn print_lateness(ours: &Ours) {
    use std::sync::Mutex;
    static SEEN: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let now = ours.lateness();
    let mut seen = SEEN.lock().expect("lateness lock");
    seen.resize(now.len(), 0);
    let counts: Vec<u64> = now.iter().zip(seen.iter()).map(|(n, s)| n - s).collect();
    seen.clone_from(&now);
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return;
    }
    let bound = |q: f64| {
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut sum = 0;
        for (i, c) in counts.iter().enumerate() {
            sum += c;
            if sum >= rank {
                return proxy::LATENESS_BOUNDS_US
                    .get(i)
                    .map_or("> 10000".to_owned(), |b| format!("<= {b}"));
            }
        }
        "?".to_owned()
    };
    println!(
        "  of which the proxy's own release (timer wake-up to write), {total} delayed chunks: p50 {} µs, p99 {} µs",
        bound(0.5),
        bound(0.99)
    );
}

/// The hand-off floor: a blocking echo server on a thread tuned like the proxy's, which sleeps
/// `delay` between reading a 64-byte request and answering it, one connection at a time.
struct SleepEcho {
    listen: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SleepEcho {
    fn start(delay: Duration, realtime: Option<u8>) -> anyhow::Result<SleepEcho> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let listen = listener.local_addr()?;
        let thread = std::thread::Builder::new()
            .name("bench-sleep-echo".into())
            .spawn(move || {
                use std::io::{Read, Write};
                proxy::priority::tune_current_thread(realtime);
                // One client: the round trips, or the stop connection from `drop`.
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let _ = conn.set_nodelay(true);
                let mut request = [0_u8; 64];
                while conn.read_exact(&mut request).is_ok() {
                    std::thread::sleep(delay);
                    if conn.write_all(&request).is_err() {
                        return;
                    }
                }
            })?;
        Ok(SleepEcho {
            listen,
            thread: Some(thread),
        })
    }
}

impl Drop for SleepEcho {
    fn drop(&mut self) {
        // The client has closed its connection by now, which ends the echo loop; if it never
        // came (its connect failed), this connection stands in for it, so the thread ends.
        drop(std::net::TcpStream::connect(self.listen));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// On-CPU and run-queue wait time of the bench's threads, from `/proc/self/task/*/schedstat`:
/// whether a tail is work, or a thread that was ready but had no CPU.
struct Sched(Vec<(&'static str, u64, u64)>);

impl Sched {
    /// The threads by role: the proxy runtime's workers, the servers' thread, everything else
    /// (the clients' thread, mostly).
    fn now() -> Sched {
        let mut by = vec![("proxy", 0, 0), ("servers", 0, 0), ("clients", 0, 0)];
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let path = task.path();
                let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) else {
                    continue;
                };
                let mut fields = stat
                    .split_whitespace()
                    .map(|f| f.parse::<u64>().unwrap_or(0));
                let (run, wait) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
                let slot = if comm.starts_with("faultline-proxy") {
                    0
                } else if comm.starts_with("bench-servers") {
                    1
                } else {
                    2
                };
                by[slot].1 += run;
                by[slot].2 += wait;
            }
        }
        Sched(by)
    }

    fn since(&self, before: &Sched, round_trips: usize) -> String {
        let n = round_trips.max(1) as f64;
        self.0
            .iter()
            .zip(&before.0)
            .map(|((label, run, wait), (_, run0, wait0))| {
                format!(
                    "{label} {:.1}/{:.1}",
                    run.saturating_sub(*run0) as f64 / 1e3 / n,
                    wait.saturating_sub(*wait0) as f64 / 1e3 / n
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
