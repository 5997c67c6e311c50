"""The norm choices of a block and its Add & Norm steps: tokennorm's fused AddNorm where it applies.

``layernorm`` and ``rmsnorm`` normalize each token on its own (tokennorm's modules); ``dyt`` replaces the norm by
Dynamic Tanh, element-wise (:class:`tokennorm.DyT`, its add fused by :class:`tokennorm.AddDyT`). ``batchnorm`` pools
statistics over every token of every sequence in the batch — across positions, padding included, and in
training mode across the future of a causal model — and exists to show why that is wrong for sequences.
``none`` is a plain residual connection.
"""

from __future__ import annotations

from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

from tokennorm.dynamic_tanh import AddDyT, DyT
from tokennorm.modules import AddNorm, LayerNorm, RMSNorm

__all__ = ["NORM_TYPES", "PLACEMENTS", "SequenceBatchNorm", "ResidualNorm", "make_norm", "make_add_norm"]

NORM_TYPES = ("layernorm", "rmsnorm", "dyt", "batchnorm", "none")
PLACEMENTS = ("post", "pre")


def check_choices(norm: str, placement: str) -> None:
    if norm not in NORM_TYPES:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORM_TYPES))}, but got norm={norm!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be 'post' or 'pre', but got placement={placement!r}")


class SequenceBatchNorm(nn.BatchNorm1d):
    r"""``torch.nn.BatchNorm1d`` over the channel dim of ``[B, N, C]``: one mean and variance per channel,
    pooled over all ``B·N`` tokens (running statistics in eval mode) — every token sees every other token's
    values, which is why it is here: to show what per-token norms avoid.

    .. math:: y_{b,n,c} = \frac{x_{b,n,c} - \mathrm{E}_{b,n}[x_{\cdot,\cdot,c}]}
              {\sqrt{\mathrm{Var}_{b,n}[x_{\cdot,\cdot,c}] + \epsilon}} \cdot \gamma_c + \beta_c

    Args: as :class:`torch.nn.BatchNorm1d` (``num_features`` = C; ``eps`` 1e-5, ``momentum`` 0.1, ``affine``
    and ``track_running_stats`` True by default).

    Shape:
        - Input: ``[B, N, C]``; Output: the same.

    Example::

        >>> bn = SequenceBatchNorm(64)
        >>> bn(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input.transpose(1, 2)).transpose(1, 2)


class ResidualNorm(nn.Module):
    """Add & Norm with a norm that AddNorm does not fuse (batchnorm, or none): the same contract as
    :class:`tokennorm.AddNorm`: ``h = residual + dropout(x)``, ``y = norm(h)``; post -> y, pre -> (y, h)."""

    def __init__(self, norm: nn.Module, placement: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm, self.placement, self.dropout = norm, placement, dropout

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
        h = F.dropout(x, self.dropout, self.training)
        if residual is not None:
            h = residual + h
        y = self.norm(h)
        return (y, h) if self.placement == "pre" else y

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}, dropout={self.dropout}"


def make_norm(norm: str, d_model: int, eps: float, bias: bool = True, device=None, dtype=None) -> nn.Module:
    """A standalone norm over the last dim (pre-LN's first norm, a stack's final norm)."""
    factory = {"device": device, "dtype": dtype}
    if norm == "layernorm":
        return LayerNorm(d_model, eps=eps, bias=bias, **factory)
    if norm == "rmsnorm":
        return RMSNorm(d_model, eps=eps, **factory)
    if norm == "dyt":
        return DyT(d_model, bias=bias, **factory)  # no ε: DyT has no statistics
    if norm == "batchnorm":
        return SequenceBatchNorm(d_model, eps=eps, **factory)
    return nn.Identity()


def make_add_norm(
    norm: str, d_model: int, placement: str, dropout: float, eps: float, bias: bool = True, device=None, dtype=None
) -> nn.Module:
    """Add & Norm after a sublayer: tokennorm's fused AddNorm for layernorm/rmsnorm, AddDyT for dyt, else
    ResidualNorm."""
    if norm in ("layernorm", "rmsnorm"):
        return AddNorm(
            d_model,
            norm=norm,
            placement=placement,
            dropout=dropout,
            eps=eps,
            bias=bias and norm == "layernorm",
            device=device,
            dtype=dtype,
        )
    if norm == "dyt":
        return AddDyT(d_model, placement, dropout, bias=bias, device=device, dtype=dtype)
    return ResidualNorm(make_norm(norm, d_model, eps, bias, device, dtype), placement, dropout)
