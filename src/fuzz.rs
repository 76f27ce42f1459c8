//! Owns `faultline fuzz` (hidden): a seeded mutation fuzzer on the stable toolchain for every input
//! the program reads from outside. Panics are caught, each panicking input is saved to a crash
//! directory and shrunk, and the command fails when any was found. The same seed gives the same
//! inputs, so a reported panic is reproduced with `--seed` and the iteration count.
//!
//! Without coverage instrumentation (cargo-fuzz needs nightly), what a target answered stands in
//! for coverage: an input whose outcome (its error message with numbers and quoted values blanked
//! out) has not been seen before joins the corpus, and the keys and variants error messages list
//! join the dictionary, so mutations reach past the syntax into the validation.

mod mutate;
mod targets;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use mutate::Mutator;
use targets::Target;
pub(crate) use targets::TargetName;

/// The corpus stops growing here; past it, new outcomes are only counted.
const MAX_CORPUS: usize = 4096;
/// Inputs kept per class of outcome (see [`class_of`]), so one message that quotes the input
/// unescaped (a path with spaces in it) cannot fill the corpus with variations of one input.
const PER_CLASS: usize = 32;
/// Inputs saved per distinct panic: enough to see its variety, not thousands of the same bug.
const SAVED_PER_PANIC: usize = 10;
/// Executions spent shrinking each distinct panic's first input.
const SHRINK_BUDGET: usize = 4000;

pub(crate) struct Settings {
    pub(crate) target: TargetName,
    /// Stop after this long (the default is 60 s when neither limit is given).
    pub(crate) seconds: Option<u64>,
    /// Stop after this many mutated inputs.
    pub(crate) iterations: Option<u64>,
    pub(crate) seed: u64,
    /// Extra seeds; inputs with new outcomes are written back to it.
    pub(crate) corpus: Option<PathBuf>,
    /// Panicking inputs go to `CRASH_DIR/TARGET/`.
    pub(crate) crash_dir: PathBuf,
}

/// One distinct panic (by where it happened) and the inputs that caused it.
pub(crate) struct Panic {
    pub(crate) location: String,
    pub(crate) message: String,
    pub(crate) count: u64,
    /// The first input, shrunk while it panics at the same place.
    pub(crate) smallest: Vec<u8>,
    pub(crate) files: Vec<PathBuf>,
}

pub(crate) struct Summary {
    pub(crate) target: TargetName,
    pub(crate) seed: u64,
    pub(crate) executions: u64,
    pub(crate) elapsed: Duration,
    pub(crate) seeds: usize,
    pub(crate) corpus: usize,
    pub(crate) outcomes: usize,
    pub(crate) dictionary: usize,
    pub(crate) panics: Vec<Panic>,
}

impl Summary {
    pub(crate) fn panic_count(&self) -> u64 {
        self.panics.iter().map(|p| p.count).sum()
    }

    /// What `faultline fuzz` prints; `scripts/fuzz.sh` reads the first line.
    pub(crate) fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mut out = format!(
            "fuzz {}: {} executions in {secs:.1} s ({:.0} exec/s), {} panics ({} distinct), corpus {} ({} seeds), {} outcomes, {} tokens, seed {}\n",
            self.target.as_str(),
            self.executions,
            self.executions as f64 / secs.max(1e-9),
            self.panic_count(),
            self.panics.len(),
            self.corpus,
            self.seeds,
            self.outcomes,
            self.dictionary,
            self.seed,
        );
        for p in &self.panics {
            let _ = writeln!(
                out,
                "panic at {}: {} ({} input(s))",
                p.location, p.message, p.count
            );
            let _ = writeln!(
                out,
                "  smallest input ({} bytes): {:?}",
                p.smallest.len(),
                String::from_utf8_lossy(&p.smallest)
            );
            for f in &p.files {
                let _ = writeln!(out, "  saved: {}", f.display());
            }
        }
        out
    }
}

thread_local! {
    /// Set while a target runs on this thread: its panics are recorded, not printed.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where and why the last caught panic happened.
    static CAUGHT: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Silences the default panic message for panics caught on a fuzzing thread, and records where
/// they happened; every other thread's panics go to the hook that was there before. Installed once
/// and never removed: replacing hooks per run would race between threads.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(Cell::get) {
                previous(info);
                return;
            }
            let location = info.location().map_or_else(
                || "unknown location".to_owned(),
                |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
            );
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            CAUGHT.with(|c| *c.borrow_mut() = Some((location, message)));
        }));
    });
}

/// Runs one input; `Err((location, message))` when it panicked.
fn guarded(target: &mut dyn Target, input: &[u8]) -> Result<String, (String, String)> {
    quiet_panics();
    CATCHING.with(|c| c.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| target.exec(input)));
    CATCHING.with(|c| c.set(false));
    result.map_err(|_| {
        target.reset();
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| ("unknown location".to_owned(), "no message".to_owned()))
    })
}

/// An outcome with what varies from input to input (numbers, quoted values) blanked out, so "a new
/// outcome" means a new kind of answer, not a new value in the same one.
fn shape(outcome: &str) -> String {
    let mut out = String::with_capacity(outcome.len());
    let mut quote: Option<char> = None;
    // The toml crate quotes the offending source line under a `|` gutter: that is the input
    // itself, not part of the answer.
    let gutter = |l: &str| {
        let l = l.trim_start();
        l.starts_with('|')
            || l.split_once(" |")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    };
    // Paths are printed unquoted: one path is as good as another.
    let text: Vec<String> = outcome
        .lines()
        .filter(|l| !gutter(l))
        .map(|l| {
            l.split(' ')
                .map(|w| if w.contains('/') { "PATH" } else { w })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut escaped = false;
    for c in text.join("\n").chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => {
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                quote = Some(c);
            }
            None if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            None => out.push(c),
        }
        if out.len() >= 200 {
            break;
        }
    }
    out
}

/// The class of an outcome's shape: the first words of its last line (where the toml crate and
/// serde say what went wrong; the lines before say where), each word that is not plain text (it
/// may be the input, quoted unescaped) as `~`.
fn class_of(shape: &str) -> String {
    shape
        .lines()
        .last()
        .unwrap_or("")
        .split(' ')
        .take(6)
        .map(|w| {
            let plain = w.trim_end_matches([':', ',']);
            if !plain.is_empty() && plain.chars().all(|c| c.is_ascii_alphabetic() || c == '-') {
                w
            } else {
                "~"
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn digest(input: &[u8]) -> String {
    format!("{:x}", Sha256::digest(input))[..16].to_owned()
}

/// Runs the fuzzer as `settings` says.
pub(crate) fn run(settings: &Settings) -> Result<Summary, String> {
    let mut target = targets::open(settings.target)?;
    run_target(&mut *target, settings)
}

fn run_target(target: &mut dyn Target, settings: &Settings) -> Result<Summary, String> {
    let started = Instant::now();
    let deadline = match (settings.seconds, settings.iterations) {
        (Some(s), _) => Some(started + Duration::from_secs(s)),
        (None, Some(_)) => None,
        (None, None) => Some(started + Duration::from_secs(60)),
    };
    let mut mutator = Mutator::new(settings.seed);
    let mut corpus = target.seeds();
    let seeds = corpus.len();
    if let Some(dir) = &settings.corpus {
        corpus.extend(read_corpus(dir)?);
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut seen = HashSet::new();
    let mut classes: HashMap<String, usize> = HashMap::new();
    let mut panics: BTreeMap<String, Panic> = BTreeMap::new();
    let crash_dir = settings.crash_dir.join(settings.target.as_str());
    let mut executions = 0_u64;
    let mut record = |input: &[u8],
                      result: Result<String, (String, String)>,
                      mutator: &mut Mutator,
                      seen: &mut HashSet<String>|
     -> Result<bool, String> {
        match result {
            Ok(outcome) => {
                mutator.learn_from_message(&outcome);
                let shape = shape(&outcome);
                let class = class_of(&shape);
                if !seen.insert(shape) {
                    return Ok(false);
                }
                let members = classes.entry(class).or_insert(0);
                *members += 1;
                Ok(*members <= PER_CLASS)
            }
            Err((location, message)) => {
                let p = panics.entry(location.clone()).or_insert_with(|| Panic {
                    location,
                    message,
                    count: 0,
                    smallest: input.to_vec(),
                    files: Vec::new(),
                });
                p.count += 1;
                if p.files.len() < SAVED_PER_PANIC {
                    std::fs::create_dir_all(&crash_dir).map_err(|e| {
                        format!(
                            "failed to create the crash directory {}: {e}",
                            crash_dir.display()
                        )
                    })?;
                    let file = crash_dir.join(format!("crash-{}", digest(input)));
                    std::fs::write(&file, input).map_err(|e| {
                        format!(
                            "failed to save a panicking input to {}: {e}",
                            file.display()
                        )
                    })?;
                    if !p.files.contains(&file) {
                        p.files.push(file);
                    }
                }
                Ok(false)
            }
        }
    };
    for input in corpus.clone() {
        mutator.learn_keys(&input);
        let result = guarded(target, &input);
        record(&input, result, &mut mutator, &mut seen)?;
    }
    let mut found = Vec::new();
    loop {
        if settings.iterations.is_some_and(|n| executions >= n)
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        let input = mutator.mutate(&corpus);
        executions += 1;
        let result = guarded(target, &input);
        if record(&input, result, &mut mutator, &mut seen)? && corpus.len() < MAX_CORPUS {
            corpus.push(input.clone());
            found.push(input);
        }
    }
    let elapsed = started.elapsed();
    if let Some(dir) = &settings.corpus {
        write_corpus(dir, &found)?;
    }
    let mut panics: Vec<Panic> = panics.into_values().collect();
    for p in &mut panics {
        p.smallest = shrink(target, &p.smallest, &p.location);
    }
    Ok(Summary {
        target: settings.target,
        seed: settings.seed,
        executions,
        elapsed,
        seeds,
        corpus: corpus.len(),
        outcomes: seen.len(),
        dictionary: mutator.dictionary_len(),
        panics,
    })
}

/// Cuts pieces out of a panicking input for as long as it still panics at the same place.
fn shrink(target: &mut dyn Target, input: &[u8], location: &str) -> Vec<u8> {
    let mut best = input.to_vec();
    let mut budget = SHRINK_BUDGET;
    // Whole lines first: they keep what is left readable.
    let mut line = 0;
    while budget > 0 {
        let starts: Vec<usize> = std::iter::once(0)
            .chain(
                best.iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .filter(|i| *i < best.len())
            .collect();
        let Some(&start) = starts.get(line) else {
            break;
        };
        let end = starts.get(line + 1).copied().unwrap_or(best.len());
        let mut candidate = best[..start].to_vec();
        candidate.extend_from_slice(&best[end..]);
        budget -= 1;
        match guarded(target, &candidate) {
            Err((l, _)) if l == location => best = candidate,
            _ => line += 1,
        }
    }
    let mut chunk = best.len().div_ceil(2).max(1);
    while chunk >= 1 && budget > 0 {
        let mut at = 0;
        let mut cut_any = false;
        while at < best.len() && budget > 0 {
            let end = (at + chunk).min(best.len());
            let mut candidate = best[..at].to_vec();
            candidate.extend_from_slice(&best[end..]);
            budget -= 1;
            match guarded(target, &candidate) {
                Err((l, _)) if l == location => {
                    best = candidate;
                    cut_any = true;
                }
                _ => at += chunk,
            }
        }
        if chunk == 1 && !cut_any {
            break;
        }
        chunk = (chunk / 2).max(1);
    }
    best
}

fn read_corpus(dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("failed to read the corpus {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("failed to read {}: {e}", p.display())))
        .collect()
}

fn write_corpus(dir: &Path, inputs: &[Vec<u8>]) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("failed to create the corpus {}: {e}", dir.display()))?;
    for input in inputs {
        let file = dir.join(digest(input));
        std::fs::write(&file, input)
            .map_err(|e| format!("failed to write {}: {e}", file.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parser with a bug: it panics on a `!` after an `=`, the way a slicing bug would.
    struct Buggy;

    impl Target for Buggy {
        fn seeds(&self) -> Vec<Vec<u8>> {
            vec![b"key = value\nother = 1\n".to_vec()]
        }

        fn exec(&mut self, input: &[u8]) -> String {
            let text = String::from_utf8_lossy(input);
            if let Some((_, value)) = text.split_once('=') {
                assert!(!value.trim_start().starts_with('!'), "a bang after `=`");
            }
            format!("{} lines", text.lines().count())
        }
    }

    fn settings(dir: &Path, seed: u64) -> Settings {
        Settings {
            target: TargetName::Experiment,
            seconds: None,
            iterations: Some(20_000),
            seed,
            corpus: None,
            crash_dir: dir.to_owned(),
        }
    }

    #[test]
    fn a_panicking_input_is_caught_saved_and_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let summary = run_target(&mut Buggy, &settings(dir.path(), 5)).unwrap();
        assert_eq!(summary.executions, 20_000);
        assert_eq!(summary.panics.len(), 1, "{}", summary.render());
        let p = &summary.panics[0];
        assert!(p.message.contains("a bang after `=`"), "{}", p.message);
        assert!(p.location.contains("src/fuzz.rs"), "{}", p.location);
        assert!(p.smallest.len() <= 3, "not shrunk: {:?}", p.smallest);
        let saved = std::fs::read(&p.files[0]).unwrap();
        assert!(Buggy.exec(b"x").contains("line"));
        let replay = guarded(&mut Buggy, &saved);
        assert!(replay.is_err(), "the saved input does not panic");
    }

    #[test]
    fn the_same_seed_finds_the_same_panics_after_the_same_executions() {
        let dir = tempfile::tempdir().unwrap();
        let a = run_target(&mut Buggy, &settings(dir.path(), 9)).unwrap();
        let b = run_target(&mut Buggy, &settings(dir.path(), 9)).unwrap();
        assert_eq!(a.panic_count(), b.panic_count());
        assert_eq!(a.outcomes, b.outcomes);
        assert_eq!(a.corpus, b.corpus);
    }

    #[test]
    fn outcomes_differ_by_kind_not_by_value() {
        assert_eq!(
            shape("unknown field `abc` at line 12"),
            shape("unknown field `xyz` at line 3")
        );
        assert_ne!(shape("unknown field `a`"), shape("missing field `a`"));
        assert_eq!(
            shape("TOML parse error at line 1, column 5\n  |\n1 | abc = é\n  |     ^\ninvalid key"),
            shape("TOML parse error at line 9, column 1\n  |\n9 | x\n  | ^\ninvalid key"),
        );
        assert_eq!(
            class_of(&shape("unknown field `a`b``, expected `run_id`")),
            "unknown field ~ expected ~"
        );
        assert_eq!(
            shape("failed to read the token file DIR/certs/tokej: No such file"),
            shape("failed to read the token file DIR/ca: No such file")
        );
    }
}
