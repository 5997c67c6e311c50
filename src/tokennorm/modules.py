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
    r"""Layer normalization over the trailing ``normalized_shape`` dims of each token: a drop-in for
    :class:`torch.nn.LayerNorm` (a subclass: same constructor, parameters, state_dict, ``isinstance``).

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    Mean and biased variance are computed per token (row) over the last ``len(normalized_shape)`` dims, in
    float32 (float64 for float64 input); γ and β are shared by every token. Runs
    :func:`tokennorm.layer_norm`: by default tokennorm's Triton kernels on CUDA tensors, torch's elsewhere
    (:func:`tokennorm.get_backend`).

    Args:
        normalized_shape: the trailing dims to normalize over (an int means the last dim).
        eps: added to the variance inside the square root. Default: 1e-5.
        elementwise_affine: learn γ (initialised to ones) and, if ``bias``, β (zeros). Default: True.
        bias: learn β as well (with ``elementwise_affine``). Default: True.
        device, dtype: of the parameters. Default: torch's defaults.

    Attributes:
        weight: γ, of shape ``normalized_shape``, or None without ``elementwise_affine``.
        bias: β, of shape ``normalized_shape``, or None.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`, float16/bfloat16/float32/float64 (a float16/bfloat16
          input may meet float32 parameters, as under autocast).
        - Output: the input's shape and dtype.

    Example::

        >>> ln = tokennorm.LayerNorm(512)
        >>> y = ln(torch.randn(2, 16, 512))   # [batch, tokens, channels]: 32 tokens, 32 means
    """

    def forward(self, input: Tensor) -> Tensor:
        return TF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` dims of each token: a drop-in for
    :class:`torch.nn.RMSNorm` (a subclass: same constructor, parameters, state_dict, ``isinstance``).

    .. math::
        y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \cdot \gamma

    The mean square is computed per token (row) over the last ``len(normalized_shape)`` dims, in float32
    (float64 for float64 input). Runs :func:`tokennorm.rms_norm`: by default tokennorm's Triton kernels on CUDA
    tensors, torch's elsewhere (:func:`tokennorm.get_backend`).

    Args:
        normalized_shape: the trailing dims to normalize over (an int means the last dim).
        eps: added to the mean square inside the square root; None for torch's default, the machine epsilon of
            the compute dtype (float32's 1.19e-7 for float16/bfloat16/float32 input). Default: None.
        elementwise_affine: learn γ (initialised to ones). Default: True.
        device, dtype: of the parameter. Default: torch's defaults.

    Attributes:
        weight: γ, of shape ``normalized_shape``, or None without ``elementwise_affine``.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`, float16/bfloat16/float32/float64 (γ may have any floating
          dtype).
        - Output: the input's shape and dtype.

    Example::

        >>> rms = tokennorm.RMSNorm(4096, eps=1e-6)
        >>> y = rms(torch.randn(1, 8, 4096))
    """

    def forward(self, x: Tensor) -> Tensor:
        return TF.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class AddNorm(nn.Module):
    r"""Add & Norm of a Transformer block, fused (:func:`tokennorm.add_norm`): one pass over memory for the
    residual add, dropout on the sublayer's output, and the norm.

    .. math::
        h = \text{residual} + \text{dropout}(x), \qquad
        y = \text{Norm}(h) \cdot (\gamma + \text{weight\_offset}) + \beta

    with Norm LayerNorm or RMSNorm over the trailing ``normalized_shape`` dims of each token.

    * ``placement="post"`` (original Transformer, post-LN): ``forward(x, residual)`` returns ``y``, which is
      also the next block's residual: ``LayerNorm(residual + Sublayer(residual))``.
    * ``placement="pre"`` (GPT-2, Llama): ``forward(x, residual)`` returns ``(y, h)``: ``y`` feeds the next
      sublayer, ``h`` is the new residual stream (in ``residual_dtype`` if given).

    Dtypes and rounding as :func:`tokennorm.add_norm`: h in ``residual_dtype`` (default: the residual's, else
    x's), y in x's dtype, both computed in float32 (float64 when any of x, residual, h is float64).

    Args:
        normalized_shape: the trailing dims to normalize over (an int means the last dim).
        norm: ``"layernorm"`` or ``"rmsnorm"``. Default: ``"layernorm"``.
        placement: ``"post"`` or ``"pre"``. Default: ``"post"``.
        dropout: probability of zeroing an element of ``x`` (the sublayer output) in training, in [0, 1).
            Default: 0.
        eps: ε inside the square root; None for the norm's default: 1e-5 for LayerNorm (stored as 1e-5, as
            ``nn.LayerNorm`` does), torch's RMSNorm default for RMSNorm (stored as None: the machine epsilon of
            h's compute dtype). Default: None.
        elementwise_affine: learn γ (ones; zeros with ``weight_offset=1``) and, if ``bias``, β (zeros).
            Default: True.
        bias: learn β as well. Default: None (True for LayerNorm, False for RMSNorm).
        residual_dtype: dtype of the residual stream h (e.g. torch.float32 under bf16 activations). Default: None.
        weight_offset: y scales by ``weight + weight_offset`` (1.0: Gemma-style zero-centred weight, initialised
            to zeros). Default: 0.
        device, dtype: of the parameters. Default: torch's defaults.

    Attributes:
        weight: γ, of shape ``normalized_shape``, or None without ``elementwise_affine``.
        bias: β, of shape ``normalized_shape``, or None. (Named as the norm modules' are: state_dicts
            interchange.)

    Shape:
        - x, residual: :math:`(*, \text{normalized\_shape})`; residual may be None (h = dropout(x)).
        - Output: ``y`` (post) or ``(y, h)`` (pre), each of x's shape.

    Example::

        >>> block_norm = tokennorm.AddNorm(512, norm="rmsnorm", placement="pre", residual_dtype=torch.float32)
        >>> x, stream = torch.randn(2, 16, 512).bfloat16(), torch.randn(2, 16, 512)
        >>> y, stream = block_norm(x, stream)      # y: bf16, into the next sublayer; stream: float32
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
            x,
            residual,
            self.weight,
            self.bias,
            self.eps,
            norm=self.norm,
            dropout_p=self.dropout,
            training=self.training,
            prenorm=self.placement == "pre",
            residual_dtype=self.residual_dtype,
            weight_offset=self.weight_offset,
            normalized_shape=self.normalized_shape,
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.normalized_shape}, norm={self.norm!r}, placement={self.placement!r}, "
            f"dropout={self.dropout}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )
        if self.elementwise_affine:
            s += f", bias={self.bias is not None}"
        if self.weight_offset:
            s += f", weight_offset={self.weight_offset}"
        return s
