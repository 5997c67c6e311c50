"""Run a sweep: for every case, seeded inputs, a check of each implementation's forward output against torch
eager, its timing, and a device-copy baseline of the same bytes measured the same way in the same run."""

from __future__ import annotations

import collections
import datetime
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from tokennorm.tools.bench.cases import Case, Sweep, dtype_name
from tokennorm.tools.bench.implementations import REFERENCE, Impl, NormFn, NormOut, Unsupported
from tokennorm.tools.bench.timing import Budget, Stats, copy_step, time_per_call, time_throughput

# Largest accepted |out − torch| / max|torch| of a forward output: about two roundings of the dtype (bf16 has
# 8 significant bits, fp16 11) — different reduction orders differ by that; a wrong formula (ε misplaced, a
# missing bias) differs by far more. fp32: summation-order differences over rows of up to 1M elements.
CHECK_RTOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}

PEER_PACKAGES = ("liger-kernel", "quack-kernels", "apex", "flash-attn")


@dataclass(frozen=True)
class Result:
    """One timed (implementation, case) pair."""

    impl: str
    op: str
    direction: str
    dtype: str
    m: int
    n: int
    kind: str
    bytes: int
    median_us: float
    p20_us: float
    p80_us: float
    gbps: float  # bytes / median time
    copy_gbps: float  # the copy baseline of the same bytes and kind, from this run
    fraction_of_copy: float  # gbps / copy_gbps


@dataclass(frozen=True)
class CopyBaseline:
    kind: str
    bytes: int  # read + write
    median_us: float
    p20_us: float
    p80_us: float
    gbps: float


@dataclass
class SweepResult:
    environment: dict
    results: list[Result] = field(default_factory=list)
    copies: list[CopyBaseline] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Inputs:
    x: Tensor
    residual: Optional[Tensor]
    weight: Tensor
    bias: Optional[Tensor]
    dy: Optional[Tensor]
    dh: Optional[Tensor]


def make_inputs(case: Case, device: str, seed: int) -> Inputs:
    """Seeded tokens x, residual r ~ N(0, 1); γ = 1 + 0.1·N(0, 1), β = 0.1·N(0, 1); upstream gradients."""
    g = torch.Generator(device=device).manual_seed(seed)
    m, n, dt, op = case.m, case.n, case.dtype, case.op

    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=g, device=device, dtype=dt)

    backward = case.direction == "fwdbwd"
    return Inputs(
        x=randn(m, n),
        residual=randn(m, n) if op.add else None,
        weight=1.0 + 0.1 * randn(n),
        bias=0.1 * randn(n) if op.norm != "rmsnorm" else None,  # LayerNorm's β, DyT's β
        dy=randn(m, n) if backward else None,
        dh=randn(m, n) if backward and op.add else None,
    )


def _as_tuple(out: NormOut) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def output_mismatch(out: NormOut, reference: Optional[NormOut], dtype: torch.dtype) -> Optional[str]:
    """Why ``out`` is not torch's answer (None when it is, or when no reference exists: dropout)."""
    if reference is None:
        return None
    outs, refs = _as_tuple(out), _as_tuple(reference)
    if len(outs) != len(refs):
        return f"returned {len(outs)} outputs where torch returns {len(refs)}"
    for name, o, r in zip(("y", "h"), outs, refs):
        if o.shape != r.shape or o.dtype != r.dtype:
            return f"{name} is {o.dtype} {list(o.shape)}, torch's is {r.dtype} {list(r.shape)}"
        err = (o.detach().float() - r.float()).abs().max().item()
        scale = r.float().abs().max().item()
        if not err <= CHECK_RTOL[dtype] * max(scale, 1.0):
            return f"wrong output: max |{name} − torch| = {err:.3g} (max |{name}| = {scale:.3g})"
    return None


@dataclass
class Workload:
    """The timed call of one implementation on one case."""

    forward: Callable[[], NormOut]
    backward: Callable[[NormOut], None]
    leaves: list[Tensor]  # tensors whose .grad is reset between calls

    def step(self) -> None:
        self.backward(self.forward())


def workload(fn: NormFn, case: Case, inp: Inputs) -> Workload:
    args = [inp.x, inp.residual, inp.weight, inp.bias]
    if case.direction == "fwd":  # inference: no input requires grad
        return Workload(lambda: fn(*args), lambda out: None, [])
    leaves = [None if t is None else t.detach().requires_grad_() for t in args]
    grads = [inp.dy, inp.dh]

    def backward(out: NormOut) -> None:
        outs = _as_tuple(out)
        torch.autograd.backward(outs, grads[: len(outs)])

    return Workload(lambda: fn(*leaves), backward, [t for t in leaves if t is not None])


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, Unsupported):
        return text
    return f"failed: {type(exc).__name__}: {text[:160]}"


def measure(impl: Impl, case: Case, inp: Inputs, reference: Optional[NormOut], device: str, budget: Budget) -> Stats:
    """Seconds per call of ``impl`` on ``case``; raises Unsupported (or the impl's own error) when it cannot run."""
    work = workload(impl.prepare(case, device), case, inp)
    out = work.forward()  # first call: compiles, and is checked before anything is timed
    problem = output_mismatch(out, reference, case.dtype)
    if problem:
        raise Unsupported(problem)
    work.backward(out)
    del out
    if case.kind == "latency":
        return time_per_call(work.step, device, budget)
    return time_throughput(work.step, device, work.leaves, budget)


def _copy_baseline(case: Case, device: str, budget: Budget) -> CopyBaseline:
    step, nbytes = copy_step(case.bytes, device)
    stats = time_per_call(step, device, budget) if case.kind == "latency" else time_throughput(step, device, [], budget)
    return CopyBaseline(case.kind, nbytes, stats.median * 1e6, stats.p20 * 1e6, stats.p80 * 1e6,
                        nbytes / stats.median / 1e9)


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            return f"{names[0]} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    """Where and with what the numbers were taken."""
    from tokennorm.backend import backend_name

    backend = backend_name()
    used = "triton" if backend == "triton" or (backend == "auto" and device == "cuda") else "torch"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": _device_name(device),
        "tokennorm": _version("tokennorm"),
        "tokennorm_backend": used,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "peers": {p: _version(p) for p in PEER_PACKAGES},
    }


def run_sweep(
    sweep: Sweep,
    impls: Sequence[Impl],
    device: str,
    budget: Budget,
    seed: int = 0,
    on_task: Optional[Callable[[int, int, str], None]] = None,
) -> SweepResult:
    """Every case × implementation; skipped pairs become notes, '<impl>: <reason> (<count> cases)'."""
    out = SweepResult(environment(device))
    cases = sweep.cases()
    total = len(cases) * len(impls)
    copies: dict[tuple[str, int], CopyBaseline] = {}
    skipped: collections.Counter[tuple[str, str]] = collections.Counter()
    for i, case in enumerate(cases):
        inp = make_inputs(case, device, seed + i)
        with torch.no_grad():
            reference = None if case.op.dropout_p else REFERENCE(case)(inp.x, inp.residual, inp.weight, inp.bias)
        for j, impl in enumerate(impls):
            if on_task:
                on_task(i * len(impls) + j, total, f"{case.label} · {impl.name}")
            try:
                stats = measure(impl, case, inp, reference, device, budget)
            except Exception as exc:  # any failure of one implementation is a note, never the end of the run
                skipped[(impl.name, _reason(exc))] += 1
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            key = (case.kind, case.bytes)
            if key not in copies:
                copies[key] = _copy_baseline(case, device, budget)
            copy = copies[key]
            gbps = case.bytes / stats.median / 1e9
            out.results.append(Result(
                impl.name, case.op.key, case.direction, dtype_name(case.dtype), case.m, case.n, case.kind,
                case.bytes, stats.median * 1e6, stats.p20 * 1e6, stats.p80 * 1e6, gbps, copy.gbps, gbps / copy.gbps,
            ))
        del inp, reference
    if on_task:
        on_task(total, total, "done")
    out.copies = list(copies.values())
    out.notes = [f"{name}: {reason} ({n} case{'s' if n > 1 else ''})" for (name, reason), n in skipped.items()]
    return out
