#!/usr/bin/env bash
# Set up a virtual environment with everything the tests need, lint, and run the test suite.
# Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch only reads the ImageNet weights file for the Lite0 converter test. Pin the CPU build
# (an unpinned torch pulls a multi-GB CUDA build).
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0" \
  || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
.venv/bin/pip install -q -e ".[dev,convert]"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy -p catdog
.venv/bin/pytest "$@"
