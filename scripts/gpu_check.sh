#!/usr/bin/env bash
# Everything a GPU session checks, in one device call. Stages (default: all, in this order):
#   tests   kernel, Add & Norm, parity and verify tests on CUDA (full opcheck, torch.compile, >2^31 elements)
#   verify  `tokennorm verify` on the GPU
#   tune    benchmarks/tune_kernels.py: launch-config sweep (bf16 LayerNorm; TUNE_ARGS for others)
#   bench   `tokennorm bench` (BENCH_ARGS overrides its options)
#   block   benchmarks/bench_block.py: one GPT-style block, tokennorm vs torch norms
# Usage on the GPU machine, from the repository root:  bash scripts/gpu_check.sh OUTDIR [STAGE...]
# One device call runs at most 10 minutes: tests+verify (~3 min) in one call, tune (~5) in another, bench
# (BENCH_ARGS="--dtypes bf16" first) and block in a third.
# (torch and triton must already be installed there; nothing is downloaded. Peers such as liger-kernel can
# be put on PYTHONPATH beforehand.)
set -uo pipefail
out=${1:-${OUT:-gpu_out}}
shift || true
stages=${*:-tests verify tune bench block}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
status=0
for stage in $stages; do
  echo "=== $stage $(date +%T)"
  case $stage in
    # The whole log goes to OUTDIR (a failure's message must not be cut off); the summary is printed.
    tests) python3 -m pytest -q -p no:cacheprovider -n 6 --tb=short tests/kernels tests/ops tests/api/test_add_norm.py \
             tests/api/test_norm_parity.py tests/tools/test_verify.py tests/api/test_modules.py tests/distributed \
             > "$out/tests.log" 2>&1; rc=$?; grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" | tail -25
           [ $rc = 0 ] ;;
    verify) python3 -m tokennorm verify --json "$out/verify.json" > "$out/verify.log" 2>&1; rc=$?
            tail -4 "$out/verify.log"; [ $rc = 0 ] ;;
    # ~35 candidates per row length, ~1.5 s each (mostly compilation): LayerNorm at 6 lengths is ~5 minutes.
    # TUNE_ARGS overrides (e.g. "--ns 1K,2K,4K --rms").
    # Then the traffic model on the result: bytes moved per byte needed, bandwidth on the bytes moved.
    tune) python3 benchmarks/tune_kernels.py --json "$out/tune.json" ${TUNE_ARGS:---ns 1K,4K,16K,64K,256K,1M} \
            2>"$out/tune_err.log" && python3 -m tokennorm.tools.kernel_report.traffic "$out/tune.json" > "$out/traffic.md" \
            && tail -12 "$out/traffic.md" ;;
    bench) python3 -m tokennorm bench ${BENCH_ARGS:-} --json "$out/bench.json" --csv "$out/bench.csv" \
             --plot "$out/bench.png" --markdown "$out/bench.md" > "$out/bench.log" 2>&1; rc=$?
           tail -60 "$out/bench.log"; [ $rc = 0 ] ;;
    block) python3 benchmarks/bench_block.py --json "$out/block.json" 2>&1 | tail -20 ;;
    *) echo "unknown stage $stage"; false ;;
  esac || { echo "!!! stage $stage failed"; status=1; }
done
exit $status
