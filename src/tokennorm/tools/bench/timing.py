"""How time is measured: device time only, every implementation the same way, in interleaved rounds.

On a CUDA device (:class:`GraphTimer`):

* **Device time** — after warm-up (compilation and autotuning stay outside), ``K`` calls are captured back to
  back in one CUDA graph; a sample is one replay timed with CUDA events, divided by ``K``: the kernels and the
  gaps between them, no Python. Before each sample the L2 cache is flushed (a buffer of twice its size is
  written), and the ``K`` calls rotate over input sets whose bytes together exceed the L2 where memory allows
  (the runner makes them), so each call reads from device memory as in a model. An implementation whose call
  cannot be captured (a host synchronization inside it) is timed by the profiler instead: the sum of the
  kernels' own durations per call (``torch.profiler``; no gaps, so slightly less than a replay would give).
* **Host time per call** — its own number: the wall clock of a burst of eager calls issued back to back,
  synchronized before and after the burst, divided by the calls (the Python, dispatch and launch work; a burst
  is too short to fill the launch queue, so device time does not leak in unless the call itself waits for the
  device).

On the CPU (:class:`WallTimer`) a device sample is the wall clock of ``K`` back-to-back calls divided by ``K``
(the data stays in the CPU's caches), and host time is measured as on CUDA.

Rounds are interleaved (:func:`measure_interleaved`): round r takes one sample of every implementation — the
device copy included — in a rotated order, so a change of clocks or neighbours during the measurement hits
them all alike. Each number is the median of its samples with the 20th and 80th percentiles as its spread.
Timers are objects so that tests inject fake ones: only the clock itself is left untested without a GPU.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

import torch


@dataclass(frozen=True)
class Stats:
    """Seconds per call: the median of the samples and their 20th/80th percentiles."""

    median: float
    p20: float
    p80: float
    samples: int = 1

    @property
    def spread(self) -> float:
        """(p80 − p20) / median: 0 for identical samples."""
        return (self.p80 - self.p20) / self.median if self.median > 0 else math.inf


def summarize(samples: Sequence[float]) -> Stats:
    """Median and 20th/80th percentiles (linear interpolation between samples)."""
    if not samples:
        raise ValueError("no samples to summarize")
    if len(samples) == 1:
        return Stats(samples[0], samples[0], samples[0], 1)
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return Stats(statistics.median(samples), deciles[1], deciles[7], len(samples))


@dataclass(frozen=True)
class Budget:
    """How long a measurement runs."""

    rounds: int = 15  # interleaved rounds: samples per implementation
    warmup_calls: int = 3  # eager calls before capture (after the first, checked call)
    sample_seconds: float = 1e-3  # one device sample is about this long: K = sample_seconds / time per call ...
    min_calls: int = 2  # ... but at least this many calls ...
    max_calls: int = 200  # ... and at most this many
    host_burst_calls: int = 10  # eager calls per host-time sample (too few to fill the launch queue)


DEFAULT_BUDGET = Budget()
QUICK_BUDGET = Budget(rounds=7, sample_seconds=5e-4)


@dataclass
class Workload:
    """What one implementation runs: ``calls[i]`` is one call on input set ``i``; the timed calls rotate over
    the sets. ``label`` names it in messages and for fake timers."""

    calls: Sequence[Callable[[], object]]
    label: str = ""
    case: Any = None  # the benchmark case, for timers that need it (fakes in tests)

    def call(self, k: int) -> None:
        self.calls[k % len(self.calls)]()


@dataclass
class Sampler:
    """A prepared measurement: each call returns one device sample, seconds per call."""

    take: Callable[[], float]
    method: str  # "graph" | "profiler" | "wall" | whatever a test's fake says
    calls_per_sample: int
    keep: list = field(default_factory=list)  # what must live as long as the sampler (a captured graph)


@dataclass(frozen=True)
class Measurement:
    """The device and host time of one implementation on one case."""

    device: Stats
    host: Stats
    method: str
    calls_per_sample: int


class Timer(Protocol):
    device: str

    def prepare(self, work: Workload, budget: Budget) -> Sampler: ...

    def flush(self) -> None: ...

    def host_sample(self, work: Workload, budget: Budget) -> float: ...

    def synchronize(self) -> None: ...


def _calls_for(per_call: float, budget: Budget) -> int:
    """Calls per device sample: about ``budget.sample_seconds`` of work, within [min_calls, max_calls]."""
    wanted = math.ceil(budget.sample_seconds / max(per_call, 1e-9) * (1 - 1e-9))  # 1e-3 / 25e-6 is 40, not 41
    return max(budget.min_calls, min(budget.max_calls, wanted))


class _HostBursts:
    """Host time per call: a burst of eager calls, synchronized before and after."""

    def synchronize(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def host_sample(self, work: Workload, budget: Budget) -> float:
        calls = budget.host_burst_calls
        self.synchronize()
        start = time.perf_counter()
        for k in range(calls):
            work.call(k)
        elapsed = time.perf_counter() - start
        self.synchronize()
        return elapsed / calls


class WallTimer(_HostBursts):
    """The CPU: wall clock of back-to-back calls."""

    device = "cpu"

    def synchronize(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def prepare(self, work: Workload, budget: Budget) -> Sampler:
        for k in range(budget.warmup_calls):
            work.call(k)
        start = time.perf_counter()
        work.call(0)
        calls = _calls_for(time.perf_counter() - start, budget)

        def take() -> float:
            start = time.perf_counter()
            for k in range(calls):
                work.call(k)
            return (time.perf_counter() - start) / calls

        return Sampler(take, "wall", calls)


def kernel_seconds(events: Sequence[Any]) -> float:
    """Seconds of device work in a profiler's events: the durations of the device-side events (kernels,
    device copies and fills), each counted once — the CPU-side operator events that launched them are not."""
    from torch.autograd import DeviceType

    return sum(e.time_range.elapsed_us() for e in events if e.device_type != DeviceType.CPU) * 1e-6


def _cuda_profile() -> Any:
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])


class GraphTimer(_HostBursts):
    """A CUDA device: CUDA-graph replay (profiler kernel durations where a call cannot be captured).

    ``cuda`` (default ``torch.cuda``) and ``profile`` (default: a torch.profiler session recording CUDA
    activity) are parameters so that tests can drive every path of this class with stand-ins on a machine
    without a GPU."""

    def __init__(
        self,
        device: Union[str, int, torch.device] = "cuda",
        force_profiler: bool = False,
        cuda: Any = None,
        profile: Optional[Callable[[], Any]] = None,
    ) -> None:
        self.cuda = cuda or torch.cuda
        self.profile = profile or _cuda_profile
        self.torch_device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if self.torch_device.type == "cuda" and self.torch_device.index is None:
            self.torch_device = torch.device("cuda", self.cuda.current_device())
        self.device = "cuda"
        self.force_profiler = force_profiler
        l2 = getattr(self.cuda.get_device_properties(self.torch_device), "L2_cache_size", 0) or 64 * 2**20
        self.l2_bytes = int(l2)
        # Written before every sample: evicts what the previous sample left in the L2.
        self._flush_buffer = torch.empty(2 * self.l2_bytes // 4, dtype=torch.int32, device=self.torch_device)

    def synchronize(self) -> None:
        self.cuda.synchronize(self.torch_device)

    def flush(self) -> None:
        self._flush_buffer.fill_(0)

    def _events(self) -> tuple[Any, Any]:
        return self.cuda.Event(enable_timing=True), self.cuda.Event(enable_timing=True)

    def _event_seconds(self, work: Workload, calls: int) -> float:
        start, end = self._events()
        start.record()
        for k in range(calls):
            work.call(k)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3 / calls

    def prepare(self, work: Workload, budget: Budget) -> Sampler:
        # Warm-up on a side stream, as CUDA-graph capture requires (autograd, cuBLAS workspaces, allocator).
        cuda = self.cuda
        side = cuda.Stream(self.torch_device)
        side.wait_stream(cuda.current_stream(self.torch_device))
        with cuda.stream(side):
            for k in range(max(budget.warmup_calls, len(work.calls))):
                work.call(k)
        cuda.current_stream(self.torch_device).wait_stream(side)
        self.synchronize()
        calls = max(_calls_for(self._event_seconds(work, 1), budget), min(len(work.calls), budget.max_calls))
        if not self.force_profiler:
            try:
                return self._graph_sampler(work, calls)
            except Exception:  # noqa: BLE001 - a call that cannot be captured is timed by the profiler instead
                self.synchronize()
        return self._profiler_sampler(work, calls)

    def _graph_sampler(self, work: Workload, calls: int) -> Sampler:
        graph = self.cuda.CUDAGraph()
        with self.cuda.graph(graph):
            for k in range(calls):
                work.call(k)
        graph.replay()  # the first replay uploads the graph
        self.synchronize()
        start, end = self._events()

        def take() -> float:
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3 / calls

        return Sampler(take, "graph", calls, keep=[graph])

    def _profiler_sampler(self, work: Workload, calls: int) -> Sampler:
        def take() -> float:
            with self.profile() as prof:
                for k in range(calls):
                    work.call(k)
                self.synchronize()
            return kernel_seconds(prof.events()) / calls

        return Sampler(take, "profiler", calls)


def default_timer(device: str) -> Timer:
    """The timer for ``device``: graph replay on CUDA, the wall clock on the CPU."""
    return GraphTimer(device) if str(device).startswith("cuda") else WallTimer()


def rotated(names: Sequence[str], r: int) -> list[str]:
    """``names`` started at position r (mod len): round r's order."""
    if not names:
        return []
    r %= len(names)
    return list(names[r:]) + list(names[:r])


def measure_interleaved(
    works: Mapping[str, Workload], timer: Timer, budget: Budget
) -> dict[str, Union[Measurement, Exception]]:
    """Every workload's device and host time, sampled in ``budget.rounds`` interleaved rounds.

    A workload that fails while being prepared or sampled gets its exception instead of a measurement; the
    others go on."""
    samplers: dict[str, Sampler] = {}
    out: dict[str, Union[Measurement, Exception]] = {}
    for name, work in works.items():
        try:
            samplers[name] = timer.prepare(work, budget)
        except Exception as exc:  # noqa: BLE001 - reported by the caller as a note on this implementation
            out[name] = exc
    device: dict[str, list[float]] = {name: [] for name in samplers}
    host: dict[str, list[float]] = {name: [] for name in samplers}
    names = list(samplers)
    for r in range(budget.rounds):
        for name in rotated(names, r):
            if name in out:
                continue
            try:
                timer.flush()
                device[name].append(samplers[name].take())
                host[name].append(timer.host_sample(works[name], budget))
            except Exception as exc:  # noqa: BLE001
                out[name] = exc
    for name in names:
        if name not in out:
            out[name] = Measurement(
                summarize(device[name]), summarize(host[name]), samplers[name].method, samplers[name].calls_per_sample
            )
    samplers.clear()  # graphs and their memory pools go before the next case
    return out


def gpu_ms(fn: Callable[[], object], budget: Optional[Budget] = None, device: str = "cuda") -> float:
    """Median device milliseconds per call of ``fn``, measured as ``tokennorm bench`` measures (CUDA-graph
    replay, L2 flushed before each sample); for scripts that time one launch at a time."""
    result = measure_interleaved({"fn": Workload([fn])}, default_timer(device), budget or QUICK_BUDGET)["fn"]
    if isinstance(result, Exception):
        raise result
    return result.device.median * 1e3


def copy_calls(nbytes: int, sets: int, device: str) -> tuple[list[Callable[[], object]], int]:
    """``sets`` device-to-device copies, each moving about ``nbytes`` (read + write), and the bytes one moves."""
    numel = max(1, nbytes // 2)
    calls = []
    for _ in range(sets):
        src = torch.empty(numel, dtype=torch.uint8, device=device).fill_(1)  # touched: no lazily-mapped pages
        dst = torch.empty_like(src).fill_(0)
        calls.append(lambda src=src, dst=dst: dst.copy_(src))
    return calls, 2 * numel
