"""The tokennorm modules that stand in for a recognized norm, built around the original's own parameters.

A plain replacement is :class:`tokennorm.LayerNorm`, :class:`tokennorm.RMSNorm` or (for a ``weight + 1`` norm)
:class:`tokennorm.AddNorm` without residual. Where the original's dtypes differ from torch's rules, the
``Patched*`` subclasses do what the original did: cast the output (``dtype_rule``: Llama returns
``promote_types(weight, input)``, T5 the weight's dtype), or cast the parameters to the compute dtype first
(``cast_parameters``: Cohere takes a bfloat16 weight with a float32 input, which torch's LayerNorm refuses).
A parameter-free norm that does not fix its width (``Gemma4RMSNorm(with_scale=False)``) becomes
:class:`PatchedLastDimNorm`, which normalizes the last dim of any width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from tokennorm import functional as TF
from tokennorm.modules import AddNorm, LayerNorm, RMSNorm
from tokennorm.reference import compute_dtype

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
    """Mixin: compute and return the dtypes the replaced norm did. ``cast_parameters``: weight and bias are cast
    to the compute dtype (float32; float64 for a float64 input) and passed to the class's ``_norm``;
    ``dtype_rule`` (one of :data:`DTYPE_RULES`): the output dtype."""

    dtype_rule: str = "input"
    cast_parameters: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if self.cast_parameters:
            dtype = compute_dtype(x.dtype)
            params = (self.weight, getattr(self, "bias", None))  # type: ignore[attr-defined]
            y = self._norm(x, *(None if p is None else p.to(dtype) for p in params))  # type: ignore[attr-defined]
        else:
            y = super().forward(x)  # type: ignore[misc]
        out = _output_dtype(self.dtype_rule, self.weight, x.dtype)  # type: ignore[attr-defined]
        return y if y.dtype == out else y.to(out)

    def extra_repr(self) -> str:
        cast = ", cast_parameters=True" if self.cast_parameters else ""
        return f"{super().extra_repr()}, dtype_rule={self.dtype_rule!r}{cast}"  # type: ignore[misc]


class PatchedLayerNorm(_DtypeRule, LayerNorm):
    """:class:`tokennorm.LayerNorm` computing in the dtypes of the norm it replaced (Cohere: ``cast_parameters``)."""

    def _norm(self, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
        return TF.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class PatchedRMSNorm(_DtypeRule, RMSNorm):
    """:class:`tokennorm.RMSNorm` computing in the dtypes of the norm it replaced (Llama: ``promote``, T5:
    ``weight``)."""

    def _norm(self, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
        return TF.rms_norm(x, self.normalized_shape, weight, self.eps)


class PatchedOffsetNorm(_DtypeRule, AddNorm):
    """:class:`tokennorm.AddNorm` without residual (a norm using ``weight + weight_offset``) computing in the
    dtypes of the norm it replaced."""

    def _norm(self, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
        return TF.add_norm(
            x,
            None,
            weight,
            bias,
            self.eps,
            norm=self.norm,
            weight_offset=self.weight_offset,
            normalized_shape=self.normalized_shape,
        )


class PatchedLastDimNorm(nn.Module):
    r"""A parameter-free LayerNorm or RMSNorm over the last dim of whatever width: the replacement of a norm
    that has neither parameters nor a fixed ``normalized_shape`` (``Gemma4RMSNorm(with_scale=False)``).

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \text{ (layernorm)},\quad
              y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \text{ (rmsnorm)}

    over ``x.shape[-1]``; the output has the input's shape and dtype.

    Args:
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        eps: ε inside the square root (``None`` for RMSNorm: torch's default).
    """

    def __init__(self, norm: str, eps: Optional[float]) -> None:
        super().__init__()
        if norm not in TF.NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, TF.NORMS))}, but got norm={norm!r}")
        self.norm, self.eps = norm, eps

    def forward(self, x: Tensor) -> Tensor:
        if self.norm == "rmsnorm":
            return TF.rms_norm(x, x.shape[-1:], None, self.eps)
        return TF.layer_norm(x, x.shape[-1:], None, None, TF.LAYER_NORM_EPS if self.eps is None else self.eps)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, eps={self.eps}, normalized over the last dim"


TOKENNORM_CLASSES = (LayerNorm, RMSNorm, AddNorm, PatchedLastDimNorm)


@dataclass(frozen=True)
class RecognizedNorm:
    """The computation a probe proved: which norm, ε, weight offset, over which trailing shape (None: the last
    dim, any width), and the module's parameters; then the dtypes the replacement must follow."""

    kind: str
    eps: Optional[float]
    weight_offset: float
    normalized_shape: Optional[tuple[int, ...]]
    weight: Optional[Tensor] = field(repr=False)
    bias: Optional[Tensor] = field(repr=False)
    dtype_rule: str = "input"
    cast_parameters: bool = False

    @property
    def label(self) -> str:
        return f"{self.kind}, weight + {self.weight_offset:g}" if self.weight_offset else self.kind

    def with_params(
        self, weight: Optional[Tensor], bias: Optional[Tensor], dtype_rule: str, cast_parameters: bool = False
    ) -> "RecognizedNorm":
        return RecognizedNorm(
            self.kind, self.eps, self.weight_offset, self.normalized_shape, weight, bias, dtype_rule, cast_parameters
        )


def build_replacement(norm: RecognizedNorm, training: bool) -> nn.Module:
    """The tokennorm module computing ``norm``, sharing its parameter objects (built on the meta device, so
    nothing is allocated before the parameters are put in)."""
    if norm.normalized_shape is None:  # no parameters, no fixed width
        return PatchedLastDimNorm(norm.kind, norm.eps).train(training)
    affine = norm.weight is not None
    plain = norm.dtype_rule == "input" and not norm.cast_parameters
    new: nn.Module
    if norm.weight_offset:
        new = (AddNorm if plain else PatchedOffsetNorm)(
            norm.normalized_shape,
            norm=norm.kind,
            eps=norm.eps,
            bias=norm.bias is not None,
            weight_offset=norm.weight_offset,
            device="meta",
        )
    elif norm.kind == "rmsnorm":
        new = (RMSNorm if plain else PatchedRMSNorm)(norm.normalized_shape, norm.eps, affine, device="meta")
    else:
        new = (LayerNorm if plain else PatchedLayerNorm)(
            norm.normalized_shape, norm.eps, affine, norm.bias is not None, device="meta"
        )
    if not plain:
        new.dtype_rule, new.cast_parameters = norm.dtype_rule, norm.cast_parameters
    if affine:
        new.weight = norm.weight
    if norm.bias is not None:
        new.bias = norm.bias
    return new.train(training)
