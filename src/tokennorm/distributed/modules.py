"""Modules holding this rank's slice of γ and β for a hidden dim sharded across a process group.

``normalized_shape`` is the full hidden size; each rank owns ``shard_sizes[rank]`` consecutive elements of it,
starting at ``shard_offset`` (default split: DTensor's, :func:`default_shard_sizes`). These are not subclasses
of torch's norms on purpose: their parameters are slices, and code that treats every ``nn.LayerNorm`` as
replicated (e.g. :func:`allreduce_norm_grads`) must not mistake them for whole ones.
"""

from __future__ import annotations

import copy
import numbers
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tokennorm.distributed.tensor_parallel import (
    NORMS,
    default_shard_sizes,
    sharded_add_norm,
    sharded_layer_norm,
    sharded_rms_norm,
)
from tokennorm.modules import AddNorm
from tokennorm.reference import LAYER_NORM_EPS

__all__ = ["ShardedLayerNorm", "ShardedRMSNorm", "ShardedAddNorm"]

_Shape = Union[int, Sequence[int], torch.Size]


class _ShardedNormModule(nn.Module):
    """Shard layout and parameter slices shared by the sharded norm modules."""

    def _init_shards(
        self,
        normalized_shape: _Shape,
        group: Optional[dist.ProcessGroup],
        shard_sizes: Optional[Sequence[int]],
        elementwise_affine: bool,
        has_bias: bool,
        validate: bool,
        factory: dict,
    ) -> None:
        shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)
        if len(shape) != 1:
            raise ValueError(
                f"{type(self).__name__} shards one hidden dim: normalized_shape must be an int or a 1-tuple, "
                f"but got normalized_shape={normalized_shape!r}"
            )
        self.normalized_shape = (int(shape[0]),)
        self.group = group
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if rank < 0:
            raise ValueError(f"group: this rank (global rank {dist.get_rank()}) is not a member of the group")
        n = self.normalized_shape[0]
        sizes = default_shard_sizes(n, world) if shard_sizes is None else tuple(int(s) for s in shard_sizes)
        if len(sizes) != world or min(sizes) < 0 or sum(sizes) != n:
            raise ValueError(
                f"shard_sizes={list(sizes)} must give one non-negative size per rank of the group ({world} ranks) "
                f"adding up to normalized_shape[0]={n}"
            )
        self.shard_sizes = sizes
        self.shard_offset = sum(sizes[:rank])
        self.local_size = sizes[rank]
        self.elementwise_affine = elementwise_affine
        self.validate = validate
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.local_size, **factory))
            self.bias = nn.Parameter(torch.empty(self.local_size, **factory)) if has_bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def __deepcopy__(self, memo: dict) -> "_ShardedNormModule":
        # A process group cannot be copied (nor pickled): copies share it.
        if self.group is not None:
            memo[id(self.group)] = self.group
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def shard(self, full: Tensor) -> Tensor:
        """This rank's slice of ``full`` along its last dim (a view)."""
        return full.narrow(-1, self.shard_offset, self.local_size)

    def _copy_slices(self, dense: nn.Module) -> None:
        with torch.no_grad():
            for name in ("weight", "bias"):
                mine, theirs = getattr(self, name), getattr(dense, name, None)
                if mine is not None:
                    mine.copy_(self.shard(theirs.detach()))

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, shard_sizes={self.shard_sizes}, shard_offset={self.shard_offset}, "
            f"eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


def _factory(dense: nn.Module) -> dict:
    p = next(dense.parameters(), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


class ShardedLayerNorm(_ShardedNormModule):
    r"""LayerNorm over a hidden dim sharded across ``group``: input and output are this rank's slice.

    .. math:: y_i = \frac{x_i - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma_i + \beta_i

    Same arguments as :class:`torch.nn.LayerNorm` (``normalized_shape`` is the full hidden size) plus
    ``group`` (default: the world), ``shard_sizes`` (default: DTensor's split) and ``validate`` (see
    :func:`sharded_layer_norm`). Accepts a DTensor sharded ``Shard(-1)`` and returns one.

    Examples::

        >>> ln = ShardedLayerNorm.from_dense(torch.nn.LayerNorm(4096), group=tp_group)
        >>> y_shard = ln(ln.shard(x))       # x: [batch, tokens, 4096] on every rank
    """

    def __init__(
        self,
        normalized_shape: _Shape,
        eps: float = LAYER_NORM_EPS,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        group: Optional[dist.ProcessGroup] = None,
        shard_sizes: Optional[Sequence[int]] = None,
        validate: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self._init_shards(
            normalized_shape, group, shard_sizes, elementwise_affine, bias, validate, {"device": device, "dtype": dtype}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @classmethod
    def from_dense(cls, norm: nn.LayerNorm, group=None, shard_sizes=None, validate: bool = True) -> "ShardedLayerNorm":
        """This rank's slice of a whole :class:`torch.nn.LayerNorm` (parameters copied)."""
        m = cls(
            norm.normalized_shape,
            norm.eps,
            norm.elementwise_affine,
            norm.bias is not None,
            group=group,
            shard_sizes=shard_sizes,
            validate=validate,
            **_factory(norm),
        )
        m._copy_slices(norm)
        return m

    def forward(self, x_shard: Tensor) -> Tensor:
        return sharded_layer_norm(
            x_shard, self.weight, self.bias, self.eps, self.group, self.normalized_shape[0], validate=self.validate
        )


class ShardedRMSNorm(_ShardedNormModule):
    r"""RMSNorm over a hidden dim sharded across ``group``: input and output are this rank's slice.

    .. math:: y_i = \frac{x_i}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \cdot \gamma_i

    Same arguments as :class:`torch.nn.RMSNorm` plus ``group``, ``shard_sizes``, ``validate``.
    """

    def __init__(
        self,
        normalized_shape: _Shape,
        eps: Optional[float] = None,
        elementwise_affine: bool = True,
        *,
        group: Optional[dist.ProcessGroup] = None,
        shard_sizes: Optional[Sequence[int]] = None,
        validate: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self._init_shards(
            normalized_shape,
            group,
            shard_sizes,
            elementwise_affine,
            False,
            validate,
            {"device": device, "dtype": dtype},
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    @classmethod
    def from_dense(cls, norm: nn.RMSNorm, group=None, shard_sizes=None, validate: bool = True) -> "ShardedRMSNorm":
        """This rank's slice of a whole :class:`torch.nn.RMSNorm` (weight copied)."""
        m = cls(
            norm.normalized_shape,
            norm.eps,
            norm.elementwise_affine,
            group=group,
            shard_sizes=shard_sizes,
            validate=validate,
            **_factory(norm),
        )
        m._copy_slices(norm)
        return m

    def forward(self, x_shard: Tensor) -> Tensor:
        return sharded_rms_norm(
            x_shard, self.weight, self.eps, self.group, self.normalized_shape[0], validate=self.validate
        )


class ShardedAddNorm(_ShardedNormModule):
    r"""Add & Norm (:class:`tokennorm.AddNorm`) over a hidden dim sharded across ``group``.

    Same arguments and ``forward(x, residual)`` contract as :class:`tokennorm.AddNorm` (post: ``y``; pre:
    ``(y, h)``), on this rank's slices, plus ``group``, ``shard_sizes``, ``validate``.
    """

    def __init__(
        self,
        normalized_shape: _Shape,
        norm: str = "layernorm",
        placement: str = "post",
        dropout: float = 0.0,
        eps: Optional[float] = None,
        elementwise_affine: bool = True,
        bias: Optional[bool] = None,
        residual_dtype: Optional[torch.dtype] = None,
        weight_offset: float = 0.0,
        *,
        group: Optional[dist.ProcessGroup] = None,
        shard_sizes: Optional[Sequence[int]] = None,
        validate: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
        if placement not in ("post", "pre"):
            raise ValueError(f"placement must be 'post' or 'pre', but got placement={placement!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout}")
        self.norm, self.placement, self.dropout = norm, placement, dropout
        self.eps = eps if eps is not None or norm == "rmsnorm" else LAYER_NORM_EPS
        self.residual_dtype, self.weight_offset = residual_dtype, weight_offset
        has_bias = (norm == "layernorm") if bias is None else bias
        self._init_shards(
            normalized_shape,
            group,
            shard_sizes,
            elementwise_affine,
            has_bias,
            validate,
            {"device": device, "dtype": dtype},
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.constant_(self.weight, 1.0 - self.weight_offset)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @classmethod
    def from_dense(cls, add_norm: AddNorm, group=None, shard_sizes=None, validate: bool = True) -> "ShardedAddNorm":
        """This rank's slice of a whole :class:`tokennorm.AddNorm` (parameters copied)."""
        m = cls(
            add_norm.normalized_shape,
            add_norm.norm,
            add_norm.placement,
            add_norm.dropout,
            add_norm.eps,
            add_norm.elementwise_affine,
            add_norm.bias is not None,
            add_norm.residual_dtype,
            add_norm.weight_offset,
            group=group,
            shard_sizes=shard_sizes,
            validate=validate,
            **_factory(add_norm),
        )
        m._copy_slices(add_norm)
        return m

    def forward(self, x_shard: Tensor, residual_shard: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
        return sharded_add_norm(
            x_shard,
            residual_shard,
            self.weight,
            self.bias,
            self.eps,
            self.group,
            self.normalized_shape[0],
            norm=self.norm,
            dropout_p=self.dropout,
            training=self.training,
            prenorm=self.placement == "pre",
            residual_dtype=self.residual_dtype,
            weight_offset=self.weight_offset,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        s = f"{super().extra_repr()}, norm={self.norm!r}, placement={self.placement!r}, dropout={self.dropout}"
        return s + (f", weight_offset={self.weight_offset}" if self.weight_offset else "")
