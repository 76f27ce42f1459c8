//! Owns the verdict: a state machine with no IO, fed the run's events in order, that decides which
//! verdict wins and the one sentence that explains it.
//!
//! Precedence, strongest first: a failed revert is always `error` and always named (whatever else
//! happened, it leads the reason); a run that could not start, was refused by its budget gate or
//! whose steady state did not hold before is what its setup says; then a signal, a failed
//! injection and a fault that ended before its time are `error` (such a run cannot vouch for the
//! steady state under its faults, so it is never a pass); then an abort rule (`aborted`); then
//! recovery (`failed` or `passed`). A run resource that could not be closed turns any of them
//! into `error`.

use std::time::Duration;

use crate::report::Verdict;
use crate::units::format_ms;

/// Where the run was when something happened: an interruption reads differently in each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Before,
    Method,
    After,
}

/// Everything the run loop tells the verdict. Fault names are plain (`kill`), agents by name.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Event {
    /// The run could not start (budget unreadable, a fixture, a run resource, a probe); the text
    /// is the whole reason.
    SetupFailed(String),
    /// The error-budget gate refused the run; the text is the whole reason.
    BudgetTooLow(String),
    /// The steady state did not hold before the method: one clause per failing probe.
    SteadyStateNotMet(Vec<String>),
    /// A dry run whose steady state held: nothing was meant to be injected.
    DryRunHeld,
    /// The steady state held before; the faults start.
    MethodStarted,
    /// A fault was injected (or, for an instant fault, carried out).
    Injected,
    InjectFailed {
        fault: String,
        error: String,
    },
    /// A fault stopped acting before its planned end without the run asking: the agent
    /// restarted, its lease lapsed, a halt, or the watchdog. `why` says which, and when.
    EndedEarly {
        fault: String,
        agent: String,
        why: String,
    },
    RevertFailed {
        fault: String,
        agent: String,
        detail: String,
    },
    AbortFired {
        rule: String,
    },
    /// Every fault was reverted this long after the abort rule's breach began.
    AbortReverted {
        after: Duration,
    },
    /// Every fault ended; the run waits for the steady state to return.
    RecoveryStarted,
    Recovered {
        after: Duration,
        allowed: Duration,
        /// Clauses for the `slo_during` bounds that were broken while faults were held.
        during_breaches: Vec<String>,
    },
    NotRecovered(String),
    Interrupted(&'static str),
    /// A run resource (a proxy) could not be closed: the line that says so.
    ResourceNotClosed(String),
}

/// The verdict so far. Feed it with [`Judge::on`]; ask it with [`Judge::decide`] at any time.
#[derive(Debug)]
pub(crate) struct Judge {
    stage: Stage,
    /// The verdict of a run that never reached its method, with its reason.
    setup: Option<(Verdict, String)>,
    interrupted: Option<(&'static str, Stage)>,
    inject_failed: Vec<String>,
    /// How many faults were injected: a reason says "nothing was injected" when none was.
    injected: usize,
    ended_early: Vec<String>,
    revert_failed: Vec<String>,
    abort: Option<String>,
    time_to_abort: Option<Duration>,
    recovery: Option<Result<String, String>>,
    during_breaches: Vec<String>,
    leftovers: Vec<String>,
}

impl Judge {
    pub(crate) fn new() -> Judge {
        Judge {
            stage: Stage::Before,
            setup: None,
            interrupted: None,
            inject_failed: Vec::new(),
            injected: 0,
            ended_early: Vec::new(),
            revert_failed: Vec::new(),
            abort: None,
            time_to_abort: None,
            recovery: None,
            during_breaches: Vec::new(),
            leftovers: Vec::new(),
        }
    }

    pub(crate) fn on(&mut self, event: Event) {
        match event {
            Event::SetupFailed(reason) => self.settle(Verdict::Error, reason),
            Event::BudgetTooLow(reason) => self.settle(Verdict::NotRun, reason),
            Event::SteadyStateNotMet(failures) => self.settle(
                Verdict::NotRun,
                format!(
                    "the steady state was not met before the method ({}); no fault was injected",
                    failures.join("; ")
                ),
            ),
            Event::DryRunHeld => self.settle(
                Verdict::NotRun,
                "dry run: the steady state held before the method; no fault was injected"
                    .to_owned(),
            ),
            Event::MethodStarted => self.stage = Stage::Method,
            Event::Injected => self.injected += 1,
            Event::InjectFailed { fault, error } => self
                .inject_failed
                .push(format!("fault `{fault}` could not be injected: {error}")),
            Event::EndedEarly { fault, agent, why } => self
                .ended_early
                .push(format!("fault `{fault}` on {agent} ended early: {why}")),
            Event::RevertFailed {
                fault,
                agent,
                detail,
            } => self.revert_failed.push(format!(
                "fault `{fault}` on {agent} could NOT be reverted ({detail})"
            )),
            Event::AbortFired { rule } => {
                // The first rule to fire is the one that stopped the run.
                self.abort.get_or_insert(rule);
            }
            Event::AbortReverted { after } => self.time_to_abort = Some(after),
            Event::RecoveryStarted => self.stage = Stage::After,
            Event::Recovered {
                after,
                allowed,
                during_breaches,
            } => {
                self.recovery = Some(Ok(format!(
                    "every probe met its SLO again {} after the last fault ended (allowed {})",
                    format_ms(after),
                    format_ms(allowed)
                )));
                self.during_breaches = during_breaches;
            }
            Event::NotRecovered(why) => self.recovery = Some(Err(why)),
            Event::Interrupted(signal) => {
                self.interrupted.get_or_insert((signal, self.stage));
            }
            Event::ResourceNotClosed(line) => self.leftovers.push(line),
        }
    }

    fn settle(&mut self, verdict: Verdict, reason: String) {
        self.setup.get_or_insert((verdict, reason));
    }

    /// Whether the run must stop injecting and revert what it holds now.
    pub(crate) fn must_stop(&self) -> bool {
        self.interrupted.is_some()
            || !self.inject_failed.is_empty()
            || !self.ended_early.is_empty()
            || self.abort.is_some()
    }

    /// Whether the verdict is already `error` whatever recovery would show: the run skips it.
    pub(crate) fn decided_without_recovery(&self) -> bool {
        self.interrupted.is_some() || !self.inject_failed.is_empty() || !self.ended_early.is_empty()
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted.is_some()
    }

    pub(crate) fn aborted_by(&self) -> Option<&str> {
        self.abort.as_deref()
    }

    pub(crate) fn time_to_abort(&self) -> Option<Duration> {
        self.time_to_abort
    }

    /// The verdict and its reason, from everything fed so far.
    pub(crate) fn decide(&self) -> (Verdict, String) {
        let (mut verdict, mut reason) = self.outcome();
        if !self.revert_failed.is_empty() {
            reason = format!(
                "{}; check the host by hand, then `faultline revert`. Before that: {reason}",
                self.revert_failed.join("; ")
            );
            verdict = Verdict::Error;
        }
        for line in &self.leftovers {
            reason = format!("{line}; before that: {reason}");
            verdict = Verdict::Error;
        }
        (verdict, reason)
    }

    /// What became of the faults of a run that stopped during its method.
    fn reverted_clause(&self) -> &'static str {
        if self.injected == 0 {
            "nothing was injected"
        } else {
            "every injected fault was reverted"
        }
    }

    /// The verdict before failed reverts and leftovers are laid over it.
    fn outcome(&self) -> (Verdict, String) {
        if let Some(settled) = &self.setup {
            return settled.clone();
        }
        if let Some((signal, stage)) = self.interrupted {
            let reason = match stage {
                Stage::Before => format!("interrupted by {signal} before any fault was injected"),
                Stage::Method => format!("interrupted by {signal}; {}", self.reverted_clause()),
                Stage::After => format!(
                    "interrupted by {signal} while waiting for recovery; every fault had been reverted"
                ),
            };
            return (Verdict::Error, reason);
        }
        if !self.inject_failed.is_empty() {
            return (
                Verdict::Error,
                format!(
                    "{}; {}",
                    self.inject_failed.join("; "),
                    self.reverted_clause()
                ),
            );
        }
        if !self.ended_early.is_empty() {
            let abort = self.abort.as_ref().map_or_else(String::new, |rule| {
                format!("; abort rule `{rule}` had fired too")
            });
            return (
                Verdict::Error,
                format!(
                    "{}; a fault that did not hold for its duration proves nothing, so the run cannot pass{abort}",
                    self.ended_early.join("; ")
                ),
            );
        }
        let Some(recovery) = &self.recovery else {
            return (Verdict::Error, "the run ended without a verdict".to_owned());
        };
        match (recovery, &self.abort) {
            (Ok(recovered), Some(_)) => (Verdict::Aborted, self.abort_reason(recovered)),
            (Err(why), Some(_)) => (Verdict::Aborted, self.abort_reason(&format!("then {why}"))),
            (Ok(recovered), None) if !self.during_breaches.is_empty() => (
                Verdict::Failed,
                format!(
                    "during the faults {}; {recovered}",
                    self.during_breaches.join("; ")
                ),
            ),
            (Ok(recovered), None) => (Verdict::Passed, recovered.clone()),
            (Err(why), None) => (Verdict::Failed, why.clone()),
        }
    }

    fn abort_reason(&self, tail: &str) -> String {
        let rule = self.abort.as_deref().unwrap_or_default();
        let after = self.time_to_abort.map_or_else(String::new, |d| {
            format!(", faults reverted {} after the breach began", format_ms(d))
        });
        format!("abort rule `{rule}` fired{after}; {tail}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Event, Judge};
    use crate::report::Verdict;

    fn judge(events: impl IntoIterator<Item = Event>) -> (Verdict, String) {
        let mut judge = Judge::new();
        for e in events {
            judge.on(e);
        }
        judge.decide()
    }

    fn recovered() -> Event {
        Event::Recovered {
            after: Duration::from_millis(675),
            allowed: Duration::from_secs(5),
            during_breaches: Vec::new(),
        }
    }

    fn revert_failed() -> Event {
        Event::RevertFailed {
            fault: "pause".into(),
            agent: "local".into(),
            detail: "SIGCONT failed: EPERM".into(),
        }
    }

    fn ended_early() -> Event {
        Event::EndedEarly {
            fault: "pause".into(),
            agent: "a1".into(),
            why: "a1 no longer held it at 14:15:03Z (restarted?)".into(),
        }
    }

    fn abort() -> [Event; 2] {
        [
            Event::AbortFired {
                rule: "p99 high".into(),
            },
            Event::AbortReverted {
                after: Duration::from_millis(120),
            },
        ]
    }

    #[test]
    fn faults_injected_and_recovered_pass() {
        let (v, reason) = judge([Event::MethodStarted, Event::RecoveryStarted, recovered()]);
        assert_eq!(v, Verdict::Passed);
        assert_eq!(
            reason,
            "every probe met its SLO again 675 ms after the last fault ended (allowed 5 s)"
        );
    }

    #[test]
    fn not_recovered_fails_and_a_broken_slo_during_fails_even_when_recovered() {
        let (v, reason) = judge([
            Event::MethodStarted,
            Event::RecoveryStarted,
            Event::NotRecovered("not recovered within the allowed 2 s".into()),
        ]);
        assert_eq!(
            (v, reason.as_str()),
            (Verdict::Failed, "not recovered within the allowed 2 s")
        );
        let (v, reason) = judge([
            Event::MethodStarted,
            Event::RecoveryStarted,
            Event::Recovered {
                after: Duration::from_secs(1),
                allowed: Duration::from_secs(5),
                during_breaches: vec!["web p99 was 900 ms, above 500 ms".into()],
            },
        ]);
        assert_eq!(v, Verdict::Failed);
        assert!(
            reason.starts_with("during the faults web p99 was 900 ms, above 500 ms; every probe"),
            "{reason}"
        );
    }

    #[test]
    fn an_abort_wins_over_recovery_and_over_not_recovering() {
        let mut events = vec![Event::MethodStarted];
        events.extend(abort());
        events.extend([Event::RecoveryStarted, recovered()]);
        let (v, reason) = judge(events.clone());
        assert_eq!(v, Verdict::Aborted);
        assert_eq!(
            reason,
            "abort rule `p99 high` fired, faults reverted 120 ms after the breach began; every probe met its SLO again 675 ms after the last fault ended (allowed 5 s)"
        );
        events.pop();
        events.push(Event::NotRecovered("web still down".into()));
        let (v, reason) = judge(events);
        assert_eq!(v, Verdict::Aborted);
        assert!(reason.ends_with("; then web still down"), "{reason}");
    }

    #[test]
    fn a_failed_revert_is_error_and_leads_the_reason_whatever_else_happened() {
        for before in [
            vec![recovered()],
            vec![Event::NotRecovered("down".into())],
            abort().to_vec(),
            vec![Event::Interrupted("SIGINT")],
            vec![ended_early()],
        ] {
            let mut events = vec![Event::MethodStarted];
            events.extend(before.clone());
            events.push(revert_failed());
            events.extend([Event::RecoveryStarted, recovered()]);
            let (v, reason) = judge(events);
            assert_eq!(v, Verdict::Error, "{before:?}");
            assert!(
                reason.starts_with(
                    "fault `pause` on local could NOT be reverted (SIGCONT failed: EPERM); check the host by hand, then `faultline revert`. Before that: "
                ),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_failed_inject_is_never_a_pass_even_when_the_steady_state_recovered() {
        let (v, reason) = judge([
            Event::MethodStarted,
            Event::InjectFailed {
                fault: "kill".into(),
                error: "no process matched".into(),
            },
            Event::RecoveryStarted,
            recovered(),
        ]);
        assert_eq!(v, Verdict::Error);
        assert_eq!(
            reason,
            "fault `kill` could not be injected: no process matched; nothing was injected"
        );
        // When another fault did go in, the sentence says it was reverted.
        let (_, reason) = judge([
            Event::MethodStarted,
            Event::Injected,
            Event::InjectFailed {
                fault: "kill".into(),
                error: "no process matched".into(),
            },
            Event::RecoveryStarted,
            recovered(),
        ]);
        assert_eq!(
            reason,
            "fault `kill` could not be injected: no process matched; every injected fault was reverted"
        );
    }

    #[test]
    fn a_fault_that_ended_early_is_error_naming_it_even_when_recovered_or_aborted() {
        let (v, reason) = judge([
            Event::MethodStarted,
            ended_early(),
            Event::RecoveryStarted,
            recovered(),
        ]);
        assert_eq!(v, Verdict::Error);
        assert!(
            reason.starts_with(
                "fault `pause` on a1 ended early: a1 no longer held it at 14:15:03Z (restarted?); "
            ),
            "{reason}"
        );
        let mut events = vec![Event::MethodStarted];
        events.extend(abort());
        events.push(ended_early());
        let (v, reason) = judge(events);
        assert_eq!(v, Verdict::Error);
        assert!(
            reason.ends_with("abort rule `p99 high` had fired too"),
            "{reason}"
        );
    }

    #[test]
    fn an_interruption_is_error_worded_by_where_the_run_was_and_wins_over_inject_failures() {
        let (v, reason) = judge([Event::Interrupted("SIGINT")]);
        assert_eq!(
            (v, reason.as_str()),
            (
                Verdict::Error,
                "interrupted by SIGINT before any fault was injected"
            )
        );
        let (_, reason) = judge([
            Event::MethodStarted,
            Event::InjectFailed {
                fault: "kill".into(),
                error: "x".into(),
            },
            Event::Interrupted("SIGTERM"),
            Event::Interrupted("SIGINT"),
        ]);
        assert_eq!(reason, "interrupted by SIGTERM; nothing was injected");
        let (_, reason) = judge([
            Event::MethodStarted,
            Event::Injected,
            Event::Interrupted("SIGINT"),
        ]);
        assert_eq!(
            reason,
            "interrupted by SIGINT; every injected fault was reverted"
        );
        let (_, reason) = judge([
            Event::MethodStarted,
            Event::RecoveryStarted,
            Event::Interrupted("SIGINT"),
        ]);
        assert_eq!(
            reason,
            "interrupted by SIGINT while waiting for recovery; every fault had been reverted"
        );
    }

    #[test]
    fn runs_that_never_reach_the_method_are_not_run_or_error_as_their_setup_says() {
        let (v, reason) = judge([Event::SteadyStateNotMet(vec![
            "web success was 0% (0/4), below 100%: connection refused in 4/4 samples".into(),
        ])]);
        assert_eq!(v, Verdict::NotRun);
        assert_eq!(
            reason,
            "the steady state was not met before the method (web success was 0% (0/4), below 100%: connection refused in 4/4 samples); no fault was injected"
        );
        assert_eq!(judge([Event::DryRunHeld]).0, Verdict::NotRun);
        assert_eq!(
            judge([Event::BudgetTooLow("error budget too low".into())]),
            (Verdict::NotRun, "error budget too low".to_owned())
        );
        assert_eq!(
            judge([Event::SetupFailed("setup `demo` failed".into())]),
            (Verdict::Error, "setup `demo` failed".to_owned())
        );
        // A run resource left open makes even a run that never started an error.
        let (v, reason) = judge([
            Event::SteadyStateNotMet(vec!["web had no samples".into()]),
            Event::ResourceNotClosed("run resource r0 on local could NOT be closed".into()),
        ]);
        assert_eq!(v, Verdict::Error);
        assert!(
            reason.starts_with(
                "run resource r0 on local could NOT be closed; before that: the steady state"
            ),
            "{reason}"
        );
    }

    #[test]
    fn a_run_that_reports_nothing_is_an_error_not_a_pass() {
        assert_eq!(
            judge([Event::MethodStarted]),
            (Verdict::Error, "the run ended without a verdict".to_owned())
        );
    }

    #[test]
    fn only_interruptions_failures_early_ends_and_aborts_stop_the_run() {
        let mut j = Judge::new();
        j.on(Event::MethodStarted);
        assert!(!j.must_stop());
        j.on(ended_early());
        assert!(j.must_stop());
        let mut j = Judge::new();
        j.on(Event::AbortFired { rule: "a".into() });
        j.on(Event::AbortFired { rule: "b".into() });
        assert!(j.must_stop());
        assert_eq!(j.aborted_by(), Some("a"));
    }
}
