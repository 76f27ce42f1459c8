//! Unit tests of the HTML report's pure parts: scales, ticks, escaping, the moments the timeline
//! marks, the postmortem sentences for passed, failed and aborted runs, and live = stored.

use std::time::Duration;

use super::postmortem::sentences;
use super::timeline::{Moments, Scale, nice_step};
use super::{escape, render};
use crate::report::{FaultRecord, FaultState, Phase, ProbePhase, Report, SampleRecord, Verdict};
use crate::sli::Stats;

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn stats(samples: usize, successes: usize, p99_us: Option<u64>) -> Stats {
    Stats {
        samples,
        successes,
        p50: p99_us.map(|u| Duration::from_micros(u / 2)),
        p95: p99_us.map(|u| Duration::from_micros(u * 9 / 10)),
        p99: p99_us.map(Duration::from_micros),
        max: p99_us.map(Duration::from_micros),
        ..Stats::default()
    }
}

fn phase(stats: Stats, slo_met: Option<bool>) -> ProbePhase {
    ProbePhase {
        probe: "front page".to_owned(),
        signal: Some(crate::model::GoldenSignal::Latency),
        stats,
        slo_met,
        p99_limit: Some(Duration::from_millis(250)),
    }
}

/// A kill at 2.5 s whose server answers again 0.71 s later; samples every 100 ms, failing from
/// 2.5 s to 3.2 s. Durations carry nanoseconds the JSON report rounds away.
fn kill_with_recovery() -> Report {
    let mut samples = Vec::new();
    for i in 1..=50 {
        let t_ms = f64::from(i) * 100.0;
        let (phase, ok) = match t_ms {
            t if t < 2500.0 => (Phase::Before, true),
            t if t < 3200.0 => (Phase::After, false),
            _ => (Phase::After, true),
        };
        samples.push(SampleRecord {
            probe: "front page".to_owned(),
            t_ms,
            phase,
            ok,
            latency_ms: if ok { 2.0 + f64::from(i % 4) } else { 0.4 },
            error: (!ok).then(|| "connection refused".to_owned()),
            cause: (!ok).then(|| "refused".to_owned()),
            value: None,
            connect_ms: None,
            first_byte_ms: None,
        });
    }
    Report {
        run_id: "20261126T141500Z-ab12".to_owned(),
        title: "web server comes back after being killed".to_owned(),
        file: "experiments/quickstart.toml".to_owned(),
        sha256: "ab".repeat(32),
        seed: 7,
        started_at: at("2026-11-26T14:15:00Z"),
        ended_at: at("2026-11-26T14:15:05.1Z"),
        dry_run: false,
        verdict: Verdict::Passed,
        reason: "every probe met its SLO again 711 ms after the last fault ended (allowed 5 s)"
            .to_owned(),
        before: vec![phase(stats(24, 24, Some(4_330)), Some(true))],
        during: vec![phase(stats(1, 1, Some(5_090)), None)],
        after: vec![phase(stats(26, 19, Some(5_570)), Some(true))],
        faults: vec![FaultRecord {
            name: "kill the server".to_owned(),
            kind: "process-kill".to_owned(),
            agent: "local".to_owned(),
            targets: vec!["pid 42 (python3)".to_owned()],
            injected_at: Some(at("2026-11-26T14:15:02.5Z")),
            reverted_at: None,
            status: FaultState::Completed,
            detail: "sent SIGKILL to pid 42 (python3)".to_owned(),
            actions: Vec::new(),
        }],
        time_to_recover: Some(Duration::from_nanos(711_345_600)),
        recovery_within: Duration::from_secs(5),
        aborted_by: None,
        time_to_abort: None,
        recovered_from_journal: Vec::new(),
        budget: None,
        samples,
        warnings: Vec::new(),
        input_invalid: false,
    }
}

/// A 3 s pause that made every request fail, aborted by its rule 1.2 s in.
fn aborted_pause() -> Report {
    let mut r = kill_with_recovery();
    r.verdict = Verdict::Aborted;
    r.reason = "aborted by `errors above 50% over 1s`".to_owned();
    r.faults = vec![FaultRecord {
        name: "pause".to_owned(),
        kind: "process-pause".to_owned(),
        agent: "web-1".to_owned(),
        targets: vec!["pid 43 (python3)".to_owned()],
        injected_at: Some(at("2026-11-26T14:15:02.5Z")),
        reverted_at: Some(at("2026-11-26T14:15:03.7Z")),
        status: FaultState::Reverted,
        detail: "stopped pid 43".to_owned(),
        actions: Vec::new(),
    }];
    r.during = vec![phase(stats(12, 0, None), None)];
    r.after = Vec::new();
    r.time_to_recover = None;
    r.aborted_by = Some("errors above 50% over 1s".to_owned());
    r.time_to_abort = Some(Duration::from_micros(204_500));
    r
}

#[test]
fn a_scale_maps_its_domain_onto_its_range_and_clamps_outside_it() {
    let x = Scale::new((0.0, 10_000.0), (84.0, 1176.0));
    assert!((x.map(0.0) - 84.0).abs() < 1e-9);
    assert!((x.map(5_000.0) - 630.0).abs() < 1e-9);
    assert!((x.map(10_000.0) - 1176.0).abs() < 1e-9);
    assert!(
        (x.map(12_000.0) - 1176.0).abs() < 1e-9,
        "a late sample stays on the picture"
    );
    // An inverted range is how the y axis grows upwards.
    let y = Scale::new((0.0, 6.0), (200.0, 90.0));
    assert!((y.map(3.0) - 145.0).abs() < 1e-9);
    // An empty domain maps everything to the start instead of dividing by zero.
    assert!((Scale::new((1.0, 1.0), (5.0, 9.0)).map(1.0) - 5.0).abs() < 1e-9);
}

#[test]
fn tick_steps_are_one_two_or_five_times_a_power_of_ten() {
    assert!((nice_step(5.2, 12) - 0.5).abs() < 1e-12);
    assert!((nice_step(60.0, 12) - 5.0).abs() < 1e-12);
    assert!((nice_step(130.0, 12) - 20.0).abs() < 1e-12);
    assert!((nice_step(5.57, 4) - 2.0).abs() < 1e-12);
    assert!((nice_step(1.0, 4) - 0.5).abs() < 1e-12);
    assert!((nice_step(0.0, 4) - 1.0).abs() < 1e-12);
}

#[test]
fn escaping_turns_markup_into_text() {
    assert_eq!(
        escape(r#"<script>alert("x" & 'y')</script>"#),
        "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
    );
}

#[test]
fn a_script_in_a_title_or_probe_name_is_shown_as_text_and_never_becomes_markup() {
    let mut r = kill_with_recovery();
    r.title = "<script>alert(1)</script>".to_owned();
    r.reason = "probe `<img src=x onerror=alert(2)>` failed".to_owned();
    for s in &mut r.samples {
        s.probe = "a\"><script>alert(3)</script>".to_owned();
    }
    r.before[0].probe = "a\"><script>alert(3)</script>".to_owned();
    let page = render(&r);
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(page.contains("<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1>"));
    assert!(page.contains("<code>&lt;img src=x onerror=alert(2)&gt;</code>"));
    assert!(page.contains("probe a&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt; —"));
}

#[test]
fn the_timeline_marks_the_kill_the_wait_and_the_recovery_where_they_happened() {
    let m = Moments::of(&kill_with_recovery());
    assert_eq!(m.during, Some(2500.0));
    // The wait begins when the instant kill was carried out.
    assert_eq!(m.after, Some(2500.0));
    assert_eq!(m.recovered, Some(2500.0 + 711.346));
    assert_eq!(m.aborted, None);
    assert!((m.end - 5100.0).abs() < 1e-9, "{m:?}");
    let page = render(&kill_with_recovery());
    assert!(page.contains("<g id=\"recovery\">"), "{page}");
    assert!(page.contains("recovered in 711 ms</text>"), "{page}");
    assert!(page.contains("class=\"fault-bar\""), "{page}");
    assert_eq!(
        page.matches("<circle cx=").count(),
        43 + 1,
        "43 answered samples and the recovery dot"
    );
    assert!(page.contains("class=\"phase phase-before\""));
    assert!(page.contains("class=\"phase phase-after\""));
    assert!(!page.contains("id=\"abort\""));
}

#[test]
fn an_aborted_run_is_marked_where_its_faults_were_reverted() {
    let m = Moments::of(&aborted_pause());
    assert_eq!(m.aborted, Some(3700.0));
    assert_eq!(m.recovered, None);
    let page = render(&aborted_pause());
    assert!(
        page.contains("aborted: errors above 50% over 1s</text>"),
        "{page}"
    );
    assert!(!page.contains("id=\"recovery\""));
}

#[test]
fn the_postmortem_of_a_passed_kill_says_what_was_hit_what_users_saw_and_how_fast_it_came_back() {
    assert_eq!(
        sentences(&kill_with_recovery()),
        [
            "`kill the server` (process-kill) hit pid 42 (python3) on local at 2.5 s into the run; it acts at once and has nothing to revert.",
            "Users of `front page` saw 100% of requests succeed while the faults acted (1 of 1 samples), against 100% before; p99 latency was 5.09 ms against 4.33 ms before.",
            "Between the end of the faults and the end of the run, `front page` failed 7 of 26 samples.",
            "The steady state came back 711 ms after the last fault ended, within the allowed 5 s.",
            "After the faults, every probe met its SLO again.",
            "Verdict: passed (exit 0) — every probe met its SLO again 711 ms after the last fault ended (allowed 5 s).",
        ]
    );
}

#[test]
fn the_postmortem_of_a_failed_run_says_the_service_did_not_come_back() {
    let mut r = kill_with_recovery();
    r.verdict = Verdict::Failed;
    r.reason = "`front page` did not recover within 5 s: success 20% (allowed 99%)".to_owned();
    r.time_to_recover = None;
    r.after[0].slo_met = Some(false);
    r.during[0].stats = stats(8, 2, Some(480_000));
    let said = sentences(&r);
    assert_eq!(
        said[1..],
        [
            "Users of `front page` saw 25% of requests succeed while the faults acted (2 of 8 samples), against 100% before; p99 latency was 480 ms against 4.33 ms before.",
            "Between the end of the faults and the end of the run, `front page` failed 7 of 26 samples.",
            "The steady state did not come back within the allowed 5 s.",
            "After the faults, `front page` did not meet its SLO.",
            "Verdict: failed (exit 1) — `front page` did not recover within 5 s: success 20% (allowed 99%).",
        ]
    );
}

#[test]
fn the_postmortem_of_an_aborted_run_says_how_long_the_fault_held_and_how_fast_the_abort_acted() {
    assert_eq!(
        sentences(&aborted_pause()),
        [
            "`pause` (process-pause) acted on pid 43 (python3) on web-1 from 2.5 s into the run for 1.2 s, then was reverted.",
            "Users of `front page` saw 0% of requests succeed while the faults acted (0 of 12 samples), against 100% before; no request succeeded, so there is no latency to compare.",
            "The run was aborted by `errors above 50% over 1s`: every fault was reverted 204 ms after the breach began.",
            "Verdict: aborted (exit 3) — aborted by `errors above 50% over 1s`.",
        ]
    );
}

#[test]
fn a_report_read_back_from_json_renders_the_same_page_byte_for_byte() {
    for live in [kill_with_recovery(), aborted_pause()] {
        let back = crate::report::json::parse(&crate::report::json::render(&live)).unwrap();
        assert_eq!(render(&back), render(&live));
    }
}

#[test]
fn a_run_that_never_started_still_renders_a_page_that_says_why() {
    let mut r = aborted_pause();
    r.verdict = Verdict::Error;
    r.reason = "agent `web-1` is unreachable (connection refused)".to_owned();
    r.before.clear();
    r.during.clear();
    r.samples.clear();
    r.aborted_by = None;
    r.time_to_abort = None;
    r.faults[0].status = FaultState::Skipped;
    r.faults[0].injected_at = None;
    r.faults[0].reverted_at = None;
    let page = render(&r);
    assert!(page.contains(">ERROR</span>"), "{page}");
    assert!(page.contains("<code>web-1</code> is unreachable"), "{page}");
    assert!(
        page.contains("pause (process-pause) on web-1 — skipped (never injected)"),
        "{page}"
    );
    assert_eq!(
        sentences(&r),
        [
            "`pause` (process-pause) on web-1 was never injected: the run stopped first.",
            "Verdict: error (exit 5) — agent `web-1` is unreachable (connection refused).",
        ]
    );
}

#[test]
fn the_slo_p99_bound_is_a_line_when_it_fits_the_latencies_and_named_when_it_does_not() {
    let far = render(&kill_with_recovery());
    assert!(
        far.contains("SLO p99 ≤ 250 ms (above this scale)</text>"),
        "{far}"
    );
    assert!(!far.contains("class=\"slo-line\""));
    let mut r = kill_with_recovery();
    r.after[0].p99_limit = Some(Duration::from_millis(8));
    let near = render(&r);
    assert!(near.contains("class=\"slo-line\""), "{near}");
    assert!(near.contains("SLO p99 ≤ 8 ms</text>"), "{near}");
}

#[test]
fn what_an_action_ran_survives_the_json_round_trip() {
    let mut live = kill_with_recovery();
    live.faults[0].kind = "command".to_owned();
    live.faults[0].actions = vec![crate::protocol::ActionOutput {
        step: "run".to_owned(),
        command: "/usr/bin/kubectl delete pod web-0".to_owned(),
        ok: false,
        exit_code: Some(1),
        status: None,
        outcome: "exit 1".to_owned(),
        stdout: String::new(),
        stderr: "error: pods \"web-0\" not found\n".to_owned(),
        duration_ms: 212,
    }];
    let json = crate::report::json::render(&live);
    let back = crate::report::json::parse(&json).unwrap();
    assert_eq!(back.faults[0].actions, live.faults[0].actions);
    assert_eq!(render(&back), render(&live));
    assert!(json.contains(r#""exit_code": 1"#), "{json}");
}
