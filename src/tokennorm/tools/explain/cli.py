"""``tokennorm explain``: which elements share statistics under each norm, and LayerNorm step by step.

Prints, for a small x [B, N, C] (``--shape``, or a random small shape from ``--seed``), the groups of each
norm, then LayerNorm's mean, variance, rstd, x̂ and y per token next to torch's (``aten.native_layer_norm``),
and the classic mistakes (unbiased variance, ε added to σ, statistics across tokens) with their error.
``--out DIR`` writes the figures: ``norm_groups`` (one B × (N·C) grid per norm) and ``norm_cubes`` (3-D),
as PNG and/or SVG (``--format``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from tokennorm.tools.explain.steps import Walkthrough

DTYPES = ("float32", "float64")
MAX_SHOWN = 8  # channels printed per vector before eliding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", metavar="B,N,C", help="shape of x (default: a random small shape from --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of x (and of the shape when --shape is not given)")
    parser.add_argument("--scale", type=float, default=1.0, help="x = scale · randn (try 0.001: ε starts to matter)")
    parser.add_argument("--eps", type=float, default=1e-5, help="ε of the norms")
    parser.add_argument("--groups", type=int, default=2, help="GroupNorm's number of groups (must divide C)")
    parser.add_argument("--affine", action="store_true", help="random γ and β (default γ = 1, β = 0)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype torch computes in")
    parser.add_argument("--out", metavar="DIR", help="write the figures into this folder")
    parser.add_argument("--format", choices=("png", "svg", "both"), default="png", help="figure format")


def _shape(args: argparse.Namespace, gen: torch.Generator) -> tuple[int, int, int]:
    if args.shape:
        try:
            shape = tuple(int(v) for v in args.shape.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"--shape must be three positive integers B,N,C, but got --shape {args.shape!r}")
        return shape  # type: ignore[return-value]
    import torch

    b = int(torch.randint(2, 4, (), generator=gen))
    n = int(torch.randint(2, 5, (), generator=gen))
    c = args.groups * int(torch.randint(2, 5, (), generator=gen))  # divisible by the groups
    return b, n, c


def _vec(t: Tensor, digits: int = 4) -> str:
    vals = [f"{v:+.{digits}f}" for v in t.tolist()]
    if len(vals) > MAX_SHOWN:
        vals = vals[: MAX_SHOWN // 2] + ["…"] + vals[-MAX_SHOWN // 2 :]
    return " ".join(vals)


def print_groups(shape: tuple[int, int, int], num_groups: int, console: Any) -> None:
    from rich.table import Table

    from tokennorm.tools.explain.groups import NORM_TITLES, NORMS, PER_GROUP, stat_groups

    b, n, c = shape
    table = Table(title=f"which elements of x [B={b}, N={n}, C={c}] share one mean/variance")
    for col in ("norm", "one statistic per", "groups", "elements each", "mixes tokens?", "mixes sequences?"):
        table.add_column(col)
    for norm in NORMS:
        g = stat_groups(norm, shape, num_groups)
        k = int(g.max()) + 1
        # a group mixes tokens when it spans elements of two tokens, sequences when it spans two sequences
        tokens_per_group = [len({(bi, ni) for bi, ni, _ in (g == k_).nonzero().tolist()}) for k_ in range(k)]
        seqs_per_group = [len(set((g == k_).nonzero()[:, 0].tolist())) for k_ in range(k)]
        mixes_tokens, mixes_seqs = max(tokens_per_group) > 1, max(seqs_per_group) > 1
        name = NORM_TITLES[norm] + (f" (G={num_groups})" if norm == "groupnorm" else "")
        table.add_row(name, PER_GROUP[norm], str(k), str(g.numel() // k),
                      "[red]yes[/red]" if mixes_tokens else "[green]no[/green]",
                      "[red]yes[/red]" if mixes_seqs else "[green]no[/green]")
    console.print(table)


def print_walkthrough(w: Walkthrough, console: Any) -> None:
    from rich.table import Table

    b, n, c = w.x.shape
    steps = Table(title=f"LayerNorm over C={c}, token by token (float64) vs torch ({str(w.x.dtype)[6:]})")
    for col in ("token", "x", "mean μ", "torch μ", "var σ²", "rstd 1/√(σ²+ε)", "torch rstd"):
        steps.add_column(col, justify="left" if col in ("token", "x") else "right")
    for bi in range(b):
        for ni in range(n):
            steps.add_row(f"[{bi},{ni}]", _vec(w.x[bi, ni].double()), f"{w.mean[bi, ni]:+.6f}",
                          f"{w.torch_mean[bi, ni]:+.6f}", f"{w.var[bi, ni]:.6f}", f"{w.rstd[bi, ni]:.6f}",
                          f"{w.torch_rstd[bi, ni]:.6f}")
    console.print(steps)
    affine = "x̂·γ + β" if w.weight is not None else "x̂ (γ = 1, β = 0)"
    outs = Table(title=f"x̂ = (x − μ)·rstd and y = {affine}, vs torch's F.layer_norm")
    for col in ("token", "x̂", "y", "torch y", "max |y − torch|"):
        outs.add_column(col, justify="right" if col.startswith("max") else "left")
    for bi in range(b):
        for ni in range(n):
            diff = (w.y[bi, ni] - w.torch_y[bi, ni].double()).abs().max().item()
            outs.add_row(f"[{bi},{ni}]", _vec(w.xhat[bi, ni]), _vec(w.y[bi, ni]), _vec(w.torch_y[bi, ni].double()),
                         f"{diff:.2e}")
    console.print(outs)
    if w.weight is not None:
        console.print(f"γ = {_vec(w.weight.double())}\nβ = {_vec(w.bias.double())}")
    ok = w.max_abs_diff <= w.tolerance()
    verdict = "[green]equal to torch[/green]" if ok else "[red]DIFFERENT from torch[/red]"
    console.print(f"max |y − torch y| = {w.max_abs_diff:.3g} (allowed: {w.tolerance():.3g}, torch's rounding in "
                  f"{str(w.x.dtype)[6:]}): {verdict}")
    mistakes = Table(title="the classic mistakes on this x (tokennorm.tools.explain.pitfalls), error vs the right y")
    for col in ("mistake", "right", "wrong", "max |error|", "relative", "moves other tokens by"):
        mistakes.add_column(col, justify="right" if col in ("max |error|", "relative", "moves other tokens by")
                            else "left", no_wrap=col == "mistake",
                            min_width=max(len(p.name) for p in w.pitfalls) if col == "mistake" else None)
    for p in w.pitfalls:
        mistakes.add_row(p.name, p.right, p.wrong, f"{p.max_abs_error:.3g}", f"{p.relative_error:.3g}",
                         f"{p.other_token_change:.3g}")
    console.print(mistakes)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from tokennorm.tools.explain.figures import draw_cube, draw_groups
    from tokennorm.tools.explain.groups import NORMS
    from tokennorm.tools.explain.steps import walkthrough

    console, err = Console(), Console(stderr=True)
    gen = torch.Generator().manual_seed(args.seed)
    try:
        shape = _shape(args, gen)
        if shape[2] % args.groups or args.groups < 1:
            raise ValueError(f"--groups must divide C={shape[2]}, but got --groups {args.groups}")
        dtype = getattr(torch, args.dtype)
        x = (args.scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
        weight = bias = None
        if args.affine:
            weight = (1 + 0.5 * torch.randn(shape[2], generator=gen, dtype=torch.float64)).to(dtype)
            bias = (0.5 * torch.randn(shape[2], generator=gen, dtype=torch.float64)).to(dtype)
        w = walkthrough(x, args.eps, weight, bias)
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        return 2
    console.print(f"x = {args.scale:g} · randn{list(shape)}, seed {args.seed}, ε = {args.eps:g}")
    print_groups(shape, args.groups, console)
    print_walkthrough(w, console)
    if args.out:
        out = Path(args.out)
        suffixes = ("png", "svg") if args.format == "both" else (args.format,)
        for suffix in suffixes:
            for name, draw in (("norm_groups", draw_groups), ("norm_cubes", draw_cube)):
                path = out / f"{name}.{suffix}"
                draw(shape, NORMS, args.groups, path)
                console.print(f"figure: {path}")
    return 0 if w.max_abs_diff <= w.tolerance() else 1

