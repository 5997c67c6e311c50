"""Host µs per call of any callable, with Triton launches stubbed by the fake CUDA driver.

For the host-overhead benchmark: how long the Python, torch and Triton work of a call takes up to the launch,
on a machine without a GPU. ::

    import torch
    from tokennorm.tools.kernel_report import fakecuda, host_time

    fakecuda.install()                                   # launches stop at the launcher (recording off here)
    x = torch.empty(1, 4096, dtype=torch.bfloat16)       # CPU tensors stand for the CUDA ones
    w = torch.empty(4096, dtype=torch.bfloat16)
    t = host_time.measure(lambda: my_launcher(x, w))     # any callable: a public op, a raw kernel[grid](...)
    print(t)                                             # "16.9 µs per call (p20–p80 16.7–17.2, 30 × 2,000 calls)"

How: the callable is called ``warmup`` times first (the first call compiles), then in ``repeats`` timed
batches of equal length, each long enough (``min_batch_s``) for the clock's resolution not to matter; the
result is the median per call over the batches, with the 20th and 80th percentiles as its spread. Inside, torch
runs one thread (no intra-op thread start-up in the numbers), the garbage collector is paused (as ``timeit``
does), and the fake driver records nothing.

What it leaves out: the C launcher and ``cuLaunchKernel`` (a few µs on a GPU host), and the difference between
torch's CPU allocator and the CUDA caching allocator for outputs a call allocates.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from tokennorm.tools.kernel_report import fakecuda


@dataclass(frozen=True)
class HostTime:
    median_us: float
    p20_us: float
    p80_us: float
    repeats: int
    calls_per_repeat: int

    def __str__(self) -> str:
        return (
            f"{self.median_us:.1f} µs per call (p20–p80 {self.p20_us:.1f}–{self.p80_us:.1f}, "
            f"{self.repeats} × {self.calls_per_repeat:,} calls)"
        )


@contextlib.contextmanager
def quiet_host() -> Iterator[None]:
    """One torch thread, no garbage collection, no launch recording, inside the block."""
    threads, gc_was_enabled = torch.get_num_threads(), gc.isenabled()
    torch.set_num_threads(1)
    gc.disable()
    try:
        with fakecuda.recording(False):
            yield
    finally:
        torch.set_num_threads(threads)
        if gc_was_enabled:
            gc.enable()


def _batch_seconds(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def measure(fn: Callable[[], Any], *, repeats: int = 30, warmup: int = 20, min_batch_s: float = 0.005) -> HostTime:
    """Host time per call of ``fn`` (see the module's docstring)."""
    if repeats < 1 or warmup < 0 or min_batch_s <= 0:
        raise ValueError(
            f"measure needs repeats ≥ 1, warmup ≥ 0 and min_batch_s > 0, but got repeats={repeats}, "
            f"warmup={warmup}, min_batch_s={min_batch_s}"
        )
    with quiet_host():
        for _ in range(warmup):
            fn()
        calls = 1
        while (elapsed := _batch_seconds(fn, calls)) < min_batch_s:
            calls = max(calls * 2, int(calls * min_batch_s / max(elapsed, 1e-9) * 1.2))
        per_call = [_batch_seconds(fn, calls) / calls * 1e6 for _ in range(repeats)]
    if repeats == 1:
        return HostTime(per_call[0], per_call[0], per_call[0], 1, calls)
    deciles = statistics.quantiles(per_call, n=10, method="inclusive")
    return HostTime(statistics.median(per_call), deciles[1], deciles[7], repeats, calls)
