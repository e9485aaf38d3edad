#!/usr/bin/env bash
# Re-resolve the lock files from pyproject.toml (run after changing a dependency).
#   base.lock   CPU inference only (LiteRT, no TensorFlow)
#   train.lock  + TensorFlow CPU: training, evaluation, model conversion (the CPU image)
#   gpu.lock    + TensorFlow with CUDA: GPU workers and GPU training (the GPU image)
#   dev.lock    train + linters and pytest: what tests/run.sh and CI install
# Needs uv (`pip install uv`). Linux x86_64, Python 3.11, like the images and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
opts=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet -c requirements/constraints.txt)
uv pip compile pyproject.toml "${opts[@]}" -o requirements/base.lock
uv pip compile pyproject.toml --extra train "${opts[@]}" -o requirements/train.lock
uv pip compile pyproject.toml --extra gpu "${opts[@]}" -o requirements/gpu.lock
uv pip compile pyproject.toml --extra train --extra dev "${opts[@]}" -o requirements/dev.lock
