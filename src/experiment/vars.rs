//! Owns `[vars]`, `[secrets]` and the `${…}` references in an experiment's string values.
//!
//! Substitution works on the parsed `DeTable`, before anything is deserialised: every string value
//! keeps its span, so an error in a substituted value (a bad duration, a bad port) is still reported
//! at its line and column, and an unresolved reference is reported where it was written.
//!
//! - `${NAME}` is a var: `--var NAME=VALUE` beats `--vars FILE` (the last file wins), which beats
//!   the `[vars]` default. A var's value may itself hold references (`url = "http://${host}/"`).
//! - `${env:NAME}` is an environment variable of the process that loads the experiment.
//! - `${secret:NAME}` is a `[secrets]` entry: never printed, see `secrets.rs`.
//! - `$${` is a literal `${`.
//!
//! A string that is exactly one `${NAME}` of an integer or boolean var becomes that integer or
//! boolean (`port = "${port}"`); `experiment.rs` turns it back into text where the key wants text
//! (`substitute` returns those spans, `back_to_text` undoes one). Elsewhere a var is its text. A var's type is its default's;
//! an override is converted to it (`--var port=8081` is the integer 8081 when `[vars]` has
//! `port = 8080`), and refused when it cannot be.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::experiment::closest;

/// A var or secret name: a letter or `_`, then letters, digits, `_` or `-`, at most this long.
pub(crate) const MAX_NAME: usize = 64;
/// An environment variable's name may be longer (it is not ours to choose).
const MAX_ENV_NAME: usize = 256;
/// At most this many vars (defaults, and overrides, each).
pub(crate) const MAX_VARS: usize = 256;
/// A var's value and a substituted string are at most this many bytes.
pub(crate) const MAX_VALUE: usize = 64 * 1024;
/// All substituted strings of one experiment together hold at most this many bytes: a 64 KiB var
/// used in thousands of strings must not blow a small file up into gigabytes.
const MAX_TOTAL: usize = 16 * 1024 * 1024;
/// A `--vars` file is read up to this many bytes.
const MAX_VARS_FILE: u64 = 1024 * 1024;

/// A var's value: what `[vars]`, `--vars` files and `--var` can hold.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Bool(_) => "a boolean",
        }
    }

    fn text(&self) -> Cow<'_, str> {
        match self {
            Value::Str(s) => Cow::Borrowed(s),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Bool(b) => Cow::Owned(b.to_string()),
        }
    }

    /// This value as a var of `want`'s type; `None` when it cannot be one.
    fn coerce(self, want: &Value) -> Option<Value> {
        match (want, self) {
            (Value::Str(_), v) => Some(Value::Str(v.text().into_owned())),
            (Value::Int(_), Value::Int(i)) => Some(Value::Int(i)),
            (Value::Int(_), Value::Str(s)) => s.trim().parse().ok().map(Value::Int),
            (Value::Bool(_), Value::Bool(b)) => Some(Value::Bool(b)),
            (Value::Bool(_), Value::Str(s)) => match s.trim() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Where an override came from, for messages and for the unused-var rule.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Origin {
    /// `--var NAME=VALUE` (or a game day's `vars`): unused is an error, it is surely a typo.
    Flag,
    /// A `--vars` file: one file per environment serves many experiments, so unused is fine.
    File(PathBuf),
    /// A game day's `[[schedule]]` `vars`: unused is an error, as for `--var`.
    Schedule(String),
}

/// Values given from outside the experiment file, by name; later ones replaced earlier ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct Overrides {
    entries: BTreeMap<String, (Value, Origin)>,
}

impl Overrides {
    /// `--vars` files (in order), then `--var` flags (in order): the last value of a name wins.
    pub(crate) fn new(files: &[PathBuf], flags: &[(String, String)]) -> Result<Overrides, String> {
        let mut entries = BTreeMap::new();
        for file in files {
            for (name, value) in read_vars_file(file)? {
                entries.insert(name, (value, Origin::File(file.clone())));
            }
        }
        for (name, value) in flags {
            check_name(name).map_err(|e| format!("--var {name}: {e}"))?;
            if value.len() > MAX_VALUE {
                return Err(format!(
                    "--var {name}: the value is longer than {MAX_VALUE} bytes"
                ));
            }
            entries.insert(name.clone(), (Value::Str(value.clone()), Origin::Flag));
        }
        if entries.len() > MAX_VARS {
            return Err(format!(
                "at most {MAX_VARS} vars can be given (got {})",
                entries.len()
            ));
        }
        Ok(Overrides { entries })
    }

    /// A game day schedule's `vars = { NAME = value }` (strings, integers, booleans).
    pub(crate) fn of_schedule(schedule: &str, table: &toml::Table) -> Result<Overrides, String> {
        if table.len() > MAX_VARS {
            return Err(format!("`vars` holds at most {MAX_VARS} vars"));
        }
        let mut entries = BTreeMap::new();
        for (name, value) in table {
            check_name(name).map_err(|e| format!("`vars`: {e}"))?;
            let value = match value {
                toml::Value::String(s) if s.len() <= MAX_VALUE => Value::Str(s.clone()),
                toml::Value::Integer(i) => Value::Int(*i),
                toml::Value::Boolean(b) => Value::Bool(*b),
                other => {
                    return Err(format!(
                        "var `{name}` must be a string (at most 64 KiB), an integer or a boolean (got {})",
                        other.type_str()
                    ));
                }
            };
            entries.insert(name.clone(), (value, Origin::Schedule(schedule.to_owned())));
        }
        Ok(Overrides { entries })
    }
}

/// `--var NAME=VALUE`, as clap's value parser.
pub(crate) fn parse_flag(s: &str) -> Result<(String, String), String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!("expected NAME=VALUE (got `{s}`)"));
    };
    check_name(name)?;
    Ok((name.to_owned(), value.to_owned()))
}

/// A problem with a var, a secret or a reference, at its place in the experiment when it has one.
#[derive(Debug)]
pub(crate) struct VarError {
    pub(crate) span: Option<Range<usize>>,
    pub(crate) message: String,
}

fn err<T>(span: Option<Range<usize>>, message: impl Into<String>) -> Result<T, VarError> {
    Err(VarError {
        span,
        message: message.into(),
    })
}

/// What a reference names.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ref<'a> {
    Var(&'a str),
    Env(&'a str),
    Secret(&'a str),
}

/// A string value cut into its literal text and its references.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    /// `raw` is the reference as written (`${port}`), to find it in the file.
    Ref {
        raw: &'a str,
        target: Ref<'a>,
    },
}

/// A malformed reference: `raw` is the text to point at.
#[derive(Debug, PartialEq)]
struct ScanError<'a> {
    raw: &'a str,
    message: String,
}

fn scan(s: &str) -> Result<Vec<Piece<'_>>, ScanError<'_>> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        let after = &rest[i..];
        if let Some(escaped) = after.strip_prefix("$${") {
            pieces.push(Piece::Text(&rest[..i]));
            pieces.push(Piece::Text("${"));
            rest = escaped;
        } else if after.starts_with("${") {
            pieces.push(Piece::Text(&rest[..i]));
            let Some(end) = after.find('}') else {
                return Err(ScanError {
                    raw: after,
                    message: "`${` is not closed by `}` (write `$${` for a literal `${`)"
                        .to_owned(),
                });
            };
            let raw = &after[..=end];
            let inner = &after[2..end];
            let target = if let Some(name) = inner.strip_prefix("env:") {
                check_env_name(name).map(|()| Ref::Env(name))
            } else if let Some(name) = inner.strip_prefix("secret:") {
                check_name(name).map(|()| Ref::Secret(name))
            } else {
                check_name(inner).map(|()| Ref::Var(inner))
            }
            .map_err(|e| ScanError {
                raw,
                message: format!(
                    "invalid reference `{raw}`: {e}; write `${{NAME}}`, `${{env:NAME}}` or `${{secret:NAME}}` (or `$${{` for a literal `${{`)"
                ),
            })?;
            pieces.push(Piece::Ref { raw, target });
            rest = &after[end + 1..];
        } else {
            pieces.push(Piece::Text(&rest[..=i]));
            rest = &after[1..];
        }
    }
    pieces.push(Piece::Text(rest));
    pieces.retain(|p| *p != Piece::Text(""));
    Ok(pieces)
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || name.len() > MAX_NAME
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "a name starts with a letter or `_` and holds letters, digits, `_` and `-`, at most {MAX_NAME} (got `{name}`)"
        ));
    }
    Ok(())
}

fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || name.len() > MAX_ENV_NAME
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "an environment variable's name starts with a letter or `_` and holds letters, digits and `_`, at most {MAX_ENV_NAME} (got `{name}`)"
        ));
    }
    Ok(())
}

/// Where a var's value came from.
#[derive(Clone, Debug)]
struct Def {
    value: Value,
    /// Its value's span in the experiment, for a `[vars]` default.
    span: Option<Range<usize>>,
    /// The default's value, when an override replaced it: the override takes its type.
    default: Option<Value>,
    origin: Option<Origin>,
}

impl Def {
    /// How a message names this var's definition.
    fn whence(&self, name: &str) -> String {
        match &self.origin {
            None => format!("var `{name}`"),
            Some(Origin::Flag) => format!("--var {name}"),
            Some(Origin::File(f)) => format!("var `{name}` (from {})", f.display()),
            Some(Origin::Schedule(s)) => format!("schedule `{s}`'s var `{name}`"),
        }
    }
}

/// Every var and secret of one experiment, resolved.
#[derive(Debug)]
pub(crate) struct Scope {
    vars: BTreeMap<String, Value>,
    /// The decimal text of each integer var: an integer put into the document borrows its text.
    ints: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    /// Where each var came from and each secret is read from, for `listing`.
    whence: BTreeMap<String, String>,
    /// `--var` names that no `[vars]` entry declares: each must be referenced, or it is a typo.
    /// (Their names, with how a message names them.)
    undeclared_flags: BTreeMap<String, String>,
    /// Bytes of substituted strings so far (`MAX_TOTAL`).
    grown: std::cell::Cell<usize>,
}

/// Resolution state: definitions, and what is resolved or being resolved.
struct Resolver<'a> {
    defs: &'a BTreeMap<String, Def>,
    secrets: &'a BTreeMap<String, String>,
    done: BTreeMap<String, Value>,
    /// Vars being resolved, outermost first: a name met again is a loop.
    stack: Vec<String>,
    used: BTreeSet<String>,
}

impl Scope {
    /// Takes `[vars]` and `[secrets]` out of `root`, reads every secret (registering it for
    /// redaction) and resolves every var against `overrides`.
    pub(crate) fn take(
        root: &mut DeTable<'_>,
        overrides: &Overrides,
    ) -> Result<(Scope, BTreeSet<String>), VarError> {
        let mut defs = BTreeMap::new();
        if let Some(table) = root.remove("vars") {
            let span = table.span();
            let DeValue::Table(table) = table.into_inner() else {
                return err(
                    Some(span),
                    "`vars` must be a table: `[vars]` then `name = \"value\"` lines",
                );
            };
            if table.len() > MAX_VARS {
                return err(
                    Some(span),
                    format!(
                        "`[vars]` holds at most {MAX_VARS} vars (got {})",
                        table.len()
                    ),
                );
            }
            for (key, value) in table {
                let name: &str = key.get_ref();
                check_name(name).or_else(|e| err(Some(key.span()), format!("`[vars]`: {e}")))?;
                let span = value.span();
                let value = plain_value(value.into_inner()).or_else(|got| {
                    err(
                        Some(span.clone()),
                        format!(
                            "var `{name}` must be a string, an integer or a boolean (got {got})"
                        ),
                    )
                })?;
                defs.insert(
                    name.to_owned(),
                    Def {
                        value,
                        span: Some(span),
                        default: None,
                        origin: None,
                    },
                );
            }
        }
        for (name, (value, origin)) in &overrides.entries {
            let default = defs.remove(name).map(|d| d.value);
            defs.insert(
                name.clone(),
                Def {
                    value: value.clone(),
                    span: None,
                    default,
                    origin: Some(origin.clone()),
                },
            );
        }
        let (secrets, secret_sources) = match root.remove("secrets") {
            None => (BTreeMap::new(), BTreeMap::new()),
            Some(table) => read_secrets(table)?,
        };
        let mut resolver = Resolver {
            defs: &defs,
            secrets: &secrets,
            done: BTreeMap::new(),
            stack: Vec::new(),
            used: BTreeSet::new(),
        };
        for name in defs.keys() {
            resolver.var(name)?;
        }
        let Resolver { done, used, .. } = resolver;
        let ints = done
            .iter()
            .filter_map(|(n, v)| match v {
                Value::Int(i) => Some((n.clone(), i.to_string())),
                _ => None,
            })
            .collect();
        let mut whence: BTreeMap<String, String> = defs
            .iter()
            .map(|(n, d)| {
                let from = match &d.origin {
                    None => "[vars]".to_owned(),
                    Some(Origin::Flag) => "--var".to_owned(),
                    Some(Origin::File(f)) => format!("--vars {}", f.display()),
                    Some(Origin::Schedule(s)) => format!("schedule `{s}`"),
                };
                (n.clone(), from)
            })
            .collect();
        for (name, from) in &secret_sources {
            whence.insert(format!("secret:{name}"), from.clone());
        }
        let undeclared_flags = defs
            .iter()
            .filter(|(_, d)| {
                matches!(d.origin, Some(Origin::Flag | Origin::Schedule(_))) && d.default.is_none()
            })
            .map(|(n, d)| (n.clone(), d.whence(n)))
            .collect();
        Ok((
            Scope {
                vars: done,
                ints,
                secrets,
                whence,
                undeclared_flags,
                grown: std::cell::Cell::new(0),
            },
            used,
        ))
    }

    /// One `name = value (where from)` line per var, then per secret (its value masked).
    pub(crate) fn listing(&self) -> Vec<String> {
        let from = |key: &str| self.whence.get(key).map_or("", String::as_str).to_owned();
        let vars = self.vars.iter().map(|(name, value)| {
            let shown = match value {
                Value::Str(s) => format!("{s:?}"),
                other => other.text().into_owned(),
            };
            format!("{name} = {shown} ({})", from(name))
        });
        let secrets = self.secrets.keys().map(|name| {
            format!(
                "secret:{name} = {} ({})",
                crate::secrets::MASK,
                from(&format!("secret:{name}"))
            )
        });
        vars.chain(secrets).collect()
    }

    /// Replaces every reference in every string value of `root`. `used` are the vars already
    /// referenced by other vars; a `--var` that nothing declares or references is an error.
    /// Returns the spans of the values that became an integer or a boolean.
    pub(crate) fn substitute<'r>(
        &'r self,
        root: &mut DeTable<'r>,
        text: &str,
        mut used: BTreeSet<String>,
    ) -> Result<Vec<Range<usize>>, VarError> {
        let mut typed = Vec::new();
        for (_, value) in root.iter_mut() {
            self.walk(value, text, &mut used, &mut typed)?;
        }
        for (name, whence) in &self.undeclared_flags {
            if !used.contains(name) {
                let known: Vec<&str> = used
                    .iter()
                    .map(String::as_str)
                    .chain(self.vars.keys().map(String::as_str))
                    .filter(|n| !self.undeclared_flags.contains_key(*n))
                    .collect();
                let hint = closest(name, known)
                    .map_or_else(String::new, |c| format!("; did you mean `{c}`?"));
                return err(
                    None,
                    format!(
                        "{whence}: the experiment neither declares `{name}` in `[vars]` nor uses `${{{name}}}`{hint}"
                    ),
                );
            }
        }
        Ok(typed)
    }

    fn walk<'r>(
        &'r self,
        value: &mut Spanned<DeValue<'r>>,
        text: &str,
        used: &mut BTreeSet<String>,
        typed: &mut Vec<Range<usize>>,
    ) -> Result<(), VarError> {
        let span = value.span();
        let replacement = match value.get_mut() {
            DeValue::String(s) => {
                if !s.contains('$') {
                    return Ok(());
                }
                let expanded = expand(s, &mut |r| self.lookup(r, used))
                    .or_else(|e| err(Some(locate(text, &span, e.raw)), e.message))?;
                match expanded {
                    Expanded::Var(name) if matches!(self.vars.get(name), Some(Value::Int(_))) => {
                        typed.push(span.clone());
                        let int = self.ints.get(name).map_or("0", String::as_str);
                        DeValue::parse(int).map(Spanned::into_inner).or_else(|_| {
                            err(Some(span), format!("var `{name}` is not an integer"))
                        })?
                    }
                    Expanded::Var(name) if matches!(self.vars.get(name), Some(Value::Bool(_))) => {
                        typed.push(span.clone());
                        DeValue::Boolean(self.vars.get(name) == Some(&Value::Bool(true)))
                    }
                    Expanded::Var(name) => DeValue::String(Cow::Owned(
                        self.vars
                            .get(name)
                            .map(Value::text)
                            .unwrap_or_default()
                            .into_owned(),
                    )),
                    Expanded::Text(t) => {
                        // The whole document's substituted text, bounded (counted per value).
                        self.grown.set(self.grown.get().saturating_add(t.len()));
                        if self.grown.get() > MAX_TOTAL {
                            return err(
                                Some(span),
                                format!(
                                    "the experiment's strings hold more than {MAX_TOTAL} bytes once their references are replaced"
                                ),
                            );
                        }
                        DeValue::String(Cow::Owned(t))
                    }
                }
            }
            DeValue::Array(items) => {
                for item in items.iter_mut() {
                    self.walk(item, text, used, typed)?;
                }
                return Ok(());
            }
            DeValue::Table(table) => {
                for (_, item) in table.iter_mut() {
                    self.walk(item, text, used, typed)?;
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        *value.get_mut() = replacement;
        Ok(())
    }

    fn lookup(&self, r: Ref<'_>, used: &mut BTreeSet<String>) -> Result<Value, String> {
        match r {
            Ref::Var(name) => {
                used.insert(name.to_owned());
                self.vars
                    .get(name)
                    .cloned()
                    .ok_or_else(|| unknown_var(name, self.vars.keys(), &self.secrets))
            }
            Ref::Env(name) => env(name),
            Ref::Secret(name) => secret(name, &self.secrets),
        }
    }
}

impl Resolver<'_> {
    fn var(&mut self, name: &str) -> Result<Value, VarError> {
        if let Some(v) = self.done.get(name) {
            return Ok(v.clone());
        }
        let defs = self.defs;
        let def = &defs[name];
        if let Some(at) = self.stack.iter().position(|n| n == name) {
            let mut chain = self.stack[at..].to_vec();
            chain.push(name.to_owned());
            return err(
                def.span.clone(),
                format!("vars refer to each other in a loop: {}", chain.join(" → ")),
            );
        }
        self.stack.push(name.to_owned());
        let value = match &def.value {
            Value::Str(template) => {
                let mut failure = None;
                let expanded = expand(template, &mut |r| match r {
                    Ref::Var(n) => {
                        self.used.insert(n.to_owned());
                        if !defs.contains_key(n) {
                            return Err(unknown_var(n, defs.keys(), self.secrets));
                        }
                        self.var(n).map_err(|e| {
                            let message = e.message.clone();
                            failure = Some(e);
                            message
                        })
                    }
                    Ref::Env(n) => env(n),
                    Ref::Secret(n) => secret(n, self.secrets),
                });
                if let Some(inner) = failure {
                    return Err(inner);
                }
                match expanded {
                    Ok(Expanded::Var(n)) => self.done[n].clone(),
                    Ok(Expanded::Text(t)) => Value::Str(t),
                    Err(e) => {
                        return err(
                            def.span.clone(),
                            format!("{}: {}", def.whence(name), e.message),
                        );
                    }
                }
            }
            v => v.clone(),
        };
        let value = match &def.default {
            None => value,
            Some(default) => {
                let got = value.text().into_owned();
                value.coerce(default).ok_or_else(|| VarError {
                    span: None,
                    message: format!(
                        "{}: `{name}` is {} (its default in `[vars]` is {}), so `{got}` cannot be its value",
                        def.whence(name),
                        default.type_name(),
                        default.text()
                    ),
                })?
            }
        };
        self.stack.pop();
        self.done.insert(name.to_owned(), value.clone());
        Ok(value)
    }
}

/// A string after substitution: exactly one var reference (it takes the var's type), or text.
#[derive(Debug, PartialEq)]
enum Expanded<'a> {
    Var(&'a str),
    Text(String),
}

/// Expands `s`, asking `lookup` for each reference's value. On failure, `raw` is the reference (or
/// malformed text) to point at.
fn expand<'s>(
    s: &'s str,
    lookup: &mut dyn FnMut(Ref<'s>) -> Result<Value, String>,
) -> Result<Expanded<'s>, ScanError<'s>> {
    let pieces = scan(s)?;
    if let [
        Piece::Ref {
            raw,
            target: Ref::Var(name),
        },
    ] = pieces.as_slice()
    {
        let (raw, name) = (*raw, *name);
        lookup(Ref::Var(name)).map_err(|message| ScanError { raw, message })?;
        return Ok(Expanded::Var(name));
    }
    let mut out = String::with_capacity(s.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref { raw, target } => {
                let value = lookup(target).map_err(|message| ScanError { raw, message })?;
                out.push_str(&value.text());
            }
        }
        if out.len() > MAX_VALUE {
            return Err(ScanError {
                raw: s,
                message: format!(
                    "the string is longer than {MAX_VALUE} bytes once its references are replaced"
                ),
            });
        }
    }
    Ok(Expanded::Text(out))
}

fn unknown_var<'a>(
    name: &str,
    known: impl Iterator<Item = &'a String>,
    secrets: &BTreeMap<String, String>,
) -> String {
    if secrets.contains_key(name) {
        return format!("`{name}` is a secret: write `${{secret:{name}}}`");
    }
    let hint = closest(name, known.map(String::as_str))
        .map_or_else(String::new, |c| format!("; did you mean `{c}`?"));
    format!("unknown var `{name}`: declare it in `[vars]` or give `--var {name}=VALUE`{hint}")
}

fn env(name: &str) -> Result<Value, String> {
    match std::env::var(name) {
        Ok(v) if v.len() > MAX_VALUE => Err(format!(
            "environment variable `{name}` is longer than {MAX_VALUE} bytes"
        )),
        Ok(v) => Ok(Value::Str(v)),
        Err(std::env::VarError::NotPresent) => {
            Err(format!("environment variable `{name}` is not set"))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable `{name}` is not valid UTF-8"))
        }
    }
}

fn secret(name: &str, secrets: &BTreeMap<String, String>) -> Result<Value, String> {
    secrets
        .get(name)
        .map(|v| Value::Str(v.clone()))
        .ok_or_else(|| {
            let hint = closest(name, secrets.keys().map(String::as_str))
                .map_or_else(String::new, |c| format!("; did you mean `{c}`?"));
            format!("unknown secret `{name}`: declare it in `[secrets]`{hint}")
        })
}

/// A TOML value as a var's value; `Err` names what it was instead.
fn plain_value(value: DeValue<'_>) -> Result<Value, &'static str> {
    match value {
        DeValue::String(s) if s.len() > MAX_VALUE => Err("a string longer than 64 KiB"),
        DeValue::String(s) => Ok(Value::Str(s.into_owned())),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(Value::Int)
            .map_err(|_| "an integer out of range"),
        DeValue::Boolean(b) => Ok(Value::Bool(b)),
        other => Err(other.type_str()),
    }
}

/// Secret values and where each was read from (`env VAR`, `file PATH`), by name.
type Secrets = (BTreeMap<String, String>, BTreeMap<String, String>);

/// `[secrets]`: each `NAME = { env = "VAR" }` or `NAME = { file = "PATH" }`, read now.
fn read_secrets(table: Spanned<DeValue<'_>>) -> Result<Secrets, VarError> {
    let span = table.span();
    let DeValue::Table(table) = table.into_inner() else {
        return err(
            Some(span),
            "`secrets` must be a table: `[secrets]` then `NAME = { env = \"VAR\" }` lines",
        );
    };
    if table.len() > MAX_VARS {
        return err(
            Some(span),
            format!("`[secrets]` holds at most {MAX_VARS} secrets"),
        );
    }
    let mut secrets = BTreeMap::new();
    let mut sources = BTreeMap::new();
    for (key, value) in table {
        let name: &str = key.get_ref();
        check_name(name).or_else(|e| err(Some(key.span()), format!("`[secrets]`: {e}")))?;
        let span = value.span();
        let shape = || {
            err(
                Some(span.clone()),
                format!(
                    "secret `{name}`: write `{name} = {{ env = \"VAR\" }}` or `{name} = {{ file = \"/run/secrets/{name}\" }}`"
                ),
            )
        };
        let DeValue::Table(source) = value.into_inner() else {
            return shape();
        };
        let mut entries = source.into_iter();
        let (Some((how, from)), None) = (entries.next(), entries.next()) else {
            return shape();
        };
        let DeValue::String(from) = from.into_inner() else {
            return shape();
        };
        let how_name: &str = how.get_ref();
        let value = match how_name {
            "env" => match std::env::var(&*from) {
                Ok(v) => v,
                Err(_) => {
                    return err(
                        Some(span),
                        format!(
                            "secret `{name}`: environment variable `{from}` is not set (or not UTF-8)"
                        ),
                    );
                }
            },
            "file" => read_secret_file(Path::new(&*from))
                .or_else(|e| err(Some(span.clone()), format!("secret `{name}`: {e}")))?,
            other => {
                let hint = closest(other, ["env", "file"])
                    .map_or_else(String::new, |c| format!("; did you mean `{c}`?"));
                return err(
                    Some(how.span()),
                    format!(
                        "secret `{name}`: unknown source `{other}`, expected `env` or `file`{hint}"
                    ),
                );
            }
        };
        if value.is_empty() {
            return err(Some(span), format!("secret `{name}` is empty"));
        }
        if value.chars().count() < crate::secrets::MIN_LEN {
            return err(
                Some(span),
                format!(
                    "secret `{name}` is shorter than {} characters: faultline masks secrets in every output, and masking one that short would garble them all",
                    crate::secrets::MIN_LEN
                ),
            );
        }
        crate::secrets::register(&value);
        secrets.insert(name.to_owned(), value);
        sources.insert(name.to_owned(), format!("{how_name} {from}"));
    }
    Ok((secrets, sources))
}

/// A secret file's text, bounded, without its trailing newline.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(crate::secrets::MAX_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > crate::secrets::MAX_LEN {
        return Err(format!(
            "{} is longer than {} bytes",
            path.display(),
            crate::secrets::MAX_LEN
        ));
    }
    let mut text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    while text.ends_with('\n') || text.ends_with('\r') {
        text.pop();
    }
    Ok(text)
}

/// A `--vars` file: a flat table of `NAME = value` (strings, integers, booleans).
fn read_vars_file(path: &Path) -> Result<Vec<(String, Value)>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read --vars {shown}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_VARS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read --vars {shown}: {e}"))?;
    if text.len() as u64 > MAX_VARS_FILE {
        return Err(format!(
            "--vars {shown} is longer than {MAX_VARS_FILE} bytes"
        ));
    }
    let at = |span: Range<usize>| {
        let (line, col) = crate::experiment::line_col(&text, span.start);
        format!("{shown}: line {line}, column {col}")
    };
    let table = DeTable::parse(&text).map_err(|e| {
        let place = e.span().map_or_else(|| shown.to_string(), &at);
        format!("{place}: {}", e.message().trim())
    })?;
    let mut vars = Vec::new();
    for (key, value) in table.into_inner() {
        let name: &str = key.get_ref();
        check_name(name).map_err(|e| format!("{}: {e}", at(key.span())))?;
        let span = value.span();
        let value = plain_value(value.into_inner()).map_err(|got| {
            format!(
                "{}: `{name}`: a --vars file is a flat table of strings, integers and booleans (got {got})",
                at(span)
            )
        })?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

/// Turns the integer or boolean at `span` (a typed var put there by `substitute`) back into its
/// text, for a key that wants text. Whether it found one.
pub(crate) fn back_to_text(table: &mut DeTable<'_>, span: &Range<usize>) -> bool {
    fn visit(value: &mut Spanned<DeValue<'_>>, span: &Range<usize>) -> bool {
        if value.span() == *span {
            let text = match value.get_ref() {
                DeValue::Integer(i) => i.as_str().to_owned(),
                DeValue::Boolean(b) => b.to_string(),
                _ => return false,
            };
            *value.get_mut() = DeValue::String(Cow::Owned(text));
            return true;
        }
        match value.get_mut() {
            DeValue::Array(items) => items.iter_mut().any(|v| visit(v, span)),
            DeValue::Table(t) => t.iter_mut().any(|(_, v)| visit(v, span)),
            _ => false,
        }
    }
    table.iter_mut().any(|(_, v)| visit(v, span))
}

/// Where `raw` (a reference as written) is inside the value at `span`: its own position when the
/// file holds it verbatim, else the value's start (an escaped `\u0024{…}`, say).
fn locate(text: &str, span: &Range<usize>, raw: &str) -> Range<usize> {
    text.get(span.clone())
        .and_then(|value| value.find(raw))
        .map_or(span.clone(), |i| {
            let start = span.start + i;
            start..start + raw.len()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope_of(doc: &str, overrides: &Overrides) -> Result<String, String> {
        let parsed = DeTable::parse(doc).map_err(|e| e.to_string())?;
        let mut root = parsed.into_inner();
        let place = |e: VarError| match e.span {
            Some(s) => {
                let (l, c) = crate::experiment::line_col(doc, s.start);
                format!("{l}:{c}: {}", e.message)
            }
            None => e.message,
        };
        let (scope, used) = Scope::take(&mut root, overrides).map_err(place)?;
        scope.substitute(&mut root, doc, used).map_err(place)?;
        let mut out: Vec<String> = root
            .iter()
            .map(|(k, v)| format!("{}={:?}", k.get_ref(), v.get_ref()))
            .collect();
        out.sort();
        Ok(out.join("\n"))
    }

    fn flags(list: &[(&str, &str)]) -> Overrides {
        let list: Vec<(String, String)> = list
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        Overrides::new(&[], &list).unwrap()
    }

    #[test]
    fn references_escapes_and_typed_whole_values() {
        let doc = "[vars]\nhost = \"h\"\nport = 8080\nurl = \"http://${host}:${port}/\"\non = true\n\
                   [t]\na = \"${url}x\"\nb = \"${port}\"\nc = \"$${port} costs $5\"\nd = [\"${on}\", \"-${on}\"]\n";
        let out = scope_of(doc, &Overrides::default()).unwrap();
        assert!(out.contains("String(\"http://h:8080/x\")"), "{out}");
        assert!(out.contains("\"b\""), "{out}");
        assert!(out.contains("Integer(DeInteger { inner: \"8080\""), "{out}");
        assert!(out.contains("String(\"${port} costs $5\")"), "{out}");
        assert!(out.contains("Boolean(true)"), "{out}");
        assert!(out.contains("String(\"-true\")"), "{out}");
        assert!(!out.contains("vars"), "[vars] is taken out: {out}");
    }

    #[test]
    fn overrides_win_and_take_the_defaults_type() {
        let doc = "[vars]\nport = 8080\n[t]\np = \"${port}\"\n";
        let out = scope_of(doc, &flags(&[("port", "8081")])).unwrap();
        assert!(out.contains("inner: \"8081\""), "{out}");
        let e = scope_of(doc, &flags(&[("port", "http")])).unwrap_err();
        assert_eq!(
            e,
            "--var port: `port` is an integer (its default in `[vars]` is 8080), so `http` cannot be its value"
        );
    }

    #[test]
    fn unknown_names_are_placed_and_get_a_suggestion() {
        let doc = "[vars]\nname = \"x\"\n[t]\na = \"hello ${nme}!\"\n";
        let e = scope_of(doc, &Overrides::default()).unwrap_err();
        assert_eq!(
            e,
            "4:12: unknown var `nme`: declare it in `[vars]` or give `--var nme=VALUE`; did you mean `name`?"
        );
        let e = scope_of("[t]\na = \"${bad name}\"\n", &Overrides::default()).unwrap_err();
        assert!(e.starts_with("2:6: invalid reference `${bad name}`"), "{e}");
        let e = scope_of("[t]\na = \"x ${open\"\n", &Overrides::default()).unwrap_err();
        assert!(e.starts_with("2:8: `${` is not closed"), "{e}");
        let e = scope_of("[t]\na = \"${${x}}\"\n", &Overrides::default()).unwrap_err();
        assert!(e.contains("invalid reference `${${x}`"), "{e}");
    }

    #[test]
    fn env_references_read_the_environment() {
        // PATH is set in every test environment; a name nobody sets is not.
        let path = std::env::var("PATH").unwrap();
        let out = scope_of("[t]\na = \"${env:PATH}\"\n", &Overrides::default()).unwrap();
        assert!(out.contains(&format!("{path:?}")), "{out}");
        let e = scope_of(
            "[t]\na = \"${env:FAULTLINE_SURELY_UNSET_9}\"\n",
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "2:6: environment variable `FAULTLINE_SURELY_UNSET_9` is not set"
        );
    }

    #[test]
    fn loops_between_vars_are_refused() {
        let e = scope_of(
            "[vars]\na = \"${b}\"\nb = \"x${a}\"\n",
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.contains("vars refer to each other in a loop: a → b → a"),
            "{e}"
        );
    }

    #[test]
    fn an_unused_flag_is_an_error_but_a_vars_file_entry_is_not() {
        let doc = "[vars]\nport = 1\n[t]\na = \"${port}\"\n";
        let e = scope_of(doc, &flags(&[("prot", "2")])).unwrap_err();
        assert!(
            e.contains("--var prot: the experiment neither declares"),
            "{e}"
        );
        assert!(e.ends_with("did you mean `port`?"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("staging.toml");
        std::fs::write(&file, "port = 2\nunrelated = \"x\"\n").unwrap();
        let o = Overrides::new(std::slice::from_ref(&file), &[]).unwrap();
        let out = scope_of(doc, &o).unwrap();
        assert!(out.contains("inner: \"2\""), "{out}");
        std::fs::write(&file, "port = 2\nnested = { a = 1 }\n").unwrap();
        let e = Overrides::new(&[file], &[]).unwrap_err();
        assert!(e.ends_with("line 2, column 10: `nested`: a --vars file is a flat table of strings, integers and booleans (got table)"), "{e}");
    }

    #[test]
    fn secrets_come_from_files_trimmed_and_short_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "tok-qzx-1234\n").unwrap();
        let doc = format!(
            "[secrets]\ntoken = {{ file = {:?} }}\n[t]\nh = \"Bearer ${{secret:token}}\"\nn = \"${{token}}\"\n",
            file.display().to_string()
        );
        let e = scope_of(&doc, &Overrides::default()).unwrap_err();
        assert!(
            e.contains("`token` is a secret: write `${secret:token}`"),
            "{e}"
        );
        let doc = doc.replace("n = \"${token}\"\n", "");
        let out = scope_of(&doc, &Overrides::default()).unwrap();
        assert!(out.contains("\"Bearer tok-qzx-1234\""), "{out}");
        assert_eq!(crate::secrets::redact("x tok-qzx-1234"), "x ***");
        std::fs::write(&file, "abc\n").unwrap();
        let e = scope_of(&doc, &Overrides::default()).unwrap_err();
        assert!(
            e.contains("secret `token` is shorter than 4 characters"),
            "{e}"
        );
        let e = scope_of(
            "[secrets]\nx = { env = \"FAULTLINE_SURELY_UNSET_9\" }\n",
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "2:5: secret `x`: environment variable `FAULTLINE_SURELY_UNSET_9` is not set (or not UTF-8)"
        );
    }

    #[test]
    fn substitution_cannot_blow_a_small_file_up() {
        let mut doc = format!("[vars]\nbig = \"{}\"\n[t]\n", "x".repeat(60_000));
        for i in 0..300 {
            doc.push_str(&format!("a{i} = \"${{big}}.\"\n"));
        }
        let e = scope_of(&doc, &Overrides::default()).unwrap_err();
        assert!(
            e.contains("more than 16777216 bytes once their references are replaced"),
            "{e}"
        );
        let e = scope_of(
            "[vars]\na = \"${b}${b}\"\nb = \"${c}${c}\"\nc = \"${d}${d}\"\nd = \"${e}${e}\"\ne = \"${f}${f}\"\nf = \"${g}${g}\"\ng = \"${h}${h}\"\nh = \"${i}${i}\"\ni = \"${j}${j}\"\nj = \"${k}${k}\"\nk = \"${l}${l}\"\nl = \"${m}${m}\"\nm = \"${n}${n}\"\nn = \"${o}${o}\"\no = \"${p}${p}\"\np = \"${q}${q}\"\nq = \"xxxxxxxxxxxxxxxx\"\n",
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.contains("longer than 65536 bytes"), "{e}");
    }

    #[test]
    fn flags_are_parsed_with_bounded_names() {
        assert_eq!(
            parse_flag("port=80=x").unwrap(),
            ("port".to_owned(), "80=x".to_owned())
        );
        assert!(
            parse_flag("port")
                .unwrap_err()
                .contains("expected NAME=VALUE")
        );
        assert!(parse_flag("9x=1").is_err());
        assert!(parse_flag(&format!("{}=1", "a".repeat(65))).is_err());
    }
}
