"""The math of tokennorm, in plain PyTorch: the oracle every kernel and test is checked against.

Rows are the trailing ``normalized_shape`` dims flattened to one axis of ``n`` elements; every other dim is a
token (row). Statistics are computed per row only, so no token ever sees another token's values::

    mean = Σx / n
    var  = Σ(x − mean)² / n          biased: never the unbiased n − 1 estimate
    rstd = 1 / sqrt(var + ε)         ε inside the square root
    x̂    = (x − mean) · rstd
    LayerNorm: y = x̂ · γ + β         γ, β shared by every row
    RMSNorm:   rstd = 1 / sqrt(Σx²/n + ε),  x̂ = x · rstd,  y = x̂ · γ     (ε=None: see default_rms_eps)

The backward passes are written out from the formulas (not autograd), with g = dy · γ::

    LayerNorm: dx = rstd · (g − mean(g) − x̂ · mean(g · x̂));   dγ = Σ_rows dy · x̂;   dβ = Σ_rows dy
    RMSNorm:   dx = rstd · (g − x̂ · mean(g · x̂));             dγ = Σ_rows dy · x̂

Everything is computed in float32 at least (float64 stays float64) and cast back to the input dtype at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "NormGrads",
    "AddNormGrads",
    "compute_dtype",
    "default_rms_eps",
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "add_norm",
    "add_norm_backward",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_rms_eps(dtype: torch.dtype) -> float:
    """torch's default RMSNorm ε when ``eps=None``: the machine epsilon of the *compute* dtype.

    That is float32's epsilon (1.19e-7) for bf16/fp16/fp32 inputs and float64's for float64 inputs, not
    ``finfo(input.dtype).eps`` (0.0078 for bf16), which torch does not use.
    """
    return torch.finfo(compute_dtype(dtype)).eps


def _rows(x: Tensor, normalized_shape: Sequence[int]) -> Tensor:
    """View ``x`` as [rows, n] in the compute dtype. [B, N, C] with normalized_shape (C,) gives [B·N, C]."""
    n = 1
    for d in normalized_shape:
        n *= d
    return x.reshape(-1, n).to(compute_dtype(x.dtype))


def _flat(p: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if p is None else p.reshape(-1).to(dtype)


def _layer_norm_stats(x2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    # Corrected two-pass: the rounded mean's own error is measured on the centred values and removed, so a
    # constant row has mean == its value exactly and var == 0 (y == β, as torch's Welford gives).
    mean0 = x2.mean(dim=1, keepdim=True)  # [rows, 1]
    centred = x2 - mean0  # centred values: no cancellation
    correction = centred.mean(dim=1, keepdim=True)  # [rows, 1]
    var = (centred.square().mean(dim=1, keepdim=True) - correction.square()).clamp_min(0)
    mean = mean0 + correction
    rstd = torch.rsqrt(var + eps)  # [rows, 1], ε inside the square root
    return mean, rstd


def _rms_stats(x2: Tensor, eps: float) -> Tensor:
    return torch.rsqrt(x2.square().mean(dim=1, keepdim=True) + eps)  # [rows, 1]


def layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    weight_offset: float = 0.0,
) -> Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dims; y has x's dtype."""
    x2 = _rows(x, normalized_shape)  # [rows, n]
    mean, rstd = _layer_norm_stats(x2, eps)
    y = (x2 - mean) * rstd  # x̂: [rows, n]
    if weight is not None:
        y = y * (_flat(weight, x2.dtype) + weight_offset)
    if bias is not None:
        y = y + _flat(bias, x2.dtype)
    return y.reshape(x.shape).to(x.dtype)


def rms_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
    weight_offset: float = 0.0,
) -> Tensor:
    """RMSNorm over the trailing ``normalized_shape`` dims; ``eps=None`` means :func:`default_rms_eps`."""
    eps = default_rms_eps(x.dtype) if eps is None else eps
    x2 = _rows(x, normalized_shape)  # [rows, n]
    y = x2 * _rms_stats(x2, eps)  # x̂: [rows, n]
    if weight is not None:
        y = y * (_flat(weight, x2.dtype) + weight_offset)
    return y.reshape(x.shape).to(x.dtype)


@dataclass
class NormGrads:
    """Gradients of a norm: w.r.t. its input, weight and bias (None where the parameter does not exist)."""

    dx: Tensor
    dweight: Optional[Tensor]
    dbias: Optional[Tensor]


def _norm_backward(
    dy: Tensor,
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    is_rms: bool,
    weight_offset: float,
) -> NormGrads:
    x2 = _rows(x, normalized_shape)  # [rows, n]
    dy2 = dy.reshape(x2.shape).to(x2.dtype)  # [rows, n]
    if is_rms:
        rstd = _rms_stats(x2, eps)  # [rows, 1]
        xhat = x2 * rstd  # [rows, n]
    else:
        mean, rstd = _layer_norm_stats(x2, eps)  # [rows, 1] each
        xhat = (x2 - mean) * rstd  # [rows, n]
    g = dy2 if weight is None else dy2 * (_flat(weight, x2.dtype) + weight_offset)  # [rows, n]
    dot = (g * xhat).mean(dim=1, keepdim=True)  # mean(g · x̂): [rows, 1]
    if is_rms:
        dx = rstd * (g - xhat * dot)  # [rows, n]
    else:
        dx = rstd * (g - g.mean(dim=1, keepdim=True) - xhat * dot)  # [rows, n]
    dweight = None if weight is None else (dy2 * xhat).sum(dim=0).reshape(weight.shape).to(weight.dtype)  # [n]
    dbias = None if bias is None else dy2.sum(dim=0).reshape(bias.shape).to(bias.dtype)  # [n]
    return NormGrads(dx.reshape(x.shape).to(x.dtype), dweight, dbias)


def layer_norm_backward(
    dy: Tensor,
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    weight_offset: float = 0.0,
) -> NormGrads:
    """Gradients of :func:`layer_norm` given the upstream gradient ``dy``."""
    return _norm_backward(dy, x, normalized_shape, weight, bias, eps, False, weight_offset)


def rms_norm_backward(
    dy: Tensor,
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
    weight_offset: float = 0.0,
) -> NormGrads:
    """Gradients of :func:`rms_norm` given the upstream gradient ``dy``."""
    eps = default_rms_eps(x.dtype) if eps is None else eps
    return _norm_backward(dy, x, normalized_shape, weight, None, eps, True, weight_offset)


def add_norm(
    x: Tensor,
    residual: Optional[Tensor],
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: Optional[float] = 1e-5,
    *,
    norm: str = "layernorm",
    keep_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    residual_dtype: Optional[torch.dtype] = None,
    weight_offset: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Add & Norm: ``h = residual + dropout(x)``, ``y = Norm(h)``. Returns (y, h).

    ``keep_mask`` (bool, x's shape) says which elements of x dropout keeps; kept ones are scaled by 1/(1 − p).
    h has ``residual_dtype`` (default: the residual's dtype, else x's); y has x's dtype.
    """
    h_dtype = residual_dtype or (residual.dtype if residual is not None else x.dtype)
    acc = compute_dtype(h_dtype)
    xd = x.to(acc)
    if keep_mask is not None:
        xd = torch.where(keep_mask, xd / (1.0 - dropout_p), torch.zeros_like(xd))
    h = (xd if residual is None else residual.to(acc) + xd).to(h_dtype)
    if norm == "rmsnorm":
        y = rms_norm(h, normalized_shape, weight, eps, weight_offset)
        if bias is not None:  # RMSNorm with a bias: y = x̂ · γ + β
            y = (y.to(acc) + bias.to(acc)).to(y.dtype)
    else:
        y = layer_norm(h, normalized_shape, weight, bias, 1e-5 if eps is None else eps, weight_offset)
    return y.to(x.dtype), h


@dataclass
class AddNormGrads:
    """Gradients of Add & Norm w.r.t. x, residual, weight and bias."""

    dx: Tensor
    dresidual: Optional[Tensor]
    dweight: Optional[Tensor]
    dbias: Optional[Tensor]


def add_norm_backward(
    dy: Tensor,
    dh: Optional[Tensor],
    h: Tensor,
    x: Tensor,
    residual: Optional[Tensor],
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: Optional[float] = 1e-5,
    *,
    norm: str = "layernorm",
    keep_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    weight_offset: float = 0.0,
) -> AddNormGrads:
    """Gradients of :func:`add_norm`; ``dh`` is the upstream gradient of the returned h (pre-LN), or None."""
    if norm == "rmsnorm":
        g = rms_norm_backward(dy, h, normalized_shape, weight, eps, weight_offset)
        if bias is not None:
            g.dbias = _rows(dy, normalized_shape).sum(dim=0).reshape(bias.shape).to(bias.dtype)  # Σ_rows dy
    else:
        g = layer_norm_backward(dy, h, normalized_shape, weight, bias, 1e-5 if eps is None else eps, weight_offset)
    dh_total = g.dx.to(compute_dtype(h.dtype))
    if dh is not None:
        dh_total = dh_total + dh.to(dh_total.dtype)
    dx = dh_total
    if keep_mask is not None:
        dx = torch.where(keep_mask, dh_total / (1.0 - dropout_p), torch.zeros_like(dh_total))
    dresidual = None if residual is None else dh_total.to(residual.dtype)
    return AddNormGrads(dx.to(x.dtype), dresidual, g.dweight, g.dbias)
