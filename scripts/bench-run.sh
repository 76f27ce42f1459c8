#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): what a whole `faultline run` costs beyond the waits
# its experiment asks for, and its peak memory.
#   ./scripts/bench-run.sh [RUNS=10]      (builds target/release/faultline unless FAULTLINE_BIN is set)
#   FAULTLINE_COMPARE=OTHER-BINARY ./scripts/bench-run.sh    also runs another build (e.g. main's),
#   interleaved run by run with this one, so both meet the same machine load; prints both.
# The experiment: a 200 ms baseline of one TCP probe every 10 ms (against a listener this script
# starts), a 4 KiB disk-fill held 100 ms on the embedded agent, and recovery (one more window).
# Its deliberate waits are window + duration + window = 500 ms: no run can be shorter. The
# overhead is wall - 500 ms; the baseline in the same run is the cost of starting the binary at
# all (`faultline --version`, same measurement), printed beside it. Peak RSS is the run process's
# own, as GNU time reports it (its child's ru_maxrss); the embedded agent's watchdog is a separate
# process, not counted. Not wait4 on a child of this Python: Python starts children with vfork,
# and the kernel charges the high-water RSS of the address space an exec leaves to the new
# program, so every child of Python "peaked" at Python's own RSS (~14 MiB here, `/bin/true`
# included). time(1) forks from a small process; its floor (`/bin/true`) is printed beside.
# All runs share one state directory, as runs on one host do (the history database exists after
# a first, uncounted run), so the figure is a run's and not the creation of the database.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
[ -x /usr/bin/time ] || { echo "bench-run: needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 1; }
if [ -z "${FAULTLINE_BIN:-}" ]; then
  cargo build --release --quiet
  bin="$PWD/target/release/faultline"
else
  bin=$FAULTLINE_BIN
fi
work=$(mktemp -d)
listener=
cleanup() {
  if [ -n "$listener" ]; then kill "$listener" 2>/dev/null || true; wait "$listener" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
while True:
    s.accept()[0].close()
' "$port" &
listener=$!
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.02; done

mkdir -p "$work/fill"
cat > "$work/run.toml" <<TOML
title = "run overhead"
[steady_state]
window = "200ms"
[[steady_state.probe]]
name = "listener"
tcp = "127.0.0.1:$port"
every = "10ms"
[[fault]]
name = "fill"
kind = "disk-fill"
path = "$work/fill"
size = "4KiB"
duration = "100ms"
[recovery]
within = "5s"
TOML

python3 - "$bin" "$work" "$runs" "${FAULTLINE_COMPARE:-}" <<'PY'
import os, statistics, subprocess, sys, time
bin, work, runs, other = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
bins = [bin] + ([other] if other else [])
waits_ms = 200 + 100 + 200

rss_file = f"{work}/rss"
err_file = f"{work}/stderr"

def timed(args, state):
    env = dict(os.environ, FAULTLINE_STATE_DIR=state)
    # -q: time(1) prints no note of its own when the command exits non-zero. stderr goes to a
    # file, not a pipe: the run's watchdog inherits it and outlives the run by up to a poll
    # period, and reading a pipe to its end would wait for the watchdog too.
    with open(err_file, "w+b") as err:
        t0 = time.perf_counter()
        code = subprocess.call(["/usr/bin/time", "-q", "-f", "%M", "-o", rss_file] + args,
                               stdout=subprocess.DEVNULL, stderr=err, env=env)
        wall = (time.perf_counter() - t0) * 1000
        err.seek(0)
        text = err.read().decode(errors="replace")
    with open(rss_file) as f:
        maxrss = int(f.read().split()[-1])
    return wall, maxrss, code, text

floor_runs = [timed(["/bin/true"], f"{work}/state-floor") for _ in range(5)]
floor = (statistics.median(w for w, *_ in floor_runs), statistics.median(r for _, r, *_ in floor_runs))

start = {b: [] for b in bins}
run = {b: [] for b in bins}
for i in range(runs + 1):
    for k, b in enumerate(bins):
        state = f"{work}/state-{k}"
        start[b].append(timed([b, "--version"], state))
        w, rss, code, err = timed([b, "run", f"{work}/run.toml", "--quiet",
                                   "--report-json", f"{work}/report.json"], state)
        if code != 0:
            sys.exit(f"run {i} of {b} exited {code} (expected 0, a passed run):\n{err}")
        if i > 0:
            run[b].append((w, rss))

med = statistics.median
for b in bins:
    start_ms = med(w for w, *_ in start[b])
    start_rss = med(r for _, r, *_ in start[b])
    walls = [w for w, _ in run[b]]
    over = [w - waits_ms for w in walls]
    rss = [r for _, r in run[b]]
    print(f"whole run, {runs} runs ({b}); deliberate waits {waits_ms} ms (window + fault + window):")
    print(f"  wall:            median {med(walls):7.1f} ms  min {min(walls):7.1f} ms")
    print(f"  run overhead:    median {med(over):7.1f} ms  min {min(over):7.1f} ms  (wall - {waits_ms} ms)")
    print(f"  peak RSS:        median {med(rss) / 1024:7.1f} MiB  max {max(rss) / 1024:7.1f} MiB")
    print(f"  baseline, same run: `faultline --version`: median {start_ms:.1f} ms, peak RSS {start_rss / 1024:.1f} MiB")
    print(f"  floor of the measurement (`/bin/true` under time(1)): {floor[0]:.1f} ms, peak RSS {floor[1] / 1024:.1f} MiB")
    print(f"  overhead beyond starting the binary: median {med(over) - start_ms:.1f} ms; "
          f"overhead / start-up = {med(over) / start_ms:.1f}x; peak RSS / start-up = {med(rss) / start_rss:.1f}x")
if other:
    o = [med(w for w, _ in run[b]) - waits_ms for b in bins]
    print(f"run overhead, this build / the other: {o[0] / o[1]:.2f}")
PY
