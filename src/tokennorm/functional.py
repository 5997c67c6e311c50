"""Functional API: drop-ins for ``F.layer_norm`` / ``F.rms_norm`` and the fused ``add_norm``.

Each function checks its arguments (torch's exception types and messages), then runs torch's own kernels or
tokennorm's Triton ops as :mod:`tokennorm.backend` decides. Inputs are never modified.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from tokennorm import _checks, dispatch
from tokennorm import ops as _ops  # noqa: F401  (registers torch.ops.tokennorm.*, which the Triton path calls)
from tokennorm.backend import use_triton
from tokennorm.kernels import launch
from tokennorm.reference import default_rms_eps

__all__ = ["layer_norm", "rms_norm", "add_norm"]

NORMS = ("layernorm", "rmsnorm")


def _rows(t: Tensor, n: int) -> Tensor:
    """``t`` as [M, n] with a last stride of 1; copies only when no such view exists."""
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(1) == 1 or n == 1 else t2.contiguous()


def _flat(p: Optional[Tensor]) -> Optional[Tensor]:
    if p is None or (p.dim() == 1 and p.stride(0) == 1):
        return p
    return _rows(p, p.numel()).reshape(-1)


def _fused_forward(
    x2: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual2: Optional[Tensor],
    seed: Optional[Tensor], eps: float, dropout_p: float, weight_offset: float, is_rms: bool,
    h_dtype: Optional[torch.dtype], grad_inputs: tuple[Optional[Tensor], ...],
) -> tuple[Tensor, Optional[Tensor]]:
    """(y, h) from the Triton forward: through the custom op when autograd or torch.compile needs it, else
    (inference, eager) straight to the launcher — the op's dispatch costs tens of µs per call on the host,
    more than a decode-sized kernel takes."""
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in grad_inputs)
    if needs_grad or torch.compiler.is_compiling():
        y, h, _, _ = torch.ops.tokennorm.norm_fwd(
            x2, _flat(weight), _flat(bias), residual2, seed, eps, dropout_p, weight_offset, is_rms, h_dtype
        )
        return y, h
    out = launch.norm_forward(x2, _flat(weight), _flat(bias), residual2, seed, eps, dropout_p, weight_offset,
                              is_rms, h_dtype, store_stats=False)
    return out.y, out.h


def _norm_triton(
    x: Tensor, n: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, is_rms: bool
) -> Tensor:
    y, _ = _fused_forward(_rows(x, n), weight, bias, None, None, eps, 0.0, 0.0, is_rms, None, (x, weight, bias))
    # [M, n] already unless x has more dims or normalizes over more than its last (view_as: a third of the host
    # time of view(torch.Size))
    return y if x.dim() == 2 and x.shape[1] == n else y.view_as(x)


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Layer normalization over the trailing ``normalized_shape`` dims; same contract as ``F.layer_norm``.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    Each row (token) is normalized with its own mean and biased variance; γ and β are shared by all rows.
    """
    if not use_triton(input):
        _checks.check_devices(input, weight, bias)  # torch's own message does not name the argument
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    shape = _checks.as_shape(normalized_shape)
    _checks.check_norm_inputs("LayerNormKernelImpl", input, shape, weight, bias)
    n = math.prod(shape)
    if input.numel() == 0 or not dispatch.use_kernels("layer_norm", input, n, weight, bias):
        return F.layer_norm(input, shape, weight, bias, eps)
    return _norm_triton(input, n, weight, bias, eps, is_rms=False)


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
) -> Tensor:
    r"""Root-mean-square normalization; same contract as ``F.rms_norm``.

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \cdot \gamma

    ``eps=None`` uses the machine epsilon of the compute dtype (float32 for bf16/fp16/fp32), as torch does.
    """
    if not use_triton(input):
        _checks.check_devices(input, weight, None)  # torch's own message does not name the argument
        return F.rms_norm(input, normalized_shape, weight, eps)
    shape = _checks.as_shape(normalized_shape)
    _checks.check_norm_inputs("rms_norm", input, shape, weight, None)
    n = math.prod(shape)
    if input.numel() == 0 or not dispatch.use_kernels("rms_norm", input, n, weight):
        return F.rms_norm(input, shape, weight, eps)
    eps = default_rms_eps(input.dtype) if eps is None else eps
    return _norm_triton(input, n, weight, None, eps, is_rms=True)


def add_norm(
    x: Tensor,
    residual: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: Optional[float] = 1e-5,
    *,
    norm: str = "layernorm",
    dropout_p: float = 0.0,
    training: bool = True,
    prenorm: bool = False,
    residual_dtype: Optional[torch.dtype] = None,
    weight_offset: float = 0.0,
    normalized_shape: Optional[Sequence[int]] = None,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""Fused Add & Norm: ``h = residual + dropout(x)``, ``y = Norm(h) · (weight + weight_offset) + bias``.

    Normalizes over ``normalized_shape`` (default: ``weight.shape``, else the last dim). Returns ``y``, or ``(y, h)`` when
    ``prenorm=True``: h is the new residual stream, in ``residual_dtype`` (default: the residual's dtype, else
    x's), e.g. float32 for a higher-precision stream; y has x's dtype. ``weight_offset=1.0`` gives the
    Gemma-style zero-centred weight. With ``dropout_p=0`` or ``training=False`` the result is exactly
    ``Norm(residual + x)``. Dropout masks come from torch's RNG (``torch.manual_seed`` reproduces them) and
    are regenerated in backward, never stored.

    Args:
        norm: ``"layernorm"`` or ``"rmsnorm"``; for ``"rmsnorm"``, ``eps=None`` means torch's default.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), but got dropout_p={dropout_p}")
    if residual_dtype is not None and not residual_dtype.is_floating_point:
        raise TypeError(f"residual_dtype must be a floating-point dtype, but got residual_dtype={residual_dtype}")
    if normalized_shape is not None:
        shape = _checks.as_shape(normalized_shape)
    else:
        shape = tuple(next((p.shape for p in (weight, bias) if p is not None), x.shape[-1:]))
        if tuple(x.shape[x.dim() - len(shape):]) != shape or x.dim() < len(shape):
            name = "weight" if weight is not None else "bias"
            raise RuntimeError(
                f"add_norm normalizes over {name}.shape when normalized_shape is not given, but got {name} of "
                f"shape {list(shape)} and x of size {list(x.shape)}"
            )
    op_name = "rms_norm" if norm == "rmsnorm" else "LayerNormKernelImpl"
    _checks.check_norm_inputs(op_name, x, shape, weight, bias)
    if residual is not None:
        _checks.check_residual(x, residual)
    is_rms = norm == "rmsnorm"
    if eps is None:
        eps = default_rms_eps(x.dtype) if is_rms else 1e-5
    p = dropout_p if training else 0.0
    h_dtype = residual_dtype or (residual.dtype if residual is not None else x.dtype)

    # torch's composition Norm(r + x) computes the same only without dropout, with h in x's dtype and no offset:
    # only then may the measured dispatch table send the call to it.
    measured = residual is not None and p == 0.0 and h_dtype == x.dtype and not weight_offset
    if not use_triton(x) or x.numel() == 0 or (measured and not dispatch.use_kernels(
            "add_rms_norm" if is_rms else "add_layer_norm", x, math.prod(shape), residual, weight, bias)):
        h = _add_dropout_torch(x, residual, p, h_dtype)
        y = _norm_torch(h, shape, weight, bias, eps, is_rms, weight_offset).to(x.dtype)
        return (y, h) if prenorm else y

    n = math.prod(shape)
    has_add = residual is not None or p > 0.0
    seed = torch.randint(0, 2**62, (1,), device=x.device, dtype=torch.int64) if p > 0.0 else None
    y, h = _fused_forward(
        _rows(x, n), weight, bias, None if residual is None else _rows(residual, n), seed,
        eps, p, weight_offset, is_rms, h_dtype if has_add else None, (x, residual, weight, bias),
    )
    y = y.view_as(x)
    if not prenorm:
        return y
    h = h.view_as(x) if has_add else x.to(h_dtype, copy=True)
    return y, h


def _add_dropout_torch(x: Tensor, residual: Optional[Tensor], p: float, h_dtype: torch.dtype) -> Tensor:
    xd = F.dropout(x, p, training=True) if p > 0.0 else x
    if residual is None:
        return xd.to(h_dtype, copy=True)
    return residual.to(h_dtype) + xd.to(h_dtype)


def _norm_torch(
    h: Tensor, shape: tuple[int, ...], weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
    is_rms: bool, weight_offset: float,
) -> Tensor:
    # torch's norms take float32 parameters with a low-precision input, but not a higher-precision h (a
    # float32 residual stream with bf16 weights): bring the parameters to h's dtype then.
    if weight is not None:
        weight = weight + weight_offset if weight_offset else weight
        if weight.dtype != h.dtype and weight.dtype != torch.float32:
            weight = weight.to(h.dtype)
    if bias is not None and bias.dtype != h.dtype and bias.dtype != torch.float32:
        bias = bias.to(h.dtype)
    if is_rms:
        y = F.rms_norm(h, shape, weight, eps)
        return y if bias is None else y + bias
    return F.layer_norm(h, shape, weight, bias, eps)
