"""The tokennorm modules that stand in for a recognized norm, built around the original's own parameters.

A plain replacement is :class:`tokennorm.LayerNorm`, :class:`tokennorm.RMSNorm` or (for a ``weight + 1`` norm)
:class:`tokennorm.AddNorm` without residual; where the original's output dtype differs from its input's, the
``Patched*`` subclasses cast the output as the original did (``dtype_rule``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from tokennorm.modules import AddNorm, LayerNorm, RMSNorm

# The dtype of a norm's output when its parameters and its input differ in dtype: the input's (torch, Gemma),
# promote_types(weight, input) (Llama: float32 weight × normalized input cast back), or the weight's (T5).
DTYPE_RULES = ("input", "promote", "weight")


def _output_dtype(rule: str, weight: Optional[Tensor], input_dtype: torch.dtype) -> torch.dtype:
    return rule_dtype(rule, None if weight is None else weight.dtype, input_dtype)


def rule_dtype(rule: str, weight_dtype: Optional[torch.dtype], input_dtype: torch.dtype) -> torch.dtype:
    """The output dtype ``rule`` (one of :data:`DTYPE_RULES`) gives for these weight and input dtypes."""
    if rule == "input" or weight_dtype is None:
        return input_dtype
    return weight_dtype if rule == "weight" else torch.promote_types(weight_dtype, input_dtype)


class _DtypeRule:
    """Mixin: return the output in the dtype the replaced norm gave (``dtype_rule``, one of DTYPE_RULES)."""

    dtype_rule: str = "input"

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # type: ignore[misc]
        out = _output_dtype(self.dtype_rule, self.weight, x.dtype)  # type: ignore[attr-defined]
        return y if y.dtype == out else y.to(out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dtype_rule={self.dtype_rule!r}"  # type: ignore[misc]


class PatchedLayerNorm(_DtypeRule, LayerNorm):
    """:class:`tokennorm.LayerNorm` whose output dtype follows ``dtype_rule`` (what the norm it replaced did)."""


class PatchedRMSNorm(_DtypeRule, RMSNorm):
    """:class:`tokennorm.RMSNorm` whose output dtype follows ``dtype_rule`` (Llama: ``promote``, T5: ``weight``)."""


class PatchedOffsetNorm(_DtypeRule, AddNorm):
    """:class:`tokennorm.AddNorm` without residual (a norm using ``weight + weight_offset``) whose output dtype
    follows ``dtype_rule``."""


TOKENNORM_CLASSES = (LayerNorm, RMSNorm, AddNorm)


@dataclass(frozen=True)
class RecognizedNorm:
    """The computation a probe proved: which norm, ε, weight offset, and the module's parameters."""

    kind: str
    eps: Optional[float]
    weight_offset: float
    normalized_shape: tuple[int, ...]
    weight: Optional[Tensor] = field(repr=False)
    bias: Optional[Tensor] = field(repr=False)
    dtype_rule: str = "input"

    @property
    def label(self) -> str:
        return f"{self.kind}, weight + {self.weight_offset:g}" if self.weight_offset else self.kind

    def with_params(self, weight: Optional[Tensor], bias: Optional[Tensor], dtype_rule: str) -> "RecognizedNorm":
        return RecognizedNorm(self.kind, self.eps, self.weight_offset, self.normalized_shape, weight, bias, dtype_rule)


def build_replacement(norm: RecognizedNorm, training: bool) -> nn.Module:
    """The tokennorm module computing ``norm``, sharing its parameter objects (built on the meta device, so
    nothing is allocated before the parameters are put in)."""
    affine = norm.weight is not None
    plain = norm.dtype_rule == "input"
    new: nn.Module
    if norm.weight_offset:
        new = (AddNorm if plain else PatchedOffsetNorm)(
            norm.normalized_shape, norm=norm.kind, eps=norm.eps, bias=norm.bias is not None,
            weight_offset=norm.weight_offset, device="meta")
    elif norm.kind == "rmsnorm":
        new = (RMSNorm if plain else PatchedRMSNorm)(norm.normalized_shape, norm.eps, affine, device="meta")
    else:
        new = (LayerNorm if plain else PatchedLayerNorm)(
            norm.normalized_shape, norm.eps, affine, norm.bias is not None, device="meta")
    if not plain:
        new.dtype_rule = norm.dtype_rule
    if affine:
        new.weight = norm.weight
    if norm.bias is not None:
        new.bias = norm.bias
    return new.train(training)
