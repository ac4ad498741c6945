#!/usr/bin/env bash
# Set up a venv (.venv) with the pinned CPU torch and the project, then run ruff and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[test]"
.venv/bin/ruff check tilesegcli tests benchmarks
# -p no:cacheprovider keeps the tree clean; exit code 5 (no tests collected) fails the run.
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
