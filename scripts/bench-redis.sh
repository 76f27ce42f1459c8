#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): a real workload through faultline's proxy beside
# the same workload direct and through HAProxy, in one run.
#   ./scripts/bench-redis.sh [REQUESTS=100000] [ROUNDS=3]
# `redis-benchmark -c 50 -t get,set -n REQUESTS --csv` against one redis-server on loopback:
#   direct    -> redis
#   faultline -> `faultline agent` with a persistent `[[proxy]]` (agent.toml) -> redis: the proxy
#                a staging app points at, no toxic on (what the proxy costs when no fault runs)
#   haproxy   -> HAProxy in `mode tcp` -> redis
# ROUNDS rounds, the three paths interleaved in each (so drift hits them alike); the median round
# is printed: ops/s and p50 per test, with ratios to direct.
# Installs Debian's redis-server, redis-tools and haproxy only if missing (their services are not
# started; this script runs its own instances on free loopback ports with temporary files), and
# stops everything it started on exit. Builds target/release/faultline unless FAULTLINE_BIN is set.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-100000}
rounds=${2:-3}
case $requests in '' | *[!0-9]*) echo "REQUESTS must be a number, got '$requests'" >&2; exit 2 ;; esac
case $rounds in '' | *[!0-9]* | 0) echo "ROUNDS must be a number > 0, got '$rounds'" >&2; exit 2 ;; esac

# binary -> Debian package that provides it
declare -A needs=([redis-server]=redis-server [redis-benchmark]=redis-tools [haproxy]=haproxy)
missing=()
for b in "${!needs[@]}"; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || missing+=("${needs[$b]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench-redis: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "bench-redis: need root to install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  # As scripts/setup.sh: policy-rc.d answering 101 keeps the packages' services from starting.
  policy=/usr/sbin/policy-rc.d
  wrote_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Written by faultline scripts/bench-redis.sh for one install; removed after it.\nexit 101\n' \
      | $sudo tee "$policy" >/dev/null
    $sudo chmod 0755 "$policy"
    wrote_policy=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$wrote_policy" ] || $sudo rm -f "$policy"
  if [ -d /run/systemd/system ]; then
    for package in "${missing[@]}"; do
      case $package in
        redis-server | haproxy) $sudo systemctl disable --now --quiet "$package.service" 2>/dev/null || true ;;
      esac
    done
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

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
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # PORT WHAT
  for _ in $(seq 1 250); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.02
  done
  echo "bench-redis: $2 did not listen on 127.0.0.1:$1 within 5 s" >&2
  exit 1
}

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$work" --save '' --appendonly no \
  --daemonize no --logfile "$work/redis.log" &
pids+=($!)
wait_port "$redis_port" redis-server

proxy_port=$(free_port)
agent_port=$(free_port)
"$bin" certs --out "$work/certs" --host 127.0.0.1 >/dev/null
printf '[[proxy]]\nname = "redis"\nlisten = "127.0.0.1:%s"\nupstream = "127.0.0.1:%s"\n' \
  "$proxy_port" "$redis_port" > "$work/agent.toml"
"$bin" agent --listen "127.0.0.1:$agent_port" --token-file "$work/certs/token" \
  --tls-cert "$work/certs/agent.pem" --tls-key "$work/certs/agent-key.pem" \
  --state-dir "$work/agent-state" --config "$work/agent.toml" > "$work/agent.log" 2>&1 &
pids+=($!)
wait_port "$proxy_port" "faultline's persistent proxy"

haproxy_port=$(free_port)
cat > "$work/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend redis_in
    bind 127.0.0.1:$haproxy_port
    default_backend redis_out
backend redis_out
    server redis 127.0.0.1:$redis_port
CFG
haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 &
pids+=($!)
wait_port "$haproxy_port" haproxy

echo "redis-benchmark -c 50 -t get,set -n $requests, $rounds round(s), paths interleaved; median round:"
echo "  $(redis-server --version | cut -d' ' -f1-3), $(haproxy -v | head -1 | cut -d' ' -f1-3), $("$bin" --version)"
for ((r = 1; r <= rounds; r++)); do
  for path in direct:$redis_port faultline:$proxy_port haproxy:$haproxy_port; do
    name=${path%%:*}
    port=${path##*:}
    redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -n "$requests" -t get,set --csv \
      > "$work/$name.$r.csv"
  done
done

python3 - "$work" "$rounds" <<'PY'
import csv, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
paths = ["direct", "faultline", "haproxy"]
# figures[path][test] = list of (ops/s, p50 ms) per round
figures = {p: {} for p in paths}
for p in paths:
    for r in range(1, rounds + 1):
        with open(f"{work}/{p}.{r}.csv") as f:
            for row in csv.DictReader(f):
                figures[p].setdefault(row["test"], []).append(
                    (float(row["rps"]), float(row["p50_latency_ms"])))
tests = list(figures["direct"])
print(f"  {'test':<5} {'path':<10} {'ops/s':>10} {'x direct':>9} {'p50 ms':>8} {'+p50 ms':>8}")
for t in tests:
    base_ops = statistics.median(o for o, _ in figures["direct"][t])
    base_p50 = statistics.median(l for _, l in figures["direct"][t])
    for p in paths:
        ops = statistics.median(o for o, _ in figures[p][t])
        p50 = statistics.median(l for _, l in figures[p][t])
        print(f"  {t:<5} {p:<10} {ops:>10.0f} {ops / base_ops:>9.2f} {p50:>8.3f} {p50 - base_p50:>+8.3f}")
for t in tests:
    fl = statistics.median(o for o, _ in figures["faultline"][t])
    ha = statistics.median(o for o, _ in figures["haproxy"][t])
    print(f"  {t}: faultline / haproxy ops/s = {fl / ha:.2f}")
PY
