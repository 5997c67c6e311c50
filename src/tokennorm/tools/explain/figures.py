"""Figures of which elements share statistics: one B × (N·C) grid per norm, and 3-D cubes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from tokennorm.tools.explain.groups import NORM_TITLES, NORMS, PER_GROUP, check_norm, check_shape, stat_groups


def _group_colors(count: int) -> Any:
    """``count`` distinguishable colours (tab20, then cycled with alternating lightness)."""
    from matplotlib import colormaps

    base = colormaps["tab20"].colors
    return [base[(2 * i) % 20 + (i // 10) % 2] for i in range(count)]


def _title(norm: str, shape: tuple[int, int, int], num_groups: int) -> str:
    groups = stat_groups(norm, shape, num_groups)
    k = int(groups.max()) + 1
    name = NORM_TITLES[norm] + (f" (G={num_groups})" if norm == "groupnorm" else "")
    return f"{name}: {k} groups × {groups.numel() // k}\n{PER_GROUP[norm]}"


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

    b, n, c = check_shape(shape)
    for norm in norms:
        check_norm(norm, c, num_groups)
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

    b, n, c = check_shape(shape)
    for norm in norms:
        check_norm(norm, c, num_groups)
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
