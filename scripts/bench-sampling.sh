#!/usr/bin/env bash
# The overhead of sampling in a whole run: N TCP probes every 10 ms (N×100 samples/s asked) for
# a 5 s baseline, a 5 s fault (pausing a `sleep` fixture) and a 5 s recovery window, measured
# with /usr/bin/time -v. The probed listener is a separate Python process, so its CPU is not
# counted. Prints faultline's CPU, peak memory and the samples the run kept.
# Usage: scripts/bench-sampling.sh [N=50] [faultline binary=target/release/faultline]
set -euo pipefail
n=${1:-50}
bin=${2:-target/release/faultline}
work=$(mktemp -d)
trap 'kill "$listener" 2>/dev/null; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
while True:
    s.accept()[0].close()
' "$port" &
listener=$!

{
  echo "title = \"sampling overhead: $n TCP probes every 10 ms\""
  echo '[[setup]]'
  echo 'name = "sleeper"'
  echo "run = [\"sleep\", \"$port$n\"]"
  echo '[steady_state]'
  echo 'window = "5s"'
  for i in $(seq 1 "$n"); do
    printf '[[steady_state.probe]]\nname = "tcp %s"\ntcp = "127.0.0.1:%s"\nevery = "10ms"\nslo = { success = "99%%" }\n' "$i" "$port"
  done
  echo '[[fault]]'
  echo 'name = "pause the sleeper"'
  echo 'kind = "process-pause"'
  echo "select = { cmdline = \"^sleep $port$n\$\" }"
  echo 'duration = "5s"'
  echo '[recovery]'
  echo 'within = "5s"'
} > "$work/bench.toml"

sleep 0.3
FAULTLINE_STATE_DIR="$work/state" /usr/bin/time -v "$bin" run "$work/bench.toml" --quiet \
  --report-json "$work/report.json" > "$work/out" 2> "$work/time" || true
grep -E "^verdict:" "$work/out"
grep -E "User time|System time|Elapsed|Maximum resident" "$work/time"
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = [s["t_ms"] for s in r["samples"]]
span = (max(t) - min(t)) / 1000
print(f"samples kept: {len(t)} over {span:.1f} s = {len(t) / span:.0f} per second")
PY
