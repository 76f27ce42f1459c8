//! A real headless Chromium (Debian's `chromium`, installed by scripts/setup.sh) for the tests of
//! HTML pages: the DOM after rendering, what the page wrote to its console, and a PNG screenshot
//! kept under `target/artifacts/` for people to look at. Each load uses a fresh profile directory,
//! removed afterwards; a Chromium that outlives its deadline is killed with its process group.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, Proc, tempdir};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium starts and renders a small page in about a second; this bounds a loaded machine.
const DEADLINE: Duration = Duration::from_secs(90);

/// What Chromium saw of a page.
pub struct Loaded {
    /// The DOM after parsing and layout, as `--dump-dom` prints it.
    pub dom: String,
    /// Every console message. The pages under test run no script, so any message at all is a
    /// script error, a blocked load or a Content-Security-Policy violation: the robust check is
    /// that there are none, whatever level Chromium logs them at.
    pub console: Vec<String>,
}

/// Loads `page` (a file) and returns its rendered DOM and console messages.
pub fn load(page: &Path) -> Loaded {
    let (stdout, stderr) = chromium(page, &["--dump-dom", "--enable-logging=stderr", "--v=0"]);
    let console = stderr
        .lines()
        // Chromium writes console messages as `[pid:tid:time:INFO:CONSOLE:line] "text", source: url`.
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    Loaded {
        dom: stdout,
        console,
    }
}

/// Takes a 1400×2000 screenshot of `page` into `target/artifacts/NAME` and returns its path.
pub fn screenshot(page: &Path, name: &str) -> PathBuf {
    let dir = artifacts();
    std::fs::create_dir_all(&dir).expect("create target/artifacts");
    let png = dir.join(name);
    let _ = std::fs::remove_file(&png);
    let arg = format!("--screenshot={}", png.display());
    chromium(
        page,
        &[&arg, "--window-size=1400,2000", "--hide-scrollbars"],
    );
    assert!(
        png.metadata().is_ok_and(|m| m.len() > 0),
        "chromium wrote no screenshot to {}",
        png.display()
    );
    png
}

/// `target/artifacts`, next to the directory the binary under test was built in.
fn artifacts() -> PathBuf {
    Path::new(BIN)
        .ancestors()
        .nth(2)
        .expect("the binary lives in target/<profile>/")
        .join("artifacts")
}

/// Runs headless Chromium on `page` with `extra` arguments; returns its stdout and stderr.
fn chromium(page: &Path, extra: &[&str]) -> (String, String) {
    use std::os::unix::process::CommandExt;
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup.sh (Debian package chromium)"
    );
    let profile = tempdir();
    let out = profile.path().join("stdout");
    let err = profile.path().join("stderr");
    let page = std::fs::canonicalize(page).expect("the page exists");
    let mut command = Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            // Tests run as root, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("create chromium's stdout file"))
        .stderr(std::fs::File::create(&err).expect("create chromium's stderr file"))
        .process_group(0);
    // In a Proc, so Chromium and its helper processes are killed even when this test panics.
    let mut proc = Proc {
        child: command.spawn().expect("start chromium"),
    };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = proc.child.try_wait().expect("wait for chromium") {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "chromium did not finish within {DEADLINE:?}: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}): {stderr}");
    (
        std::fs::read_to_string(&out).expect("read chromium's stdout"),
        stderr,
    )
}
