"""``tokennorm bench``: byte formulas, sweep shapes, a tiny CPU sweep run in-process with its JSON/CSV/PNG,
skipped and wrong implementations, and argparse errors for bad options. Speed itself is never asserted."""

import csv
import json
import runpy
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokennorm.cli import main
from tokennorm.tools.bench import cli
from tokennorm.tools.bench.cases import OPS, Case, Sweep, bytes_moved, default_sweep
from tokennorm.tools.bench.implementations import IMPLEMENTATIONS, Impl
from tokennorm.tools.bench.runner import run_sweep
from tokennorm.tools.bench.timing import Budget, summarize

ROOT = Path(__file__).resolve().parents[2]

# The fewest bytes, in units of M·N·s, written out from the issue: norm fwd reads x and writes y; fwd+bwd also
# reads x and dy and writes dx; Add & Norm fwd reads x, r and writes y, h; its backward reads h, dy, dh, writes dx.
EXPECTED_MULTIPLE = {
    ("ln", "fwd"): 2,
    ("ln", "fwdbwd"): 5,
    ("rms", "fwd"): 2,
    ("rms", "fwdbwd"): 5,
    ("addnorm", "fwd"): 4,
    ("addnorm", "fwdbwd"): 8,
    ("addnorm-drop", "fwd"): 4,
    ("addnorm-drop", "fwdbwd"): 8,
    ("addrms", "fwd"): 4,
    ("addrms", "fwdbwd"): 8,
    ("addrms-drop", "fwd"): 4,
    ("addrms-drop", "fwdbwd"): 8,
    # issue 18: AdaLN-Zero as Add & Norm, its backward also reading x and writing d(residual) apart from dx;
    # DyT and Add & DyT as the norm and Add & Norm; channels-first LayerNorm as LayerNorm
    ("adaln", "fwd"): 4,
    ("adaln", "fwdbwd"): 10,
    ("dyt", "fwd"): 2,
    ("dyt", "fwdbwd"): 5,
    ("adddyt", "fwd"): 4,
    ("adddyt", "fwdbwd"): 8,
    ("cfln", "fwd"): 2,
    ("cfln", "fwdbwd"): 5,
}
ELEMENT_SIZE = {torch.bfloat16: 2, torch.float16: 2, torch.float32: 4}

# A few calls per measurement: these tests check what is reported, not how fast anything is.
TINY_BUDGET = Budget(rounds=3, warmup_calls=1, sample_seconds=0.0, min_calls=1, max_calls=1, host_burst_calls=2)
TINY_SWEEP = Sweep(("ln",), ("fwd",), (torch.float32,), (64,), mn=256)


@pytest.mark.parametrize(("op", "direction"), sorted(EXPECTED_MULTIPLE))
@pytest.mark.parametrize("dtype", sorted(ELEMENT_SIZE, key=str))
def test_bytes_are_the_fewest_the_op_must_move(op, direction, dtype):
    m, n = 3, 7
    expected = EXPECTED_MULTIPLE[(op, direction)] * m * n * ELEMENT_SIZE[dtype]
    assert bytes_moved(OPS[op], direction, m, n, dtype) == expected
    assert Case(OPS[op], direction, dtype, m, n).bytes == expected


def test_every_op_has_a_byte_formula_here():
    assert set(EXPECTED_MULTIPLE) == {(k, d) for k in OPS for d in ("fwd", "fwdbwd")}


def test_gpu_sweep_is_the_issues_and_cpu_sweep_is_small():
    gpu = default_sweep("cuda", quick=False)
    throughput = [c for c in gpu.cases() if c.kind == "throughput"]
    assert sorted({c.n for c in throughput}) == [2**k for k in (10, 11, 12, 13, 14, 15, 16, 17, 18, 20)]
    assert {c.m * c.n for c in throughput} == {2**27}
    assert {str(c.dtype) for c in throughput} == {"torch.bfloat16", "torch.float16", "torch.float32"}
    assert {(c.op.key, c.direction) for c in throughput} >= {("ln", "fwd"), ("rms", "fwdbwd"), ("addnorm-drop", "fwd")}
    latency = [c for c in gpu.cases() if c.kind == "latency"]
    assert {(c.m, c.n, c.direction) for c in latency} == {(1, 4096, "fwd"), (4096, 4096, "fwd")}
    cpu = default_sweep("cpu", quick=False)
    assert max(c.m * c.n for c in cpu.cases()) <= 2**18


def test_summary_is_median_and_20_80_percentiles():
    stats = summarize([float(v) for v in (11, 2, 9, 4, 6, 1, 8, 3, 10, 5, 7)])
    assert (stats.median, stats.p20, stats.p80) == (6.0, 3.0, 9.0)


@pytest.mark.parametrize(("text", "value"), [("4096", 4096), ("4K", 4096), ("1m", 2**20), ("2^27", 2**27)])
def test_counts_parse(text, value):
    assert cli.parse_count(text) == value


def test_tiny_cpu_sweep_reports_consistent_numbers_and_writes_outputs(tmp_path, capsys):
    paths = {kind: tmp_path / f"bench.{kind}" for kind in ("json", "csv", "png")}
    code = main(
        [
            "bench",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--quick",
            "--impls",
            "tokennorm,torch",
            "--ops",
            "ln,addnorm",
            "--dtypes",
            "fp32,bf16",
            "--sizes",
            "64,256",
            "--mn",
            "1K",
            "--latency-rows",
            "1",
            "--latency-n",
            "256",
            "--json",
            str(paths["json"]),
            "--csv",
            str(paths["csv"]),
            "--plot",
            str(paths["png"]),
        ]
    )
    assert code == 0
    assert "throughput" in capsys.readouterr().out

    doc = json.loads(paths["json"].read_text())
    env = doc["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["date"]
    results = doc["results"]
    # 2 ops × 2 directions × 2 dtypes × 2 sizes, plus 2 ops × 2 dtypes latency rows, for each implementation.
    assert len(results) == 2 * (2 * 2 * 2 * 2 + 2 * 2)
    assert {r["impl"] for r in results} == {"tokennorm", "torch"}
    copies = {(c["op"], c["direction"], c["dtype"], c["m"], c["n"]): c for c in doc["copies"]}
    assert len(copies) == len(doc["copies"]) == 2 * 2 * 2 * 2 + 2 * 2  # one per case
    for r in results:
        multiple = EXPECTED_MULTIPLE[(r["op"], r["direction"])]
        size = 4 if r["dtype"] == "fp32" else 2
        assert r["bytes"] == multiple * r["m"] * r["n"] * size
        assert r["m"] == (1024 // r["n"] if r["kind"] == "throughput" else 1)
        assert r["p20_us"] <= r["median_us"] <= r["p80_us"]
        assert r["host_p20_us"] <= r["host_us"] <= r["host_p80_us"] and r["host_us"] > 0
        assert r["method"] == "wall" and r["input_sets"] == 1
        assert r["gbps"] == pytest.approx(r["bytes"] / (r["median_us"] * 1e-6) / 1e9)
        # The baseline is a copy of the same bytes, measured with the same case.
        copy = copies[(r["op"], r["direction"], r["dtype"], r["m"], r["n"])]
        assert copy["bytes"] == r["bytes"]
        assert r["copy_gbps"] == copy["gbps"]
        assert copy["gbps"] == pytest.approx(copy["bytes"] / (copy["median_us"] * 1e-6) / 1e9)
        if r["fraction_of_copy"] is not None:
            assert r["fraction_of_copy"] == pytest.approx(r["gbps"] / copy["gbps"])
        else:  # withheld only when the baseline was implausible
            assert any(f.startswith("implausible") for f in copy["flags"])

    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["impl"], row["op"], row["n"]) for row in rows] == [(r["impl"], r["op"], str(r["n"])) for r in results]
    assert [row["fraction_of_copy"] for row in rows] == [
        "" if r["fraction_of_copy"] is None else str(r["fraction_of_copy"]) for r in results
    ]

    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    image = matplotlib.image.imread(paths["png"])
    assert image.shape[0] > 300 and image.shape[1] > 300 and np.std(image) > 0.01  # drawn, not blank


def test_absent_and_cuda_only_peers_are_skipped_with_a_note():
    never_built = lambda case: pytest.fail("a peer that is not installed must not be built")  # noqa: E731
    impls = [
        IMPLEMENTATIONS["torch"],
        Impl("ghost", never_built, requires=("tokennorm_no_such_peer_module",), package="ghost-kernels"),
        Impl("gpu-only", IMPLEMENTATIONS["torch"].build, cuda_only=True),
        IMPLEMENTATIONS["liger"],
    ]
    result = run_sweep(TINY_SWEEP, impls, "cpu", TINY_BUDGET)
    assert [r.impl for r in result.results] == ["torch"]
    assert "ghost: not installed (pip install ghost-kernels) (1 case)" in result.notes
    assert "gpu-only: needs a CUDA device (1 case)" in result.notes
    assert any(note.startswith("liger: ") for note in result.notes)


def test_wrong_or_failing_implementations_are_not_timed():
    def wrong_eps(case):  # ε = 0.1 instead of 1e-5: a plausible bug, about 5% off
        return lambda x, r, w, b: F.layer_norm(x, (case.n,), w, b, 0.1)

    def raises(case):
        def fn(x, r, w, b):
            raise RuntimeError("boom")

        return fn

    impls = [Impl("wrong", wrong_eps), Impl("raises", raises), IMPLEMENTATIONS["tokennorm"]]
    result = run_sweep(TINY_SWEEP, impls, "cpu", TINY_BUDGET)
    assert [r.impl for r in result.results] == ["tokennorm"]
    assert any(n.startswith("wrong: wrong output: max |y − torch|") for n in result.notes), result.notes
    assert "raises: failed: RuntimeError: boom (1 case)" in result.notes


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--dtypes", "fp8"),
        ("--ops", "ln,layernorm2"),
        ("--sizes", "abc"),
        ("--sizes", "0"),
        ("--mn", "-5"),
        ("--dirs", "bwd"),
        ("--impls", "nosuch"),
        ("--latency-rows", "x"),
        ("--device", "tpu"),
    ],
)
def test_bad_option_values_are_argparse_errors(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", option, value])
    assert exc.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_script_runs_the_same_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_norms.py", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "benchmarks" / "bench_norms.py"), run_name="__main__")
    assert exc.value.code == 0
    assert "--latency-rows" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.interpret
def test_tune_kernels_checks_and_records_every_candidate(monkeypatch):
    """benchmarks/tune_kernels.py end to end on a tiny problem, kernels in the interpreter, timer stubbed: every
    candidate (chunked, long rows, segment) computes the right answer and gets a row — so a GPU session's
    device time is not lost to a crash in the script."""
    import importlib.util
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("the GPU run is the real one")
    path = Path(__file__).resolve().parent.parent.parent / "benchmarks" / "tune_kernels.py"
    spec = importlib.util.spec_from_file_location("tune_kernels", path)
    tune_kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune_kernels)
    monkeypatch.setattr(tune_kernels, "_time", lambda fn: (fn(), 1.0)[1])
    n = 65536  # long enough for chunked, long-row and segment candidates, one row
    result = tune_kernels.tune(n, torch.float32, False, n, dev="cpu", rounds=1, confirm=1)
    assert result["fwd"] and result["bwd"]
    assert all(e["max_err"] < 1e-3 for e in result["fwd"] + result["bwd"]), "a candidate computed a wrong answer"
    modes = {(d, e["cfg"]["mode"]) for d in ("fwd", "bwd") for e in result[d]}
    assert {("fwd", "chunked"), ("fwd", "long_rows"), ("bwd", "long_rows"), ("bwd", "segment")} <= modes
    # tokennorm's own defaults are always among the measured, with the bandwidth on the bytes they move
    from tokennorm.kernels import config as kconfig

    facts = kconfig.device_facts(torch.device("cpu"))
    default_fwd, default_bwd = kconfig.forward_config(n, 4, 4, facts), kconfig.backward_config(n, 4, facts)
    defaults = [e for e in result["fwd"] if e["cfg"] == default_fwd.__dict__]
    defaults += [e for e in result["bwd"] if e["cfg"] == default_bwd.__dict__]
    assert all(e["moved_frac"] >= e["frac"] for e in result["fwd"] + result["bwd"])
    # the fastest and the defaults were timed again, interleaved with the copy
    assert len(result["copy_ms_samples"]) == 2 and len(defaults) == 2
    assert all(len(e["ms_samples"]) == 2 for e in defaults)
    from tokennorm.tools.kernel_report import traffic  # the traffic report reads what the run recorded

    assert len(traffic.analyse([result], sms=4)) == len(result["fwd"]) + len(result["bwd"])
