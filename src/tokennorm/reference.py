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

The adaptive, dynamic and channels-first forms (issue 18) are defined at :func:`ada_norm`, :func:`dyt` and
:func:`layer_norm_channels_first`, each with its hand-written backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "NormGrads",
    "AddNormGrads",
    "LAYER_NORM_EPS",
    "compute_dtype",
    "default_rms_eps",
    "norm_eps",
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "add_norm",
    "add_norm_backward",
    "AdaNormGrads",
    "ada_norm",
    "ada_norm_backward",
    "DyTGrads",
    "dyt",
    "dyt_backward",
    "add_dyt",
    "add_dyt_backward",
    "layer_norm_channels_first",
    "layer_norm_channels_first_backward",
]


LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float64 when any of ``dtypes`` (the tensors an op computes from) is
    float64, float32 otherwise."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def default_rms_eps(dtype: torch.dtype) -> float:
    """torch's default RMSNorm ε when ``eps=None``: the machine epsilon of the *compute* dtype.

    That is float32's epsilon (1.19e-7) for bf16/fp16/fp32 inputs and float64's for float64 inputs, not
    ``finfo(input.dtype).eps`` (0.0078 for bf16), which torch does not use.
    """
    return torch.finfo(compute_dtype(dtype)).eps


def norm_eps(eps: Optional[float], is_rms: bool, dtype: torch.dtype) -> float:
    """ε of a norm whose input (the tensor normalized) has ``dtype``: ``eps`` itself, or for None the norm's
    default — :data:`LAYER_NORM_EPS` for LayerNorm, :func:`default_rms_eps` for RMSNorm. The one place these
    defaults are decided."""
    if eps is not None:
        return eps
    return default_rms_eps(dtype) if is_rms else LAYER_NORM_EPS


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
    eps: float = LAYER_NORM_EPS,
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
    eps: float = LAYER_NORM_EPS,
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
    eps: Optional[float] = None,
    *,
    norm: str = "layernorm",
    keep_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    residual_dtype: Optional[torch.dtype] = None,
    weight_offset: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Add & Norm: ``h = residual + dropout(x)``, ``y = Norm(h)``. Returns (y, h).

    ``keep_mask`` (bool, x's shape) says which elements of x dropout keeps; kept ones are scaled by 1/(1 − p).
    h has ``residual_dtype`` (default: the residual's dtype, else x's); y has x's dtype. Both are computed in
    :func:`compute_dtype` of x, the residual and h and rounded once: h from the exact operands, y from h as
    stored. ``eps=None``: :func:`norm_eps` of h's dtype.
    """
    h_dtype = residual_dtype or (residual.dtype if residual is not None else x.dtype)
    acc = compute_dtype(x.dtype, h_dtype, *(() if residual is None else (residual.dtype,)))
    xd = x.to(acc)
    if keep_mask is not None:
        xd = torch.where(keep_mask, xd / (1.0 - dropout_p), torch.zeros_like(xd))
    h = (xd if residual is None else residual.to(acc) + xd).to(h_dtype)
    eps = norm_eps(eps, norm == "rmsnorm", h_dtype)
    if norm == "rmsnorm":
        y = rms_norm(h.to(acc), normalized_shape, weight, eps, weight_offset)
        if bias is not None:  # RMSNorm with a bias: y = x̂ · γ + β
            y = y + bias.to(acc)
    else:
        y = layer_norm(h.to(acc), normalized_shape, weight, bias, eps, weight_offset)
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
    eps: Optional[float] = None,
    *,
    norm: str = "layernorm",
    keep_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    weight_offset: float = 0.0,
) -> AddNormGrads:
    """Gradients of :func:`add_norm`; ``dh`` is the upstream gradient of the returned h (pre-LN), or None."""
    eps = norm_eps(eps, norm == "rmsnorm", h.dtype)
    if norm == "rmsnorm":
        g = rms_norm_backward(dy, h, normalized_shape, weight, eps, weight_offset)
        if bias is not None:
            g.dbias = _rows(dy, normalized_shape).sum(dim=0).reshape(bias.shape).to(bias.dtype)  # Σ_rows dy
    else:
        g = layer_norm_backward(dy, h, normalized_shape, weight, bias, eps, weight_offset)
    dh_total = g.dx.to(compute_dtype(h.dtype))
    if dh is not None:
        dh_total = dh_total + dh.to(dh_total.dtype)
    dx = dh_total
    if keep_mask is not None:
        dx = torch.where(keep_mask, dh_total / (1.0 - dropout_p), torch.zeros_like(dh_total))
    dresidual = None if residual is None else dh_total.to(residual.dtype)
    return AddNormGrads(dx.to(x.dtype), dresidual, g.dweight, g.dbias)


# ----------------------------------------------------------------------------------------------------------------
# Adaptive γ/β: AdaLN and AdaLN-Zero (DiT).
#
#     h = residual + gate ⊙ x                      gate and residual optional (h = x without either)
#     n = Norm(h) · w + b                          Norm = LayerNorm or RMSNorm over the last dim; w, b optional
#     y = n · (1 + scale) + shift
#
# The optional affine w, b is applied *before* the modulation, as diffusers' AdaLayerNormContinuous (a norm with
# elementwise_affine, then ·(1 + scale) + shift) does; DiT's AdaLN-Zero has none. shift, scale and gate are
# [B, C] (one vector per batch item, broadcast over every token of that item) or x's full shape [B, …, C].
# Backward, with dy the gradient of y and dh the upstream gradient of h (pre-norm):
#
#     dshift = Σ_tokens dy;   dscale = Σ_tokens dy · n;   dn = dy · (1 + scale)
#     dh_total = Norm_backward(dn) + dh;  dresidual = dh_total;  dx = dh_total · gate;  dgate = Σ_tokens dh_total · x
#
# where Σ_tokens sums over the tokens of each batch item for a [B, C] modulation and is the identity for a
# full-shape one; dw, db come from Norm_backward as in LayerNorm / RMSNorm (RMSNorm with a bias: db = Σ_rows dn).
# ----------------------------------------------------------------------------------------------------------------


def _per_token(m: Optional[Tensor], x: Tensor, dtype: torch.dtype) -> Optional[Tensor]:
    """A modulation of shape [B, C] viewed as [B, 1, …, 1, C] so it broadcasts over x's tokens; x's shape as is."""
    if m is None:
        return None
    if m.dim() == 2 and x.dim() > 2:
        m = m.reshape(m.shape[0], *(1,) * (x.dim() - 2), m.shape[1])
    return m.to(dtype)


def _sum_to(t: Tensor, m: Tensor) -> Tensor:
    """Σ over the tokens of each batch item when the modulation ``m`` is [B, C] (so the result has m's shape)."""
    if t.shape == m.shape:
        return t
    return t.sum(dim=tuple(range(1, t.dim() - 1))).reshape(m.shape)


def _norm_affine(h: Tensor, norm: str, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    """n = Norm(h) · w + b over the last dim, in h's dtype (the caller passes the compute dtype)."""
    shape = h.shape[-1:]
    if norm == "rmsnorm":
        n = rms_norm(h, shape, weight, eps)
        return n if bias is None else n + _flat(bias, h.dtype)
    return layer_norm(h, shape, weight, bias, eps)


def _default_eps(norm: str, eps: Optional[float], dtype: torch.dtype) -> float:
    return norm_eps(eps, norm == "rmsnorm", dtype)


def ada_norm(
    x: Tensor,
    shift: Tensor,
    scale: Tensor,
    *,
    gate: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    norm: str = "layernorm",
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """Adaptive norm: ``h = residual + gate ⊙ x``, ``y = (Norm(h)·w + b)·(1 + scale) + shift``. Returns (y, h).

    h has the residual's dtype (x's without a residual) and is rounded to it before it is normalized, as a
    stored residual stream is; y has x's dtype. ``eps=None``: 1e-5 for LayerNorm, torch's default for RMSNorm.
    """
    h_dtype = residual.dtype if residual is not None else x.dtype
    acc = compute_dtype(torch.promote_types(x.dtype, h_dtype))
    eps = _default_eps(norm, eps, h_dtype)
    xg = x.to(acc) if gate is None else x.to(acc) * _per_token(gate, x, acc)  # gate ⊙ x: [B, …, C]
    h = (xg if residual is None else residual.to(acc) + xg).to(h_dtype)  # [B, …, C]
    n = _norm_affine(h.to(acc), norm, weight, bias, eps)  # Norm(h)·w + b: [B, …, C]
    y = n * (1 + _per_token(scale, x, acc)) + _per_token(shift, x, acc)  # [B, …, C]
    return y.to(x.dtype), h


@dataclass
class AdaNormGrads:
    """Gradients of :func:`ada_norm` (None where the input does not exist)."""

    dx: Tensor
    dresidual: Optional[Tensor]
    dshift: Tensor
    dscale: Tensor
    dgate: Optional[Tensor]
    dweight: Optional[Tensor]
    dbias: Optional[Tensor]


def ada_norm_backward(
    dy: Tensor,
    dh: Optional[Tensor],
    x: Tensor,
    shift: Tensor,
    scale: Tensor,
    *,
    gate: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    norm: str = "layernorm",
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: Optional[float] = None,
) -> AdaNormGrads:
    """Gradients of :func:`ada_norm`; ``dh`` is the upstream gradient of the returned h (pre-norm), or None."""
    h_dtype = residual.dtype if residual is not None else x.dtype
    acc = compute_dtype(torch.promote_types(x.dtype, h_dtype))
    eps = _default_eps(norm, eps, h_dtype)
    _, h = ada_norm(x, shift, scale, gate=gate, residual=residual, norm=norm, weight=weight, bias=bias, eps=eps)
    ha, dya = h.to(acc), dy.to(acc)  # [B, …, C]
    n = _norm_affine(ha, norm, weight, bias, eps)  # Norm(h)·w + b: [B, …, C]
    dshift = _sum_to(dya, shift)  # Σ_tokens dy: shift's shape
    dscale = _sum_to(dya * n, scale)  # Σ_tokens dy·n: scale's shape
    dn = dya * (1 + _per_token(scale, x, acc))  # [B, …, C]
    g = _norm_backward(dn, ha, ha.shape[-1:], weight, bias, eps, norm == "rmsnorm", 0.0)  # through Norm
    dh_total = g.dx if dh is None else g.dx + dh.to(acc)  # [B, …, C]
    dx = dh_total if gate is None else dh_total * _per_token(gate, x, acc)  # [B, …, C]
    dgate = None if gate is None else _sum_to(dh_total * x.to(acc), gate)  # Σ_tokens dh·x: gate's shape
    return AdaNormGrads(
        dx=dx.to(x.dtype),
        dresidual=None if residual is None else dh_total.to(residual.dtype),
        dshift=dshift.to(shift.dtype),
        dscale=dscale.to(scale.dtype),
        dgate=None if dgate is None else dgate.to(gate.dtype),
        dweight=g.dweight,
        dbias=g.dbias,  # Σ_rows dn, for RMSNorm with a bias too
    )


# ----------------------------------------------------------------------------------------------------------------
# Dynamic normalization: Dynamic Tanh (DyT, "Transformers without Normalization", Zhu et al., CVPR 2025).
#
#     y = γ · tanh(α · x) + β           α a learned scalar; γ, β per channel (the trailing dims), optional
#     add_dyt: h = residual + x, y = DyT(h)
#
# No statistics: every element is transformed on its own. Backward, with t = tanh(α·x) and u = dy · γ · (1 − t²):
#
#     dx = α · u;   dα = Σ_all u · x;   dγ = Σ_rows dy · t;   dβ = Σ_rows dy
# ----------------------------------------------------------------------------------------------------------------


def _alpha(alpha, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(alpha, dtype=dtype).reshape(())


def dyt(x: Tensor, alpha, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
    """``y = γ · tanh(α · x) + β`` with α a scalar (float or one-element tensor); γ, β over x's trailing dims."""
    acc = compute_dtype(x.dtype)
    t = torch.tanh(_alpha(alpha, acc) * x.to(acc))  # [*, C]
    y = t if weight is None else t * weight.to(acc)  # [*, C]
    y = y if bias is None else y + bias.to(acc)  # [*, C]
    return y.to(x.dtype)


@dataclass
class DyTGrads:
    """Gradients of :func:`dyt` / :func:`add_dyt` (dalpha is None when α is a Python number)."""

    dx: Tensor
    dalpha: Optional[Tensor]
    dweight: Optional[Tensor]
    dbias: Optional[Tensor]
    dresidual: Optional[Tensor] = None


def dyt_backward(
    dy: Tensor, x: Tensor, alpha, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None
) -> DyTGrads:
    """Gradients of :func:`dyt` given the upstream gradient ``dy``."""
    acc = compute_dtype(x.dtype)
    xa, dya, a = x.to(acc), dy.to(acc), _alpha(alpha, acc)  # [*, C], [*, C], []
    k = 1 if weight is None else weight.dim()
    t = torch.tanh(a * xa)  # [*, C]
    g = dya if weight is None else dya * weight.to(acc)  # dy·γ: [*, C]
    u = g * (1 - t * t)  # d(α·x): [*, C]
    dx = a * u  # [*, C]
    dalpha = (u * xa).sum()  # []
    rows = (-1, *x.shape[x.dim() - k :])  # [rows, C]
    dweight = None if weight is None else (dya * t).reshape(rows).sum(dim=0).to(weight.dtype)  # Σ_rows dy·t: [C]
    dbias = None if bias is None else dya.reshape(-1, *bias.shape).sum(dim=0).to(bias.dtype)  # Σ_rows dy: [C]
    dalpha_out = dalpha.reshape(alpha.shape).to(alpha.dtype) if isinstance(alpha, Tensor) else None
    return DyTGrads(dx.to(x.dtype), dalpha_out, dweight, dbias)


def add_dyt(
    x: Tensor, residual: Optional[Tensor], alpha, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """``h = residual + x`` (in the residual's dtype, x's without one), ``y = DyT(h)`` in x's dtype. Returns (y, h)."""
    h_dtype = residual.dtype if residual is not None else x.dtype
    acc = compute_dtype(torch.promote_types(x.dtype, h_dtype))
    h = (x.to(acc) if residual is None else residual.to(acc) + x.to(acc)).to(h_dtype)  # [*, C]
    return dyt(h.to(acc), alpha, weight, bias).to(x.dtype), h


def add_dyt_backward(
    dy: Tensor,
    dh: Optional[Tensor],
    x: Tensor,
    residual: Optional[Tensor],
    alpha,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
) -> DyTGrads:
    """Gradients of :func:`add_dyt`; ``dh`` is the upstream gradient of h (pre-norm), or None."""
    _, h = add_dyt(x, residual, alpha, weight, bias)
    acc = compute_dtype(torch.promote_types(x.dtype, h.dtype))
    g = dyt_backward(dy.to(acc), h.to(acc), alpha, weight, bias)  # through DyT(h)
    dh_total = g.dx if dh is None else g.dx + dh.to(acc)  # [*, C]
    g.dx = dh_total.to(x.dtype)
    g.dresidual = None if residual is None else dh_total.to(residual.dtype)
    return g


# ----------------------------------------------------------------------------------------------------------------
# Channels-first LayerNorm (ConvNeXt, timm's LayerNorm2d): x is [B, C, *spatial] (an image [B, C, H, W], audio
# [B, C, T]); one token per pixel or frame, normalized over its C channels (dim 1); γ, β are [C]. The oracle
# moves the channel dim last and reuses the LayerNorm above — same formulas, same backward.
# ----------------------------------------------------------------------------------------------------------------


def layer_norm_channels_first(
    x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = LAYER_NORM_EPS
) -> Tensor:
    """LayerNorm over dim 1 of ``x`` [B, C, *]; y has x's dtype and shape."""
    return layer_norm(x.movedim(1, -1), x.shape[1:2], weight, bias, eps).movedim(-1, 1)


def layer_norm_channels_first_backward(
    dy: Tensor, x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = LAYER_NORM_EPS
) -> NormGrads:
    """Gradients of :func:`layer_norm_channels_first` given the upstream gradient ``dy``."""
    g = layer_norm_backward(dy.movedim(1, -1), x.movedim(1, -1), x.shape[1:2], weight, bias, eps)
    g.dx = g.dx.movedim(-1, 1)
    return g
