#!/usr/bin/env bash
# The test command (README.md): installs what it needs, then lint, type-check and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
"$PY" -m ruff check src tests benchmarks
"$PY" -m mypy
"$PY" -m pytest -q "$@"
