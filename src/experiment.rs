//! Owns turning an experiment file into a validated [`Experiment`]: TOML syntax, unknown keys, value
//! syntaxes and every cross-field rule. Nothing here touches the host.

#[cfg(test)]
mod network_kinds;
mod probes;
mod raw;
pub(crate) mod vars;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::fault::check;
use crate::fault::{FaultSpec, FaultTable, Invalid, LatencyProxy, Via};
use crate::model::{
    AbortCondition, AbortRule, BudgetSpec, Check, Experiment, FaultStep, Fixture, GoldenSignal,
    LOCAL_GROUP, Pick, ProbeSpec, ReadyCheck, ReadyKind, Slo, SteadyState, TargetGroup, Threshold,
};
use crate::units::{Dur, SuccessBound, format_ms};

/// An experiment file that could not be loaded, with where in the file the problem is.
#[derive(Debug)]
pub(crate) struct ExperimentError {
    pub(crate) path: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub(crate) position: Option<(usize, usize)>,
    pub(crate) message: String,
    /// The file could not be read at all (missing, unreadable): not an invalid experiment.
    pub(crate) unreadable: bool,
}

impl fmt::Display for ExperimentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(
                f,
                "{}: line {line}, column {col}: {}",
                self.path.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ExperimentError {}

/// Reads and validates an experiment file, with vars given from outside it (`--var`, `--vars`).
pub(crate) fn load_with(
    path: &Path,
    overrides: &vars::Overrides,
) -> Result<Experiment, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(|e| ExperimentError {
        path: path.to_owned(),
        position: None,
        message: format!("cannot read the experiment file: {e}"),
        unreadable: true,
    })?;
    parse_with(path, &text, overrides)
}

/// Validates experiment text; `path` is only used in messages and the report.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Experiment, ExperimentError> {
    parse_with(path, text, &vars::Overrides::default())
}

/// Validates experiment text with vars given from outside it.
pub(crate) fn parse_with(
    path: &Path,
    text: &str,
    overrides: &vars::Overrides,
) -> Result<Experiment, ExperimentError> {
    let fail = |span: Option<Range<usize>>, message: String| ExperimentError {
        path: path.to_owned(),
        position: span.map(|s| line_col(text, s.start)),
        message,
        unreadable: false,
    };
    let toml_error = |e: toml::de::Error| toml_error(&e, text, &fail);
    // Parsed once, keeping every span. The `[[fault]]` tables are taken out before the rest is
    // deserialised: which keys a fault takes depends on its kind, so each is read by its kind.
    let root = DeTable::parse(text).map_err(toml_error)?;
    let span = root.span();
    let mut root = root.into_inner();
    // `${…}` references are replaced before anything is deserialised, in place, so every later
    // error still points into the file (`experiment/vars.rs`).
    let var_error = |e: vars::VarError| fail(e.span, e.message);
    let (scope, used) = vars::Scope::take(&mut root, overrides).map_err(var_error)?;
    let typed = scope.substitute(&mut root, text, used).map_err(var_error)?;
    let sha256 = format!("{:x}", Sha256::digest(text.as_bytes()));
    // A string that is exactly one integer or boolean var became that integer or boolean; where
    // the key wants text after all (an argv element, a name), it goes back to text and the file
    // is read again: the key decides, at most once per such value.
    let mut flipped = 0;
    loop {
        let attempt = validate(
            root.clone(),
            span.clone(),
            path,
            text,
            &fail,
            sha256.clone(),
        );
        let mut exp = match attempt {
            Err(e) if flipped < typed.len() && wants_text(&e.message) => {
                let at = typed
                    .iter()
                    .find(|s| Some(line_col(text, s.start)) == e.position);
                match at {
                    Some(at) if vars::back_to_text(&mut root, at) => {
                        flipped += 1;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            other => other?,
        };
        exp.vars = scope.listing();
        return Ok(exp);
    }
}

/// A TOML or serde error at its place, naming the key of a bad value and the closest known key
/// of an unknown one.
fn toml_error(
    e: &toml::de::Error,
    text: &str,
    fail: &dyn Fn(Option<Range<usize>>, String) -> ExperimentError,
) -> ExperimentError {
    let mut message = suggest_field(e.message().trim());
    // A bad value's span points at the value; name the key it belongs to as well.
    if let Some(key) = e.span().and_then(|span| key_before(text, span.start)) {
        if !message.contains(&format!("`{key}`")) {
            message = format!("`{key}`: {message}");
        }
    }
    fail(e.span(), message)
}

/// Whether a deserialisation error says a key wanted text where it got a number or a boolean.
fn wants_text(message: &str) -> bool {
    (message.contains("invalid type: integer") || message.contains("invalid type: boolean"))
        && message.contains("expected a string")
}

/// The substituted document deserialised and validated: the `[[fault]]` tables are taken out
/// first, as which keys a fault takes depends on its kind.
fn validate(
    mut root: DeTable<'_>,
    span: Range<usize>,
    path: &Path,
    text: &str,
    fail: &dyn Fn(Option<Range<usize>>, String) -> ExperimentError,
    sha256: String,
) -> Result<Experiment, ExperimentError> {
    let toml_error = |e: toml::de::Error| toml_error(&e, text, fail);
    let faults = match root.remove("fault") {
        None => Vec::new(),
        Some(value) => {
            let span = value.span();
            match value.into_inner() {
                DeValue::Array(faults) => faults.into_iter().collect(),
                _ => {
                    return Err(fail(
                        Some(span),
                        "`fault` must be an array of tables: write each as `[[fault]]`".to_owned(),
                    ));
                }
            }
        }
    };
    let raw = raw::Experiment::deserialize(toml::de::Deserializer::from(Spanned::new(span, root)))
        .map_err(toml_error)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    Validator { fail, text, dir }.experiment(raw, faults, path, sha256)
}

/// The candidate closest to `name` by edit distance, when it is close enough to be a likely typo
/// (`timout` → `timeout`): for "did you mean" hints.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// serde's "unknown field `timout`, expected one of `name`, `timeout`" with "; did you mean
/// `timeout`?" added when one expected field is close. Other messages are returned as they are.
pub(crate) fn suggest_field(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return message.to_owned();
    };
    let Some((name, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let candidates = expected.split('`').skip(1).step_by(2);
    match closest(name, candidates) {
        Some(c) => format!("{message}; did you mean `{c}`?"),
        None => message.to_owned(),
    }
}

/// The key whose value starts at `offset`: the name before the last `=` on that line, up to it.
/// `None` when what stands before the `=` is not a bare key (a string holding `=`, say). Game-day
/// files use it too.
pub(crate) fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset.min(text.len()))?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let before = &before[line_start..];
    let key = before[..before.rfind('=')?].trim_end();
    // Walk back by characters, not bytes: the line may hold non-ASCII text before the key.
    let start = key
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .last()
        .map_or(key.len(), |(i, _)| i);
    Some(&key[start..]).filter(|k| !k.is_empty())
}

/// Converts a byte offset into a 1-based (line, column).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

struct Validator<'a> {
    fail: &'a dyn Fn(Option<Range<usize>>, String) -> ExperimentError,
    /// The experiment's text, to name the key of a bad value.
    text: &'a str,
    /// The experiment file's directory: relative paths in probes (TLS files) start there.
    dir: &'a Path,
}

type VResult<T> = std::result::Result<T, ExperimentError>;

impl Validator<'_> {
    fn at<T>(&self, span: Range<usize>, message: impl Into<String>) -> VResult<T> {
        Err((self.fail)(Some(span), message.into()))
    }

    fn experiment(
        &self,
        raw: raw::Experiment,
        fault_tables: Vec<Spanned<DeValue<'_>>>,
        path: &Path,
        sha256: String,
    ) -> VResult<Experiment> {
        if raw.title.trim().is_empty() {
            return Err((self.fail)(None, "`title` must not be empty".to_owned()));
        }
        let setup = raw
            .setup
            .into_iter()
            .map(|s| self.fixture(s))
            .collect::<VResult<Vec<_>>>()?;
        let notify = crate::notify::validate_all(raw.notify)
            .map_err(|e| (self.fail)(Some(e.span), e.message))?;
        let mut targets = BTreeMap::new();
        for (name, target) in raw.targets {
            targets.insert(name.clone(), self.target(&name, target)?);
        }
        let steady_state = self.steady_state(raw.steady_state)?;
        let mut faults = Vec::new();
        for fault in fault_tables {
            let step = self.fault(fault, &targets)?;
            if faults.iter().any(|f: &FaultStep| f.name == step.name) {
                return Err((self.fail)(
                    None,
                    format!(
                        "two faults are named `{}`: fault names must be unique",
                        step.name
                    ),
                ));
            }
            faults.push(step);
        }
        let mut proxies: BTreeMap<std::net::SocketAddr, &str> = BTreeMap::new();
        for step in &faults {
            if let FaultSpec::LatencyProxy(LatencyProxy {
                via: Via::Run { listen, upstream },
                ..
            }) = &step.spec
            {
                if proxies
                    .insert(*listen, upstream)
                    .is_some_and(|up| up != upstream)
                {
                    return Err((self.fail)(
                        None,
                        format!(
                            "fault `{}`: another fault already uses a proxy on {listen} with a different `upstream`; one listen address forwards to one upstream",
                            step.name
                        ),
                    ));
                }
            }
        }
        if faults.is_empty() {
            return Err((self.fail)(
                None,
                "the experiment has no `[[fault]]`: there is nothing to test".to_owned(),
            ));
        }
        let aborts = raw
            .abort
            .into_iter()
            .map(|a| self.abort(a, &steady_state.probes))
            .collect::<VResult<Vec<_>>>()?;
        let budget = raw.slo_budget.map(|b| self.budget(b)).transpose()?;
        let gate = raw.gate.as_ref().map(gate_rules).unwrap_or_default();
        Ok(Experiment {
            title: raw.title,
            description: raw.description,
            file: path.to_owned(),
            sha256,
            setup,
            notify,
            targets,
            steady_state,
            faults,
            aborts,
            recovery_within: raw.recovery.within.0,
            budget,
            gate,
            vars: Vec::new(),
        })
    }

    fn budget(&self, raw: Spanned<raw::SloBudget>) -> VResult<BudgetSpec> {
        let span = raw.span();
        let b = raw.into_inner();
        if !(b.prometheus.starts_with("http://") || b.prometheus.starts_with("https://")) {
            return self.at(
                span,
                format!(
                    "slo_budget: `prometheus` must start with http:// or https:// (got `{}`)",
                    b.prometheus
                ),
            );
        }
        // A 100% target allows no errors at all, so there is no budget to divide by.
        if !(b.target.0 > 0.0 && b.target.0 < 1.0) {
            return self.at(
                span,
                format!(
                    "slo_budget: `target` must be above 0% and below 100% (got {})",
                    b.target
                ),
            );
        }
        for (key, query) in [("good", &b.good), ("total", &b.total)] {
            if query.trim().is_empty() {
                return self.at(span, format!("slo_budget: `{key}` must be a PromQL query, e.g. sum(increase(http_requests_total[28d]))"));
            }
        }
        Ok(BudgetSpec {
            prometheus: b.prometheus,
            target: b.target.0,
            good: b.good,
            total: b.total,
            min_remaining: b.min_remaining.map_or(0.0, |p| p.0),
        })
    }

    fn fixture(&self, raw: Spanned<raw::Setup>) -> VResult<Fixture> {
        let span = raw.span();
        let s = raw.into_inner();
        if s.run.is_empty() || s.run[0].is_empty() {
            return self.at(span, format!("setup `{}`: `run` must name a program, e.g. [\"python3\", \"-m\", \"http.server\"]", s.name));
        }
        let ready = match s.ready {
            None => None,
            Some(r) => {
                let kind = match (r.tcp, r.http) {
                    (Some(addr), None) => ReadyKind::Tcp(addr),
                    (None, Some(url)) => ReadyKind::Http(url),
                    _ => {
                        return self.at(
                            span,
                            format!(
                                "setup `{}`: `ready` takes exactly one of `tcp` or `http`",
                                s.name
                            ),
                        );
                    }
                };
                Some(ReadyCheck {
                    kind,
                    within: r.within.map_or(Duration::from_secs(10), |d| d.0),
                })
            }
        };
        Ok(Fixture {
            name: s.name,
            argv: s.run,
            ready,
        })
    }

    fn target(&self, name: &str, raw: Spanned<raw::Target>) -> VResult<TargetGroup> {
        let span = raw.span();
        let t = raw.into_inner();
        if name == LOCAL_GROUP {
            return self.at(
                span,
                "`local` is the embedded agent and cannot be redefined; pick another group name",
            );
        }
        if t.max == Some(0) {
            return self.at(
                span,
                "`max = 0` selects nothing; remove the group's faults instead",
            );
        }
        let pick = self.pick(span, t.count, t.percent.map(|p| p.0))?;
        Ok(TargetGroup {
            tags: t.tags,
            pick,
            max: t.max,
        })
    }

    fn pick(
        &self,
        span: Range<usize>,
        count: Option<u32>,
        percent: Option<f64>,
    ) -> VResult<Option<Pick>> {
        match (count, percent) {
            (Some(_), Some(_)) => self.at(span, "give `count` or `percent`, not both"),
            (Some(0), None) => self.at(
                span,
                "`count = 0` selects nothing; remove the fault instead",
            ),
            (None, Some(p)) if p <= 0.0 => self.at(
                span,
                "`percent = \"0%\"` selects nothing; remove the fault instead",
            ),
            (Some(n), None) => Ok(Some(Pick::Count(n))),
            (None, Some(p)) => Ok(Some(Pick::Percent(p))),
            (None, None) => Ok(None),
        }
    }

    fn steady_state(&self, raw: raw::SteadyState) -> VResult<SteadyState> {
        if raw.window.0.is_zero() {
            return Err((self.fail)(
                None,
                "`steady_state.window` must be longer than zero".to_owned(),
            ));
        }
        if raw.probe.is_empty() {
            return Err((self.fail)(
                None,
                "`steady_state` needs at least one `[[steady_state.probe]]`".to_owned(),
            ));
        }
        let mut probes: Vec<ProbeSpec> = Vec::new();
        for p in raw.probe {
            let span = p.span();
            let probe = self.probe(p)?;
            if probes.iter().any(|q| q.name == probe.name) {
                return self.at(
                    span,
                    format!(
                        "two probes are named `{}`: probe names must be unique",
                        probe.name
                    ),
                );
            }
            if raw.window.0 < probe.every {
                return self.at(
                    span,
                    format!(
                        "`steady_state.window` ({}) is shorter than probe `{}`'s `every` ({}): the baseline would end before its first sample; make `window` at least `every`",
                        crate::units::Dur(raw.window.0),
                        probe.name,
                        crate::units::Dur(probe.every)
                    ),
                );
            }
            probes.push(probe);
        }
        Ok(SteadyState {
            window: raw.window.0,
            probes,
        })
    }

    fn probe(&self, raw: Spanned<raw::Probe>) -> VResult<ProbeSpec> {
        let span = raw.span();
        let p = raw.into_inner();
        let name = p.name;
        let given = [
            p.http.is_some(),
            p.grpc.is_some(),
            p.tcp.is_some(),
            p.command.is_some(),
            p.prometheus.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return self.at(
                span,
                format!(
                    "probe `{name}`: give exactly one of `http`, `grpc`, `tcp`, `command` or `prometheus`"
                ),
            );
        }
        if p.command.is_none()
            && (p.expect_exit.is_some() || p.expect_stdout.is_some() || p.value.is_some())
        {
            return self.at(span, format!("probe `{name}`: `expect_exit`, `expect_stdout` and `value` apply only to `command` probes"));
        }
        let records_value = p.prometheus.is_some() || p.value == Some(true);
        if p.signal == Some(GoldenSignal::Saturation) && !records_value {
            return self.at(span, format!(
                "probe `{name}`: a saturation signal needs a number to show: use a `prometheus` probe or a `command` probe with `value = true`"
            ));
        }
        let check = if let Some(prom) = p.prometheus {
            if !(prom.url.starts_with("http://") || prom.url.starts_with("https://")) {
                return self.at(span, format!("probe `{name}`: prometheus `url` must start with http:// or https:// (got `{}`)", prom.url));
            }
            if prom.query.trim().is_empty() {
                return self.at(
                    span,
                    format!("probe `{name}`: prometheus `query` must not be empty"),
                );
            }
            let threshold = match (prom.below, prom.above, prom.equals) {
                (Some(v), None, None) => Threshold::Below(v),
                (None, Some(v), None) => Threshold::Above(v),
                (None, None, Some(v)) => Threshold::Equals(v),
                _ => return self.at(span, format!("probe `{name}`: prometheus takes exactly one of `below`, `above` or `equals`")),
            };
            Check::Prometheus {
                url: prom.url,
                query: prom.query,
                threshold,
            }
        } else if let Some(http) = p.http {
            Check::Http(Box::new(
                probes::http(self.dir, &span, http).or_else(|e| self.probe_error(&name, e))?,
            ))
        } else if let Some(grpc) = p.grpc {
            Check::Grpc(Box::new(
                probes::grpc(self.dir, &span, grpc).or_else(|e| self.probe_error(&name, e))?,
            ))
        } else if let Some(addr) = p.tcp {
            if !addr.contains(':') {
                return self.at(
                    span,
                    format!("probe `{name}`: `tcp` must be `host:port` (got `{addr}`)"),
                );
            }
            Check::Tcp { addr }
        } else {
            let argv = p.command.unwrap_or_default();
            if argv.first().is_none_or(String::is_empty) {
                return self.at(
                    span,
                    format!("probe `{name}`: `command` must name a program"),
                );
            }
            let stdout = match p.expect_stdout {
                Some(re) => Some(Regex::new(&re).or_else(|e| {
                    self.at(
                        span.clone(),
                        format!("probe `{name}`: invalid `expect_stdout` regex: {e}"),
                    )
                })?),
                None => None,
            };
            Check::Command {
                argv,
                expect_exit: p.expect_exit.unwrap_or(0),
                stdout,
                value: p.value == Some(true),
            }
        };
        let every = p.every.map_or(Duration::from_millis(500), |d| d.0);
        let timeout = p.timeout.map_or(Duration::from_secs(1), |d| d.0);
        if every < Duration::from_millis(10) {
            return self.at(
                span,
                format!("probe `{name}`: `every` must be at least 10ms"),
            );
        }
        if timeout.is_zero() {
            return self.at(
                span,
                format!("probe `{name}`: `timeout` must be longer than zero"),
            );
        }
        let slo = p
            .slo
            .map_or_else(|| Ok(default_slo()), |s| Ok(convert_slo(&s)))?;
        let slo_during = p.slo_during.as_ref().map(convert_slo);
        Ok(ProbeSpec {
            name,
            check,
            every,
            timeout,
            slo,
            slo_during,
            signal: p.signal,
        })
    }

    /// A probe table's error, at its value, naming the probe and (when the message does not yet)
    /// the key.
    fn probe_error<T>(&self, name: &str, e: probes::Bad) -> VResult<T> {
        let mut message = e.message;
        if let Some(key) = key_before(self.text, e.span.start) {
            if !message.contains(&format!("`{key}`")) {
                message = format!("`{key}`: {message}");
            }
        }
        self.at(e.span, format!("probe `{name}`: {message}"))
    }

    fn fault(
        &self,
        value: Spanned<DeValue<'_>>,
        targets: &BTreeMap<String, TargetGroup>,
    ) -> VResult<FaultStep> {
        let invalid = |name: Option<&str>, e: Invalid| {
            let mut message = suggest_field(&e.message);
            // A bad value's span points at the value; name the key it belongs to as well.
            if let Some(key) = key_before(self.text, e.span.start) {
                if !message.contains(&format!("`{key}`")) {
                    message = format!("`{key}`: {message}");
                }
            }
            if let Some(name) = name {
                message = format!("fault `{name}`: {message}");
            }
            (self.fail)(Some(e.span), message)
        };
        let mut table = FaultTable::new(value).map_err(|e| invalid(None, e))?;
        let name: String = table.require("name").map_err(|e| invalid(None, e))?;
        let fail = |e: Invalid| invalid(Some(&name), e);
        // The keys every fault takes; the rest belongs to the kind.
        let kind: Spanned<String> = table.require("kind").map_err(fail)?;
        let on: Option<Spanned<String>> = table.take("on").map_err(fail)?;
        let at: Option<Dur> = table.take("at").map_err(fail)?;
        let duration: Option<Dur> = table.take("duration").map_err(fail)?;
        let on = match on {
            None => LOCAL_GROUP.to_owned(),
            Some(on) => {
                let group = on.get_ref();
                if group != LOCAL_GROUP && !targets.contains_key(group) {
                    let known: Vec<String> = std::iter::once(LOCAL_GROUP.to_owned())
                        .chain(targets.keys().cloned())
                        .collect();
                    return self.at(
                        on.span(),
                        format!(
                            "fault `{name}`: unknown target group `{group}` (known: {})",
                            known.join(", ")
                        ),
                    );
                }
                group.clone()
            }
        };
        let spec = FaultSpec::from_table(&kind, &mut table).map_err(fail)?;
        let duration = duration.map(|d| d.0);
        if spec.is_instant() && duration.is_some() {
            return self.at(
                table.key_span("duration"),
                format!(
                    "fault `{name}`: `duration` does not apply to kind `{}` (a kill is instant)",
                    spec.kind()
                ),
            );
        }
        if !spec.is_instant() && duration.is_none_or(|d| d.is_zero()) {
            return self.at(table.span(), format!("fault `{name}`: kind `{}` persists, so it needs a `duration` (e.g. `duration = \"10s\"`)", spec.kind()));
        }
        let at = at.map_or(Duration::ZERO, |d| d.0);
        let checked = spec
            .check()
            .and_then(|()| check::hold("at", at))
            .and_then(|()| duration.map_or(Ok(()), |d| check::hold("duration", d)));
        if let Err(e) = checked {
            return Err(fail(table.at_key(&e)));
        }
        Ok(FaultStep {
            name,
            on,
            at,
            duration,
            spec,
        })
    }

    fn abort(&self, raw: Spanned<raw::Abort>, probes: &[ProbeSpec]) -> VResult<AbortRule> {
        let span = raw.span();
        let a = raw.into_inner();
        let probe_name = a.probe.get_ref();
        let Some(probe) = probes.iter().position(|p| &p.name == probe_name) else {
            let known: Vec<&str> = probes.iter().map(|p| p.name.as_str()).collect();
            return self.at(
                a.probe.span(),
                format!(
                    "abort rule: unknown probe `{probe_name}` (known: {})",
                    known.join(", ")
                ),
            );
        };
        let over = a.when.over.0;
        let (condition, text) = match (a.when.success_below, a.when.p99_above) {
            (Some(p), None) => (AbortCondition::SuccessBelow(p.0), format!("success below {p}")),
            (None, Some(d)) => (AbortCondition::P99Above(d.0), format!("p99 above {}", format_ms(d.0))),
            _ => return self.at(span, "abort rule: `when` takes exactly one of `success_below` or `p99_above`, plus `over`"),
        };
        if over.is_zero() {
            return self.at(span, "abort rule: `over` must be longer than zero");
        }
        Ok(AbortRule {
            name: format!("{probe_name} {text} over {}", crate::units::Dur(over)),
            probe,
            condition,
            over,
        })
    }
}

/// `[gate]`'s rules, in `Metric::ALL` order. Each rule was checked where it was read, so a bad
/// one was already reported at its line and column.
fn gate_rules(raw: &raw::Gate) -> Vec<crate::gate::GateRule> {
    use crate::gate::{GateRule, Metric};
    [
        (Metric::TimeToRecover, raw.time_to_recover),
        (Metric::P99During, raw.p99_during),
        (Metric::P99After, raw.p99_after),
    ]
    .into_iter()
    .filter_map(|(metric, rule)| rule.map(|rule| GateRule { metric, rule }))
    .collect()
}

fn default_slo() -> Slo {
    Slo {
        success: SuccessBound::Absolute(1.0),
        p50: None,
        p95: None,
        p99: None,
    }
}

fn convert_slo(s: &raw::Slo) -> Slo {
    Slo {
        success: s.success.unwrap_or(SuccessBound::Absolute(1.0)),
        p50: s.p50,
        p95: s.p95,
        p99: s.p99,
    }
}

/// For tests: an experiment that is valid up to its one `[[fault]]` table, whose `name = "f"` is
/// given; a test appends the fault's other keys.
#[cfg(test)]
pub(crate) const ONE_FAULT_HEAD: &str = r#"
title = "t"
[steady_state]
window = "1s"
[[steady_state.probe]]
name = "p"
tcp = "127.0.0.1:1"
[recovery]
within = "5s"
[[fault]]
name = "f"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
title = "t"
[steady_state]
window = "1s"
[[steady_state.probe]]
name = "p"
tcp = "127.0.0.1:1"
[[fault]]
name = "k"
kind = "process-kill"
select = { name = "nothing-here" }
[recovery]
within = "5s"
"#;

    fn err(text: &str) -> String {
        parse(Path::new("x.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_experiment_is_valid() {
        let e = parse(Path::new("x.toml"), MINIMAL).unwrap();
        assert_eq!(e.faults[0].on, "local");
        assert_eq!(e.recovery_within, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_name_the_key_line_and_column() {
        let text = "title = \"t\"\ndescription = \"d\"\ntimeout_typo = \"5s\"\n";
        let e = err(text);
        assert!(e.contains("line 3, column 1"), "{e}");
        assert!(e.contains("timeout_typo"), "{e}");
    }

    #[test]
    fn unknown_keys_get_the_closest_expected_key_and_far_ones_none() {
        let e = err(&MINIMAL.replace(
            "tcp = \"127.0.0.1:1\"",
            "tcp = \"127.0.0.1:1\"\ntimout = \"1s\"",
        ));
        assert!(
            e.contains("line 8, column 1: unknown field `timout`"),
            "{e}"
        );
        assert!(e.ends_with("; did you mean `timeout`?"), "{e}");
        let e = err(&MINIMAL.replace("tcp = \"127.0.0.1:1\"", "tcp = \"127.0.0.1:1\"\nzzzzzz = 1"));
        assert!(!e.contains("did you mean"), "{e}");
        let e = err(&format!("{MINIMAL}[var]\nport = 1\n"));
        assert!(e.ends_with("did you mean `vars`?"), "{e}");
    }

    #[test]
    fn a_window_shorter_than_every_names_both_keys() {
        let e = err(&MINIMAL.replace(
            "tcp = \"127.0.0.1:1\"",
            "tcp = \"127.0.0.1:1\"\nevery = \"2s\"",
        ));
        assert!(
            e.ends_with("line 5, column 1: `steady_state.window` (1s) is shorter than probe `p`'s `every` (2s): the baseline would end before its first sample; make `window` at least `every`"),
            "{e}"
        );
        let equal = MINIMAL.replace(
            "tcp = \"127.0.0.1:1\"",
            "tcp = \"127.0.0.1:1\"\nevery = \"1s\"",
        );
        assert!(parse(Path::new("x.toml"), &equal).is_ok());
    }

    #[test]
    fn vars_are_substituted_before_validation_and_errors_keep_their_position() {
        let text = MINIMAL
            .replace(
                "title = \"t\"",
                "title = \"t\"\n[vars]\nwin = \"2 parsecs\"\nname = \"nothing-here\"",
            )
            .replace("window = \"1s\"", "window = \"${win}\"")
            .replace("name = \"nothing-here\" }", "name = \"${name}\" }");
        let e = err(&text);
        assert!(
            e.contains("line 7, column 10: `window`: invalid duration `2 parsecs`"),
            "{e}"
        );
        let overrides = vars::Overrides::new(&[], &[("win".to_owned(), "3s".to_owned())]).unwrap();
        let exp = parse_with(Path::new("x.toml"), &text, &overrides).unwrap();
        assert_eq!(exp.steady_state.window, Duration::from_secs(3));
        assert_eq!(
            exp.vars,
            ["name = \"nothing-here\" ([vars])", "win = \"3s\" (--var)"]
        );
        let plan = crate::plan::render(&exp, false);
        assert!(plan.contains("  win = \"3s\" (--var)"), "{plan}");
    }

    #[test]
    fn a_typed_var_is_a_number_where_the_key_takes_one_and_text_where_it_takes_text() {
        let text = MINIMAL
            .replace("title = \"t\"", "title = \"${port}\"\n[vars]\nport = 8080")
            .replace(
                "[steady_state]",
                "[[setup]]\nname = \"${port}\"\nrun = [\"python3\", \"-m\", \"http.server\", \"${port}\"]\n[steady_state]",
            )
            .replace("name = \"nothing-here\" }", "port = \"${port}\" }");
        let exp = parse(Path::new("x.toml"), &text).unwrap();
        assert_eq!(exp.title, "8080");
        assert_eq!(exp.setup[0].name, "8080");
        assert_eq!(exp.setup[0].argv[3], "8080");
        let wire = serde_json::to_value(&exp.faults[0].spec).unwrap();
        assert_eq!(wire["select"]["port"], 8080, "{wire}");
        // Text where a number is wanted is still refused, at the value.
        let e = err(&text.replace("port = 8080", "port = \"http\""));
        assert!(
            e.contains(
                "line 16, column 19: fault `k`: `port`: invalid type: string \"http\", expected u16"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = err(&MINIMAL.replace("window = \"1s\"", "window = \"2 seconds please\""));
        assert!(
            e.contains("line 4, column 10: `window`: invalid duration `2 seconds please`"),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "tcp = \"127.0.0.1:1\"",
            "tcp = \"127.0.0.1:1\"\nslo = { success = \"99\" }",
        ));
        assert!(e.contains("`success`: invalid percentage `99`"), "{e}");
    }

    #[test]
    fn gate_rules_are_read_and_bad_ones_name_line_column_and_key() {
        let with = |gate: &str| format!("{MINIMAL}[gate]\n{gate}\n");
        let e = parse(
            Path::new("x.toml"),
            &with("p99_during = \"2x p90 of last 20 runs\"\ntime_to_recover = \"1.5x median of last 10 passed\""),
        )
        .unwrap();
        let rules: Vec<String> = e
            .gate
            .iter()
            .map(|r| format!("{} = {}", r.metric.key(), r.rule))
            .collect();
        assert_eq!(
            rules,
            [
                "time_to_recover = 1.5x median of last 10 passed",
                "p99_during = 2x p90 of last 20 runs"
            ]
        );
        let line = MINIMAL.lines().count() + 2;
        let e = err(&with("time_to_recover = \"0x median of last 10 passed\""));
        assert!(
            e.contains(&format!("line {line}, column 19: `time_to_recover`: invalid gate rule `0x median of last 10 passed`: the factor must be above 0 and at most 100 (got 0)")),
            "{e}"
        );
        let e = err(&with("p99_during = \"2x median of last 5000 passed\""));
        assert!(
            e.contains(&format!(
                "line {line}, column 14: `p99_during`: invalid gate rule"
            )),
            "{e}"
        );
        assert!(e.contains("must be 1 to 1000 (got 5000)"), "{e}");
        let e = err(&with("p95_during = \"2x median of last 10 passed\""));
        assert!(e.contains(&format!("line {line}, column 1")), "{e}");
        assert!(e.contains("p95_during"), "{e}");
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let e = err(&MINIMAL.replace("within = \"5s\"", "within = \"5 parsecs\""));
        assert!(e.contains("invalid duration `5 parsecs`"), "{e}");
        assert!(e.contains("line 13"), "{e}");
    }

    #[test]
    fn keys_of_another_kind_are_rejected_by_name() {
        let e = err(&MINIMAL.replace(
            "select = { name = \"nothing-here\" }",
            "select = { name = \"x\" }\nfill_to = \"90%\"",
        ));
        assert!(
            e.ends_with(
                "line 12, column 1: fault `k`: `fill_to` does not apply to kind `process-kill`"
            ),
            "the error points at the key: {e}"
        );
        let e = err(&MINIMAL.replace(
            "kind = \"process-kill\"",
            "kind = \"process-kill\"\nduration = \"5s\"",
        ));
        assert!(
            e.ends_with("line 11, column 1: fault `k`: `duration` does not apply to kind `process-kill` (a kill is instant)"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("kind = \"process-kill\"", "kind = \"process-kil\""));
        assert!(
            e.ends_with("line 10, column 8: fault `k`: `kind`: unknown kind `process-kil`; expected one of process-kill, process-pause, disk-fill, latency, network-loss, partition, bandwidth, cpu-stress, memory-stress, container-kill, container-pause, command, http; did you mean `process-kill`?"),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "kind = \"process-kill\"",
            "kind = \"latency\"\nbackend = \"tc\"\nduration = \"1s\"",
        ));
        assert!(
            e.contains("line 11, column 11: fault `k`: unknown `backend` `tc`"),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "kind = \"process-kill\"",
            "kind = \"process-pause\"\nduration = \"1 fortnight\"",
        ));
        assert!(
            e.contains("line 11, column 12: fault `k`: `duration`: invalid duration `1 fortnight`"),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "select = { name = \"nothing-here\" }",
            "select = { name = \"x\", pidd = 3 }",
        ));
        assert!(
            e.contains("line 11, column 24: fault `k`: unknown field `pidd`"),
            "{e}"
        );
        assert!(e.ends_with("; did you mean `pid`?"), "{e}");
        let e = err(&format!("{MINIMAL}[[fault]]\nkind = \"process-kill\"\n"));
        assert!(e.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn a_non_ascii_character_before_an_equals_sign_does_not_panic() {
        let e = err(&format!("{MINIMAL}x = [\"é=\", 1x]\n"));
        assert!(e.starts_with("x.toml: line 14, column 12: "), "{e}");
        let e = err(&format!("{MINIMAL}\"café\" = 1x\n"));
        assert!(e.starts_with("x.toml: line 14, column 10: "), "{e}");
        let e = err(&MINIMAL.replace("window = \"1s\"", "window = \"1é\""));
        assert!(e.contains("`window`: invalid duration `1é`"), "{e}");
    }

    #[test]
    fn an_at_or_duration_beyond_a_day_is_refused_so_plan_cannot_overflow() {
        let e = err(&MINIMAL.replace(
            "kind = \"process-kill\"",
            "kind = \"process-kill\"\nat = \"18446744073709551615s\"",
        ));
        assert!(
            e.contains("line 11, column 1: fault `k`: `at` must be at most 1day"),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "kind = \"process-kill\"",
            "kind = \"process-pause\"\nduration = \"18446744073709551615s\"",
        ));
        assert!(
            e.contains("fault `k`: `duration` must be at most 1day"),
            "{e}"
        );
        let longest = MINIMAL.replace(
            "kind = \"process-kill\"",
            "kind = \"process-pause\"\nat = \"1day\"\nduration = \"1day\"",
        );
        let e = parse(Path::new("x.toml"), &longest).unwrap();
        assert_eq!(e.method_length(), Duration::from_secs(2 * 86_400));
        let plan = crate::plan::render(&e, false);
        assert!(plan.contains("2days"), "{plan}");
    }

    #[test]
    fn cpu_stress_without_workers_leaves_the_count_to_the_agent() {
        let text = MINIMAL.replace(
            "kind = \"process-kill\"\nselect = { name = \"nothing-here\" }",
            "kind = \"cpu-stress\"\nduration = \"1s\"",
        );
        let e = parse(Path::new("x.toml"), &text).unwrap();
        let wire = serde_json::to_value(&e.faults[0].spec).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"kind": "cpu-stress", "workers": null, "load": 1.0}),
            "the coordinator's CPU count is not put on the wire"
        );
    }

    #[test]
    fn pid_one_is_refused_at_validation() {
        let e = err(&MINIMAL.replace("name = \"nothing-here\"", "pid = 1"));
        assert!(e.contains("refusing to target pid 1"), "{e}");
        let e = err(&MINIMAL.replace("name = \"nothing-here\"", "pid = 0"));
        assert!(
            e.contains("`pid` must be a process id above 1 (got 0)"),
            "{e}"
        );
    }

    #[test]
    fn pid_two_is_left_to_the_agent_which_knows_its_pid_namespace() {
        // On a host pid 2 is kthreadd (refused by the agent as a kernel thread); in a container's
        // pid namespace it is often the application itself.
        assert!(
            parse(
                Path::new("x.toml"),
                &MINIMAL.replace("name = \"nothing-here\"", "pid = 2")
            )
            .is_ok()
        );
    }

    #[test]
    fn persistent_faults_need_a_duration() {
        let text = MINIMAL.replace("kind = \"process-kill\"", "kind = \"process-pause\"");
        assert!(err(&text).contains("needs a `duration`"));
    }

    #[test]
    fn unknown_target_groups_and_probes_are_named() {
        let e = err(&MINIMAL.replace(
            "kind = \"process-kill\"",
            "kind = \"process-kill\"\non = \"web\"",
        ));
        assert!(e.contains("unknown target group `web`"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[[abort]]\nprobe = \"nope\"\nwhen = {{ success_below = \"50%\", over = \"1s\" }}\n"
        ));
        assert!(e.contains("unknown probe `nope`"), "{e}");
    }

    #[test]
    fn prometheus_probes_take_one_threshold() {
        let probe = "tcp = \"127.0.0.1:1\"";
        let prom = "prometheus = { url = \"http://127.0.0.1:9090\", query = \"up\", below = 1 }";
        let e = parse(Path::new("x.toml"), &MINIMAL.replace(probe, prom)).unwrap();
        assert!(matches!(
            e.steady_state.probes[0].check,
            Check::Prometheus {
                threshold: Threshold::Below(_),
                ..
            }
        ));
        let two = prom.replace("below = 1", "below = 1, above = 0");
        let e = err(&MINIMAL.replace(probe, &two));
        assert!(
            e.contains("exactly one of `below`, `above` or `equals`"),
            "{e}"
        );
        assert!(
            e.contains("line 5"),
            "the error points at the probe table: {e}"
        );
        let typo = prom.replace("below", "bellow");
        assert!(err(&MINIMAL.replace(probe, &typo)).contains("unknown field `bellow`"));
    }

    #[test]
    fn saturation_needs_a_probe_that_reads_a_number() {
        let e = err(&MINIMAL.replace(
            "tcp = \"127.0.0.1:1\"",
            "tcp = \"127.0.0.1:1\"\nsignal = \"saturation\"",
        ));
        assert!(e.contains("a saturation signal needs a number"), "{e}");
        let e = err(&MINIMAL.replace(
            "tcp = \"127.0.0.1:1\"",
            "tcp = \"127.0.0.1:1\"\nsignal = \"speed\"",
        ));
        assert!(e.contains("unknown variant `speed`"), "{e}");
        let ok = MINIMAL.replace(
            "tcp = \"127.0.0.1:1\"",
            "command = [\"echo\", \"1\"]\nvalue = true\nsignal = \"saturation\"",
        );
        assert!(parse(Path::new("x.toml"), &ok).is_ok());
    }

    #[test]
    fn error_budget_targets_leave_room_for_errors() {
        let budget = "[slo_budget]\nprometheus = \"http://p:9090\"\ntarget = \"99.9%\"\ngood = \"g\"\ntotal = \"t\"\nmin_remaining = \"10%\"\n";
        let e = parse(Path::new("x.toml"), &format!("{MINIMAL}{budget}")).unwrap();
        let b = e.budget.unwrap();
        assert!((b.target - 0.999).abs() < 1e-12 && (b.min_remaining - 0.1).abs() < 1e-12);
        let e = err(&format!("{MINIMAL}{}", budget.replace("99.9%", "100%")));
        assert!(
            e.contains("`target` must be above 0% and below 100%"),
            "{e}"
        );
    }
}
