#!/usr/bin/env bash
# Everything a GPU session checks, in ONE device call of at most 9 minutes (--quick: 3), in this order:
#   setup          GPU, driver, versions; carried wheels (.whl/) installed to a private folder
#   tests-gpu      pytest -m gpu on CUDA (full log kept)
#   tests-rest     the rest of the suite on CUDA (the interpret-marked tests run the real kernels)   [full only]
#   verify         tokennorm verify
#   racecheck      the long-row kernels under compute-sanitizer --tool racecheck (pytest -m gpu -k long_rows,
#                  the kernel engineer's small launch: -k "long_rows and racecheck"; RACECHECK_K="long_rows" runs
#                  every long-row GPU test, slower under the checker)
#   warm           Triton and Inductor compile caches filled in parallel processes (the sweeps then time, not
#                  compile)
#   anchor-bf16    tokennorm bench: LN, RMS, Add & Norm; fwd and fwd+bwd; bf16; N = 1K … 1M; tokennorm, torch and
#                  every installed peer
#   anchor-fp      the same in fp16 and fp32 at N = 1K, 16K, 256K                                     [full only]
#   compile        torch.compile beside tokennorm, bf16, N = 4K, 32K, 256K                              [full only]
#   latency        M = 1 and 4096 rows of N = 4096: device and host µs per call
#   block-eager    benchmarks/bench_block.py: a pre-LN GPT block, tokennorm's norms vs torch's, eager
#   block-compile  the same block under torch.compile (d_model 4096, RMSNorm)                           [full only]
#   table          tokennorm tune --from-bench: the dispatch table the anchor sweeps imply (no GPU time)
# then prints a short table (stages, then the numbers) last and writes summary.json. Each stage has its own
# time budget and the whole run a deadline, so one slow stage cannot eat the others' time; the benchmarks save
# their JSON after every case, so a stage stopped at its budget keeps what it measured.
#
# Usage:  bash scripts/gpu_check.sh OUTDIR [--quick] [--dry-run]      (--dry-run: print the plan, run nothing)
#         bash scripts/gpu_check.sh --prepare-wheels                  (on a machine with network, see below)
#
# In a session with a GPU (the device tool), from the repository root:
#   1. here, once:   bash scripts/gpu_check.sh --prepare-wheels
#                    (liger-kernel 0.8.5, pure Python, into .whl/, which .gitignore keeps out of git)
#   2. the call:     run(command="bash scripts/gpu_check.sh $OUT", carry=[".whl"], timeout_s=600)
#      or quicker:   run(command="bash scripts/gpu_check.sh $OUT --quick", carry=[".whl"], timeout_s=240)
# Only 8 files come back from $OUT, so OUTDIR receives three, rewritten after every stage: summary.txt,
# summary.json and gpu_check.tar.gz (every log, JSON, CSV, Markdown table and plot).
# Environment: GPU_CHECK_PYTHON (default python3), GPU_CHECK_TOTAL_S (the deadline, default 540 or 180),
# RACECHECK_K (the pytest -k expression of the racecheck stage, default "long_rows and racecheck").
set -uo pipefail

LIGER_VERSION=0.8.5

if [ "${1:-}" = "--prepare-wheels" ]; then
  mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "liger-kernel==$LIGER_VERSION" || exit 1
  ls -l .whl
  exit 0
fi

out=""
quick=0
dry=0
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    --dry-run) dry=1 ;;
    -*) echo "gpu_check.sh: unknown option $arg" >&2; exit 2 ;;
    *) [ -z "$out" ] && out=$arg || { echo "gpu_check.sh: one OUTDIR only" >&2; exit 2; } ;;
  esac
done
[ -n "$out" ] || { echo "usage: bash scripts/gpu_check.sh OUTDIR [--quick] [--dry-run] | --prepare-wheels" >&2; exit 2; }

py=${GPU_CHECK_PYTHON:-python3}
total=${GPU_CHECK_TOTAL_S:-$([ $quick = 1 ] && echo 180 || echo 540)}
reserve=15  # seconds kept for the summary and the packing at the end
started=$(date +%s)
if [ $dry = 1 ]; then
  work='$WORK'  # a plan only: nothing is created
else
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the kernels run on the GPU

[ $dry = 1 ] || : > "$work/stages.tsv"
pack() {  # what comes back, rewritten after every stage
  tar czf "$out/gpu_check.tar.gz.partial" -C "$work" . 2>/dev/null && mv "$out/gpu_check.tar.gz.partial" "$out/gpu_check.tar.gz"
}

# stage NAME FULL_S QUICK_S COMMAND...  (QUICK_S 0: not in --quick; the command's output goes to NAME.log)
stage() {
  local name=$1 full=$2 fast=$3; shift 3
  local budget=$full
  if [ $quick = 1 ]; then budget=$fast; fi
  if [ "$budget" = 0 ]; then return 0; fi
  if [ $dry = 1 ]; then
    printf '%-14s %4ss  %s\n' "$name" "$budget" "$*"
    planned=$((planned + budget))
    return 0
  fi
  local now left
  now=$(date +%s)
  left=$((started + total - reserve - now))
  [ "$budget" -gt "$left" ] && budget=$left
  if [ "$budget" -lt 5 ]; then
    printf '%s\tskipped\t0\t%s\tno time left\n' "$name" "$budget" >> "$work/stages.tsv"
    echo "=== $name: skipped, no time left"
    return 0
  fi
  echo "=== $name ($(date +%T), budget ${budget}s): $*"
  local t0=$SECONDS rc
  # SIGINT first (to the whole process group): pytest prints what it has, the benchmarks keep what they saved;
  # SIGKILL 5 s later. A shell function (exported) runs in a child bash.
  if declare -F "$1" > /dev/null; then
    timeout --signal=INT --kill-after=5 "$budget" bash -c '"$@"' bash "$@" > "$work/$name.log" 2>&1
  else
    timeout --signal=INT --kill-after=5 "$budget" "$@" > "$work/$name.log" 2>&1
  fi
  rc=$?
  local status=ok
  if [ $rc = 124 ] || [ $rc = 137 ]; then status=timeout; elif [ $rc != 0 ]; then status="failed($rc)"; fi
  local note
  note=$(grep -E "(passed|failed|error|skipped|no tests ran)( |,|$)" "$work/$name.log" | tail -1 | tr '\t' ' ' | cut -c1-160)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$budget" "$note" >> "$work/stages.tsv"
  echo "    $status in $((SECONDS - t0))s${note:+: $note}"
  tail -3 "$work/$name.log" | sed 's/^/    | /'
  pack
}

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
SIZES_BF16=$([ $quick = 1 ] && echo 1K,16K,256K,1M || echo 1K,2K,4K,8K,16K,32K,64K,128K,256K,1M)
SIZES_FP=1K,16K,256K
SIZES_COMPILE=4K,32K,256K
PEERS=tokennorm,torch,liger,quack,apex,flash-attn,te
ANCHOR="--ops ln,rms,addnorm --dirs fwd,fwdbwd --latency-rows none --quick"
export py quick work sanitizer SIZES_BF16 SIZES_FP SIZES_COMPILE ANCHOR

# The long-row kernels' exchange between programs under the race checker (the kernel engineer's tests).
racecheck() {
  if [ -z "$sanitizer" ]; then echo "compute-sanitizer not found: racecheck not run"; return 3; fi
  "$sanitizer" --tool racecheck --racecheck-report hazard --error-exitcode 9 \
    "$py" -m pytest -q -p no:cacheprovider -x -m gpu -k "${RACECHECK_K:-long_rows and racecheck}" tests/kernels
}

bench() { "$py" -m tokennorm bench --device cuda "$@"; }

# One process per row length and dtype, 8 at a time: every kernel the sweeps launch is compiled once, in
# parallel, into the on-disk caches the sweeps then read (one timing round each: the numbers are discarded).
warm() {
  local jobs=() n
  for n in ${SIZES_BF16//,/ }; do jobs+=("--dtypes bf16 --sizes $n --impls tokennorm,liger"); done
  if [ "$quick" = 0 ]; then
    for n in ${SIZES_FP//,/ }; do jobs+=("--dtypes fp16,fp32 --sizes $n --impls tokennorm,liger"); done
    for n in ${SIZES_COMPILE//,/ }; do jobs+=("--dtypes bf16 --sizes $n --impls compile"); done
  fi
  printf '%s\n' "${jobs[@]}" | xargs -P 8 -I{} sh -c \
    "$py -m tokennorm bench --device cuda $ANCHOR --rounds 1 {} > /dev/null 2>&1 && echo 'warmed: {}' || echo 'warm-up failed: {}'"
}

# The dispatch table the anchor sweeps imply, from whichever of them saved results.
table() {
  local found=()
  for f in "$work/anchor-bf16.json" "$work/anchor-fp.json"; do [ -f "$f" ] && found+=("$f"); done
  [ ${#found[@]} -gt 0 ] || { echo "no anchor results to build a table from"; return 3; }
  "$py" -m tokennorm tune --from-bench "${found[@]}" --out "$work/dispatch-table.json"
}
export -f racecheck bench warm table

outputs() {  # --json/--csv/--markdown (and --plot, unless a second argument says no) of a bench stage
  echo --json "$work/$1.json" --csv "$work/$1.csv" --markdown "$work/$1.md"
  [ -n "${2:-}" ] || echo --plot "$work/$1.png"
}

planned=0
[ $dry = 1 ] && echo "plan ($([ $quick = 1 ] && echo quick || echo full), deadline ${total}s):"

if [ $dry = 0 ]; then
  echo "=== setup ($(date +%T))"
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1
    "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" 2>&1
    if ls .whl/*.whl > /dev/null 2>&1; then
      "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .whl/*.whl \
        && echo "installed: $(ls .whl)"
    else
      echo "no .whl/ carried: peers that are not on the image are skipped (bash scripts/gpu_check.sh --prepare-wheels)"
    fi
  } > "$work/setup.log" 2>&1
  [ -d "$work/site" ] && export PYTHONPATH="$PYTHONPATH:$work/site"
  cat "$work/setup.log"
fi

stage tests-gpu      50 35 "$py" -m pytest -q -p no:cacheprovider -m gpu -n 4 --tb=short -rfE tests
stage tests-rest     90  0 "$py" -m pytest -q -p no:cacheprovider -m "not gpu" -n 8 --tb=short -rfE --durations=15 tests
stage verify         25 18 "$py" -m tokennorm verify --json "$work/verify.json"
stage racecheck      35 20 racecheck
stage warm           40 20 warm
# shellcheck disable=SC2086  # $ANCHOR: options, split on purpose
stage anchor-bf16    95 35 bench $ANCHOR --dtypes bf16 --sizes "$SIZES_BF16" --impls "$PEERS" $(outputs anchor-bf16)
stage anchor-fp      35  0 bench $ANCHOR --dtypes fp16,fp32 --sizes "$SIZES_FP" --impls tokennorm,torch,liger $(outputs anchor-fp)
stage compile        40  0 bench $ANCHOR --dtypes bf16 --sizes "$SIZES_COMPILE" --impls tokennorm,compile $(outputs compile)
stage latency        25 12 bench --ops ln,rms,addnorm --dirs fwd --dtypes bf16 --sizes none --latency-rows 1,4096 --latency-n 4096 \
                           --impls "$([ $quick = 1 ] && echo tokennorm,torch,liger || echo tokennorm,torch,compile,liger)" $(outputs latency no-plot)
stage block-eager    30 13 "$py" benchmarks/bench_block.py --modes eager --d-models "$([ $quick = 1 ] && echo 2048 || echo 1024,2048,4096)" \
                           --json "$work/block-eager.json"
stage block-compile  35  0 "$py" benchmarks/bench_block.py --modes compile --d-models 4096 --norms rmsnorm --json "$work/block-compile.json"
stage table          15 10 table

if [ $dry = 1 ]; then
  echo "stages: ${planned}s of ${total}s (reserve ${reserve}s for the summary)"
  [ $((planned + reserve)) -le "$total" ] || { echo "gpu_check.sh: the stages' budgets exceed the deadline" >&2; exit 1; }
  exit 0
fi

"$py" -m tokennorm.tools.bench.summary "$work" --json "$out/summary.json" > "$work/summary.txt" 2>&1
cp "$work/summary.txt" "$out/summary.txt"
pack
echo "=== done in $(( $(date +%s) - started ))s; $out: $(ls "$out" | tr '\n' ' ')"
cat "$out/summary.txt"
# exit 1 when any stage did not end well (the summary says which)
awk -F'\t' '$2 != "ok" { bad = 1 } END { exit bad }' "$work/stages.tsv"
