#!/usr/bin/env bash
# Create .venv and install fdd with its test tools (idempotent; about 2 minutes the first time).
# PyTorch comes first and pinned: on the project's machines pip takes torch 2.14.1 and
# torchvision 0.29.1 from local disk; elsewhere it downloads them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt torch torchvision
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
export DVC_NO_ANALYTICS=1
if [ -d .git ] && [ ! -d .dvc ]; then
  .venv/bin/dvc init --quiet
fi
echo "fdd installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
