//! Unit tests of the web server's pure parts: the `[coordinator]` keys that configure it, HTML
//! escaping and Prometheus label escaping.

use std::path::Path;

use crate::gameday::parse;

fn coordinator(extra: &str) -> Result<crate::gameday::GameDay, String> {
    parse(
        Path::new("g.toml"),
        &format!("[coordinator]\nstate_dir = \"s\"\n{extra}\n"),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn listen_token_file_and_dashboard_token_are_validated_with_their_position() {
    let g = coordinator("listen = \"127.0.0.1:7070\"").unwrap();
    let web = g.coordinator.web.unwrap();
    assert_eq!(web.listen.to_string(), "127.0.0.1:7070");
    assert!(web.token_file.is_none());
    assert!(!web.dashboard_token);
    assert!(coordinator("").unwrap().coordinator.web.is_none());
    assert_eq!(
        coordinator("listen = \"localhost\"").unwrap_err(),
        "g.toml: line 3, column 10: `listen`: must be an address and port such as \"127.0.0.1:7070\" (got \"localhost\": invalid socket address syntax)"
    );
    assert_eq!(
        coordinator("token_file = \"t\"").unwrap_err(),
        "g.toml: line 3, column 14: `token_file`: needs `listen` (the web server)"
    );
    assert_eq!(
        coordinator("listen = \"127.0.0.1:0\"\ndashboard_token = true").unwrap_err(),
        "g.toml: line 4, column 19: `dashboard_token`: `dashboard_token = true` needs `token_file`"
    );
    assert_eq!(
        coordinator("listen = \"127.0.0.1:0\"\ntoken_file = \"/nonexistent/token\"").unwrap_err(),
        "g.toml: line 4, column 14: `token_file`: no token file at /nonexistent/token"
    );
    assert!(
        coordinator("listen = \"127.0.0.1:0\"\nlisten_typo = 1")
            .unwrap_err()
            .contains("unknown field `listen_typo`")
    );
}

#[test]
fn html_escaping_covers_markup_and_quotes() {
    assert_eq!(
        super::html::esc("<b a=\"x\">'&'</b>"),
        "&lt;b a=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;"
    );
}

#[test]
fn prometheus_label_values_escape_backslash_quote_and_newline() {
    assert_eq!(super::metrics::label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
}
