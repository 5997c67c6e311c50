"""Run a sweep: for every case, seeded inputs, a check of each implementation's forward output against torch
eager, then every implementation and a device copy of the same bytes measured together in interleaved rounds
(:mod:`~tokennorm.tools.bench.timing`), and a plausibility check of what came out."""

from __future__ import annotations

import collections
import contextlib
import datetime
import math
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from tokennorm.tools.bench.cases import Case, Sweep, dtype_name
from tokennorm.tools.bench.implementations import REFERENCE, Impl, NormFn, NormOut, Unsupported
from tokennorm.tools.bench.timing import (
    Budget,
    Measurement,
    Stats,
    Timer,
    Workload,
    copy_calls,
    default_timer,
    measure_interleaved,
)

# Largest accepted |out − torch| / max|torch| of a forward output: about two roundings of the dtype (bf16 has
# 8 significant bits, fp16 11) — different reduction orders differ by that; a wrong formula (ε misplaced, a
# missing bias) differs by far more. fp32: summation-order differences over rows of up to 1M elements.
CHECK_RTOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}

PEER_PACKAGES = ("liger-kernel", "quack-kernels", "apex", "flash-attn", "transformer-engine")

COPY = "copy"  # the name of the device-copy baseline among the measured workloads

# Input sets rotated through on CUDA: enough that their bytes exceed the L2 this many times over, at most
# MAX_INPUT_SETS (small cases beyond that run from the L2, and their rows say how many sets they had).
ROTATE_L2_MULTIPLE = 2
MAX_INPUT_SETS = 16

# What a run may not report without a warning (issue 14: a busy 2-core CPU gave a copy baseline of 0.032 GB/s
# and "× copy 1065"). A copy of at least MIN_COPY_BYTES slower than MIN_COPY_GBPS is no baseline: every memory
# system copies faster (the slowest CPU in CI copies ~10 GB/s in its caches; a GPU, hundreds). Spreads: p20–p80
# wider than MAX_SPREAD of the median. Fractions of copy above MAX_FRACTION: the op moved its fewest bytes much
# faster than a copy of the same bytes, so one of the two timings is wrong.
MIN_COPY_BYTES = {"cpu": 2**16, "cuda": 2**26}
MIN_COPY_GBPS = {"cpu": 0.5, "cuda": 100.0}
MAX_SPREAD = 0.5
MAX_FRACTION = 1.5


@dataclass(frozen=True)
class Result:
    """One timed (implementation, case) pair. Device times are per call (CUDA-graph replay on CUDA); host time
    is the wall clock of an eager call issued back to back with others."""

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
    copy_gbps: Optional[float]  # the copy baseline of the same bytes, measured with this case; None if failed
    fraction_of_copy: Optional[float]  # gbps / copy_gbps; None when the baseline is implausible
    host_us: float  # median host time per eager call
    host_p20_us: float
    host_p80_us: float
    method: str  # how the device time was taken: graph | profiler | wall
    input_sets: int  # input sets the timed calls rotated over
    flags: tuple[str, ...] = ()  # why a number is not to be trusted (see MAX_SPREAD, MAX_FRACTION)


@dataclass(frozen=True)
class CopyBaseline:
    """The device copy measured with one case."""

    op: str
    direction: str
    dtype: str
    m: int
    n: int
    kind: str
    bytes: int  # read + write
    median_us: float
    p20_us: float
    p80_us: float
    gbps: float
    method: str
    flags: tuple[str, ...] = ()


@dataclass
class SweepResult:
    environment: dict
    results: list[Result] = field(default_factory=list)
    copies: list[CopyBaseline] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # implementations that did not run, and why
    warnings: list[str] = field(default_factory=list)  # numbers that are not to be trusted, and why


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
class Call:
    """The timed call of one implementation on one input set."""

    forward: Callable[[], NormOut]
    backward: Callable[[NormOut], None]
    leaves: list[Tensor]  # tensors whose .grad is reset before each call

    def __call__(self) -> None:
        for t in self.leaves:  # no gradient accumulation: each call writes fresh gradients, as a training step
            t.grad = None
        self.backward(self.forward())


def timed_call(fn: NormFn, case: Case, inp: Inputs) -> Call:
    """The call timed for ``case``: inference (nothing requires grad), or forward + backward through autograd
    with the upstream gradients dy (and dh for Add & Norm's second output)."""
    args = [inp.x, inp.residual, inp.weight, inp.bias]
    if case.direction == "fwd":
        return Call(lambda: fn(*args), lambda out: None, [])
    leaves = [None if t is None else t.detach().requires_grad_() for t in args]
    grads = [inp.dy, inp.dh]

    def backward(out: NormOut) -> None:
        outs = _as_tuple(out)
        torch.autograd.backward(outs, grads[: len(outs)])

    return Call(lambda: fn(*leaves), backward, [t for t in leaves if t is not None])


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, Unsupported):
        return text
    return f"failed: {type(exc).__name__}: {text[:160]}"


def checked_calls(
    impl: Impl, case: Case, inputs: Sequence[Inputs], reference: Optional[NormOut], device: str
) -> list[Call]:
    """One call per input set of ``impl`` on ``case``, after its first call (which compiles) has been checked
    against torch; raises Unsupported (or the implementation's own error) when it cannot run or is wrong."""
    fn = impl.prepare(case, device)
    calls = [timed_call(fn, case, inp) for inp in inputs]
    first = calls[0]
    out = first.forward()
    problem = output_mismatch(out, reference, case.dtype)
    if problem:
        raise Unsupported(problem)
    first.backward(out)
    return calls


def input_sets(case: Case, timer: Timer) -> int:
    """How many input sets the timed calls rotate over: enough to exceed the L2 (CUDA), one on the CPU."""
    l2 = getattr(timer, "l2_bytes", 0)
    if not l2:
        return 1
    return max(1, min(MAX_INPUT_SETS, math.ceil(ROTATE_L2_MULTIPLE * l2 / case.bytes)))


def plausibility(stats: Stats, fraction: Optional[float], host: Optional[Stats] = None) -> tuple[str, ...]:
    """Flags of one row: a spread too wide to rank by (device or host time), or a fraction of copy no op can
    reach."""
    flags = []
    if stats.spread > MAX_SPREAD:
        flags.append(f"noisy: p20–p80 spans {stats.spread:.0%} of the median")
    if host is not None and host.spread > MAX_SPREAD:
        flags.append(f"noisy host time: p20–p80 spans {host.spread:.0%} of the median")
    if fraction is not None and fraction > MAX_FRACTION:
        flags.append(f"implausible: {fraction:.2f}× a copy of the same bytes")
    return tuple(flags)


def copy_plausibility(stats: Stats, nbytes: int, gbps: float, device: str) -> tuple[str, ...]:
    """Flags of a copy baseline: too slow to be a copy, or too noisy."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    flags = []
    if nbytes >= MIN_COPY_BYTES[kind] and gbps < MIN_COPY_GBPS[kind]:
        flags.append(
            f"implausible copy baseline: {gbps:.3g} GB/s (any {kind.upper()} copies over {MIN_COPY_GBPS[kind]:g} GB/s)"
        )
    if stats.spread > MAX_SPREAD:
        flags.append(f"noisy copy baseline: p20–p80 spans {stats.spread:.0%} of the median")
    return tuple(flags)


@contextlib.contextmanager
def kernels_forced(device: str) -> Iterator[str]:
    """tokennorm's rows time its kernels: on CUDA under the ``auto`` backend, the sweep runs with the ``triton``
    backend, so that the measured dispatch table (which may send a shape to torch) does not decide what is
    timed. Yields the backend tokennorm's rows use."""
    from tokennorm.backend import get_backend, using_backend

    chosen = get_backend()
    if not device.startswith("cuda"):
        yield "triton" if chosen == "triton" else "torch"
    elif chosen != "auto":
        yield chosen
    else:
        with using_backend("triton"):
            yield "triton"


def run_case(
    case: Case,
    impls: Sequence[Impl],
    device: str,
    budget: Budget,
    timer: Timer,
    seed: int,
    skipped: collections.Counter,
) -> tuple[list[Result], Optional[CopyBaseline]]:
    """Every implementation and the copy on one case, measured together; failures counted in ``skipped``."""
    sets = input_sets(case, timer)
    inputs = [make_inputs(case, device, seed * MAX_INPUT_SETS + j) for j in range(sets)]
    with torch.no_grad():
        first = inputs[0]
        reference = None if case.op.dropout_p else REFERENCE(case)(first.x, first.residual, first.weight, first.bias)
    works: dict[str, Workload] = {}
    for impl in impls:
        try:
            works[impl.name] = Workload(checked_calls(impl, case, inputs, reference, device), impl.name, case)
        except Exception as exc:  # any failure of one implementation is a note, never the end of the run
            skipped[(impl.name, _reason(exc))] += 1
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    del reference
    if not works:
        return [], None
    calls, copy_bytes = copy_calls(case.bytes, sets, device)
    works[COPY] = Workload(calls, COPY, case)
    measured = measure_interleaved(works, timer, budget)
    works.clear()
    del inputs, calls

    for name, m in measured.items():  # a clock that saw nothing is no measurement
        if isinstance(m, Measurement) and not m.device.median > 0:
            measured[name] = RuntimeError(f"no device time measured ({m.method})")
    copy = measured.pop(COPY)
    baseline: Optional[CopyBaseline] = None
    usable_copy: Optional[float] = None
    if isinstance(copy, Measurement):
        gbps = copy_bytes / copy.device.median / 1e9
        flags = copy_plausibility(copy.device, copy_bytes, gbps, device)
        baseline = CopyBaseline(
            case.op.key,
            case.direction,
            dtype_name(case.dtype),
            case.m,
            case.n,
            case.kind,
            copy_bytes,
            copy.device.median * 1e6,
            copy.device.p20 * 1e6,
            copy.device.p80 * 1e6,
            gbps,
            copy.method,
            flags,
        )
        if not any(f.startswith("implausible") for f in flags):
            usable_copy = gbps
    else:
        skipped[(COPY, _reason(copy))] += 1
    results = []
    for name, m in measured.items():
        if not isinstance(m, Measurement):
            skipped[(name, _reason(m))] += 1
            continue
        gbps = case.bytes / m.device.median / 1e9
        fraction = gbps / usable_copy if usable_copy else None
        results.append(
            Result(
                name,
                case.op.key,
                case.direction,
                dtype_name(case.dtype),
                case.m,
                case.n,
                case.kind,
                case.bytes,
                m.device.median * 1e6,
                m.device.p20 * 1e6,
                m.device.p80 * 1e6,
                gbps,
                baseline.gbps if baseline else None,
                fraction,
                m.host.median * 1e6,
                m.host.p20 * 1e6,
                m.host.p80 * 1e6,
                m.method,
                sets,
                plausibility(m.device, fraction, m.host),
            )
        )
    return results, baseline


def warnings_of(result: SweepResult) -> list[str]:
    """One line per kind of untrustworthy number in a sweep, with how many rows it touches."""
    lines = []
    bad_copies = [c for c in result.copies if any(f.startswith("implausible") for f in c.flags)]
    if bad_copies:
        slowest = min(c.gbps for c in bad_copies)
        lines.append(
            f"{len(bad_copies)} of {len(result.copies)} copy baselines are implausible (down to "
            f"{slowest:.3g} GB/s): is the machine busy? Their rows report no fraction of copy."
        )
    noisy_copies = sum(1 for c in result.copies if any(f.startswith("noisy") for f in c.flags))
    if noisy_copies:
        lines.append(f"{noisy_copies} copy baselines are noisy (p20–p80 over {MAX_SPREAD:.0%} of the median).")
    noisy = sum(1 for r in result.results if any(f.startswith("noisy") for f in r.flags))  # device or host
    if noisy:
        lines.append(
            f"{noisy} of {len(result.results)} rows are noisy (p20–p80 over {MAX_SPREAD:.0%} of the "
            "median): differences between them are not measurements. A quieter machine, --threads 1, "
            "or more rounds (drop --quick) may help."
        )
    fast = [r for r in result.results if any(f.startswith("implausible") for f in r.flags)]
    if fast:
        top = max(r.fraction_of_copy or 0.0 for r in fast)
        lines.append(
            f"{len(fast)} rows claim more than {MAX_FRACTION}× copy speed (up to {top:.2f}×): one of the "
            "two timings is wrong; do not use them."
        )
    return lines


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


def _capability(device: str) -> Optional[list[int]]:
    if not device.startswith("cuda"):
        return None
    return list(torch.cuda.get_device_capability())


def environment(device: str, backend: str) -> dict:
    """Where and with what the numbers were taken; ``backend`` is the one tokennorm's rows ran on."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": _device_name(device),
        "capability": _capability(device),
        "tokennorm": _version("tokennorm"),
        "tokennorm_backend": backend,
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
    timer: Optional[Timer] = None,
    on_case: Optional[Callable[[SweepResult], None]] = None,
) -> SweepResult:
    """Every case × implementation; skipped pairs become notes, '<impl>: <reason> (<count> cases)'.

    ``timer`` defaults to the device's (:func:`~tokennorm.tools.bench.timing.default_timer`); ``on_case`` is
    called with the result so far after each case (to save partial results of a run that may be stopped)."""
    timer = timer or default_timer(device)
    cases = sweep.cases()
    skipped: collections.Counter[tuple[str, str]] = collections.Counter()
    with kernels_forced(device) as backend:
        out = SweepResult(environment(device, backend))
        for i, case in enumerate(cases):
            if on_task:
                on_task(i, len(cases), case.label)
            results, baseline = run_case(case, impls, device, budget, timer, seed + i, skipped)
            out.results += results
            if baseline:
                out.copies.append(baseline)
            out.notes = [f"{name}: {reason} ({n} case{'s' if n > 1 else ''})" for (name, reason), n in skipped.items()]
            out.warnings = warnings_of(out)
            if on_case:
                on_case(out)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    if on_task:
        on_task(len(cases), len(cases), "done")
    return out
