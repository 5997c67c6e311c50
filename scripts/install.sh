#!/usr/bin/env bash
# Install tokennorm (editable) with its dependencies; `install.sh dev` adds the test tools.
# torch is installed only when none is importable: a GPU user's CUDA build stays as it is, and a fresh
# machine gets torch 2.13.0 (on this project's CPU machines that release lies on disk: no multi-GB download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
extra=""
if [ "${1:-}" = "dev" ]; then extra="[dev]"; fi
"$PY" -m pip install --quiet -e ".${extra}"
if [ "${1:-}" = "dev" ]; then
    # timm's norms are tested (tests/api/test_patch_timm.py) but timm's wheel requires torchvision, which pins one
    # torch release: installed without dependencies, so the torch above stays as it is.
    "$PY" -m pip install --quiet --no-deps "timm==1.0.31"
fi
