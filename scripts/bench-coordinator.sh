#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): an idle coordinator's memory and CPU with N
# schedules loaded (default 100), all firing far in the future (1 January, 00:00), so what is
# measured is the daemon waiting: its dispatcher, timers, the watchdog heartbeat, the session.
#   ./scripts/bench-coordinator.sh [N] [SECONDS]     (default: 100 30)
# Uses target/debug/faultline (built if needed) unless FAULTLINE_BIN names another binary.
# Reads VmRSS from /proc/PID/status and utime+stime from /proc/PID/stat (the coordinator's own
# process, threads included; its watchdog is a separate process and is reported on its own line).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
seconds=${2:-30}
if [ -z "${FAULTLINE_BIN:-}" ]; then
  cargo build --quiet
  bin="$PWD/target/debug/faultline"
else
  bin=$FAULTLINE_BIN
fi
work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cp experiments/process-pause.toml "$work/experiment.toml"
{
  printf '[coordinator]\nstate_dir = "state"\ntimezone = "Europe/Berlin"\nname = "bench"\n\n'
  for ((i = 0; i < n; i++)); do
    printf '[[schedule]]\nname = "schedule %d"\nexperiments = ["experiment.toml"]\ncron = "%d 0 1 1 *"\n\n' "$i" $((i % 60))
  done
} > "$work/gameday.toml"
"$bin" validate "$work/gameday.toml" >/dev/null

"$bin" coordinator "$work/gameday.toml" 2> "$work/coordinator.log" &
pid=$!
# Wait until it has worked out every schedule's next fire, then let it settle.
for _ in $(seq 1 200); do
  [ "$(grep -c 'next fire of' "$work/coordinator.log" || true)" -ge "$n" ] && break
  sleep 0.1
done
sleep 2
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks "$pid")
start=$(date +%s.%N)
sleep "$seconds"
after=$(ticks "$pid")
end=$(date +%s.%N)
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
threads=$(awk '/^Threads/ { print $2 }' "/proc/$pid/status")
watchdog=$(pgrep -P "$pid" -f 'faultline watchdog' | head -1 || true)
echo "coordinator with $n schedules, idle for ${seconds} s ($bin):"
awk -v b="$before" -v a="$after" -v hz="$hz" -v s="$start" -v e="$end" \
  'BEGIN { cpu = (a - b) / hz; printf "  CPU: %.2f s over %.1f s = %.3f%% of one core\n", cpu, e - s, 100 * cpu / (e - s) }'
echo "  RSS: $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB), $threads threads"
if [ -n "$watchdog" ]; then
  echo "  watchdog process: RSS $(( $(awk '/^VmRSS/ { print $2 }' "/proc/$watchdog/status") / 1024 )) MiB"
fi
echo "  log lines while idle: $(wc -l < "$work/coordinator.log") in all (start-up included)"
