//! Owns the agent's audit log: one JSON line per request, written by a dedicated thread fed by a
//! bounded queue (a slow or full disk never blocks a request), with every field cut to a short,
//! sanitised excerpt, refused (401) requests rate-limited per peer address, and the file rotated
//! at a size cap so that no peer can fill the disk that holds the journal.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

/// The live file is rotated (`audit.jsonl` -> `audit.jsonl.1` -> ... ) before it grows past this.
pub(crate) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept besides the live one; the oldest is deleted. With the live file, the audit
/// log never takes more than `(1 + KEPT_FILES) * MAX_FILE_BYTES` (64 MiB).
pub(crate) const KEPT_FILES: usize = 3;
/// Lines waiting for the writer thread. When it falls this far behind, lines are dropped (and
/// counted, and the count is written) rather than making requests wait for the disk.
const QUEUE_LINES: usize = 4096;
/// The longest excerpt of a request (method and path) written to the log.
pub(crate) const MAX_REQUEST_CHARS: usize = 200;
/// The longest excerpt of an outcome, an error message or a client identity written to the log,
/// and of an error message sent in an answer.
pub(crate) const MAX_MESSAGE_CHARS: usize = 400;
/// Refused (401) requests logged per peer address per window; the rest are counted, and the
/// count is written when the window ends.
pub(crate) const REFUSALS_PER_WINDOW: u64 = 20;
pub(crate) const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Refused requests logged per window across all peer addresses together: without it, many
/// addresses each using their share could still flush the rotated history out within minutes.
/// Beyond it refusals are counted, and one line gives the count when the window ends.
pub(crate) const REFUSALS_PER_WINDOW_ALL: u64 = 200;
/// Peer addresses whose refusals are counted one by one; beyond this, all other addresses share
/// one count, so a spread-out flood cannot grow the table either.
const MAX_TRACKED_PEERS: usize = 1024;
/// How long a request waits for its audit line to be written before it is answered anyway.
pub(crate) const WRITE_WAIT: Duration = Duration::from_millis(250);
/// How long shutdown waits for the writer to write what is queued.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How often the writer thread writes the counts of windows that have ended.
const TICK: Duration = Duration::from_secs(1);

/// At most `max_chars` characters of `text`, control characters (newlines, escapes) replaced by
/// spaces, and `…` marking a cut: what of a message or request may reach a log or an answer.
pub(crate) fn excerpt(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut chars = text.chars();
    for c in chars.by_ref().take(max_chars) {
        out.push(if c.is_control() { ' ' } else { c });
    }
    if chars.next().is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// A line on its way to the writer, with whom to tell once it is written (or failed).
struct Queued {
    line: Line,
    written: Option<oneshot::Sender<()>>,
}

/// Resolves once a queued line is written, or was dropped.
pub(crate) struct Written {
    done: Option<oneshot::Receiver<()>>,
    shared: Arc<Shared>,
}

impl Written {
    /// Waits (asynchronously, at most [`WRITE_WAIT`]) until the line is written, so that an
    /// answer normally leaves after its audit line. Once a wait has run out, the writer counts as
    /// stalled and nobody waits until it has caught up: a stuck disk costs one request 250 ms,
    /// not every request.
    pub(crate) async fn wait(self) {
        let Some(done) = self.done else { return };
        if self.shared.stalled.load(Ordering::SeqCst) {
            return;
        }
        if tokio::time::timeout(WRITE_WAIT, done).await.is_err() {
            self.shared.stalled.store(true, Ordering::SeqCst);
            tracing::warn!(
                "the audit log writer is more than {WRITE_WAIT:?} behind; answers no longer wait for it"
            );
        }
    }
}

#[derive(Serialize)]
struct Line {
    time: String,
    client: String,
    request: String,
    status: u16,
    outcome: String,
}

/// The handle requests write through. Cheap to call from async code: it never touches the disk.
pub(crate) struct Audit {
    queue: Mutex<Option<SyncSender<Queued>>>,
    shared: Arc<Shared>,
    /// Says when the writer thread is done.
    finished: Mutex<Option<mpsc::Receiver<()>>>,
}

/// What the request side and the writer thread both see.
struct Shared {
    /// Lines dropped since the writer last said so in the log.
    dropped: AtomicU64,
    /// Since the start, for `/metrics`.
    dropped_total: AtomicU64,
    suppressed_total: AtomicU64,
    refusals: Mutex<Refusals>,
    /// Lines queued and not yet written.
    queued: AtomicUsize,
    /// A request's wait ran out; cleared when the writer has written everything queued.
    stalled: AtomicBool,
}

impl Audit {
    /// Opens (or creates, mode 0600) the log at `path` and starts its writer thread.
    pub(crate) fn start(path: &Path) -> Result<Audit, String> {
        Audit::start_capped(path, MAX_FILE_BYTES)
    }

    /// [`Audit::start`] with a file size cap of `cap` bytes instead of [`MAX_FILE_BYTES`].
    fn start_capped(path: &Path, cap: u64) -> Result<Audit, String> {
        let writer = Writer::open(path, cap)?;
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            suppressed_total: AtomicU64::new(0),
            refusals: Mutex::new(Refusals::default()),
            queued: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let thread_shared = Arc::clone(&shared);
        let (finished, on_finish) = mpsc::channel();
        std::thread::Builder::new()
            .name("audit-log".to_owned())
            .spawn(move || {
                writer.run(&rx, &thread_shared);
                let _ = finished.send(());
            })
            .map_err(|e| format!("failed to start the audit log writer: {e}"))?;
        Ok(Audit {
            queue: Mutex::new(Some(tx)),
            shared,
            finished: Mutex::new(Some(on_finish)),
        })
    }

    /// Queues one line. Every field is cut to a sanitised excerpt here, so nothing a peer sends
    /// reaches the file in full.
    pub(crate) fn record(
        &self,
        client: &str,
        request: &str,
        status: u16,
        outcome: &str,
    ) -> Written {
        let line = Line {
            time: jiff::Timestamp::now().to_string(),
            client: excerpt(client, MAX_MESSAGE_CHARS),
            request: excerpt(request, MAX_REQUEST_CHARS),
            status,
            outcome: excerpt(outcome, MAX_MESSAGE_CHARS),
        };
        let queue = self.queue.lock().expect("audit queue lock");
        let (tx, rx) = oneshot::channel();
        let queued = Queued {
            line,
            written: Some(tx),
        };
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        let sent = match queue.as_ref() {
            Some(q) => match q.try_send(queued) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if sent {
            Written {
                done: Some(rx),
                shared: Arc::clone(&self.shared),
            }
        } else {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            self.shared.dropped_one();
            self.nothing_to_wait_for()
        }
    }

    /// Queues a refused request's line unless `peer` has had its share this window; then it is
    /// only counted, and the count is written when the window ends.
    pub(crate) fn record_refusal(
        &self,
        peer: Option<IpAddr>,
        client: &str,
        request: &str,
        status: u16,
        outcome: &str,
    ) -> Written {
        let admit = self
            .shared
            .refusals
            .lock()
            .expect("audit refusals lock")
            .admit(peer, Instant::now());
        if admit {
            self.record(client, request, status, outcome)
        } else {
            self.shared.suppressed_total.fetch_add(1, Ordering::Relaxed);
            self.nothing_to_wait_for()
        }
    }

    /// Lines dropped and refusals not logged one by one, since the start.
    pub(crate) fn figures(&self) -> (u64, u64) {
        (
            self.shared.dropped_total.load(Ordering::Relaxed),
            self.shared.suppressed_total.load(Ordering::Relaxed),
        )
    }

    /// Writes what is queued and the counts of suppressed refusals, and stops the writer thread.
    /// Blocks on the disk: call it off the async threads. Later lines are dropped.
    pub(crate) fn close(&self) {
        drop(self.queue.lock().expect("audit queue lock").take());
        if let Some(finished) = self.finished.lock().expect("audit writer lock").take() {
            // A writer stuck on a dead disk must not keep the agent from exiting.
            if finished.recv_timeout(CLOSE_WAIT).is_err() {
                eprintln!(
                    "error: the audit log writer did not finish within {CLOSE_WAIT:?}; {} line(s) are lost",
                    self.shared.queued.load(Ordering::SeqCst)
                );
            }
        }
    }

    fn nothing_to_wait_for(&self) -> Written {
        Written {
            done: None,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Shared {
    fn dropped_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.dropped_total.fetch_add(1, Ordering::Relaxed);
    }
}

/// Per-address windows of refused requests.
#[derive(Default)]
struct Refusals {
    peers: HashMap<Option<IpAddr>, Window>,
    /// All addresses together; its `suppressed` counts only what the per-address shares let pass.
    all: Option<Window>,
}

struct Window {
    start: Instant,
    logged: u64,
    suppressed: u64,
}

impl Refusals {
    /// Whether this refusal is logged. `None` stands for "an address not tracked one by one".
    fn admit(&mut self, peer: Option<IpAddr>, now: Instant) -> bool {
        let key = if self.peers.contains_key(&peer) || self.peers.len() < MAX_TRACKED_PEERS {
            peer
        } else {
            None
        };
        let window = self.peers.entry(key).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if window.logged >= REFUSALS_PER_WINDOW {
            window.suppressed += 1;
            return false;
        }
        let all = self.all.get_or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if all.logged >= REFUSALS_PER_WINDOW_ALL {
            all.suppressed += 1;
            return false;
        }
        all.logged += 1;
        window.logged += 1;
        true
    }

    /// Ends the window of all addresses if it is over (with `now = None`, whatever its age) and
    /// returns how many refusals it suppressed, if any.
    fn close_all(&mut self, now: Option<Instant>) -> Option<u64> {
        let w = self.all.as_ref()?;
        if now.is_some_and(|now| now.duration_since(w.start) < REFUSAL_WINDOW) {
            return None;
        }
        self.all.take().map(|w| w.suppressed).filter(|n| *n > 0)
    }

    /// Forgets the windows that ended before `now` (all of them with `now = None`) and returns the
    /// addresses whose refusals were suppressed, with their counts.
    fn close_windows(&mut self, now: Option<Instant>) -> Vec<(Option<IpAddr>, u64)> {
        let mut ended = Vec::new();
        self.peers.retain(|peer, w| {
            let over = now.is_none_or(|now| now.duration_since(w.start) >= REFUSAL_WINDOW);
            if over && w.suppressed > 0 {
                ended.push((*peer, w.suppressed));
            }
            !over
        });
        ended
    }
}

/// The writer thread's side: the open file, its size, and rotation.
struct Writer {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    cap: u64,
}

fn open_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Writer {
    fn open(path: &Path, cap: u64) -> Result<Writer, String> {
        let file = open_private(path)
            .map_err(|e| format!("failed to open the audit log {}: {e}", path.display()))?;
        let size = file.metadata().map_or(0, |m| m.len());
        Ok(Writer {
            path: path.to_owned(),
            file: Some(file),
            size,
            cap,
        })
    }

    fn run(mut self, rx: &mpsc::Receiver<Queued>, shared: &Shared) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(queued) => {
                    self.write(&queued.line, shared);
                    if let Some(written) = queued.written {
                        let _ = written.send(());
                    }
                    if shared.queued.fetch_sub(1, Ordering::SeqCst) == 1 {
                        shared.stalled.store(false, Ordering::SeqCst);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.account(shared, None);
                    return;
                }
            }
            self.account(shared, Some(Instant::now()));
        }
    }

    /// Writes the lines that account for what was not written line by line.
    fn account(&mut self, shared: &Shared, now: Option<Instant>) {
        let (ended, all) = {
            let mut refusals = shared.refusals.lock().expect("audit refusals lock");
            (refusals.close_windows(now), refusals.close_all(now))
        };
        if let Some(count) = all {
            self.write(
                &agent_line(format!(
                    "{count} more 401s suppressed (at most {REFUSALS_PER_WINDOW_ALL} per {} s are logged from all addresses together)",
                    REFUSAL_WINDOW.as_secs()
                )),
                shared,
            );
        }
        for (peer, count) in ended {
            let peer = peer.map_or_else(|| "other addresses".to_owned(), |p| p.to_string());
            self.write(
                &agent_line(format!(
                    "{count} more 401s from {peer} suppressed (at most {REFUSALS_PER_WINDOW} per address per {} s are logged)",
                    REFUSAL_WINDOW.as_secs()
                )),
                shared,
            );
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.write(
                &agent_line(format!(
                    "{dropped} audit lines dropped: the writer fell more than {QUEUE_LINES} lines behind, or could not write"
                )),
                shared,
            );
        }
    }

    fn write(&mut self, line: &Line, shared: &Shared) {
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        let len = text.len() as u64;
        if self.size > 0 && self.size + len > self.cap {
            if let Err(e) = self.rotate() {
                tracing::error!(
                    "failed to rotate the audit log {}: {e}",
                    self.path.display()
                );
            }
        }
        let written = match &mut self.file {
            Some(file) if self.size + len <= self.cap => file.write_all(text.as_bytes()),
            _ => Err(std::io::Error::other("the audit log is at its size cap")),
        };
        match written {
            Ok(()) => self.size += len,
            Err(e) => {
                shared.dropped_one();
                tracing::error!("failed to write the audit log {}: {e}", self.path.display());
            }
        }
    }

    /// `audit.jsonl.{N-1}` -> `.N` (the oldest is replaced), ..., `audit.jsonl` -> `.1`, then a
    /// fresh live file. On failure the live file stays closed, so the cap still holds.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..KEPT_FILES).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = Some(open_private(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn agent_line(outcome: String) -> Line {
    Line {
        time: jiff::Timestamp::now().to_string(),
        client: "agent".to_owned(),
        request: "audit".to_owned(),
        status: 0,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_is_short_and_has_no_control_characters() {
        assert_eq!(excerpt("plain", 10), "plain");
        assert_eq!(excerpt("exactly10!", 10), "exactly10!");
        assert_eq!(excerpt("eleven char", 10), "eleven ch…");
        assert_eq!(excerpt("a\nb\x1b[2Jc\u{85}", 20), "a b [2Jc ");
        assert_eq!(excerpt(&"é".repeat(1000), 5).chars().count(), 5);
    }

    #[test]
    fn refusals_beyond_the_share_of_a_window_are_counted_not_logged() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        let peer = Some("10.0.0.1".parse().unwrap());
        let logged = (0..100).filter(|_| r.admit(peer, t0)).count() as u64;
        assert_eq!(logged, REFUSALS_PER_WINDOW);
        assert!(
            r.close_windows(Some(t0 + Duration::from_secs(1)))
                .is_empty()
        );
        assert_eq!(
            r.close_windows(Some(t0 + REFUSAL_WINDOW)),
            vec![(peer, 100 - REFUSALS_PER_WINDOW)]
        );
        // A new window starts afresh.
        assert!(r.admit(peer, t0 + REFUSAL_WINDOW));
    }

    #[test]
    fn refusals_from_many_addresses_are_logged_at_most_the_global_share_per_window() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        // 600 addresses x 22 refusals, the flood a reviewer used to flush the rotated history.
        let mut logged = 0;
        for i in 0..600_u32 {
            for _ in 0..22 {
                if r.admit(Some(IpAddr::from((0x0a00_0000 + i).to_be_bytes())), t0) {
                    logged += 1;
                }
            }
        }
        assert_eq!(logged, REFUSALS_PER_WINDOW_ALL);
        assert_eq!(r.close_all(Some(t0 + Duration::from_secs(1))), None);
        let per_address: u64 = r
            .close_windows(Some(t0 + REFUSAL_WINDOW))
            .iter()
            .map(|(_, n)| n)
            .sum();
        let all = r.close_all(Some(t0 + REFUSAL_WINDOW)).unwrap();
        // Every refusal is either logged or counted exactly once.
        assert_eq!(logged + per_address + all, 600 * 22);
        assert!(r.admit(Some("10.0.0.1".parse().unwrap()), t0 + REFUSAL_WINDOW));
    }

    #[test]
    fn refusals_from_too_many_addresses_share_one_count() {
        let mut r = Refusals::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED_PEERS as u32 + 500) {
            r.admit(Some(IpAddr::from(i.to_be_bytes())), now);
            // Only the per-address table is under test here, not the share of all addresses.
            r.all = None;
        }
        assert_eq!(r.peers.len(), MAX_TRACKED_PEERS + 1);
        let shared: u64 = r
            .close_windows(None)
            .into_iter()
            .filter(|(p, _)| p.is_none())
            .map(|(_, n)| n)
            .sum();
        assert_eq!(shared, 500 - REFUSALS_PER_WINDOW);
    }

    #[tokio::test]
    async fn a_line_is_in_the_file_once_its_wait_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::start(&path).unwrap();
        for i in 0..50 {
            audit
                .record("client", &format!("GET /{i}"), 200, "")
                .wait()
                .await;
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(&format!("GET /{i}")), "{text}");
        }
        audit.close();
    }

    #[test]
    fn the_log_rotates_at_its_cap_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cap = 64 * 1024;
        let audit = Audit::start_capped(&path, cap).unwrap();
        // Lines of about 500 bytes: enough for the live file and every kept file to fill twice.
        let total = cap / 500 * (KEPT_FILES as u64 + 1) * 2;
        let outcome = "x".repeat(MAX_MESSAGE_CHARS);
        for i in 0..total {
            audit.record("agent", &format!("line {i}"), 200, &outcome);
        }
        audit.close();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "audit.jsonl",
                "audit.jsonl.1",
                "audit.jsonl.2",
                "audit.jsonl.3"
            ]
        );
        for name in &names {
            let meta = std::fs::metadata(dir.path().join(name)).unwrap();
            assert!(meta.len() <= cap, "{name}: {} bytes", meta.len());
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
                0o600,
                "{name}"
            );
        }
        // The newest lines are in the live file, the oldest kept ones in the last.
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.contains(&format!("line {}", total - 1)), "{newest}");
        assert!(newest.lines().all(|l| l.len() < 1024));
        let oldest = std::fs::read_to_string(dir.path().join("audit.jsonl.3")).unwrap();
        assert!(!oldest.contains(r#""line 0""#));
    }
}
