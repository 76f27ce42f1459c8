#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): one inject+revert round of a fault on N agents,
# the dead-man switch after a coordinator SIGKILL, and an idle agent's memory.
#   ./scripts/bench-agents.sh [N...]      (default: 1 10 50; builds target/release/faultline unless
#                                          FAULTLINE_BIN names another binary)
# Every agent runs on 127.0.0.1 with its own port and state directory; all of them are stopped at
# the end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1 10 50)
if [ -z "${FAULTLINE_BIN:-}" ]; then
  cargo build --release --quiet
  bin="$PWD/target/release/faultline"
else
  bin=$FAULTLINE_BIN
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" certs --out "$work/certs" --host 127.0.0.1 >/dev/null
mkdir -p "$work/fill"

start_agents() { # N BASEPORT
  local n=$1 base=$2
  : > "$work/inventory.toml"
  printf 'ca = "%s"\ntoken_file = "%s"\n' "$work/certs/ca.pem" "$work/certs/token" >> "$work/inventory.toml"
  for ((i = 0; i < n; i++)); do
    local port=$((base + i))
    "$bin" agent --listen "127.0.0.1:$port" --token-file "$work/certs/token" \
      --tls-cert "$work/certs/agent.pem" --tls-key "$work/certs/agent-key.pem" \
      --state-dir "$work/state-$port" >/dev/null 2>&1 &
    pids+=($!)
    printf '\n[[agent]]\nname = "a%03d"\naddress = "https://127.0.0.1:%d"\ntags = { role = "bench" }\n' "$i" "$port" >> "$work/inventory.toml"
  done
  for ((i = 0; i < n; i++)); do
    until (exec 3<>"/dev/tcp/127.0.0.1/$((base + i))") 2>/dev/null; do sleep 0.02; done
  done
}

stop_agents() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

experiment() { # FAULT-KIND-BLOCK
  cat <<TOML
title = "agent bench"
[targets.all]
tags = { role = "bench" }
[steady_state]
window = "200ms"
[[steady_state.probe]]
name = "noop"
command = ["true"]
every = "100ms"
$1
[recovery]
within = "5s"
TOML
}

echo "inject+revert round, 3 runs per size (disk-fill of 4 KiB held 1ms on every agent at once;"
echo "first injected_at -> last reverted_at from the report, agents' clocks):"
for n in "${counts[@]}"; do
  start_agents "$n" 27400
  for attempt in 1 2 3; do
  experiment "[[fault]]
name = \"fill\"
kind = \"disk-fill\"
on = \"all\"
path = \"$work/fill\"
size = \"4KiB\"
duration = \"1ms\"" > "$work/round.toml"
  FAULTLINE_STATE_DIR="$work/coordinator" /usr/bin/time -f %M -o "$work/round.rss" \
    "$bin" run "$work/round.toml" --agents "$work/inventory.toml" \
    --quiet --report-json "$work/round.json" >/dev/null 2>&1 || true
  python3 - "$work/round.json" "$n" "$(tail -1 "$work/round.rss")" <<'PY'
import json, sys
from datetime import datetime
r = json.load(open(sys.argv[1]))
def ts(s):
    # RFC 3339 in UTC with 0 to 9 fraction digits; datetime takes at most 6.
    whole, _, frac = s.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(frac + '000000')[:6]}+00:00")
f = r["faults"]
ok = all(x["status"] == "reverted" for x in f)
first = min(ts(x["injected_at"]) for x in f)
last = max(ts(x["reverted_at"]) for x in f)
inj = sorted(ts(x["injected_at"]) for x in f)
rev = sorted(ts(x["reverted_at"]) for x in f)
ms = lambda d: d.total_seconds() * 1000
print(f"  {sys.argv[2]:>3} agents: {ms(last - first):7.1f} ms  ({len(f)} faults, all reverted: {ok}, verdict {r['verdict']}; "
      f"injections spread over {ms(inj[-1] - inj[0]):.1f} ms, reverts over {ms(rev[-1] - rev[0]):.1f} ms; "
      f"coordinator peak RSS {int(sys.argv[3]) / 1024:.1f} MiB)")
PY
  done
  # A lease renewal touches no disk on the agent: the spread of one renewal round over all agents
  # is the fan-out itself (one request per agent on its kept-alive connection). A 4 KiB fill held
  # 5 s with a 3 s lease renews every second (a shorter lease lapses on 500 agents here, where
  # injecting on all of them takes about as long); each agent's audit log says when it answered.
  experiment "[[fault]]
name = \"fill\"
kind = \"disk-fill\"
on = \"all\"
path = \"$work/fill\"
size = \"4KiB\"
duration = \"5s\"" > "$work/renew.toml"
  since=$(date +%s.%N)
  FAULTLINE_STATE_DIR="$work/coordinator" "$bin" run "$work/renew.toml" --agents "$work/inventory.toml" \
    --lease 3s --quiet --report-json "$work/renew.json" >/dev/null 2>&1 || true
  python3 - "$work" "$n" "$since" <<'PY'
import glob, json, statistics, sys
from datetime import datetime
work, n, since = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
report = json.load(open(f"{work}/renew.json"))
def ts(s):
    whole, _, frac = s.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(frac + '000000')[:6]}+00:00").timestamp()
times = []
for path in glob.glob(f"{work}/state-*/audit.jsonl"):
    for line in open(path):
        entry = json.loads(line)
        if entry.get("request") == "POST /v1/leases/renew" and entry.get("status") == 200:
            times.append(ts(entry["time"]))
# Earlier sizes' agents kept their state directories: only this run's renewals count.
times = sorted(t for t in times if t >= since)
# Rounds are 1 s apart: a gap over 100 ms starts the next one.
rounds, current = [], []
for t in times:
    if current and t - current[-1] > 0.1:
        rounds.append(current)
        current = []
    current.append(t)
if current:
    rounds.append(current)
full = [r for r in rounds if len(r) == n]
if not full:
    print(f"  {n:>3} agents: no renewal round told apart from the next (answers per cluster: "
          f"{[len(r) for r in rounds]}); run verdict {report['verdict']}: {report['reason'][:300]}")
else:
    spreads = [(r[-1] - r[0]) * 1000 for r in full]
    print(f"  {n:>3} agents: renewal round (no disk), first -> last agent answering: median "
          f"{statistics.median(spreads):.1f} ms, max {max(spreads):.1f} ms over {len(full)} rounds")
PY
  stop_agents
done

# The same run's floor: every agent journals a fault (file + directory fsync) before injecting
# it and removes the entry after reverting it, and here all agents share one disk. N concurrent
# journal writes, twice, is what a round cannot go below on this machine.
echo "disk floor, same run: N concurrent journal writes (200 B file + fsync, directory fsync), twice:"
for n in "${counts[@]}"; do
  python3 - "$work" "$n" <<'PY'
import os, sys, threading, time
work, n = sys.argv[1], int(sys.argv[2])
d = os.path.join(work, "floor")
os.makedirs(d, exist_ok=True)
def journal(i):
    fd = os.open(f"{d}/{i}.json", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"x" * 200); os.fsync(fd); os.close(fd)
    fd = os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)
best = None
for attempt in range(3):
    t = time.perf_counter()
    for round in range(2):
        threads = [threading.Thread(target=journal, args=(attempt * 2 * n + round * n + i,)) for i in range(n)]
        for x in threads: x.start()
        for x in threads: x.join()
    ms = (time.perf_counter() - t) * 1000
    best = ms if best is None else min(best, ms)
print(f"  {n:>3} writers: {best:7.1f} ms (best of 3)")
PY
done

echo "coordinator SIGKILL -> victim running again (process-pause held 60s, lease 5s default):"
start_agents 1 27400
sleep 300 & victim=$!
pids+=("$victim")
experiment "[[fault]]
name = \"pause\"
kind = \"process-pause\"
on = \"all\"
select = { pid = $victim }
duration = \"60s\"" > "$work/pause.toml"
FAULTLINE_STATE_DIR="$work/coordinator" "$bin" run "$work/pause.toml" --agents "$work/inventory.toml" --quiet >/dev/null 2>&1 &
coordinator=$!
until [ "$(awk '{print $3}' "/proc/$victim/stat")" = T ]; do sleep 0.01; done
kill -KILL "$coordinator"
t0=$(date +%s.%N)
while [ "$(awk '{print $3}' "/proc/$victim/stat")" = T ]; do sleep 0.01; done
t1=$(date +%s.%N)
python3 -c "print(f'  {($t1 - $t0):.2f} s after SIGKILL (bound: lease 5 s + renewal phase; the lease counts from the last renewal)')"

rss=$(awk '/VmRSS/ {print $2}' "/proc/${pids[0]}/status")
anon=$(awk '/RssAnon/ {print $2}' "/proc/${pids[0]}/status")
file=$(awk '/RssFile/ {print $2}' "/proc/${pids[0]}/status")
echo "idle agent RSS: $((rss / 1024)) MiB (${rss} kB, /proc/PID/status VmRSS after serving one run)"
# The split says what an agent costs a host: its own memory (anonymous) and the pages of the
# faultline binary it has mapped (file; the page cache holds one copy for every agent on a host).
echo "  of which anonymous ${anon} kB, file-backed ${file} kB; threads $(awk '/Threads/ {print $2}' "/proc/${pids[0]}/status")"
# What the file-backed part is: mapped pages of the binary's text (r-xp), of its read-only data
# (r--p: .rodata, .eh_frame, the relocations the loader reads) and of shared libraries. Text is
# mapped in whole fault-around windows (64 KiB) and large page-cache folios around each page the
# agent executes, so it follows how spread out the executed code is, not how much of it runs.
# PSS divides each page by the processes mapping it: N agents on a host share one copy.
awk -v bin="$(readlink -f "$bin")" '/^[0-9a-f]+-/ {what = ($6 == bin) ? "binary " $2 : ($6 ~ /\.so/ ? "shared libraries" : "other")}
  /^Rss:/ {rss[what] += $2} END {for (w in rss) printf "  %-18s %6d kB\n", w, rss[w]}' "/proc/${pids[0]}/smaps" | sort
grep -E '^(Pss_Anon|Pss_File|Private_Clean|Private_Dirty):' "/proc/${pids[0]}/smaps_rollup" | awk '{printf "  %s %s kB", $1, $2} END {print ""}'
