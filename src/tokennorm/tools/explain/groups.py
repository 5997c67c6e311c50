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

:func:`stat_groups` gives the group id of every element and :func:`normalize_by_groups` normalizes with those
groups, so the groups drawn (:mod:`~tokennorm.tools.explain.figures`) are checked against torch's own functions.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

NORMS = ("layernorm", "rmsnorm", "batchnorm", "instancenorm", "groupnorm")
NORM_TITLES = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "batchnorm": "BatchNorm",
               "instancenorm": "InstanceNorm", "groupnorm": "GroupNorm"}
PER_GROUP = {
    "layernorm": "per token, over C",
    "rmsnorm": "per token, over C (mean square only)",
    "batchnorm": "per channel, over B·N tokens",
    "instancenorm": "per (sequence, channel), over N",
    "groupnorm": "per (sequence, group), over N·C/G",
}


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(B, N, C) of ``shape``; ValueError naming it unless it is three positive sizes."""
    if len(shape) != 3 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be [B, N, C] with positive sizes, but got shape={list(shape)}")
    b, n, c = (int(d) for d in shape)
    return b, n, c


def check_norm(norm: str, channels: int, num_groups: int) -> None:
    """ValueError naming the argument unless ``norm`` is one of :data:`NORMS` and ``num_groups`` divides C."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
    if norm == "groupnorm" and (num_groups < 1 or channels % num_groups):
        raise ValueError(f"num_groups must divide the channels C={channels}, but got num_groups={num_groups}")


def stat_groups(norm: str, shape: Sequence[int], num_groups: int = 2) -> Tensor:
    """Group id (int64 [B, N, C], ids 0..G-1) of every element: equal ids share one mean and variance.

    Ids are numbered in order of first appearance in row-major order, so two norms with the same grouping
    give equal tensors.
    """
    b, n, c = check_shape(shape)
    check_norm(norm, c, num_groups)
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
    check_norm(norm, x.shape[-1], num_groups)
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
