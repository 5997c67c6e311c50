"""``tokennorm explain``: which elements share statistics under each norm, where the norms sit in a Transformer
block, and what padding does to LayerNorm and BatchNorm.

Three views:

* default: for x [B, N, C] (``--shape``, or a random small shape from ``--seed``), the statistics groups of
  each norm, then LayerNorm's mean, variance, rstd, x̂ and y per token next to torch's
  (``aten.native_layer_norm``), and the classic mistakes (unbiased variance, ε added to σ, statistics across
  tokens) with their error. ``--out DIR`` writes ``norm_groups`` (tokens × channels per sequence, per norm)
  and ``norm_cubes`` (3-D), bounded in size whatever the shape. DyT is listed with no statistics.
* ``--layout channels-first``: the same for an image batch x [B, C, H, W] (``--shape B,C,H,W``): channels-first
  LayerNorm (one statistic per pixel, over C), BatchNorm2d, InstanceNorm2d and GroupNorm, each grouping checked
  by normalizing x with it against torch's own function; ``--out`` writes ``image_groups`` (a tile per channel).
* ``--block``: the Transformer encoder and decoder layer, post-LN and pre-LN, every norm where it acts and the
  axis it normalizes (``--norm``), as ``block`` (written to ``--out``, default ``tokennorm-explain``).
* ``--padding``: article 003's padded batch ("I love AI" / "Transformers are powerful models") through
  LayerNorm and BatchNorm, its numbers printed, and the article's z-score example; ``--out`` adds ``padding``.

Figures are PNG and SVG (``--format``). Exit code 0; 1 when the walkthrough or a grouping disagrees with torch; 2
for bad arguments (``--block --norm dyt`` too: DyT has no statistics to draw) or a missing matplotlib.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from tokennorm.tools.explain.steps import Walkthrough

DTYPES = ("float32", "float64")
LAYOUT_NAMES = ("channels-last", "channels-first")  # the names of tokennorm.tools.explain.groups.LAYOUTS
MAX_SHOWN = 8  # channels printed per vector before eliding
MAX_CHECKED = 2**22  # elements of the x on which --layout channels-first checks its groups against torch
CHECK_TOLERANCE = 1e-10  # float64: the groups' normalization and torch's differ by rounding only


DEFAULT_BLOCK_OUT = "tokennorm-explain"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    view = parser.add_mutually_exclusive_group()
    view.add_argument(
        "--block",
        action="store_true",
        help="draw the Transformer block (encoder/decoder, post-LN/pre-LN) with each norm where it acts "
        f"and the axis it normalizes (figures into --out, default {DEFAULT_BLOCK_OUT}/)",
    )
    view.add_argument(
        "--padding",
        action="store_true",
        help="article 003's padded batch through LayerNorm and BatchNorm, and its z-score example",
    )
    parser.add_argument(
        "--norm",
        default="layernorm",
        help="the norm drawn by --block: layernorm (default), rmsnorm, batchnorm, instancenorm, "
        "groupnorm, or any other channels-last norm of tokennorm.tools.explain.groups.NORM_SPECS (dyt has no "
        "statistics to draw: exit 2)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUT_NAMES,
        default="channels-last",
        help="channels-last (default): x [B, N, C], sequences of tokens; channels-first: an image batch x "
        "[B, C, H, W], one token per pixel (channels-first LayerNorm, BatchNorm2d, InstanceNorm2d, GroupNorm; "
        "--out writes image_groups)",
    )
    parser.add_argument(
        "--shape",
        metavar="B,N,C",
        help="shape of x, B,C,H,W with --layout channels-first (default: a random small shape from --seed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of x (and of the shape when --shape is not given)")
    parser.add_argument("--scale", type=float, default=1.0, help="x = scale · randn (try 0.001: ε starts to matter)")
    parser.add_argument("--eps", type=float, default=1e-5, help="ε of the norms")
    parser.add_argument("--groups", type=int, default=2, help="GroupNorm's number of groups (must divide C)")
    parser.add_argument("--affine", action="store_true", help="random γ and β (default γ = 1, β = 0)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="dtype torch computes in (channels-first: float64)"
    )
    parser.add_argument("--out", metavar="DIR", help="write the figures into this folder")
    parser.add_argument("--format", choices=("png", "svg", "both"), default="both", help="figure format (both)")


def _shape(args: argparse.Namespace, gen: torch.Generator) -> tuple[int, ...]:
    channels_first = args.layout == "channels-first"
    if args.shape:
        dims = "B,C,H,W" if channels_first else "B,N,C"
        try:
            shape = tuple(int(v) for v in args.shape.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if len(shape) != len(dims.split(",")) or min(shape) < 1:
            raise ValueError(
                f"--shape must be {len(dims.split(','))} positive integers {dims}, but got --shape {args.shape!r}"
            )
        return shape
    import torch

    b = int(torch.randint(2, 4, (), generator=gen))
    n = int(torch.randint(2, 5, (), generator=gen))
    c = args.groups * int(torch.randint(2, 5, (), generator=gen))  # divisible by the groups
    if channels_first:
        return b, c, n, int(torch.randint(2, 5, (), generator=gen))
    return b, n, c


def _vec(t: Tensor, digits: int = 4) -> str:
    vals = [f"{v:+.{digits}f}" for v in t.tolist()]
    if len(vals) > MAX_SHOWN:
        vals = vals[: MAX_SHOWN // 2] + ["…"] + vals[-MAX_SHOWN // 2 :]
    return " ".join(vals)


def print_groups(
    shape: tuple[int, ...],
    num_groups: int,
    console: Any,
    layout: str = "channels-last",
    x: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> bool:
    """The table of which elements share one mean/variance under each norm of ``layout``, and DyT's row (no
    statistics). With ``x`` (float64, of ``shape`` or a corner of it), a column of how far normalizing x by each
    norm's groups (with ``eps``) is from torch's own function. Returns False when a grouping disagrees with torch
    beyond rounding."""
    from rich.table import Table

    from tokennorm.tools.explain.groups import (
        ELEMENTWISE,
        LAYOUTS,
        NORM_SPECS,
        group_count,
        mixes,
        normalize_by_groups,
        norms_of,
        stat_groups,
        title,
        torch_norm,
    )

    lay = LAYOUTS[layout]
    sizes = ", ".join(f"{d}={v}" for d, v in zip(lay.dims, shape))
    table = Table(title=f"which elements of x [{sizes}] share one mean/variance")
    columns = ["norm", "one statistic per", "groups", "elements each", f"mixes {lay.token}s?", f"mixes {lay.item}s?"]
    if x is not None:
        columns.append("Δ vs torch")
    for col in columns:
        table.add_column(col, justify="right" if col.startswith("Δ") else "left", no_wrap=col == "norm")
    agree = True
    for norm in norms_of(lay):
        k, each = group_count(norm, shape, num_groups)
        mixes_tokens, mixes_items = mixes(norm, num_groups)
        row = [
            title(norm, num_groups),
            NORM_SPECS[norm].over,
            f"{k:,}",
            f"{each:,}",
            "[red]yes[/red]" if mixes_tokens else "[green]no[/green]",
            "[red]yes[/red]" if mixes_items else "[green]no[/green]",
        ]
        if x is not None:
            ids = stat_groups(norm, x.shape, num_groups)
            ours = normalize_by_groups(x, ids, eps, centered=NORM_SPECS[norm].centered)
            diff = (ours - torch_norm(norm, x, eps, num_groups)).abs().max().item()
            agree &= diff <= CHECK_TOLERANCE
            row.append(f"{diff:.1e}" if diff <= CHECK_TOLERANCE else f"[red]{diff:.1e}[/red]")
        table.add_row(*row)
    for op in ELEMENTWISE.values():  # no statistics: nothing to group, nothing mixed
        table.add_row(
            op.title, op.over, "none", "—", "[green]no[/green]", "[green]no[/green]", *(["—"] * (x is not None))
        )
    console.print(table)
    return agree


def checked_shape(shape: tuple[int, ...], num_groups: int) -> tuple[int, ...]:
    """The shape [B, C, H, W] on which ``--layout channels-first`` checks its groups against torch: ``shape``
    itself up to :data:`MAX_CHECKED` elements, else a corner of it (at most 4 images, 8 × 8 pixels and 64
    channels, a multiple of G): the grouping does not depend on the sizes, and x stays small."""
    import math

    if math.prod(shape) <= MAX_CHECKED:
        return shape
    b, c, h, w = shape
    return min(b, 4), num_groups * max(1, min(c // num_groups, 64 // num_groups)), min(h, 8), min(w, 8)


def print_image_groups(shape: tuple[int, ...], num_groups: int, x: Tensor, eps: float, console: Any) -> bool:
    """``--layout channels-first``: the table of :func:`print_groups` for [B, C, H, W], checked against torch on
    x (float64, of :func:`checked_shape`)."""
    agree = print_groups(shape, num_groups, console, "channels-first", x, eps)
    verdict = "[green]equal to torch[/green]" if agree else "[red]DIFFERENT from torch[/red]"
    console.print(
        f"Δ vs torch: the largest |difference| between x{list(x.shape)} normalized by the groups above (mean and "
        "biased variance per group, float64) and torch's F.layer_norm on x.permute(0, 2, 3, 1) (timm's "
        f"LayerNorm2d), F.batch_norm, F.instance_norm, F.group_norm: {verdict}",
        soft_wrap=True,
    )
    return agree


def print_walkthrough(w: Walkthrough, console: Any) -> None:
    from rich.table import Table

    b, n, c = w.x.shape
    steps = Table(title=f"LayerNorm over C={c}, token by token (float64) vs torch ({str(w.x.dtype)[6:]})")
    for col in ("token", "x", "mean μ", "torch μ", "var σ²", "rstd 1/√(σ²+ε)", "torch rstd"):
        steps.add_column(col, justify="left" if col in ("token", "x") else "right")
    for bi in range(b):
        for ni in range(n):
            steps.add_row(
                f"[{bi},{ni}]",
                _vec(w.x[bi, ni].double()),
                f"{w.mean[bi, ni]:+.6f}",
                f"{w.torch_mean[bi, ni]:+.6f}",
                f"{w.var[bi, ni]:.6f}",
                f"{w.rstd[bi, ni]:.6f}",
                f"{w.torch_rstd[bi, ni]:.6f}",
            )
    console.print(steps)
    affine = "x̂·γ + β" if w.weight is not None else "x̂ (γ = 1, β = 0)"
    outs = Table(title=f"x̂ = (x − μ)·rstd and y = {affine}, vs torch's F.layer_norm")
    for col in ("token", "x̂", "y", "torch y", "max |y − torch|"):
        outs.add_column(col, justify="right" if col.startswith("max") else "left")
    for bi in range(b):
        for ni in range(n):
            diff = (w.y[bi, ni] - w.torch_y[bi, ni].double()).abs().max().item()
            outs.add_row(
                f"[{bi},{ni}]", _vec(w.xhat[bi, ni]), _vec(w.y[bi, ni]), _vec(w.torch_y[bi, ni].double()), f"{diff:.2e}"
            )
    console.print(outs)
    if w.weight is not None:
        console.print(f"γ = {_vec(w.weight.double())}\nβ = {_vec(w.bias.double())}")
    ok = w.max_abs_diff <= w.tolerance()
    verdict = "[green]equal to torch[/green]" if ok else "[red]DIFFERENT from torch[/red]"
    console.print(
        f"max |y − torch y| = {w.max_abs_diff:.3g} (allowed: {w.tolerance():.3g}, torch's rounding in "
        f"{str(w.x.dtype)[6:]}): {verdict}"
    )
    mistakes = Table(title="the classic mistakes on this x (tokennorm.tools.explain.pitfalls), error vs the right y")
    for col in ("mistake", "right", "wrong", "max |error|", "relative", "moves other tokens by"):
        mistakes.add_column(
            col,
            justify="right" if col in ("max |error|", "relative", "moves other tokens by") else "left",
            no_wrap=col == "mistake",
            min_width=max(len(p.name) for p in w.pitfalls) if col == "mistake" else None,
        )
    for p in w.pitfalls:
        mistakes.add_row(
            p.name, p.right, p.wrong, f"{p.max_abs_error:.3g}", f"{p.relative_error:.3g}", f"{p.other_token_change:.3g}"
        )
    console.print(mistakes)


def print_padding(console: Any) -> None:
    """Article 003's padded batch and z-score example, as numbers."""
    from rich import box
    from rich.table import Table

    from tokennorm.tools.explain.padding import padding_example, z_score_example

    ex = padding_example()
    c = ex.x.shape[-1]
    views = (
        ("x (article 003's embeddings)", ex.x),
        ("LayerNorm(x): μ, σ² per token, over its 8 channels", ex.layernorm),
        ("BatchNorm(x): μ, σ² per channel, over all 8 tokens (PAD included)", ex.batchnorm),
        ("BatchNorm with μ, σ² over the 7 real tokens only", ex.batchnorm_without_pad),
    )
    for name, data in views:
        table = Table(title=name, box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("token", no_wrap=True)
        for ci in range(c):
            table.add_column(f"c{ci + 1}", justify="right", no_wrap=True)
        for b, sentence in enumerate(ex.tokens):
            for ni, token in enumerate(sentence):
                row = data[b, ni].tolist()
                table.add_row(
                    token, *("-" if v != v else f"{v:+.2f}" for v in row), end_section=ni == len(sentence) - 1
                )
        console.print(table)
    console.print(
        "BatchNorm's channel means, PAD included: "
        + " ".join(f"{v:.3f}" for v in ex.batchnorm_mean.tolist())
        + "\n                 over the real tokens: "
        + " ".join(f"{v:.3f}" for v in ex.batchnorm_mean_without_pad.tolist()),
        soft_wrap=True,
    )
    console.print(
        f"Replace the PAD embedding by [{', '.join(f'{v:.2f}' for v in ex.pad_probe.tolist())}]:", soft_wrap=True
    )
    for norm, shift in ex.pad_shift.items():
        verdict = "[green]untouched[/green]" if shift == 0 else "[red]moved[/red]"
        console.print(f"  real tokens under {norm} move by at most {shift:.3g} ({verdict})", soft_wrap=True)
    z = z_score_example()
    values = ", ".join(f"{v:g}" for v in z.x.tolist())
    console.print(
        f"\nz-score (article 003): x = [{values}], μ = {z.mean:g}, σ = sqrt(Σ(x − μ)²/n) = {z.std:.3f}, "
        f"z = (x − μ)/σ = [{', '.join(f'{v:.3f}' for v in z.z.tolist())}]"
        f"\n  with the unbiased σ (÷ (n − 1), torch.std's default) = {z.std_unbiased:.3f}, z would be "
        f"[{', '.join(f'{v:.3f}' for v in z.z_unbiased.tolist())}]: LayerNorm divides by n, as the "
        f"article's 2.16 does",
        soft_wrap=True,
    )


def _write(draw: Any, out: Path, name: str, fmt: str, console: Any) -> None:
    """Draw once (``draw(path)`` returns the Figure), save in each format of ``--format``."""
    suffixes = ("png", "svg") if fmt == "both" else (fmt,)
    paths = [out / f"{name}.{suffix}" for suffix in suffixes]
    fig = draw(paths[0])
    for path in paths[1:]:
        fig.savefig(path, dpi=100)
    for path in paths:
        console.print(f"figure: {path}", soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from tokennorm.tools import matplotlib_missing

    console, err = Console(), Console(stderr=True)
    out = Path(args.out) if args.out else (Path(DEFAULT_BLOCK_OUT) if args.block else None)
    if out is not None and matplotlib_missing():
        err.print(
            "[red]error:[/red] the figures need matplotlib (pip install matplotlib); run without --out and "
            "--block for the tables only",
            soft_wrap=True,
        )
        return 2
    if args.layout != "channels-last" and (args.block or args.padding):
        view = "--block" if args.block else "--padding"
        err.print(
            f"[red]error:[/red] --layout {args.layout} is for the default view: {view} shows sequences [B, N, C]",
            soft_wrap=True,
        )
        return 2
    if args.block:
        from tokennorm.tools.explain.block import draw_block
        from tokennorm.tools.explain.groups import ELEMENTWISE, NORMS

        if args.norm in ELEMENTWISE:
            op = ELEMENTWISE[args.norm]
            err.print(
                f"[red]error:[/red] --norm {args.norm}: {op.title} has no statistics to draw: y = {op.formula} "
                "elementwise, each element alone (no mean, no variance, nothing shared between tokens)",
                soft_wrap=True,
            )
            return 2
        if args.norm not in NORMS:
            err.print(
                f"[red]error:[/red] --norm must be one of {', '.join(NORMS)}, but got --norm {args.norm}",
                soft_wrap=True,
            )
            return 2
        if args.groups < 1:
            err.print(f"[red]error:[/red] --groups must be positive, but got --groups {args.groups}", soft_wrap=True)
            return 2
        _write(lambda path: draw_block(args.norm, path, num_groups=args.groups), out, "block", args.format, console)
        return 0
    if args.padding:
        from tokennorm.tools.explain.padding import draw_padding

        print_padding(console)
        if out is not None:
            _write(lambda path: draw_padding(path=path), out, "padding", args.format, console)
        return 0

    from tokennorm.tools.explain.steps import walkthrough

    gen = torch.Generator().manual_seed(args.seed)
    channels_first = args.layout == "channels-first"
    try:
        shape = _shape(args, gen)
        channels = shape[1] if channels_first else shape[2]
        if args.groups < 1 or channels % args.groups:
            raise ValueError(f"--groups must divide C={channels}, but got --groups {args.groups}")
        if channels_first:
            checked = checked_shape(shape, args.groups)
            x = args.scale * torch.randn(checked, generator=gen, dtype=torch.float64)
            corner = "" if checked == shape else f", checked against torch on its corner {list(checked)}"
            console.print(
                f"x = {args.scale:g} · randn{list(shape)} (B, C, H, W){corner}, seed {args.seed}, ε = {args.eps:g}"
            )
            agree = print_image_groups(shape, args.groups, x, args.eps, console)
            if out is not None:
                from tokennorm.tools.explain.figures import draw_image_groups

                draw = lambda path: draw_image_groups(shape, num_groups=args.groups, path=path)  # noqa: E731
                _write(draw, out, "image_groups", args.format, console)
            return 0 if agree else 1
        dtype = getattr(torch, args.dtype)
        x = (args.scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
        weight = bias = None
        if args.affine:
            weight = (1 + 0.5 * torch.randn(shape[2], generator=gen, dtype=torch.float64)).to(dtype)
            bias = (0.5 * torch.randn(shape[2], generator=gen, dtype=torch.float64)).to(dtype)
        w = walkthrough(x, args.eps, weight, bias)
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}", soft_wrap=True)
        return 2
    console.print(f"x = {args.scale:g} · randn{list(shape)}, seed {args.seed}, ε = {args.eps:g}")
    print_groups(shape, args.groups, console)
    print_walkthrough(w, console)
    if out is not None:
        from tokennorm.tools.explain.figures import draw_cube, draw_groups
        from tokennorm.tools.explain.groups import NORMS

        for name, draw in (("norm_groups", draw_groups), ("norm_cubes", draw_cube)):
            _write(lambda path: draw(shape, NORMS, args.groups, path), out, name, args.format, console)
    return 0 if w.max_abs_diff <= w.tolerance() else 1
