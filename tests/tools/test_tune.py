"""``tokennorm tune``: the decision rule, a whole tuning run with made-up times on the CPU (the table written to the
user's cache folder and then followed by dispatch), ``--show``, ``--from-bench``, and its errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from fake_timer import FakeTimer

from tokennorm import dispatch
from tokennorm.cli import main
from tokennorm.tools.bench import runner
from tokennorm.tools.bench.timing import Budget
from tokennorm.tools.tune import cli as tune_cli
from tokennorm.tools.tune import measure

FAKE_GPU = dispatch.DeviceIdentity("Fake GPU 9000", (9, 0))
GRID = measure.Grid(ops=("layer_norm", "add_layer_norm"), dtypes=("fp32",), ns=(64, 256), mn=1024)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv(dispatch.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(dispatch, "device_identity", lambda index: FAKE_GPU)
    monkeypatch.setattr(
        measure,
        "BUDGET",
        Budget(rounds=3, warmup_calls=0, sample_seconds=0.0, min_calls=1, max_calls=1, host_burst_calls=1),
    )
    dispatch.reload()
    yield
    dispatch.reload()


def made_up(name, case, i):
    """Microseconds per call: torch 10 % faster for LayerNorm inference at N = 64, 1 % faster (a tie) at 256,
    tokennorm faster everywhere else; the copy at a plausible speed."""
    if name == "copy":
        return 1e-6
    torch_faster = case.op.key == "ln" and case.direction == "fwd"
    ours = 10e-6
    theirs = {64: 9e-6, 256: 9.9e-6}[case.n] if torch_faster else 12e-6
    return ours if name == "tokennorm" else theirs


@pytest.mark.parametrize(
    ("ours", "theirs", "use"),
    [
        (10.0, 9.0, "torch"),
        (10.0, 9.9, "tokennorm"),
        (10.0, 12.0, "tokennorm"),
        (None, 5.0, "torch"),
        (10.0, None, "tokennorm"),
        (None, None, None),
    ],
)
def test_torch_is_chosen_only_when_clearly_faster(ours, theirs, use):
    assert measure.decide(ours, theirs) == use


def _args(**kw):
    base = dict(show=False, device=None, quick=True, dtypes=None, sizes=None, out=None, from_bench=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_a_tuning_run_writes_the_table_that_auto_then_follows(monkeypatch, capsys):
    from rich.console import Console

    monkeypatch.setattr(measure, "QUICK_GRID", GRID)
    code = tune_cli.measure_and_write(_args(), "cpu", FAKE_GPU, FakeTimer(made_up), Console(width=150), "test")
    out = capsys.readouterr().out
    assert code == 0
    path = dispatch.cache_path(FAKE_GPU)
    table = dispatch.load_table(path)
    assert table.device == FAKE_GPU and table.provenance["command"] == "test" and table.provenance["torch"]
    uses = {(e["op"], e["direction"], e["n"]): e["use"] for e in table.entries}
    assert len(uses) == GRID.size == 8
    assert uses.pop(("layer_norm", "inference", 64)) == "torch"
    assert set(uses.values()) == {"tokennorm"}
    lost = next(e for e in table.entries if e["use"] == "torch")
    assert (lost["tokennorm_us"], lost["torch_us"]) == (10.0, 9.0) and lost["tokennorm_fraction_of_copy"] > 0
    # auto follows it from now on (the table is read again after a tune)
    assert dispatch.choice(0, "layer_norm", torch.float32, 64, training=False) == "torch"
    assert dispatch.choice(0, "layer_norm", torch.float32, 256, training=False) == "tokennorm"
    assert dispatch.choice(0, "layer_norm", torch.float32, 64, training=True) == "tokennorm"
    assert "1 of 8 shapes go to torch" in out
    assert "layer_norm inference fp32 N=64: 10.0 µs vs torch 9.0 µs (1.11×)" in out
    assert f"wrote {path}" in out


def test_show_prints_the_table_in_use_and_its_origin(monkeypatch, capsys):
    from rich.console import Console

    monkeypatch.setattr(measure, "QUICK_GRID", GRID)
    tune_cli.measure_and_write(_args(), "cpu", FAKE_GPU, FakeTimer(made_up), Console(width=150), "test")
    capsys.readouterr()
    assert main(["tune", "--show"]) == 0  # no CUDA here: the tables found, and the shipped file's reason
    out = capsys.readouterr().out
    assert "No CUDA device here" in out and "Fake GPU 9000 (sm_90)" in out and "torch 0.90×" in out
    assert "Shipped tables: none" in out and str(dispatch.cache_dir()) in out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["tune", "--show"]) == 0
    out = capsys.readouterr().out
    assert "cuda:0 Fake GPU 9000 (sm_90): auto follows this table" in out


def test_show_on_a_gpu_without_a_table_says_ours_everywhere(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["tune", "--show"]) == 0
    out = capsys.readouterr().out
    assert "no measured table: auto runs tokennorm's kernels for every shape" in out


def test_tune_needs_a_gpu_and_says_so_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the message on a machine without CUDA")
    assert main(["tune", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokennorm tune: needs a CUDA device") and err.count("\n") == 1


def _bench_json(monkeypatch, tmp_path, capsys):
    """A benchmark run on the CPU with made-up times, relabelled as a GPU's."""
    monkeypatch.setattr(runner, "default_timer", lambda device: FakeTimer(made_up))
    path = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--device",
                "cpu",
                "--impls",
                "tokennorm,torch",
                "--ops",
                "ln,addnorm-drop",
                "--dirs",
                "fwd,fwdbwd",
                "--dtypes",
                "fp32",
                "--sizes",
                "64,256",
                "--mn",
                "1K",
                "--latency-rows",
                "1",
                "--latency-n",
                "64",
                "--rounds",
                "2",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    capsys.readouterr()
    doc = json.loads(path.read_text())
    return path, doc


def test_from_bench_builds_a_table_from_a_gpu_benchmark(monkeypatch, tmp_path, capsys):
    path, doc = _bench_json(monkeypatch, tmp_path, capsys)
    doc["environment"].update(device="cuda", device_name="Fake GPU 9000", capability=[9, 0])
    doc["results"] += [dict(r, impl="liger", median_us=r["median_us"] / 10) for r in doc["results"]]  # not asked
    path.write_text(json.dumps(doc))
    out_path = tmp_path / "tables" / "fake.json"
    assert main(["tune", "--from-bench", str(path), "--out", str(out_path)]) == 0
    table = dispatch.load_table(out_path)
    assert table.device == FAKE_GPU and "--from-bench" in table.provenance["command"]
    # the throughput rows of tokennorm and torch for ops dispatch knows (ln); not liger's, dropout or latency rows
    assert sorted((e["direction"], e["n"], e["use"]) for e in table.entries) == [
        ("inference", 64, "torch"),
        ("inference", 256, "tokennorm"),
        ("training", 64, "tokennorm"),
        ("training", 256, "tokennorm"),
    ]
    assert "1 of 4 shapes go to torch" in capsys.readouterr().out


def test_from_bench_refuses_cpu_results_and_needs_out(monkeypatch, tmp_path, capsys):
    path, _ = _bench_json(monkeypatch, tmp_path, capsys)
    assert main(["tune", "--from-bench", str(path), "--out", str(tmp_path / "t.json")]) == 2
    assert "must come from one CUDA GPU" in capsys.readouterr().err
    assert main(["tune", "--from-bench", str(path)]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert main(["tune", "--from-bench", str(tmp_path / "missing.json"), "--out", str(tmp_path / "t.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
