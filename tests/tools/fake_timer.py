"""Shared by the benchmark and tune tests (``from fake_timer import FakeTimer``): a timer with made-up times, so
that everything but the clock is tested without a GPU. (Not a conftest.py: test modules import ``conftest`` by
name, and a second one in this folder could shadow the root one.)"""

from __future__ import annotations

import itertools
from typing import Callable, Optional

from tokennorm.tools.bench.timing import Budget, Sampler, Workload

# (implementation or "copy", case, sample index) -> seconds per call
Seconds = Callable[[str, object, int], float]


class FakeTimer:
    """Device and host seconds per call from ``seconds``. Each workload's real call runs once when prepared (so a
    broken call still fails), and the order of the samples taken is kept in ``order``."""

    device = "cpu"

    def __init__(self, seconds: Seconds, host: Optional[Seconds] = None, l2_bytes: int = 0) -> None:
        self.seconds, self.host = seconds, host or seconds
        self.l2_bytes = l2_bytes
        self.order: list[str] = []

    def prepare(self, work: Workload, budget: Budget) -> Sampler:
        work.call(0)
        count = itertools.count()

        def take() -> float:
            self.order.append(work.label)
            return self.seconds(work.label, work.case, next(count))

        return Sampler(take, "fake", 1)

    def flush(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def host_sample(self, work: Workload, budget: Budget) -> float:
        return self.host(work.label, work.case, 0)
