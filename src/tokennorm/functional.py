"""Functional API: drop-ins for ``F.layer_norm`` / ``F.rms_norm`` and the fused ``add_norm``.

Each function runs torch's own kernels or tokennorm's Triton kernels as :mod:`tokennorm.backend` decides (under
``auto`` on a CUDA tensor, torch's where :mod:`tokennorm.dispatch`'s measured table says they are faster). On
torch's path torch checks the arguments (tokennorm adds the name of a parameter on the wrong device); on the
Triton path :mod:`tokennorm._checks` raises what torch would. Inputs are never modified.

Host time matters at decode sizes (a norm of one token is a few µs of GPU work), so the torch path costs one
backend lookup on top of torch's own call, and the Triton path skips the dispatcher in eager mode
(:func:`tokennorm.ops.norm_forward`). Measured in benchmarks/RESULTS.md ("Host time per call").
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from tokennorm import _checks, dispatch, ops  # ops also registers torch.ops.tokennorm.*
from tokennorm.backend import use_triton
from tokennorm.reference import compute_dtype, default_rms_eps

__all__ = ["layer_norm", "rms_norm", "add_norm", "norm_eps", "LAYER_NORM_EPS"]

NORMS = ("layernorm", "rmsnorm")
LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default


def norm_eps(eps: Optional[float], is_rms: bool, dtype: torch.dtype) -> float:
    """ε for a norm whose input has ``dtype``: ``eps`` itself, or for None the norm's default — 1e-5 for
    LayerNorm, torch's RMSNorm default (the machine epsilon of the compute dtype, see
    :func:`~tokennorm.reference.default_rms_eps`) for RMSNorm. The one place these defaults are decided."""
    if eps is not None:
        return eps
    return default_rms_eps(dtype) if is_rms else LAYER_NORM_EPS


def _rows(t: Tensor, n: int) -> Tensor:
    """``t`` as [M, n] with a last stride of 1; copies only when no such view exists."""
    if t.is_contiguous():
        return t if t.dim() == 2 and t.shape[1] == n else t.view(-1, n)
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(1) == 1 or n == 1 else t2.contiguous()


def _flat(p: Optional[Tensor]) -> Optional[Tensor]:
    """A weight or bias as a contiguous vector (a view when it is contiguous already)."""
    if p is None or (p.is_contiguous() and p.dim() == 1):
        return p
    return p.reshape(-1).contiguous()


def _requires_grad(*tensors: Optional[Tensor]) -> bool:
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def _norm_triton(
    x: Tensor, n: int, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, is_rms: bool
) -> Tensor:
    x2 = _rows(x, n)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or (weight is not None and weight.requires_grad) or (bias is not None and bias.requires_grad)
    )
    y, _ = ops.norm_forward(x2, _flat(weight), _flat(bias), None, None, eps, 0.0, 0.0, is_rms, None, needs_grad)
    # [M, n] already when x was (view_as: a third of the host time of view(torch.Size))
    return y if x2 is x else y.view_as(x)


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = LAYER_NORM_EPS,
) -> Tensor:
    r"""Layer normalization over the trailing ``normalized_shape`` dims; same contract as ``F.layer_norm``.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    Each row (token) is normalized with its own mean and biased variance; γ and β are shared by all rows.

    Args:
        input: (*, normalized_shape), float16/bfloat16/float32/float64 (other dtypes: as torch).
        normalized_shape: the trailing dims to normalize over (a tuple or list of ints).
        weight, bias: γ and β of shape ``normalized_shape``, in the input's dtype (or float32 for a 16-bit
            input); None for none. Default: None.
        eps: added to the variance inside the square root. Default: 1e-5.

    Returns:
        y of the input's shape and dtype.
    """
    if use_triton(input) and input.dtype in _checks.KERNEL_DTYPES and input.numel():
        n = _checks.norm_row_length("layer_norm", input, normalized_shape, weight, bias)
        if dispatch.use_kernels("layer_norm", input, n, weight, bias):  # else a measured table says torch
            return _norm_triton(input, n, weight, bias, _checks.as_eps("layer_norm", 5, eps), is_rms=False)
    # torch's path: F.layer_norm's own body (calling it would add a Python frame, ~5 % of a decode-sized call)
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(F.layer_norm, (input, weight, bias), input, normalized_shape, weight=weight,
                                     bias=bias, eps=eps)
    try:
        return torch.layer_norm(input, normalized_shape, weight, bias, eps, torch.backends.cudnn.enabled)
    except RuntimeError:
        _checks.check_devices(input, weight, bias)  # torch's own message does not name the argument
        raise


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
) -> Tensor:
    r"""Root-mean-square normalization; same contract as ``F.rms_norm``.

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \cdot \gamma

    Args:
        input: (*, normalized_shape), float16/bfloat16/float32/float64 (other dtypes, e.g. complex: as torch).
        normalized_shape: the trailing dims to normalize over (a tuple or list of ints).
        weight: γ of shape ``normalized_shape``, any floating dtype; None for none. Default: None.
        eps: added to the mean square inside the square root; None uses the machine epsilon of the compute
            dtype (float32 for bf16/fp16/fp32, float64 for float64), as torch does. Default: None.

    Returns:
        y of the input's shape and dtype.
    """
    if use_triton(input) and input.dtype in _checks.KERNEL_DTYPES and input.numel():
        n = _checks.norm_row_length("rms_norm", input, normalized_shape, weight, None)
        if dispatch.use_kernels("rms_norm", input, n, weight):  # else a measured table says torch
            eps = default_rms_eps(input.dtype) if eps is None else _checks.as_eps("rms_norm", 4, eps)
            return _norm_triton(input, n, weight, None, eps, is_rms=True)
    # torch's path: F.rms_norm's own body (see layer_norm)
    if has_torch_function_variadic(input, weight):
        return handle_torch_function(F.rms_norm, (input, weight), input, normalized_shape, weight=weight, eps=eps)
    try:
        return torch.rms_norm(input, normalized_shape, weight, eps)
    except RuntimeError:
        _checks.check_devices(input, weight, None)  # torch's own message does not name the argument
        raise


def add_norm(
    x: Tensor,
    residual: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: Optional[float] = None,
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

    h is the new residual stream, stored in ``residual_dtype`` (default: the residual's dtype, else x's), e.g.
    float32 under bf16 activations. y is the norm of h *as stored* (rounded to its dtype), computed in float32
    (float64 when x or h is float64), returned in x's dtype — on either backend.

    Args:
        x: (*, normalized_shape), float16/bfloat16/float32/float64: the sublayer's output.
        residual: x's shape, any floating dtype; None for h = dropout(x). Default: None.
        weight, bias: γ and β of shape ``normalized_shape``; None for none. Default: None.
        eps: ε inside the square root; None for the norm's default: 1e-5 for LayerNorm, torch's RMSNorm
            default for RMSNorm (the machine epsilon of h's compute dtype). Default: None.
        norm: ``"layernorm"`` or ``"rmsnorm"`` (RMSNorm with a bias adds it after scaling).
        dropout_p: probability of zeroing an element of x, in [0, 1); kept ones are scaled by 1/(1 − p).
            Masks come from torch's RNG (``torch.manual_seed`` reproduces them) and are regenerated in
            backward, never stored. Default: 0.
        training: dropout only when True. Default: True.
        prenorm: return ``(y, h)`` instead of ``y``. Default: False.
        residual_dtype: dtype of h. Default: None (see above).
        weight_offset: y uses ``weight + weight_offset`` (1.0: Gemma-style zero-centred weight). Default: 0.
        normalized_shape: the trailing dims to normalize over. Default: ``weight.shape``, else the last dim.

    Returns:
        y, or ``(y, h)`` when ``prenorm``. With ``dropout_p=0`` or ``training=False``, exactly
        ``Norm(residual + x)``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), but got dropout_p={dropout_p}")
    if not isinstance(x, Tensor):
        raise TypeError(f"add_norm(): argument 'x' (position 1) must be Tensor, not {type(x).__name__}")
    for position, name, value in ((2, "residual", residual), (3, "weight", weight), (4, "bias", bias)):
        _checks.check_tensor_argument("add_norm", name, position, value)
    if x.dtype not in _checks.KERNEL_DTYPES:
        raise NotImplementedError(f"add_norm is not implemented for x of dtype {x.dtype}")
    if residual_dtype is not None and not (isinstance(residual_dtype, torch.dtype)
                                           and residual_dtype.is_floating_point):
        raise TypeError(f"residual_dtype must be a floating-point dtype, but got residual_dtype={residual_dtype}")
    if normalized_shape is None:
        normalized_shape = tuple(next((p.shape for p in (weight, bias) if p is not None), x.shape[-1:]))
        if x.dim() < len(normalized_shape) or tuple(x.shape[x.dim() - len(normalized_shape):]) != normalized_shape:
            name = "weight" if weight is not None else "bias"
            raise RuntimeError(
                f"add_norm normalizes over {name}.shape when normalized_shape is not given, but got {name} of "
                f"shape {list(normalized_shape)} and x of size {list(x.shape)}"
            )
    is_rms = norm == "rmsnorm"
    n = _checks.norm_row_length("rms_norm" if is_rms else "layer_norm", x, normalized_shape, weight, bias)
    if residual is not None:
        _checks.check_residual(x, residual)
    h_dtype = residual_dtype or (residual.dtype if residual is not None else x.dtype)
    eps = norm_eps(None if eps is None else _checks.as_eps("add_norm", 5, eps), is_rms, h_dtype)
    p = dropout_p if training else 0.0

    # torch's composition Norm(r + x) computes the same only without dropout, with h in x's dtype and no offset:
    # only then may the measured dispatch table send the call to it.
    measured = residual is not None and p == 0.0 and h_dtype == x.dtype and not weight_offset
    if not use_triton(x) or x.numel() == 0 or (measured and not dispatch.use_kernels(
            "add_rms_norm" if is_rms else "add_layer_norm", x, n, residual, weight, bias)):
        h = _add_dropout_torch(x, residual, p, h_dtype)
        y = _norm_torch(h, _checks.as_shape(normalized_shape), weight, bias, eps, is_rms, weight_offset, x.dtype)
        return (y, h) if prenorm else y

    # The kernel stores h (and normalizes it as stored) whenever h is not x itself: an add, dropout, another
    # dtype, or a caller who wants h back.
    store_h = residual is not None or p > 0.0 or prenorm or h_dtype != x.dtype
    seed = torch.randint(0, 2**62, (1,), device=x.device, dtype=torch.int64) if p > 0.0 else None
    y, h = ops.norm_forward(
        _rows(x, n), _flat(weight), _flat(bias), None if residual is None else _rows(residual, n), seed,
        eps, p, weight_offset, is_rms, h_dtype if store_h else None, _requires_grad(x, residual, weight, bias),
    )
    y = y.view_as(x)
    return (y, h.view_as(x)) if prenorm else y


def _add_dropout_torch(x: Tensor, residual: Optional[Tensor], p: float, h_dtype: torch.dtype) -> Tensor:
    xd = F.dropout(x, p, training=True) if p > 0.0 else x
    if residual is None:
        return xd.to(h_dtype, copy=True)
    return residual.to(h_dtype) + xd.to(h_dtype)


def _norm_torch(
    h: Tensor, shape: tuple[int, ...], weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
    is_rms: bool, weight_offset: float, out_dtype: torch.dtype,
) -> Tensor:
    """Norm(h) · (weight + weight_offset) + bias with torch's norms, as the kernels compute it: h as stored,
    parameters and arithmetic in the compute dtype (float32, float64 when x or h is float64), one rounding to
    ``out_dtype`` (x's dtype) at the end."""
    acc = torch.promote_types(compute_dtype(h.dtype), compute_dtype(out_dtype))
    h = h.to(acc)
    if weight is not None:
        weight = weight.to(acc)
        if weight_offset:
            weight = weight + weight_offset
    if bias is not None:
        bias = bias.to(acc)
    if is_rms:
        y = F.rms_norm(h, shape, weight, eps)
        if bias is not None:
            y = y + bias
    else:
        y = F.layer_norm(h, shape, weight, bias, eps)
    return y.to(out_dtype)
