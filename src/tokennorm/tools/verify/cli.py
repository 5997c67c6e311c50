"""``tokennorm verify``: check every op, forward and backward, in every dtype, against the float64 reference.

Exit code 0 when every check passes, 1 when any fails, 2 when the run cannot start (bad option for this machine).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional

from tokennorm.tools.verify import cases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where the ops run (default: cuda if available, else cpu)")
    parser.add_argument("--backend", choices=("auto", "torch", "triton"), default=None,
                        help="the backend for this run (default: the current one, TOKENNORM_BACKEND at start-up)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{len(cases.QUICK_CASES)} shapes instead of {len(cases.CASES)}")
    parser.add_argument("--json", metavar="PATH", default=None, help="write every check and the environment here")
    parser.add_argument("--all", action="store_true", help="list every check, not the worst per op/direction/dtype")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")


def _setup_error(device: str, backend: str) -> Optional[str]:
    """Why this device/backend combination cannot run here, or None."""
    import torch

    from tokennorm.backend import triton_available

    if device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is available to torch on this machine; use --device cpu."
    runs_triton = backend == "triton" or (backend == "auto" and device == "cuda")
    if runs_triton and not triton_available():
        return "the triton backend needs the 'triton' package: pip install triton (or use --backend torch)."
    if backend == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            "--backend triton on the CPU runs Triton's interpreter, which must be switched on before tokennorm is "
            "imported:\n    TRITON_INTERPRET=1 tokennorm verify --backend triton --device cpu\n"
            "(slow: add --quick), or use a CUDA device."
        )
    return None


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from tokennorm.backend import get_backend, using_backend
    from tokennorm.tools.verify.checks import run_checks, supported_dtypes
    from tokennorm.tools.verify.report import environment, table, worst_per_group, write_json

    console, errors = Console(), Console(stderr=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:  # a file or pipe: no need to wrap at 80
        console = Console(width=120)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        backend = args.backend or get_backend()
    except ValueError as exc:  # TOKENNORM_BACKEND at start-up was not a backend
        errors.print(f"[bold red]tokennorm verify:[/] {exc}", highlight=False)
        return 2
    problem = _setup_error(device, backend)
    if problem:
        errors.print(f"[bold red]tokennorm verify:[/] {problem}", highlight=False)
        return 2
    shapes = cases.QUICK_CASES if args.quick else cases.CASES
    # The tensors are small: CPU thread-pool hand-offs cost more than they save, and on a busy machine
    # spinning OpenMP workers slow the sweep many times over (benchmarks/RESULTS.md, "CPU: threads").
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        with using_backend(backend):  # this run only
            checks = run_checks(device, shapes, args.seed)
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - start

    env = environment(device, backend, args.quick, args.seed)
    failed = [c for c in checks if not c.passed]
    if args.all:
        console.print(table(checks, "every check"))
    else:
        title = f"worst of {len(shapes)} shapes per op, direction and dtype (--all: every check)"
        console.print(table(worst_per_group(checks), title))
        if failed:
            console.print(table(failed, "failed checks"))
    for c in failed:
        if c.error and c.direction == cases.DIRECTIONS[0]:
            console.print(f"[red]{c.op} {c.direction} {c.dtype} {c.shape}:[/] {c.error}", highlight=False)
    if args.json:
        write_json(args.json, env, checks)
    n_dtypes = len(supported_dtypes(device))
    scope = (f"{len(cases.OPS)} ops × {n_dtypes} dtypes × {len(shapes)} shapes, forward and backward; {device} "
             f"({env['device_name']}), backend {backend} → {env['backend_used']}, torch {torch.__version__}; "
             f"{elapsed:.1f} s")
    if failed:
        console.print(f"[bold red]✗ {len(failed)} of {len(checks)} checks FAILED[/] — {scope}", highlight=False)
        return 1
    console.print(f"[bold green]✓ all {len(checks)} checks passed[/] — {scope}", highlight=False)
    return 0
