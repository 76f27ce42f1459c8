#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): how fast the coordinator's dashboard, API and
# /metrics answer with N runs in the history (default 10 000). One real run is made through the
# API, its row (with its real JSON report) is copied N-1 times over 10 titles and 5 schedules,
# then each page is fetched 9 times; min / median / max of curl's time_total and the page size.
#   ./scripts/bench-dashboard.sh [N]
# Uses target/debug/faultline (built if needed) unless FAULTLINE_BIN names another binary.
# Needs curl and python3 (sqlite3 module).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
if [ -z "${FAULTLINE_BIN:-}" ]; then
  cargo build --quiet
  bin="$PWD/target/debug/faultline"
else
  bin=$FAULTLINE_BIN
fi
work=$(mktemp -d)
coordinator=
victim=
cleanup() {
  if [ -n "$coordinator" ]; then kill -TERM "$coordinator" 2>/dev/null || true; wait "$coordinator" 2>/dev/null || true; fi
  if [ -n "$victim" ]; then kill "$victim" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sleep 600 & victim=$!
echo "bench-token-0123456789abcdef" > "$work/token"
cat > "$work/pause.toml" <<T
title = "pause bench"
[steady_state]
window = "300ms"
[[steady_state.probe]]
name = "always"
command = ["true"]
every = "100ms"
[[fault]]
name = "pause"
kind = "process-pause"
select = { pid = $victim }
duration = "300ms"
[recovery]
within = "5s"
T
cat > "$work/gameday.toml" <<T
[coordinator]
state_dir = "state"
name = "bench"
listen = "127.0.0.1:$port"
token_file = "token"
[[schedule]]
name = "nightly"
experiments = ["pause.toml"]
cron = "0 0 1 1 *"
T
start() {
  "$bin" coordinator "$work/gameday.toml" 2>>"$work/coordinator.log" &
  coordinator=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/api/v1/schedules" && return; sleep 0.1; done
  echo "the coordinator did not answer; its log:" >&2; cat "$work/coordinator.log" >&2; exit 1
}
stop() { kill -TERM "$coordinator"; wait "$coordinator" || true; coordinator=; }
start
curl -sf -o /dev/null -X POST -H "Authorization: Bearer $(cat "$work/token")" "http://127.0.0.1:$port/api/v1/schedules/nightly/run"
for _ in $(seq 1 120); do
  done_runs=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from runs where ended_at_us is not null").fetchone()[0])' "$work/state/history.db" 2>/dev/null || echo 0)
  [ "$done_runs" = 1 ] && break
  sleep 0.5
done
stop
python3 - "$work/state/history.db" "$n" <<'P'
import random, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
cur = c.execute("select * from runs")
cols = [d[0] for d in cur.description]
r = dict(zip(cols, cur.fetchone()))
random.seed(1)
rows = []
for i in range(int(sys.argv[2]) - 1):
    d = dict(r)
    d["run_id"] = f"bench-{i:05d}"
    d["title"] = f"bench title {i % 10}" if i % 10 else "pause bench"
    d["schedule"] = f"s{i % 5}"
    d["started_at_us"] = r["started_at_us"] - (int(sys.argv[2]) - i) * 60_000_000
    d["ended_at_us"] = d["started_at_us"] + 3_000_000
    d["fire_at_us"] = d["started_at_us"]
    v = random.choice(["passed"] * 8 + ["failed", "error"])
    d["verdict"] = v
    d["time_to_recover_us"] = int(random.uniform(0.2, 3) * 1e6) if v != "error" else None
    rows.append(tuple(d[k] for k in cols))
c.executemany(f"insert into runs ({','.join(cols)}) values ({','.join('?' * len(cols))})", rows)
c.commit()
print(f"history: {c.execute('select count(*) from runs').fetchone()[0]} runs, report of {len(r['report_json'] or '')} bytes each ({sys.argv[1]})")
P
start
timed() { for _ in $(seq 1 9); do curl -s -o /dev/null -w "%{time_total}\n" "$1"; done | sort -n | sed -n '1p;5p;9p' | awk '{printf "%.1f ", $1 * 1000}'; }
echo "page (min / median / max ms over 9, bytes) with $bin:"
for u in / "/experiments/pause%20bench" /api/v1/runs "/api/v1/runs?verdict=failed&last=10" /metrics /runs/bench-00042; do
  printf '  %-40s %s ms  %s bytes\n' "$u" "$(timed "http://127.0.0.1:$port$u")" "$(curl -s "http://127.0.0.1:$port$u" | wc -c)"
done
