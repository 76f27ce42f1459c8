#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): one inject+revert round of a fault on N agents,
# the dead-man switch after a coordinator SIGKILL, and an idle agent's memory.
#   ./scripts/bench-agents.sh [N...]      (default: 1 10 50; builds target/release/faultline unless
#                                          FAULTLINE_BIN names another binary; FAULTLINE_ROUNDS
#                                          rounds per size, 1 to 50, default 5)
# Every agent runs on 127.0.0.1 with its own port and state directory; all of them are stopped at
# the end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1 10 50)
rounds=${FAULTLINE_ROUNDS:-5}
case "$rounds" in
  '' | *[!0-9]*) rounds=0 ;;
esac
if [ "$rounds" -lt 1 ] || [ "$rounds" -gt 50 ]; then
  echo "FAULTLINE_ROUNDS must be a whole number from 1 to 50, not \`${FAULTLINE_ROUNDS}\`" >&2
  exit 2
fi
rounds=$((10#$rounds))
if [ -z "${FAULTLINE_BIN:-}" ]; then
  cargo build --release --quiet
  bin="$PWD/target/release/faultline"
else
  bin=$FAULTLINE_BIN
fi
# Agents run the executable deployments run: `faultline-agent` beside the binary when it has one,
# else (an older build) `faultline agent`.
if [ -x "$(dirname "$bin")/faultline-agent" ]; then
  agent_bin="$(dirname "$bin")/faultline-agent"
  agent_cmd=("$agent_bin")
else
  agent_bin=$bin
  agent_cmd=("$bin" agent)
fi
echo "agents run: ${agent_cmd[*]}"
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
    "${agent_cmd[@]}" --listen "127.0.0.1:$port" --token-file "$work/certs/token" \
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

# The disk's floor for a round on N agents, measured in the same run: each agent must journal its
# fault durably before changing the host (a new file written, renamed into place and fsynced, then
# the directory fsynced: what src/agent/journal.rs does), all N at once on this one disk. A round
# cannot go below it here.
disk_floor() { # N -> median ms of 5 tries
  python3 - "$work" "$1" <<'PY'
import os, statistics, sys, threading, time
work, n = sys.argv[1], int(sys.argv[2])
def journal(d):
    fd = os.open(f"{d}/.e.tmp", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.write(fd, b"x" * 400); os.rename(f"{d}/.e.tmp", f"{d}/e.json"); os.fsync(fd); os.close(fd)
    fd = os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)
times = []
for attempt in range(5):
    dirs = [os.path.join(work, "floor", f"{n}-{attempt}-{i}") for i in range(n)]
    for d in dirs:
        os.makedirs(d)
    t = time.perf_counter()
    threads = [threading.Thread(target=journal, args=(d,)) for d in dirs]
    for x in threads: x.start()
    for x in threads: x.join()
    times.append((time.perf_counter() - t) * 1000)
print(f"{statistics.median(times):.1f}")
PY
}

# CPU ticks (user + system) the agents have used so far, summed.
agents_cpu() {
  local total=0 p f
  for p in "${pids[@]}"; do
    f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null) || continue
    total=$((total + ${f% *} + ${f#* }))
  done
  echo "$total"
}

# The agents' own accounts (`/metrics`), summed: microseconds in applies and reverts, and in their
# journal. A binary without these counters yields {}.
scrape_agents() { # N
  python3 - "$work" "$1" 27400 <<'PY'
import json, ssl, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
work, n, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(cafile=f"{work}/certs/ca.pem")
token = open(f"{work}/certs/token").read().strip()
names = ["apply", "revert", "journal_record", "journal_remove"]
def one(i):
    req = urllib.request.Request(f"https://127.0.0.1:{base + i}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(req, context=ctx, timeout=10).read().decode()
    got = {}
    for line in text.splitlines():
        for name in names:
            if line.startswith(f"faultline_agent_{name}_microseconds_total "):
                got[name] = int(line.split()[1])
    return got
total = {}
with ThreadPoolExecutor(16) as pool:
    for got in pool.map(one, range(n)):
        for k, v in got.items():
            total[k] = total.get(k, 0) + v
print(json.dumps(total))
PY
}

fill_experiment() { # DURATION: a 4 KiB disk-fill on every agent
  experiment "[[fault]]
name = \"fill\"
kind = \"disk-fill\"
on = \"all\"
path = \"$work/fill\"
size = \"4KiB\"
duration = \"$1\""
}

echo "inject+revert round, $rounds runs per size (disk-fill of 4 KiB held 1ms on every agent at once;"
echo "first injected_at -> last reverted_at from the report, agents' clocks):"
for n in "${counts[@]}"; do
  start_agents "$n" 27400
  : > "$work/rounds.txt"
  for ((attempt = 1; attempt <= rounds; attempt++)); do
  fill_experiment 1ms > "$work/round.toml"
  metrics_before=$(scrape_agents "$n")
  cpu_before=$(agents_cpu)
  FAULTLINE_STATE_DIR="$work/coordinator" /usr/bin/time -f '%M %U %S' -o "$work/round.rss" \
    "$bin" run "$work/round.toml" --agents "$work/inventory.toml" \
    --quiet --report-json "$work/round.json" >/dev/null 2>&1 || true
  cpu_after=$(agents_cpu)
  metrics_after=$(scrape_agents "$n")
  python3 - "$work/round.json" "$n" "$(tail -1 "$work/round.rss")" "$((cpu_after - cpu_before))" \
    "$(getconf CLK_TCK)" "$metrics_before" "$metrics_after" "$work/rounds.txt" <<'PY'
import json, sys
from datetime import datetime
r = json.load(open(sys.argv[1]))
def ts(s):
    # RFC 3339 in UTC with 0 to 9 fraction digits; datetime takes at most 6.
    whole, _, frac = s.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(frac + '000000')[:6]}+00:00")
n = int(sys.argv[2])
rss_kb, user, system = sys.argv[3].split()
agents_cpu_ms = int(sys.argv[4]) * 1000 / int(sys.argv[5])
before, after = json.loads(sys.argv[6]), json.loads(sys.argv[7])
f = r["faults"]
ok = all(x["status"] == "reverted" for x in f)
first = min(ts(x["injected_at"]) for x in f)
last = max(ts(x["reverted_at"]) for x in f)
inj = sorted(ts(x["injected_at"]) for x in f)
rev = sorted(ts(x["reverted_at"]) for x in f)
ms = lambda d: d.total_seconds() * 1000
round_ms = ms(last - first)
open(sys.argv[8], "a").write(f"{round_ms}\n")
print(f"  {n:>3} agents: {round_ms:7.1f} ms  ({len(f)} faults, all reverted: {ok}, verdict {r['verdict']}; "
      f"injections spread over {ms(inj[-1] - inj[0]):.1f} ms, reverts over {ms(rev[-1] - rev[0]):.1f} ms; "
      f"coordinator peak RSS {int(rss_kb) / 1024:.1f} MiB)")
per = lambda k: (after.get(k, 0) - before.get(k, 0)) / 1000 / n
if "apply" in after:
    print(f"        mean per agent, its own clock: apply {per('apply'):.2f} ms (journal write {per('journal_record'):.2f} ms), "
          f"revert {per('revert'):.2f} ms (journal removal {per('journal_remove'):.2f} ms)")
print(f"        CPU over the whole run: agents {agents_cpu_ms:.0f} ms, coordinator {(float(user) + float(system)) * 1000:.0f} ms")
PY
  done
  floor=$(disk_floor "$n")
  python3 - "$n" "$floor" "$work/rounds.txt" <<'PY'
import statistics, sys
n, floor = int(sys.argv[1]), float(sys.argv[2])
rounds = [float(x) for x in open(sys.argv[3])]
med = statistics.median(rounds)
print(f"  {n:>3} agents: round median {med:.1f} ms (min {min(rounds):.1f}, max {max(rounds):.1f}, {len(rounds)} runs); "
      f"disk floor, same run ({n} concurrent durable journal writes, median of 5): {floor:.1f} ms; "
      f"round / floor = {med / floor:.2f}")
PY
  # A lease renewal touches no disk on the agent: the spread of one renewal round over all agents
  # is the fan-out itself (one request per agent on its kept-alive connection). A 4 KiB fill held
  # 5 s with a 3 s lease renews every second (a shorter lease lapses on 500 agents here, where
  # injecting on all of them takes about as long); each agent's audit log says when it answered.
  fill_experiment 5s > "$work/renew.toml"
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
# Reaped here, quietly: otherwise the shell reports the kill on its stderr.
{ wait "$coordinator" || true; } 2>/dev/null
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
awk -v bin="$(readlink -f "$agent_bin")" '/^[0-9a-f]+-/ {what = ($6 == bin) ? "binary " $2 : ($6 ~ /\.so/ ? "shared libraries" : "other")}
  /^Rss:/ {rss[what] += $2} END {for (w in rss) printf "  %-18s %6d kB\n", w, rss[w]}' "/proc/${pids[0]}/smaps" | sort
grep -E '^(Pss_Anon|Pss_File|Private_Clean|Private_Dirty):' "/proc/${pids[0]}/smaps_rollup" | awk '{printf "  %s %s kB", $1, $2} END {print ""}'
