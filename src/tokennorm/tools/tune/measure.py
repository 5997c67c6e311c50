"""The tuning grid, its measurement and the decision rule.

Every (op, direction, dtype, N) of the grid is one case of the benchmark (:mod:`tokennorm.tools.bench`): tokennorm's
kernels and torch eager — what ``auto`` chooses between — measured together with a device copy in interleaved
rounds, device time only (CUDA-graph replay, L2 flushed). torch wins a shape only when it is faster by more than
:data:`TIE_MARGIN`: within that, the two are the same speed and tokennorm's kernels (which run every case the
same way, compiled or not) are kept.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Optional, Sequence

from tokennorm import dispatch
from tokennorm.tools.bench.cases import Sweep, torch_dtype
from tokennorm.tools.bench.implementations import IMPLEMENTATIONS
from tokennorm.tools.bench.runner import Result, run_sweep
from tokennorm.tools.bench.timing import QUICK_BUDGET, Budget, Timer

TIE_MARGIN = 0.02  # torch must be at least 2 % faster (median device time) to be chosen
BUDGET = QUICK_BUDGET  # 7 interleaved rounds per shape: graph replays of the same call agree within ~1 %

# dispatch's names -> the benchmark's
BENCH_OP = {"layer_norm": "ln", "rms_norm": "rms", "add_layer_norm": "addnorm", "add_rms_norm": "addrms"}
BENCH_DIRECTION = {"inference": "fwd", "training": "fwdbwd"}
IMPLS = ("tokennorm", "torch")


@dataclass(frozen=True)
class Grid:
    """The shapes measured: every op × direction × dtype × N, at M·N = ``mn`` elements (M = mn // N)."""

    ops: tuple[str, ...] = dispatch.OPS
    directions: tuple[str, ...] = dispatch.DIRECTIONS
    dtypes: tuple[str, ...] = ("bf16", "fp16", "fp32")
    ns: tuple[int, ...] = tuple(2**k for k in range(8, 21))  # 256 … 1M: one per bucket
    mn: int = 2**25  # 64 MB of bf16 per input: beyond the L2, a few tens of µs per call

    def sweep(self) -> Sweep:
        return Sweep(
            tuple(BENCH_OP[op] for op in self.ops),
            tuple(BENCH_DIRECTION[d] for d in self.directions),
            tuple(map(torch_dtype, self.dtypes)),
            self.ns,
            self.mn,
            latency_rows=(),
        )

    @property
    def size(self) -> int:
        return len(self.ops) * len(self.directions) * len(self.dtypes) * len(self.ns)


FULL_GRID = Grid()
QUICK_GRID = Grid(dtypes=("bf16",), ns=(2**10, 2**12, 2**14, 2**16))


def decide(tokennorm_us: Optional[float], torch_us: Optional[float]) -> Optional[str]:
    """``"torch"`` when torch was measured faster by more than the margin (or only torch ran), ``"tokennorm"``
    otherwise; None when neither ran."""
    if tokennorm_us is None:
        return None if torch_us is None else dispatch.TORCH
    if torch_us is not None and torch_us < tokennorm_us * (1 - TIE_MARGIN):
        return dispatch.TORCH
    return dispatch.TOKENNORM


def entries(results: Sequence[Result]) -> list[dict[str, Any]]:
    """One table entry per measured shape: both times (device and host µs per call), their fractions of copy, and
    the choice."""
    by_shape: dict[tuple, dict[str, Result]] = {}
    for r in results:
        by_shape.setdefault((r.op, r.direction, r.dtype, r.m, r.n), {})[r.impl] = r
    op_name = {v: k for k, v in BENCH_OP.items()}
    direction_name = {v: k for k, v in BENCH_DIRECTION.items()}
    out = []
    for (op, direction, dtype, m, n), by_impl in by_shape.items():
        ours, theirs = by_impl.get("tokennorm"), by_impl.get("torch")
        use = decide(ours and ours.median_us, theirs and theirs.median_us)
        if use is None:
            continue
        entry: dict[str, Any] = {
            "op": op_name[op],
            "direction": direction_name[direction],
            "dtype": dtype,
            "n": n,
            "m": m,
        }
        for name, r in (("tokennorm", ours), ("torch", theirs)):
            if r is not None:
                entry.update(
                    {
                        f"{name}_us": round(r.median_us, 3),
                        f"{name}_host_us": round(r.host_us, 3),
                        f"{name}_fraction_of_copy": None
                        if r.fraction_of_copy is None
                        else round(r.fraction_of_copy, 4),
                    }
                )
        entry["use"] = use
        out.append(entry)
    return out


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(
    env: dict[str, Any],
    results: Sequence[Result],
    notes: Sequence[str],
    warnings: Sequence[str],
    command: str,
    rounds: Optional[int] = None,
) -> dict[str, Any]:
    """Where, when and how the table was measured (``env``: a benchmark run's environment)."""
    methods: dict[str, int] = {}
    for r in results:
        methods[r.method] = methods.get(r.method, 0) + 1
    how = ", ".join(f"{m} {n}" for m, n in methods.items()) or "-"
    return {
        "date": env.get("date") or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device_name": env.get("device_name"),
        "tokennorm": env.get("tokennorm") or _version("tokennorm"),
        "torch": env.get("torch"),
        "triton": env.get("triton"),
        "python": env.get("python") or platform.python_version(),
        "method": "tokennorm.tools.bench harness: median device time per call over interleaved rounds"
        f"{f' ({rounds})' if rounds else ''}; rows timed by {how}",
        "tie_margin": TIE_MARGIN,
        "skipped": list(notes),
        "warnings": list(warnings),
    }


def tune(
    identity: dispatch.DeviceIdentity,
    grid: Grid,
    budget: Budget,
    device: str = "cuda",
    timer: Optional[Timer] = None,
    command: str = "tokennorm tune",
    on_task: Optional[Callable[[int, int, str], None]] = None,
) -> dict[str, Any]:
    """Measure ``grid`` on ``device`` and return the table document for ``identity``."""
    impls = [IMPLEMENTATIONS[name] for name in IMPLS]
    result = run_sweep(grid.sweep(), impls, device, budget, timer=timer, on_task=on_task)
    prov = provenance(result.environment, result.results, result.notes, result.warnings, command, budget.rounds)
    prov["mn"] = grid.mn
    return dispatch.table_document(identity, prov, entries(result.results))


def from_bench(docs: Sequence[dict[str, Any]], command: str) -> dict[str, Any]:
    """A table from the JSON of ``tokennorm bench`` runs on one CUDA GPU (their tokennorm and torch rows; other
    implementations and the ops the table has no name for are left out). ValueError when they are not that."""
    if not docs:
        raise ValueError("no benchmark results given")
    envs = [d.get("environment", {}) for d in docs]
    names = {(e.get("device_name"), tuple(e.get("capability") or ())) for e in envs}
    if len(names) != 1 or any(e.get("device") != "cuda" for e in envs):
        raise ValueError(f"the results must come from one CUDA GPU, got {sorted(map(str, names))}")
    ((name, capability),) = names
    if len(capability) != 2:
        raise ValueError("the results do not record the GPU's compute capability (a benchmark from before 2026-11-30?)")
    fields_ = {f.name for f in dataclasses.fields(Result)}
    try:
        results = [
            Result(**{k: (tuple(v) if k == "flags" else v) for k, v in row.items() if k in fields_})
            for d in docs
            for row in d.get("results", [])
            if row.get("impl") in IMPLS and row.get("op") in BENCH_OP.values() and row.get("kind") == "throughput"
        ]
    except TypeError as exc:
        raise ValueError(f"not the rows of this version's benchmark: {exc}") from None
    notes = [n for d in docs for n in d.get("notes", [])]
    warnings = [w for d in docs for w in d.get("warnings", [])]
    prov = provenance(envs[0], results, notes, warnings, command)
    return dispatch.table_document(
        dispatch.DeviceIdentity(name, (capability[0], capability[1])), prov, entries(results)
    )


def losses(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries that go to torch, slowest-for-tokennorm first, each with ``slower``: tokennorm's time over
    torch's."""
    lost = [
        dict(e, slower=e["tokennorm_us"] / e["torch_us"])
        for e in doc["entries"]
        if e["use"] == dispatch.TORCH and e.get("tokennorm_us") and e.get("torch_us")
    ]
    return sorted(lost, key=lambda e: -e["slower"])
