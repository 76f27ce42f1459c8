//! Owns the `prometheus` probe and the one Prometheus call faultline makes: an instant PromQL query
//! over the HTTP API (`/api/v1/query`) that must come back as exactly one number. The error-budget
//! gate (`budget.rs`) uses the same query function, so both read Prometheus' answers the same way.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::Failure;
use crate::model::Threshold;
use crate::units::format_number;

/// A client and a server address, built once per probe or budget check.
pub(crate) struct Prometheus {
    client: reqwest::Client,
    base: String,
}

/// Why an instant query gave no usable number. Each variant reads as a clause naming the input.
#[derive(Debug)]
pub(crate) enum QueryError {
    Unreachable {
        url: String,
        cause: String,
        /// The operating system's short name for it ("connection refused"), when it is an IO error.
        kind: Option<String>,
    },
    /// Prometheus answered with an error: the query is bad, or the server refused it.
    Rejected { query: String, message: String },
    /// The query matched nothing: no number to judge, which is never a pass.
    Empty { query: String },
    /// The query matched several series; the probe needs one number.
    Ambiguous { query: String, series: Vec<String> },
    /// The answer was not the JSON the API documents.
    Malformed { url: String, cause: String },
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Unreachable { url, cause, .. } => {
                write!(f, "Prometheus at {url} is unreachable: {cause}")
            }
            QueryError::Rejected { query, message } => {
                write!(f, "Prometheus rejected the query `{query}`: {message}")
            }
            QueryError::Empty { query } => write!(
                f,
                "the query `{query}` returned no series (an empty result counts as a failure)"
            ),
            QueryError::Ambiguous { query, series } => {
                let shown: Vec<&str> = series.iter().take(3).map(String::as_str).collect();
                let more = if series.len() > 3 { ", ..." } else { "" };
                write!(
                    f,
                    "the query `{query}` returned {} series ({}{more}); it must return exactly one, e.g. wrap it in sum(...)",
                    series.len(),
                    shown.join(", ")
                )
            }
            QueryError::Malformed { url, cause } => write!(
                f,
                "Prometheus at {url} sent an answer that is not a query result: {cause}"
            ),
        }
    }
}

impl QueryError {
    /// A short cause, the same for every sample that failed this way, so a reason can count them:
    /// "Prometheus unreachable (connection refused)".
    pub(crate) fn cause(&self) -> String {
        match self {
            QueryError::Unreachable { kind, cause, .. } => {
                format!(
                    "Prometheus unreachable ({})",
                    kind.as_deref().unwrap_or(cause)
                )
            }
            QueryError::Rejected { .. } => "Prometheus rejected the query".to_owned(),
            QueryError::Empty { .. } => "the query returned no series".to_owned(),
            QueryError::Ambiguous { series, .. } => {
                format!("the query returned {} series", series.len())
            }
            QueryError::Malformed { .. } => "Prometheus sent no query result".to_owned(),
        }
    }
}

/// The envelope of every API answer, success or error.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    data: Option<Data>,
    error: Option<String>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    metric: serde_json::Map<String, serde_json::Value>,
    /// `[unix time, "value"]`: Prometheus sends numbers as strings so NaN and ±Inf survive JSON.
    value: (f64, String),
}

impl Prometheus {
    pub(crate) fn new(base: &str, timeout: Duration) -> Result<Prometheus, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("failed to build HTTP client: {e}"))?;
        Ok(Prometheus {
            client,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.base
    }

    /// Evaluates `query` now and returns its single value.
    pub(crate) async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let endpoint = format!("{}/api/v1/query", self.base);
        let response = self
            .client
            .get(&endpoint)
            .query(&[("query", query)])
            .send()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        // Errors come back as 400/422/503 with the same envelope; read it before judging the status.
        let envelope: Envelope =
            serde_json::from_slice(&body).map_err(|e| QueryError::Malformed {
                url: self.base.clone(),
                cause: format!("HTTP {status}, {e}"),
            })?;
        if envelope.status != "success" {
            let kind = envelope
                .error_type
                .map_or_else(String::new, |t| format!("{t}: "));
            let message = envelope
                .error
                .unwrap_or_else(|| format!("HTTP {status} without an error message"));
            return Err(QueryError::Rejected {
                query: query.to_owned(),
                message: format!("{kind}{message}"),
            });
        }
        let data = envelope.data.ok_or_else(|| QueryError::Malformed {
            url: self.base.clone(),
            cause: "no `data`".to_owned(),
        })?;
        single_value(query, &data).map_err(|e| match e {
            Single::Query(e) => e,
            Single::Shape(cause) => QueryError::Malformed {
                url: self.base.clone(),
                cause,
            },
        })
    }
}

enum Single {
    Query(QueryError),
    Shape(String),
}

fn single_value(query: &str, data: &Data) -> Result<f64, Single> {
    let shape = |e: serde_json::Error| Single::Shape(format!("{} result: {e}", data.result_type));
    let text = match data.result_type.as_str() {
        "scalar" => {
            serde_json::from_value::<(f64, String)>(data.result.clone())
                .map_err(shape)?
                .1
        }
        "vector" => {
            let mut series: Vec<Series> =
                serde_json::from_value(data.result.clone()).map_err(shape)?;
            match series.len() {
                0 => {
                    return Err(Single::Query(QueryError::Empty {
                        query: query.to_owned(),
                    }));
                }
                1 => series.remove(0).value.1,
                _ => {
                    let names = series.iter().map(|s| labels(&s.metric)).collect();
                    return Err(Single::Query(QueryError::Ambiguous {
                        query: query.to_owned(),
                        series: names,
                    }));
                }
            }
        }
        other => {
            return Err(Single::Query(QueryError::Rejected {
                query: query.to_owned(),
                message: format!(
                    "it returned a {other}, not a number; use an instant vector or scalar expression"
                ),
            }));
        }
    };
    parse_value(&text).ok_or_else(|| Single::Shape(format!("value `{text}` is not a number")))
}

/// Prometheus writes `NaN`, `+Inf` and `-Inf`; Rust's parser wants them without the sign on `Inf`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

/// `{job="api", code="500"}`, the way Prometheus shows a series.
fn labels(metric: &serde_json::Map<String, serde_json::Value>) -> String {
    let pairs: Vec<String> = metric
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str()
                    .map_or_else(|| v.to_string(), |s| format!("\"{s}\""))
            )
        })
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn unreachable(url: &str, e: &reqwest::Error) -> QueryError {
    QueryError::Unreachable {
        url: url.to_owned(),
        cause: innermost(e),
        kind: if e.is_timeout() {
            Some("timed out".to_owned())
        } else {
            super::io_cause(e)
        },
    }
}

fn innermost(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// A `prometheus` probe: the query's value must meet the threshold.
pub(crate) struct PrometheusCheck {
    server: Prometheus,
    query: String,
    threshold: Threshold,
}

impl PrometheusCheck {
    pub(crate) fn new(
        url: &str,
        query: &str,
        threshold: Threshold,
        timeout: Duration,
    ) -> Result<PrometheusCheck, String> {
        Ok(PrometheusCheck {
            server: Prometheus::new(url, timeout)?,
            query: query.to_owned(),
            threshold,
        })
    }

    /// The value (when there is one) and whether it met the threshold.
    pub(crate) async fn check(&self) -> (Option<f64>, Result<(), Failure>) {
        match self.server.query(&self.query).await {
            Err(e) => (None, Err(Failure::new(e.cause(), e.to_string()))),
            Ok(value) => (
                Some(value),
                self.threshold.judge(value).map_err(|message| {
                    Failure::new(format!("value not {}", self.threshold), message)
                }),
            ),
        }
    }
}

impl Threshold {
    /// Whether `value` meets the threshold; the error says by how much it did not.
    pub(crate) fn judge(self, value: f64) -> Result<(), String> {
        let met = match self {
            Threshold::Below(limit) => value < limit,
            Threshold::Above(limit) => value > limit,
            // Values are floats that went through text: equal within a relative 1e-9.
            Threshold::Equals(want) => (value - want).abs() <= 1e-9 * want.abs().max(1.0),
        };
        if met {
            Ok(())
        } else {
            Err(format!("value {} is not {self}", format_number_full(value)))
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Below(v) => write!(f, "below {}", format_number_full(*v)),
            Threshold::Above(v) => write!(f, "above {}", format_number_full(*v)),
            Threshold::Equals(v) => write!(f, "equal to {}", format_number_full(*v)),
        }
    }
}

/// Whole numbers as integers, others with up to two decimals (or full precision when tiny).
pub(crate) fn format_number_full(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value != 0.0 && value.abs() < 0.01 {
        format!("{value}")
    } else {
        format_number(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(result_type: &str, result: &str) -> Data {
        Data {
            result_type: result_type.to_owned(),
            result: serde_json::from_str(result).unwrap(),
        }
    }

    fn err(d: &Data) -> String {
        match single_value("q", d) {
            Ok(v) => panic!("expected an error, got {v}"),
            Err(Single::Query(e)) => e.to_string(),
            Err(Single::Shape(s)) => s,
        }
    }

    #[test]
    fn one_series_or_a_scalar_is_a_number() {
        let one = data("vector", r#"[{"metric":{"job":"a"},"value":[1.5,"4.25"]}]"#);
        assert_eq!(single_value("q", &one).ok(), Some(4.25));
        let scalar = data("scalar", r#"[1.5,"+Inf"]"#);
        assert_eq!(single_value("q", &scalar).ok(), Some(f64::INFINITY));
    }

    #[test]
    fn empty_and_several_series_are_explained() {
        assert_eq!(
            err(&data("vector", "[]")),
            "the query `q` returned no series (an empty result counts as a failure)"
        );
        let two = data(
            "vector",
            r#"[{"metric":{"job":"a"},"value":[1,"1"]},{"metric":{"job":"b"},"value":[1,"2"]}]"#,
        );
        assert_eq!(
            err(&two),
            "the query `q` returned 2 series ({job=\"a\"}, {job=\"b\"}); it must return exactly one, e.g. wrap it in sum(...)"
        );
        let matrix = data("matrix", "[]");
        assert!(err(&matrix).contains("it returned a matrix, not a number"));
    }

    #[test]
    fn thresholds_are_strict_and_say_why_they_failed() {
        assert!(Threshold::Below(5.0).judge(4.9).is_ok());
        assert_eq!(
            Threshold::Below(5.0).judge(5.0).unwrap_err(),
            "value 5 is not below 5"
        );
        assert_eq!(
            Threshold::Above(0.5).judge(0.25).unwrap_err(),
            "value 0.25 is not above 0.5"
        );
        assert!(Threshold::Equals(1.0).judge(1.0).is_ok());
        assert_eq!(
            Threshold::Equals(1.0).judge(f64::NAN).unwrap_err(),
            "value NaN is not equal to 1"
        );
    }
}
