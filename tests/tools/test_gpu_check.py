"""scripts/gpu_check.sh without a GPU: its plan fits the device call (9 minutes, 3 with --quick), every command
it would run parses, and a whole run through a stand-in Python — stage order, per-stage budgets and the deadline,
the three files that come back, the summary printed last — so that a GPU session's minutes go to measuring."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
FULL_ORDER = [
    "tests-gpu",
    "tests-rest",
    "verify",
    "racecheck",
    "warm",
    "anchor-bf16",
    "anchor-fp",
    "compile",
    "latency",
    "block-eager",
    "block-compile",
    "table",
]
QUICK_ORDER = ["tests-gpu", "verify", "racecheck", "warm", "anchor-bf16", "latency", "block-eager", "table"]

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)


def _plan(*options):
    result = subprocess.run(
        ["bash", str(SCRIPT), "OUT", "--dry-run", *options], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    stages = [re.match(r"(\S+)\s+(\d+)s  (.*)", line).groups() for line in lines[1:-1]]
    return lines, [(name, int(budget), command) for name, budget, command in stages]


@pytest.mark.parametrize(("options", "order", "deadline"), [((), FULL_ORDER, 540), (("--quick",), QUICK_ORDER, 180)])
def test_the_plan_runs_the_stages_in_order_within_the_call(options, order, deadline):
    lines, stages = _plan(*options)
    assert [name for name, _, _ in stages] == order
    assert f"deadline {deadline}s" in lines[0]
    assert sum(budget for _, budget, _ in stages) + 15 <= deadline <= 9 * 60  # the summary's reserve too
    assert all(budget > 0 for _, budget, _ in stages)


def test_every_benchmark_command_of_the_plan_parses():
    from tokennorm.cli import build_parser

    for options in ((), ("--quick",)):
        _, stages = _plan(*options)
        for name, _, command in stages:
            words = command.split()
            if words[0] == "bench":  # the script's function: python3 -m tokennorm bench --device cuda ...
                argv = ["bench", "--device", "cuda", *words[1:]]
                args = build_parser(argv).parse_args(argv)
                assert args.json and args.json.endswith(f"{name}.json")
            elif words[1:4] == ["-m", "tokennorm", "verify"]:
                build_parser(words[3:]).parse_args(words[3:])
    _, stages = _plan()
    anchor = next(c for n, _, c in stages if n == "anchor-bf16")
    assert "--sizes 1K,2K,4K,8K,16K,32K,64K,128K,256K,1M" in anchor and "--dtypes bf16" in anchor
    assert "--impls tokennorm,torch,liger,quack,apex,flash-attn,te" in anchor


def test_the_racecheck_stage_runs_the_long_row_gpu_tests_under_compute_sanitizer():
    text = SCRIPT.read_text()
    body = text[text.index("racecheck() {") :]
    body = body[: body.index("\n}")]
    assert "--tool racecheck" in body and '-m gpu -k "${RACECHECK_K:-long_rows and racecheck}"' in body
    # the kernel engineer's test for it exists (a GPU test: it runs only there)
    tests = (ROOT / "tests" / "kernels" / "test_long_rows_gpu.py").read_text()
    assert "def test_racecheck_small_long_row_launch" in tests and "pytest.mark.gpu" in tests


def test_the_script_documents_the_device_call_and_the_wheels():
    text = SCRIPT.read_text()
    assert 'run(command="bash scripts/gpu_check.sh $OUT", carry=[".whl"], timeout_s=600)' in text
    assert "--prepare-wheels" in text and "/.whl/" in (ROOT / ".gitignore").read_text()


STAND_IN = r'''#!/usr/bin/env python3
"""A stand-in for the GPU machine's python3: records each call; pytest and verify succeed; tokennorm bench and
bench_block.py parse their options with the real parsers and write made-up results; the rest runs for real."""
import json, os, sys, time

argv = sys.argv[1:]
with open(os.environ["STAND_IN_LOG"], "a") as f:
    f.write(" ".join(argv) + "\n")
if os.environ.get("STAND_IN_HANG") and os.environ["STAND_IN_HANG"] in " ".join(argv):
    time.sleep(120)
if argv[:1] == ["-c"]:  # setup's version line
    print("torch (stand-in) triton (stand-in)")
    sys.exit(0)
if argv[:2] == ["-m", "pytest"]:
    print("5 passed in 0.10s")
    sys.exit(0)
if argv[:3] == ["-m", "tokennorm", "verify"]:
    sys.exit(0)
if argv[:3] == ["-m", "tokennorm", "bench"]:
    from tokennorm.cli import build_parser
    from tokennorm.tools.bench.cases import OPS
    args = build_parser(argv[2:]).parse_args(argv[2:])  # exits 2 on a bad option
    if args.json:
        results = []
        for op in args.ops:
            for d in args.dirs:
                for dt in args.dtypes:
                    for n in args.sizes or ():
                        for impl in args.impls:
                            us = {"tokennorm": 100.0, "torch": 90.0 if n == 1024 else 120.0}.get(impl, 110.0)
                            results.append(dict(
                                impl=impl, op=op, direction=d, dtype=dt, m=2**27 // n, n=n, kind="throughput",
                                bytes=4 * 2**27, median_us=us, p20_us=us, p80_us=us, gbps=5000.0, copy_gbps=4300.0,
                                fraction_of_copy=430.0 / us, host_us=10.0, host_p20_us=10.0, host_p80_us=10.0,
                                method="graph", input_sets=1, flags=[]))
        env = dict(device="cuda", device_name="NVIDIA H200", capability=[9, 0], torch="2.11", triton="3.6",
                   date="2026-12-01T00:00:00+00:00", tokennorm="0.1.0", python="3.12")
        with open(args.json, "w") as f:
            json.dump(dict(environment=env, notes=[], warnings=[], copies=[], results=results), f)
    sys.exit(0)
if argv and argv[0].endswith("bench_block.py"):
    import argparse
    i = argv.index("--json")
    rows = [dict(d_model=4096, norm="rmsnorm", mode="eager", impl=impl, tokens=8192, median_ms=ms, error=None)
            for impl, ms in (("torch", 2.0), ("tokennorm", 1.6))]
    with open(argv[i + 1], "w") as f:
        json.dump(dict(rows=rows), f)
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *argv])
'''


def _run(tmp_path, *options, env=None):
    stand_in = tmp_path / "python3"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    sanitizer = bin_dir / "compute-sanitizer"  # a race checker that finds nothing: runs the command after its options
    sanitizer.write_text('#!/usr/bin/env bash\nwhile [ "$1" != "$GPU_CHECK_PYTHON" ]; do shift; done\nexec "$@"\n')
    sanitizer.chmod(0o755)
    out = tmp_path / "out"
    full_env = dict(
        os.environ,
        GPU_CHECK_PYTHON=str(stand_in),
        STAND_IN_LOG=str(tmp_path / "calls.log"),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        TMPDIR=str(tmp_path),
        TOKENNORM_CACHE_DIR=str(tmp_path),
    )
    full_env.pop("TRITON_INTERPRET", None)
    full_env.update(env or {})
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out), *options], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300
    )
    return result, out


def _stages(out):
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = tar.getnames()
        text = tar.extractfile("./stages.tsv").read().decode()
    return [line.split("\t") for line in text.splitlines()], names


@pytest.mark.slow
def test_a_whole_run_through_a_stand_in_python(tmp_path):
    result, out = _run(tmp_path, "--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(out)) == ["gpu_check.tar.gz", "summary.json", "summary.txt"]  # ≤ 8 files come back
    stages, names = _stages(out)
    assert [s[0] for s in stages] == QUICK_ORDER and {s[1] for s in stages} == {"ok"}
    for expected in (
        "./tests-gpu.log",
        "./anchor-bf16.json",
        "./latency.json",
        "./block-eager.json",
        "./dispatch-table.json",
        "./summary.txt",
    ):
        assert expected in names
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == QUICK_ORDER
    # the anchor's made-up times: torch faster at 1K, so the table sends those shapes to torch
    assert {(e["op"], e["n"]) for e in summary["dispatch_to_torch"]} == {
        ("layer_norm", 1024),
        ("rms_norm", 1024),
        ("add_layer_norm", 1024),
    }
    # the short table is printed last
    tail = result.stdout[result.stdout.index("=== done") :]
    assert "stage          status" in tail and "dispatch table: 6 of 24 shapes go to torch" in tail
    assert "d_model 4096  rmsnorm   eager   torch 2.0  tokennorm 1.6  (1.25×)" in tail
    calls = (tmp_path / "calls.log").read_text()
    assert "-m pytest -q -p no:cacheprovider -x -m gpu -k long_rows and racecheck tests/kernels" in calls


@pytest.mark.slow
def test_a_stage_that_hangs_is_stopped_at_its_budget_and_the_deadline_holds(tmp_path):
    # 22 s in all, 15 of them kept for the summary: the hanging first stage gets what setup left of 7 s
    result, out = _run(tmp_path, "--quick", env={"STAND_IN_HANG": "-m gpu -n 4", "GPU_CHECK_TOTAL_S": "22"})
    assert result.returncode == 1  # not every stage ended well
    stages, _ = _stages(out)
    assert stages[0][:2] == ["tests-gpu", "timeout"] and int(stages[0][2]) <= 7 + 2
    assert all(s[1] == "skipped" and s[4] == "no time left" for s in stages[1:])
    assert (out / "summary.txt").read_text().count("no time left") == len(QUICK_ORDER) - 1
