"""Article 003's padded batch, LayerNorm against BatchNorm, and its z-score example, computed and drawn.

The article embeds two sentences of different length in 8 channels and pads the shorter one::

    "I love AI" + PAD                    "Transformers are powerful models"
    [0.1, 0.2, 0.3, 0.4, 0, 0, 0, 0]     [0.3, 0.2, 0.1, 0.4, 0.5, 0.6, 0.7, 0.8]
    [0.5, 0.6, 0.7, 0.8, 0, 0, 0, 0]     [0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]
    [0.9, 1.0, 1.1, 1.2, 0, 0, 0, 0]     [0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]
    [0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0]     [0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0]

and argues that BatchNorm computes "models" together with the PAD token, while LayerNorm normalizes each token
by itself. :func:`padding_example` measures it: LayerNorm's output for a real token is the same whatever the PAD
row holds (exactly), BatchNorm's (training-mode statistics over all B·N tokens of each channel, as
``torch.nn.BatchNorm1d`` computes them) moves when the PAD row changes or is left out of the statistics.
:func:`z_score_example` is the article's ``[4, 8, 3] → μ = 5, σ = 2.16`` with the biased σ that LayerNorm uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

SENTENCES = (("I", "love", "AI", "PAD"), ("Transformers", "are", "powerful", "models"))
EMBEDDINGS = (
    (
        (0.1, 0.2, 0.3, 0.4, 0, 0, 0, 0),
        (0.5, 0.6, 0.7, 0.8, 0, 0, 0, 0),
        (0.9, 1.0, 1.1, 1.2, 0, 0, 0, 0),
        (0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0),
    ),
    (
        (0.3, 0.2, 0.1, 0.4, 0.5, 0.6, 0.7, 0.8),
        (0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6),
        (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4),
        (0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0),
    ),
)
Z_SCORE_INPUT = (4.0, 8.0, 3.0)


@dataclass
class PaddingExample:
    """Article 003's batch x [2, 4, 8] (float64) through LayerNorm and BatchNorm (ε as given, no affine).

    ``pad`` is the key-padding mask [2, 4] (True at PAD). ``batchnorm_without_pad`` normalizes with statistics
    over the real tokens only (what a padding-aware norm would compute); ``pad_shift`` is the largest change
    of any real token's output when the PAD row is replaced by ``pad_probe`` (an arbitrary embedding): exactly 0
    for LayerNorm, not for BatchNorm.
    """

    tokens: tuple[tuple[str, ...], ...]
    x: Tensor
    pad: Tensor
    eps: float
    layernorm: Tensor
    batchnorm: Tensor
    batchnorm_without_pad: Tensor
    batchnorm_mean: Tensor  # [8]: per channel, over all 8 tokens (PAD included)
    batchnorm_mean_without_pad: Tensor  # [8]: over the 7 real tokens
    pad_probe: Tensor
    pad_shift: dict[str, float]  # norm title -> largest change of a real token's output


def padding_example(eps: float = 1e-5) -> PaddingExample:
    """Run the article's padded batch through LayerNorm and BatchNorm (see :class:`PaddingExample`)."""
    x = torch.tensor(EMBEDDINGS, dtype=torch.float64)
    pad = torch.tensor([[t == "PAD" for t in s] for s in SENTENCES])
    real = ~pad

    def layernorm(z: Tensor) -> Tensor:
        return F.layer_norm(z, z.shape[-1:], eps=eps)

    def batchnorm(z: Tensor) -> Tensor:  # training-mode statistics per channel over all B·N tokens
        return F.batch_norm(z.transpose(1, 2), None, None, training=True, eps=eps).transpose(1, 2)

    tokens = x[real]  # [7, 8]: the real tokens
    var_real, mean_real = torch.var_mean(tokens, dim=0, correction=0)
    without_pad = (x - mean_real) / torch.sqrt(var_real + eps)
    without_pad = torch.where(pad[..., None], torch.nan, without_pad)  # PAD rows: not normalized, not shown
    probe = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=torch.float64)  # any other PAD embedding
    x_probe = torch.where(pad[..., None], probe, x)
    shift = {
        "LayerNorm": (layernorm(x_probe) - layernorm(x))[real].abs().max().item(),
        "BatchNorm": (batchnorm(x_probe) - batchnorm(x))[real].abs().max().item(),
    }
    return PaddingExample(
        SENTENCES,
        x,
        pad,
        eps,
        layernorm(x),
        batchnorm(x),
        without_pad,
        x.reshape(-1, x.shape[-1]).mean(0),
        mean_real,
        probe,
        shift,
    )


@dataclass
class ZScore:
    """z = (x − μ) / σ for the article's [4, 8, 3], with σ biased (÷ n, LayerNorm's) and unbiased (÷ (n − 1))."""

    x: Tensor
    mean: float
    std: float
    z: Tensor
    std_unbiased: float
    z_unbiased: Tensor


def z_score_example(values: tuple[float, ...] = Z_SCORE_INPUT) -> ZScore:
    """The article's z-score example: [4, 8, 3] → μ = 5, σ = 2.16, z = [−0.46, 1.39, −0.93] (σ biased)."""
    x = torch.tensor(values, dtype=torch.float64)
    std = x.std(correction=0).item()
    std_unbiased = x.std(correction=1).item()
    mean = x.mean().item()
    return ZScore(x, mean, std, (x - mean) / std, std_unbiased, (x - mean) / std_unbiased)


def draw_padding(example: Optional[PaddingExample] = None, path: Optional[Union[str, Path]] = None) -> Any:
    """The padded batch, LayerNorm(x), BatchNorm(x) and the change BatchNorm makes to real tokens when PAD is
    left out of its statistics, as grids with every number printed. Returns the Figure; saves it at ``path``."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    ex = example or padding_example()
    change = torch.where(ex.pad[..., None], torch.nan, ex.batchnorm - ex.batchnorm_without_pad)
    panels = [
        ("x: the embeddings (article 003)", ex.x, "values"),
        ("LayerNorm(x): each token by itself", ex.layernorm, "normalized"),
        ("BatchNorm(x): per channel over all 8 tokens,\nPAD included", ex.batchnorm, "normalized"),
        ("BatchNorm(x) − BatchNorm without PAD\n(what the PAD token does to real tokens)", change, "change"),
    ]
    b, n, c = ex.x.shape
    cell_w, cell_h = 0.5, 0.34
    fig = Figure(figsize=(4 * (c * cell_w + 0.3) + 1.2, b * (n * cell_h + 0.45) + 1.55))
    axes = fig.subplots(1, 4)
    cmaps = {"values": colormaps["Greens"], "normalized": colormaps["RdBu_r"], "change": colormaps["PuOr_r"]}
    for i, (ax, (name, data, kind)) in enumerate(zip(axes, panels)):
        finite = data[torch.isfinite(data)]
        lim = max(finite.abs().max().item(), 1e-12)
        scale = TwoSlopeNorm(0.0, -lim, lim) if kind != "values" else None
        for bi in range(b):
            y0 = bi * (n + 1.2)
            for ni in range(n):
                is_pad = bool(ex.pad[bi, ni])
                if i == 0:
                    ax.text(
                        -0.2,
                        y0 + ni + 0.5,
                        ex.tokens[bi][ni],
                        ha="right",
                        va="center",
                        fontsize=8,
                        color="dimgray" if is_pad else "black",
                        style="italic" if is_pad else "normal",
                    )
                for ci in range(c):
                    v = data[bi, ni, ci].item()
                    if v != v:  # NaN: a PAD row that the panel does not define
                        ax.add_patch(
                            Rectangle(
                                (ci, y0 + ni), 1, 1, facecolor="white", edgecolor="#bbbbbb", hatch="///", linewidth=0.5
                            )
                        )
                        continue
                    face = cmaps[kind](v / lim) if scale is None else cmaps[kind](scale(v))
                    ax.add_patch(Rectangle((ci, y0 + ni), 1, 1, facecolor=face, edgecolor="white", linewidth=0.6))
                    dark = scale(v) if scale is not None else v / lim
                    ax.text(
                        ci + 0.5,
                        y0 + ni + 0.5,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white"
                        if (kind != "values" and abs(dark - 0.5) > 0.35) or (kind == "values" and dark > 0.7)
                        else "black",
                    )
        ax.set_xlim(-0.05, c + 0.05)
        ax.set_ylim(b * (n + 1.2) - 0.9, -0.8)
        ax.set_aspect(cell_h / cell_w * 1.45)
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
        for ci in range(c):
            ax.text(ci + 0.5, -0.35, f"c{ci + 1}", ha="center", va="center", fontsize=6.5, color="dimgray")
    fig.suptitle(
        "Article 003's padded batch: LayerNorm leaves real tokens alone, BatchNorm lets PAD in. "
        f"Replacing the PAD embedding moves real tokens by {ex.pad_shift['LayerNorm']:.3g} under LayerNorm "
        f"and by {ex.pad_shift['BatchNorm']:.3g} under BatchNorm.",
        fontsize=9.5,
    )
    fig.subplots_adjust(left=0.075, right=0.995, top=0.8, bottom=0.02, wspace=0.08)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig
