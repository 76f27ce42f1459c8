//! Owns the Markdown summary (`--summary-md`): the facts of a run, short, in GitHub-flavoured
//! Markdown for `$GITHUB_STEP_SUMMARY` and merge-request comments — verdict and reason first, then
//! the probes per phase, the faults, the time to recover and what identifies the run.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;

use super::{FaultRecord, FaultState, ProbePhase, Report, Verdict};
use crate::units::{Percent, format_ms};

/// How many targets of one fault the summary names before it only counts the rest.
const TARGETS_SHOWN: usize = 3;

pub(crate) fn render(report: &Report) -> String {
    let mut out = String::new();
    let dry = if report.dry_run { " (dry run)" } else { "" };
    let _ = writeln!(
        out,
        "### {}{dry}: {}\n",
        badge(report.verdict),
        text(&report.title)
    );
    // The reason follows the badge on the same line, so no data ever starts a line, where `-`,
    // `1.` or `#` would turn it into a list or a heading.
    let _ = writeln!(
        out,
        "**{}** (exit {}) — {}\n",
        badge(report.verdict),
        report.exit_code(),
        text(&report.reason)
    );

    out.push_str("| | |\n|---|---|\n");
    let _ = writeln!(out, "| time to recover | {} |", recovery(report));
    if let Some(rule) = &report.aborted_by {
        let after = report.time_to_abort.map_or_else(String::new, |d| {
            format!(
                " (faults reverted {} after the breach began)",
                format_ms(as_stored(d))
            )
        });
        let _ = writeln!(out, "| aborted by | {}{after} |", text(rule));
    }
    if let Some(b) = &report.budget {
        let _ = writeln!(out, "| error budget | {} |", text(&b.summary()));
    }
    let _ = writeln!(out, "| run | {} |", code(&report.run_id));
    let _ = writeln!(out, "| seed | {} |", code(&report.seed.to_string()));
    let _ = writeln!(
        out,
        "| experiment | {} (sha256 {}) |",
        code(&report.file),
        code(short_sha(&report.sha256))
    );
    let _ = writeln!(
        out,
        "| started | {} UTC, took {} |",
        report.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        format_ms(elapsed(report.started_at, report.ended_at))
    );
    out.push('\n');

    let phases = [
        ("before", &report.before),
        ("during", &report.during),
        ("after", &report.after),
    ];
    if report.ended_before_baseline() {
        out.push_str("No steady state was measured: the run ended before its baseline.\n\n");
    } else {
        out.push_str("| phase | probe | success | p99 | SLO |\n|---|---|--:|--:|---|\n");
        for (phase, list) in phases {
            for p in list {
                out.push_str(&probe_row(phase, p));
            }
        }
        out.push('\n');
    }

    if report.faults.is_empty() {
        out.push_str("No faults.\n");
    } else {
        out.push_str(
            "| fault | agent | target | status | injected → reverted |\n|---|---|---|---|---|\n",
        );
        for f in &report.faults {
            out.push_str(&fault_row(report.started_at, f));
        }
    }
    for line in &report.recovered_from_journal {
        let _ = write!(
            out,
            "\nReverted from an earlier crashed run first: {}\n",
            text(line)
        );
    }
    out
}

/// The verdict as a word that reads without colour or emoji.
fn badge(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Passed => "PASSED",
        Verdict::Failed => "FAILED",
        Verdict::Aborted => "ABORTED",
        Verdict::NotRun => "NOT RUN",
        Verdict::Error => "ERROR",
    }
}

fn recovery(report: &Report) -> String {
    let allowed = format_ms(Duration::from_millis(
        report.recovery_within.as_millis() as u64
    ));
    match report.time_to_recover {
        Some(ttr) => format!("{} (allowed {allowed})", format_ms(as_stored(ttr))),
        None if report.after.is_empty() => format!("not measured (allowed {allowed})"),
        None => format!("**not recovered** (allowed {allowed})"),
    }
}

fn probe_row(phase: &str, p: &ProbePhase) -> String {
    let success = p.stats.success_ratio().map_or_else(
        || "no samples".to_owned(),
        |r| format!("{} ({}/{})", Percent(r), p.stats.successes, p.stats.samples),
    );
    let mut p99 = p
        .stats
        .p99
        .map_or_else(|| "-".to_owned(), |d| format_ms(as_stored(d)));
    // The bound the SLO check used, next to the number it was held to.
    if let Some(limit) = p.p99_limit {
        let _ = write!(p99, " (limit {})", format_ms(as_stored(limit)));
    }
    let slo = match p.slo_met {
        Some(true) => "met",
        Some(false) => "**NOT met**",
        None => "-",
    };
    format!(
        "| {phase} | {} | {success} | {p99} | {slo} |\n",
        text(&p.probe)
    )
}

fn fault_row(started_at: Timestamp, f: &FaultRecord) -> String {
    let mut targets: Vec<String> = f
        .targets
        .iter()
        .take(TARGETS_SHOWN)
        .map(|t| text(t))
        .collect();
    if f.targets.len() > TARGETS_SHOWN {
        targets.push(format!("and {} more", f.targets.len() - TARGETS_SHOWN));
    }
    let status = match f.status {
        FaultState::Skipped => "skipped".to_owned(),
        FaultState::Completed => "completed".to_owned(),
        FaultState::Reverted => "reverted".to_owned(),
        // The failures carry their detail: it is what someone has to act on.
        FaultState::EndedEarly => format!("**ended early**: {}", text(&f.detail)),
        FaultState::InjectFailed => format!("**inject failed**: {}", text(&f.detail)),
        FaultState::RevertFailed => format!("**REVERT FAILED**: {}", text(&f.detail)),
    };
    let at = |t: Option<Timestamp>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| format!("+{}", format_ms(elapsed(started_at, t))),
        )
    };
    let span = match (f.status, f.injected_at) {
        (_, None) => "-".to_owned(),
        (FaultState::Completed, _) => format!("{} (instant)", at(f.injected_at)),
        _ => format!("{} → {}", at(f.injected_at), at(f.reverted_at)),
    };
    format!(
        "| {} ({}) | {} | {} | {status} | {span} |\n",
        code(&f.name),
        text(&f.kind),
        text(&f.agent),
        if targets.is_empty() {
            "-".to_owned()
        } else {
            targets.join(", ")
        },
    )
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

/// A duration as the JSON report keeps it (whole microseconds), so a stored report (`faultline
/// show --summary-md`, the dashboard) renders the same text as the live run.
fn as_stored(d: Duration) -> Duration {
    Duration::from_micros((d.as_secs_f64() * 1_000_000.0).round() as u64)
}

/// The first 12 hex digits: enough to tell files apart at a glance, short enough for a table.
fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Data as Markdown text: every character Markdown or a GFM table gives a meaning is
/// backslash-escaped (`|` would end a cell, `<` open HTML, `*`, `_`, `~` emphasis, `[` a link,
/// `&` an entity), and line breaks become spaces, since a newline ends a table row.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '&' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Data as a code span: fenced with one backtick more than the longest run inside it (CommonMark
/// has no escapes within a code span), padded when it starts or ends with a backtick, with `|`
/// escaped because GFM splits table cells before it reads code spans.
fn code(s: &str) -> String {
    let flat: String = s
        .chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    let longest = flat
        .split(|c| c != '`')
        .map(str::len)
        .max()
        .unwrap_or_default();
    let fence = "`".repeat(longest + 1);
    let pad = if flat.starts_with('`') || flat.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{}{pad}{fence}", flat.replace('|', "\\|"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{code, render, text};
    use crate::report::{FaultRecord, FaultState, ProbePhase, Report, Verdict};
    use crate::sli::Stats;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn phase(probe: &str, samples: usize, successes: usize, p99_ms: u64, met: bool) -> ProbePhase {
        ProbePhase {
            probe: probe.to_owned(),
            signal: None,
            stats: Stats {
                samples,
                successes,
                p50: Some(Duration::from_millis(p99_ms / 2)),
                p95: Some(Duration::from_millis(p99_ms)),
                p99: Some(Duration::from_millis(p99_ms)),
                max: Some(Duration::from_millis(p99_ms)),
                values: None,
                top_cause: None,
                connect: None,
                first_byte: None,
            },
            slo_met: Some(met),
            p99_limit: None,
        }
    }

    /// A kill after which the front page did not come back: the case a merge-request comment
    /// must make plain.
    fn failed_report() -> Report {
        Report {
            run_id: "20261202T070739Z-9ef2".to_owned(),
            title: "web server comes back after being killed".to_owned(),
            file: "experiments/kill-web.toml".to_owned(),
            sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
            seed: 42,
            started_at: at("2026-12-02T07:07:39Z"),
            ended_at: at("2026-12-02T07:07:48.5Z"),
            dry_run: false,
            verdict: Verdict::Failed,
            reason: "front page success was 40% (2/5), below 99%: status 503 in 3/5 samples in the last 1 s; not recovered within the allowed 2 s".to_owned(),
            before: vec![phase("front page", 30, 30, 12, true)],
            during: vec![phase("front page", 20, 4, 950, true)],
            after: vec![ProbePhase {
                p99_limit: Some(Duration::from_millis(250)),
                ..phase("front page", 20, 8, 812, false)
            }],
            faults: vec![FaultRecord {
                name: "kill".to_owned(),
                kind: "process-kill".to_owned(),
                agent: "local".to_owned(),
                targets: vec!["pid 4242 (python3)".to_owned()],
                injected_at: Some(at("2026-12-02T07:07:42.25Z")),
                reverted_at: None,
                status: FaultState::Completed,
                detail: "sent SIGKILL to pid 4242 (python3)".to_owned(),
                actions: Vec::new(),
            }],
            time_to_recover: None,
            recovery_within: Duration::from_secs(2),
            aborted_by: None,
            time_to_abort: None,
            recovered_from_journal: Vec::new(),
            budget: None,
            samples: Vec::new(),
            warnings: Vec::new(),
            input_invalid: false,
        }
    }

    #[test]
    fn the_summary_of_a_failed_run_names_the_probe_the_numbers_and_the_threshold() {
        let md = render(&failed_report());
        let expected = "\
### FAILED: web server comes back after being killed

**FAILED** (exit 1) — front page success was 40% (2/5), below 99%: status 503 in 3/5 samples in the last 1 s; not recovered within the allowed 2 s

| | |
|---|---|
| time to recover | **not recovered** (allowed 2 s) |
| run | `20261202T070739Z-9ef2` |
| seed | `42` |
| experiment | `experiments/kill-web.toml` (sha256 `9f86d081884c`) |
| started | 2026-12-02 07:07:39 UTC, took 9.5 s |

| phase | probe | success | p99 | SLO |
|---|---|--:|--:|---|
| before | front page | 100% (30/30) | 12 ms | met |
| during | front page | 20% (4/20) | 950 ms | met |
| after | front page | 40% (8/20) | 812 ms (limit 250 ms) | **NOT met** |

| fault | agent | target | status | injected → reverted |
|---|---|---|---|---|
| `kill` (process-kill) | local | pid 4242 (python3) | completed | +3.25 s (instant) |
";
        assert_eq!(md, expected);
    }

    #[test]
    fn a_recovered_run_shows_its_time_to_recover_against_the_allowed_time() {
        let mut report = failed_report();
        report.verdict = Verdict::Passed;
        report.reason =
            "every probe met its SLO again 1.23 s after the last fault ended (allowed 2 s)"
                .to_owned();
        report.time_to_recover = Some(Duration::from_nanos(1_234_999_600));
        report.faults[0].status = FaultState::Reverted;
        report.faults[0].reverted_at = Some(at("2026-12-02T07:07:44.25Z"));
        let md = render(&report);
        assert!(md.starts_with("### PASSED: web server"), "{md}");
        assert!(
            md.contains("| time to recover | 1.23 s (allowed 2 s) |\n"),
            "{md}"
        );
        assert!(md.contains("| reverted | +3.25 s → +5.25 s |\n"), "{md}");
    }

    #[test]
    fn data_cannot_break_the_tables_or_open_markup() {
        let mut report = failed_report();
        report.title = "a | b `c` <script>".to_owned();
        report.reason = "- not a list | *not bold* [no](link)\n# not a heading".to_owned();
        report.file = "dir/we`ird|name.toml".to_owned();
        report.before[0].probe = "p|q".to_owned();
        report.faults[0].status = FaultState::RevertFailed;
        report.faults[0].detail = "SIGCONT failed: \"EPERM\" | see\nlog".to_owned();
        let md = render(&report);
        assert!(
            md.starts_with("### FAILED: a \\| b \\`c\\` \\<script\\>\n"),
            "{md}"
        );
        assert!(
            md.contains("— - not a list \\| \\*not bold\\* \\[no\\](link) \\# not a heading\n"),
            "{md}"
        );
        assert!(
            md.contains("| experiment | ``dir/we`ird\\|name.toml`` (sha256"),
            "{md}"
        );
        assert!(md.contains("| before | p\\|q | 100% (30/30) |"), "{md}");
        assert!(
            md.contains("| **REVERT FAILED**: SIGCONT failed: \"EPERM\" \\| see log |"),
            "{md}"
        );
        // Every table row still has its cells: no `|` from the data survived unescaped.
        for line in md.lines().filter(|l| l.starts_with('|')) {
            let cells = line.replace("\\|", "").matches('|').count();
            assert!(cells == 3 || cells == 6, "{line}");
        }
    }

    #[test]
    fn code_spans_fence_around_backticks_and_text_flattens_lines() {
        assert_eq!(code("plain"), "`plain`");
        assert_eq!(code("a``b"), "```a``b```");
        assert_eq!(code("`edge`"), "`` `edge` ``");
        assert_eq!(code("x|y\nz"), "`x\\|y z`");
        assert_eq!(text("1 < 2 & 3\r\n"), "1 \\< 2 \\& 3  ");
    }

    #[test]
    fn a_run_that_never_started_says_so_instead_of_empty_tables() {
        let mut report = failed_report();
        report.verdict = Verdict::Error;
        report.reason =
            "agent `web-1` could not be reached: connection refused; nothing was injected"
                .to_owned();
        report.before.clear();
        report.during.clear();
        report.after.clear();
        report.faults[0].status = FaultState::Skipped;
        report.faults[0].injected_at = None;
        report.faults[0].targets.clear();
        let md = render(&report);
        assert!(
            md.contains("**ERROR** (exit 5) — agent \\`web-1\\` could not be reached"),
            "{md}"
        );
        assert!(
            md.contains("| time to recover | not measured (allowed 2 s) |"),
            "{md}"
        );
        assert!(
            md.contains("No steady state was measured: the run ended before its baseline."),
            "{md}"
        );
        assert!(
            md.contains("| `kill` (process-kill) | local | - | skipped | - |"),
            "{md}"
        );
    }
}
