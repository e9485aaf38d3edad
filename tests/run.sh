#!/usr/bin/env bash
# Set up a virtual environment with everything the tests need, lint, and run the test suite.
# Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# Pinned versions from the lock file (requirements/compile.sh re-resolves it), then catdog.
.venv/bin/pip install -q -r requirements/dev.lock
.venv/bin/pip install -q --no-deps -e .
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy -p catdog
.venv/bin/lint-imports --no-cache
.venv/bin/pytest "$@"
