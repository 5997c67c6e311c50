"""Tensor-parallel LayerNorm, RMSNorm and Add & Norm over a hidden dim sharded across a process group.

Every rank holds the same tokens and a slice of each token's hidden vector (shards may be uneven, even empty),
with the matching slice of γ and β. Per call, per row:

* forward, LayerNorm: each rank computes the mean and centred sum of squares of its slice (fp32); one
  all-gather shares them; every rank merges them in the same order (:mod:`._stats`) into the row's mean and
  variance and normalizes its slice. RMSNorm: one all-reduce of Σx² per row.
* backward: one all-reduce of the two row sums dx needs, Σg and Σg·x̂ with g = dy·γ (RMSNorm: Σg·x̂ only);
  dγ and dβ of a slice depend on that slice alone, so they need no communication.

Before that, by default, one tiny all-gather checks every rank's arguments (see :mod:`._validate`), so a bad
argument raises the same error on every rank instead of hanging the group; ``validate=False`` skips it.
The local work runs tokennorm's kernels where tokennorm's backend picks Triton (CUDA tensors by default):
forward, one pass writes the slice's moments and one normalizes it with the merged statistics; backward, one
pass writes the slice's two row sums and one computes dx and dγ/dβ with the reduced ones. Elsewhere it is plain
PyTorch in fp32, with the same collectives.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from tokennorm.backend import use_triton
from tokennorm.distributed._dtensor import unwrap
from tokennorm.distributed._stats import local_moments, merge_moments
from tokennorm.distributed._validate import LocalProblem, all_gather_single, exchange_and_check
from tokennorm.kernels import launch
from tokennorm.reference import LAYER_NORM_EPS, compute_dtype, default_rms_eps, norm_eps

__all__ = ["default_shard_sizes", "sharded_layer_norm", "sharded_rms_norm", "sharded_add_norm"]

NORMS = ("layernorm", "rmsnorm")


def default_shard_sizes(full_size: int, world_size: int) -> tuple[int, ...]:
    """How DTensor's ``Shard`` splits ``full_size`` over ``world_size`` ranks (``torch.chunk``).

    ceil(full_size / world_size) elements per rank; the last ranks get fewer, possibly none:
    ``default_shard_sizes(10, 4) == (3, 3, 3, 1)``, ``default_shard_sizes(5, 4) == (2, 2, 1, 0)``.
    """
    if full_size < 0 or world_size < 1:
        raise ValueError(f"need full_size >= 0 and world_size >= 1, but got {full_size} and {world_size}")
    chunk = -(-full_size // world_size)
    return tuple(max(0, min(chunk, full_size - r * chunk)) for r in range(world_size))


def _row_stats(x2: Tensor, eps: float, is_rms: bool, group) -> tuple[Optional[Tensor], Tensor, Tensor]:
    """(mean [rows, 1] or None, rstd [rows, 1], N [1]) of the full rows, from this rank's [rows, n_i] slice."""
    rows, width = x2.shape
    if is_rms:
        buf = torch.cat([x2.square().sum(dim=1), x2.new_full((1,), float(width))])  # [rows + 1]: Σx², n_i
        dist.all_reduce(buf, group=group)
        total = buf[rows:]  # [1]
        return None, torch.rsqrt(buf[:rows, None] / total + eps), total
    mine = local_moments(x2)  # [2·rows + 1]
    world = dist.get_world_size(group)
    gathered = mine.new_empty(world * mine.numel())
    all_gather_single(gathered, mine, group=group)
    mean, var, total = merge_moments(gathered.view(world, -1), rows)
    return mean, torch.rsqrt(var + eps), total


def _triton_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    is_rms: bool,
    weight_offset: float,
    group,
) -> tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """The forward with tokennorm's kernels for the local work: one pass for this slice's moments, the same
    collective and merge as the torch path, one pass to normalize. Returns (y, mean, rstd, N) like it."""
    rows, width = math.prod(x.shape[:-1]), x.shape[-1]
    x2 = _row_major(x.reshape(rows, width))
    seg_mean, seg_m2 = launch.segment_moments(x2, is_rms)  # [rows] each; zeros for an empty shard
    acc = seg_m2.dtype
    if is_rms:
        buf = torch.cat([seg_m2, seg_m2.new_full((1,), float(width))])  # [rows + 1]: Σx², n_i
        dist.all_reduce(buf, group=group)
        total = buf[rows:]
        mean, rstd = None, 1.0 / torch.sqrt(buf[:rows, None] / total + eps)
    else:
        mine = torch.cat([seg_mean, seg_m2, seg_m2.new_full((1,), float(width))])  # [2·rows + 1]
        world = dist.get_world_size(group)
        gathered = mine.new_empty(world * mine.numel())
        all_gather_single(gathered, mine, group=group)
        mean, var, total = merge_moments(gathered.view(world, -1), rows)
        rstd = 1.0 / torch.sqrt(var + eps)
    w = None if weight is None else weight.contiguous()
    b = None if bias is None else bias.contiguous()
    y = launch.segment_apply(
        x2, w, b, None if mean is None else mean[:, 0].to(acc), rstd[:, 0].to(acc), weight_offset, is_rms
    )
    return y.reshape(x.shape), mean, rstd, total


def _triton_backward(
    ctx, dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Optional[Tensor], rstd: Tensor, total: Tensor
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The backward with tokennorm's kernels: one pass for this slice's Σg·x̂ and Σg, the same all-reduce as
    the torch path, one pass for dx and this slice's dγ/dβ partials."""
    rows, width = math.prod(x.shape[:-1]), x.shape[-1]
    x2 = _row_major(x.reshape(rows, width))
    dy2 = _row_major(dy.reshape(rows, width))
    acc = compute_dtype(x.dtype)
    mean_rows = x2.new_empty(0, dtype=acc) if mean is None else mean.reshape(rows).contiguous()
    rstd_rows = rstd.reshape(rows).contiguous()
    w = None if weight is None else weight.contiguous()
    sums = launch.segment_sums(dy2, x2, w, mean_rows, rstd_rows, ctx.weight_offset, mean is None)  # [rows, 2]
    # The same collective as the torch path: Σg·x̂, and Σg for LayerNorm only.
    reduced = sums if mean is not None else sums[:, :1].contiguous()
    if rows:
        dist.all_reduce(reduced, group=ctx.group)
    row_means = (reduced if mean is not None else torch.cat([reduced, reduced.new_zeros(rows, 1)], 1)) / total
    needs_dw, needs_db = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    out = launch.segment_dx(
        dy2, x2, w, mean_rows, rstd_rows, row_means, ctx.weight_offset, mean is None, needs_dw, needs_db, x.dtype
    )
    dx = out.dx.reshape(x.shape) if ctx.needs_input_grad[0] else None
    dweight = out.dweight.to(weight.dtype) if needs_dw else None
    dbias = out.dbias.to(ctx.bias_dtype) if needs_db else None
    return dx, dweight, dbias


def _row_major(t: Tensor) -> Tensor:
    """``t`` with a last stride of 1 (the kernels' layout), copied only when needed."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


class _ShardedNorm(torch.autograd.Function):
    """y = x̂ · (γ + weight_offset) + β on this rank's slice, with x̂ from the statistics of the full rows."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, is_rms, weight_offset, group):
        rows = math.prod(x.shape[:-1])
        ctx.weight_offset, ctx.group = weight_offset, group
        ctx.bias_dtype = None if bias is None else bias.dtype
        if use_triton(x):
            y, mean, rstd, total = _triton_forward(x, weight, bias, eps, is_rms, weight_offset, group)
            ctx.save_for_backward(x, weight, mean, rstd, total)
            return y
        x2 = x.reshape(rows, x.shape[-1]).to(compute_dtype(x.dtype))  # [rows, n_i]
        mean, rstd, total = _row_stats(x2, eps, is_rms, group)
        xhat = (x2 if mean is None else x2 - mean) * rstd  # [rows, n_i]
        y = xhat if weight is None else xhat * (weight.to(x2.dtype) + weight_offset)
        y = y if bias is None else y + bias.to(x2.dtype)
        ctx.save_for_backward(x, weight, mean, rstd, total)
        return y.reshape(x.shape).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, mean, rstd, total = ctx.saved_tensors
        if use_triton(x):
            dx, dweight, dbias = _triton_backward(ctx, dy, x, weight, mean, rstd, total)
            return dx, dweight, dbias, None, None, None, None
        rows = math.prod(x.shape[:-1])
        acc = compute_dtype(x.dtype)
        x2 = x.reshape(rows, x.shape[-1]).to(acc)  # [rows, n_i]
        dy2 = dy.reshape(x2.shape).to(acc)  # [rows, n_i]
        xhat = (x2 if mean is None else x2 - mean) * rstd  # recomputed, not stored: [rows, n_i]
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            g = dy2 if weight is None else dy2 * (weight.to(acc) + ctx.weight_offset)  # [rows, n_i]
            sums = (g * xhat).sum(dim=1, keepdim=True)  # Σ g·x̂ over this slice: [rows, 1]
            if mean is not None:
                sums = torch.cat([sums, g.sum(dim=1, keepdim=True)], dim=1)  # and Σ g: [rows, 2]
            if rows:
                dist.all_reduce(sums, group=ctx.group)  # now over the full rows
            row_means = sums / total  # mean(g·x̂), mean(g): [rows, 1 or 2]
            dx2 = g - xhat * row_means[:, :1]
            if mean is not None:
                dx2 = dx2 - row_means[:, 1:]
            dx = (rstd * dx2).reshape(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dweight = (dy2 * xhat).sum(dim=0).to(weight.dtype)  # [n_i]: this rank's slice of dγ
        if ctx.needs_input_grad[2]:
            dbias = dy2.sum(dim=0).to(ctx.bias_dtype)  # [n_i]
        return dx, dweight, dbias, None, None, None, None


def _norm(
    fn: str,
    x_shard: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: Optional[float],
    is_rms: bool,
    group,
    full_size: Optional[int],
    validate: bool,
) -> Tensor:
    if eps is None and not is_rms:
        raise TypeError(f"{fn}: eps must be a float, but got eps=None")
    local = unwrap(fn, x_shard, weight, bias, None, group, full_size)
    x = local.x
    eps = default_rms_eps(x.dtype) if eps is None else eps
    if validate:
        exchange_and_check(
            fn, x, local.weight, local.bias, local.full_size, eps, is_rms, local.problems, local.group, x.requires_grad
        )
    y = _ShardedNorm.apply(x, local.weight, local.bias, eps, is_rms, 0.0, local.group)
    return local.rewrap(y)


def sharded_layer_norm(
    x_shard: Tensor,
    weight_shard: Optional[Tensor] = None,
    bias_shard: Optional[Tensor] = None,
    eps: float = LAYER_NORM_EPS,
    group: Optional[dist.ProcessGroup] = None,
    full_size: Optional[int] = None,
    *,
    validate: bool = True,
) -> Tensor:
    r"""LayerNorm of rows whose last dim is sharded across the ranks of ``group``; returns this rank's slice.

    .. math:: y_i = \frac{x_i - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma_i + \beta_i

    where E and Var run over the full row (all ranks' slices) and i is this rank's slice. Equal to
    ``F.layer_norm`` of the gathered rows, sliced.

    Args:
        x_shard: [*, n_i], this rank's slice of the last dim; every rank holds the same tokens. Or a DTensor
            sharded ``Shard(-1)`` on one mesh dim (other mesh dims may split or replicate the tokens); its
            local tensor is used, its mesh dim's group replaces ``group``, and the result is a DTensor with
            the same placements.
        weight_shard, bias_shard: [n_i] slices of γ and β (or DTensors ``Shard(0)`` on that mesh dim).
        group: the process group across which the last dim is sharded. Default: the world.
        full_size: the full normalized size; checked against the sum of the shard sizes when given.
        validate: check every rank's arguments with one tiny all-gather first (default), so bad arguments
            raise the same error on every rank. ``False`` saves that collective once the setup is known good.
    """
    return _norm("sharded_layer_norm", x_shard, weight_shard, bias_shard, eps, False, group, full_size, validate)


def sharded_rms_norm(
    x_shard: Tensor,
    weight_shard: Optional[Tensor] = None,
    eps: Optional[float] = None,
    group: Optional[dist.ProcessGroup] = None,
    full_size: Optional[int] = None,
    *,
    validate: bool = True,
) -> Tensor:
    r"""RMSNorm of rows whose last dim is sharded across ``group``; returns this rank's slice.

    .. math:: y_i = \frac{x_i}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \cdot \gamma_i

    ``eps=None`` is torch's default (the machine epsilon of the compute dtype). Other arguments as
    :func:`sharded_layer_norm`.
    """
    return _norm("sharded_rms_norm", x_shard, weight_shard, None, eps, True, group, full_size, validate)


def sharded_add_norm(
    x_shard: Tensor,
    residual_shard: Optional[Tensor] = None,
    weight_shard: Optional[Tensor] = None,
    bias_shard: Optional[Tensor] = None,
    eps: Optional[float] = None,
    group: Optional[dist.ProcessGroup] = None,
    full_size: Optional[int] = None,
    *,
    norm: str = "layernorm",
    dropout_p: float = 0.0,
    training: bool = True,
    prenorm: bool = False,
    residual_dtype: Optional[torch.dtype] = None,
    weight_offset: float = 0.0,
    validate: bool = True,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""Add & Norm on a sharded hidden dim: ``h = residual + dropout(x)``, ``y = Norm(h) · (γ + offset) + β``.

    Same contract as :func:`tokennorm.add_norm` (returns ``y``, or ``(y, h)`` with ``prenorm=True``; h in
    ``residual_dtype``, y in x's dtype), with the statistics of Norm taken over the full rows as in
    :func:`sharded_layer_norm`. The add and dropout are elementwise, so each rank does them on its slice;
    dropout draws from each rank's own torch RNG (seed the ranks differently for independent masks).
    """
    fn = "sharded_add_norm"
    if norm not in NORMS:
        raise ValueError(f"{fn}: norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{fn}: dropout_p must be in [0, 1), but got dropout_p={dropout_p}")
    if residual_dtype is not None and not residual_dtype.is_floating_point:
        raise TypeError(f"{fn}: residual_dtype must be a floating-point dtype, but got {residual_dtype}")
    local = unwrap(fn, x_shard, weight_shard, bias_shard, residual_shard, group, full_size)
    x, residual = local.x, local.residual
    problems = local.problems
    if residual is not None and residual.shape != x.shape:
        problems |= LocalProblem.RESIDUAL_SHAPE
    is_rms = norm == "rmsnorm"
    h_dtype = residual_dtype or (residual.dtype if residual is not None else x.dtype)
    eps = norm_eps(eps, is_rms, h_dtype)
    needs_grad = x.requires_grad or (residual is not None and residual.requires_grad)
    if validate:
        exchange_and_check(
            fn, x, local.weight, local.bias, local.full_size, eps, is_rms, problems, local.group, needs_grad
        )
    p = dropout_p if training else 0.0
    xd = F.dropout(x, p, training=True) if p > 0.0 else x
    # add_norm's contract: h from the exact operands in their compute dtype, rounded once to h's dtype
    acc = compute_dtype(x.dtype, h_dtype, *(() if residual is None else (residual.dtype,)))
    h = (xd.to(acc) if residual is None else residual.to(acc) + xd.to(acc)).to(h_dtype, copy=True)
    y = _ShardedNorm.apply(h, local.weight, local.bias, eps, is_rms, weight_offset, local.group).to(x.dtype)
    y = local.rewrap(y)
    return (y, local.rewrap(h)) if prenorm else y
