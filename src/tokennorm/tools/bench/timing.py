"""How time is measured: the median and the 20th/80th percentiles of many calls.

* Throughput, on CUDA: ``triton.testing.do_bench`` — CUDA events around each call, the L2 cache flushed before
  each one, gradients reset outside the timed region. On the CPU: ``time.perf_counter`` around each call after
  a warmup.
* Per-call latency, as a user sees it from Python: wall clock over many back-to-back calls with one
  synchronisation at the end, divided by the number of calls (host overhead included; no cache flush).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Stats:
    """Seconds per call."""

    median: float
    p20: float
    p80: float


@dataclass(frozen=True)
class Budget:
    """How long each measurement runs."""

    gpu_warmup_ms: int = 25
    gpu_rep_ms: int = 100
    cpu_warmup_calls: int = 3
    cpu_seconds: float = 0.2  # sample for about this long ...
    cpu_min_samples: int = 5  # ... but at least this many ...
    cpu_max_samples: int = 200  # ... and at most this many calls
    latency_warmup_calls: int = 20
    latency_sample_seconds: float = 0.01  # back-to-back calls per latency sample, about this long
    latency_samples: int = 10


DEFAULT_BUDGET = Budget()
QUICK_BUDGET = Budget(gpu_warmup_ms=10, gpu_rep_ms=40, cpu_seconds=0.05, latency_samples=5)


def summarize(samples: Sequence[float]) -> Stats:
    """Median and 20th/80th percentiles (linear interpolation between samples)."""
    if len(samples) == 1:
        return Stats(samples[0], samples[0], samples[0])
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return Stats(statistics.median(samples), deciles[1], deciles[7])


def _reset_grads(leaves: Sequence[Tensor]) -> None:
    for t in leaves:
        t.grad = None


def time_throughput(step: Callable[[], object], device: str, leaves: Sequence[Tensor], budget: Budget) -> Stats:
    """Device time per call of ``step``; ``leaves`` get their .grad reset before each call."""
    if device == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(step, warmup=budget.gpu_warmup_ms, rep=budget.gpu_rep_ms,
                                     grad_to_none=list(leaves), quantiles=[0.5, 0.2, 0.8])
        return Stats(ms[0] / 1e3, ms[1] / 1e3, ms[2] / 1e3)
    for _ in range(budget.cpu_warmup_calls):
        _reset_grads(leaves)
        step()
    samples: list[float] = []
    deadline = time.perf_counter() + budget.cpu_seconds
    while len(samples) < budget.cpu_min_samples or (
        len(samples) < budget.cpu_max_samples and time.perf_counter() < deadline
    ):
        _reset_grads(leaves)
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return summarize(samples)


def _synchronizer(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def time_per_call(step: Callable[[], object], device: str, budget: Budget) -> Stats:
    """Wall-clock seconds per call over back-to-back calls, synchronising once per sample."""
    sync = _synchronizer(device)
    for _ in range(budget.latency_warmup_calls):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(10):
        step()
    sync()
    estimate = (time.perf_counter() - start) / 10
    calls = max(10, min(10_000, int(budget.latency_sample_seconds / max(estimate, 1e-7))))
    samples = []
    for _ in range(budget.latency_samples):
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            step()
        sync()
        samples.append((time.perf_counter() - start) / calls)
    return summarize(samples)


def copy_step(nbytes: int, device: str) -> tuple[Callable[[], object], int]:
    """A ``dst.copy_(src)`` moving ``nbytes`` (read + write), and the bytes it actually moves."""
    numel = max(1, nbytes // 2)
    src = torch.empty(numel, dtype=torch.uint8, device=device).fill_(1)  # touched: no lazily-mapped pages
    dst = torch.empty_like(src).fill_(0)
    return (lambda: dst.copy_(src)), 2 * numel
