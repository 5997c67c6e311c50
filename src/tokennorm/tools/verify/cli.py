"""``tokennorm verify``: check every op, forward and backward, in every dtype, against the float64 reference.

Exit code 0 when every check passes, 1 when any fails, 2 when the run cannot start (bad option for this machine,
a ``--json`` path that cannot be written).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Optional

from tokennorm.tools.verify import cases


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="where the ops run (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "triton"),
        default=None,
        help="the backend for this run (default: the current one, TOKENNORM_BACKEND at start-up)",
    )
    parser.add_argument(
        "--interpret",
        action="store_true",
        help="check tokennorm's Triton kernels on the CPU, in Triton's interpreter (a subprocess "
        "with TRITON_INTERPRET=1; slow: add --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{len(cases.QUICK_CASES)} shapes instead of {len(cases.CASES)}"
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="write every check and the environment to PATH (folders created), or to stdout with "
        "'-' (the table then goes to stderr)",
    )
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
            "--backend triton on the CPU runs Triton's interpreter, which must be switched on (TRITON_INTERPRET=1) "
            "before tokennorm is imported: use tokennorm verify --interpret (slow: add --quick), or a CUDA device."
        )
    return None


def _json_path_error(path: str) -> Optional[str]:
    """Create the folders of the ``--json`` path; why it cannot be written, or None (checked before the run,
    so that no result is lost at the end)."""
    if path == "-":
        return None
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"--json {path}: cannot create the folder {target.parent}: {exc.strerror or exc}"
    if target.is_dir():
        return f"--json {path}: is a folder; give a file name"
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        return f"--json {path}: not writable"
    return None


def _interpreted_argv(args: argparse.Namespace) -> list[str]:
    """This command's arguments for the run with interpreted kernels (which is a plain run, not --interpret)."""
    argv = ["verify", "--device", "cpu", "--backend", "triton", "--seed", str(args.seed)]
    argv += ["--quick"] if args.quick else []
    argv += ["--all"] if args.all else []
    return argv + (["--json", args.json] if args.json else [])


def _what_was_checked(device: str, backend_used: str) -> Optional[str]:
    """A note when the ops checked were torch's own kernels (tokennorm's torch backend), not tokennorm's."""
    if backend_used != "torch":
        return None
    how = (
        "tokennorm verify --interpret --quick (Triton's interpreter on the CPU; slow)"
        if device == "cpu"
        else "tokennorm verify --backend triton"
    )
    return (
        f"On the torch backend tokennorm's ops are torch's own kernels: this checked torch against the float64 "
        f"reference. To check tokennorm's Triton kernels: {how}."
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    to_stdout = args.json == "-"
    console, errors = Console(stderr=to_stdout), Console(stderr=True, soft_wrap=True)  # errors: one line
    if not console.is_terminal and "COLUMNS" not in os.environ:  # a file or pipe: no need to wrap at 80
        console = Console(width=120, stderr=to_stdout)

    def fail(problem: str) -> int:
        errors.print(f"[bold red]tokennorm verify:[/] {problem}", highlight=False)
        return 2

    problem = _json_path_error(args.json) if args.json else None
    if problem:
        return fail(problem)
    if args.interpret:
        if args.device == "cuda" or args.backend not in (None, "triton"):
            return fail(
                "--interpret runs tokennorm's Triton kernels on the CPU: leave out --device cuda and --backend."
            )
        if os.environ.get("TRITON_INTERPRET") != "1":
            from tokennorm.tools import rerun_with_interpreted_kernels

            console.print(
                "Running tokennorm's Triton kernels in Triton's interpreter (a subprocess with TRITON_INTERPRET=1) …",
                highlight=False,
            )
            return rerun_with_interpreted_kernels(_interpreted_argv(args))
        args.device, args.backend = "cpu", "triton"  # the interpreter is on already: run here

    from tokennorm.backend import get_backend, using_backend
    from tokennorm.tools.verify.checks import run_checks, supported_dtypes
    from tokennorm.tools.verify.report import environment, table, worst_per_group, write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        backend = args.backend or get_backend()
    except ValueError as exc:  # TOKENNORM_BACKEND at start-up was not a backend
        return fail(str(exc))
    problem = _setup_error(device, backend)
    if problem:
        return fail(problem)
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
    scope = (
        f"{len(cases.OPS)} ops × {n_dtypes} dtypes × {len(shapes)} shapes, forward and backward; {device} "
        f"({env['device_name']}), backend {backend} → {env['backend_used']}, torch {torch.__version__}; "
        f"{elapsed:.1f} s"
    )
    if failed:
        console.print(f"[bold red]✗ {len(failed)} of {len(checks)} checks FAILED[/] — {scope}", highlight=False)
    else:
        console.print(f"[bold green]✓ all {len(checks)} checks passed[/] — {scope}", highlight=False)
    note = _what_was_checked(device, env["backend_used"])
    if note:
        console.print(f"[yellow]{note}[/]", highlight=False)
    return 1 if failed else 0
