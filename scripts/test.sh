#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, then runs every test.
# Tests that need root fail (rather than skip) when FAULTLINE_REQUIRE_PRIVILEGED=1.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
