#!/usr/bin/env bash
# The test command (README.md): installs what it needs, then lint, type-check and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# the tests that need the Debian fixtures fail (not skip) without them; 0 lets them skip offline
export SECVMA_REQUIRE_FIXTURES=${SECVMA_REQUIRE_FIXTURES:-1}
bash scripts/setup.sh
PY=${PYTHON:-python3}
"$PY" -m ruff check src tests benchmarks
"$PY" -m mypy
"$PY" -m pytest -q "$@"
