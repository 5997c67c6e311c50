"""The calls the kernel report makes, and what it keeps of each launch.

Each case is one public call: tokennorm's API (or Liger's, when installed) as the benchmark calls it
(:mod:`tokennorm.tools.bench.implementations`), for one op, direction, dtype and row length N, on CPU tensors of the
benchmark's GPU shape (M·N = the GPU sweep's elements), with the fake CUDA driver installed. Directions:

* ``fwd``: the forward under autograd (inputs require grad: statistics are stored for backward);
* ``bwd``: the backward of that forward (``torch.autograd.backward`` on every output);
* ``infer``: the forward without autograd (what the benchmark's "fwd" times).

Nothing runs, so inputs are allocated and never written (the operating system maps no memory for them).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch

from tokennorm.tools.bench.cases import BYTES_PER_ELEMENT, DTYPES, OPS, Case, default_sweep, torch_dtype  # noqa: F401
from tokennorm.tools.bench.implementations import IMPLEMENTATIONS, Unsupported, import_problem
from tokennorm.tools.kernel_report import fakecuda, hopper
from tokennorm.tools.kernel_report.analysis import Tiling

K = 1024
DEFAULT_NS = (1 * K, 2 * K, 4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 256 * K, 1024 * K)
DEFAULT_OPS = ("ln", "rms", "addnorm")
DIRECTIONS = ("fwd", "bwd", "infer")
DEFAULT_DIRECTIONS = ("fwd", "bwd")
IMPLS = ("tokennorm", "liger")
ELEMENTS = default_sweep("cuda", quick=False).mn  # M·N of every case, as the GPU benchmark sweeps


def bytes_per_element(op: str, direction: str, itemsize: int) -> int:
    """The fewest bytes per element of x the op must move in ``direction`` (the benchmark's byte model; the
    backward's share is forward+backward minus forward)."""
    add = OPS[op].add
    if direction == "bwd":
        return (BYTES_PER_ELEMENT[(add, "fwdbwd")] - BYTES_PER_ELEMENT[(add, "fwd")]) * itemsize
    return BYTES_PER_ELEMENT[(add, "fwd")] * itemsize


@dataclass
class Captured:
    """One launch of a case, reduced to what the analysis needs (no tensors kept)."""

    kernel: Any  # the CompiledKernel
    grid: tuple[int, int, int]
    tile: str  # rows × columns of one tile, "ch" when the row is walked in chunks
    tiling: Tiling
    # arguments holding [M, N] data or [N] parameters (not per-row statistics, nor per-program partial sums)
    data_tensors: tuple[str, ...]


def tiling(args: dict[str, Any], grid: tuple[int, int, int], m: int, n: int) -> tuple[str, Tiling]:
    """Elements per hot-loop iteration, per row tile and per program, from a launch's arguments.

    Conventions read (tokennorm's and Liger's kernels follow them): rows per tile ``BLOCK_M`` (or ``BLOCK_ROW``;
    else 1), tile width ``BLOCK_N`` (or ``BLOCK_SIZE``), row (segment) length ``seg_n`` (or ``N``, ``n_cols``).
    A kernel using none of these names is modelled as covering its elements per program in one pass.
    """
    programs = grid[0] * grid[1] * grid[2]
    per_program = m * n / programs
    width = next((args[k] for k in ("seg_n", "N", "n_cols") if isinstance(args.get(k), int)), None)
    block = next((args[k] for k in ("BLOCK_N", "BLOCK_SIZE") if isinstance(args.get(k), int)), None)
    if width is None or block is None:
        return "?", Tiling(per_program, per_program, per_program)
    rows = next((args[k] for k in ("BLOCK_M", "BLOCK_ROW") if isinstance(args.get(k), int)), 1)
    chunked = block < width
    label = f"{rows}×{block}{' ch' if chunked else ''}"
    return label, Tiling(rows * min(block, width), rows * width, per_program)


def _capture(launch: fakecuda.Launch, m: int, n: int) -> Captured:
    args = launch.named_args
    label, t = tiling(args, launch.grid, m, n)
    data = tuple(
        name for name, v in args.items() if torch.is_tensor(v) and (tuple(v.shape) == (m, n) or tuple(v.shape) == (n,))
    )
    kernel = launch.kernel
    if kernel is None:
        raise RuntimeError(f"launch of {launch.name} is not in its JITFunction's cache")
    return Captured(kernel, launch.grid, label, t, data)


@contextlib.contextmanager
def tokennorm_on_fake_gpu(device: hopper.Device) -> Iterator[None]:
    """Inside the block tokennorm's public API takes its Triton path on CPU tensors and sizes its grids for
    ``device``'s SMs, as on that GPU. (The triton backend selects CPU tensors only when the kernels run there,
    i.e. under the interpreter; this says they do, to the backend selection only: the kernels are compiled ones.)"""
    import tokennorm.backend as backend
    from tokennorm.kernels import config, plan

    original_facts = config.device_facts
    kernels_run_on_cpu = backend._kernels_run_on_cpu

    def clear_caches() -> None:  # plans and configs cached for the CPU's (interpreter's) facts must not leak
        for cached in (plan.forward_plan, plan.backward_plan, config.forward_config, config.backward_config):
            cached.cache_clear()

    try:
        backend._kernels_run_on_cpu = True
        config.device_facts = lambda _device: config.DeviceFacts(sms=device.sms, l2_bytes=device.l2_bytes)
        clear_caches()
        with backend.using_backend("triton"):
            yield
    finally:
        backend._kernels_run_on_cpu = kernels_run_on_cpu
        config.device_facts = original_facts
        clear_caches()


@dataclass
class CaseResult:
    impl: str
    op: str
    direction: str
    dtype: str
    n: int
    m: int
    launches: list[Captured]
    skipped: Optional[str] = None  # why the implementation cannot run this case (one line)


def _outputs(out: Any) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def run_case(impl: str, op: str, direction: str, dtype: str, n: int) -> CaseResult:
    """Make one case's public call under the (installed) fake driver and capture its launches."""
    m = max(1, ELEMENTS // n)
    result = CaseResult(impl, op, direction, dtype, n, m, [])
    bench_case = Case(OPS[op], "fwd" if direction == "infer" else "fwdbwd", torch_dtype(dtype), m, n)
    entry = IMPLEMENTATIONS[impl]
    try:
        for module in entry.requires:
            problem = import_problem(module, entry.package)
            if problem:
                raise Unsupported(problem)
        fn = entry.build(bench_case)
    except Unsupported as exc:
        result.skipped = str(exc)
        return result
    dt = torch_dtype(dtype)
    grad = direction != "infer"

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=dt).requires_grad_(grad)

    args = (
        empty(m, n),
        empty(m, n) if OPS[op].add else None,
        empty(n),
        empty(n) if OPS[op].norm == "layernorm" else None,
    )
    call: Callable[[], Any] = lambda: fn(*args)  # noqa: E731
    with contextlib.ExitStack() as stack:
        if impl == "tokennorm":
            stack.enter_context(tokennorm_on_fake_gpu(fakecuda.installed_device()))
        if not grad:
            stack.enter_context(torch.no_grad())
        with fakecuda.capture() as forward_launches:
            out = call()
        if direction == "bwd":
            outs = _outputs(out)
            with fakecuda.capture() as backward_launches:
                torch.autograd.backward(outs, [torch.empty_like(o) for o in outs])
        launches = backward_launches if direction == "bwd" else forward_launches
        if not launches:
            raise RuntimeError(
                f"{impl} {op} {direction} N={n} launched no Triton kernel under the fake driver "
                "(its backend selection changed? see kernel_report.cases.tokennorm_on_fake_gpu)"
            )
        result.launches = [_capture(launch, m, n) for launch in launches]
    return result
