"""Which elements of a [B, N, C] tensor share one mean and variance, and LayerNorm's arithmetic step by step.

For a batch of B sequences of N tokens with C channels each (``[B, N, C]``, channels last as in a
Transformer):

=============  =========================================  ===========  ===============================
norm           one statistic per                          groups       elements per group
=============  =========================================  ===========  ===============================
LayerNorm      token (b, n), over its C channels          B·N          C
RMSNorm        token (b, n), over its C channels (no μ)   B·N          C
BatchNorm      channel c, over all B·N tokens              C            B·N
InstanceNorm   (b, c), over the N tokens of one sequence   B·C          N
GroupNorm      (b, g), over N tokens × C/G channels        B·G          N·C/G
=============  =========================================  ===========  ===============================

(InstanceNorm and GroupNorm as ``torch.nn.InstanceNorm1d`` / ``GroupNorm`` apply to ``x.transpose(1, 2)``,
i.e. [B, C, N] with the tokens as the length.) Only the first two keep tokens apart: BatchNorm mixes tokens
and sequences, InstanceNorm and GroupNorm mix the tokens of one sequence (the future too).

:func:`stat_groups` gives the group id of every element, :func:`normalize_by_groups` normalizes with those
groups (so the groups drawn are checked against torch's own functions), :func:`draw_groups` draws them, and
:func:`walkthrough` computes LayerNorm's mean, variance, rstd, x̂ and y token by token, next to torch's result
and the seeds' mistakes from :mod:`tokennorm.pitfalls`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from tokennorm.tools.explain import pitfalls

__all__ = [
    "NORMS",
    "NORM_TITLES",
    "stat_groups",
    "normalize_by_groups",
    "torch_norm",
    "draw_groups",
    "draw_cube",
    "Walkthrough",
    "walkthrough",
]

NORMS = ("layernorm", "rmsnorm", "batchnorm", "instancenorm", "groupnorm")
NORM_TITLES = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "batchnorm": "BatchNorm",
               "instancenorm": "InstanceNorm", "groupnorm": "GroupNorm"}
_PER = {
    "layernorm": "per token, over C",
    "rmsnorm": "per token, over C (mean square only)",
    "batchnorm": "per channel, over B·N tokens",
    "instancenorm": "per (sequence, channel), over N",
    "groupnorm": "per (sequence, group), over N·C/G",
}


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be [B, N, C] with positive sizes, but got shape={list(shape)}")
    b, n, c = (int(d) for d in shape)
    return b, n, c


def _check_norm(norm: str, channels: int, num_groups: int) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
    if norm == "groupnorm" and (num_groups < 1 or channels % num_groups):
        raise ValueError(f"num_groups must divide the channels C={channels}, but got num_groups={num_groups}")


def stat_groups(norm: str, shape: Sequence[int], num_groups: int = 2) -> Tensor:
    """Group id (int64 [B, N, C], ids 0..G-1) of every element: equal ids share one mean and variance.

    Ids are numbered in order of first appearance in row-major order, so two norms with the same grouping
    give equal tensors.
    """
    b, n, c = _check_shape(shape)
    _check_norm(norm, c, num_groups)
    bi = torch.arange(b).view(b, 1, 1).expand(b, n, c)
    ni = torch.arange(n).view(1, n, 1).expand(b, n, c)
    ci = torch.arange(c).view(1, 1, c).expand(b, n, c)
    if norm in ("layernorm", "rmsnorm"):
        ids = bi * n + ni
    elif norm == "batchnorm":
        ids = ci
    elif norm == "instancenorm":
        ids = bi * c + ci
    else:
        ids = bi * num_groups + ci // (c // num_groups)
    _, first = torch.unique(ids.flatten(), return_inverse=True)  # renumber by first appearance
    order = torch.full((int(first.max()) + 1,), -1, dtype=torch.long)
    seen = 0
    for g in first.tolist():
        if order[g] < 0:
            order[g] = seen
            seen += 1
    return order[first].view(b, n, c)


def normalize_by_groups(x: Tensor, groups: Tensor, eps: float = 1e-5, centered: bool = True) -> Tensor:
    """(x − μ_g) / sqrt(σ²_g + ε) with μ_g, σ²_g (biased) over each group of :func:`stat_groups`.

    ``centered=False`` is RMSNorm's statistic: x / sqrt(mean_g(x²) + ε). No affine transform.
    """
    if groups.shape != x.shape:
        raise ValueError(f"groups must have the shape of x {list(x.shape)}, but got {list(groups.shape)}")
    flat, ids = x.reshape(-1), groups.reshape(-1)
    k = int(ids.max()) + 1
    count = torch.zeros(k, dtype=x.dtype).index_add_(0, ids, torch.ones_like(flat))
    mean = torch.zeros(k, dtype=x.dtype).index_add_(0, ids, flat) / count if centered else torch.zeros(k, dtype=x.dtype)
    dev = flat - mean[ids]
    var = torch.zeros(k, dtype=x.dtype).index_add_(0, ids, dev * dev) / count
    return (dev / torch.sqrt(var[ids] + eps)).view(x.shape)


def torch_norm(norm: str, x: Tensor, eps: float = 1e-5, num_groups: int = 2) -> Tensor:
    """torch's own function for ``norm`` on [B, N, C] (channels last), training-mode statistics, no affine."""
    _check_norm(norm, x.shape[-1], num_groups)
    if norm == "layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    if norm == "rmsnorm":
        return F.rms_norm(x, x.shape[-1:], eps=eps)
    xt = x.transpose(1, 2)  # [B, C, N]: the layout torch's channel norms expect
    if norm == "batchnorm":
        y = F.batch_norm(xt, None, None, training=True, eps=eps)
    elif norm == "instancenorm":
        y = F.instance_norm(xt, eps=eps)
    else:
        y = F.group_norm(xt, num_groups, eps=eps)
    return y.transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------
# Figures


def _group_colors(count: int) -> Any:
    """``count`` distinguishable colours (tab20, then cycled with alternating lightness)."""
    from matplotlib import colormaps

    base = colormaps["tab20"].colors
    return [base[(2 * i) % 20 + (i // 10) % 2] for i in range(count)]


def _title(norm: str, shape: tuple[int, int, int], num_groups: int) -> str:
    groups = stat_groups(norm, shape, num_groups)
    k = int(groups.max()) + 1
    name = NORM_TITLES[norm] + (f" (G={num_groups})" if norm == "groupnorm" else "")
    return f"{name}: {k} groups × {groups.numel() // k}\n{_PER[norm]}"


def draw_groups(
    shape: Sequence[int] = (2, 3, 4),
    norms: Sequence[str] = NORMS,
    num_groups: int = 2,
    path: Optional[Union[str, Path]] = None,
) -> Any:
    """One panel per norm, same layout: a B × (N·C) grid (row = sequence b; N blocks of C channels, one per
    token) coloured by statistics group. Elements of one colour share one mean and variance; each group's id
    is written in its cells when they fit. Returns the matplotlib Figure; also saves it when ``path`` is given
    (the format follows the suffix: .png, .svg, .pdf).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    b, n, c = _check_shape(shape)
    for norm in norms:
        _check_norm(norm, c, num_groups)
    cell = max(0.12, min(0.45, 9.0 / (n * c)))
    fig = Figure(figsize=(max(6.0, cell * n * c + 1.5), len(norms) * (cell * b + 1.0) + 0.6), layout="constrained")
    axes = fig.subplots(len(norms), 1, squeeze=False)[:, 0]
    for ax, norm in zip(axes, norms):
        groups = stat_groups(norm, (b, n, c), num_groups)
        k = int(groups.max()) + 1
        grid = groups.reshape(b, n * c).numpy()
        ax.imshow(grid, cmap=ListedColormap(_group_colors(k)), vmin=-0.5, vmax=k - 0.5, aspect="equal",
                  interpolation="nearest")
        for t in range(1, n):  # token boundaries
            ax.axvline(t * c - 0.5, color="black", linewidth=1.6)
        for r in range(1, b):  # sequence boundaries
            ax.axhline(r - 0.5, color="black", linewidth=1.6)
        if n * c <= 48:
            for r in range(b):
                for col in range(n * c):
                    ax.text(col, r, str(grid[r, col]), ha="center", va="center", fontsize=7)
        ax.set_xticks([t * c + (c - 1) / 2 for t in range(n)], [f"token {t}" for t in range(n)], fontsize=8)
        ax.set_yticks(range(b), [f"b={r}" for r in range(b)], fontsize=8)
        ax.set_title(_title(norm, (b, n, c), num_groups), fontsize=9)
    fig.suptitle(f"which elements of x [B={b}, N={n}, C={c}] share one mean/variance (same colour = same group)",
                 fontsize=10)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def draw_cube(
    shape: Sequence[int] = (2, 3, 4),
    norms: Sequence[str] = NORMS,
    num_groups: int = 2,
    path: Optional[Union[str, Path]] = None,
) -> Any:
    """The same as :func:`draw_groups` as 3-D cubes (axes B, N, C), in the style of the GroupNorm paper's
    figure: the group of element [0, 0, 0] in blue, every other element light grey. Returns the Figure."""
    import numpy as np
    from matplotlib.figure import Figure

    b, n, c = _check_shape(shape)
    for norm in norms:
        _check_norm(norm, c, num_groups)
    fig = Figure(figsize=(3.2 * len(norms), 3.6), layout="constrained")
    for i, norm in enumerate(norms):
        ax = fig.add_subplot(1, len(norms), i + 1, projection="3d")
        groups = stat_groups(norm, (b, n, c), num_groups)
        # voxel axes: x = token n, y = sequence b (b = 0 in front), z = channel c (upwards), as in the
        # GroupNorm paper's figure; a per-token group is then a visible column on the front face
        filled = np.ones((n, b, c), dtype=bool)
        chosen = (groups == groups[0, 0, 0]).permute(1, 0, 2).numpy()
        colors = np.where(chosen, "#1f77b4", "#e6e6e6").astype(object)
        ax.voxels(filled, facecolors=colors, edgecolor="#555555", linewidth=0.3)
        for setter, size, label in ((ax.set_xticks, n, "N (tokens)"), (ax.set_yticks, b, "B (batch)"),
                                    (ax.set_zticks, c, "C (channels)")):
            setter([i + 0.5 for i in range(size)], [str(i) for i in range(size)], fontsize=6)
        ax.set_xlabel("N (tokens)", fontsize=7)
        ax.set_ylabel("B (batch)", fontsize=7)
        ax.set_zlabel("C (channels)", fontsize=7)
        ax.set_box_aspect((n, b, c), zoom=0.85)
        ax.set_title(_title(norm, (b, n, c), num_groups), fontsize=8)
    fig.suptitle("blue: the elements that share element [0,0,0]'s mean and variance", fontsize=9)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


# ----------------------------------------------------------------------------------------------------------
# Numeric walkthrough


@dataclass
class PitfallError:
    """One of the seeds' mistakes on the walkthrough's input: its output and how far it is from the right y."""

    name: str
    description: str
    right: str
    wrong: str
    y: Tensor  # [B, N, C] float64, with the walkthrough's γ, β
    max_abs_error: float
    relative_error: float  # max|wrong − right| / max|right|
    other_token_change: float  # from tokennorm.pitfalls: 0 for a per-token norm


@dataclass
class Walkthrough:
    """LayerNorm of x [B, N, C] over C, step by step in float64, and torch's result for comparison.

    Per token (b, n): ``mean``, ``var`` (biased), ``rstd = 1/sqrt(var + eps)`` ([B, N]); per element: ``xhat``
    and ``y = xhat · weight + bias`` ([B, N, C]). ``torch_y`` is ``F.layer_norm`` on x in x's own dtype,
    ``torch_mean``/``torch_rstd`` the statistics torch saves for its backward (``aten.native_layer_norm``).
    """

    x: Tensor
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    eps: float
    mean: Tensor
    var: Tensor
    rstd: Tensor
    xhat: Tensor
    y: Tensor
    torch_y: Tensor
    torch_mean: Tensor
    torch_rstd: Tensor
    pitfalls: list[PitfallError]

    @property
    def max_abs_diff(self) -> float:
        """max |y − torch_y| (the float64 walkthrough against torch in x's dtype)."""
        return (self.y - self.torch_y.double()).abs().max().item()

    def tolerance(self) -> float:
        """How close torch must be: 64 · eps of x's dtype relative to max|y| (exact math, torch's rounding)."""
        return 64 * torch.finfo(self.x.dtype).eps * max(1.0, self.y.abs().max().item())


def walkthrough(
    x: Tensor, eps: float = 1e-5, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None
) -> Walkthrough:
    """LayerNorm over the last dim of x [B, N, C], one formula at a time (see :class:`Walkthrough`).

    The mistakes are :data:`tokennorm.pitfalls.PITFALLS` (unbiased variance, ε added to σ, statistics across
    tokens), each run with the same γ, β.
    """
    if x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"x must be a floating [B, N, C] tensor, but got x of size {list(x.shape)} and "
                         f"dtype {x.dtype}")
    c = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"{name} must have shape [C] = [{c}], but got {name} of size {list(p.shape)}")
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, but got eps={eps}")
    xd = x.detach().double()
    wd = None if weight is None else weight.detach().double()
    bd = None if bias is None else bias.detach().double()
    mean = xd.sum(-1) / c  # μ = Σx / C
    var = ((xd - mean[..., None]) ** 2).sum(-1) / c  # σ² = Σ(x − μ)² / C: biased
    rstd = 1.0 / torch.sqrt(var + eps)  # ε inside the square root
    xhat = (xd - mean[..., None]) * rstd[..., None]
    y = xhat
    if wd is not None:
        y = y * wd
    if bd is not None:
        y = y + bd
    torch_y, torch_mean, torch_rstd = torch.ops.aten.native_layer_norm(x.detach(), [c], weight, bias, eps)
    errors = []
    for p in pitfalls.PITFALLS:
        m = pitfalls.measure(p, xd, (c,), eps=eps)  # reuse: the same measurement docs/pitfalls.md reports
        wrong = p.function(xd, (c,), wd, bd, eps=eps)
        diff = (wrong - y).abs().max().item()
        errors.append(PitfallError(p.name, p.description, p.right, p.wrong, wrong, diff,
                                   diff / max(y.abs().max().item(), math.ulp(0.0)), m.other_token_change))
    return Walkthrough(x.detach(), weight, bias, eps, mean, var, rstd, xhat, y, torch_y,
                       torch_mean.view(mean.shape), torch_rstd.view(rstd.shape), errors)
