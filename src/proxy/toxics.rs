//! Owns what a proxy does to the bytes while a fault is active — the toxics — and the arithmetic
//! of each one, kept free of IO so it can be tested exactly.
//!
//! Semantics, per connection and per affected direction (a "chunk" is what one read returned, at
//! most [`super::CHUNK`] bytes):
//! - `delay` / `jitter`: a chunk read at `t` is released at `t + d`, where `d` is drawn uniformly
//!   from `[delay − jitter, delay + jitter]` for every chunk; draws below zero count as zero, so a
//!   jitter larger than the delay cannot underflow. A chunk is never released before the chunk read
//!   before it: order is kept, and a short draw behind a long one waits for it.
//! - `rate`: bytes leave at most at this rate: a chunk is released no earlier than when the
//!   previous chunks, sent back to back at `rate`, would have finished. Reads shrink to about 10 ms
//!   worth of data so the pacing stays smooth.
//! - `corrupt`: every byte has this probability of getting one random bit flipped.
//! - `timeout`: black hole — data is read and dropped; the connection is closed (FIN) this long
//!   after the fault reached it, or held open while the fault lasts when it is zero.
//! - `slow_close`: the end of the stream (FIN) is passed on this long after it arrived (and never
//!   before the data queued ahead of it).
//! - `reset_after`: the connection is reset (RST to both sides) once this many bytes have passed
//!   in the affected directions, or this long after the fault reached it.
//!
//! "The fault reached it" = the later of the connection's start and the fault's injection.
//! Random draws come from the fault's seed, mixed with the connection's number and direction.
//! What a connection keeps per fault (its byte count, its random stream) is keyed by the
//! [`InForce::id`] of the toxics, never by their address: a later fault's toxics may be allocated
//! where an earlier fault's were freed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Which way the toxics act. `Downstream` is server → client, the way replies travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Direction {
    #[default]
    Downstream,
    Upstream,
    Both,
}

impl Direction {
    pub(crate) fn parse(s: &str) -> Result<Direction, String> {
        match s {
            "downstream" => Ok(Direction::Downstream),
            "upstream" => Ok(Direction::Upstream),
            "both" => Ok(Direction::Both),
            other => Err(format!(
                "invalid direction `{other}`: use `downstream` (server to client), `upstream` or `both`"
            )),
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Downstream => "downstream",
            Direction::Upstream => "upstream",
            Direction::Both => "both",
        }
    }

    /// Whether a pump flowing `flow` is affected.
    pub(crate) fn covers(self, flow: Flow) -> bool {
        matches!(
            (self, flow),
            (Direction::Both, _)
                | (Direction::Downstream, Flow::ToClient)
                | (Direction::Upstream, Flow::ToServer)
        )
    }
}

/// One of the two byte flows of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    ToServer,
    ToClient,
}

/// When a connection is reset.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ResetAfter {
    Bytes(u64),
    Time(Duration),
}

/// The toxics of one fault, as configured. Serializable: it travels in the fault spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToxicSpec {
    pub(crate) direction: Direction,
    pub(crate) delay: Duration,
    pub(crate) jitter: Duration,
    /// Bytes per second.
    pub(crate) rate: Option<u64>,
    /// Probability per byte, `0.0..=1.0`.
    pub(crate) corrupt: f64,
    pub(crate) timeout: Option<Duration>,
    pub(crate) slow_close: Option<Duration>,
    pub(crate) reset_after: Option<ResetAfter>,
}

/// Toxics in force on a proxy: the spec plus what the running fault contributes.
#[derive(Debug)]
pub(crate) struct Toxics {
    pub(crate) spec: ToxicSpec,
    /// The fault that set them; only it may clear them.
    pub(crate) owner: String,
    pub(crate) since: Instant,
    pub(crate) seed: u64,
}

/// Toxics put in force on a proxy, with an identity of their own: each time toxics are set they
/// get a new id, so state kept per fault starts fresh for the next fault, even for the same owner.
#[derive(Debug)]
pub(crate) struct InForce {
    /// Unique for the life of the process, never 0.
    pub(crate) id: u64,
    pub(crate) toxics: Toxics,
}

impl InForce {
    pub(crate) fn new(toxics: Toxics) -> InForce {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        InForce {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            toxics,
        }
    }
}

/// A chunk as a pump sees it: bytes read into memory, or only the length of bytes spliced into a
/// pipe, which stay in the kernel.
pub(crate) enum Chunk<'a> {
    Bytes(&'a mut [u8]),
    Spliced(usize),
}

/// What a pump does with one chunk.
#[derive(Debug, PartialEq)]
pub(crate) enum Plan {
    /// Write it at this instant (possibly now).
    Release(Instant),
    /// Drop it (black hole).
    Drop,
}

/// Per-pump toxic state: the ordering floor, the pacing clock and the random stream.
pub(crate) struct Pump {
    flow: Flow,
    connection: u64,
    /// The release time of the previous chunk: no chunk goes before it.
    floor: Option<Instant>,
    /// When the bytes paced so far have all left, for `rate`.
    paced_until: Option<Instant>,
    /// The random stream and the [`InForce::id`] it belongs to.
    rng: Option<(u64, StdRng)>,
}

impl Pump {
    pub(crate) fn new(flow: Flow, connection: u64) -> Pump {
        Pump {
            flow,
            connection,
            floor: None,
            paced_until: None,
            rng: None,
        }
    }

    /// The toxics that apply to this pump, if any.
    pub(crate) fn active<'t>(&self, toxics: Option<&'t Arc<InForce>>) -> Option<&'t Arc<InForce>> {
        toxics.filter(|t| t.toxics.spec.direction.covers(self.flow))
    }

    /// How many bytes to read at most: about 10 ms worth when a rate applies.
    pub(crate) fn read_size(&self, toxics: Option<&Arc<InForce>>, max: usize) -> usize {
        match self.active(toxics).and_then(|t| t.toxics.spec.rate) {
            Some(rate) => ((rate / 100) as usize).clamp(1, max),
            None => max,
        }
    }

    /// Whether the toxics that apply to this pump must see the bytes themselves (`corrupt` flips
    /// them, `timeout` drops them, `reset_after` by bytes cuts a chunk at its limit), so the
    /// chunk has to be read into memory. Everything else (no toxics, `delay`, `jitter`, `rate`,
    /// `slow_close`, `reset_after` by time) acts on lengths and instants only, and the bytes may
    /// stay in the kernel.
    pub(crate) fn needs_bytes(&self, toxics: Option<&Arc<InForce>>) -> bool {
        self.active(toxics).is_some_and(|t| {
            let spec = &t.toxics.spec;
            spec.corrupt > 0.0
                || spec.timeout.is_some()
                || matches!(spec.reset_after, Some(ResetAfter::Bytes(_)))
        })
    }

    /// Decides when the chunk read at `read_at` leaves, corrupting it first if asked. A
    /// [`Chunk::Spliced`] chunk is only a length: call it only when [`Pump::needs_bytes`] is false.
    pub(crate) fn plan(
        &mut self,
        read_at: Instant,
        chunk: Chunk<'_>,
        toxics: Option<&Arc<InForce>>,
    ) -> Plan {
        let Some(t) = self.active(toxics) else {
            self.paced_until = None;
            return self.keep_order(read_at);
        };
        let spec = &t.toxics.spec;
        if spec.timeout.is_some() {
            return Plan::Drop;
        }
        let rng = self.rng_for(t);
        let mut release = later(read_at, draw_delay(spec.delay, spec.jitter, rng));
        let len = match chunk {
            Chunk::Bytes(bytes) => {
                if spec.corrupt > 0.0 {
                    corrupt(bytes, spec.corrupt, rng);
                }
                bytes.len()
            }
            Chunk::Spliced(len) => {
                debug_assert!(spec.corrupt == 0.0, "a spliced chunk cannot be corrupted");
                len
            }
        };
        if let Some(rate) = spec.rate {
            let start = self.paced_until.map_or(read_at, |p| p.max(read_at));
            let done = later(
                start,
                Duration::from_secs_f64(len as f64 / rate.max(1) as f64),
            );
            self.paced_until = Some(done);
            release = release.max(done);
        }
        self.keep_order(release)
    }

    fn keep_order(&mut self, release: Instant) -> Plan {
        let release = self.floor.map_or(release, |f| f.max(release));
        self.floor = Some(release);
        Plan::Release(release)
    }

    /// The random stream for this fault, connection and direction; a new fault starts a new one.
    fn rng_for(&mut self, t: &InForce) -> &mut StdRng {
        if self.rng.as_ref().is_none_or(|(id, _)| *id != t.id) {
            let lane = self.connection.wrapping_mul(2) + u64::from(self.flow == Flow::ToClient);
            self.rng = Some((
                t.id,
                StdRng::seed_from_u64(t.toxics.seed ^ lane.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ));
        }
        &mut self.rng.as_mut().expect("set above").1
    }
}

/// `at + d`, or a century on when that is more than an `Instant` holds: checks bound every
/// duration well below either, but arithmetic on a request's values must never panic.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(at)
}

/// A delay drawn uniformly from `[delay − jitter, delay + jitter]`, clamped at zero.
pub(crate) fn draw_delay(delay: Duration, jitter: Duration, rng: &mut impl Rng) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let (d, j) = (delay.as_nanos() as i128, jitter.as_nanos() as i128);
    let drawn = rng.random_range(d - j..=d + j);
    Duration::from_nanos(drawn.max(0) as u64)
}

/// Flips one random bit in each byte chosen with probability `p`.
fn corrupt(chunk: &mut [u8], p: f64, rng: &mut impl Rng) {
    for byte in chunk {
        if rng.random_bool(p.clamp(0.0, 1.0)) {
            *byte ^= 1 << rng.random_range(0..8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toxics(spec: ToxicSpec) -> Arc<InForce> {
        Arc::new(InForce::new(Toxics {
            spec,
            owner: "f".to_owned(),
            since: Instant::now(),
            seed: 7,
        }))
    }

    #[test]
    fn jitter_larger_than_the_delay_clamps_at_zero_instead_of_underflowing() {
        let mut rng = StdRng::seed_from_u64(1);
        let draws: Vec<Duration> = (0..10_000)
            .map(|_| draw_delay(Duration::from_millis(1), Duration::from_millis(5), &mut rng))
            .collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(6)));
        assert!(
            draws.iter().any(Duration::is_zero),
            "about 40% of draws fall below zero and must count as zero"
        );
        assert!(draws.iter().any(|d| *d > Duration::from_millis(5)));
        let year = Duration::from_secs(365 * 24 * 3600);
        assert!(
            draw_delay(Duration::ZERO, year, &mut rng) <= year,
            "a huge jitter on no delay neither panics nor wraps"
        );
    }

    #[test]
    fn chunks_are_delayed_from_their_read_time_and_never_reordered() {
        let t = toxics(ToxicSpec {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(9),
            ..ToxicSpec::default()
        });
        let mut pump = Pump::new(Flow::ToClient, 3);
        let start = Instant::now();
        let mut last = start;
        for i in 0..1000 {
            let read_at = start + Duration::from_micros(i * 100);
            let Plan::Release(at) = pump.plan(read_at, Chunk::Bytes(&mut [0; 8]), Some(&t)) else {
                panic!("dropped")
            };
            assert!(
                at >= read_at + Duration::from_millis(1),
                "released before the smallest possible draw"
            );
            assert!(at >= last, "released out of order");
            last = at;
        }
    }

    #[test]
    fn the_direction_decides_which_flow_is_touched() {
        let t = toxics(ToxicSpec {
            delay: Duration::from_millis(10),
            ..ToxicSpec::default()
        });
        let now = Instant::now();
        let mut up = Pump::new(Flow::ToServer, 0);
        assert_eq!(
            up.plan(now, Chunk::Bytes(&mut [0]), Some(&t)),
            Plan::Release(now),
            "downstream is the default"
        );
        let mut down = Pump::new(Flow::ToClient, 0);
        assert_eq!(
            down.plan(now, Chunk::Bytes(&mut [0]), Some(&t)),
            Plan::Release(now + Duration::from_millis(10))
        );
    }

    #[test]
    fn undelayed_chunks_after_the_fault_wait_behind_delayed_ones() {
        let t = toxics(ToxicSpec {
            delay: Duration::from_millis(10),
            ..ToxicSpec::default()
        });
        let now = Instant::now();
        let mut pump = Pump::new(Flow::ToClient, 0);
        let Plan::Release(first) = pump.plan(now, Chunk::Bytes(&mut [0]), Some(&t)) else {
            panic!()
        };
        assert_eq!(
            pump.plan(now + Duration::from_millis(1), Chunk::Bytes(&mut [0]), None),
            Plan::Release(first)
        );
        let later = now + Duration::from_millis(20);
        assert_eq!(
            pump.plan(later, Chunk::Bytes(&mut [0]), None),
            Plan::Release(later)
        );
    }

    #[test]
    fn only_toxics_that_read_change_or_drop_bytes_need_them() {
        let pump = Pump::new(Flow::ToClient, 0);
        let needs = |spec: ToxicSpec| pump.needs_bytes(Some(&toxics(spec)));
        assert!(!pump.needs_bytes(None), "no toxics: spliced");
        assert!(
            !needs(ToxicSpec {
                delay: Duration::from_millis(10),
                jitter: Duration::from_millis(5),
                rate: Some(1000),
                slow_close: Some(Duration::from_millis(5)),
                reset_after: Some(ResetAfter::Time(Duration::from_secs(1))),
                ..ToxicSpec::default()
            }),
            "lengths and instants only"
        );
        assert!(needs(ToxicSpec {
            corrupt: 0.01,
            ..ToxicSpec::default()
        }));
        assert!(needs(ToxicSpec {
            timeout: Some(Duration::ZERO),
            ..ToxicSpec::default()
        }));
        assert!(needs(ToxicSpec {
            reset_after: Some(ResetAfter::Bytes(10)),
            ..ToxicSpec::default()
        }));
        assert!(
            !Pump::new(Flow::ToServer, 0).needs_bytes(Some(&toxics(ToxicSpec {
                corrupt: 0.5,
                ..ToxicSpec::default()
            }))),
            "a toxic on the other direction leaves this one spliced"
        );
    }

    #[test]
    fn a_spliced_chunk_is_planned_like_copied_bytes_of_its_length() {
        let t = toxics(ToxicSpec {
            delay: Duration::from_millis(3),
            jitter: Duration::from_millis(2),
            rate: Some(10_000),
            ..ToxicSpec::default()
        });
        let now = Instant::now();
        let (mut spliced, mut copied) =
            (Pump::new(Flow::ToClient, 5), Pump::new(Flow::ToClient, 5));
        for i in 0..100 {
            let at = now + Duration::from_micros(i * 700);
            assert_eq!(
                spliced.plan(at, Chunk::Spliced(37), Some(&t)),
                copied.plan(at, Chunk::Bytes(&mut [0; 37]), Some(&t))
            );
        }
    }

    #[test]
    fn a_rate_paces_chunks_back_to_back() {
        let t = toxics(ToxicSpec {
            rate: Some(1000),
            ..ToxicSpec::default()
        });
        let now = Instant::now();
        let mut pump = Pump::new(Flow::ToClient, 0);
        assert_eq!(pump.read_size(Some(&t), 32 << 10), 10);
        assert_eq!(
            pump.plan(now, Chunk::Bytes(&mut [0; 10]), Some(&t)),
            Plan::Release(now + Duration::from_millis(10))
        );
        assert_eq!(
            pump.plan(now, Chunk::Bytes(&mut [0; 10]), Some(&t)),
            Plan::Release(now + Duration::from_millis(20))
        );
    }

    #[test]
    fn corruption_is_seeded_and_flips_single_bits() {
        let t = toxics(ToxicSpec {
            corrupt: 0.5,
            ..ToxicSpec::default()
        });
        let run = || {
            let mut chunk = vec![0_u8; 4096];
            Pump::new(Flow::ToClient, 1).plan(Instant::now(), Chunk::Bytes(&mut chunk), Some(&t));
            chunk
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b, "the same seed corrupts the same bytes");
        let flipped = a.iter().filter(|b| **b != 0).count();
        assert!(
            (1500..2600).contains(&flipped),
            "{flipped} of 4096 bytes flipped at p = 0.5"
        );
        assert!(a.iter().all(|b| b.count_ones() <= 1));
    }

    #[test]
    fn a_black_hole_drops_data() {
        let t = toxics(ToxicSpec {
            timeout: Some(Duration::ZERO),
            direction: Direction::Both,
            ..ToxicSpec::default()
        });
        assert_eq!(
            Pump::new(Flow::ToServer, 0).plan(Instant::now(), Chunk::Bytes(&mut [1]), Some(&t)),
            Plan::Drop
        );
    }

    #[test]
    fn a_later_fault_starts_its_own_random_stream() {
        let spec = ToxicSpec {
            corrupt: 0.5,
            ..ToxicSpec::default()
        };
        let corrupted = |pump: &mut Pump, t: &Arc<InForce>| {
            let mut chunk = vec![0_u8; 256];
            pump.plan(Instant::now(), Chunk::Bytes(&mut chunk), Some(t));
            chunk
        };
        let first = toxics(spec.clone());
        let mut pump = Pump::new(Flow::ToClient, 1);
        let from_first = corrupted(&mut pump, &first);
        let first_id = first.id;
        // Freed before the next toxics are made, which the allocator may then put at its address.
        drop(first);
        // Same seed and spec, new toxics: the stream starts over instead of running on.
        let second = toxics(spec);
        assert_ne!(first_id, second.id);
        let from_second = corrupted(&mut pump, &second);
        assert_eq!(
            from_second, from_first,
            "the second fault continued the first one's stream"
        );
    }
}
