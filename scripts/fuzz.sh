#!/usr/bin/env bash
# Fuzzes every input parser for SECONDS each (default 60) with `faultline fuzz`, a seeded mutation
# fuzzer on the stable toolchain, and prints executions, exec/s and panics per target. A debug
# build, on purpose: its overflow checks turn silent wrap-arounds into panics the fuzzer sees.
# Panicking inputs go to target/fuzz-crashes/TARGET/; the exit status is 1 when any target panicked.
#   scripts/fuzz.sh [SECONDS]        FUZZ_SEED=N to reproduce a run (default: a new seed each time)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
cargo build --quiet
bin=target/debug/faultline
seed_args=()
if [[ -n "${FUZZ_SEED:-}" ]]; then
  seed_args=(--seed "$FUZZ_SEED")
fi
failed=0
printf '%-14s %12s %10s %8s  %s\n' target executions exec/s panics seed
details=""
for target in $("$bin" fuzz --list); do
  set +e
  out="$("$bin" fuzz "$target" --seconds "$seconds" "${seed_args[@]}" --crash-dir target/fuzz-crashes)"
  status=$?
  set -e
  first="${out%%$'\n'*}"
  # fuzz T: N executions in S s (R exec/s), P panics (D distinct), ..., seed X
  executions="$(sed -E 's/.*: ([0-9]+) executions.*/\1/' <<<"$first")"
  rate="$(sed -E 's/.*\(([0-9]+) exec\/s\).*/\1/' <<<"$first")"
  panics="$(sed -E 's/.*, ([0-9]+) panics.*/\1/' <<<"$first")"
  seed="$(sed -E 's/.*seed ([0-9]+)$/\1/' <<<"$first")"
  printf '%-14s %12s %10s %8s  %s\n' "$target" "$executions" "$rate" "$panics" "$seed"
  if [[ $status -ne 0 ]]; then
    failed=1
    details+="$out"$'\n'
  fi
done
if [[ -n "$details" ]]; then
  printf '\n%s' "$details"
fi
exit "$failed"
