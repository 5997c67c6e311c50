"""Figures of which elements share statistics: per norm, the tokens × channels grid of each sequence, and 3-D cubes;
for images [B, C, H, W], each channel's H × W map as a tile.

All stay the same size whatever the shape: an axis longer than :data:`SHOWN` draws its first indices, a gap
("⋯" with how many are left out) and its last index, and the group ids of the drawn elements are computed
without building the whole tensor (:func:`~tokennorm.tools.explain.groups.group_ids`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from tokennorm.tools.explain.groups import (
    CHANNELS_FIRST,
    IMAGE_NORMS,
    NORM_SPECS,
    NORMS,
    check_norm,
    check_shape,
    group_count,
    group_ids,
    title,
)

# Most indices drawn per axis (B, N, C): the figures stay readable and bounded in size for any shape.
SHOWN = (3, 6, 8)
SHOWN_IMAGE = (2, 6, 4, 4)  # B, C, H, W of an image figure: 2 images of 6 channel tiles, each 4 × 4 pixels
CELL = 0.34  # inches per grid cell: room for a 4-digit group id at 6.5 pt
PALETTE_SIZE = 20  # tab20: the distinct colours; beyond them the group id written in each cell tells groups apart
BLUE, GREY = "#1f77b4", "#e4e4e4"


def shown_indices(size: int, limit: int) -> list[Optional[int]]:
    """The indices of an axis of ``size`` that a figure draws: all when ``size ≤ limit``, else the first
    ``limit − 2``, ``None`` (a gap), and the last."""
    if size <= limit:
        return list(range(size))
    return [*range(max(limit - 2, 1)), None, size - 1]


def _save(fig: Any, path: Optional[Union[str, Path]]) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)


def _group_colors(count: int) -> list[Any]:
    """A colour per group id: tab20's 20 colours (pairs split so neighbours differ), repeating beyond 20."""
    from matplotlib import colormaps

    base = colormaps["tab20"].colors
    order = [base[2 * i] for i in range(10)] + [base[2 * i + 1] for i in range(10)]
    return [order[i % PALETTE_SIZE] for i in range(count)]


def _panel_title(norm: str, shape: tuple[int, int, int], num_groups: int) -> str:
    k, each = group_count(norm, shape, num_groups)
    return f"{title(norm, num_groups)}: {k:,} groups of {each:,} elements\n{NORM_SPECS[norm].over}"


def _panel_grid(count: int, width_cells: float, height_cells: float, cell: float, head: float) -> tuple[Any, list]:
    """A figure of ``count`` panels, two per row (one if alone), each ``width_cells`` × ``height_cells`` cells of
    ``cell`` inches, under ``head`` inches for the title; returns it and the panels' axes (x from 0 to
    ``width_cells``)."""
    from matplotlib.figure import Figure

    columns = 1 if count == 1 else 2
    rows = -(-count // columns)
    fig = Figure(figsize=(columns * width_cells * cell, rows * height_cells * cell + head))
    fig_w, fig_h = fig.get_size_inches()
    axes = []
    for i in range(count):
        row, column = divmod(i, columns)
        box = (
            column * width_cells * cell / fig_w,
            1 - (head + (row + 1) * height_cells * cell) / fig_h,
            width_cells * cell / fig_w,
            height_cells * cell / fig_h,
        )
        ax = fig.add_axes(box)
        ax.set_xlim(0, width_cells)
        axes.append(ax)
    return fig, axes


def _title(fig: Any, what: str, many: bool) -> None:
    """The group figures' title: the question about ``what``, and how to read the cells (``many``: more groups
    than colours)."""
    how = (
        f"colours repeat after {PALETTE_SIZE} groups: the numbers tell the groups apart"
        if many
        else "same number (and colour) = same group"
    )
    fig.suptitle(
        f"Which elements of {what} share one mean and variance?\n"
        f"Each cell is one element, its number the statistics group ({how})",
        fontsize=9.5,
        y=1 - 0.08 / fig.get_size_inches()[1],
        va="top",
    )


def draw_groups(
    shape: Sequence[int] = (2, 3, 4),
    norms: Sequence[str] = NORMS,
    num_groups: int = 2,
    path: Optional[Union[str, Path]] = None,
) -> Any:
    """One panel per norm: for each sequence b, its tokens (rows) × channels (columns), every cell labelled with
    its statistics group; cells with the same number share one mean and variance. Colours follow the group id
    (distinct up to 20 groups; beyond that they repeat and only the numbers tell groups apart, as the title
    says). Axes longer than :data:`SHOWN` are summarized by a gap. Returns the matplotlib Figure; also saves it
    when ``path`` is given (the format follows the suffix: .png, .svg, .pdf).
    """
    from matplotlib.patches import Rectangle

    shape = check_shape(shape)
    for norm in norms:
        check_norm(norm, shape[2], num_groups)
    bs, ns, cs = (shown_indices(size, limit) for size, limit in zip(shape, SHOWN))
    block_w = [2 if b is None else len(cs) for b in bs]  # a gap in the sequences is a narrow block
    label_w = 2.6  # room for the token labels left of the first block
    top, bottom = 2.6, 2.0  # panel title and block labels above the rows; channel numbers and label below
    content_cells = label_w + sum(block_w) + len(bs) - 1
    width_cells = max(content_cells + 0.4, 4.0 / CELL)  # at least 4 inches: room for the panel title
    height_cells = top + len(ns) + bottom
    fig, axes = _panel_grid(len(norms), width_cells, height_cells, CELL, head=0.7)
    # the indices drawn, as tensors (gaps get index 0 and are not drawn)
    b_idx, n_idx, c_idx = (torch.tensor([i if i is not None else 0 for i in idx]) for idx in (bs, ns, cs))
    many = False
    for norm, ax in zip(norms, axes):
        ax.set_ylim(len(ns) + bottom, -top)  # y grows downwards: row 0 on top
        ax.set_axis_off()
        k, _ = group_count(norm, shape, num_groups)
        many |= k > PALETTE_SIZE
        colors = _group_colors(min(k, PALETTE_SIZE))
        ids = group_ids(
            norm, shape, b_idx.view(-1, 1, 1), n_idx.view(1, -1, 1), c_idx.view(1, 1, -1), num_groups=num_groups
        )
        ax.text(width_cells / 2, -top + 0.2, _panel_title(norm, shape, num_groups), ha="center", va="top", fontsize=8)
        x0 = label_w + (width_cells - content_cells) / 2  # the blocks centred in the panel
        left = x0
        for bi, (b, w) in enumerate(zip(bs, block_w)):
            if b is None:  # the sequences left out
                ax.text(
                    x0 + w / 2,
                    len(ns) / 2,
                    f"⋯\n{shape[0] - len(bs) + 1:,}\nmore",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="dimgray",
                )
                x0 += w + 1
                continue
            ax.text(x0 + w / 2, -0.55, f"sequence b = {b}", ha="center", va="center", fontsize=7.5)
            for col, c in enumerate(cs):
                ax.text(
                    x0 + col + 0.5,
                    len(ns) + 0.45,
                    "⋯" if c is None else str(c),
                    ha="center",
                    va="center",
                    fontsize=5.5 if c is not None and c >= 1000 else 6,
                    color="dimgray",
                )
            for r, n in enumerate(ns):
                for col, c in enumerate(cs):
                    if n is None or c is None:
                        ax.text(
                            x0 + col + 0.5,
                            r + 0.5,
                            "⋮" if n is None else "⋯",
                            ha="center",
                            va="center",
                            fontsize=8,
                            color="dimgray",
                        )
                        continue
                    g = int(ids[bi, r, col])
                    ax.add_patch(
                        Rectangle(
                            (x0 + col, r), 1, 1, facecolor=colors[g % PALETTE_SIZE], edgecolor="white", linewidth=0.8
                        )
                    )
                    ax.text(
                        x0 + col + 0.5, r + 0.5, str(g), ha="center", va="center", fontsize=min(6.5, 28 / len(str(g)))
                    )
            x0 += w + 1
        for r, n in enumerate(ns):
            ax.text(left - 0.2, r + 0.5, "⋮" if n is None else f"token {n}", ha="right", va="center", fontsize=7)
        ax.text((left + x0 - 1) / 2, len(ns) + 1.25, "channel c", ha="center", va="center", fontsize=7, color="dimgray")
    b, n, c = shape
    _title(fig, f"x [B={b:,}, N={n:,}, C={c:,}]", many)
    _save(fig, path)
    return fig


def draw_cube(
    shape: Sequence[int] = (2, 3, 4),
    norms: Sequence[str] = NORMS,
    num_groups: int = 2,
    path: Optional[Union[str, Path]] = None,
) -> Any:
    """The same as :func:`draw_groups` as 3-D blocks in the style of the GroupNorm paper's figure: one slab per
    sequence (b = 0 in front, slabs pulled apart so each is visible), tokens left to right, channel 0 on top;
    the group of element [0, 0, 0] in blue. At most :data:`SHOWN` indices per axis are drawn (a corner of x).
    Returns the Figure.
    """
    import numpy as np
    from matplotlib.figure import Figure

    shape = check_shape(shape)
    for norm in norms:
        check_norm(norm, shape[2], num_groups)
    b_n, n_n, c_n = (min(size, limit) for size, limit in zip(shape, SHOWN))
    fig = Figure(figsize=(3.0 * len(norms), 3.9))
    for i, norm in enumerate(norms):
        ax = fig.add_subplot(1, len(norms), i + 1, projection="3d")
        ids = group_ids(
            norm,
            shape,
            torch.arange(b_n).view(b_n, 1, 1),
            torch.arange(n_n).view(1, n_n, 1),
            torch.arange(c_n).view(1, 1, c_n),
            num_groups=num_groups,
        )
        chosen = (ids == ids[0, 0, 0]).numpy()  # [b, n, c]
        # voxel axes: x = token n, y = depth (sequence b, one empty slice between slabs), z = channel (c = 0 on top)
        depth = 2 * b_n - 1
        filled = np.zeros((n_n, depth, c_n), dtype=bool)
        colors = np.full((n_n, depth, c_n), GREY, dtype=object)
        for b in range(b_n):
            filled[:, 2 * b, :] = True
            colors[:, 2 * b, :] = np.where(chosen[b][:, ::-1], BLUE, GREY)
        ax.voxels(filled, facecolors=colors, edgecolor="#666666", linewidth=0.3)
        ax.set_box_aspect((n_n, depth, c_n), zoom=1.0)
        ax.view_init(elev=22, azim=-58)
        ax.set_axis_off()
        ax.text(n_n / 2, -0.5, -0.6, "N →", ha="center", va="top", fontsize=8)
        ax.text(-0.3, -0.5, c_n / 2, "C ↓", ha="right", va="center", fontsize=8)
        ax.text(n_n + 0.2, depth / 2, 0, "B ↗", ha="left", va="center", fontsize=8)
        k, each = group_count(norm, shape, num_groups)
        ax.set_title(
            f"{title(norm, num_groups)}\n{NORM_SPECS[norm].over}\nblue: {each:,} elements, one statistic", fontsize=8
        )
    drawn = "" if (b_n, n_n, c_n) == shape else f"; drawn: the corner b < {b_n}, n < {n_n}, c < {c_n}"
    fig.suptitle(
        f"x [B={shape[0]:,}, N={shape[1]:,}, C={shape[2]:,}]{drawn}. Blue: the elements that share "
        f"element [0,0,0]'s mean and variance",
        fontsize=9,
    )
    fig.text(
        0.5,
        0.02,
        "N →: tokens, left to right.   C ↓: channels, c = 0 on top.   B ↗: sequences, b = 0 in front "
        "(slabs pulled apart).",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    fig.subplots_adjust(left=0.02, right=0.98, top=0.84, bottom=0.06, wspace=0.05)
    _save(fig, path)
    return fig


def draw_image_groups(
    shape: Sequence[int] = (2, 8, 4, 4),
    norms: Sequence[str] = IMAGE_NORMS,
    num_groups: int = 2,
    path: Optional[Union[str, Path]] = None,
) -> Any:
    """For x [B, C, H, W] (channels first, :data:`~tokennorm.tools.explain.groups.CHANNELS_FIRST`), one panel per
    norm: a row of tiles per image b, one tile per channel c (its H × W map), every cell labelled with its
    statistics group, coloured as in :func:`draw_groups`. Channels-first LayerNorm numbers the pixels (the same
    number through every tile of an image), BatchNorm2d the tiles (the same in every image), InstanceNorm2d each
    tile, GroupNorm runs of C/G tiles. Axes longer than :data:`SHOWN_IMAGE` are summarized by a gap. Returns the
    matplotlib Figure; also saves it when ``path`` is given (format from the suffix)."""
    from matplotlib.patches import Rectangle

    shape = check_shape(shape, CHANNELS_FIRST)
    for norm in norms:
        spec = check_norm(norm, shape[1], num_groups)
        if spec.layout is not CHANNELS_FIRST:
            raise ValueError(f"norms must take x [B, C, H, W] (any of {', '.join(IMAGE_NORMS)}), but got {norm!r}")
    bs, cs, hs, ws = (shown_indices(size, limit) for size, limit in zip(shape, SHOWN_IMAGE))
    cell = 0.28  # inches: 4 tiles of 4 × 4 cells and a gap per image row fit a panel of about 8 inches
    tile_w, tile_h, space, gap_w = len(ws), len(hs), 0.6, 1.8
    widths = [gap_w if c is None else tile_w for c in cs]
    heights = [1.2 if b is None else tile_h for b in bs]
    label_w, top, bottom = 3.4, 2.7, 1.5  # image labels left; panel title and channel labels above; a key below
    content_w = label_w + sum(widths) + space * (len(cs) - 1)
    width_cells = max(content_w + 1.0, 4.2 / cell)  # a margin between the panels
    height_cells = top + sum(heights) + space * (len(bs) - 1) + bottom
    fig, axes = _panel_grid(len(norms), width_cells, height_cells, cell, head=0.75)
    b_idx, c_idx, h_idx, w_idx = (torch.tensor([0 if i is None else i for i in idx]) for idx in (bs, cs, hs, ws))
    many = False
    for norm, ax in zip(norms, axes):
        ax.set_ylim(height_cells - top, -top)  # y grows downwards: image 0 on top
        ax.set_axis_off()
        k, _ = group_count(norm, shape, num_groups)
        many |= k > PALETTE_SIZE
        colors = _group_colors(min(k, PALETTE_SIZE))
        ids = group_ids(
            norm,
            shape,
            b_idx.view(-1, 1, 1, 1),
            c_idx.view(1, -1, 1, 1),
            h_idx.view(1, 1, -1, 1),
            w_idx.view(1, 1, 1, -1),
            num_groups=num_groups,
        )
        ax.text(width_cells / 2, -top + 0.2, _panel_title(norm, shape, num_groups), ha="center", va="top", fontsize=8)
        left = label_w + (width_cells - content_w) / 2
        x = left
        for ci, (c, w) in enumerate(zip(cs, widths)):
            label = f"⋯ {shape[1] - len(cs) + 1:,} more" if c is None else f"c = {c}"
            ax.text(x + w / 2, -0.55, label, ha="center", va="center", fontsize=6 if c is None else 7)
            x += w + space
        y = 0.0
        for bi, (b, h) in enumerate(zip(bs, heights)):
            if b is None:  # the images left out
                left_out = shape[0] - len(bs) + 1
                ax.text(
                    left + (content_w - label_w) / 2,
                    y + h / 2,
                    f"⋮   {left_out:,} more image{'s' * (left_out > 1)}   ⋮",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="dimgray",
                )
                y += h + space
                continue
            ax.text(left - 0.25, y + h / 2, f"image b = {b}", ha="right", va="center", fontsize=7.5)
            x = left
            for ci, (c, w) in enumerate(zip(cs, widths)):
                if c is None:
                    ax.text(x + w / 2, y + h / 2, "⋯", ha="center", va="center", fontsize=9, color="dimgray")
                    x += w + space
                    continue
                for r, hh in enumerate(hs):
                    for col, ww in enumerate(ws):
                        if hh is None or ww is None:
                            mark = "⋮" if hh is None else "⋯"
                            ax.text(
                                x + col + 0.5, y + r + 0.5, mark, ha="center", va="center", fontsize=8, color="dimgray"
                            )
                            continue
                        g = int(ids[bi, ci, r, col])
                        ax.add_patch(
                            Rectangle(
                                (x + col, y + r),
                                1,
                                1,
                                facecolor=colors[g % PALETTE_SIZE],
                                edgecolor="white",
                                linewidth=0.8,
                            )
                        )
                        ax.text(
                            x + col + 0.5,
                            y + r + 0.5,
                            str(g),
                            ha="center",
                            va="center",
                            fontsize=min(6.5, 24 / len(str(g))),
                        )
                x += w + space
            y += h + space
        ax.text(
            (left + x - space) / 2,
            y - space + 0.75,
            f"each tile: one channel's H × W map (H={shape[2]:,} rows, W={shape[3]:,} columns)",
            ha="center",
            va="center",
            fontsize=7,
            color="dimgray",
        )
    b, c, h, w = shape
    _title(fig, f"an image batch x [B={b:,}, C={c:,}, H={h:,}, W={w:,}]", many)
    _save(fig, path)
    return fig
