//! Owns the error-budget gate (`[slo_budget]`): read good and total event counts from Prometheus,
//! work out how much of the SLO's error budget is left, and say whether that is enough to run a
//! chaos experiment. The rule is the SRE one: when the budget is spent, freeze risky changes.
//!
//! remaining = 1 − (1 − good/total) / (1 − target). The arithmetic is pure; only `check` does IO.

use std::fmt::Write;
use std::time::Duration;

use crate::model::BudgetSpec;
use crate::probe::prometheus::Prometheus;

/// Differences smaller than this are floating-point noise, not budget.
const TOLERANCE: f64 = 1e-9;

/// How long each of the two budget queries may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The numbers behind a budget decision, all as fractions (0.999 = 99.9%).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Budget {
    pub(crate) prometheus: String,
    pub(crate) good: f64,
    pub(crate) total: f64,
    /// good / total; 1 when there was no traffic (no events, no errors).
    pub(crate) good_ratio: f64,
    pub(crate) target: f64,
    /// 1 − target: the share of events allowed to fail.
    pub(crate) allowed_error: f64,
    /// The share of the budget used: (1 − good_ratio) / allowed_error. Above 1 when overspent.
    pub(crate) consumed: f64,
    /// 1 − consumed; negative when overspent.
    pub(crate) remaining: f64,
    pub(crate) min_remaining: f64,
}

impl Budget {
    /// Works out the budget from the two counts. Fails on counts that cannot be right.
    pub(crate) fn compute(
        prometheus: &str,
        target: f64,
        min_remaining: f64,
        good: f64,
        total: f64,
    ) -> Result<Budget, String> {
        if !good.is_finite() || !total.is_finite() || good < 0.0 || total < 0.0 {
            return Err(format!(
                "the budget queries gave good = {good} and total = {total}; both must be finite and not negative"
            ));
        }
        // `increase()` extrapolates both counts, so good can exceed total by a rounding hair.
        if good > total * (1.0 + 1e-6) + 1e-9 {
            return Err(format!(
                "the budget queries gave more good events ({good}) than events in total ({total}); check the `good` and `total` queries"
            ));
        }
        let good_ratio = if total > 0.0 {
            (good / total).min(1.0)
        } else {
            1.0
        };
        let allowed_error = 1.0 - target;
        let consumed = (1.0 - good_ratio) / allowed_error;
        Ok(Budget {
            prometheus: prometheus.to_owned(),
            good,
            total,
            good_ratio,
            target,
            allowed_error,
            consumed,
            remaining: 1.0 - consumed,
            min_remaining,
        })
    }

    /// Whether enough budget is left to run an experiment.
    /// A spent budget (nothing left) is never enough, whatever the minimum.
    pub(crate) fn enough(&self) -> bool {
        // The tolerances keep "exactly the minimum" from failing, and "exactly spent" from
        // passing, on floating point: 0.001 / 0.001 need not be exactly 1.
        !self.spent() && self.remaining + TOLERANCE >= self.min_remaining
    }

    pub(crate) fn spent(&self) -> bool {
        self.remaining <= TOLERANCE
    }

    /// One clause for a verdict's reason: what is left, the minimum, and where that comes from.
    pub(crate) fn summary(&self) -> String {
        let min = pct(self.min_remaining);
        let relation = if self.enough() {
            format!("at or above the minimum of {min}")
        } else if self.remaining + TOLERANCE < self.min_remaining {
            format!("below the minimum of {min}")
        } else {
            "so it is spent".to_owned()
        };
        format!(
            "{} of the error budget remains, {relation} (good/total = {}/{} = {} against a target of {}: {} of events may fail, {} of that allowance is used)",
            pct(self.remaining),
            count(self.good),
            count(self.total),
            pct(self.good_ratio),
            pct(self.target),
            pct(self.allowed_error),
            pct(self.consumed),
        )
    }

    /// The numbers one per line, for `faultline budget`.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "prometheus:     {}", self.prometheus);
        let _ = writeln!(out, "good events:    {}", count(self.good));
        let _ = writeln!(out, "total events:   {}", count(self.total));
        let _ = writeln!(out, "good ratio:     {}", pct(self.good_ratio));
        let _ = writeln!(out, "target:         {}", pct(self.target));
        let _ = writeln!(out, "allowed error:  {}", pct(self.allowed_error));
        let _ = writeln!(out, "consumed:       {} of the budget", pct(self.consumed));
        let _ = writeln!(
            out,
            "remaining:      {} of the budget (minimum {})",
            pct(self.remaining),
            pct(self.min_remaining)
        );
        out
    }
}

/// Reads both counts from Prometheus and works out the budget. Any failure to read is an error,
/// never a pass: a gate that cannot see must not open.
pub(crate) async fn check(spec: &BudgetSpec) -> Result<Budget, String> {
    let server = Prometheus::new(&spec.prometheus, QUERY_TIMEOUT)?;
    let (good, total) = tokio::join!(server.query(&spec.good), server.query(&spec.total));
    let good = good.map_err(|e| format!("error budget `good` query: {e}"))?;
    let total = total.map_err(|e| format!("error budget `total` query: {e}"))?;
    Budget::compute(server.url(), spec.target, spec.min_remaining, good, total)
}

/// A percentage with up to three decimals: budgets live in the 99.9x% range, where two decimals
/// would round 99.995% up to a misleading 100%.
pub(crate) fn pct(fraction: f64) -> String {
    let s = format!("{:.3}", fraction * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{}%", if s == "-0" { "0" } else { s })
}

fn count(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_budget_follows_the_formula() {
        // 99.95% good against 99.9%: half the 0.1% allowance used.
        let b = Budget::compute("http://p", 0.999, 0.1, 9995.0, 10_000.0).unwrap();
        assert!((b.consumed - 0.5).abs() < 1e-9, "{b:?}");
        assert!((b.remaining - 0.5).abs() < 1e-9, "{b:?}");
        assert!(b.enough());
        assert_eq!(
            b.summary(),
            "50% of the error budget remains, at or above the minimum of 10% (good/total = 9995/10000 = 99.95% against a target of 99.9%: 0.1% of events may fail, 50% of that allowance is used)"
        );
    }

    #[test]
    fn an_overspent_budget_is_negative_and_not_enough() {
        let b = Budget::compute("http://p", 0.99, 0.1, 950.0, 1000.0).unwrap();
        assert!((b.remaining - -4.0).abs() < 1e-9, "{b:?}");
        assert!(!b.enough());
        assert!(
            b.summary()
                .starts_with("-400% of the error budget remains, below the minimum of 10%"),
            "{}",
            b.summary()
        );
    }

    #[test]
    fn a_spent_budget_is_never_enough_even_without_a_minimum() {
        // 99.9% good against a 99.9% target: the whole allowance used, to floating point.
        let b = Budget::compute("http://p", 0.999, 0.0, 9990.0, 10_000.0).unwrap();
        assert!(b.spent() && !b.enough(), "{b:?}");
        assert!(
            b.summary().starts_with(
                "0% of the error budget remains, so it is spent (good/total = 9990/10000"
            ),
            "{}",
            b.summary()
        );
        let left = Budget::compute("http://p", 0.999, 0.0, 9995.0, 10_000.0).unwrap();
        assert!(left.enough(), "{left:?}");
    }

    #[test]
    fn no_traffic_spends_nothing_and_impossible_counts_are_refused() {
        let b = Budget::compute("http://p", 0.999, 0.1, 0.0, 0.0).unwrap();
        assert!((b.remaining - 1.0).abs() < 1e-12, "{b:?}");
        assert!(
            Budget::compute("http://p", 0.999, 0.1, 11.0, 10.0)
                .unwrap_err()
                .contains("more good events (11) than events in total (10)")
        );
        assert!(Budget::compute("http://p", 0.999, 0.1, f64::NAN, 10.0).is_err());
    }

    #[test]
    fn percentages_keep_the_digits_budgets_need() {
        assert_eq!(pct(0.99995), "99.995%");
        assert_eq!(pct(0.1), "10%");
        assert_eq!(pct(-0.0), "0%");
    }
}
