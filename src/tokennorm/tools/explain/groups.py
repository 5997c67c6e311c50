"""Which elements of a [B, N, C] tensor share one mean and variance, under each norm of :data:`NORM_SPECS`.

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

Every norm the explain tool knows is one :class:`NormSpec` in :data:`NORM_SPECS`: adding a norm there makes the
tables, grids, cubes, the block diagram and the padding example show it. :func:`stat_groups` gives the group id
of every element and :func:`normalize_by_groups` normalizes with those groups, so the groups drawn
(:mod:`~tokennorm.tools.explain.figures`) are checked against torch's own functions (:func:`torch_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# (b, n, c: index tensors broadcastable to [B, N, C]; (B, N, C); G) -> group id of each element, broadcastable
GroupKey = Callable[[Tensor, Tensor, Tensor, tuple[int, int, int], int], Tensor]
# ((B, N, C), G) -> the number of groups
GroupCount = Callable[[tuple[int, int, int], int], int]
# (x [B, N, C], eps, G) -> torch's own normalization of x, no affine, training-mode statistics
TorchNorm = Callable[[Tensor, float, int], Tensor]


def _channels_first(fn: Callable[[Tensor, float, int], Tensor]) -> TorchNorm:
    """torch's channel norms take [B, C, N]: transpose in and out."""
    return lambda x, eps, groups: fn(x.transpose(1, 2), eps, groups).transpose(1, 2)


@dataclass(frozen=True)
class NormSpec:
    """One norm as the explain tool shows it.

    ``key(b, n, c, shape, G)`` numbers the statistics groups from broadcastable index tensors, in order of first
    appearance in row-major order, using only the indices the grouping depends on (LayerNorm's key ignores c):
    equal groupings give equal ids, and figures of large shapes compute the ids of the few elements they draw.
    Groups are of equal size, ``count(shape, G)`` of them. ``over`` says what one statistic pools and ``formula``
    how, in indices of x[b, n, c]; ``affine`` what the learned scale and shift are and what shares them;
    ``centered`` is False for norms without a mean (RMSNorm); ``uses_groups`` for norms that take GroupNorm's G.
    """

    name: str
    title: str
    over: str
    formula: str
    affine: str
    key: GroupKey
    count: GroupCount
    torch_fn: TorchNorm
    centered: bool = True
    uses_groups: bool = False


NORM_SPECS: dict[str, NormSpec] = {
    spec.name: spec
    for spec in (
        NormSpec(
            "layernorm",
            "LayerNorm",
            "per token, over C",
            "μ[b,n], σ²[b,n] over c of x[b,n,c]",
            "γ, β: one per channel, shared by every token",
            lambda b, n, c, shape, G: b * shape[1] + n,
            lambda shape, G: shape[0] * shape[1],
            lambda x, eps, G: F.layer_norm(x, x.shape[-1:], eps=eps),
        ),
        NormSpec(
            "rmsnorm",
            "RMSNorm",
            "per token, over C (mean square only)",
            "mean of x[b,n,c]² over c",
            "γ: one per channel, shared by every token",
            lambda b, n, c, shape, G: b * shape[1] + n,
            lambda shape, G: shape[0] * shape[1],
            lambda x, eps, G: F.rms_norm(x, x.shape[-1:], eps=eps),
            centered=False,
        ),
        NormSpec(
            "batchnorm",
            "BatchNorm",
            "per channel, over B·N tokens",
            "μ[c], σ²[c] over b and n of x[b,n,c]",
            "γ, β: one per channel; eval mode uses running statistics",
            lambda b, n, c, shape, G: c,
            lambda shape, G: shape[2],
            _channels_first(lambda x, eps, G: F.batch_norm(x, None, None, training=True, eps=eps)),
        ),
        NormSpec(
            "instancenorm",
            "InstanceNorm",
            "per (sequence, channel), over N",
            "μ[b,c], σ²[b,c] over n of x[b,n,c]",
            "none by default",
            lambda b, n, c, shape, G: b * shape[2] + c,
            lambda shape, G: shape[0] * shape[2],
            _channels_first(lambda x, eps, G: F.instance_norm(x, eps=eps)),
        ),
        NormSpec(
            "groupnorm",
            "GroupNorm",
            "per (sequence, group), over N·C/G",
            "μ[b,g], σ²[b,g] over n and the C/G channels c of group g",
            "γ, β: one per channel",
            lambda b, n, c, shape, G: b * G + c // (shape[2] // G),
            lambda shape, G: shape[0] * G,
            _channels_first(lambda x, eps, G: F.group_norm(x, G, eps=eps)),
            uses_groups=True,
        ),
    )
}
NORMS = tuple(NORM_SPECS)
NORM_TITLES = {name: spec.title for name, spec in NORM_SPECS.items()}
PER_GROUP = {name: spec.over for name, spec in NORM_SPECS.items()}


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(B, N, C) of ``shape``; ValueError naming it unless it is three positive sizes."""
    if len(shape) != 3 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be [B, N, C] with positive sizes, but got shape={list(shape)}")
    b, n, c = (int(d) for d in shape)
    return b, n, c


def check_norm(norm: str, channels: int, num_groups: int) -> NormSpec:
    """The spec of ``norm``; ValueError naming the argument unless ``norm`` is one of :data:`NORMS` and, for
    norms that take groups, ``num_groups`` divides C."""
    if norm not in NORM_SPECS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
    spec = NORM_SPECS[norm]
    if spec.uses_groups and (num_groups < 1 or channels % num_groups):
        raise ValueError(f"num_groups must divide the channels C={channels}, but got num_groups={num_groups}")
    return spec


def title(norm: str, num_groups: int) -> str:
    """The norm's name as shown, with G for norms that take groups: ``"GroupNorm (G=2)"``."""
    spec = NORM_SPECS[norm]
    return spec.title + (f" (G={num_groups})" if spec.uses_groups else "")


def group_ids(norm: str, shape: Sequence[int], b: Tensor, n: Tensor, c: Tensor, num_groups: int = 2) -> Tensor:
    """Group ids (int64) of the elements at index tensors ``b``, ``n``, ``c`` (broadcast together) of a tensor
    of ``shape``: the ids :func:`stat_groups` gives, without building the whole [B, N, C] tensor."""
    shape = check_shape(shape)
    spec = check_norm(norm, shape[2], num_groups)
    b, n, c = torch.broadcast_tensors(b.long(), n.long(), c.long())
    return spec.key(b, n, c, shape, num_groups)


def group_count(norm: str, shape: Sequence[int], num_groups: int = 2) -> tuple[int, int]:
    """(number of groups, elements per group) of ``norm`` on ``shape``, without materializing [B, N, C]."""
    B, N, C = check_shape(shape)
    k = check_norm(norm, C, num_groups).count((B, N, C), num_groups)
    return k, B * N * C // k


def mixes(norm: str, num_groups: int = 2) -> tuple[bool, bool]:
    """(mixes tokens?, mixes sequences?): does one statistics group span two tokens, or two sequences?

    Decided on the shape (2, 2, 2·G), on which every grouping that can mix tokens or sequences does.
    """
    g = stat_groups(norm, (2, 2, 2 * max(num_groups, 1)), num_groups)
    groups = [(g == k).nonzero() for k in range(int(g.max()) + 1)]
    tokens = max(len({(b, n) for b, n, _ in members.tolist()}) for members in groups)
    sequences = max(len(set(members[:, 0].tolist())) for members in groups)
    return tokens > 1, sequences > 1


def stat_groups(norm: str, shape: Sequence[int], num_groups: int = 2) -> Tensor:
    """Group id (int64 [B, N, C], ids 0..G-1) of every element: equal ids share one mean and variance.

    Ids are numbered in order of first appearance in row-major order, so two norms with the same grouping
    give equal tensors.
    """
    b, n, c = check_shape(shape)
    ids = group_ids(
        norm,
        (b, n, c),
        torch.arange(b).view(b, 1, 1),
        torch.arange(n).view(1, n, 1),
        torch.arange(c).view(1, 1, c),
        num_groups,
    )
    return ids.contiguous()


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
    return check_norm(norm, x.shape[-1], num_groups).torch_fn(x, eps, num_groups)
