//! Owns the arithmetic of the verdict: statistics over samples, SLO checks (absolute or relative to
//! the baseline), recovery detection and abort-rule breaches. Pure: no IO, no clocks of its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::model::{AbortCondition, AbortRule, ProbeSpec, Slo};
use crate::probe::Sample;
use crate::units::{LatencyBound, Percent, SuccessBound, format_ms};

/// What a set of samples says. Latency percentiles are over successful samples only: failures
/// are counted by the success ratio, and a refused connection's latency says nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Stats {
    pub(crate) samples: usize,
    pub(crate) successes: usize,
    pub(crate) p50: Option<Duration>,
    pub(crate) p95: Option<Duration>,
    pub(crate) p99: Option<Duration>,
    pub(crate) max: Option<Duration>,
    /// Over the samples that read a number (Prometheus probes, `value = true` commands), failed
    /// ones included: a saturation of 97% is the reason a check failed, not noise to drop.
    pub(crate) values: Option<ValueStats>,
    /// The most common cause among failed samples and how many failed with it: what a reason
    /// names when the success ratio is too low ("status 503" in 17 samples).
    pub(crate) top_cause: Option<(String, usize)>,
    /// Connect time (DNS, TCP, TLS) of the samples that opened a connection (`http`, `grpc`).
    pub(crate) connect: Option<Split>,
    /// Time to the response's headers, of the samples that got a response (`http`, `grpc`).
    pub(crate) first_byte: Option<Split>,
}

/// Percentiles of one part of the latency, over the samples that measured it, failed ones
/// included: a slow connect is where the time went whatever the status was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Split {
    pub(crate) count: usize,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

impl Split {
    fn of(hist: &Histogram<u64>) -> Option<Split> {
        (!hist.is_empty()).then(|| Split {
            count: hist.len() as usize,
            p50: Duration::from_micros(hist.value_at_quantile(0.50)),
            p99: Duration::from_micros(hist.value_at_quantile(0.99)),
        })
    }
}

/// Minimum, mean and maximum of the numbers a probe read in one phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ValueStats {
    pub(crate) count: usize,
    pub(crate) min: f64,
    pub(crate) mean: f64,
    pub(crate) max: f64,
}

impl Stats {
    pub(crate) fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Stats {
        // Microseconds up to an hour, three significant digits: 0.1% error at any latency.
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        let mut stats = Stats::default();
        let mut connect = hist.clone();
        let mut first_byte = hist.clone();
        let (mut count, mut sum, mut min, mut max) =
            (0_usize, 0.0_f64, f64::INFINITY, f64::NEG_INFINITY);
        let mut causes: BTreeMap<&str, usize> = BTreeMap::new();
        for s in samples {
            stats.samples += 1;
            if s.ok {
                stats.successes += 1;
                hist.saturating_record((s.latency.as_micros() as u64).max(1));
            } else if let Some(cause) = s.cause.as_deref().or(s.error.as_deref()) {
                *causes.entry(cause).or_default() += 1;
            }
            if let Some(d) = s.timing.connect {
                connect.saturating_record((d.as_micros() as u64).max(1));
            }
            if let Some(d) = s.timing.first_byte {
                first_byte.saturating_record((d.as_micros() as u64).max(1));
            }
            if let Some(v) = s.value.filter(|v| !v.is_nan()) {
                count += 1;
                sum += v;
                min = min.min(v);
                max = max.max(v);
            }
        }
        // The most frequent cause; among equals the first in name order, so a reason is stable.
        stats.top_cause = causes
            .into_iter()
            .rev()
            .max_by_key(|&(_, n)| n)
            .map(|(cause, n)| (cause.to_owned(), n));
        if count > 0 {
            stats.values = Some(ValueStats {
                count,
                min,
                mean: sum / count as f64,
                max,
            });
        }
        stats.connect = Split::of(&connect);
        stats.first_byte = Split::of(&first_byte);
        if stats.successes > 0 {
            let at = |q: f64| Some(Duration::from_micros(hist.value_at_quantile(q)));
            stats.p50 = at(0.50);
            stats.p95 = at(0.95);
            stats.p99 = at(0.99);
            stats.max = Some(Duration::from_micros(hist.max()));
        }
        stats
    }

    pub(crate) fn success_ratio(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.successes as f64 / self.samples as f64)
    }

    /// Why samples failed, as a clause: "connection refused in 4/4 samples"; `None` when none did.
    pub(crate) fn failure_cause(&self) -> Option<String> {
        let (cause, n) = self.top_cause.as_ref()?;
        Some(format!("{cause} in {n}/{} samples", self.samples))
    }
}

/// Checks stats against an SLO. The error is one readable clause naming the number and threshold:
/// "front page p99 was 812 ms, above 250 ms".
pub(crate) fn check_slo(
    name: &str,
    slo: &Slo,
    stats: &Stats,
    baseline: Option<&Stats>,
) -> Result<(), String> {
    let Some(ratio) = stats.success_ratio() else {
        return Err(format!("{name} had no samples"));
    };
    let needed = match slo.success {
        SuccessBound::Absolute(p) => p,
        SuccessBound::BaselineMinus(points) => match baseline.and_then(Stats::success_ratio) {
            Some(base) => base - points,
            None => {
                return Err(format!(
                    "{name} has no baseline to compare its success ratio with"
                ));
            }
        },
    };
    // A tiny tolerance, so "99.9%" of 1000 samples is not lost to floating point.
    if ratio + 1e-9 < needed {
        return Err(format!(
            "{name} success was {} ({}/{}), below {}{}{}",
            Percent(ratio),
            stats.successes,
            stats.samples,
            Percent(needed.max(0.0)),
            relative_note(matches!(slo.success, SuccessBound::BaselineMinus(_))),
            because(stats)
        ));
    }
    let bounds = [
        ("p50", slo.p50, stats.p50, baseline.and_then(|b| b.p50)),
        ("p95", slo.p95, stats.p95, baseline.and_then(|b| b.p95)),
        ("p99", slo.p99, stats.p99, baseline.and_then(|b| b.p99)),
    ];
    for (label, bound, value, base) in bounds {
        let Some(bound) = bound else { continue };
        let limit = match bound {
            LatencyBound::Absolute(d) => d,
            LatencyBound::TimesBaseline(x) => match base {
                Some(b) => b.mul_f64(x),
                None => return Err(format!("{name} has no baseline {label} to compare with")),
            },
        };
        let Some(value) = value else {
            return Err(format!(
                "{name} had no successful samples to measure {label}{}",
                because(stats)
            ));
        };
        if value > limit {
            return Err(format!(
                "{name} {label} was {}, above {}{}",
                format_ms(value),
                format_ms(limit),
                relative_note(matches!(bound, LatencyBound::TimesBaseline(_)))
            ));
        }
    }
    Ok(())
}

/// ": connection refused in 4/4 samples", or nothing when no sample failed.
fn because(stats: &Stats) -> String {
    stats
        .failure_cause()
        .map_or_else(String::new, |c| format!(": {c}"))
}

fn relative_note(relative: bool) -> &'static str {
    if relative {
        " (relative to the baseline)"
    } else {
        ""
    }
}

/// Samples whose start lies in `[from, to)`. One probe's samples are in start order (its task
/// checks one at a time), so this is two binary searches, not a scan: the run loop asks it on
/// every event, and a scan would make long runs with fast probes quadratic.
pub(crate) fn between(
    samples: &[Sample],
    from: Instant,
    to: Instant,
) -> impl Iterator<Item = &Sample> {
    let lo = samples.partition_point(|s| s.at < from);
    let hi = samples.partition_point(|s| s.at < to).max(lo);
    samples[lo..hi].iter()
}

/// Finds when the steady state came back after the faults: the earliest sample time `c` after
/// `from` such that every probe meets its SLO over `[c, c + window)`.
#[derive(Debug)]
pub(crate) struct RecoveryTracker {
    from: Instant,
    window: Duration,
    within: Duration,
    /// Candidates at or before this time were judged and rejected; their windows were complete.
    rejected_until: Option<Instant>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum RecoveryState {
    Pending,
    Recovered(Instant),
    /// Not recovered within the allowed time; the reason names what still failed.
    Failed(String),
}

impl RecoveryTracker {
    pub(crate) fn new(from: Instant, window: Duration, within: Duration) -> RecoveryTracker {
        RecoveryTracker {
            from,
            window,
            within,
            rejected_until: None,
        }
    }

    /// The latest moment a recovery can be confirmed: the last allowed start plus one window.
    pub(crate) fn deadline(&self) -> Instant {
        self.from + self.within + self.window
    }

    pub(crate) fn update(
        &mut self,
        probes: &[ProbeSpec],
        samples: &[Vec<Sample>],
        baselines: &[Stats],
        now: Instant,
    ) -> RecoveryState {
        // Only samples not yet judged and not past the allowed time can start a recovery; each
        // probe's samples are in start order, so those are one slice per probe.
        let last = self.from + self.within;
        let mut candidates: Vec<Instant> = samples
            .iter()
            .flat_map(|probe| {
                let lo = match self.rejected_until {
                    Some(r) => probe.partition_point(|s| s.at <= r),
                    None => 0,
                };
                let lo = lo.max(probe.partition_point(|s| s.at < self.from));
                let hi = probe.partition_point(|s| s.at <= last).max(lo);
                probe[lo..hi].iter().map(|s| s.at)
            })
            .collect();
        candidates.sort();
        candidates.dedup();
        for c in candidates {
            if c + self.window > now {
                break;
            }
            let holds = probes.iter().enumerate().all(|(i, p)| {
                check_slo(
                    &p.name,
                    &p.slo,
                    &Stats::of(between(&samples[i], c, c + self.window)),
                    baselines.get(i),
                )
                .is_ok()
            });
            if holds {
                return RecoveryState::Recovered(c);
            }
            self.rejected_until = Some(c);
        }
        if now < self.deadline() {
            return RecoveryState::Pending;
        }
        // Explain with the most recent window, which is what a person would look at.
        let recent = now
            .checked_sub(self.window)
            .unwrap_or(self.from)
            .max(self.from);
        let reasons: Vec<String> = probes
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                check_slo(
                    &p.name,
                    &p.slo,
                    &Stats::of(between(&samples[i], recent, now)),
                    baselines.get(i),
                )
                .err()
            })
            .collect();
        let why = if reasons.is_empty() {
            "the steady state never held for a whole window".to_owned()
        } else {
            reasons.join("; ")
        };
        RecoveryState::Failed(format!(
            "{why} in the last {}; not recovered within the allowed {}",
            format_ms(now.saturating_duration_since(recent)),
            format_ms(self.within)
        ))
    }
}

/// If the rule is breached at `now`, when the breach began. Only judged once a whole `over` has
/// passed since `active_since` (the first injection); no data at all counts as a breach.
pub(crate) fn abort_breach(
    rule: &AbortRule,
    samples: &[Sample],
    active_since: Instant,
    now: Instant,
) -> Option<Instant> {
    if now.saturating_duration_since(active_since) < rule.over {
        return None;
    }
    let start = now.checked_sub(rule.over)?;
    // Samples are in start order (see `between`): the window is a slice, found without a scan.
    let lo = samples.partition_point(|s| s.at <= start);
    let hi = samples.partition_point(|s| s.at <= now).max(lo);
    let window: Vec<&Sample> = samples[lo..hi].iter().collect();
    let Some(first) = window.first() else {
        return Some(start);
    };
    match rule.condition {
        AbortCondition::SuccessBelow(threshold) => {
            let ok = window.iter().filter(|s| s.ok).count();
            let ratio = ok as f64 / window.len() as f64;
            (ratio < threshold).then(|| window.iter().find(|s| !s.ok).map_or(first.at, |s| s.at))
        }
        AbortCondition::P99Above(limit) => {
            let stats = Stats::of(window.iter().copied());
            let breached = stats.p99.is_none_or(|p99| p99 > limit);
            breached.then(|| {
                window
                    .iter()
                    .find(|s| !s.ok || s.latency > limit)
                    .map_or(first.at, |s| s.at)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Check;

    fn sample(at: Instant, ok: bool, ms: u64) -> Sample {
        Sample {
            probe: 0,
            at,
            ok,
            latency: Duration::from_millis(ms),
            error: None,
            cause: None,
            value: None,
            timing: crate::probe::Timing::default(),
        }
    }

    #[test]
    fn the_latency_split_counts_only_samples_that_measured_each_part() {
        let t = Instant::now();
        let timed = |connect: Option<u64>, first_byte: Option<u64>, ok: bool| Sample {
            timing: crate::probe::Timing {
                connect: connect.map(Duration::from_millis),
                first_byte: first_byte.map(Duration::from_millis),
            },
            ..sample(t, ok, 50)
        };
        // One new connection, three reused ones, and a refused connection that measured nothing.
        let samples = [
            timed(Some(20), Some(40), true),
            timed(None, Some(10), true),
            timed(None, Some(10), true),
            timed(None, Some(30), false),
            timed(None, None, false),
        ];
        let stats = Stats::of(&samples);
        let connect = stats.connect.unwrap();
        assert_eq!(connect.count, 1, "reused connections have no connect time");
        assert_eq!(connect.p50.as_millis(), 20);
        let first_byte = stats.first_byte.unwrap();
        assert_eq!(
            first_byte.count, 4,
            "a failed status still had a first byte"
        );
        assert_eq!(first_byte.p50.as_millis(), 10);
        assert_eq!(first_byte.p99.as_millis(), 40);
        assert_eq!(Stats::of(&[sample(t, true, 5)]).connect, None);
    }

    fn probe(slo: Slo) -> ProbeSpec {
        ProbeSpec {
            name: "front page".into(),
            check: Check::Tcp {
                addr: "127.0.0.1:1".into(),
            },
            every: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            slo,
            slo_during: None,
            signal: None,
        }
    }

    fn slo(success: f64, p99: Option<LatencyBound>) -> Slo {
        Slo {
            success: SuccessBound::Absolute(success),
            p50: None,
            p95: None,
            p99,
        }
    }

    #[test]
    fn percentiles_ignore_failures_and_track_latency() {
        let t = Instant::now();
        let mut samples: Vec<Sample> = (1..=100).map(|i| sample(t, true, i)).collect();
        samples.push(sample(t, false, 5000));
        let s = Stats::of(&samples);
        assert_eq!((s.samples, s.successes), (101, 100));
        let p50 = s.p50.unwrap().as_millis();
        assert!((49..=51).contains(&p50), "{p50}");
        assert_eq!(s.max.unwrap().as_millis(), 100);
    }

    #[test]
    fn slo_breaches_read_as_sentences() {
        let t = Instant::now();
        let samples = vec![sample(t, true, 812), sample(t, false, 1)];
        let err =
            check_slo("front page", &slo(0.99, None), &Stats::of(&samples), None).unwrap_err();
        assert_eq!(err, "front page success was 50% (1/2), below 99%");
        let err = check_slo(
            "front page",
            &slo(
                0.5,
                Some(LatencyBound::Absolute(Duration::from_millis(250))),
            ),
            &Stats::of(&samples),
            None,
        )
        .unwrap_err();
        assert_eq!(err, "front page p99 was 812 ms, above 250 ms");
    }

    #[test]
    fn a_low_success_ratio_names_the_most_common_cause_and_its_count() {
        let t = Instant::now();
        let failed = |cause: &str| Sample {
            cause: Some(cause.to_owned()),
            error: Some(format!("{cause}, in full")),
            ..sample(t, false, 1)
        };
        let mut samples = vec![sample(t, true, 5), sample(t, true, 5), sample(t, true, 5)];
        samples.extend((0..15).map(|_| failed("status 503")));
        samples.extend((0..2).map(|_| failed("connection refused")));
        let err =
            check_slo("front page", &slo(0.99, None), &Stats::of(&samples), None).unwrap_err();
        assert_eq!(
            err,
            "front page success was 15% (3/20), below 99%: status 503 in 15/20 samples"
        );
        // Every sample failed: the latency bound cannot be measured, and the reason says why.
        let down: Vec<Sample> = (0..4)
            .map(|_| failed("Prometheus unreachable (connection refused)"))
            .collect();
        let err = check_slo(
            "rate",
            &slo(0.0, Some(LatencyBound::Absolute(Duration::from_millis(1)))),
            &Stats::of(&down),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "rate had no successful samples to measure p99: Prometheus unreachable (connection refused) in 4/4 samples"
        );
        // Equal counts: the first cause in name order, so the reason does not flicker.
        let tie = vec![failed("timed out"), failed("status 500")];
        assert_eq!(
            Stats::of(&tie).failure_cause().unwrap(),
            "status 500 in 1/2 samples"
        );
    }

    #[test]
    fn relative_bounds_follow_the_baseline() {
        let t = Instant::now();
        let base = Stats::of(&[sample(t, true, 100)]);
        let now = Stats::of(&[sample(t, true, 150)]);
        let relaxed = slo(1.0, Some(LatencyBound::TimesBaseline(2.0)));
        assert!(check_slo("p", &relaxed, &now, Some(&base)).is_ok());
        let strict = slo(1.0, Some(LatencyBound::TimesBaseline(1.2)));
        let err = check_slo("p", &strict, &now, Some(&base)).unwrap_err();
        assert!(
            err.contains("above 120 ms (relative to the baseline)"),
            "{err}"
        );
    }

    #[test]
    fn relative_bounds_hold_for_the_baseline_itself() {
        let t = Instant::now();
        let base = Stats::of(&[sample(t, true, 100)]);
        let slo = Slo {
            success: SuccessBound::BaselineMinus(0.01),
            p50: None,
            p95: None,
            p99: Some(LatencyBound::TimesBaseline(2.0)),
        };
        assert_eq!(check_slo("p", &slo, &base, Some(&base)), Ok(()));
    }

    #[test]
    fn values_are_summarised_across_failed_samples_too() {
        let t = Instant::now();
        let mut samples = vec![sample(t, true, 1), sample(t, false, 1), sample(t, true, 1)];
        for (s, v) in samples.iter_mut().zip([2.0, 8.0, f64::NAN]) {
            s.value = Some(v);
        }
        let v = Stats::of(&samples).values.unwrap();
        assert_eq!((v.count, v.min, v.mean, v.max), (2, 2.0, 5.0, 8.0));
    }

    #[test]
    fn between_finds_the_window_in_ordered_samples() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let samples: Vec<Sample> = (0..10).map(|i| sample(t + ms(i * 100), true, 1)).collect();
        assert_eq!(between(&samples, t + ms(200), t + ms(500)).count(), 3);
        assert_eq!(between(&samples, t + ms(500), t + ms(200)).count(), 0);
    }

    #[test]
    fn recovery_is_the_first_sample_of_a_window_that_holds() {
        let t0 = Instant::now();
        let p = [probe(slo(1.0, None))];
        // Fails for 1.5 s after t0, then succeeds every 100 ms.
        let samples: Vec<Sample> = (0..50)
            .map(|i| sample(t0 + Duration::from_millis(i * 100), i >= 15, 1))
            .collect();
        let mut tracker = RecoveryTracker::new(t0, Duration::from_secs(1), Duration::from_secs(3));
        let all = vec![samples];
        assert_eq!(
            tracker.update(&p, &all, &[], t0 + Duration::from_secs(2)),
            RecoveryState::Pending
        );
        let state = tracker.update(&p, &all, &[], t0 + Duration::from_millis(2600));
        assert_eq!(
            state,
            RecoveryState::Recovered(t0 + Duration::from_millis(1500))
        );
    }

    #[test]
    fn recovery_fails_after_the_allowed_time_with_a_reason() {
        let t0 = Instant::now();
        let p = [probe(slo(1.0, None))];
        let samples: Vec<Sample> = (0..50)
            .map(|i| sample(t0 + Duration::from_millis(i * 100), false, 1))
            .collect();
        let mut tracker = RecoveryTracker::new(t0, Duration::from_secs(1), Duration::from_secs(2));
        let RecoveryState::Failed(why) =
            tracker.update(&p, &[samples], &[], t0 + Duration::from_secs(5))
        else {
            panic!("expected a failed recovery");
        };
        assert!(why.contains("front page success was 0%"), "{why}");
        assert!(why.contains("within the allowed 2 s"), "{why}");
    }

    #[test]
    fn abort_rules_wait_for_a_full_window_then_fire() {
        let t0 = Instant::now();
        let rule = AbortRule {
            name: "r".into(),
            probe: 0,
            condition: AbortCondition::P99Above(Duration::from_millis(200)),
            over: Duration::from_secs(1),
        };
        let samples: Vec<Sample> = (0..12)
            .map(|i| sample(t0 + Duration::from_millis(i * 100), true, 500))
            .collect();
        assert_eq!(
            abort_breach(&rule, &samples, t0, t0 + Duration::from_millis(900)),
            None
        );
        let start = abort_breach(&rule, &samples, t0, t0 + Duration::from_millis(1100)).unwrap();
        assert_eq!(start, t0 + Duration::from_millis(200));
        let quiet = AbortRule {
            condition: AbortCondition::SuccessBelow(0.5),
            ..rule
        };
        assert_eq!(
            abort_breach(&quiet, &samples, t0, t0 + Duration::from_millis(1100)),
            None
        );
        assert!(
            abort_breach(&quiet, &[], t0, t0 + Duration::from_millis(1100)).is_some(),
            "no data is a breach"
        );
    }
}
