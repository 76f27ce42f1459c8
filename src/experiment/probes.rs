//! Owns reading the `http` and `grpc` probe tables into their validated form: the request
//! (method, headers, body), the response checks (status sets, `body_matches`, `json`) and the
//! TLS files, each error at the line and column of the value at fault and naming its key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::raw;
use crate::model::{GrpcSpec, HTTP_METHODS, HttpSpec, JsonCheck, RequestBody, StatusSet, TlsSpec};

/// A probe table's mistake: where it is and what it is.
pub(super) struct Bad {
    pub(super) span: Range<usize>,
    pub(super) message: String,
}

fn bad<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Bad> {
    Err(Bad {
        span,
        message: message.into(),
    })
}

/// At most this many redirects may be followed: more is a loop, not a health check.
const MAX_REDIRECTS: u64 = 20;
/// At most this many headers, each value at most this long: a probe is not a load generator.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_VALUE: usize = 8192;
/// A request body is held in memory for the whole run and sent on every sample.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// `status = 200`, `status = "2xx"`, `status = "200-299"`, or a list of those.
#[derive(Debug)]
pub(crate) struct StatusKey(pub(crate) StatusSet);

impl<'de> Deserialize<'de> for StatusKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StatusKey, D::Error> {
        d.deserialize_any(StatusVisitor { nested: false })
            .map(StatusKey)
    }
}

struct StatusVisitor {
    nested: bool,
}

impl<'de> Visitor<'de> for StatusVisitor {
    type Value = StatusSet;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a status code (200), a class (\"2xx\"), a range (\"200-299\") or a list of those",
        )
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusSet, E> {
        let code = code(v).map_err(E::custom)?;
        Ok(StatusSet(vec![(code, code)]))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusSet, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusSet, E> {
        status_range(v)
            .map(|r| StatusSet(vec![r]))
            .map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StatusSet, A::Error> {
        if self.nested {
            return Err(de::Error::custom("a status list cannot hold another list"));
        }
        let mut all = Vec::new();
        while let Some(one) = seq.next_element::<StatusElement>()? {
            all.extend(one.0.0);
        }
        if all.is_empty() {
            return Err(de::Error::custom(
                "an empty status list allows nothing: give at least one status, or leave `status` out for any 2xx",
            ));
        }
        Ok(StatusSet(all))
    }
}

struct StatusElement(StatusSet);

impl<'de> Deserialize<'de> for StatusElement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StatusElement, D::Error> {
        d.deserialize_any(StatusVisitor { nested: true })
            .map(StatusElement)
    }
}

fn code(v: i64) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| format!("HTTP status {v} does not exist: statuses are 100 to 599"))
}

/// `"2xx"` or `"200-299"` (both ends included).
pub(crate) fn status_range(text: &str) -> Result<(u16, u16), String> {
    let t = text.trim();
    if let Some(class) = t.strip_suffix("xx").or_else(|| t.strip_suffix("XX")) {
        return match class.parse::<u16>() {
            Ok(c @ 1..=5) => Ok((c * 100, c * 100 + 99)),
            _ => Err(format!(
                "status class `{text}` does not exist: classes are 1xx to 5xx"
            )),
        };
    }
    let Some((lo, hi)) = t.split_once('-') else {
        return Err(format!(
            "invalid status `{text}`: write a number (200), a class (\"2xx\") or a range (\"200-299\")"
        ));
    };
    let parse = |s: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| format!("invalid status range `{text}`: both ends must be numbers"))
            .and_then(code)
    };
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    if lo > hi {
        return Err(format!(
            "invalid status range `{text}`: the first status is above the second"
        ));
    }
    Ok((lo, hi))
}

/// `redirects = true` (follow up to 10), `false` (the default: a 3xx is the response), or a count.
#[derive(Debug)]
pub(crate) struct Redirects(pub(crate) u8);

impl<'de> Deserialize<'de> for Redirects {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Redirects, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Redirects;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or how many redirects to follow (0 to 20)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Redirects, E> {
                Ok(Redirects(if v { 10 } else { 0 }))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Redirects, E> {
                u64::try_from(v)
                    .ok()
                    .filter(|n| *n <= MAX_REDIRECTS)
                    .map(|n| Redirects(n as u8))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "`redirects` must be 0 to {MAX_REDIRECTS} (got {v}); true follows up to 10"
                        ))
                    })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Redirects, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(V)
    }
}

/// A TOML value as JSON. Dates and times, which JSON lacks, become their TOML text.
pub(crate) fn to_json(v: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(to_json).collect()),
        toml::Value::Table(t) => J::Object(t.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
    }
}

/// A path as written, relative paths taken from the experiment file's directory.
fn resolve(base: &Path, written: &str) -> PathBuf {
    let p = Path::new(written);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// The TLS keys every probe that speaks TLS takes, checked here: files that cannot be read, or
/// hold no PEM certificate or key, are errors at the key that names them.
fn tls(
    base: &Path,
    ca: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    insecure: Option<bool>,
) -> Result<TlsSpec, Bad> {
    let insecure = insecure == Some(true);
    let ca = match ca {
        Some(ca) => {
            if insecure {
                return bad(
                    ca.span(),
                    "`ca` and `insecure = true` contradict each other: `insecure` checks no certificate at all",
                );
            }
            let path = resolve(base, ca.get_ref());
            if let Err(e) = crate::probe::tls::load_certs(&path) {
                return bad(ca.span(), format!("`ca`: {e}"));
            }
            Some(path)
        }
        None => None,
    };
    let client_cert = match (client_cert, client_key) {
        (None, None) => None,
        (Some(c), None) => {
            return bad(
                c.span(),
                "`client_cert` needs `client_key` (its private key, PEM)",
            );
        }
        (None, Some(k)) => {
            return bad(
                k.span(),
                "`client_key` needs `client_cert` (the certificate, PEM)",
            );
        }
        (Some(c), Some(k)) => {
            let cert = resolve(base, c.get_ref());
            if let Err(e) = crate::probe::tls::load_certs(&cert) {
                return bad(c.span(), format!("`client_cert`: {e}"));
            }
            let key = resolve(base, k.get_ref());
            if let Err(e) = crate::probe::tls::load_key(&key) {
                return bad(k.span(), format!("`client_key`: {e}"));
            }
            Some((cert, key))
        }
    };
    Ok(TlsSpec {
        ca,
        client_cert,
        insecure,
    })
}

/// Validates an `http = { ... }` probe table.
pub(super) fn http(base: &Path, span: &Range<usize>, h: raw::HttpProbe) -> Result<HttpSpec, Bad> {
    let url_span = h.url.span();
    let url = h.url.into_inner();
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) | Err(_) => {
            return bad(
                url_span,
                format!("`url` must be an http:// or https:// URL with a host (got `{url}`)"),
            );
        }
    }
    let method = match h.method {
        None => "GET",
        Some(m) => {
            let upper = m.get_ref().to_ascii_uppercase();
            match HTTP_METHODS.iter().find(|k| **k == upper) {
                Some(k) => k,
                None => {
                    return bad(
                        m.span(),
                        format!(
                            "`method`: unknown method `{}` (one of {})",
                            m.get_ref(),
                            HTTP_METHODS.join(", ")
                        ),
                    );
                }
            }
        }
    };
    let mut headers = Vec::new();
    for (name, value) in h.headers.unwrap_or_default() {
        let vspan = value.span();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return bad(
                vspan,
                format!(
                    "`headers`: `{name}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
                ),
            );
        }
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "host"
        ) {
            return bad(
                vspan,
                format!("`headers`: `{name}` is set by the HTTP client itself and cannot be given"),
            );
        }
        let value = value.into_inner();
        if value.len() > MAX_HEADER_VALUE {
            return bad(
                vspan,
                format!("`headers`: the value of `{name}` is longer than {MAX_HEADER_VALUE} bytes"),
            );
        }
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            // The value itself is not echoed: headers often carry credentials.
            return bad(
                vspan,
                format!(
                    "`headers`: the value of `{name}` holds a character HTTP forbids in a header (a control character or non-ASCII)"
                ),
            );
        }
        headers.push((name, value));
    }
    if headers.len() > MAX_HEADERS {
        return bad(
            span.clone(),
            format!("`headers`: at most {MAX_HEADERS} headers"),
        );
    }
    let body = match (h.body, h.json_body) {
        (Some(_), Some(j)) => {
            return bad(
                j.span(),
                "give `body` (text) or `json_body` (JSON), not both",
            );
        }
        (Some(b), None) => {
            if b.get_ref().len() > MAX_REQUEST_BODY {
                return bad(b.span(), "`body` is larger than 1 MiB");
            }
            Some(RequestBody::Text(b.into_inner()))
        }
        (None, Some(j)) => {
            let jspan = j.span();
            let value = to_json(j.into_inner());
            if serde_json::to_vec(&value).map_or(0, |v| v.len()) > MAX_REQUEST_BODY {
                return bad(jspan, "`json_body` is larger than 1 MiB as JSON");
            }
            Some(RequestBody::Json(value))
        }
        (None, None) => None,
    };
    let body_matches = match h.body_matches {
        Some(re) => Some(Regex::new(re.get_ref()).or_else(|e| {
            bad(
                re.span(),
                format!(
                    "`body_matches`: invalid regex: {}",
                    first_line(&e.to_string())
                ),
            )
        })?),
        None => None,
    };
    let json = match h.json {
        Some(j) => {
            let j = j.into_inner();
            let pointer = j.pointer.get_ref();
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                return bad(
                    j.pointer.span(),
                    format!(
                        "`pointer`: a JSON pointer starts with `/` (got `{pointer}`), e.g. \"/status\" or \"/items/0/name\""
                    ),
                );
            }
            Some(JsonCheck {
                pointer: j.pointer.into_inner(),
                equals: j.equals.map(to_json),
            })
        }
        None => None,
    };
    if method == "HEAD" && (body_matches.is_some() || json.is_some()) {
        return bad(
            span.clone(),
            "a HEAD response has no body: `body_matches` and `json` need another `method`",
        );
    }
    let tls = tls(base, h.ca, h.client_cert, h.client_key, h.insecure)?;
    if !tls.is_default() && url.starts_with("http://") {
        return bad(
            url_span,
            format!("`ca`, `client_cert` and `insecure` apply to https:// URLs only (got `{url}`)"),
        );
    }
    Ok(HttpSpec {
        url,
        method,
        headers,
        body,
        status: h.status.map(|s| s.0).unwrap_or_default(),
        body_matches,
        json,
        tls,
        redirects: h.redirects.map_or(0, |r| r.0),
    })
}

/// Validates a `grpc = { address, service }` probe table.
pub(super) fn grpc(base: &Path, span: &Range<usize>, g: raw::GrpcProbe) -> Result<GrpcSpec, Bad> {
    let address = g.address.get_ref().trim().to_owned();
    if address.contains("://") {
        return bad(
            g.address.span(),
            format!(
                "`address` is `host:port` without a scheme (got `{address}`); TLS is `tls = true`"
            ),
        );
    }
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return bad(
            g.address.span(),
            format!("`address` must be `host:port` with a port from 1 to 65535 (got `{address}`)"),
        );
    }
    if g.service.len() > 1024 || g.service.chars().any(char::is_control) {
        return bad(
            span.clone(),
            "`service` must be a service name (at most 1024 characters, no control characters)",
        );
    }
    let wants_tls = g.ca.is_some() || g.client_cert.is_some() || g.insecure == Some(true);
    if g.tls == Some(false) && wants_tls {
        return bad(
            span.clone(),
            "`tls = false` contradicts `ca`, `client_cert` or `insecure`, which only apply to TLS",
        );
    }
    let tls = if wants_tls || g.tls == Some(true) {
        Some(tls(base, g.ca, g.client_cert, g.client_key, g.insecure)?)
    } else {
        if let Some(k) = g.client_key {
            return bad(
                k.span(),
                "`client_key` needs `client_cert` (the certificate, PEM)",
            );
        }
        None
    };
    Ok(GrpcSpec {
        address,
        service: g.service,
        tls,
    })
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::model::{Check, RequestBody, StatusSet};

    /// An experiment whose one probe is `PROBE`, on line 6.
    const HEAD: &str =
        "title = \"t\"\n[steady_state]\nwindow = \"1s\"\n[[steady_state.probe]]\nname = \"p\"\n";
    const TAIL: &str = "\n[[fault]]\nname = \"k\"\nkind = \"process-kill\"\nselect = { name = \"nothing-here\" }\n[recovery]\nwithin = \"5s\"\n";

    fn parse(probe: &str) -> Result<Check, String> {
        let text = format!("{HEAD}{probe}{TAIL}");
        super::super::parse(Path::new("x.toml"), &text)
            .map(|mut e| e.steady_state.probes.remove(0).check)
            .map_err(|e| e.to_string())
    }

    fn err(probe: &str) -> String {
        parse(probe).expect_err("the probe is invalid")
    }

    fn http(probe: &str) -> crate::model::HttpSpec {
        match parse(probe).unwrap() {
            Check::Http(h) => *h,
            other => panic!("not an http check: {other:?}"),
        }
    }

    #[test]
    fn statuses_are_numbers_classes_ranges_or_lists_of_them() {
        let status =
            |s: &str| http(&format!("http = {{ url = \"http://h/\", status = {s} }}")).status;
        assert_eq!(status("204"), StatusSet(vec![(204, 204)]));
        assert_eq!(status("\"2xx\""), StatusSet(vec![(200, 299)]));
        assert_eq!(status("\"200-204\""), StatusSet(vec![(200, 204)]));
        let mixed = status("[\"2xx\", 304, \"400-404\"]");
        assert_eq!(mixed, StatusSet(vec![(200, 299), (304, 304), (400, 404)]));
        assert!(mixed.allows(404) && mixed.allows(304) && !mixed.allows(305));
        assert_eq!(mixed.to_string(), "2xx, 304, 400-404");
        let default = http("http = { url = \"http://h/\" }").status;
        assert!(default.allows(299) && !default.allows(301));
    }

    #[test]
    fn bad_statuses_name_the_key_line_and_column() {
        let e = err("http = { url = \"http://h/\", status = \"6xx\" }");
        assert!(e.contains("line 6, column 38"), "{e}");
        assert!(
            e.contains("`status`") && e.contains("status class `6xx` does not exist"),
            "{e}"
        );
        let e = err("http = { url = \"http://h/\", status = [200, 700] }");
        assert!(e.contains("HTTP status 700 does not exist"), "{e}");
        let e = err("http = { url = \"http://h/\", status = \"299-200\" }");
        assert!(e.contains("the first status is above the second"), "{e}");
        let e = err("http = { url = \"http://h/\", status = [] }");
        assert!(e.contains("allows nothing"), "{e}");
    }

    #[test]
    fn a_bad_method_header_or_regex_is_named_at_its_value() {
        let e = err("http = { url = \"http://h/\", method = \"FETCH\" }");
        assert!(e.contains("line 6, column 38"), "{e}");
        assert!(
            e.contains("probe `p`: `method`: unknown method `FETCH` (one of GET, HEAD, POST"),
            "{e}"
        );
        let e = err("http = { url = \"http://h/\", headers = { \"Bad Name\" = \"x\" } }");
        assert!(e.contains("`Bad Name` is not a valid header name"), "{e}");
        assert!(e.contains("line 6"), "{e}");
        let e = err("http = { url = \"http://h/\", headers = { X-Token = \"a\\nb\" } }");
        assert!(
            e.contains("the value of `X-Token` holds a character HTTP forbids"),
            "{e}"
        );
        assert!(!e.contains("a\\nb"), "header values are never echoed: {e}");
        let e = err("http = { url = \"http://h/\", headers = { Content-Length = \"3\" } }");
        assert!(e.contains("set by the HTTP client itself"), "{e}");
        let e = err("http = { url = \"http://h/\", body_matches = \"ok(\" }");
        assert!(e.contains("line 6, column 44"), "{e}");
        assert!(e.contains("`body_matches`: invalid regex"), "{e}");
    }

    #[test]
    fn bodies_and_checks_are_read_and_their_conflicts_refused() {
        let h = http(
            "http = { url = \"http://h/\", method = \"post\", json_body = { a = [1, true], b = { c = \"d\" } }, json = { pointer = \"/status\", equals = \"ok\" } }",
        );
        assert_eq!(h.method, "POST");
        match h.body {
            Some(RequestBody::Json(v)) => {
                assert_eq!(v.to_string(), r#"{"a":[1,true],"b":{"c":"d"}}"#);
            }
            other => panic!("{other:?}"),
        }
        let j = h.json.unwrap();
        assert_eq!(
            (j.pointer.as_str(), j.equals),
            ("/status", Some(serde_json::json!("ok")))
        );
        let e = err("http = { url = \"http://h/\", body = \"x\", json_body = { a = 1 } }");
        assert!(
            e.contains("give `body` (text) or `json_body` (JSON), not both"),
            "{e}"
        );
        let e = err("http = { url = \"http://h/\", json = { pointer = \"status\" } }");
        assert!(
            e.contains("`pointer`: a JSON pointer starts with `/`"),
            "{e}"
        );
        let e = err("http = { url = \"http://h/\", json = { pointer = \"/a\", equal = 1 } }");
        assert!(e.contains("unknown field `equal`"), "{e}");
        let e = err("http = { url = \"http://h/\", method = \"HEAD\", body_matches = \"x\" }");
        assert!(e.contains("a HEAD response has no body"), "{e}");
        let e = err("http = { url = \"ftp://h/\" }");
        assert!(
            e.contains("`url` must be an http:// or https:// URL"),
            "{e}"
        );
        let e = err("http = { url = \"http://h/\", redirects = 99 }");
        assert!(e.contains("`redirects` must be 0 to 20 (got 99)"), "{e}");
        assert_eq!(
            http("http = { url = \"http://h/\", redirects = true }").redirects,
            10
        );
        assert_eq!(
            http("http = { url = \"http://h/\", redirects = 3 }").redirects,
            3
        );
    }

    #[test]
    fn tls_files_are_checked_where_they_are_named() {
        let e = err("http = { url = \"https://h/\", ca = \"/nonexistent/ca.pem\" }");
        assert!(e.contains("line 6, column 35"), "{e}");
        assert!(
            e.contains("`ca`: failed to read certificates from /nonexistent/ca.pem"),
            "{e}"
        );
        let e = err("http = { url = \"https://h/\", client_cert = \"/nonexistent/c.pem\" }");
        assert!(e.contains("`client_cert` needs `client_key`"), "{e}");
        let e = err("http = { url = \"http://h/\", insecure = true }");
        assert!(e.contains("apply to https:// URLs only"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = err(&format!(
            "http = {{ url = \"https://h/\", ca = \"{}\" }}",
            not_pem.display()
        ));
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn grpc_addresses_need_a_port_and_tls_keys_imply_tls() {
        let e = err("grpc = { address = \"localhost\" }");
        assert!(e.contains("line 6, column 20"), "{e}");
        assert!(e.contains("`address` must be `host:port`"), "{e}");
        let e = err("grpc = { address = \"localhost:0\" }");
        assert!(e.contains("port from 1 to 65535"), "{e}");
        let e = err("grpc = { address = \"http://localhost:50051\" }");
        assert!(e.contains("without a scheme"), "{e}");
        let e = err("grpc = { address = \"h:1\", tls = false, insecure = true }");
        assert!(e.contains("`tls = false` contradicts"), "{e}");
        let e = err("grpc = { address = \"h:1\", ca = \"/nonexistent.pem\" }");
        assert!(e.contains("`ca`: failed to read certificates"), "{e}");
        match parse("grpc = { address = \"h:50051\", service = \"shop.Cart\", insecure = true }")
            .unwrap()
        {
            Check::Grpc(g) => {
                assert_eq!(
                    (g.address.as_str(), g.service.as_str()),
                    ("h:50051", "shop.Cart")
                );
                assert!(g.tls.is_some_and(|t| t.insecure));
            }
            other => panic!("{other:?}"),
        }
        match parse("grpc = { address = \"h:50051\" }").unwrap() {
            Check::Grpc(g) => assert!(g.tls.is_none() && g.service.is_empty()),
            other => panic!("{other:?}"),
        }
        let e = err("grpc = { address = \"h:1\" }\nhttp = { url = \"http://h/\" }");
        assert!(e.contains("give exactly one of `http`, `grpc`"), "{e}");
    }
}
