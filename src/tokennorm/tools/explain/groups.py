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

Images and audio keep their channels first, x [B, C, H, W] (:data:`CHANNELS_FIRST`), one token per pixel:

=====================  =========================================  ===========  ===============================
norm                   one statistic per                          groups       elements per group
=====================  =========================================  ===========  ===============================
channels-first LN      pixel (b, h, w), over its C channels        B·H·W        C
BatchNorm2d            channel c, over all B·H·W pixels            C            B·H·W
InstanceNorm2d         (b, c), over the H·W pixels of one image    B·C          H·W
GroupNorm              (b, g), over C/G channels × H·W             B·G          C/G·H·W
=====================  =========================================  ===========  ===============================

Channels-first LayerNorm (ConvNeXt, timm's ``LayerNorm2d``, :func:`tokennorm.channels_first_layer_norm`) is the
LayerNorm of a Transformer with the pixels as tokens; it is not the "Layer Norm" of the GroupNorm paper's figure,
which pools C·H·W per image (GroupNorm with G = 1). DyT (:data:`ELEMENTWISE`) has no statistics at all.

Every norm the explain tool knows is one :class:`NormSpec` in :data:`NORM_SPECS`, for the :class:`Layout` it takes:
adding a channels-last norm there makes the tables, grids, cubes, the block diagram and the padding example show
it; a channels-first one, the table and the grid of ``--layout channels-first``. :func:`stat_groups` gives the group id
of every element and :func:`normalize_by_groups` normalizes with those groups, so the groups drawn
(:mod:`~tokennorm.tools.explain.figures`) are checked against torch's own functions (:func:`torch_norm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# (index tensors of each dim of the layout, broadcastable together; the shape; G) -> group id of each element
GroupKey = Callable[..., Tensor]
# (shape, G) -> the number of groups
GroupCount = Callable[[tuple[int, ...], int], int]
# (x in the layout, eps, G) -> torch's own normalization of x, no affine, training-mode statistics
TorchNorm = Callable[[Tensor, float, int], Tensor]


@dataclass(frozen=True)
class Layout:
    """How x is laid out: its dims (``dims``, named), which one holds the channels, and what one token (the
    elements a per-token norm pools) and one batch item are called."""

    name: str
    dims: tuple[str, ...]
    channel_dim: int
    token: str
    item: str

    def probe_shape(self, num_groups: int) -> tuple[int, ...]:
        """Size 2 along every dim and 2·G channels: every grouping that can mix tokens or items does on it."""
        return tuple(2 * max(num_groups, 1) if d == self.channel_dim else 2 for d in range(len(self.dims)))


CHANNELS_LAST = Layout("channels-last", ("B", "N", "C"), 2, "token", "sequence")
CHANNELS_FIRST = Layout("channels-first", ("B", "C", "H", "W"), 1, "pixel", "image")
LAYOUTS = {layout.name: layout for layout in (CHANNELS_LAST, CHANNELS_FIRST)}


def _channels_first(fn: Callable[[Tensor, float, int], Tensor]) -> TorchNorm:
    """torch's channel norms take [B, C, N]: transpose in and out."""
    return lambda x, eps, groups: fn(x.transpose(1, 2), eps, groups).transpose(1, 2)


def _layer_norm_2d(x: Tensor, eps: float, groups: int) -> Tensor:
    """timm's ``LayerNorm2d``: permute [B, C, H, W] to channels-last, ``F.layer_norm`` over C, permute back."""
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=eps).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class NormSpec:
    """One norm as the explain tool shows it.

    ``key(*indices, shape, G)`` numbers the statistics groups from broadcastable index tensors, one per dim of
    ``layout`` (b, n, c for channels-last; b, c, h, w for channels-first), in order of first appearance in
    row-major order, using only the indices the grouping depends on (LayerNorm's key ignores c): equal groupings
    give equal ids, and figures of large shapes compute the ids of the few elements they draw. Groups are of
    equal size, ``count(shape, G)`` of them. ``over`` says what one statistic pools and ``formula`` how, in
    indices of x; ``affine`` what the learned scale and shift are and what shares them; ``centered`` is False for
    norms without a mean (RMSNorm); ``uses_groups`` for norms that take GroupNorm's G.
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
    layout: Layout = CHANNELS_LAST


@dataclass(frozen=True)
class Elementwise:
    """An op that replaces a norm but computes no statistics: every element is transformed alone, so it has no
    groups to draw. ``formula`` is what it computes for each element x."""

    name: str
    title: str
    formula: str

    @property
    def over(self) -> str:
        """The table's "one statistic per" entry."""
        return f"none: elementwise {self.formula}, each element alone"


ELEMENTWISE: dict[str, Elementwise] = {"dyt": Elementwise("dyt", "DyT", "γ·tanh(α·x) + β")}


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
        NormSpec(
            "channels_first_layernorm",
            "LayerNorm, channels first",
            "per pixel, over C",
            "μ[b,h,w], σ²[b,h,w] over c of x[b,c,h,w]",
            "γ, β: one per channel, shared by every pixel",
            lambda b, c, h, w, shape, G: (b * shape[2] + h) * shape[3] + w,
            lambda shape, G: shape[0] * shape[2] * shape[3],
            _layer_norm_2d,
            layout=CHANNELS_FIRST,
        ),
        NormSpec(
            "batchnorm2d",
            "BatchNorm2d",
            "per channel, over B·H·W pixels",
            "μ[c], σ²[c] over b, h and w of x[b,c,h,w]",
            "γ, β: one per channel; eval mode uses running statistics",
            lambda b, c, h, w, shape, G: c,
            lambda shape, G: shape[1],
            lambda x, eps, G: F.batch_norm(x, None, None, training=True, eps=eps),
            layout=CHANNELS_FIRST,
        ),
        NormSpec(
            "instancenorm2d",
            "InstanceNorm2d",
            "per (image, channel), over H·W",
            "μ[b,c], σ²[b,c] over h and w of x[b,c,h,w]",
            "none by default",
            lambda b, c, h, w, shape, G: b * shape[1] + c,
            lambda shape, G: shape[0] * shape[1],
            lambda x, eps, G: F.instance_norm(x, eps=eps),
            layout=CHANNELS_FIRST,
        ),
        NormSpec(
            "groupnorm2d",
            "GroupNorm",
            "per (image, group), over C/G·H·W",
            "μ[b,g], σ²[b,g] over h, w and the C/G channels c of group g",
            "γ, β: one per channel",
            lambda b, c, h, w, shape, G: b * G + c // (shape[1] // G),
            lambda shape, G: shape[0] * G,
            lambda x, eps, G: F.group_norm(x, G, eps=eps),
            uses_groups=True,
            layout=CHANNELS_FIRST,
        ),
    )
}
NORMS = tuple(name for name, spec in NORM_SPECS.items() if spec.layout is CHANNELS_LAST)  # x [B, N, C]
IMAGE_NORMS = tuple(name for name, spec in NORM_SPECS.items() if spec.layout is CHANNELS_FIRST)  # x [B, C, H, W]
NORM_TITLES = {name: spec.title for name, spec in NORM_SPECS.items()}
PER_GROUP = {name: spec.over for name, spec in NORM_SPECS.items()}


def norms_of(layout: Layout) -> tuple[str, ...]:
    """The names of the norms of :data:`NORM_SPECS` that take x in ``layout``."""
    return NORMS if layout is CHANNELS_LAST else IMAGE_NORMS


def check_shape(shape: Sequence[int], layout: Layout = CHANNELS_LAST) -> tuple[int, ...]:
    """``shape`` as ints; ValueError naming it unless it has one positive size per dim of ``layout``."""
    if len(shape) != len(layout.dims) or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be [{', '.join(layout.dims)}] with positive sizes, but got shape={list(shape)}")
    return tuple(int(d) for d in shape)


def check_norm(norm: str, channels: int, num_groups: int) -> NormSpec:
    """The spec of ``norm``; ValueError naming the argument unless ``norm`` is in :data:`NORM_SPECS` and, for
    norms that take groups, ``num_groups`` divides C. An op of :data:`ELEMENTWISE` (DyT) is refused with what it
    computes instead: it has no statistics."""
    if norm in ELEMENTWISE:
        op = ELEMENTWISE[norm]
        raise ValueError(f"norm={norm!r} has no statistics to group: {op.title} is {op.over}")
    if norm not in NORM_SPECS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORM_SPECS))}, but got norm={norm!r}")
    spec = NORM_SPECS[norm]
    if spec.uses_groups and (num_groups < 1 or channels % num_groups):
        raise ValueError(f"num_groups must divide the channels C={channels}, but got num_groups={num_groups}")
    return spec


def _spec_and_shape(norm: str, shape: Sequence[int], num_groups: int) -> tuple[NormSpec, tuple[int, ...]]:
    if norm not in NORM_SPECS:
        check_norm(norm, 1, num_groups)  # raises, naming the argument
    layout = NORM_SPECS[norm].layout
    shape = check_shape(shape, layout)
    return check_norm(norm, shape[layout.channel_dim], num_groups), shape


def title(norm: str, num_groups: int) -> str:
    """The norm's name as shown, with G for norms that take groups: ``"GroupNorm (G=2)"``."""
    spec = NORM_SPECS[norm]
    return spec.title + (f" (G={num_groups})" if spec.uses_groups else "")


def group_ids(norm: str, shape: Sequence[int], *indices: Tensor, num_groups: int = 2) -> Tensor:
    """Group ids (int64) of the elements at ``indices`` (one index tensor per dim of the norm's layout: b, n, c or
    b, c, h, w; broadcast together) of a tensor of ``shape``: the ids :func:`stat_groups` gives, without building
    the whole tensor."""
    spec, shape = _spec_and_shape(norm, shape, num_groups)
    if len(indices) != len(shape):
        raise ValueError(f"indices must be one index tensor per dim of {list(shape)}, but got {len(indices)}")
    return spec.key(*torch.broadcast_tensors(*(i.long() for i in indices)), shape, num_groups)


def group_count(norm: str, shape: Sequence[int], num_groups: int = 2) -> tuple[int, int]:
    """(number of groups, elements per group) of ``norm`` on ``shape``, without materializing x."""
    spec, shape = _spec_and_shape(norm, shape, num_groups)
    k = spec.count(shape, num_groups)
    return k, math.prod(shape) // k


def mixes(norm: str, num_groups: int = 2) -> tuple[bool, bool]:
    """(mixes tokens?, mixes items?): does one statistics group span two tokens (two pixels, channels-first), or
    two batch items (sequences, images)?

    Decided on the layout's probe shape (2 along every dim, 2·G channels), on which every grouping that can mix
    tokens or items does.
    """
    layout = NORM_SPECS[norm].layout if norm in NORM_SPECS else CHANNELS_LAST
    g = stat_groups(norm, layout.probe_shape(num_groups), num_groups)
    token_dims = [d for d in range(g.dim()) if d != layout.channel_dim]
    groups = [(g == k).nonzero() for k in range(int(g.max()) + 1)]
    tokens = max(len({tuple(m[token_dims].tolist()) for m in members}) for members in groups)
    items = max(len(set(members[:, 0].tolist())) for members in groups)
    return tokens > 1, items > 1


def stat_groups(norm: str, shape: Sequence[int], num_groups: int = 2) -> Tensor:
    """Group id (int64, of ``shape``, ids 0..k-1) of every element: equal ids share one mean and variance.

    ``shape`` is [B, N, C] for the channels-last norms (:data:`NORMS`), [B, C, H, W] for the channels-first ones
    (:data:`IMAGE_NORMS`). Ids are numbered in order of first appearance in row-major order, so two norms with
    the same grouping give equal tensors.
    """
    _, shape = _spec_and_shape(norm, shape, num_groups)
    aranges = [
        torch.arange(size).view([-1 if d == i else 1 for d in range(len(shape))]) for i, size in enumerate(shape)
    ]
    return group_ids(norm, shape, *aranges, num_groups=num_groups).contiguous()


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
    """torch's own function for ``norm`` on x in its layout ([B, N, C] or [B, C, H, W]), training-mode
    statistics, no affine."""
    spec, _ = _spec_and_shape(norm, x.shape, num_groups)
    return spec.torch_fn(x, eps, num_groups)
