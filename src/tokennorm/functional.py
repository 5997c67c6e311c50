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
from tokennorm.reference import LAYER_NORM_EPS, compute_dtype, default_rms_eps, norm_eps

__all__ = ["layer_norm", "rms_norm", "add_norm", "norm_eps", "LAYER_NORM_EPS"]

NORMS = ("layernorm", "rmsnorm")


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
    # _flat inlined for the common vector parameters (a frame each: host time)
    if weight is not None and not (weight.dim() == 1 and weight.is_contiguous()):
        weight = _flat(weight)
    if bias is not None and not (bias.dim() == 1 and bias.is_contiguous()):
        bias = _flat(bias)
    y, _ = ops.norm_forward(x2, weight, bias, None, None, eps, 0.0, 0.0, is_rms, None, needs_grad)
    # [M, n] already when x was (view_as: cheaper on the host than view(torch.Size))
    return y if x2 is x else y.view_as(x)


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = LAYER_NORM_EPS,
) -> Tensor:
    r"""Layer normalization over the trailing ``normalized_shape`` dims of every token: a drop-in for
    ``torch.nn.functional.layer_norm`` (same arguments, results, gradients and errors).

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    E and Var are taken over the last ``len(normalized_shape)`` dims of each token (row) separately; Var is the
    biased variance (divided by n, not n − 1). γ and β are shared by every token. Statistics are computed in
    float32 (float64 for a float64 input) whatever the input dtype; y is rounded once to the input's dtype.
    Runs tokennorm's Triton kernels or torch's as the backend says (:func:`tokennorm.get_backend`; under the
    default ``auto``, the kernels on CUDA tensors unless :mod:`tokennorm.dispatch`'s measured table has torch
    faster for the shape).

    Args:
        input: the tensor to normalize, float16, bfloat16, float32 or float64 (other dtypes go to torch, which
            raises as it does).
        normalized_shape: the trailing dims to normalize over, a tuple or list of ints (not an int, as torch).
        weight: γ, of shape ``normalized_shape``, the input's dtype or float32 for a float16/bfloat16 input; None
            for no scaling. Default: None.
        bias: β, likewise; None for no shift. Default: None.
        eps: added to the variance inside the square root. Default: 1e-5.

    Returns:
        y, of the input's shape and dtype (a new tensor: the input is never modified).

    Shape:
        - input: :math:`(*, \text{normalized\_shape})`, any number of leading (token) dims.
        - output: the input's shape.

    Example::

        >>> x = torch.randn(2, 16, 512)            # [batch, tokens, channels]: 32 rows of 512
        >>> w, b = torch.ones(512), torch.zeros(512)
        >>> y = tokennorm.layer_norm(x, (512,), w, b)
        >>> torch.allclose(y, torch.nn.functional.layer_norm(x, (512,), w, b))
        True
    """
    if use_triton(input) and input.dtype in _checks.KERNEL_DTYPES and input.numel():
        n = _checks.norm_row_length("layer_norm", input, normalized_shape, weight, bias)
        if dispatch.use_kernels("layer_norm", input, n, weight, bias):  # else a measured table says torch
            return _norm_triton(input, n, weight, bias, _checks.as_eps("layer_norm", 5, eps), False)
    # torch's path: F.layer_norm's own body (calling it would add a Python frame: benchmarks/RESULTS.md)
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(
            F.layer_norm, (input, weight, bias), input, normalized_shape, weight=weight, bias=bias, eps=eps
        )
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
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` dims of every token: a drop-in for
    ``torch.nn.functional.rms_norm`` (same arguments, results, gradients and errors).

    .. math::
        y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \cdot \gamma

    E is taken over the last ``len(normalized_shape)`` dims of each token (row) separately; no mean is
    subtracted. Computed in float32 (float64 for a float64 input) whatever the input dtype; y is rounded once to
    the input's dtype. Runs tokennorm's Triton kernels or torch's as the backend says (as :func:`layer_norm`).

    Args:
        input: the tensor to normalize, float16, bfloat16, float32 or float64 (other dtypes, e.g. complex, go
            to torch).
        normalized_shape: the trailing dims to normalize over, a tuple or list of ints.
        weight: γ, of shape ``normalized_shape``, any floating dtype; None for no scaling. Default: None.
        eps: added to the mean square inside the square root; None for torch's default, the machine epsilon of
            the compute dtype (float32's 1.19e-7 for float16/bfloat16/float32 inputs, float64's for float64 —
            not ``torch.finfo(input.dtype).eps``). Default: None.

    Returns:
        y, of the input's shape and dtype (a new tensor: the input is never modified).

    Shape:
        - input: :math:`(*, \text{normalized\_shape})`, any number of leading (token) dims.
        - output: the input's shape.

    Example::

        >>> x = torch.randn(1, 8, 4096)
        >>> y = tokennorm.rms_norm(x, (4096,), torch.ones(4096), eps=1e-6)
        >>> torch.allclose(y, torch.nn.functional.rms_norm(x, (4096,), torch.ones(4096), eps=1e-6))
        True
    """
    if use_triton(input) and input.dtype in _checks.KERNEL_DTYPES and input.numel():
        n = _checks.norm_row_length("rms_norm", input, normalized_shape, weight, None)
        if dispatch.use_kernels("rms_norm", input, n, weight):  # else a measured table says torch
            eps = default_rms_eps(input.dtype) if eps is None else _checks.as_eps("rms_norm", 4, eps)
            return _norm_triton(input, n, weight, None, eps, True)
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
    r"""Fused Add & Norm of a Transformer block: the residual add (with dropout on the sublayer's output) and the
    norm that follows it, in one pass over memory.

    .. math::
        h = \text{residual} + \text{dropout}(x), \qquad
        y = \text{Norm}(h) \cdot (\gamma + \text{weight\_offset}) + \beta

    where Norm is LayerNorm, :math:`\frac{h - \mathrm{E}[h]}{\sqrt{\mathrm{Var}[h] + \epsilon}}`, or RMSNorm,
    :math:`\frac{h}{\sqrt{\mathrm{E}[h^2] + \epsilon}}`, over the trailing ``normalized_shape`` dims of each token.
    Post-LN blocks use y as the next residual; pre-LN blocks (``prenorm=True``) feed y to the next sublayer and
    carry h as the residual stream.

    Dtypes: h is stored in ``residual_dtype`` (default: the residual's dtype, else x's), e.g. float32 under
    bf16 activations; y has x's dtype. Both are computed in float32, or float64 when any of x, the residual or h
    is float64: h from the exact operands, rounded once to its dtype; y as the norm of h *as stored*, rounded
    once to x's dtype. The same on either backend (the torch backend runs the unfused composition).

    Args:
        x: the sublayer's output, float16, bfloat16, float32 or float64.
        residual: the residual stream, x's shape, any floating dtype; None for h = dropout(x). Default: None.
        weight: γ, of shape ``normalized_shape``; None for no scaling. Default: None.
        bias: β, of shape ``normalized_shape``, added after the scaling (also for RMSNorm); None for no shift.
            Default: None.
        eps: ε inside the square root; None for the norm's default: 1e-5 for LayerNorm, torch's RMSNorm default
            for RMSNorm (the machine epsilon of h's compute dtype). Default: None.
        norm: ``"layernorm"`` or ``"rmsnorm"``. Default: ``"layernorm"``.
        dropout_p: probability of zeroing an element of x, in [0, 1); kept elements are scaled by 1/(1 − p).
            Masks come from torch's RNG (``torch.manual_seed`` reproduces them) and are regenerated in backward,
            never stored. Default: 0.
        training: apply dropout only when True (pass ``module.training``). Default: True.
        prenorm: return ``(y, h)`` instead of ``y``. Default: False.
        residual_dtype: dtype of h. Default: None (the residual's dtype, else x's).
        weight_offset: y scales by ``weight + weight_offset`` (1.0: Gemma's zero-centred weight). Default: 0.
        normalized_shape: the trailing dims to normalize over. Default: None (``weight.shape``, else
            ``bias.shape``, else x's last dim).

    Returns:
        ``y``, or ``(y, h)`` when ``prenorm`` — new tensors; x and the residual are never modified. With
        ``dropout_p=0`` or ``training=False``, exactly ``Norm(residual + x)``.

    Shape:
        - x, residual, y, h: :math:`(*, \text{normalized\_shape})`, any number of leading (token) dims.
        - weight, bias: ``normalized_shape``.

    Example::

        >>> x, residual = torch.randn(2, 16, 512), torch.randn(2, 16, 512)
        >>> w, b = torch.ones(512), torch.zeros(512)
        >>> y = tokennorm.add_norm(x, residual, w, b)                          # post-LN: LayerNorm(residual + x)
        >>> torch.allclose(y, torch.nn.functional.layer_norm(residual + x, (512,), w, b), atol=1e-6)
        True
        >>> y, h = tokennorm.add_norm(x, residual, w, norm="rmsnorm", prenorm=True)   # pre-LN: h is the stream
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), but got dropout_p={dropout_p}")
    if not isinstance(x, Tensor):
        raise TypeError(f"add_norm(): argument 'x' (position 1) must be Tensor, not {type(x).__name__}")
    for position, name, value in ((2, "residual", residual), (3, "weight", weight), (4, "bias", bias)):
        if value is not None and not isinstance(value, Tensor):
            _checks.check_tensor_argument("add_norm", name, position, value)
    if x.dtype not in _checks.KERNEL_DTYPES:
        raise NotImplementedError(f"add_norm is not implemented for x of dtype {x.dtype}")
    if residual_dtype is not None and not (
        isinstance(residual_dtype, torch.dtype) and residual_dtype.is_floating_point
    ):
        raise TypeError(f"residual_dtype must be a floating-point dtype, but got residual_dtype={residual_dtype}")
    if normalized_shape is None:
        shaped = weight if weight is not None else bias
        normalized_shape = tuple(x.shape[-1:] if shaped is None else shaped.shape)
        if x.dim() < len(normalized_shape) or x.shape[x.dim() - len(normalized_shape) :] != normalized_shape:
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

    # The compute dtype of both the add and the norm: float64 when any of x, residual, h is float64.
    acc = compute_dtype(x.dtype, h_dtype, h_dtype if residual is None else residual.dtype)

    # torch's composition Norm(r + x) computes the same only without dropout, with h in x's dtype and no offset:
    # only then may the measured dispatch table send the call to it.
    measured = residual is not None and p == 0.0 and h_dtype == x.dtype and not weight_offset
    if (
        not use_triton(x)
        or x.numel() == 0
        or (
            measured
            and not dispatch.use_kernels("add_rms_norm" if is_rms else "add_layer_norm", x, n, residual, weight, bias)
        )
    ):
        h = _add_dropout_torch(x, residual, p, h_dtype, acc)
        y = _norm_torch(h, _checks.as_shape(normalized_shape), weight, bias, eps, is_rms, weight_offset, x.dtype, acc)
        return (y, h) if prenorm else y

    # The kernels compute in float64 exactly when x is float64: a float64 residual or h under a narrower x
    # takes x in float64 (a rare mix; one extra cast each way).
    xk = x.to(acc) if acc is torch.float64 and x.dtype is not torch.float64 else x
    x2 = _rows(xk, n)
    # The kernel stores h (and normalizes it as stored) whenever h is not x itself: an add, dropout, another
    # dtype, or a caller who wants h back.
    store_h = residual is not None or p > 0.0 or prenorm or h_dtype != x.dtype
    seed = torch.randint(0, 2**62, (1,), device=x.device, dtype=torch.int64) if p > 0.0 else None
    y, h = ops.norm_forward(
        x2,
        _flat(weight),
        _flat(bias),
        None if residual is None else _rows(residual, n),
        seed,
        eps,
        p,
        weight_offset,
        is_rms,
        h_dtype if store_h else None,
        _requires_grad(x, residual, weight, bias),
    )
    if x2 is not x:  # x was not [M, N] already, or was cast
        y = y.view_as(x) if xk is x else y.view_as(x).to(x.dtype)
        h = None if h is None else h.view_as(x)
    return (y, h) if prenorm else y


def _add_dropout_torch(
    x: Tensor, residual: Optional[Tensor], p: float, h_dtype: torch.dtype, acc: torch.dtype
) -> Tensor:
    """h = residual + dropout(x), computed in ``acc`` and rounded once to ``h_dtype``, as the kernels do."""
    if p == 0.0 and x.dtype == h_dtype and (residual is None or residual.dtype == h_dtype):
        return x.clone() if residual is None else residual + x  # torch's 16-bit arithmetic: float32, one rounding
    xd = x.to(acc)
    if p > 0.0:
        xd = F.dropout(xd, p, training=True)
    return (xd if residual is None else residual.to(acc) + xd).to(h_dtype)


def _norm_torch(
    h: Tensor,
    shape: tuple[int, ...],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    is_rms: bool,
    weight_offset: float,
    out_dtype: torch.dtype,
    acc: torch.dtype,
) -> Tensor:
    """Norm(h) · (weight + weight_offset) + bias with torch's norms, as the kernels compute it: h as stored,
    parameters and arithmetic in ``acc``, one rounding to ``out_dtype`` (x's dtype) at the end."""
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
