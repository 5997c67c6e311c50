"""The Transformer block drawn with each norm where it acts and over which axis of [B, N, C] it normalizes.

Article 000 asks for a corrected block diagram: LayerNorm after (post-LN) or before (pre-LN) each sublayer,
normalizing each token's C channels on its own (never across the sequence), with γ and β shared by all tokens.
:func:`draw_block` draws the encoder and decoder layers in both placements, the way
``tokennorm.transformer.EncoderLayer`` / ``DecoderLayer`` compute them (and torch's ``norm_first=False/True``),
and beside them what one norm box computes on [B, N, C], for any norm of
:data:`~tokennorm.tools.explain.groups.NORM_SPECS`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from tokennorm.tools.explain.groups import CHANNELS_LAST, NORM_SPECS, NORMS, check_norm, group_ids, mixes

COLORS = {"norm": "#ffe08a", "attn": "#fdd0a2", "ffn": "#c6dbef", "bad": "#f4a6a6"}


@dataclass(frozen=True)
class Node:
    """One step of a layer, bottom to top: a box (``kind`` in norm, attn, ffn), an add (⊕), or the stream's
    input/output (``io``). ``residual_from`` (adds only) is the node whose output the skip connection carries;
    ``dashed`` marks a norm that exists once per stack, after its last layer."""

    kind: str
    label: str = ""
    residual_from: Optional[int] = None
    dashed: bool = False
    memory: bool = False  # cross-attention: the encoder's output enters from the side


def layer_nodes(decoder: bool, placement: str) -> list[Node]:
    """The steps of an encoder or decoder layer in ``placement`` ("post" or "pre"), bottom to top."""
    sublayers = [
        Node("attn", "masked self-attention\n(causal: token t sees s ≤ t)" if decoder else "multi-head self-attention")
    ]
    if decoder:
        sublayers.append(Node("attn", "cross-attention\n(keys, values: encoder output)", memory=True))
    sublayers.append(Node("ffn", "feed-forward\n(each token alone)"))
    nodes = [Node("io", "x  [B, N, C]" + ("  (target tokens)" if decoder else ""))]
    for sub in sublayers:
        stream = len(nodes) - 1  # the residual stream enters this sublayer here
        if placement == "pre":
            nodes.append(Node("norm"))
        nodes.append(sub)
        nodes.append(Node("add", residual_from=stream))
        if placement == "post":
            nodes.append(Node("norm"))
    if placement == "pre":
        nodes.append(Node("norm", dashed=True))
    nodes.append(Node("io", "to the next layer  [B, N, C]"))
    return nodes


def _draw_layer(ax: Any, nodes: list[Node], norm: str, title: str) -> None:
    from matplotlib.patches import Circle, FancyBboxPatch

    spec = NORM_SPECS[norm]
    bad = mixes(norm)[0]
    step, box_w, box_h, cx, res_x = 1.22, 6.6, 0.86, 4.6, 8.9
    ys = [0.6 + i * step for i in range(len(nodes))]
    arrow = dict(arrowstyle="-|>", color="#333333", linewidth=1.1, shrinkA=0, shrinkB=0)

    def bottom(i: int) -> float:
        return ys[i] - (0.28 if nodes[i].kind == "add" else 0.12 if nodes[i].kind == "io" else box_h / 2)

    def top(i: int) -> float:
        return ys[i] + (0.28 if nodes[i].kind == "add" else 0.12 if nodes[i].kind == "io" else box_h / 2)

    for i, node in enumerate(nodes):
        y = ys[i]
        if node.kind == "io":
            ax.text(cx, y, node.label, ha="center", va="center", fontsize=8.5, style="italic")
        elif node.kind == "add":
            ax.add_patch(Circle((cx, y), 0.28, facecolor="white", edgecolor="#333333", linewidth=1.1))
            ax.text(cx, y, "+", ha="center", va="center", fontsize=12, fontweight="bold")
        else:
            face = COLORS["bad"] if node.kind == "norm" and bad else COLORS[node.kind]
            ax.add_patch(
                FancyBboxPatch(
                    (cx - box_w / 2, y - box_h / 2),
                    box_w,
                    box_h,
                    boxstyle="round,pad=0.02,rounding_size=0.15",
                    facecolor=face,
                    edgecolor="#333333",
                    linewidth=1.1,
                    linestyle="--" if node.dashed else "-",
                )
            )
            if node.kind == "norm":
                ax.text(cx, y + 0.17, spec.title, ha="center", va="center", fontsize=9.5, fontweight="bold")
                ax.text(
                    cx,
                    y - 0.18,
                    spec.over,
                    ha="center",
                    va="center",
                    fontsize=8.5,
                    color="#5a0000" if bad else "#333333",
                )
                if node.dashed:
                    ax.text(
                        cx + box_w / 2 + 0.15,
                        y,
                        "after the\nlast layer\nonly",
                        ha="left",
                        va="center",
                        fontsize=7.5,
                        style="italic",
                    )
            else:
                ax.text(cx, y, node.label, ha="center", va="center", fontsize=8.8, linespacing=1.15)
            if node.memory:
                ax.annotate("", xy=(cx - box_w / 2, y), xytext=(0.15, y), arrowprops=arrow)
                ax.text(0.15, y + 0.3, "encoder\noutput", ha="left", va="bottom", fontsize=7.5, style="italic")
        if i + 1 < len(nodes):
            ax.annotate("", xy=(cx, bottom(i + 1)), xytext=(cx, top(i)), arrowprops=arrow)
        if node.residual_from is not None:  # the skip connection: branch off, around the sublayer, into ⊕
            r = node.residual_from
            y0 = (top(r) + bottom(r + 1)) / 2
            ax.plot([cx, res_x, res_x], [y0, y0, y], color="#555555", linewidth=1.1)
            ax.annotate("", xy=(cx + 0.28, y), xytext=(res_x, y), arrowprops=arrow)
            ax.plot([cx], [y0], marker="o", markersize=3, color="#333333")
    ax.text(
        res_x + 0.12,
        (ys[0] + ys[3]) / 2,
        "residual",
        rotation=90,
        ha="left",
        va="center",
        fontsize=7.5,
        color="#555555",
    )
    ax.set_xlim(0, 9.6)
    ax.set_ylim(0, 0.6 + 12 * step)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9.5, loc="center")


def _draw_norm_axis(ax: Any, norm: str, num_groups: int) -> None:
    """What one norm box computes: x [B, N, C] for 2 sequences of 4 tokens × 6 channels, the elements of one
    statistic (element [0,0,0]'s group) in colour, and γ, β below."""
    from matplotlib.patches import Rectangle

    spec = NORM_SPECS[norm]
    b_n, n_n, c_n = 2, 4, 6
    groups = 2 if num_groups < 1 or c_n % num_groups else num_groups
    ids = group_ids(
        norm,
        (b_n, n_n, c_n),
        torch.arange(b_n).view(-1, 1, 1),
        torch.arange(n_n).view(1, -1, 1),
        torch.arange(c_n).view(1, 1, -1),
        num_groups=groups,
    )
    chosen = ids == ids[0, 0, 0]
    bad_tokens, bad_seqs = mixes(norm, groups)
    cell, top = 0.55, 12.4
    for b in range(b_n):
        x0 = 0.9 + b * (c_n + 1.2) * cell
        ax.text(x0 + c_n * cell / 2, top + 0.45, f"sequence b = {b}", ha="center", fontsize=8)
        for n in range(n_n):
            y = top - (n + 1) * cell
            if b == 0:
                ax.text(0.8, y + cell / 2, f"token {n}", ha="right", va="center", fontsize=7.5)
            for c in range(c_n):
                on = bool(chosen[b, n, c])
                ax.add_patch(
                    Rectangle(
                        (x0 + c * cell, y),
                        cell,
                        cell,
                        linewidth=0.8,
                        edgecolor="white",
                        facecolor=(COLORS["bad"] if bad_tokens else "#e6a800") if on else "#dddddd",
                    )
                )
        for c in range(c_n):  # γ, β: one per channel, the same for every token
            ax.add_patch(
                Rectangle(
                    (x0 + c * cell, top - (n_n + 1) * cell - 0.35),
                    cell,
                    cell * 0.7,
                    facecolor="#b9e3b0",
                    edgecolor="white",
                    linewidth=0.8,
                )
            )
        ax.text(x0 + c_n * cell / 2, top - n_n * cell - 0.2, "channels c →", ha="center", va="top", fontsize=7)
    ax.text(0.8, top - (n_n + 1) * cell - 0.35 + cell * 0.35, "γ, β", ha="right", va="center", fontsize=7.5)
    lines = [
        (f"What one {spec.title} box computes on x [B, N, C]", "bold", "black"),
        (f"One statistic {spec.over}:", None, "black"),
        (f"  {spec.formula}", None, "black"),
        (f"(the coloured cells{'' if bad_tokens else ': one token, all its channels'}).", None, "black"),
        ("Learned scale and shift (green):", None, "black"),
        *((f"  {line}", None, "black") for line in textwrap.wrap(spec.affine + ".", 44)),
    ]
    if bad_tokens:
        lines += [
            ("✗ Statistics mix tokens" + (" and sequences" if bad_seqs else "") + ":", None, "#8b0000"),
            ("in a decoder the future and PAD tokens leak", None, "#8b0000"),
            ("into every output (in training mode).", None, "#8b0000"),
        ]
    else:
        lines += [
            ("✓ No token sees another token's statistics:", None, "#1a6b1a"),
            ("B·N separate (μ, σ²) pairs, so the causal", None, "#1a6b1a"),
            ("mask holds and PAD cannot move real tokens.", None, "#1a6b1a"),
        ]
    lines += [
        ("", None, "black"),
        ("post-LN: a norm after each residual add.", None, "black"),
        ("pre-LN: a norm before each sublayer; the", None, "black"),
        ("residual stream itself is normalized only", None, "black"),
        ("once, after the last layer.", None, "black"),
    ]
    for i, (text, weight, color) in enumerate(lines):
        ax.text(
            0.1,
            8.7 - i * 0.42,
            text,
            ha="left",
            va="top",
            fontsize=8.8 if weight else 8.5,
            fontweight=weight,
            color=color,
        )
    ax.set_xlim(0, 9)
    ax.set_ylim(0, 0.6 + 12 * 1.22)
    ax.set_axis_off()


def draw_block(norm: str = "layernorm", path: Optional[Union[str, Path]] = None, num_groups: int = 2) -> Any:
    """The Transformer encoder and decoder layer, post-LN and pre-LN, with every ``norm`` box where it acts and
    the axis it normalizes (``norm``: a name in :data:`~tokennorm.tools.explain.groups.NORM_SPECS`, default
    LayerNorm), and a panel showing what one norm box computes on [B, N, C]. Returns the matplotlib Figure;
    also saves it when ``path`` is given (format from the suffix: .png, .svg, .pdf)."""
    from matplotlib.figure import Figure

    spec = check_norm(norm, 2 * max(num_groups, 1), num_groups)
    if spec.layout is not CHANNELS_LAST:
        raise ValueError(
            f"norm must take x [B, N, C] (one of {', '.join(map(repr, NORMS))}): every arrow of the block carries "
            f"a sequence, but got norm={norm!r}, which takes x [{', '.join(spec.layout.dims)}]"
        )
    fig = Figure(figsize=(19.5, 8.6))
    widths = [1, 1, 1, 1, 1.0]
    axes = fig.subplots(1, 5, gridspec_kw={"width_ratios": widths})
    name = NORM_SPECS[norm].title
    panels = [
        (False, "post", f"Encoder layer, post-{name}\n(original Transformer; torch norm_first=False)"),
        (False, "pre", f"Encoder layer, pre-{name}\n(GPT-2 style; torch norm_first=True)"),
        (True, "post", f"Decoder layer, post-{name}\n(original Transformer)"),
        (True, "pre", f"Decoder layer, pre-{name}\n(GPT-style decoder-only LMs drop the cross-attention)"),
    ]
    for ax, (decoder, placement, title) in zip(axes, panels):
        _draw_layer(ax, layer_nodes(decoder, placement), norm, title)
    _draw_norm_axis(axes[4], norm, num_groups)
    fig.suptitle(
        f"Where {name} sits in a Transformer layer, and what it normalizes: every arrow carries x "
        f"[B, N, C] (B sequences, N tokens, C channels)",
        fontsize=11,
    )
    fig.subplots_adjust(left=0.005, right=0.995, top=0.9, bottom=0.01, wspace=0.04)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig
