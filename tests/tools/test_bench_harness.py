"""The benchmark's timing harness with made-up times (the clock itself needs a GPU): interleaved rounds, statistics,
failures kept to their implementation, input sets against the L2, the profiler's kernel sum, and what a run does
with numbers that cannot be true (issue 14, item 13: a busy CPU gave a copy baseline of 0.032 GB/s and
"× copy 1065" without a word)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tokennorm.cli import main
from tokennorm.tools.bench import report, runner
from tokennorm.tools.bench.cases import OPS, Case, Sweep
from tokennorm.tools.bench.implementations import IMPLEMENTATIONS
from tokennorm.tools.bench.timing import (Budget, Measurement, Workload, kernel_seconds, measure_interleaved,
                                          rotated, summarize)

BUDGET = Budget(rounds=5, warmup_calls=0, sample_seconds=0.0, min_calls=1, max_calls=1, host_burst_calls=1)
SWEEP = Sweep(("ln",), ("fwd",), (torch.float32,), (256,), mn=2**14)  # 64 rows of 256: 128 KB moved
IMPLS = [IMPLEMENTATIONS["tokennorm"], IMPLEMENTATIONS["torch"]]


def _works(*names):
    calls = {name: [] for name in names}
    return {name: Workload([lambda name=name: calls[name].append(1)], name) for name in names}, calls


def test_rounds_interleave_every_workload_in_a_rotated_order(fake_timer):
    timer = fake_timer(lambda name, case, i: 1.0)
    works, calls = _works("a", "b", "c")
    measure_interleaved(works, timer, Budget(rounds=3, warmup_calls=0))
    assert timer.order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert rotated(["a", "b"], 3) == ["b", "a"] and rotated([], 2) == []
    assert all(calls[n] for n in "abc")  # each real call ran (host bursts, and the fake's one call)


def test_each_number_is_the_median_and_percentiles_of_its_samples(fake_timer):
    samples = {"a": [5.0, 1.0, 4.0, 2.0, 3.0], "b": [10.0] * 5}
    timer = fake_timer(lambda name, case, i: samples[name][i], host=lambda name, case, i: 0.5)
    works, _ = _works("a", "b")
    out = measure_interleaved(works, timer, BUDGET)
    assert isinstance(out["a"], Measurement) and out["a"].device == summarize(samples["a"])
    assert (out["a"].device.median, out["a"].device.p20, out["a"].device.p80) == (3.0, 1.8, 4.2)
    assert out["b"].device.spread == 0.0 and out["a"].host.median == 0.5 and out["a"].method == "fake"


def test_a_failing_workload_gets_its_error_and_the_others_their_numbers(fake_timer):
    def seconds(name, case, i):
        if name == "late" and i == 2:
            raise RuntimeError("lost the device")
        return 1.0

    timer = fake_timer(seconds)
    works, _ = _works("ok", "late")
    works["early"] = Workload([lambda: 1 / 0], "early")
    out = measure_interleaved(works, timer, BUDGET)
    assert isinstance(out["ok"], Measurement) and out["ok"].device.samples == BUDGET.rounds
    assert isinstance(out["early"], ZeroDivisionError)
    assert isinstance(out["late"], RuntimeError)


def test_profiler_time_is_the_device_events_each_counted_once():
    from torch.autograd import DeviceType

    def event(device_type, us):
        return SimpleNamespace(device_type=device_type, time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event(DeviceType.CPU, 100.0), event(DeviceType.CUDA, 30.0), event(DeviceType.CUDA, 12.0)]
    assert kernel_seconds(events) == pytest.approx(42e-6)


@pytest.mark.parametrize(("m", "n", "sets"), [(2**16, 2**12, 1), (1, 4096, 16), (4096, 4096, 2)])
def test_input_sets_exceed_the_l2_twice_at_most_sixteen(fake_timer, m, n, sets):
    case = Case(OPS["ln"], "fwd", torch.bfloat16, m, n)  # 2·M·N·2 bytes against 2 × 60 MB
    assert runner.input_sets(case, fake_timer(lambda *a: 1.0, l2_bytes=60 * 2**20)) == sets
    assert runner.input_sets(case, fake_timer(lambda *a: 1.0)) == 1  # the CPU: no L2 to defeat


def test_rows_rotate_over_their_input_sets(fake_timer, monkeypatch):
    seen = []
    real = runner.checked_calls

    def spy(impl, case, inputs, reference, device):
        seen.append(inputs)
        return real(impl, case, inputs, reference, device)

    monkeypatch.setattr(runner, "checked_calls", spy)
    timer = fake_timer(lambda *a: 1e-4, l2_bytes=2**20)  # 128 KB per case: 16 sets of distinct inputs
    result = runner.run_sweep(SWEEP, IMPLS, "cpu", BUDGET, timer=timer)
    assert {r.input_sets for r in result.results} == {16}
    assert len(seen[0]) == 16 and len({id(inp.x) for inp in seen[0]}) == 16
    assert not torch.equal(seen[0][0].x, seen[0][1].x)


def _copy_slow(name, case, i):
    """A copy of 128 KB taking 4 ms (0.03 GB/s, the issue's busy CPU); the ops 50 µs."""
    return 4e-3 if name == "copy" else 5e-5


def test_an_implausible_copy_baseline_withholds_every_fraction_and_says_so(fake_timer):
    result = runner.run_sweep(SWEEP, IMPLS, "cpu", BUDGET, timer=fake_timer(_copy_slow))
    assert [r.fraction_of_copy for r in result.results] == [None, None]
    assert all(r.copy_gbps == pytest.approx(0.032, rel=0.05) for r in result.results)
    assert any(f.startswith("implausible copy baseline") for f in result.copies[0].flags)
    assert any("copy baselines are implausible" in w and "busy" in w for w in result.warnings)
    md = report.markdown(result)
    assert "Warnings:" in md and "(–)" in md


def test_noisy_rows_and_faster_than_copy_rows_are_flagged(fake_timer):
    def seconds(name, case, i):
        if name == "copy":
            return 1e-4
        if name == "torch":
            return 1e-5  # 10× faster than a copy of the same bytes: impossible
        return 1e-4 * (1 + 2 * (i % 2))  # tokennorm: samples 1×, 3×, 1×, 3×, 1× — p20–p80 spans 200 %

    result = runner.run_sweep(SWEEP, IMPLS, "cpu", BUDGET, timer=fake_timer(seconds))
    rows = {r.impl: r for r in result.results}
    assert any(f.startswith("noisy") for f in rows["tokennorm"].flags)
    assert any(f.startswith("implausible") for f in rows["torch"].flags) and rows["torch"].fraction_of_copy > 9
    assert any("noisy" in w for w in result.warnings) and any("more than 1.5× copy" in w for w in result.warnings)


def test_the_command_prints_the_warnings_and_marks_the_rows(fake_timer, monkeypatch, capsys):
    monkeypatch.setattr(runner, "default_timer", lambda device: fake_timer(_copy_slow))
    code = main(["bench", "--device", "cpu", "--impls", "tokennorm,torch", "--ops", "ln", "--dirs", "fwd",
                 "--dtypes", "fp32", "--sizes", "256", "--mn", "16K", "--latency-rows", "none", "--rounds", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "warning" in out and "implausible" in out
    assert "× copy" in out and "0.00" not in out  # no fraction computed from the implausible baseline


def test_the_cpu_runs_on_one_thread_unless_asked(monkeypatch, capsys):
    seen = []
    real = runner.run_sweep

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_sweep", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = ["bench", "--device", "cpu", "--impls", "torch", "--ops", "ln", "--dirs", "fwd", "--dtypes", "fp32",
                "--sizes", "64", "--mn", "256", "--latency-rows", "none", "--rounds", "2"]
        assert main(args) == 0
        assert main(args + ["--threads", "2"]) == 0
        assert torch.get_num_threads() == 2  # given back
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]


# ---------------------------------------------------------------------------------------- issue 14, item 11

TINY = ["bench", "--device", "cpu", "--impls", "torch", "--ops", "ln", "--dirs", "fwd", "--dtypes", "fp32",
        "--sizes", "64", "--mn", "256", "--latency-rows", "none", "--rounds", "2"]


def test_outputs_into_a_missing_folder_are_written_there(tmp_path):
    out = tmp_path / "not" / "yet"
    paths = {k: out / f"b.{k}" for k in ("json", "csv", "md")}
    assert main(TINY + ["--json", str(paths["json"]), "--csv", str(paths["csv"]),
                        "--markdown", str(paths["md"])]) == 0
    assert json.loads(paths["json"].read_text())["results"][0]["impl"] == "torch"
    assert paths["csv"].read_text().startswith("impl,") and paths["md"].read_text().startswith("Device:")


def test_json_dash_prints_the_json_alone_on_stdout(capsys):
    assert main(TINY + ["--json", "-"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # nothing but the JSON
    assert doc["results"][0]["op"] == "ln" and "throughput" in captured.err


@pytest.mark.parametrize(("option", "where", "message"), [
    ("--plot", "file/plot.png", "cannot create its folder"),
    ("--json", "folder", "is a folder"),
    ("--csv", "-", "only --json can be written to standard output"),
])
def test_unwritable_outputs_fail_before_anything_runs(tmp_path, monkeypatch, capsys, option, where, message):
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: pytest.fail("ran before checking its outputs"))
    path = where if where == "-" else str(tmp_path / where)
    assert main(TINY + [option, path]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_sizes_beyond_memory_fail_before_anything_runs(monkeypatch, capsys):
    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: pytest.fail("ran a case that cannot fit"))
    assert main(TINY[:-8] + ["--sizes", "2^40", "--latency-rows", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokennorm bench: the case ln fwd fp32 1×1099511627776 needs about")
    assert "free on cpu" in err and err.count("\n") == 1


def test_a_stopped_run_keeps_the_cases_it_finished(fake_timer, monkeypatch, tmp_path):
    def seconds(name, case, i):
        if case.n == 128:  # the second case: the run is stopped (a timeout's SIGINT) while measuring it
            raise KeyboardInterrupt
        return 1e-4

    monkeypatch.setattr(runner, "default_timer", lambda device: fake_timer(seconds))
    path = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        main(TINY[:-8] + ["--sizes", "64,128", "--mn", "256", "--latency-rows", "none", "--rounds", "2",
                          "--json", str(path)])
    doc = json.loads(path.read_text())
    assert [(r["n"], r["impl"]) for r in doc["results"]] == [(64, "torch")]
