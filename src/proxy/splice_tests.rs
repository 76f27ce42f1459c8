//! Tests of the proxy's zero-copy path against real sockets: large transfers stay byte-exact with
//! and without a delay, the splice path is what actually carries them, and a live connection
//! switches to copying when a toxic that needs the bytes starts and back when it ends, without
//! losing or reordering a byte.
//!
//! Byte-exactness is checked by comparing every received byte with the byte the sender wrote at
//! that offset (a seeded pseudo-random stream whose period, 1 MiB + 7, lines up with no buffer,
//! page or chunk size), which is stronger than comparing checksums at the end and points at the
//! first wrong offset.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use super::{Direction, Moved, Options, ResetAfter, ToxicSpec, Toxics, registry};

/// The period of the test stream: a prime-ish length, so no slice of a buffer or a pipe page
/// can be shifted by it unnoticed.
const PERIOD: usize = (1 << 20) + 7;

/// A seeded pseudo-random byte stream: byte `i` is `block[i % PERIOD]`.
#[derive(Clone)]
struct Pattern(Arc<Vec<u8>>);

impl Pattern {
    fn new(seed: u64) -> Pattern {
        let mut block = vec![0_u8; PERIOD];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut block);
        Pattern(Arc::new(block))
    }

    /// Fills `buf` with the stream from `offset` on.
    fn fill(&self, mut offset: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let at = (offset % PERIOD as u64) as usize;
            let n = (PERIOD - at).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.0[at..at + n]);
            done += n;
            offset += n as u64;
        }
    }

    /// Panics at the first byte of `got` that is not the stream's at `offset`.
    fn check(&self, offset: u64, got: &[u8], expected: &mut Vec<u8>) {
        expected.resize(got.len(), 0);
        self.fill(offset, expected);
        if got != expected.as_slice() {
            let first = got
                .iter()
                .zip(expected.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "byte {} of the stream differs: got {:#04x}, sent {:#04x}",
                offset + first as u64,
                got[first],
                expected[first]
            );
        }
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A proxy on a free port in front of `upstream`; closed when dropped, even when a test fails.
struct TestProxy {
    name: String,
    listen: SocketAddr,
}

impl TestProxy {
    fn open(upstream: SocketAddr, options: Options) -> TestProxy {
        let listen = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let name = format!("splice-test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        registry()
            .open_with(&name, listen, &upstream.to_string(), options)
            .unwrap();
        TestProxy { name, listen }
    }

    fn moved(&self) -> Moved {
        registry().moved(&self.name).expect("the proxy runs")
    }

    fn set(&self, owner: &str, spec: ToxicSpec) {
        registry()
            .set_toxics(
                &self.name,
                Toxics {
                    spec,
                    owner: owner.to_owned(),
                    since: Instant::now(),
                    seed: 9,
                },
            )
            .unwrap();
    }

    fn clear(&self, owner: &str) {
        assert!(
            registry()
                .clear_toxics(&self.name, owner)
                .contains("toxics off")
        );
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        registry().close(&self.name);
    }
}

/// A server that sends `total` bytes of `pattern` to each client, then closes.
fn source(pattern: Pattern, total: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let pattern = pattern.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0_u8; 256 << 10];
                let mut sent = 0_u64;
                while sent < total {
                    let n = buf.len().min((total - sent) as usize);
                    pattern.fill(sent, &mut buf[..n]);
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    sent += n as u64;
                }
            });
        }
    });
    addr
}

/// An echo server: each connection's bytes come back on it.
fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut back = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut back);
                let _ = back.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Reads the whole stream from `addr` and checks every byte; returns how many came.
fn read_all_checked(addr: SocketAddr, pattern: &Pattern) -> u64 {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0_u8; 256 << 10];
    let mut expected = Vec::new();
    let mut got = 0_u64;
    loop {
        let n = conn.read(&mut buf).expect("the stream stalled or failed");
        if n == 0 {
            return got;
        }
        pattern.check(got, &buf[..n], &mut expected);
        got += n as u64;
    }
}

const GIB: u64 = 1 << 30;

#[test]
fn a_spliced_connection_carries_a_gibibyte_byte_exact() {
    let pattern = Pattern::new(1);
    let proxy = TestProxy::open(source(pattern.clone(), GIB), Options::default());
    assert_eq!(read_all_checked(proxy.listen, &pattern), GIB);
    assert_bulk_spliced(proxy.moved(), "with no toxic a stream is spliced");
}

/// A bulk stream of a gibibyte was spliced but for its start (copied until a read filled the
/// largest buffer) and the odd short splice after which it copied until the next full read.
fn assert_bulk_spliced(moved: Moved, why: &str) {
    assert_eq!(moved.spliced + moved.copied, GIB, "{moved:?}");
    assert!(moved.copied < GIB / 128, "{why}: {moved:?}");
}

#[test]
fn a_spliced_connection_carries_a_gibibyte_byte_exact_under_a_delay() {
    let pattern = Pattern::new(2);
    let proxy = TestProxy::open(source(pattern.clone(), GIB), Options::default());
    proxy.set(
        "delay",
        ToxicSpec {
            delay: Duration::from_millis(10),
            ..ToxicSpec::default()
        },
    );
    assert_eq!(read_all_checked(proxy.listen, &pattern), GIB);
    assert_bulk_spliced(
        proxy.moved(),
        "a delay needs no copy: a stream waits in the pipe",
    );
}

#[test]
fn small_messages_are_copied_not_spliced() {
    // Request/response of 64 bytes, as a key-value store's clients send them: a splice would
    // cost more syscalls than a copy, so none is made.
    let proxy = TestProxy::open(echo(), Options::default());
    let mut conn = TcpStream::connect(proxy.listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut back = [0_u8; 64];
    for i in 0..200_u8 {
        let message = [i; 64];
        conn.write_all(&message).unwrap();
        conn.read_exact(&mut back).unwrap();
        assert_eq!(back, message);
    }
    let moved = proxy.moved();
    assert_eq!(
        moved,
        Moved {
            spliced: 0,
            copied: 2 * 200 * 64
        },
        "both directions of every message copied"
    );
}

#[test]
fn with_splicing_off_every_byte_is_copied() {
    // The counters tell the two paths apart; without this, a splice path that never engaged
    // would look the same as one that did.
    let pattern = Pattern::new(3);
    let total = 64 << 20;
    let proxy = TestProxy::open(source(pattern.clone(), total), Options { splice: false });
    assert_eq!(read_all_checked(proxy.listen, &pattern), total);
    assert_eq!(
        proxy.moved(),
        Moved {
            spliced: 0,
            copied: total
        }
    );
}

/// What the switch test does once the client has read this far.
struct Step {
    at: u64,
    /// `Some` sets these toxics (replacing any); `None` clears them.
    toxics: Option<ToxicSpec>,
    /// Whether, from the previous step to this one, bytes were spliced (else copied).
    spliced_before: bool,
}

#[test]
fn a_live_connection_switches_to_copying_while_a_toxic_needs_the_bytes_and_back() {
    // An echo upstream and a client that streams while it reads back: bytes are in flight in
    // both directions at every switch, in the pipe or in the copy queue. Both directions are
    // affected. The toxic that forces copying is a `reset_after` by bytes far beyond the stream,
    // so it reads every byte without changing one.
    let pattern = Pattern::new(4);
    let total: u64 = 384 << 20;
    let proxy = TestProxy::open(echo(), Options::default());
    let delay = ToxicSpec {
        delay: Duration::from_millis(5),
        direction: Direction::Both,
        ..ToxicSpec::default()
    };
    let copying = ToxicSpec {
        reset_after: Some(ResetAfter::Bytes(1 << 50)),
        ..delay.clone()
    };
    let step = 48 << 20;
    let steps = [
        // No toxics: spliced.
        Step {
            at: step,
            toxics: Some(delay.clone()),
            spliced_before: true,
        },
        // A delay: still spliced, with bytes waiting in the pipe at the next switch.
        Step {
            at: 2 * step,
            toxics: Some(copying),
            spliced_before: true,
        },
        // A toxic that reads the bytes: copied.
        Step {
            at: 4 * step,
            toxics: Some(delay),
            spliced_before: false,
        },
        // The delay alone again: back to splicing, behind the copied bytes still queued.
        Step {
            at: 5 * step,
            toxics: None,
            spliced_before: true,
        },
    ];

    let mut conn = TcpStream::connect(proxy.listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sender = conn.try_clone().unwrap();
    let send_pattern = pattern.clone();
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0_u8; 64 << 10];
        let mut sent = 0_u64;
        while sent < total {
            let n = buf.len().min((total - sent) as usize);
            send_pattern.fill(sent, &mut buf[..n]);
            sender.write_all(&buf[..n]).unwrap();
            sent += n as u64;
        }
        sender.shutdown(std::net::Shutdown::Write).unwrap();
    });

    let mut buf = vec![0_u8; 256 << 10];
    let mut expected = Vec::new();
    let mut got = 0_u64;
    let mut last = proxy.moved();
    let mut steps = steps.iter().peekable();
    let owner = |i: u64| format!("switch-{i}");
    let mut set_by: Option<String> = None;
    loop {
        let n = conn.read(&mut buf).expect("the stream stalled or failed");
        if n == 0 {
            break;
        }
        pattern.check(got, &buf[..n], &mut expected);
        got += n as u64;
        if let Some(s) = steps.next_if(|s| got >= s.at) {
            let now = proxy.moved();
            let (spliced, copied) = (now.spliced - last.spliced, now.copied - last.copied);
            if s.spliced_before {
                // Reads in the instant between sampling the counters and switching the toxics
                // count towards the next interval, and a direction copies after a switch until
                // a read fills the largest buffer (longer on a loaded machine, where reads come
                // back short): mostly spliced, not only. A build that never splices again copies
                // the whole interval.
                assert!(
                    spliced >= step && copied <= spliced / 4,
                    "before {} MiB: {spliced} bytes spliced, {copied} copied",
                    s.at >> 20
                );
            } else {
                assert!(
                    copied >= step && spliced < step / 4,
                    "before {} MiB, with a toxic that reads the bytes: {spliced} bytes spliced, {copied} copied",
                    s.at >> 20
                );
            }
            last = now;
            if let Some(owner) = set_by.take() {
                proxy.clear(&owner);
            }
            if let Some(spec) = &s.toxics {
                let name = owner(s.at);
                proxy.set(&name, spec.clone());
                set_by = Some(name);
            }
        }
    }
    writer.join().unwrap();
    assert_eq!(got, total, "the stream came back whole");
    assert!(steps.next().is_none(), "every switch happened");
    let end = proxy.moved();
    assert!(
        end.spliced - last.spliced >= step
            && end.copied - last.copied <= (end.spliced - last.spliced) / 4,
        "after the last toxic ended the rest was spliced again: {end:?} after {last:?}"
    );
}

/// Polls `fut` once: whether it is done, and with what.
fn poll_once<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

#[test]
fn directions_share_one_pipe_budget_beyond_their_reserves_and_wait_for_it_not_fail() {
    use super::Lane;
    use super::splice::{LANE_RESERVE, Pool};

    const POOL: usize = 1 << 20;
    let pool: &'static Pool = Box::leak(Box::new(Pool::new(POOL)));
    let lanes: Vec<Lane> = (0..8).map(|_| Lane::with_pool(Some(pool))).collect();
    // Every direction fills its reserve without touching the pool.
    for lane in &lanes {
        assert_eq!(
            poll_once(std::pin::pin!(lane.take_pipe(LANE_RESERVE))),
            Some(true)
        );
    }
    assert_eq!(pool.available(), POOL);
    // One direction takes the whole pool beyond its reserve.
    for _ in 0..4 {
        assert_eq!(
            poll_once(std::pin::pin!(lanes[0].take_pipe(POOL / 4))),
            Some(true)
        );
    }
    assert_eq!(pool.available(), 0);
    // Another direction now waits for budget: it neither fails nor goes past the cap.
    {
        let mut waiting = std::pin::pin!(lanes[1].take_pipe(64 << 10));
        assert_eq!(
            poll_once(waiting.as_mut()),
            None,
            "took budget the pool did not have"
        );
        let (in_pipes, _, _) = pool.usage();
        assert_eq!(
            in_pipes,
            lanes.len() * LANE_RESERVE + POOL,
            "more than the cap is held"
        );
        // The first one drains a little; the waiting one proceeds.
        lanes[0].give_pipe(64 << 10, 0);
        assert_eq!(
            poll_once(waiting.as_mut()),
            Some(true),
            "the waiting one did not proceed"
        );
    }
    assert_eq!(pool.available(), 0);
    // A direction draining below its reserve gives the pool nothing back: it owed it nothing.
    lanes[2].give_pipe(LANE_RESERVE, 0);
    assert_eq!(pool.available(), 0);
    // Connections that end with bytes still in their pipes give back their share.
    drop(lanes);
    assert_eq!(pool.available(), POOL);
    assert_eq!(
        pool.usage().0,
        0,
        "bytes counted in pipes after every lane is gone"
    );
}

#[test]
fn the_pipe_budget_is_a_size_within_bounds_and_an_error_names_its_variable() {
    use super::splice::{PIPE_BYTES_ENV, parse_pool_bytes};

    assert_eq!(parse_pool_bytes("256MiB"), Ok(256 << 20));
    assert_eq!(parse_pool_bytes("1MiB"), Ok(1 << 20));
    for bad in ["0", "1KiB", "65GiB", "lots", "-5MiB", "1.5GiB"] {
        let e = parse_pool_bytes(bad).expect_err(bad);
        assert!(e.starts_with(PIPE_BYTES_ENV), "`{bad}`: {e}");
        assert!(e.contains(bad), "`{bad}`: {e}");
    }
}
