#!/usr/bin/env bash
# Everything a GPU session checks, in one device call: kernel/parity tests on CUDA (full opcheck,
# torch.compile, >2^31 elements), `tokennorm verify` on the GPU, then the benchmark sweep.
# Usage on the GPU machine, from the repository root:  bash scripts/gpu_check.sh [OUTDIR]
# (torch and triton must already be installed there; nothing is downloaded.)
set -uo pipefail
out=${1:-${OUT:-gpu_out}}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
status=0
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_add_norm.py 2>&1 | tee "$out/tests.log" || status=1
python3 -m tokennorm verify --json "$out/verify.json" 2>&1 | tee "$out/verify.log" || status=1
python3 -m tokennorm bench --json "$out/bench.json" --csv "$out/bench.csv" --plot "$out/bench.png" 2>&1 | tee "$out/bench.log" || status=1
exit $status
