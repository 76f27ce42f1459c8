//! Owns the process-wide register of secret values and their redaction: every sink a person or a
//! pipeline reads (reports, the history, logs, `plan`, errors) passes its text through [`redact`],
//! which replaces each registered secret with `***`.
//!
//! Secrets are registered when an experiment's `[secrets]` are read (`experiment/vars.rs`), so
//! whatever the process prints after that is redacted, whichever experiment it came from. Values,
//! not names, are matched: a secret that reaches a message by any path (an error from reqwest, a
//! command's output) is still masked. Each secret is also registered in the forms the sinks
//! escape it into (JSON, HTML/XML, percent-encoding), so a report's escaping cannot reveal it.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{PoisonError, RwLock};

/// What a secret is replaced with.
pub(crate) const MASK: &str = "***";
/// Shorter secrets are refused: masking every `a` in every report would make them unreadable and
/// would tell an attacker the secret anyway.
pub(crate) const MIN_LEN: usize = 4;
/// A secret read from a file is read up to this many bytes; a longer file is refused.
pub(crate) const MAX_LEN: usize = 64 * 1024;

/// Every registered form of every secret, longest first (so a form that contains another is
/// replaced whole).
static FORMS: RwLock<Vec<String>> = RwLock::new(Vec::new());
/// Every registered secret as it was given, for [`occurring_in`].
static VALUES: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a secret value: from now on [`redact`] masks it. Values shorter than [`MIN_LEN`] are
/// the caller's to refuse.
pub(crate) fn register(value: &str) {
    if value.is_empty() {
        return;
    }
    {
        let mut values = VALUES.write().unwrap_or_else(PoisonError::into_inner);
        if !values.iter().any(|v| v == value) {
            values.push(value.to_owned());
        }
    }
    let mut forms = FORMS.write().unwrap_or_else(PoisonError::into_inner);
    for form in forms_of(value) {
        if !forms.contains(&form) {
            forms.push(form);
        }
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
}

/// Whether any secret is registered: sinks skip their work when none is.
pub(crate) fn any() -> bool {
    !FORMS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .is_empty()
}

/// `text` with every registered secret replaced by `***`; borrowed when there was none in it.
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    let forms = FORMS.read().unwrap_or_else(PoisonError::into_inner);
    if !forms.iter().any(|f| text.contains(f.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for form in forms.iter() {
        if out.contains(form.as_str()) {
            out = out.replace(form.as_str(), MASK);
        }
    }
    Cow::Owned(out)
}

/// The registered secrets (as given) that `text` holds in any of their forms: what a journal
/// entry carries, so that another process reverting it (the watchdog, a later start's recovery)
/// masks them in what it prints and records, although it never read the experiment.
pub(crate) fn occurring_in(text: &str) -> Vec<String> {
    let values = VALUES.read().unwrap_or_else(PoisonError::into_inner);
    values
        .iter()
        .filter(|v| forms_of(v).iter().any(|f| text.contains(f.as_str())))
        .cloned()
        .collect()
}

/// Redacts a `String` in place.
pub(crate) fn redact_in_place(text: &mut String) {
    if let Cow::Owned(redacted) = redact(text) {
        *text = redacted;
    }
}

/// The value as it is written raw and as the report formats escape it.
fn forms_of(value: &str) -> Vec<String> {
    let json = serde_json::to_string(value).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or(value)
        .to_owned();
    let html = crate::report::html::escape(value);
    let mut percent = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            percent.push(char::from(b));
        } else {
            percent.push_str(&format!("%{b:02X}"));
        }
    }
    // JUnit's XML writes an apostrophe as `&apos;` where the HTML page writes `&#39;`.
    let xml = html.replace("&#39;", "&apos;");
    let mut forms = vec![value.to_owned(), json, html, xml, percent];
    forms.sort();
    forms.dedup();
    forms
}

/// The standard error stream with secrets redacted, for the tracing subscriber: each event is
/// formatted into one buffer and written (redacted) when the subscriber drops the writer.
pub(crate) struct RedactingStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter(Vec::new())
    }
}

/// One event's bytes, written to stderr with secrets masked when dropped.
pub(crate) struct EventWriter(Vec<u8>);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        // Nothing to do with a failed write to stderr: it is where failures would be told.
        let _ = std::io::stderr().write_all(redact(&text).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_masked_in_every_escaped_form() {
        register("s3cr\"et<&>/x y");
        assert_eq!(redact("a s3cr\"et<&>/x y b"), "a *** b");
        assert_eq!(redact(r#"{"h":"s3cr\"et<&>/x y"}"#), r#"{"h":"***"}"#);
        assert_eq!(
            redact("<td>s3cr&quot;et&lt;&amp;&gt;/x y</td>"),
            "<td>***</td>"
        );
        assert_eq!(
            redact("http://h/?t=s3cr%22et%3C%26%3E%2Fx%20y"),
            "http://h/?t=***"
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
        assert!(any());
    }

    #[test]
    fn a_secret_inside_another_is_masked_whole() {
        register("qzx-inner-qzx-long");
        register("inner-qzx");
        assert_eq!(redact("x qzx-inner-qzx-long y inner-qzx"), "x *** y ***");
    }
}
