"""Modules: exact drop-ins for ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm``, and ``AddNorm`` for blocks.

``LayerNorm`` and ``RMSNorm`` subclass torch's classes: same constructor, parameters, ``reset_parameters``,
``extra_repr`` and state_dict keys, and ``isinstance(m, torch.nn.LayerNorm)`` holds. Only ``forward`` changes.
"""

from __future__ import annotations

import numbers
from typing import Optional, Union

import torch
from torch import Tensor, nn

from tokennorm import functional as TF

__all__ = ["LayerNorm", "RMSNorm", "AddNorm"]

_Shape = Union[int, list[int], torch.Size, tuple[int, ...]]


class LayerNorm(nn.LayerNorm):
    r"""Layer normalization over the trailing ``normalized_shape`` dims of each token.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    Mean and biased variance are computed per token (row); γ and β are shared by every token. Same
    arguments, parameters and state_dict as :class:`torch.nn.LayerNorm`; runs tokennorm's Triton kernels on
    CUDA tensors.

    Args:
        normalized_shape: the trailing dims to normalize over (an int means the last dim).
        eps: added to the variance inside the square root. Default: 1e-5.
        elementwise_affine: learn γ (initialised to ones) and, if ``bias``, β (zeros). Default: True.
        bias: learn β as well. Default: True.

    Shape:
        - Input: (*, normalized_shape); Output: the same shape and dtype.

    Examples::

        >>> ln = tokennorm.LayerNorm(512)
        >>> y = ln(torch.randn(2, 16, 512))   # [batch, tokens, channels]: 32 tokens, 32 means
    """

    def forward(self, input: Tensor) -> Tensor:
        return TF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` dims of each token.

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \cdot \gamma

    Same arguments, parameters and state_dict as :class:`torch.nn.RMSNorm`; ``eps=None`` uses torch's
    default (the machine epsilon of the compute dtype). Runs tokennorm's Triton kernels on CUDA tensors.

    Examples::

        >>> rms = tokennorm.RMSNorm(4096, eps=1e-6)
        >>> y = rms(torch.randn(1, 8, 4096))
    """

    def forward(self, x: Tensor) -> Tensor:
        return TF.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class AddNorm(nn.Module):
    r"""Add & Norm of a Transformer block, fused: ``h = residual + dropout(x)``, ``y = Norm(h)``.

    * ``placement="post"`` (original Transformer, post-LN): ``forward(x, residual)`` returns ``y``, which is
      also the next block's residual: ``LayerNorm(residual + Sublayer(residual))``.
    * ``placement="pre"`` (GPT-2, Llama): ``forward(x, residual)`` returns ``(y, h)``: ``y`` feeds the next
      sublayer, ``h`` is the new residual stream (in ``residual_dtype`` if given).

    Args:
        normalized_shape: the trailing dims to normalize over.
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        placement: ``"post"`` or ``"pre"``.
        dropout: probability of zeroing an element of ``x`` (the sublayer output) in training.
        eps: ε inside the square root; None (default) for the norm's default (:func:`tokennorm.add_norm`):
            1e-5 for LayerNorm, torch's RMSNorm default for RMSNorm (the machine epsilon of h's compute dtype).
        elementwise_affine: learn γ (ones). bias: learn β (zeros); default True for LayerNorm, False for RMSNorm.
        residual_dtype: dtype of the residual stream h (e.g. torch.float32 under bf16 activations).
        weight_offset: y uses ``weight + weight_offset`` (1.0: Gemma-style zero-centred weight, initialised
            to zeros).

    The parameters are named ``weight`` and ``bias``, like the norm modules, so state_dicts interchange.
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
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if norm not in TF.NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, TF.NORMS))}, but got norm={norm!r}")
        if placement not in ("post", "pre"):
            raise ValueError(f"placement must be 'post' or 'pre', but got placement={placement!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout}")
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.norm = norm
        self.placement = placement
        self.dropout = dropout
        # As nn.LayerNorm / nn.RMSNorm store it: 1e-5 for LayerNorm, None (dtype-dependent) for RMSNorm.
        self.eps = eps if eps is not None or norm == "rmsnorm" else TF.LAYER_NORM_EPS
        self.elementwise_affine = elementwise_affine
        self.residual_dtype = residual_dtype
        self.weight_offset = weight_offset
        has_bias = (norm == "layernorm") if bias is None else bias
        factory = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory)) if has_bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.constant_(self.weight, 1.0 - self.weight_offset)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
        return TF.add_norm(
            x, residual, self.weight, self.bias, self.eps,
            norm=self.norm, dropout_p=self.dropout, training=self.training, prenorm=self.placement == "pre",
            residual_dtype=self.residual_dtype, weight_offset=self.weight_offset,
            normalized_shape=self.normalized_shape,
        )

    def extra_repr(self) -> str:
        s = (f"{self.normalized_shape}, norm={self.norm!r}, placement={self.placement!r}, "
             f"dropout={self.dropout}, eps={self.eps}, elementwise_affine={self.elementwise_affine}")
        if self.elementwise_affine:
            s += f", bias={self.bias is not None}"
        if self.weight_offset:
            s += f", weight_offset={self.weight_offset}"
        return s
