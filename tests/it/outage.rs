//! The Alertmanager the outage tests start (`support/alertmanager.rs`): what the coordinator's
//! tests rely on, that a posted alert is listed at once, a resolved one is gone, and nothing is
//! left running afterwards. The client side is tested in `src/outage.rs` against the same binary.

use crate::support::alertmanager::Alertmanager;

#[test]
fn alertmanager_lists_a_posted_alert_at_once_and_forgets_it_once_resolved() {
    let am = Alertmanager::start();
    let critical = [("alertname", "DiskFull"), ("severity", "critical")];
    assert_eq!(am.active_names(), Vec::<String>::new(), "{}", am.log());
    am.fire(&critical);
    am.fire(&[("alertname", "HighLatency"), ("severity", "warning")]);
    assert_eq!(
        am.active_names(),
        ["DiskFull", "HighLatency"],
        "{}",
        am.log()
    );
    am.resolve(&critical);
    assert_eq!(am.active_names(), ["HighLatency"], "{}", am.log());
    assert_eq!(
        am.outage_toml(&[r#"severity="critical""#]),
        format!(
            r#"outage = {{ alertmanager = "{}", matchers = ['severity="critical"'] }}"#,
            am.url
        )
    );

    let pid = am.pid();
    drop(am);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "alertmanager (pid {pid}) outlived its guard"
    );
}
