r"""Dynamic normalization: Dynamic Tanh (DyT), ``y = γ · tanh(α · x) + β``, and its fused residual add.

DyT ("Transformers without Normalization", Zhu, Chen, He, LeCun and Liu, CVPR 2025) replaces a Transformer's
LayerNorm with an element-wise squashing whose steepness α is learned: no statistics at all, so every token (and
every element) is transformed on its own. The math, with its hand-written backward, is
:func:`tokennorm.reference.dyt` / :func:`tokennorm.reference.add_dyt`.

(Not ``dyt.py``: importing a submodule sets it as an attribute of the package, and ``tokennorm.dyt`` is the function.)
"""

from __future__ import annotations

import numbers
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokennorm import _checks, ops
from tokennorm.backend import use_triton
from tokennorm.functional import _flat, _requires_grad, _rows
from tokennorm.reference import compute_dtype

__all__ = ["dyt", "add_dyt", "DyT", "AddDyT"]

_Shape = Union[int, list[int], torch.Size, tuple[int, ...]]
_Alpha = Union[Tensor, float]


def _check(op: str, x: Tensor, alpha: _Alpha, weight: Optional[Tensor], bias: Optional[Tensor]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, but got {type(x).__name__}")
    if isinstance(alpha, Tensor):
        if alpha.numel() != 1 or alpha.dim() > 1:
            raise RuntimeError(
                f"Expected alpha to be a scalar (one element), but got alpha of shape {list(alpha.shape)}"
            )
        if not alpha.is_floating_point():
            raise TypeError(f"alpha must be a floating-point tensor, but got alpha of dtype {alpha.dtype}")
        if alpha.device != x.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but got alpha on {alpha.device} and input on "
                f"{x.device}"
            )
    elif not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
        raise TypeError(f"alpha must be a float or a one-element Tensor, but got {type(alpha).__name__}")
    if weight is None and bias is None:
        _checks.check_dtype(op, x)
        return
    if weight is not None and bias is not None and weight.shape != bias.shape:
        raise RuntimeError(
            f"Expected weight and bias of the same shape, but got weight of shape {list(weight.shape)} and bias of "
            f"shape {list(bias.shape)}"
        )
    shape = tuple((weight if weight is not None else bias).shape)
    _checks.check_norm_inputs(op, x, shape, weight, bias)


def _dyt_torch(x: Tensor, alpha: _Alpha, weight: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    acc = compute_dtype(x.dtype)
    a = alpha.reshape(()).to(acc) if isinstance(alpha, Tensor) else alpha
    t = torch.tanh(a * x.to(acc))
    y = t if weight is None else t * weight.to(acc)
    y = y if bias is None else y + bias.to(acc)
    return y.to(x.dtype)


def dyt(input: Tensor, alpha: _Alpha, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
    r"""Dynamic Tanh, element-wise:

    .. math:: y = \gamma \cdot \tanh(\alpha x) + \beta

    Args:
        input: ``[*, normalized_shape]``; any floating dtype torch's norms take.
        alpha: the scalar α: a one-element tensor (the learned parameter, shape ``[1]`` as in the paper's code
            and Liger's) or a Python float (no gradient).
        weight, bias: γ and β over the trailing dims (``[C]`` for ``[B, N, C]``); input's dtype, or float32 for a
            bfloat16/float16 input.

    Returns:
        y in the input's dtype and shape, computed in float32 (float64 for float64 input). Inputs are never modified.

    Example::

        >>> y = tokennorm.dyt(x, alpha, weight, bias)       # x [B, N, C], alpha [1], weight/bias [C]
    """
    _check("dyt", input, alpha, weight, bias)
    # The one dispatch point of this op: the Triton kernel, or the torch composition.
    if use_triton(input) and input.dtype in _checks.KERNEL_DTYPES and input.numel() and input.dim():
        return _dyt_triton(input, None, alpha, weight, bias, False)[0]
    return _dyt_torch(input, alpha, weight, bias)


def _dyt_triton(
    x: Tensor,
    residual: Optional[Tensor],
    alpha: _Alpha,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    prenorm: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """(y, h) from the kernel on x as [M, N] rows, N the width of γ/β (x's last dim without them); with a
    residual, h is stored in its dtype (DyT sees h as stored; backward reads it)."""
    p = weight if weight is not None else bias
    n = p.numel() if p is not None else x.shape[-1]
    alpha_tensor = alpha if isinstance(alpha, Tensor) else None
    alpha_value = 0.0 if alpha_tensor is not None else float(alpha)
    needs_grad = _requires_grad(x, residual, alpha_tensor, weight, bias)
    h_dtype = None if residual is None else residual.dtype
    y, h = ops.dyt_forward(
        _rows(x, n),
        None if residual is None else _rows(residual, n),
        alpha_tensor,
        alpha_value,
        _flat(weight),
        _flat(bias),
        h_dtype,
        needs_grad,
    )
    y = y.view(x.shape)
    if not prenorm:
        return y, None
    return y, h.view(x.shape) if h is not None else x.clone()


def add_dyt(
    x: Tensor,
    residual: Optional[Tensor],
    alpha: _Alpha,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    *,
    prenorm: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""Add & DyT: ``h = residual + x``, ``y = γ · tanh(α · h) + β``; the residual add fused with DyT.

    Args: as :func:`dyt`, plus ``residual`` (x's shape, any floating dtype, or None: h = x) and ``prenorm``.

    Returns:
        y in x's dtype; or ``(y, h)`` when ``prenorm`` (pre-norm blocks: h is the new residual stream, in the
        residual's dtype, x's without one). h is rounded to its dtype before DyT, as a stored stream is.
    """
    _check("dyt", x, alpha, weight, bias)
    if residual is not None:
        _checks.check_residual(x, residual)
    # The one dispatch point of this op: the fused Triton kernel, or the torch composition.
    if use_triton(x) and x.dtype in _checks.KERNEL_DTYPES and x.numel() and x.dim():
        y, h = _dyt_triton(x, residual, alpha, weight, bias, prenorm)
        return (y, h) if prenorm else y
    if residual is None:
        h = x.clone()  # h is returned: never x itself
    else:
        acc = compute_dtype(torch.promote_types(x.dtype, residual.dtype))
        h = (residual.to(acc) + x.to(acc)).to(residual.dtype)
    y = _dyt_torch(h, alpha, weight, bias).to(x.dtype)
    return (y, h) if prenorm else y


class DyT(nn.Module):
    r"""Dynamic Tanh, a drop-in for a Transformer's LayerNorm:

    .. math:: y = \gamma \cdot \tanh(\alpha x) + \beta

    Parameters as the paper's ``DynamicTanh`` (channels last): ``alpha`` (shape ``[1]``, initialised to
    ``alpha_init``), ``weight`` γ (ones) and ``bias`` β (zeros) of shape ``normalized_shape``.

    Args:
        normalized_shape: the trailing dims γ and β cover (an int means the last dim).
        alpha_init: the initial α. Default: 0.5 (the paper's for non-LLM Transformers).
        elementwise_affine: learn γ and, if ``bias``, β. Default: True.
        bias: learn β. Default: True.

    Shape:
        - Input: ``(*, normalized_shape)``; Output: the same shape and dtype.

    Examples::

        >>> norm = tokennorm.DyT(768)
        >>> y = norm(torch.randn(4, 128, 768))
    """

    def __init__(
        self,
        normalized_shape: _Shape,
        alpha_init: float = 0.5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.alpha_init = alpha_init
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        self.alpha = nn.Parameter(torch.empty(1, **factory))
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
        else:
            self.register_parameter("weight", None)
        if elementwise_affine and bias:
            self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.alpha_init)
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return dyt(input, self.alpha, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, alpha_init={self.alpha_init}, elementwise_affine={self.elementwise_affine}"
            + (f", bias={self.bias is not None}" if self.elementwise_affine else "")
        )


class AddDyT(DyT):
    r"""Add & DyT of a Transformer block: ``h = residual + dropout(x)``, ``y = DyT(h)``, with the contract of
    :class:`tokennorm.AddNorm`: ``placement="post"`` returns y, ``"pre"`` returns ``(y, h)``.

    Same parameters (and state_dict) as :class:`DyT`; ``dropout`` zeroes elements of x (the sublayer output) in
    training, before the add.
    """

    def __init__(
        self,
        normalized_shape: _Shape,
        placement: str = "post",
        dropout: float = 0.0,
        alpha_init: float = 0.5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        if placement not in ("post", "pre"):
            raise ValueError(f"placement must be 'post' or 'pre', but got placement={placement!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout}")
        super().__init__(normalized_shape, alpha_init, elementwise_affine, bias, device, dtype)
        self.placement, self.dropout = placement, dropout

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
        x = F.dropout(x, self.dropout, self.training) if self.dropout > 0.0 else x
        return add_dyt(x, residual, self.alpha, self.weight, self.bias, prenorm=self.placement == "pre")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, placement={self.placement!r}, dropout={self.dropout}"
