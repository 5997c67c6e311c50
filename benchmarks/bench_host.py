"""Host time per call: every public entry, with the kernel launch stubbed on the CPU, beside the raw Triton launch.

    python benchmarks/bench_host.py                 # parts stubbed and cpu, a table per part
    python benchmarks/bench_host.py --part stubbed --json out.json
    python benchmarks/bench_host.py --part breakdown   # where the µs of a call go, layer by layer
    python benchmarks/bench_host.py --part gpu      # on a CUDA machine: µs per call from Python, bf16

Part ``stubbed``: a fake CUDA driver (Triton compiles for sm_90; its launcher records nothing and returns) lets
tokennorm's Triton path run on CPU tensors up to ``cuLaunchKernel``. Measured: Triton's own JIT launch of the
forward and backward kernels with prepared arguments (the floor of any launcher built on it), the same launches
through tokennorm's cached launcher (and with its keywords bound once), the ``triton_op`` (torch.compile's path,
called eagerly), and every public function and module, inference and forward+backward through autograd
(backward with a precomputed ``dy``). A GPU host adds the C launcher and the CUDA driver call (a few µs) to every
launch; CPU tensors also pass the backend's non-CUDA check (~0.3 µs) that CUDA tensors skip.

Part ``breakdown`` (launch stubbed as above): LayerNorm's Triton path layer by layer, from the public function
down to the compiled kernel's launcher, each entry one call inside the one above it (so the difference between
neighbours is what a layer adds), the larger pieces alone, and forward+backward beside an autograd Function with
EagerNorm's signature that launches nothing (what torch's autograd alone costs).

Part ``cpu``: CPU tensors with the default backend (torch's kernels underneath), tokennorm against torch's own
(``F.layer_norm``, ``F.rms_norm``, ``nn.LayerNorm``, ``nn.RMSNorm``), forward, without and with autograd.

Part ``gpu`` (a CUDA device, no fake driver): bf16 LayerNorm/RMSNorm of 1 and 8 rows of 4096, tokennorm and
torch eager, inference and forward+backward, back-to-back calls from Python: wall clock over a round of calls
ended by a device synchronization, so a call costs whichever is longer, its host work or its GPU work.

Method: CPU time of the calling thread (``time.thread_time``: time the machine gives other processes does not
count, which on a shared 2-core CI machine is most of the noise of wall-clock timing), in rounds of ``--calls``
calls; the entries of a part are interleaved round by round (reversed every other round) so drifts hit all
alike; the median over ``--rounds`` rounds is reported (µs per call), and for ``cpu`` the median of the
per-round ratios tokennorm / torch. One intra-op thread; the garbage collector off while timing (as
``timeit``). Run it without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("bench_host.py: run it without TRITON_INTERPRET=1 (the kernels must be compiled ones)")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tokennorm  # noqa: E402
from tokennorm import _checks, ops  # noqa: E402
from tokennorm.kernels import config as kconfig  # noqa: E402
from tokennorm.kernels import launch, plan  # noqa: E402
from tokennorm.kernels.launcher import CachedLauncher  # noqa: E402
from tokennorm.tools.kernel_report import fakecuda, hopper  # noqa: E402
from tokennorm.tools.kernel_report.cases import tokennorm_on_fake_gpu  # noqa: E402

SHAPES = ((1, 4096), (8, 4096))


def _time_interleaved(
    entries: dict[str, Callable[[], object]],
    calls: int,
    rounds: int,
    clock: Callable[[], float] = time.thread_time,
    sync: Callable[[], object] = lambda: None,
) -> dict[str, list[float]]:
    """µs per call of each entry by ``clock`` (default: this thread's CPU time), one sample per round of
    ``calls`` calls ended by ``sync()``; entries interleaved within every round, reversed every other round."""
    for fn in entries.values():  # warm-up: compile, fill caches
        for _ in range(max(3, calls // 10)):
            fn()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in entries}
    gc.collect()
    gc.disable()
    try:
        for round_ in range(rounds):
            for name, fn in (reversed if round_ % 2 else iter)(list(entries.items())):
                start = clock()
                for _ in range(calls):
                    fn()
                sync()
                samples[name].append((clock() - start) / calls * 1e6)
    finally:
        gc.enable()
    return samples


def _leaf(shape, requires_grad):
    return torch.randn(shape).requires_grad_(requires_grad)


def _train_step(fn: Callable[[], torch.Tensor], dy: torch.Tensor) -> Callable[[], None]:
    def step():
        fn().backward(dy)

    return step


def _prepared_launch(launcher: CachedLauncher, call: Callable[[], object], through: str) -> Callable[[], object]:
    """The first launch through ``launcher`` that ``call`` makes, replayed with the same grid and arguments
    through ``through``: "jit" (the jit function itself, Triton's own launch), "cached" (the CachedLauncher with
    its keywords given per call), or "bound" (with its keywords bound once, as the plans hold them)."""
    captured = {}
    original = CachedLauncher.run

    def record(self, grid, args, kwargs, keyword_set, suffix=()):
        if self is launcher:
            captured.setdefault("launch", (grid, (*args, *suffix), kwargs))
        return original(self, grid, args, kwargs, keyword_set, suffix)

    CachedLauncher.run = record
    try:
        call()
    finally:
        CachedLauncher.run = original
    grid, args, kwargs = captured["launch"]
    if through == "bound":
        bound = launcher.bind(**kwargs)
        return lambda: bound.launch(grid, *args)
    kernel = launcher.kernel if through == "jit" else launcher
    return lambda: kernel[grid](*args, **kwargs)


def stubbed_entries(m: int, n: int) -> dict[str, Callable[[], object]]:
    shape, ns = (m, n), (n,)
    x, r = _leaf(shape, False), _leaf(shape, False)
    w, b = torch.ones(n), torch.zeros(n)
    xg, rg = _leaf(shape, True), _leaf(shape, True)
    wg, bg = torch.ones(n, requires_grad=True), torch.zeros(n, requires_grad=True)
    dy = torch.randn(shape)
    ln, rms = tokennorm.LayerNorm(n), tokennorm.RMSNorm(n)
    add_pre = tokennorm.AddNorm(n, placement="pre")
    ln_inf, rms_inf = tokennorm.LayerNorm(n).requires_grad_(False), tokennorm.RMSNorm(n).requires_grad_(False)
    add_inf = tokennorm.AddNorm(n).requires_grad_(False)

    def inference():
        return tokennorm.layer_norm(x, ns, w, b)

    def train():
        return tokennorm.layer_norm(xg, ns, wg, bg).backward(dy)

    forward, backward = plan.FORWARD_KERNELS[kconfig.ROWS], plan.BACKWARD_KERNELS[kconfig.ROWS]

    entries = {
        "raw Triton launch, forward kernel (JITFunction, prepared args)": _prepared_launch(forward, inference, "jit"),
        "raw Triton launch, backward kernel (JITFunction, prepared args)": _prepared_launch(backward, train, "jit"),
        "cached launch, forward kernel (prepared args)": _prepared_launch(forward, inference, "cached"),
        "cached launch, backward kernel (prepared args)": _prepared_launch(backward, train, "cached"),
        "cached launch, forward kernel, keywords bound once (prepared args)": _prepared_launch(
            forward, inference, "bound"
        ),
        "cached launch, backward kernel, keywords bound once (prepared args)": _prepared_launch(
            backward, train, "bound"
        ),
        "triton_op norm_fwd, eager (compile's path)": lambda: torch.ops.tokennorm.norm_fwd(
            x, w, b, None, None, 1e-5, 0.0, 0.0, False, None
        ),
        "layer_norm": lambda: tokennorm.layer_norm(x, ns, w, b),
        "rms_norm": lambda: tokennorm.rms_norm(x, ns, w),
        "add_norm (residual, post)": lambda: tokennorm.add_norm(x, r, w, b),
        "add_norm (residual, pre)": lambda: tokennorm.add_norm(x, r, w, b, prenorm=True),
        "LayerNorm module": lambda: ln_inf(x),
        "RMSNorm module": lambda: rms_inf(x),
        "AddNorm module (post)": lambda: add_inf(x, r),
        "fwd+bwd layer_norm": _train_step(lambda: tokennorm.layer_norm(xg, ns, wg, bg), dy),
        "fwd+bwd rms_norm": _train_step(lambda: tokennorm.rms_norm(xg, ns, wg), dy),
        "fwd+bwd add_norm (residual, post)": _train_step(lambda: tokennorm.add_norm(xg, rg, wg, bg), dy),
        "fwd+bwd LayerNorm module": _train_step(lambda: ln(xg), dy),
        "fwd+bwd RMSNorm module": _train_step(lambda: rms(xg), dy),
        "fwd+bwd AddNorm module (pre, y only)": _train_step(lambda: add_pre(xg, rg)[0], dy),
    }
    return entries


class _NoKernels(torch.autograd.Function):
    """ops.EagerNorm's signature, saved tensors and context, launching nothing and allocating nothing of its own:
    what torch's autograd alone costs an eager op like it (apply, saving, the engine, AccumulateGrad)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, options):
        ctx.save_for_backward(x, weight)
        ctx.statistics, ctx.config = (None, None, None), options
        return x.view_as(x), None

    @staticmethod
    def backward(ctx, dy, dh):
        x, weight = ctx.saved_tensors
        return dy, ctx.config[-1], ctx.config[-1], None, None


def breakdown_entries(m: int, n: int) -> dict[str, Callable[[], object]]:
    """LayerNorm's Triton path layer by layer, each entry one call inside the one above it, and the pieces: the
    differences between neighbours are what each layer adds (the "Where the µs go" table of RESULTS.md)."""
    ns, eps = (n,), 1e-5
    x, w, b = torch.randn(m, n), torch.ones(n), torch.zeros(n)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    dy = torch.randn(m, n)
    forward_launcher = plan.FORWARD_KERNELS[kconfig.ROWS]
    captured = {}
    original = CachedLauncher.run

    def record(self, grid, args, kwargs, keyword_set, suffix=()):
        if self is forward_launcher:
            captured.setdefault("launch", (grid, args, kwargs, keyword_set, suffix))
        return original(self, grid, args, kwargs, keyword_set, suffix)

    CachedLauncher.run = record
    try:
        tokennorm.layer_norm(x, ns, w, b)
    finally:
        CachedLauncher.run = original
    grid, args, kwargs, keyword_set, suffix = captured["launch"]
    compiled_launch, function, packed_metadata, tail, _ = next(reversed(forward_launcher._cache.values()))
    fwd_plan = plan.forward_plan(n, x.dtype, True, True, None, None, eps, 0.0, 0.0, False, False, x.device)
    stats = launch.norm_forward(x, w, b, None, None, eps, 0.0, 0.0, False, None)
    dw_db = torch.zeros(n)
    no_kernels_options = (None, eps, 0.0, 0.0, False, dw_db)
    return {
        "inference: tokennorm.layer_norm": lambda: tokennorm.layer_norm(x, ns, w, b),
        "  ops.norm_forward (after checks, reshapes, routing)": lambda: ops.norm_forward(
            x, w, b, None, None, eps, 0.0, 0.0, False, None, False
        ),
        "  launch.norm_forward (after the autograd routing)": lambda: launch.norm_forward(
            x, w, b, None, None, eps, 0.0, 0.0, False, None, store_stats=False
        ),
        "  launch.run_forward (after the plan lookup)": lambda: launch.run_forward(fwd_plan, x, w, b, None, None),
        "  plan.kernel.launch (after allocating y, the arguments, the grid)": lambda: fwd_plan.kernel.launch(
            grid, *args
        ),
        "  CachedLauncher.run (after the bound launcher)": lambda: forward_launcher.run(
            grid, args, kwargs, keyword_set, suffix
        ),
        "  the compiled kernel's launcher (the fake driver's stub)": lambda: compiled_launch(
            grid[0], 1, 1, 0, function, packed_metadata, None, None, None, *args, *suffix, *tail
        ),
        "piece: argument checks (_checks.norm_row_length)": lambda: _checks.norm_row_length("layer_norm", x, ns, w, b),
        "piece: plan lookup (forward_plan)": lambda: plan.forward_plan(
            n, x.dtype, True, True, None, None, eps, 0.0, 0.0, False, False, x.device
        ),
        "piece: torch.empty(m, n, device=, dtype=)": lambda: torch.empty(m, n, device=x.device, dtype=x.dtype),
        "fwd+bwd: tokennorm.layer_norm": _train_step(lambda: tokennorm.layer_norm(xg, ns, wg, bg), dy),
        "  torch's autograd alone (a Function like EagerNorm, no kernels)": _train_step(
            lambda: _NoKernels.apply(xg, wg, bg, None, no_kernels_options)[0], dy
        ),
        "  launch.norm_forward, with statistics": lambda: launch.norm_forward(
            x, w, b, None, None, eps, 0.0, 0.0, False, None
        ),
        "  launch.norm_backward": lambda: launch.norm_backward(
            dy, x, w, stats.mean, stats.rstd, None, None, 0.0, 0.0, False, True, True, x.dtype, None
        ),
    }


def cpu_entries(m: int, n: int) -> dict[str, Callable[[], object]]:
    entries = {}
    for grad in (False, True):
        x = _leaf((m, n), grad)
        w, b = torch.ones(n, requires_grad=grad), torch.zeros(n, requires_grad=grad)
        ns = (n,)
        suffix = ", autograd" if grad else ""
        torch_ln, ours_ln = torch.nn.LayerNorm(n).requires_grad_(grad), tokennorm.LayerNorm(n).requires_grad_(grad)
        torch_rms, ours_rms = torch.nn.RMSNorm(n).requires_grad_(grad), tokennorm.RMSNorm(n).requires_grad_(grad)
        entries.update(
            {
                f"F.layer_norm{suffix}": (lambda x=x, w=w, b=b: F.layer_norm(x, ns, w, b)),
                f"tokennorm.layer_norm{suffix}": (lambda x=x, w=w, b=b: tokennorm.layer_norm(x, ns, w, b)),
                f"F.rms_norm{suffix}": (lambda x=x, w=w: F.rms_norm(x, ns, w)),
                f"tokennorm.rms_norm{suffix}": (lambda x=x, w=w: tokennorm.rms_norm(x, ns, w)),
                f"nn.LayerNorm{suffix}": (lambda x=x, mod=torch_ln: mod(x)),
                f"tokennorm.LayerNorm{suffix}": (lambda x=x, mod=ours_ln: mod(x)),
                f"nn.RMSNorm{suffix}": (lambda x=x, mod=torch_rms: mod(x)),
                f"tokennorm.RMSNorm{suffix}": (lambda x=x, mod=ours_rms: mod(x)),
            }
        )
    return entries


def gpu_entries(m: int, n: int) -> dict[str, Callable[[], object]]:
    shape, ns, dev, dt = (m, n), (n,), "cuda", torch.bfloat16
    x = torch.randn(shape, device=dev, dtype=dt)
    w, b = torch.ones(n, device=dev, dtype=dt), torch.zeros(n, device=dev, dtype=dt)
    xg = x.clone().requires_grad_()
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    dy = torch.randn(shape, device=dev, dtype=dt)
    return {
        "tokennorm.layer_norm": lambda: tokennorm.layer_norm(x, ns, w, b),
        "F.layer_norm": lambda: F.layer_norm(x, ns, w, b),
        "tokennorm.rms_norm": lambda: tokennorm.rms_norm(x, ns, w),
        "F.rms_norm": lambda: F.rms_norm(x, ns, w),
        "fwd+bwd tokennorm.layer_norm": _train_step(lambda: tokennorm.layer_norm(xg, ns, wg, bg), dy),
        "fwd+bwd F.layer_norm": _train_step(lambda: F.layer_norm(xg, ns, wg, bg), dy),
    }


CPU_PAIRS = [
    ("F.layer_norm", "tokennorm.layer_norm"),
    ("F.rms_norm", "tokennorm.rms_norm"),
    ("nn.LayerNorm", "tokennorm.LayerNorm"),
    ("nn.RMSNorm", "tokennorm.RMSNorm"),
]


def run(part: str, calls: int, rounds: int) -> dict:
    results = {}
    for m, n in SHAPES:
        if part in ("stubbed", "breakdown"):
            entries = stubbed_entries if part == "stubbed" else breakdown_entries
            with tokennorm_on_fake_gpu(hopper.H100), fakecuda.recording(False):
                samples = _time_interleaved(entries(m, n), calls, rounds)
            results[f"{m}x{n}"] = {name: statistics.median(s) for name, s in samples.items()}
        elif part == "gpu":
            with tokennorm.using_backend("auto"):
                samples = _time_interleaved(gpu_entries(m, n), calls, rounds, time.perf_counter, torch.cuda.synchronize)
            results[f"{m}x{n}"] = {name: statistics.median(s) for name, s in samples.items()}
        else:
            with tokennorm.using_backend("auto"):
                samples = _time_interleaved(cpu_entries(m, n), calls, rounds)
            row = {name: statistics.median(s) for name, s in samples.items()}
            for grad in ("", ", autograd"):
                for ref, ours in CPU_PAIRS:
                    ratios = [a / b for a, b in zip(samples[ours + grad], samples[ref + grad])]
                    row[f"ratio {ours}{grad} / {ref}{grad}"] = statistics.median(ratios)
            results[f"{m}x{n}"] = row
    return results


def environment() -> dict:
    import triton

    return {
        "date": datetime.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "load average at start": os.getloadavg(),
    }


def _print_table(part: str, results: dict) -> None:
    shapes = list(results)
    print(f"\n{part}: µs per call (median over rounds)" + (", ratios tokennorm / torch" if part == "cpu" else ""))
    print("| entry | " + " | ".join(shapes) + " |")
    print("|---|" + "---:|" * len(shapes))
    for name in results[shapes[0]]:
        cells = [f"{results[s][name]:.3f}" if name.startswith("ratio") else f"{results[s][name]:.1f}" for s in shapes]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part",
        choices=("stubbed", "cpu", "both", "breakdown", "gpu"),
        default="both",
        help="both: stubbed and cpu (default)",
    )
    parser.add_argument("--calls", type=int, default=200, help="calls per entry per round (default 200)")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--json", help="write the results and the environment to this file")
    args = parser.parse_args(argv)
    if args.part == "gpu" and not torch.cuda.is_available():
        parser.error("--part gpu needs a CUDA device")
    if args.part != "gpu":
        fakecuda.install()  # for the stubbed part; the cpu part's tensors never reach Triton
    torch.set_num_threads(1)
    doc = {"environment": environment()}
    for part in ("stubbed", "cpu") if args.part == "both" else (args.part,):
        doc[part] = run(part, args.calls, args.rounds)
        _print_table(part, doc[part])
    doc["environment"]["load average at end"] = os.getloadavg()
    print("\n" + json.dumps(doc["environment"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
