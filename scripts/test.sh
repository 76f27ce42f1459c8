#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, then runs every test.
# Tests that need root fail (rather than skip) when FAULTLINE_REQUIRE_PRIVILEGED=1.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Runs a test starts without a state directory of its own (journal, history.db) use a throwaway
# one, never this machine's /var/lib/faultline.
state_dir=$(mktemp -d -t faultline-test-state.XXXXXX)
export FAULTLINE_STATE_DIR="$state_dir"
started_pg=
cleanup() {
  rm -rf "$state_dir"
  if [ -n "$started_pg" ]; then ./scripts/postgres.sh stop "$started_pg"; fi
}
trap cleanup EXIT
# An untrapped signal would end bash without running the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM
# One throwaway PostgreSQL for the whole run (tests of the PostgreSQL history make their own
# database in it); stopped and removed on every exit. Without the server binaries, or without
# root, its tests skip (or fail under FAULTLINE_REQUIRE_PRIVILEGED=1).
if [ -z "${FAULTLINE_TEST_POSTGRES:-}" ] && [ "$(id -u)" = 0 ] && ./scripts/postgres.sh bindir >/dev/null 2>&1; then
  eval "$(./scripts/postgres.sh start)"
  started_pg=$FAULTLINE_PG_DIR
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
