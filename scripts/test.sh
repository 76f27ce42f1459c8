#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, then runs every test.
# Tests that need root fail (rather than skip) when FAULTLINE_REQUIRE_PRIVILEGED=1.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# One throwaway PostgreSQL for the whole run (tests of the PostgreSQL history make their own
# database in it); stopped and removed on every exit. Without the server binaries, or without
# root, its tests skip (or fail under FAULTLINE_REQUIRE_PRIVILEGED=1).
if [ -z "${FAULTLINE_TEST_POSTGRES:-}" ] && [ "$(id -u)" = 0 ] && ./scripts/postgres.sh bindir >/dev/null 2>&1; then
  eval "$(./scripts/postgres.sh start)"
  trap './scripts/postgres.sh stop "$FAULTLINE_PG_DIR"' EXIT
  # An untrapped signal would end bash without running the EXIT trap.
  trap 'exit 130' INT
  trap 'exit 143' TERM
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
