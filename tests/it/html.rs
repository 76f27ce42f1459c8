//! The HTML report end to end: a real kill-with-recovery run writes it, `faultline show` writes the
//! same bytes from the history, and a real headless Chromium renders it with the timeline, the
//! fault bar and the recovery marker, and without a console message.

use crate::support::chromium::{self, load};
use crate::support::{faultline, free_port, run_experiment, tempdir};

#[test]
fn the_html_report_of_a_killed_server_shows_its_fault_and_recovery_in_chromium() {
    let dir = tempdir();
    let port = free_port().to_string();
    let text = std::fs::read_to_string("experiments/quickstart.toml")
        .unwrap()
        .replace("18080", &port)
        // A shorter baseline keeps the test quick; the picture is the same.
        .replace("window = \"2s\"", "window = \"1s\"");
    assert!(
        text.contains("window = \"1s\""),
        "the quickstart's window moved"
    );
    let html = dir.path().join("report.html");
    let run = run_experiment(
        dir.path(),
        &text,
        &["--seed", "7", "--report-html", html.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}", run.explain());
    let page = std::fs::read(&html).expect("run --report-html wrote the page");

    // The stored run renders to the same bytes.
    let report = run.report.as_ref().expect("report");
    let run_id = report["run_id"].as_str().expect("run_id");
    let shown = dir.path().join("shown.html");
    let out = faultline(
        &["show", run_id, "--html", shown.to_str().unwrap()],
        &dir.path().join("state"),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        std::fs::read(&shown).expect("show --html wrote the page") == page,
        "show --html differs from run --report-html"
    );

    let loaded = load(&html);
    assert!(
        loaded.console.is_empty(),
        "console messages: {:#?}",
        loaded.console
    );
    let dom = &loaded.dom;
    assert!(dom.contains("<svg id=\"timeline\""), "{dom}");
    assert!(dom.contains("class=\"fault-bar\""), "{dom}");
    assert!(dom.contains("<g id=\"recovery\">"), "{dom}");
    let ttr = report["time_to_recover_ms"]
        .as_f64()
        .expect("a time to recover");
    assert!(
        dom.contains("recovered in ") && ttr >= 500.0,
        "time to recover {ttr} ms: {dom}"
    );
    assert!(
        dom.contains("kill the server (process-kill) on local"),
        "{dom}"
    );
    assert!(dom.contains(">PASSED</span>"), "{dom}");
    chromium::screenshot(&html, "html-report-quickstart.png");
}

/// The console check above must be able to fail: a page with a script error and a load the
/// report's Content-Security-Policy blocks shows up as console messages.
#[test]
fn the_chromium_console_check_sees_script_errors_and_blocked_loads() {
    let dir = tempdir();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" \
         content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>\
         <img src=\"http://127.0.0.1:9/x.png\"><script>no_such_function();</script></body></html>",
    )
    .unwrap();
    let loaded = load(&page);
    assert!(
        loaded
            .console
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "{:#?}",
        loaded.console
    );
    assert!(
        loaded
            .console
            .iter()
            .any(|l| l.contains("no_such_function")),
        "{:#?}",
        loaded.console
    );
}
