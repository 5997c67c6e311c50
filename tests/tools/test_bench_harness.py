"""The benchmark's timing harness with made-up times (the clock itself needs a GPU): interleaved rounds, statistics,
failures kept to their implementation, input sets against the L2, the profiler's kernel sum, and what a run does
with numbers that cannot be true (issue 14, item 13: a busy CPU gave a copy baseline of 0.032 GB/s and
"× copy 1065" without a word)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from fake_timer import FakeTimer

from tokennorm.cli import main
from tokennorm.tools.bench import report, runner
from tokennorm.tools.bench.cases import OPS, Case, Sweep
from tokennorm.tools.bench.implementations import IMPLEMENTATIONS
from tokennorm.tools.bench.timing import (
    Budget,
    Measurement,
    Workload,
    kernel_seconds,
    measure_interleaved,
    rotated,
    summarize,
)

BUDGET = Budget(rounds=5, warmup_calls=0, sample_seconds=0.0, min_calls=1, max_calls=1, host_burst_calls=1)
SWEEP = Sweep(("ln",), ("fwd",), (torch.float32,), (256,), mn=2**14)  # 64 rows of 256: 128 KB moved
IMPLS = [IMPLEMENTATIONS["tokennorm"], IMPLEMENTATIONS["torch"]]


def _works(*names):
    calls = {name: [] for name in names}
    return {name: Workload([lambda name=name: calls[name].append(1)], name) for name in names}, calls


def test_rounds_interleave_every_workload_in_a_rotated_order():
    timer = FakeTimer(lambda name, case, i: 1.0)
    works, calls = _works("a", "b", "c")
    measure_interleaved(works, timer, Budget(rounds=3, warmup_calls=0))
    assert timer.order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert rotated(["a", "b"], 3) == ["b", "a"] and rotated([], 2) == []
    assert all(calls[n] for n in "abc")  # each real call ran (host bursts, and the fake's one call)


def test_each_number_is_the_median_and_percentiles_of_its_samples():
    samples = {"a": [5.0, 1.0, 4.0, 2.0, 3.0], "b": [10.0] * 5}
    timer = FakeTimer(lambda name, case, i: samples[name][i], host=lambda name, case, i: 0.5)
    works, _ = _works("a", "b")
    out = measure_interleaved(works, timer, BUDGET)
    assert isinstance(out["a"], Measurement) and out["a"].device == summarize(samples["a"])
    assert (out["a"].device.median, out["a"].device.p20, out["a"].device.p80) == (3.0, 1.8, 4.2)
    assert out["b"].device.spread == 0.0 and out["a"].host.median == 0.5 and out["a"].method == "fake"


def test_a_failing_workload_gets_its_error_and_the_others_their_numbers():
    def seconds(name, case, i):
        if name == "late" and i == 2:
            raise RuntimeError("lost the device")
        return 1.0

    timer = FakeTimer(seconds)
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
def test_input_sets_exceed_the_l2_twice_at_most_sixteen(m, n, sets):
    case = Case(OPS["ln"], "fwd", torch.bfloat16, m, n)  # 2·M·N·2 bytes against 2 × 60 MB
    assert runner.input_sets(case, FakeTimer(lambda *a: 1.0, l2_bytes=60 * 2**20)) == sets
    assert runner.input_sets(case, FakeTimer(lambda *a: 1.0)) == 1  # the CPU: no L2 to defeat


def test_rows_rotate_over_their_input_sets(monkeypatch):
    seen = []
    real = runner.checked_calls

    def spy(impl, case, inputs, reference, device):
        seen.append(inputs)
        return real(impl, case, inputs, reference, device)

    monkeypatch.setattr(runner, "checked_calls", spy)
    timer = FakeTimer(lambda *a: 1e-4, l2_bytes=2**20)  # 128 KB per case: 16 sets of distinct inputs
    result = runner.run_sweep(SWEEP, IMPLS, "cpu", BUDGET, timer=timer)
    assert {r.input_sets for r in result.results} == {16}
    assert len(seen[0]) == 16 and len({id(inp.x) for inp in seen[0]}) == 16
    assert not torch.equal(seen[0][0].x, seen[0][1].x)


def _copy_slow(name, case, i):
    """A copy of 128 KB taking 4 ms (0.03 GB/s, the issue's busy CPU); the ops 50 µs."""
    return 4e-3 if name == "copy" else 5e-5


def test_an_implausible_copy_baseline_withholds_every_fraction_and_says_so():
    result = runner.run_sweep(SWEEP, IMPLS, "cpu", BUDGET, timer=FakeTimer(_copy_slow))
    assert [r.fraction_of_copy for r in result.results] == [None, None]
    assert all(r.copy_gbps == pytest.approx(0.032, rel=0.05) for r in result.results)
    assert any(f.startswith("implausible copy baseline") for f in result.copies[0].flags)
    assert any("copy baselines are implausible" in w and "busy" in w for w in result.warnings)
    md = report.markdown(result)
    assert "Warnings:" in md and "(–)" in md


def test_noisy_rows_and_faster_than_copy_rows_are_flagged():
    def seconds(name, case, i):
        if name == "copy":
            return 1e-4
        if name == "torch":
            return 1e-5  # 10× faster than a copy of the same bytes: impossible
        return 1e-4 * (1 + 2 * (i % 2))  # tokennorm: samples 1×, 3×, 1×, 3×, 1× — p20–p80 spans 200 %

    result = runner.run_sweep(SWEEP, IMPLS, "cpu", BUDGET, timer=FakeTimer(seconds))
    rows = {r.impl: r for r in result.results}
    assert any(f.startswith("noisy") for f in rows["tokennorm"].flags)
    assert any(f.startswith("implausible") for f in rows["torch"].flags) and rows["torch"].fraction_of_copy > 9
    assert any("noisy" in w for w in result.warnings) and any("more than 1.5× copy" in w for w in result.warnings)


def test_the_command_prints_the_warnings_and_marks_the_rows(monkeypatch, capsys):
    monkeypatch.setattr(runner, "default_timer", lambda device: FakeTimer(_copy_slow))
    code = main(
        [
            "bench",
            "--device",
            "cpu",
            "--impls",
            "tokennorm,torch",
            "--ops",
            "ln",
            "--dirs",
            "fwd",
            "--dtypes",
            "fp32",
            "--sizes",
            "256",
            "--mn",
            "16K",
            "--latency-rows",
            "none",
            "--rounds",
            "3",
        ]
    )
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
        args = [
            "bench",
            "--device",
            "cpu",
            "--impls",
            "torch",
            "--ops",
            "ln",
            "--dirs",
            "fwd",
            "--dtypes",
            "fp32",
            "--sizes",
            "64",
            "--mn",
            "256",
            "--latency-rows",
            "none",
            "--rounds",
            "2",
        ]
        assert main(args) == 0
        assert main(args + ["--threads", "2"]) == 0
        assert torch.get_num_threads() == 2  # given back
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]


# ---------------------------------------------------------------------------------------- issue 14, item 11

TINY = [
    "bench",
    "--device",
    "cpu",
    "--impls",
    "torch",
    "--ops",
    "ln",
    "--dirs",
    "fwd",
    "--dtypes",
    "fp32",
    "--sizes",
    "64",
    "--mn",
    "256",
    "--latency-rows",
    "none",
    "--rounds",
    "2",
]


def test_outputs_into_a_missing_folder_are_written_there(tmp_path):
    out = tmp_path / "not" / "yet"
    paths = {k: out / f"b.{k}" for k in ("json", "csv", "md")}
    assert main(TINY + ["--json", str(paths["json"]), "--csv", str(paths["csv"]), "--markdown", str(paths["md"])]) == 0
    assert json.loads(paths["json"].read_text())["results"][0]["impl"] == "torch"
    assert paths["csv"].read_text().startswith("impl,") and paths["md"].read_text().startswith("Device:")


def test_json_dash_prints_the_json_alone_on_stdout(capsys):
    assert main(TINY + ["--json", "-"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # nothing but the JSON
    assert doc["results"][0]["op"] == "ln" and "throughput" in captured.err


@pytest.mark.parametrize(
    ("option", "where", "message"),
    [
        ("--plot", "file/plot.png", "cannot create its folder"),
        ("--json", "folder", "is a folder"),
        ("--csv", "-", "only --json can be written to standard output"),
    ],
)
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


def test_a_stopped_run_keeps_the_cases_it_finished(monkeypatch, tmp_path):
    def seconds(name, case, i):
        if case.n == 128:  # the second case: the run is stopped (a timeout's SIGINT) while measuring it
            raise KeyboardInterrupt
        return 1e-4

    monkeypatch.setattr(runner, "default_timer", lambda device: FakeTimer(seconds))
    path = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        main(
            TINY[:-8]
            + ["--sizes", "64,128", "--mn", "256", "--latency-rows", "none", "--rounds", "2", "--json", str(path)]
        )
    doc = json.loads(path.read_text())
    assert [(r["n"], r["impl"]) for r in doc["results"]] == [(64, "torch")]


# ------------------------------------------------------------------------ the CUDA timer, on a stand-in device


class StandInCuda:
    """torch.cuda as GraphTimer uses it, over a virtual device clock that the timed calls advance: capture runs
    the calls without device time, a replay adds what they took, events read the clock."""

    def __init__(self, capture_fails: bool = False) -> None:
        self.now, self.capture_fails, self.replays = 0.0, capture_fails, 0

    def current_device(self):
        return 0

    def get_device_properties(self, device):
        return SimpleNamespace(L2_cache_size=2**20)

    def synchronize(self, device=None):
        pass

    def Stream(self, device=None):  # noqa: N802 - torch's name
        return SimpleNamespace(wait_stream=lambda other: None)

    current_stream = Stream

    def stream(self, s):
        import contextlib

        return contextlib.nullcontext()

    def Event(self, enable_timing):  # noqa: N802
        clock = self

        class Event:
            def record(self):
                self.t = clock.now

            def synchronize(self):
                pass

            def elapsed_time(self, end):
                return (end.t - self.t) * 1e3

        return Event()

    def CUDAGraph(self):  # noqa: N802
        clock = self

        class Graph:
            def replay(self):
                clock.now += self.duration
                clock.replays += 1

        return Graph()

    def graph(self, graph):
        import contextlib

        @contextlib.contextmanager
        def capture():
            start = self.now
            yield
            if self.capture_fails:
                raise RuntimeError("operation not permitted when stream is capturing")
            graph.duration, self.now = self.now - start, start

        return capture()

    def profile(self):
        from torch.autograd import DeviceType

        clock = self

        class Session:
            def __enter__(self):
                self.start = clock.now
                return self

            def __exit__(self, *exc):
                self.us = (clock.now - self.start) * 1e6

            def events(self):
                return [
                    SimpleNamespace(
                        device_type=DeviceType.CUDA, time_range=SimpleNamespace(elapsed_us=lambda: self.us)
                    ),
                    SimpleNamespace(device_type=DeviceType.CPU, time_range=None),
                ]

        return Session()


def _graph_timer(cuda, **kw):
    from tokennorm.tools.bench.timing import GraphTimer

    return GraphTimer("cpu", cuda=cuda, profile=cuda.profile, **kw)  # the flush buffer lives on the CPU here


@pytest.mark.parametrize(
    ("capture_fails", "force_profiler", "method"),
    [(False, False, "graph"), (True, False, "profiler"), (False, True, "profiler")],
)
def test_the_cuda_timer_divides_a_sample_by_its_calls(capture_fails, force_profiler, method):
    cuda = StandInCuda(capture_fails)
    calls = []

    def call():
        calls.append(1)
        cuda.now += 25e-6  # each call: 25 µs of device time

    timer = _graph_timer(cuda, force_profiler=force_profiler)
    assert timer.l2_bytes == 2**20 and timer._flush_buffer.numel() * 4 == 2 * 2**20
    budget = Budget(rounds=4, warmup_calls=3, sample_seconds=1e-3, max_calls=200)
    out = measure_interleaved({"op": Workload([call, call], "op")}, timer, budget)["op"]
    assert out.method == method and out.calls_per_sample == 40  # 1 ms of 25 µs calls
    assert out.device.median == pytest.approx(25e-6) and out.device.samples == 4
    if method == "graph":
        assert cuda.replays == 1 + 4  # the upload, then one replay per sample: the calls ran only when captured
        assert len(calls) == 3 + 1 + 40 + 4 * budget.host_burst_calls
    assert out.host.median > 0  # the wall clock of eager bursts


def test_gpu_ms_is_the_harness_median_in_milliseconds(monkeypatch):
    from tokennorm.tools.bench import timing

    cuda = StandInCuda()
    monkeypatch.setattr(timing, "default_timer", lambda device: _graph_timer(cuda))

    def call():
        cuda.now += 0.5e-3

    assert timing.gpu_ms(call) == pytest.approx(0.5)


def test_a_clock_that_saw_nothing_gives_a_note_not_a_division_by_zero():
    result = runner.run_sweep(
        SWEEP, IMPLS, "cpu", BUDGET, timer=FakeTimer(lambda name, case, i: 0.0 if name == "torch" else 1e-4)
    )
    assert [r.impl for r in result.results] == ["tokennorm"]
    assert "torch: failed: RuntimeError: no device time measured (fake) (1 case)" in result.notes


def test_a_noisy_host_time_flags_the_row_too():
    from tokennorm.tools.bench.timing import Stats

    assert runner.plausibility(Stats(1.0, 1.0, 1.0), 0.5, Stats(1.0, 0.9, 1.1)) == ()
    assert runner.plausibility(Stats(1.0, 1.0, 1.0), 0.5, Stats(1.0, 0.5, 2.0)) == (
        "noisy host time: p20–p80 spans 150% of the median",
    )
