//! Owns the regression gate (`[gate]`, `--gate`): the rule grammar, the arithmetic that compares a
//! run with earlier runs of the same experiment (pure), the sentence that explains it, and the one
//! async function that reads those runs from the history and rewrites a run's verdict.
//!
//! Earlier runs are found by the experiment's title, not its sha256: the sha256 changes with every
//! edit of the file (a comment, a probe's interval), and a gate that forgot its history on each
//! edit would rarely have enough runs to judge.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::history::{Filter, History};
use crate::report::{Report, Verdict};

/// Bounds of a rule, so a typo (`15x`, `last 100000`) is refused rather than silently disabling
/// the gate or reading the whole history.
const MAX_FACTOR: f64 = 100.0;
const MAX_LAST: usize = 1000;

/// How many of an experiment's newest runs the gate looks through for its matching runs.
const SCAN_LIMIT: usize = 10_000;

/// What a rule measures on a run. Every measure is a duration where higher is worse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Metric {
    /// The run's time to recover.
    TimeToRecover,
    /// The worst probe's p99 latency during the faults.
    P99During,
    /// The worst probe's p99 latency after the faults.
    P99After,
}

impl Metric {
    pub(crate) const ALL: [Metric; 3] =
        [Metric::TimeToRecover, Metric::P99During, Metric::P99After];

    /// The `[gate]` key and the `--gate` name.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Metric::TimeToRecover => "time_to_recover",
            Metric::P99During => "p99_during",
            Metric::P99After => "p99_after",
        }
    }

    /// What reasons call it.
    fn label(self) -> &'static str {
        match self {
            Metric::TimeToRecover => "time to recover",
            Metric::P99During => "p99 during the faults",
            Metric::P99After => "p99 after the faults",
        }
    }

    /// True when the measure is only in the full report, not in the history's columns.
    fn needs_report(self) -> bool {
        !matches!(self, Metric::TimeToRecover)
    }

    /// The measure of one run, when it has one (a run that never recovered has no time to
    /// recover; a phase without latency samples has no p99).
    pub(crate) fn of_report(self, report: &Report) -> Option<Duration> {
        let worst =
            |phases: &[crate::report::ProbePhase]| phases.iter().filter_map(|p| p.stats.p99).max();
        match self {
            Metric::TimeToRecover => report.time_to_recover,
            Metric::P99During => worst(&report.during),
            Metric::P99After => worst(&report.after),
        }
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Metric, String> {
        Metric::ALL
            .into_iter()
            .find(|m| m.key() == s)
            .ok_or_else(|| {
                format!(
                    "unknown gate measure `{s}`; expected time_to_recover, p99_during or p99_after"
                )
            })
    }
}

/// Which number of the earlier runs the factor multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stat {
    Median,
    /// The nearest-rank 90th percentile.
    P90,
    Max,
}

impl Stat {
    fn as_str(self) -> &'static str {
        match self {
            Stat::Median => "median",
            Stat::P90 => "p90",
            Stat::Max => "max",
        }
    }
}

/// Which earlier runs count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pool {
    /// Only runs whose verdict was `passed`.
    Passed,
    /// Every finished run, whatever its verdict.
    Runs,
}

impl Pool {
    fn as_str(self) -> &'static str {
        match self {
            Pool::Passed => "passed",
            Pool::Runs => "runs",
        }
    }

    /// "passed run(s)" / "run(s)" for `n` of them, as reasons say it.
    fn noun(self, n: usize) -> &'static str {
        match (self, n) {
            (Pool::Passed, 1) => "passed run",
            (Pool::Passed, _) => "passed runs",
            (Pool::Runs, 1) => "run",
            (Pool::Runs, _) => "runs",
        }
    }
}

/// One gate rule: `FACTORx (median|p90|max) of last N (passed|runs)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rule {
    pub(crate) factor: f64,
    pub(crate) stat: Stat,
    pub(crate) last: usize,
    pub(crate) pool: Pool,
}

const GRAMMAR: &str =
    "expected e.g. `1.5x median of last 10 passed` (FACTORx median|p90|max of last N passed|runs)";

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Rule, String> {
        let bad = |why: String| format!("invalid gate rule `{s}`: {why}");
        let words: Vec<&str> = s.split_whitespace().collect();
        let [factor, stat, "of", "last", last, pool] = words.as_slice() else {
            return Err(bad(GRAMMAR.to_owned()));
        };
        let factor: f64 = factor
            .strip_suffix('x')
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| {
                bad(format!(
                    "the factor `{factor}` is not a number followed by x; {GRAMMAR}"
                ))
            })?;
        if !(factor > 0.0 && factor <= MAX_FACTOR) {
            return Err(bad(format!(
                "the factor must be above 0 and at most {MAX_FACTOR} (got {factor})"
            )));
        }
        let stat = match *stat {
            "median" => Stat::Median,
            "p90" => Stat::P90,
            "max" => Stat::Max,
            other => return Err(bad(format!("`{other}` is not median, p90 or max"))),
        };
        let last: usize = last
            .parse()
            .map_err(|_| bad(format!("`{last}` is not a number of runs")))?;
        if !(1..=MAX_LAST).contains(&last) {
            return Err(bad(format!(
                "the number of runs must be 1 to {MAX_LAST} (got {last})"
            )));
        }
        let pool = match *pool {
            "passed" => Pool::Passed,
            "runs" => Pool::Runs,
            other => return Err(bad(format!("`{other}` is not passed or runs"))),
        };
        Ok(Rule {
            factor,
            stat,
            last,
            pool,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x {} of last {} {}",
            self.factor,
            self.stat.as_str(),
            self.last,
            self.pool.as_str()
        )
    }
}

crate::units::serde_via_str!(Rule);

/// One measure of the gate with its rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GateRule {
    pub(crate) metric: Metric,
    pub(crate) rule: Rule,
}

/// `--gate NAME=RULE`, e.g. `time_to_recover=1.5x median of last 10 passed`.
pub(crate) fn parse_flag(s: &str) -> Result<GateRule, String> {
    let (name, rule) = s.split_once('=').ok_or_else(|| {
        format!(
            "expected NAME=RULE, e.g. `time_to_recover=1.5x median of last 10 passed` (got `{s}`)"
        )
    })?;
    Ok(GateRule {
        metric: name.trim().parse()?,
        rule: rule.trim().parse()?,
    })
}

/// Adds `flags` to the experiment's own rules; a flag replaces the file's rule for its measure.
pub(crate) fn merge(rules: &mut Vec<GateRule>, flags: &[GateRule]) {
    for flag in flags {
        rules.retain(|r| r.metric != flag.metric);
        rules.push(*flag);
    }
    rules.sort_by_key(|r| Metric::ALL.iter().position(|m| *m == r.metric));
}

/// One earlier run of the experiment, as the gate sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Past {
    pub(crate) passed: bool,
    pub(crate) time_to_recover: Option<Duration>,
    pub(crate) p99_during: Option<Duration>,
    pub(crate) p99_after: Option<Duration>,
}

impl Past {
    fn value(&self, metric: Metric) -> Option<Duration> {
        match metric {
            Metric::TimeToRecover => self.time_to_recover,
            Metric::P99During => self.p99_during,
            Metric::P99After => self.p99_after,
        }
    }

    fn counts_for(&self, rule: &GateRule) -> bool {
        (self.passed || rule.rule.pool == Pool::Runs) && self.value(rule.metric).is_some()
    }
}

/// What one rule decided.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Judgement {
    /// The run is within the gate; the sentence says by how much.
    Within(String),
    /// The run is worse than the gate allows; the sentence gives the numbers.
    Breached(String),
    /// The rule could not judge (too little history, no measure); the sentence says why.
    NotApplied(String),
}

/// The median (mean of the middle two for an even count), nearest-rank p90 or max of `values`,
/// which must not be empty.
pub(crate) fn statistic(stat: Stat, values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    match stat {
        Stat::Median if n % 2 == 0 => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
        Stat::Median => sorted[n / 2],
        // Nearest rank: the smallest value with at least 90% of the values at or below it.
        Stat::P90 => sorted[(n * 9).div_ceil(10).max(1) - 1],
        Stat::Max => sorted[n - 1],
    }
}

/// Seconds with two decimals from 100 ms up (as the gate's numbers are read side by side),
/// milliseconds below.
fn show(d: Duration) -> String {
    if d >= Duration::from_millis(100) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

/// Judges one rule for a run whose measure is `current` (None: the run has none), against
/// earlier runs newest first (the run itself not among them).
pub(crate) fn judge(rule: &GateRule, current: Option<Duration>, past: &[Past]) -> Judgement {
    let GateRule { metric, rule: r } = rule;
    let label = metric.label();
    let Some(current) = current else {
        return Judgement::NotApplied(format!("this run has no {label}"));
    };
    let values: Vec<Duration> = past
        .iter()
        .filter(|p| p.counts_for(rule))
        .take(r.last)
        .filter_map(|p| p.value(*metric))
        .collect();
    if values.len() < r.last {
        let noun = r.pool.noun(values.len());
        let with = if metric.needs_report() {
            format!(" with a {label}")
        } else {
            String::new()
        };
        return Judgement::NotApplied(format!(
            "only {} {noun}{with} in the history, the gate needs {}",
            values.len(),
            r.last
        ));
    }
    let baseline = statistic(r.stat, &values);
    let stat = r.stat.as_str();
    let of = format!(
        "the {stat} {} of the last {} {}",
        show(baseline),
        r.last,
        r.pool.noun(r.last)
    );
    let limit = baseline.as_secs_f64() * r.factor;
    if current.as_secs_f64() > limit {
        let times = if baseline.is_zero() {
            "above".to_owned()
        } else {
            format!("{:.1}×", current.as_secs_f64() / baseline.as_secs_f64())
        };
        Judgement::Breached(format!(
            "{label} {}, {times} {of} (gate {}×)",
            show(current),
            r.factor
        ))
    } else {
        Judgement::Within(format!(
            "{label} {} within {}× {of}",
            show(current),
            r.factor
        ))
    }
}

/// Applies the gate to a finished run. `past` is the earlier runs, newest first, or why they
/// could not be read. Only a passed run is gated: any other verdict stands with its reason. A
/// breach fails the run; otherwise the reason notes what the gate found.
pub(crate) fn apply(report: &mut Report, rules: &[GateRule], past: Result<&[Past], &str>) {
    if rules.is_empty() || report.verdict != Verdict::Passed || report.dry_run {
        return;
    }
    let past = match past {
        Ok(past) => past,
        Err(why) => {
            report.reason = format!("{}; gate not applied: {why}", report.reason);
            return;
        }
    };
    let judgements: Vec<Judgement> = rules
        .iter()
        .map(|r| judge(r, r.metric.of_report(report), past))
        .collect();
    let breaches: Vec<&str> = judgements
        .iter()
        .filter_map(|j| match j {
            Judgement::Breached(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    if !breaches.is_empty() {
        report.reason = format!(
            "{}; before the gate: {}",
            breaches.join("; "),
            report.reason
        );
        report.verdict = Verdict::Failed;
        return;
    }
    // No breach: every judgement is a note.
    let notes: Vec<String> = judgements
        .iter()
        .filter_map(|j| match j {
            Judgement::Within(s) => Some(format!("gate: {s}")),
            Judgement::NotApplied(s) => Some(format!("gate not applied: {s}")),
            Judgement::Breached(_) => None,
        })
        .collect();
    report.reason = format!("{}; {}", report.reason, notes.join("; "));
}

/// Reads the earlier runs of `report`'s experiment that `rules` need, newest first, and applies
/// the gate. `history` is the error instead when the run is not recorded (`--no-history`) or
/// its history could not be opened, saying which.
pub(crate) async fn judge_run(
    report: &mut Report,
    rules: &[GateRule],
    history: Result<&History, String>,
) {
    if rules.is_empty() || report.verdict != Verdict::Passed || report.dry_run {
        return;
    }
    let past = match history {
        Ok(history) => read_past(history, report, rules).await,
        Err(why) => Err(why),
    };
    match past {
        Ok(past) => apply(report, rules, Ok(&past)),
        Err(why) => apply(report, rules, Err(&why)),
    }
}

/// `judge_run` for `faultline run`: reads the history in `state_dir` (None: `--no-history`).
pub(crate) async fn judge_cli_run(
    report: &mut Report,
    rules: &[GateRule],
    state_dir: Option<&std::path::Path>,
) {
    if rules.is_empty() || report.verdict != Verdict::Passed || report.dry_run {
        return;
    }
    let Some(dir) = state_dir else {
        let why = "the run is not recorded (--no-history), so there is no history to compare with";
        return judge_run(report, rules, Err(why.to_owned())).await;
    };
    let location = crate::history::Location::in_state_dir(dir);
    let history = History::open(&location)
        .await
        .map_err(|e| format!("the history could not be read: {e}"));
    judge_run(report, rules, history.as_ref().map_err(Clone::clone)).await;
}

/// The earlier finished runs of the same title, newest first, until every rule has the runs it
/// needs. Full reports (for p99 measures) are read only for runs a rule may count.
async fn read_past(
    history: &History,
    report: &Report,
    rules: &[GateRule],
) -> Result<Vec<Past>, String> {
    let filter = Filter {
        experiment: Some(report.title.clone()),
        schedule: None,
        last: Some(SCAN_LIMIT),
    };
    let rows = history
        .runs_without_reports(&filter)
        .await
        .map_err(|e| format!("the history could not be read: {e}"))?;
    let mut counts = vec![0usize; rules.len()];
    let mut past = Vec::new();
    for row in rows {
        if row.start.run_id == report.run_id {
            continue;
        }
        let Some(end) = &row.end else { continue };
        let mut p = Past {
            passed: end.verdict == Verdict::Passed.as_str(),
            time_to_recover: end.time_to_recover,
            ..Past::default()
        };
        let wants_report = rules.iter().zip(&counts).any(|(r, n)| {
            *n < r.rule.last && r.metric.needs_report() && (p.passed || r.rule.pool == Pool::Runs)
        });
        if wants_report {
            let stored = history
                .run(&row.start.run_id)
                .await
                .map_err(|e| format!("the history could not be read: {e}"))?;
            // A report that no longer parses counts as a run without the measure.
            let parsed = stored
                .and_then(|r| r.end)
                .and_then(|e| e.report_json)
                .and_then(|j| crate::report::json::parse(&j).ok());
            if let Some(old) = parsed {
                p.p99_during = Metric::P99During.of_report(&old);
                p.p99_after = Metric::P99After.of_report(&old);
            }
        }
        for (rule, n) in rules.iter().zip(counts.iter_mut()) {
            if p.counts_for(rule) {
                *n += 1;
            }
        }
        past.push(p);
        if rules.iter().zip(&counts).all(|(r, n)| *n >= r.rule.last) {
            break;
        }
    }
    Ok(past)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{GateRule, Judgement, Metric, Past, Pool, Rule, Stat, judge, statistic};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn passed(ttr_ms: u64) -> Past {
        Past {
            passed: true,
            time_to_recover: Some(ms(ttr_ms)),
            ..Past::default()
        }
    }

    fn ttr(rule: &str) -> GateRule {
        GateRule {
            metric: Metric::TimeToRecover,
            rule: rule.parse().unwrap(),
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(statistic(Stat::Median, &[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            statistic(Stat::Median, &[ms(4), ms(1), ms(3), ms(2)]),
            ms(2) + ms(1) / 2
        );
        assert_eq!(statistic(Stat::Median, &[ms(7)]), ms(7));
    }

    #[test]
    fn p90_is_the_nearest_rank_and_max_the_largest() {
        let ten: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(statistic(Stat::P90, &ten), ms(9));
        let eleven: Vec<Duration> = (1..=11).map(ms).collect();
        assert_eq!(statistic(Stat::P90, &eleven), ms(10));
        assert_eq!(statistic(Stat::P90, &[ms(5)]), ms(5));
        assert_eq!(statistic(Stat::Max, &[ms(5), ms(9), ms(1)]), ms(9));
    }

    #[test]
    fn rules_parse_and_print_back() {
        let r: Rule = "1.5x median of last 10 passed".parse().unwrap();
        assert_eq!(
            r,
            Rule {
                factor: 1.5,
                stat: Stat::Median,
                last: 10,
                pool: Pool::Passed
            }
        );
        assert_eq!(r.to_string(), "1.5x median of last 10 passed");
        let r: Rule = "2x  p90 of last 1000 runs".parse().unwrap();
        assert_eq!(r.to_string(), "2x p90 of last 1000 runs");
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Rule>().unwrap_err();
        assert_eq!(
            err("0x median of last 10 passed"),
            "invalid gate rule `0x median of last 10 passed`: the factor must be above 0 and at most 100 (got 0)"
        );
        assert!(err("101x max of last 10 passed").contains("at most 100 (got 101)"));
        assert!(err("NaNx max of last 10 passed").contains("above 0 and at most 100"));
        assert!(err("1.5 median of last 10 passed").contains("not a number followed by x"));
        assert!(err("1.5x mean of last 10 passed").contains("`mean` is not median, p90 or max"));
        assert!(err("1.5x max of last 0 passed").contains("must be 1 to 1000 (got 0)"));
        assert!(err("1.5x max of last 1001 passed").contains("(got 1001)"));
        assert!(err("1.5x max of last 10 failed").contains("`failed` is not passed or runs"));
        assert!(err("1.5x median").contains("expected e.g. `1.5x median of last 10 passed`"));
    }

    #[test]
    fn a_slow_recovery_breaches_with_both_numbers() {
        let past: Vec<Past> = (0..10).map(|_| passed(500)).collect();
        let j = judge(&ttr("1.5x median of last 10 passed"), Some(ms(2040)), &past);
        assert_eq!(
            j,
            Judgement::Breached(
                "time to recover 2.04 s, 4.1× the median 0.50 s of the last 10 passed runs (gate 1.5×)"
                    .to_owned()
            )
        );
    }

    #[test]
    fn exactly_the_factor_is_within_and_just_above_is_not() {
        let past: Vec<Past> = (0..10).map(|_| passed(500)).collect();
        let rule = ttr("1.5x median of last 10 passed");
        assert_eq!(
            judge(&rule, Some(ms(750)), &past),
            Judgement::Within(
                "time to recover 0.75 s within 1.5× the median 0.50 s of the last 10 passed runs"
                    .to_owned()
            )
        );
        assert!(matches!(
            judge(&rule, Some(ms(751)), &past),
            Judgement::Breached(_)
        ));
    }

    #[test]
    fn too_little_history_is_not_applied_and_counts_only_the_pool() {
        let mut past: Vec<Past> = (0..3).map(|_| passed(500)).collect();
        past.push(Past {
            passed: false,
            time_to_recover: Some(ms(5000)),
            ..Past::default()
        });
        assert_eq!(
            judge(&ttr("1.5x median of last 10 passed"), Some(ms(2000)), &past),
            Judgement::NotApplied(
                "only 3 passed runs in the history, the gate needs 10".to_owned()
            )
        );
        // The failed run counts among `runs`: the max is its 5 s.
        assert!(matches!(
            judge(&ttr("1x max of last 4 runs"), Some(ms(2000)), &past),
            Judgement::Within(_)
        ));
    }

    #[test]
    fn only_the_newest_n_count() {
        // Newest first: five fast runs, then five slow ones the gate must not see.
        let mut past: Vec<Past> = (0..5).map(|_| passed(100)).collect();
        past.extend((0..5).map(|_| passed(10_000)));
        assert!(matches!(
            judge(&ttr("2x max of last 5 passed"), Some(ms(300)), &past),
            Judgement::Breached(_)
        ));
    }

    #[test]
    fn a_run_without_the_measure_is_not_judged_and_one_run_is_singular() {
        assert_eq!(
            judge(
                &ttr("1.5x median of last 2 runs"),
                Some(ms(1)),
                &[passed(1)]
            ),
            Judgement::NotApplied("only 1 run in the history, the gate needs 2".to_owned())
        );
        let p99 = GateRule {
            metric: Metric::P99During,
            rule: "2x max of last 1 passed".parse().unwrap(),
        };
        let past = [Past {
            passed: true,
            p99_during: Some(ms(40)),
            ..Past::default()
        }];
        assert_eq!(
            judge(&p99, Some(ms(81)), &past),
            Judgement::Breached(
                "p99 during the faults 81.0 ms, 2.0× the max 40.0 ms of the last 1 passed run (gate 2×)"
                    .to_owned()
            )
        );
        assert_eq!(
            judge(&ttr("1.5x median of last 1 passed"), None, &[passed(1)]),
            Judgement::NotApplied("this run has no time to recover".to_owned())
        );
    }

    /// A passed run that recovered in `ttr_ms`, read from the JSON a run writes.
    fn report(verdict: &str, ttr_ms: u64) -> crate::report::Report {
        let text = format!(
            r#"{{"schema_version": 1, "run_id": "r1",
            "experiment": {{"title": "t", "file": "x.toml", "sha256": "00"}},
            "seed": 1, "started_at": "2026-12-01T10:00:00Z", "ended_at": "2026-12-01T10:00:05Z",
            "dry_run": false, "verdict": "{verdict}", "exit_code": 0, "reason": "recovered",
            "phases": {{"before": [], "during": [], "after": []}}, "faults": [],
            "time_to_recover_ms": {ttr_ms}, "recovery_within_ms": 5000, "aborted_by": null,
            "time_to_abort_ms": null, "recovered_from_journal": [], "budget": null,
            "samples": []}}"#
        );
        crate::report::json::parse(&text).unwrap()
    }

    #[test]
    fn apply_fails_a_breach_notes_a_pass_and_leaves_other_verdicts_alone() {
        use crate::report::Verdict;
        let past: Vec<Past> = (0..10).map(|_| passed(500)).collect();
        let rules = [ttr("1.5x median of last 10 passed")];

        let mut slow = report("passed", 2040);
        super::apply(&mut slow, &rules, Ok(&past));
        assert_eq!(slow.verdict, Verdict::Failed);
        assert_eq!(slow.exit_code(), 1);
        assert_eq!(
            slow.reason,
            "time to recover 2.04 s, 4.1× the median 0.50 s of the last 10 passed runs (gate 1.5×); before the gate: recovered"
        );

        let mut fine = report("passed", 520);
        super::apply(&mut fine, &rules, Ok(&past));
        assert_eq!(fine.verdict, Verdict::Passed);
        assert_eq!(
            fine.reason,
            "recovered; gate: time to recover 0.52 s within 1.5× the median 0.50 s of the last 10 passed runs"
        );

        let mut young = report("passed", 2040);
        super::apply(&mut young, &rules, Ok(&past[..3]));
        assert_eq!(young.verdict, Verdict::Passed);
        assert_eq!(
            young.reason,
            "recovered; gate not applied: only 3 passed runs in the history, the gate needs 10"
        );

        let mut unrecorded = report("passed", 2040);
        super::apply(&mut unrecorded, &rules, Err("no history"));
        assert_eq!(unrecorded.verdict, Verdict::Passed);
        assert_eq!(unrecorded.reason, "recovered; gate not applied: no history");

        // A failed run is not gated: its verdict and reason stand.
        let mut failed = report("failed", 2040);
        super::apply(&mut failed, &rules, Ok(&past));
        assert_eq!(failed.verdict, Verdict::Failed);
        assert_eq!(failed.reason, "recovered");
    }

    #[test]
    fn flags_parse_and_replace_the_files_rule() {
        let flag = super::parse_flag("time_to_recover=3x max of last 5 runs").unwrap();
        let mut rules = vec![
            GateRule {
                metric: Metric::P99During,
                rule: "2x median of last 10 passed".parse().unwrap(),
            },
            ttr("1.5x median of last 10 passed"),
        ];
        super::merge(&mut rules, &[flag]);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0], flag);
        assert_eq!(
            super::parse_flag("p95_during=2x max of last 3 runs").unwrap_err(),
            "unknown gate measure `p95_during`; expected time_to_recover, p99_during or p99_after"
        );
        assert!(
            super::parse_flag("time_to_recover")
                .unwrap_err()
                .contains("NAME=RULE")
        );
    }
}
