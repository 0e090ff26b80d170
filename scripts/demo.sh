#!/usr/bin/env bash
# The main job (README.md): install what is needed, then boot, run workloads and attacks, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m secvma.cli demo "$@"
