//! Owns the userspace TCP proxies that proxy-backed faults act through: the process-wide registry
//! of running proxies, their accept loops, and the per-connection pumps that apply toxics.
//!
//! A proxy runs without toxics (a transparent relay) until a fault sets them, and runs on when the
//! fault clears them: connections that are open at that moment carry on undelayed. Each direction
//! of a connection is one reader and one writer joined by a queue of chunks bounded in bytes, so a
//! fast sender meets TCP back-pressure instead of growing memory, and each chunk carries the
//! instant it may be written (read time + delay), so a delay shifts a stream without throttling it.
//! A chunk that is due at once while the queue is empty skips it: its reader writes it itself.

pub(crate) mod persistent;
pub(crate) mod priority;
mod splice;
#[cfg(test)]
mod splice_tests;
mod timer;
mod toxics;

use std::cell::Cell;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

pub(crate) use persistent::check_persistent_name;
use splice::SpliceIn;
pub(crate) use timer::{PreciseTimer, SPIN_ENV, spin_window, spun};
use toxics::InForce;
use toxics::{Chunk, Flow, Plan, Pump};
pub(crate) use toxics::{Direction, ResetAfter, ToxicSpec, Toxics};

/// The names of run proxies start with this; persistent proxies may not.
pub(crate) const RUN_PREFIX: &str = "listen-";

/// The most bytes one read takes, and so the largest chunk a toxic acts on.
pub(crate) const CHUNK: usize = 32 << 10;
/// The read buffer a connection starts with, per direction.
const FIRST_BUFFER: usize = 2 << 10;
/// A splice that moves less than this ends a bulk stretch: the direction copies again until a
/// read fills [`CHUNK`]. Small messages copy (fewer syscalls), streams splice.
const BULK_SPLICE: usize = 4 << 10;
/// Bytes queued per direction of a connection, waiting for their release time: enough for
/// 400 MB/s under a 10 ms delay, and a hard bound whatever the sender does. Bounding bytes rather
/// than chunks keeps a stream of small messages (64-byte requests at 100k/s under 50 ms is
/// 5000 chunks) from being throttled by the queue.
const QUEUE_BYTES: usize = 4 << 20;
/// The most bytes one splice moves into a pipe.
const SPLICE_CHUNK: usize = 1 << 20;
/// Bytes waiting in a direction's pipes, the zero-copy path's counterpart of [`QUEUE_BYTES`]: they
/// are kernel pages, not this process's memory, and a delay holds `rate × delay` of them, so the
/// bound is larger — 32 MiB carries 3.3 GB/s under a 10 ms delay (16 MiB, the bound before,
/// held the bench's 10 ms figure to 1.0 GB/s of a 2.1 GB/s direct rate). Beyond
/// [`splice::LANE_RESERVE`] the bytes also draw on the process-wide budget ([`splice::pool`]),
/// which bounds all connections together. The pipes' own capacity bounds it too.
const PIPE_QUEUE_BYTES: usize = 32 << 20;
/// Pipes one direction may hold at once. A pipe holds `pipe-max-size / 4 KiB` page slots, and a
/// slot as few bytes as the socket buffer it came from, so under a delay one pipe fills long
/// before [`PIPE_QUEUE_BYTES`]: the reader then opens the next pipe, and the writer moves on to it
/// once it has emptied the one before.
const MAX_PIPES: usize = 16;
/// What one queued chunk costs beyond its bytes (buffer header, queue slot), charged to the budget
/// so that many tiny chunks are bounded too.
const CHUNK_OVERHEAD: usize = 128;
/// The most live connections one proxy holds; a connection beyond it is closed as soon as it is
/// accepted. Without a cap, any peer that can reach the port (no token is needed) could take every
/// descriptor of the agent, and with them its API and `halt`.
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// Descriptors a proxied connection may hold: two sockets, and a timer and a pipe (two ends) per
/// direction.
const FDS_PER_CONNECTION: u64 = 8;
/// Descriptors kept free for everything but the proxies (the control API, the journal, the audit
/// log): proxies stop accepting while their connections would eat into them.
const FD_RESERVE: u64 = 256;

/// Live proxied connections across every proxy of this process, to keep [`FD_RESERVE`] free.
static ALL_LIVE: AtomicUsize = AtomicUsize::new(0);
/// Pipes open beyond the first of each direction, across every proxy: two descriptors each,
/// beyond [`FDS_PER_CONNECTION`].
static EXTRA_PIPES: AtomicUsize = AtomicUsize::new(0);

/// Every proxy this process runs, by name. Process-wide because the sockets are: a proxy lives
/// exactly as long as this process, so after a crash there is nothing left to close, and a revert
/// read from the journal finds the proxy here if and only if it still exists.
pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        proxies: Mutex::new(HashMap::new()),
    })
}

pub(crate) struct Registry {
    proxies: Mutex<HashMap<String, Proxy>>,
}

struct Proxy {
    listen: SocketAddr,
    upstream: String,
    toxics: watch::Sender<Option<Arc<InForce>>>,
    shutdown: watch::Sender<bool>,
    /// Disconnects when the accept loop has dropped its listener.
    closed: std::sync::mpsc::Receiver<()>,
    live: Arc<AtomicUsize>,
    counters: Arc<Counters>,
}

/// How a proxy relays bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// Splice bytes through a pipe when no toxic needs to see them (the default); false copies
    /// every byte through this process, as `faultline bench proxy` does to compare both paths.
    pub(crate) splice: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { splice: true }
    }
}

/// Bytes a proxy has moved, by path, counted as they are read from a socket.
#[derive(Debug, Default)]
struct Counters {
    spliced: AtomicU64,
    copied: AtomicU64,
    /// Of the copied bytes, those the reader wrote itself, never queued.
    inline: AtomicU64,
    /// How late delayed chunks left, measured by the writer just before its write: how many fell
    /// under each of [`LATENESS_BOUNDS_US`] (the last slot counts the rest). For `faultline bench
    /// proxy`, to tell the proxy's own wake-up from what the receiver adds after it.
    late: [AtomicU64; LATENESS_BOUNDS_US.len() + 1],
}

/// Upper bounds (µs) of the buckets of [`Counters::late`].
pub(crate) const LATENESS_BOUNDS_US: [u64; 12] =
    [2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000];

impl Counters {
    /// A chunk due at `release` leaves now.
    fn released(&self, release: Instant) {
        let late = Instant::now()
            .saturating_duration_since(release)
            .as_micros() as u64;
        let slot = LATENESS_BOUNDS_US.partition_point(|bound| *bound < late);
        self.late[slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// What [`Registry::moved`] reports: bytes spliced (never in this process's memory) and bytes
/// copied (read into memory, because a toxic needed them or splicing was off or refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) spliced: u64,
    pub(crate) copied: u64,
}

/// The bytes in every proxy's pipes of this process: (now, the most at once since the last call,
/// the process-wide budget beyond the directions' reserves); `None` if the budget is invalid.
pub(crate) fn pipe_usage() -> Option<(usize, usize, usize)> {
    splice::pool().ok().map(splice::Pool::usage)
}

/// The proxies' own runtime: one worker thread that does nothing but relay, so the run loop,
/// probes and the agent's API never hold back a chunk's release. Measured with `faultline bench
/// proxy` on a quiet 2-core machine, 10 ms delay: p99 error 0.35 ms on its own thread against
/// 0.47 ms sharing two workers with everything else. Its threads are tuned by
/// [`priority::tune_current_thread`] (timer slack, optional real-time priority).
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Handle, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let realtime = priority::realtime()?;
            timer::configure_spin()?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(proxy_threads())
                .thread_name("faultline-proxy")
                .on_thread_start(move || priority::tune_current_thread(realtime))
                .enable_all()
                .build()
                .map_err(|e| format!("failed to start the proxy runtime: {e}"))
        })
        .as_ref()
        .map(tokio::runtime::Runtime::handle)
        .map_err(Clone::clone)
}

/// Worker threads of the proxy runtime: `FAULTLINE_PROXY_THREADS`, else 1.
fn proxy_threads() -> usize {
    std::env::var("FAULTLINE_PROXY_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

impl Registry {
    /// Starts a proxy from `listen` to `upstream`. Opening the same proxy again is a no-op.
    /// Needs to run inside a tokio runtime (a blocking-pool thread is fine).
    pub(crate) fn open(
        &self,
        name: &str,
        listen: SocketAddr,
        upstream: &str,
    ) -> Result<String, String> {
        self.open_with(name, listen, upstream, Options::default())
    }

    /// [`Registry::open`] with relaying options other than the default.
    pub(crate) fn open_with(
        &self,
        name: &str,
        listen: SocketAddr,
        upstream: &str,
        options: Options,
    ) -> Result<String, String> {
        let mut proxies = self.proxies.lock().expect("proxy registry lock");
        if let Some(p) = proxies.get(name) {
            if p.listen == listen && p.upstream == upstream {
                return Ok(format!(
                    "proxy {listen} -> {upstream} was already listening"
                ));
            }
            return Err(format!(
                "proxy `{name}` already runs from {} to {}",
                p.listen, p.upstream
            ));
        }
        raise_descriptor_limit();
        let runtime = runtime()?;
        if options.splice {
            // An invalid pipe budget fails the proxy's start, naming the variable.
            splice::pool()?;
        }
        let std_listener = std::net::TcpListener::bind(listen).map_err(|e| {
            format!("failed to listen on {listen} for the proxy to {upstream}: {e}")
        })?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("failed to set up {listen}: {e}"))?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener)
                .map_err(|e| format!("failed to set up {listen}: {e}"))?
        };
        let (toxics, toxics_rx) = watch::channel(None);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (closed_tx, closed) = std::sync::mpsc::channel();
        let live = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(Counters::default());
        let relay = Relay {
            upstream: upstream.into(),
            toxics: toxics_rx,
            shutdown: shutdown_rx,
            live: Arc::clone(&live),
            own_ports: OwnPorts::default(),
            splice: options.splice,
            counters: Arc::clone(&counters),
        };
        runtime.spawn(relay.accept_loop(listener, closed_tx));
        proxies.insert(
            name.to_owned(),
            Proxy {
                listen,
                upstream: upstream.to_owned(),
                toxics,
                shutdown,
                closed,
                live,
                counters,
            },
        );
        Ok(format!(
            "proxy listening on {listen}, forwarding to {upstream}"
        ))
    }

    /// Stops a proxy: the port is closed when this returns, and open connections are dropped.
    /// Closing a proxy that is not running succeeds.
    pub(crate) fn close(&self, name: &str) -> String {
        let Some(proxy) = self
            .proxies
            .lock()
            .expect("proxy registry lock")
            .remove(name)
        else {
            return format!("proxy `{name}` was not running");
        };
        let _ = proxy.shutdown.send(true);
        // The accept loop drops the listener within one poll; waiting makes "closed" mean closed.
        let _ = proxy.closed.recv_timeout(Duration::from_secs(5));
        format!(
            "closed the proxy on {} ({} live connection(s) dropped)",
            proxy.listen,
            proxy.live.load(Ordering::Relaxed)
        )
    }

    /// Turns toxics on. Fails if another fault's toxics are in force on the same proxy.
    pub(crate) fn set_toxics(&self, name: &str, toxics: Toxics) -> Result<(), String> {
        let proxies = self.proxies.lock().expect("proxy registry lock");
        let proxy = proxies
            .get(name)
            .ok_or_else(|| format!("no proxy `{name}` is running on this agent"))?;
        if let Some(current) = proxy.toxics.borrow().as_ref() {
            if current.toxics.owner == toxics.owner {
                return Ok(());
            }
            return Err(format!(
                "proxy on {} already carries the toxics of fault {}",
                proxy.listen, current.toxics.owner
            ));
        }
        proxy
            .toxics
            .send_replace(Some(Arc::new(InForce::new(toxics))));
        Ok(())
    }

    /// Turns off the toxics `owner` set. Idempotent; a proxy that is gone has nothing to clear.
    pub(crate) fn clear_toxics(&self, name: &str, owner: &str) -> String {
        let proxies = self.proxies.lock().expect("proxy registry lock");
        let Some(proxy) = proxies.get(name) else {
            return format!("proxy `{name}` is no longer running: nothing to clear");
        };
        let mine = proxy
            .toxics
            .borrow()
            .as_ref()
            .is_some_and(|t| t.toxics.owner == owner);
        if mine {
            proxy.toxics.send_replace(None);
            format!(
                "toxics off on {}; live connections continue undelayed",
                proxy.listen
            )
        } else {
            format!("no toxics of this fault on {}", proxy.listen)
        }
    }

    /// Where the proxy `name` listens, if it runs.
    pub(crate) fn listen_of(&self, name: &str) -> Option<SocketAddr> {
        self.proxies
            .lock()
            .expect("proxy registry lock")
            .get(name)
            .map(|p| p.listen)
    }

    /// The bytes the proxy `name` has moved so far, by path, if it runs.
    pub(crate) fn moved(&self, name: &str) -> Option<Moved> {
        self.proxies
            .lock()
            .expect("proxy registry lock")
            .get(name)
            .map(|p| Moved {
                spliced: p.counters.spliced.load(Ordering::Relaxed),
                copied: p.counters.copied.load(Ordering::Relaxed),
            })
    }

    /// How many delayed chunks the proxy `name` released within each bound of
    /// [`LATENESS_BOUNDS_US`] of their due time (the last count is for later ones), if it runs.
    pub(crate) fn release_lateness(&self, name: &str) -> Option<Vec<u64>> {
        self.proxies
            .lock()
            .expect("proxy registry lock")
            .get(name)
            .map(|p| {
                p.counters
                    .late
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect()
            })
    }

    /// Of the bytes the proxy `name` copied, how many a reader wrote straight on, never queued.
    #[cfg(test)]
    fn written_inline(&self, name: &str) -> Option<u64> {
        self.proxies
            .lock()
            .expect("proxy registry lock")
            .get(name)
            .map(|p| p.counters.inline.load(Ordering::Relaxed))
    }

    /// How many connections the proxy `name` holds now, if it runs.
    #[cfg(test)]
    fn live_of(&self, name: &str) -> Option<usize> {
        self.proxies
            .lock()
            .expect("proxy registry lock")
            .get(name)
            .map(|p| p.live.load(Ordering::Relaxed))
    }

    /// Whether `owner`'s toxics are in force, and how many connections they reach.
    pub(crate) fn toxics_status(&self, name: &str, owner: &str) -> Result<String, String> {
        let proxies = self.proxies.lock().expect("proxy registry lock");
        let proxy = proxies
            .get(name)
            .ok_or_else(|| format!("proxy `{name}` stopped running"))?;
        if proxy
            .toxics
            .borrow()
            .as_ref()
            .is_none_or(|t| t.toxics.owner != owner)
        {
            return Err(format!("the toxics are not in force on {}", proxy.listen));
        }
        Ok(format!(
            "in force on {} ({} live connection(s))",
            proxy.listen,
            proxy.live.load(Ordering::Relaxed)
        ))
    }
}

/// The bounds of a run proxy's addresses, the same for a fault's `listen`/`upstream` and for an
/// agent's open request: ports are not 0, `upstream` is `host:port`, and `upstream` is not the
/// proxy itself. A proxy forwarding to itself opens connections until the agent runs out of
/// descriptors, so the same port on the same address, on a wildcard listen address, or on any
/// loopback name (`localhost`, `127.0.0.1`, `[::1]`) is refused.
pub(crate) fn check_addresses(listen: SocketAddr, upstream: &str) -> crate::fault::check::Checked {
    use crate::fault::check::{FieldError, port};
    port("listen", Some(listen.port()))?;
    let Some((host, upstream_port)) = upstream
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(host, p)| Some((host, p.parse::<u16>().ok()?)))
    else {
        return Err(FieldError::new(
            "upstream",
            format!("must be `host:port` (got `{upstream}`)"),
        ));
    };
    port("upstream", Some(upstream_port))?;
    if upstream_port == listen.port() && reaches(host, listen.ip()) {
        return Err(FieldError::new(
            "upstream",
            format!(
                "must not reach the proxy itself: `{upstream}` is its own listen address {listen}, so the proxy would forward to itself"
            ),
        ));
    }
    Ok(())
}

/// Whether a connection to `host` (on the listen port) may land on a socket listening on `listen`.
fn reaches(host: &str, listen: std::net::IpAddr) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
    let ip = if host.eq_ignore_ascii_case("localhost") {
        None
    } else {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip.to_canonical()),
            // Another name: only the proxy's own check at connect time can tell.
            Err(_) => return false,
        }
    };
    let listen = listen.to_canonical();
    match ip {
        // `localhost` is a loopback address.
        None => local(listen),
        Some(ip) => ip == listen || listen.is_unspecified() || (local(ip) && local(listen)),
    }
}

/// Raises this process's soft limit on open descriptors to the hard limit, once: a proxied
/// connection holds two sockets and up to two timers, so the usual soft limit of 1024 would cap a
/// proxy at a few hundred connections. (Go's runtime does the same at start.)
pub(crate) fn raise_descriptor_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            if soft < hard {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    tracing::warn!(
                        "failed to raise the open-file limit from {soft} to {hard}: {e}"
                    );
                }
            }
        }
    });
}

/// What every connection task of one proxy shares.
#[derive(Clone)]
struct Relay {
    upstream: Arc<str>,
    toxics: watch::Receiver<Option<Arc<InForce>>>,
    shutdown: watch::Receiver<bool>,
    live: Arc<AtomicUsize>,
    own_ports: OwnPorts,
    /// Whether this proxy may splice ([`Options::splice`]).
    splice: bool,
    counters: Arc<Counters>,
}

/// How one direction, or a whole connection, ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Orderly: EOF passed on as a half-close.
    Eof,
    /// Close both sides now (a `timeout` toxic, a failed write, the proxy stopping).
    Close,
    /// Close both sides with RST (a `reset_after` toxic, or a peer that reset).
    Reset,
}

enum Item {
    /// End of stream, to pass on no earlier than `at`.
    Fin {
        at: Instant,
    },
    Data {
        release: Instant,
        bytes: Vec<u8>,
    },
    /// The next `len` bytes of the pipe, to splice out no earlier than `release`.
    Piped {
        release: Instant,
        len: usize,
    },
    /// The read end of the pipe the `Piped` chunks after it are in; the one before is empty by
    /// the time the writer reaches this.
    Pipe(PipeOut),
    Reset,
}

impl Relay {
    async fn accept_loop(self, listener: TcpListener, closed: std::sync::mpsc::Sender<()>) {
        let mut shutdown = self.shutdown.clone();
        let mut next = 0_u64;
        loop {
            if !descriptors_to_spare() {
                // Leave the pending connections in the backlog until connections end, rather than
                // take the descriptors the control API needs to answer (and to `halt`).
                tokio::select! {
                    _ = shutdown.changed() => break,
                    () = tokio::time::sleep(Duration::from_millis(20)) => continue,
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((client, peer)) => {
                        let Some(live) = Live::enter(&self.live) else {
                            tracing::debug!(
                                "proxy refused a connection from {peer}: {MAX_CONNECTIONS} are open"
                            );
                            drop(client);
                            continue;
                        };
                        if self.own_ports.lock().expect("own ports lock").contains(&peer.port())
                            && client.local_addr().is_ok_and(|l| l.ip() == peer.ip())
                        {
                            // The proxy's own upstream connection came back to it: a loop, which
                            // would otherwise open connections until descriptors run out.
                            tracing::warn!(
                                "proxy to {} reaches itself: closed the looping connection",
                                self.upstream
                            );
                            drop(client);
                            continue;
                        }
                        tokio::spawn(self.clone().connection(client, next, live));
                        next += 1;
                    }
                    Err(e) => {
                        // Out of descriptors, typically: back off instead of spinning.
                        tracing::warn!("proxy failed to accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        drop(listener);
        drop(closed);
    }

    async fn connection(self, mut client: TcpStream, index: u64, _live: Live) {
        let _ = client.set_nodelay(true);
        let mut shutdown = self.shutdown.clone();
        let connect = connect_upstream(&self.upstream, &self.own_ports);
        let (mut server, _own) = tokio::select! {
            s = connect => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("proxy failed to connect to {}: {e}", self.upstream);
                    return;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = server.set_nodelay(true);
        let started = Instant::now();
        let end = {
            // (the `InForce::id` of the toxics counting, bytes counted); 0 is no toxics' id.
            let counted = Mutex::new((0_u64, 0_u64));
            let (client_read, client_write) = client.split();
            let (server_read, server_write) = server.split();
            // Each reader may also write what it reads straight to the other socket (see
            // `read_side`): it needs that socket beside the writer's half, and a socket's read
            // half reaches it by shared reference.
            let (client_ref, server_ref) = (client_read.as_ref(), server_read.as_ref());
            let up = pipe(
                &client_read,
                Out {
                    half: server_write,
                    stream: server_ref,
                },
                Pump::new(Flow::ToServer, index),
                &self,
                &counted,
            );
            let down = pipe(
                &server_read,
                Out {
                    half: client_write,
                    stream: client_ref,
                },
                Pump::new(Flow::ToClient, index),
                &self,
                &counted,
            );
            tokio::pin!(up, down);
            let (mut up_done, mut down_done) = (false, false);
            let mut toxics = self.toxics.clone();
            loop {
                let timed = timed_end(toxics.borrow().as_ref(), started);
                let sleep = async {
                    match timed {
                        Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.changed() => break End::Close,
                    changed = toxics.changed() => if changed.is_err() { break End::Close },
                    end = &mut up, if !up_done => if end == End::Eof { up_done = true } else { break end },
                    end = &mut down, if !down_done => if end == End::Eof { down_done = true } else { break end },
                    () = sleep => break timed.map_or(End::Close, |(_, end)| end),
                }
                if up_done && down_done {
                    break End::Eof;
                }
            }
        };
        if end == End::Reset {
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
    }
}

/// Whether the proxies may take another connection without eating into [`FD_RESERVE`].
fn descriptors_to_spare() -> bool {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    held_descriptors() + FDS_PER_CONNECTION <= limit.saturating_sub(FD_RESERVE)
}

/// Whether an extra pipe's two descriptors fit without eating into [`FD_RESERVE`].
fn descriptors_for_a_pipe() -> bool {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    held_descriptors() + 2 <= limit.saturating_sub(FD_RESERVE)
}

fn held_descriptors() -> u64 {
    ALL_LIVE.load(Ordering::Relaxed) as u64 * FDS_PER_CONNECTION
        + EXTRA_PIPES.load(Ordering::Relaxed) as u64 * 2
}

/// One live connection of a proxy, counted in its `live` and in [`ALL_LIVE`] until dropped, so
/// that every way a connection task ends (an error, a panic, a shutdown) gives its count back.
struct Live(Arc<AtomicUsize>);

impl Live {
    /// Counts a new connection, or `None` when the proxy already holds [`MAX_CONNECTIONS`].
    fn enter(live: &Arc<AtomicUsize>) -> Option<Live> {
        live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()?;
        ALL_LIVE.fetch_add(1, Ordering::Relaxed);
        Some(Live(Arc::clone(live)))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        ALL_LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The local ports of a proxy's upstream connections, so that its accept loop recognises a
/// connection that is its own (an upstream that is, under some name, the proxy itself).
type OwnPorts = Arc<Mutex<std::collections::HashSet<u16>>>;

/// Holds a port in [`OwnPorts`] while the upstream connection that uses it lives.
struct OwnPort(OwnPorts, u16);

impl Drop for OwnPort {
    fn drop(&mut self) {
        self.0.lock().expect("own ports lock").remove(&self.1);
    }
}

/// Connects to `upstream`, trying each address it resolves to. The socket is bound before it
/// connects so that its port is in `own` before the connection can reach any accept loop.
async fn connect_upstream(upstream: &str, own: &OwnPorts) -> std::io::Result<(TcpStream, OwnPort)> {
    let mut last = None;
    for addr in tokio::net::lookup_host(upstream).await? {
        let attempt = async {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            let any: SocketAddr = if addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            socket.bind(any)?;
            let port = socket.local_addr()?.port();
            own.lock().expect("own ports lock").insert(port);
            let guard = OwnPort(Arc::clone(own), port);
            let stream = socket.connect(addr).await?;
            Ok::<_, std::io::Error>((stream, guard))
        };
        match attempt.await {
            Ok(done) => return Ok(done),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            ErrorKind::NotFound,
            format!("`{upstream}` resolves to no address"),
        )
    }))
}

/// When a time-based toxic ends the connection: `timeout` closes it, `reset_after` resets it.
fn timed_end(toxics: Option<&Arc<InForce>>, started: Instant) -> Option<(Instant, End)> {
    let t = &toxics?.toxics;
    let reached = t.since.max(started);
    let close = t
        .spec
        .timeout
        .filter(|d| !d.is_zero())
        // A time beyond what an `Instant` can hold never comes: no end, rather than a panic.
        .and_then(|d| reached.checked_add(d))
        .map(|at| (at, End::Close));
    let reset = match t.spec.reset_after {
        Some(ResetAfter::Time(d)) => reached.checked_add(d).map(|at| (at, End::Reset)),
        _ => None,
    };
    [close, reset]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
}

/// The read end of a direction's pipe, held by its writer.
struct PipeOut {
    fd: OwnedFd,
    /// Counted in [`EXTRA_PIPES`] until dropped.
    extra: bool,
}

impl Drop for PipeOut {
    fn drop(&mut self) {
        if self.extra {
            EXTRA_PIPES.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What the reader and the writer of one direction share.
struct Lane {
    /// Bytes of copied chunks queued (plus [`CHUNK_OVERHEAD`] each): the reader takes budget
    /// before it reads, the writer gives it back once written, so a full queue stops reads and
    /// the sender meets TCP back-pressure.
    budget: Semaphore,
    /// The same for bytes waiting in the pipe, bounded by [`PIPE_QUEUE_BYTES`].
    pipe_budget: Semaphore,
    /// Bytes charged for the pipe (in it, or being spliced in): beyond [`splice::LANE_RESERVE`]
    /// they are drawn from the process-wide `pool` too.
    pipe_held: AtomicUsize,
    /// The process-wide budget of pipe bytes ([`splice::pool`], validated when the proxy opened).
    pool: Option<&'static splice::Pool>,
    /// Bytes in the pipe now: spliced in by the reader, not yet out by the writer.
    in_pipe: AtomicUsize,
    /// Pipes open: made by the reader, dropped by the writer once it has moved past them.
    pipes: AtomicUsize,
    /// Signalled each time the writer takes bytes out of the pipe, for a reader that found it
    /// full.
    drained: Notify,
    /// Items sent to the writer and not yet done with by it (written, spliced out, or moved
    /// past). Zero means nothing is queued and the writer is idle, so the reader may write a due
    /// chunk itself without overtaking a byte: reader and writer are polled by one task, never
    /// at the same time, so the count cannot change between the reader's check and its write.
    queued: AtomicUsize,
}

/// The part of `held` pipe bytes a direction draws from the process-wide pool.
fn beyond_reserve(held: usize) -> usize {
    held.saturating_sub(splice::LANE_RESERVE)
}

impl Lane {
    fn new() -> Lane {
        Lane::with_pool(splice::pool().ok())
    }

    /// A lane whose pipe bytes beyond its reserve draw on `pool`.
    fn with_pool(pool: Option<&'static splice::Pool>) -> Lane {
        Lane {
            budget: Semaphore::new(QUEUE_BYTES),
            pipe_budget: Semaphore::new(PIPE_QUEUE_BYTES),
            pipe_held: AtomicUsize::new(0),
            pool,
            in_pipe: AtomicUsize::new(0),
            pipes: AtomicUsize::new(0),
            drained: Notify::new(),
            queued: AtomicUsize::new(0),
        }
    }

    /// How many bytes the next splice in may take without waiting for budget (at least
    /// `at_least`, then it waits): the direction's own room, and beyond its reserve the pool's.
    fn pipe_room(&self, at_least: usize) -> usize {
        let own = self
            .pipe_budget
            .available_permits()
            .saturating_sub(CHUNK_OVERHEAD);
        let shared = match self.pool {
            Some(pool) => splice::LANE_RESERVE
                .saturating_sub(self.pipe_held.load(Ordering::Acquire))
                .saturating_add(pool.available()),
            None => usize::MAX,
        };
        own.min(shared).max(at_least)
    }

    /// Takes budget for `n` more bytes in the pipe (plus [`CHUNK_OVERHEAD`]), waiting for it:
    /// from the direction's bound, and beyond its reserve from the process-wide pool. Only the
    /// reader takes, so `pipe_held` can only have fallen between the look and the add, and what
    /// was borrowed covers what is owed. False when a budget is closed (never, in practice).
    async fn take_pipe(&self, n: usize) -> bool {
        let Ok(own) = self
            .pipe_budget
            .acquire_many((n + CHUNK_OVERHEAD) as u32)
            .await
        else {
            return false;
        };
        own.forget();
        let Some(pool) = self.pool else {
            self.pipe_held.fetch_add(n, Ordering::AcqRel);
            return true;
        };
        let held = self.pipe_held.load(Ordering::Acquire);
        let borrow = beyond_reserve(held + n) - beyond_reserve(held);
        if !pool.take(borrow).await {
            self.pipe_budget.add_permits(n + CHUNK_OVERHEAD);
            return false;
        }
        let old = self.pipe_held.fetch_add(n, Ordering::AcqRel);
        pool.give(borrow - (beyond_reserve(old + n) - beyond_reserve(old)));
        pool.charged(n);
        true
    }

    /// Gives back budget for `n` bytes that left the pipe (or never entered it), plus `overhead`.
    fn give_pipe(&self, n: usize, overhead: usize) {
        self.pipe_budget.add_permits(n + overhead);
        if n == 0 {
            return;
        }
        let old = self.pipe_held.fetch_sub(n, Ordering::AcqRel);
        if let Some(pool) = self.pool {
            pool.give(beyond_reserve(old) - beyond_reserve(old - n));
            pool.discharged(n);
        }
    }

    /// The writer is done with `n` items.
    fn done(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Nothing is queued and the writer is idle.
    fn idle(&self) -> bool {
        self.queued.load(Ordering::Relaxed) == 0
    }

    /// The writer moved `n` bytes out of the pipe.
    fn took_out(&self, n: usize) {
        self.in_pipe.fetch_sub(n, Ordering::AcqRel);
        self.give_pipe(n, 0);
        self.drained.notify_one();
    }
}

impl Drop for Lane {
    /// Bytes still in the pipe when a connection ends go with the pipe: their share of the pool
    /// comes back.
    fn drop(&mut self) {
        if let Some(pool) = self.pool {
            let held = *self.pipe_held.get_mut();
            pool.give(beyond_reserve(held));
            pool.discharged(held);
        }
    }
}

/// The writer's queue as the reader sees it: every item sent is counted in [`Lane::queued`].
struct Queue<'l> {
    tx: mpsc::UnboundedSender<Item>,
    lane: &'l Lane,
}

impl Queue<'_> {
    fn send(&self, item: Item) -> Result<(), mpsc::error::SendError<Item>> {
        self.tx.send(item)?;
        self.lane.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Where a direction writes: the writer's half, and the same socket by shared reference for the
/// reader's own writes.
struct Out<'a> {
    half: WriteHalf<'a>,
    stream: &'a TcpStream,
}

/// Moves one direction of a connection: read, plan each chunk, queue it, write it when due.
///
/// A chunk no toxic needs to see is spliced into the direction's pipe and only its length and
/// release time are queued; one a toxic must read (or change, or drop) is read into memory and
/// queued with its bytes. The one queue keeps both kinds in read order, so the direction
/// switches between splicing and copying chunk by chunk, as toxics start and end, without
/// reordering a byte: the writer splices piped chunks out of the pipe (a FIFO) in the same order.
async fn pipe(
    src: &ReadHalf<'_>,
    dst: Out<'_>,
    pump: Pump,
    relay: &Relay,
    counted: &Mutex<(u64, u64)>,
) -> End {
    // The queue itself is unbounded; the byte budgets bound it.
    let (tx, rx) = mpsc::unbounded_channel::<Item>();
    let lane = Lane::new();
    let tx = Queue { tx, lane: &lane };
    let reader = read_side(src, dst.stream, tx, &lane, pump, relay, counted);
    let writer = write_side(dst.half, rx, &lane, &relay.counters);
    tokio::pin!(reader, writer);
    let mut reading = true;
    loop {
        tokio::select! {
            end = &mut reader, if reading => if end == End::Eof { reading = false } else { return end },
            end = &mut writer => return end,
        }
    }
}

/// How a failed read or splice ends the connection.
fn end_of(e: &std::io::Error) -> End {
    if e.kind() == ErrorKind::ConnectionReset {
        End::Reset
    } else {
        End::Close
    }
}

/// What the reader does after one attempt at splicing.
enum Spliced {
    /// Read on.
    Next,
    /// Moved this many bytes into the pipe; read on.
    Moved(usize),
    /// This direction cannot splice: copy from now on.
    Refused,
    Ended(End),
}

thread_local! {
    /// The read buffer of chunks that may leave at once: one per proxy thread rather than one per
    /// direction of every connection, as such a chunk is written (or copied into the queue)
    /// before its reader awaits again, so no other reader can want the buffer meanwhile.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// [`SCRATCH`] while a reader holds it, given back to the thread however the read ends (an EOF,
/// an error), so the next connection's reader does not allocate and zero a new one.
struct Scratch(Vec<u8>);

impl Scratch {
    fn take() -> Scratch {
        let mut buf = SCRATCH.take();
        if buf.len() < CHUNK {
            buf.resize(CHUNK, 0);
        }
        Scratch(buf)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.capacity() > 0 {
            SCRATCH.set(std::mem::take(&mut self.0));
        }
    }
}

/// Reads chunks and sends each on with its release time. A chunk that is due at once while
/// nothing is queued (no toxic, or one that does not delay it) is written here and then, one
/// read and one write with no allocation and no hand-off to the writer; everything else — a
/// delayed chunk, what a short write left, every chunk while the queue holds anything — is
/// queued, so no byte overtakes another. Returning drops `tx`, which tells the writer that
/// nothing more comes.
async fn read_side(
    src: &ReadHalf<'_>,
    dst: &TcpStream,
    tx: Queue<'_>,
    lane: &Lane,
    mut pump: Pump,
    relay: &Relay,
    counted: &Mutex<(u64, u64)>,
) -> End {
    // Reads start small and double while they come back full, so a thousand idle or chatty
    // connections hold little memory and a bulk stream still reads CHUNK at a time. A queued
    // read goes into a fresh buffer that is queued as it is: no zeroing, no copy.
    let mut want = FIRST_BUFFER;
    let mut splicing = relay.splice;
    // Splicing pays for bulk streams only: a small message costs a splice in, a splice out and
    // a failed splice with its peek, against one read and one write copied. A direction copies
    // until a read fills the largest buffer, splices while splices move at least
    // [`BULK_SPLICE`], and copies again after a shorter one.
    let mut bulk = false;
    let mut pipe_in: Option<splice::PipeIn> = None;
    // The toxics in force, looked up again only when they have changed: an atomic load per
    // read instead of a lock and a reference count.
    let mut toxics = relay.toxics.clone();
    let mut current = toxics.borrow_and_update().clone();
    loop {
        if let Err(e) = src.readable().await {
            return end_of(&e);
        }
        if toxics.has_changed().unwrap_or(false) {
            current.clone_from(&toxics.borrow_and_update());
        }
        if splicing && bulk && !pump.needs_bytes(current.as_ref()) {
            match splice_chunk(
                src,
                &tx,
                lane,
                &mut pump,
                relay,
                &mut pipe_in,
                current.clone(),
            )
            .await
            {
                Spliced::Moved(n) => {
                    bulk = n >= BULK_SPLICE;
                    continue;
                }
                Spliced::Next => continue,
                Spliced::Refused => {
                    splicing = false;
                    continue;
                }
                Spliced::Ended(end) => return end,
            }
        }
        let size = pump.read_size(current.as_ref(), want);
        let Ok(taken) = lane
            .budget
            .acquire_many((size + CHUNK_OVERHEAD) as u32)
            .await
        else {
            return End::Close;
        };
        taken.forget();
        // Toxics that started while this waited for budget apply to what it reads now.
        if toxics.has_changed().unwrap_or(false) {
            current.clone_from(&toxics.borrow_and_update());
        }
        // With nothing queued the chunk may leave at once: read it into the thread's scratch
        // buffer. Otherwise it will be queued: read it into a buffer of its own.
        let inline = lane.idle();
        let mut scratch = Scratch(Vec::new());
        let mut chunk = Vec::new();
        let read = if inline {
            scratch = Scratch::take();
            src.try_read(&mut scratch.0[..size])
        } else {
            chunk = Vec::with_capacity(size);
            src.try_read_buf(&mut chunk)
        };
        let got = read.as_ref().map_or(0, |n| *n);
        lane.budget.add_permits(size - got);
        let mut n = match read {
            Ok(0) => {
                let slow = pump
                    .active(toxics.borrow().as_ref())
                    .and_then(|t| t.toxics.spec.slow_close);
                if let Some(d) = slow {
                    let _ = tx.send(Item::Fin {
                        at: toxics::later(Instant::now(), d),
                    });
                }
                return End::Eof;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                lane.budget.add_permits(CHUNK_OVERHEAD);
                continue;
            }
            Err(e) => return end_of(&e),
        };
        relay.counters.copied.fetch_add(n as u64, Ordering::Relaxed);
        let read_at = Instant::now();
        if n == want && want < CHUNK {
            want *= 2;
        }
        bulk = n >= CHUNK;
        let mut reset = false;
        if let Some(ResetAfter::Bytes(limit)) = pump
            .active(current.as_ref())
            .and_then(|t| t.toxics.spec.reset_after)
        {
            // Counted per connection across the affected directions, from when this fault began:
            // keyed by the toxics' id, as an address can be reused by a later fault's toxics.
            let key = current.as_ref().map_or(0, |t| t.id);
            let mut count = counted.lock().expect("byte count lock");
            if count.0 != key {
                *count = (key, 0);
            }
            let left = limit.saturating_sub(count.1);
            if n as u64 >= left {
                n = left as usize;
                reset = true;
            }
            count.1 += n as u64;
        }
        lane.budget.add_permits(got - n);
        let bytes = if inline {
            &mut scratch.0[..n]
        } else {
            chunk.truncate(n);
            if chunk.len() * 2 < chunk.capacity() {
                // A small message held in a large buffer while it waits out a delay wastes memory.
                chunk.shrink_to_fit();
            }
            &mut chunk[..]
        };
        match pump.plan(read_at, Chunk::Bytes(bytes), current.as_ref()) {
            Plan::Release(release) if n > 0 => {
                let mut written = 0;
                if inline && release <= read_at {
                    match dst.try_write(&scratch.0[..n]) {
                        Ok(w) => written = w,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => return End::Close,
                    }
                    relay
                        .counters
                        .inline
                        .fetch_add(written as u64, Ordering::Relaxed);
                }
                if written < n {
                    // The rest waits in the queue, and every chunk after it behind it.
                    let bytes = if inline {
                        scratch.0[written..n].to_vec()
                    } else {
                        chunk
                    };
                    lane.budget.add_permits(written);
                    if tx.send(Item::Data { release, bytes }).is_err() {
                        return End::Close;
                    }
                } else {
                    lane.budget.add_permits(n + CHUNK_OVERHEAD);
                }
            }
            // Nothing queued (a black hole, or a reset cut the chunk to nothing): give back its budget.
            _ => lane.budget.add_permits(n + CHUNK_OVERHEAD),
        }
        drop(scratch);
        if reset {
            // The writer delivers what came before, then resets the connection.
            let _ = tx.send(Item::Reset);
            return End::Eof;
        }
    }
}

/// One splice from `src` into the direction's pipe (made on first use), queued as a `Piped` chunk.
async fn splice_chunk(
    src: &ReadHalf<'_>,
    tx: &Queue<'_>,
    lane: &Lane,
    pump: &mut Pump,
    relay: &Relay,
    pipe_in: &mut Option<splice::PipeIn>,
    current: Option<Arc<InForce>>,
) -> Spliced {
    if pipe_in.is_none() {
        match next_pipe(tx, lane, false) {
            Ok(Some(write)) => *pipe_in = Some(write),
            Ok(None) => return Spliced::Ended(End::Close),
            Err(e) => {
                // Out of descriptors, typically: this connection copies instead.
                tracing::debug!("proxy failed to make a pipe, copying instead: {e}");
                return Spliced::Refused;
            }
        }
    }
    let pipe = pipe_in.as_mut().expect("made above");
    // As much as the budgets have room for (at least a little, waiting for it if need be): a
    // splice costs the same syscall whatever its length.
    let size = pump
        .read_size(current.as_ref(), SPLICE_CHUNK)
        .min(lane.pipe_room(64 << 10));
    if !lane.take_pipe(size).await {
        return Spliced::Ended(End::Close);
    }
    let give_back = |n: usize| lane.give_pipe(n, CHUNK_OVERHEAD);
    match pipe.splice_from(src.as_ref(), size, lane.in_pipe.load(Ordering::Acquire)) {
        Ok(SpliceIn::Moved(n)) => {
            lane.give_pipe(size - n, 0);
            lane.in_pipe.fetch_add(n, Ordering::AcqRel);
            relay
                .counters
                .spliced
                .fetch_add(n as u64, Ordering::Relaxed);
            let read_at = Instant::now();
            let release = match pump.plan(read_at, Chunk::Spliced(n), current.as_ref()) {
                Plan::Release(at) => at,
                // Only a black hole drops, and it needs the bytes: never spliced.
                Plan::Drop => read_at,
            };
            if tx.send(Item::Piped { release, len: n }).is_err() {
                return Spliced::Ended(End::Close);
            }
            Spliced::Moved(n)
        }
        Ok(SpliceIn::Eof) => {
            give_back(size);
            let slow = pump
                .active(relay.toxics.borrow().as_ref())
                .and_then(|t| t.toxics.spec.slow_close);
            if let Some(d) = slow {
                let _ = tx.send(Item::Fin {
                    at: toxics::later(Instant::now(), d),
                });
            }
            Spliced::Ended(End::Eof)
        }
        Ok(SpliceIn::PipeFull) => {
            give_back(size);
            if pipe.grow() {
                return Spliced::Next;
            }
            if lane.pipes.load(Ordering::Acquire) < MAX_PIPES && descriptors_for_a_pipe() {
                match next_pipe(tx, lane, true) {
                    Ok(Some(write)) => {
                        *pipe_in = Some(write);
                        return Spliced::Next;
                    }
                    Ok(None) => return Spliced::Ended(End::Close),
                    // Out of descriptors: wait for this pipe to drain instead.
                    Err(_) => {}
                }
            }
            lane.drained.notified().await;
            Spliced::Next
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            give_back(size);
            Spliced::Next
        }
        Err(e) if splice::is_unsupported(&e) => {
            give_back(size);
            splice::warn_unsupported(&e);
            Spliced::Refused
        }
        Err(e) => Spliced::Ended(end_of(&e)),
    }
}

/// Makes the direction's next pipe and sends its read end to the writer; `None` when the writer
/// is gone.
fn next_pipe(tx: &Queue<'_>, lane: &Lane, extra: bool) -> std::io::Result<Option<splice::PipeIn>> {
    let (read, write) = splice::pipe()?;
    if extra {
        EXTRA_PIPES.fetch_add(1, Ordering::Relaxed);
    }
    lane.pipes.fetch_add(1, Ordering::AcqRel);
    let out = PipeOut { fd: read, extra };
    Ok(tx.send(Item::Pipe(out)).is_ok().then_some(write))
}

/// Writes queued chunks no earlier than their release time, in order; half-closes at the end.
async fn write_side(
    mut dst: WriteHalf<'_>,
    mut rx: mpsc::UnboundedReceiver<Item>,
    lane: &Lane,
    counters: &Counters,
) -> End {
    let mut timer: Option<PreciseTimer> = None;
    let mut pipe_out: Option<PipeOut> = None;
    // An item taken off the queue while gathering piped chunks, to handle next.
    let mut next: Option<Item> = None;
    loop {
        let item = match next.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => break,
            },
        };
        match item {
            Item::Pipe(out) => {
                // Every chunk of the previous pipe came before this item: it is empty now.
                if pipe_out.replace(out).is_some() {
                    lane.pipes.fetch_sub(1, Ordering::AcqRel);
                    lane.drained.notify_one();
                }
                lane.done(1);
            }
            Item::Piped { release, mut len } => {
                if release > Instant::now() {
                    wait_until(&mut timer, release).await;
                    counters.released(release);
                }
                // Every piped chunk already due leaves in the same splice.
                let mut chunks = 1;
                let now = Instant::now();
                while let Ok(item) = rx.try_recv() {
                    match item {
                        Item::Piped { release, len: more } if release <= now => {
                            len += more;
                            chunks += 1;
                        }
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                let Some(PipeOut { fd: from, .. }) = pipe_out.as_ref() else {
                    return End::Close;
                };
                if let Err(end) = splice_out(from, &mut dst, len, lane).await {
                    return end;
                }
                lane.pipe_budget.add_permits(chunks * CHUNK_OVERHEAD);
                lane.done(chunks);
            }
            Item::Data { release, bytes } => {
                if release > Instant::now() {
                    wait_until(&mut timer, release).await;
                    counters.released(release);
                }
                if dst.write_all(&bytes).await.is_err() {
                    return End::Close;
                }
                lane.budget.add_permits(bytes.len() + CHUNK_OVERHEAD);
                lane.done(1);
            }
            Item::Fin { at } => {
                wait_until(&mut timer, at).await;
                break;
            }
            Item::Reset => return End::Reset,
        }
    }
    let _ = dst.shutdown().await;
    End::Eof
}

/// Moves `len` bytes from the pipe to `dst`, splicing while it can, copying if it is refused.
async fn splice_out(
    from: &OwnedFd,
    dst: &mut WriteHalf<'_>,
    mut len: usize,
    lane: &Lane,
) -> Result<(), End> {
    while len > 0 {
        dst.as_ref().writable().await.map_err(|_| End::Close)?;
        match splice::splice_to(from, dst.as_ref(), len) {
            Ok(0) => return Err(End::Close),
            Ok(n) => {
                len -= n;
                lane.took_out(n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if splice::is_unsupported(&e) => {
                splice::warn_unsupported(&e);
                let mut buf = vec![0_u8; len.min(CHUNK)];
                let n = splice::read_pipe(from, &mut buf).map_err(|_| End::Close)?;
                if n == 0 {
                    return Err(End::Close);
                }
                dst.write_all(&buf[..n]).await.map_err(|_| End::Close)?;
                len -= n;
                lane.took_out(n);
            }
            Err(_) => return Err(End::Close),
        }
    }
    Ok(())
}

/// Waits precisely when a timerfd is available, else (out of descriptors) with tokio's timer,
/// which may be up to a millisecond late but is never early either.
async fn wait_until(timer: &mut Option<PreciseTimer>, at: Instant) {
    if timer.is_none() {
        *timer = PreciseTimer::new().ok();
    }
    let precise = match timer {
        Some(t) => t.sleep_until(at).await.is_ok(),
        None => false,
    };
    if !precise {
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{Direction, ResetAfter, ToxicSpec, Toxics, registry};

    static NEXT: AtomicU64 = AtomicU64::new(0);

    /// An echo server and a proxy in front of it; returns the proxy's name and address.
    async fn proxied_echo() -> (String, SocketAddr) {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let name = format!("test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        registry()
            .open(&name, listen, &upstream.to_string())
            .unwrap();
        (name, listen)
    }

    fn toxics(spec: ToxicSpec) -> Toxics {
        Toxics {
            spec,
            owner: "test-fault".to_owned(),
            since: Instant::now(),
            seed: 42,
        }
    }

    async fn close(name: String) -> String {
        tokio::task::spawn_blocking(move || registry().close(&name))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_toxics_the_proxy_relays_bytes_and_half_closes() {
        let (name, listen) = proxied_echo().await;
        let mut conn = TcpStream::connect(listen).await.unwrap();
        let data: Vec<u8> = (0..200_000_u32).map(|i| i as u8).collect();
        let (mut r, mut w) = conn.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let ((), read) = tokio::join!(send, r.read_to_end(&mut back));
        read.unwrap();
        assert_eq!(back, data);
        close(name).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delay_in_both_directions_adds_up_and_is_never_early() {
        let (name, listen) = proxied_echo().await;
        let spec = ToxicSpec {
            delay: Duration::from_millis(5),
            direction: Direction::Both,
            ..ToxicSpec::default()
        };
        registry().set_toxics(&name, toxics(spec)).unwrap();
        let mut conn = TcpStream::connect(listen).await.unwrap();
        conn.set_nodelay(true).unwrap();
        let mut buf = [0_u8; 64];
        for _ in 0..20 {
            let t = Instant::now();
            conn.write_all(&[1; 64]).await.unwrap();
            conn.read_exact(&mut buf).await.unwrap();
            assert!(
                t.elapsed() >= Duration::from_millis(10),
                "{:?}",
                t.elapsed()
            );
        }
        // Each round trip released at least one delayed chunk per direction, each counted in the
        // bench's lateness histogram (whatever bucket the machine put it in).
        let late = registry().release_lateness(&name).unwrap();
        assert_eq!(late.len(), super::LATENESS_BOUNDS_US.len() + 1);
        assert!(late.iter().sum::<u64>() >= 40, "{late:?}");
        assert!(
            registry()
                .clear_toxics(&name, "test-fault")
                .contains("toxics off")
        );
        close(name).await;
    }

    #[test]
    fn release_lateness_lands_in_the_bucket_of_its_bound() {
        let counters = super::Counters::default();
        // Due 30 µs ago at least: above the 20 µs bound, so in the slot of a later bound.
        counters.released(
            Instant::now()
                .checked_sub(Duration::from_micros(30))
                .unwrap(),
        );
        // Due a second ago: beyond every bound, in the last slot.
        counters.released(Instant::now().checked_sub(Duration::from_secs(1)).unwrap());
        let counts: Vec<u64> = counters
            .late
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let twenty = super::LATENESS_BOUNDS_US
            .iter()
            .position(|b| *b == 20)
            .unwrap();
        assert_eq!(counts[..=twenty].iter().sum::<u64>(), 0, "{counts:?}");
        assert_eq!(counts[super::LATENESS_BOUNDS_US.len()], 1, "{counts:?}");
        assert_eq!(counts.iter().sum::<u64>(), 2, "{counts:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fast_sender_meets_back_pressure_instead_of_growing_the_queue() {
        let (name, listen) = proxied_echo().await;
        // Upstream held for a minute: nothing leaves the queue, so only its bound stops the sender.
        let spec = ToxicSpec {
            delay: Duration::from_secs(60),
            direction: Direction::Upstream,
            ..ToxicSpec::default()
        };
        registry().set_toxics(&name, toxics(spec)).unwrap();
        let mut conn = TcpStream::connect(listen).await.unwrap();
        let block = vec![0_u8; 64 << 10];
        let mut sent = 0_usize;
        while let Ok(Ok(())) =
            tokio::time::timeout(Duration::from_millis(500), conn.write_all(&block)).await
        {
            sent += block.len();
            // At most 32 MiB in the pipes, 4 MiB in the copy queue and the socket buffers (the
            // receive buffer autotunes up to `tcp_rmem`'s maximum, 32 MiB on many hosts).
            assert!(
                sent < 128 << 20,
                "the proxy took 128 MiB without pushing back"
            );
        }
        // 4 MiB of queue plus what the kernel buffers on both sockets.
        assert!(sent >= 4 << 20, "the queue took only {sent} bytes");
        close(name).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rate_limits_each_connection() {
        let (name, listen) = proxied_echo().await;
        // 100 kB/s downstream: 20 kB cannot come back in less than about 0.2 s.
        registry()
            .set_toxics(
                &name,
                toxics(ToxicSpec {
                    rate: Some(100_000),
                    ..ToxicSpec::default()
                }),
            )
            .unwrap();
        let mut conn = TcpStream::connect(listen).await.unwrap();
        let t = Instant::now();
        conn.write_all(&vec![3; 20_000]).await.unwrap();
        let mut back = vec![0_u8; 20_000];
        conn.read_exact(&mut back).await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "{:?}",
            t.elapsed()
        );
        close(name).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reset_after_bytes_delivers_the_bytes_then_resets() {
        let (name, listen) = proxied_echo().await;
        let spec = ToxicSpec {
            reset_after: Some(ResetAfter::Bytes(100)),
            ..ToxicSpec::default()
        };
        registry().set_toxics(&name, toxics(spec)).unwrap();
        let mut conn = TcpStream::connect(listen).await.unwrap();
        conn.write_all(&[5; 300]).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0_u8; 512];
        let err = loop {
            match conn.read(&mut buf).await {
                Ok(0) => panic!("closed with FIN, not reset, after {} bytes", got.len()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(got.len(), 100);
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        close(name).await;
    }

    /// Reads whatever comes back until the connection ends; returns the bytes and whether it
    /// ended with a reset.
    async fn read_until_end(conn: &mut TcpStream, want: usize) -> (usize, bool) {
        let mut got = 0;
        let mut buf = [0_u8; 512];
        loop {
            match tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await {
                // Closed, or nothing more within 2 s.
                Ok(Ok(0)) | Err(_) => return (got, false),
                Ok(Ok(n)) => {
                    got += n;
                    if got >= want {
                        return (got, false);
                    }
                }
                Ok(Err(e)) => return (got, e.kind() == std::io::ErrorKind::ConnectionReset),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_fault_on_the_same_connection_counts_its_bytes_from_zero() {
        let (name, listen) = proxied_echo().await;
        let mut conn = TcpStream::connect(listen).await.unwrap();
        let reset_after = |owner: &str| Toxics {
            owner: owner.to_owned(),
            ..toxics(ToxicSpec {
                reset_after: Some(ResetAfter::Bytes(100)),
                ..ToxicSpec::default()
            })
        };
        // The first fault lets 60 of its 100 bytes through, then ends.
        registry().set_toxics(&name, reset_after("first")).unwrap();
        conn.write_all(&[1; 60]).await.unwrap();
        assert_eq!(read_until_end(&mut conn, 60).await, (60, false));
        registry().clear_toxics(&name, "first");
        // A second fault with the same limit, on the same connection: its count starts at zero,
        // whatever the first one counted (and wherever its toxics were allocated).
        registry().set_toxics(&name, reset_after("second")).unwrap();
        conn.write_all(&[2; 60]).await.unwrap();
        assert_eq!(
            read_until_end(&mut conn, 60).await,
            (60, false),
            "the second fault inherited the first one's byte count"
        );
        conn.write_all(&[3; 60]).await.unwrap();
        assert_eq!(
            read_until_end(&mut conn, 60).await,
            (40, true),
            "the second fault resets after its own 100 bytes"
        );
        close(name).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timeout_black_holes_data_then_closes() {
        let (name, listen) = proxied_echo().await;
        let spec = ToxicSpec {
            timeout: Some(Duration::from_millis(200)),
            ..ToxicSpec::default()
        };
        registry().set_toxics(&name, toxics(spec)).unwrap();
        let mut conn = TcpStream::connect(listen).await.unwrap();
        let t = Instant::now();
        conn.write_all(&[9; 64]).await.unwrap();
        let mut buf = [0_u8; 64];
        let n = conn.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "data came through a black hole");
        assert!(
            t.elapsed() >= Duration::from_millis(190),
            "closed after {:?}",
            t.elapsed()
        );
        close(name).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_close_holds_the_end_of_the_stream_back() {
        let (name, listen) = proxied_echo().await;
        let spec = ToxicSpec {
            slow_close: Some(Duration::from_millis(200)),
            direction: Direction::Both,
            ..ToxicSpec::default()
        };
        registry().set_toxics(&name, toxics(spec)).unwrap();
        let mut conn = TcpStream::connect(listen).await.unwrap();
        conn.write_all(b"bye").await.unwrap();
        let t = Instant::now();
        conn.shutdown().await.unwrap();
        let mut back = Vec::new();
        conn.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye");
        // The FIN waits 200 ms on the way up and again on the way down.
        assert!(
            t.elapsed() >= Duration::from_millis(390),
            "{:?}",
            t.elapsed()
        );
        close(name).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_the_proxy_closes_the_port_and_its_connections() {
        let (name, listen) = proxied_echo().await;
        let mut conn = TcpStream::connect(listen).await.unwrap();
        conn.write_all(b"hi").await.unwrap();
        let mut buf = [0_u8; 2];
        conn.read_exact(&mut buf).await.unwrap();
        assert!(close(name.clone()).await.contains("closed the proxy"));
        assert!(
            TcpStream::connect(listen).await.is_err(),
            "the port still accepts connections"
        );
        let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
            .await
            .expect("connection left open");
        assert!(n.is_err() || n.unwrap() == 0);
        assert!(
            close(name).await.contains("was not running"),
            "closing twice is fine"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_one_fault_at_a_time_owns_a_proxy() {
        let (name, _) = proxied_echo().await;
        registry()
            .set_toxics(&name, toxics(ToxicSpec::default()))
            .unwrap();
        let other = Toxics {
            owner: "other".to_owned(),
            ..toxics(ToxicSpec::default())
        };
        let err = registry().set_toxics(&name, other).unwrap_err();
        assert!(
            err.contains("already carries the toxics of fault test-fault"),
            "{err}"
        );
        assert!(
            registry()
                .clear_toxics(&name, "other")
                .contains("no toxics of this fault")
        );
        close(name).await;
    }

    /// Waits up to 5 s for the proxy `name` to hold `want` connections; returns what it holds.
    async fn live_settles(name: &str, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let live = registry().live_of(name).expect("the proxy runs");
            if live == want || Instant::now() > deadline {
                return live;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One byte there and back through `conn`, or what went wrong.
    async fn round_trip(conn: &mut TcpStream) -> Result<(), String> {
        conn.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut buf = [0_u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await {
            Ok(Ok(1)) => Ok(()),
            Ok(Ok(_)) => Err("closed".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2 s".to_owned()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_after_time_beyond_any_instant_neither_panics_nor_leaks_the_count() {
        let (name, listen) = proxied_echo().await;
        // Past the checks, straight into the proxy: its arithmetic alone must hold.
        let spec = ToxicSpec {
            reset_after: Some(ResetAfter::Time(Duration::new(u64::MAX, 0))),
            ..ToxicSpec::default()
        };
        registry().set_toxics(&name, toxics(spec)).unwrap();
        let mut conn = TcpStream::connect(listen).await.unwrap();
        round_trip(&mut conn)
            .await
            .expect("the connection is relayed");
        assert_eq!(live_settles(&name, 1).await, 1);
        drop(conn);
        assert_eq!(live_settles(&name, 0).await, 0, "the count leaked");
        close(name).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proxy_closes_connections_beyond_its_cap_and_takes_new_ones_as_others_end() {
        let (name, listen) = proxied_echo().await;
        let mut conns = Vec::new();
        for i in 0..super::MAX_CONNECTIONS {
            let mut conn = TcpStream::connect(listen).await.unwrap();
            round_trip(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("connection {i} under the cap: {e}"));
            conns.push(conn);
        }
        let mut over = TcpStream::connect(listen).await.unwrap();
        assert!(
            round_trip(&mut over).await.is_err(),
            "a connection beyond {} was relayed",
            super::MAX_CONNECTIONS
        );
        assert_eq!(registry().live_of(&name), Some(super::MAX_CONNECTIONS));
        conns.pop();
        assert_eq!(
            live_settles(&name, super::MAX_CONNECTIONS - 1).await,
            super::MAX_CONNECTIONS - 1
        );
        let mut again = TcpStream::connect(listen).await.unwrap();
        round_trip(&mut again)
            .await
            .expect("a connection after one ended is relayed");
        drop((conns, again, over));
        assert_eq!(live_settles(&name, 0).await, 0);
        close(name).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proxy_whose_upstream_is_itself_closes_the_looping_connection() {
        let listen: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let name = format!("test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        // The registry does not check addresses (the request checks do): this is the loop a name
        // that resolves to the proxy's own address makes.
        registry().open(&name, listen, &listen.to_string()).unwrap();
        let mut conn = TcpStream::connect(listen).await.unwrap();
        let mut buf = [0_u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the looping connection stayed open: {read:?}"
        );
        drop(conn);
        assert_eq!(live_settles(&name, 0).await, 0, "connections stayed open");
        close(name).await;
    }

    /// Bytes no reorder, loss or duplicate can leave unchanged: a 64-bit LCG's high bytes.
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_no_toxic_a_peer_that_does_not_read_pushes_back_and_then_gets_every_byte_in_order()
    {
        for splice in [false, true] {
            // A server that reads nothing until told to, then everything.
            let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let upstream = server.local_addr().unwrap();
            let (start_tx, start_rx) = tokio::sync::oneshot::channel::<()>();
            let sink = tokio::spawn(async move {
                let (mut conn, _) = server.accept().await.unwrap();
                start_rx.await.unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).await.unwrap();
                got
            });
            let listen = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let name = format!("test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
            registry()
                .open_with(
                    &name,
                    listen,
                    &upstream.to_string(),
                    super::Options { splice },
                )
                .unwrap();
            let mut conn = TcpStream::connect(listen).await.unwrap();
            conn.set_nodelay(true).unwrap();
            // Messages from 1 byte to 40 KB, so some are written by the reader at once, some
            // are cut short by a full socket and queue, and some wait behind those.
            let data = pattern(48 << 20, 7);
            let mut sent = 0;
            let mut size = 1;
            while sent < data.len() {
                let end = (sent + size).min(data.len());
                // One `write` (cancel-safe, unlike `write_all`): on a timeout nothing was sent.
                match tokio::time::timeout(Duration::from_millis(500), conn.write(&data[sent..end]))
                    .await
                {
                    Ok(written) => sent += written.unwrap(),
                    // Blocked: the proxy pushes back while its peer reads nothing.
                    Err(_) => break,
                }
                size = size * 7 % 40_009 + 1;
            }
            if !splice {
                // The queue's 4 MiB at most, plus what the kernel buffers on the way. (Spliced
                // bytes wait in pipes, whose bound is the splice path's own.)
                assert!(
                    sent < data.len(),
                    "the proxy took {sent} bytes without pushing back"
                );
                assert!(sent >= 1 << 20, "only {sent} bytes went in");
            }
            start_tx.send(()).unwrap();
            let (mut r, mut w) = conn.split();
            let send_rest = async {
                w.write_all(&data[sent..]).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let ((), got) = tokio::join!(send_rest, sink);
            let got = got.unwrap();
            assert_eq!(got.len(), data.len(), "splice {splice}");
            let first_bad = got.iter().zip(&data).position(|(a, b)| a != b);
            assert_eq!(
                first_bad, None,
                "bytes reordered or changed (splice {splice})"
            );
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await.unwrap();
            assert!(
                registry().written_inline(&name).unwrap() > 0,
                "no chunk was written by its reader (splice {splice})"
            );
            close(name).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_toxic_starting_mid_stream_delays_the_next_chunk_and_later_ones_wait_behind_it() {
        let (name, listen) = proxied_echo().await;
        let mut conn = TcpStream::connect(listen).await.unwrap();
        conn.set_nodelay(true).unwrap();
        let mut back = [0_u8; 128];
        // Before the toxic: the chunks go straight through, written by their readers.
        for _ in 0..3 {
            conn.write_all(&[1; 64]).await.unwrap();
            conn.read_exact(&mut back[..64]).await.unwrap();
            assert_eq!(back[..64], [1; 64]);
        }
        let inline_before = registry().written_inline(&name).unwrap();
        assert!(inline_before > 0, "no chunk was written by its reader");
        let delay = Duration::from_millis(200);
        let spec = ToxicSpec {
            delay,
            direction: Direction::Upstream,
            ..ToxicSpec::default()
        };
        registry().set_toxics(&name, toxics(spec)).unwrap();
        let copied = |name: &str| registry().moved(name).unwrap().copied;
        let before_b = copied(&name);
        let t = Instant::now();
        conn.write_all(&[2; 64]).await.unwrap();
        // Once the proxy has read B (and queued it, delayed), the toxic ends; C, sent now and
        // due at once, must still wait behind B rather than be written by its reader.
        while copied(&name) < before_b + 64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            registry()
                .clear_toxics(&name, "test-fault")
                .contains("toxics off")
        );
        conn.write_all(&[3; 64]).await.unwrap();
        conn.read_exact(&mut back).await.unwrap();
        assert!(t.elapsed() >= delay, "B came back early: {:?}", t.elapsed());
        assert_eq!(back[..64], [2; 64], "B did not come first");
        assert_eq!(back[64..], [3; 64], "C overtook B or was changed");
        close(name).await;
    }
}
