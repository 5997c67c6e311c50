r"""Channels-first LayerNorm for images and audio: ``[B, C, H, W]`` / ``[B, C, T]``, one token per pixel or frame,
normalized over its C channels (dim 1).

Vision backbones (ConvNeXt, timm's ``LayerNorm2d``, SAM, detectron2) and audio models keep activations
channels-first for their convolutions, and most permute to channels-last and back around ``nn.LayerNorm``.
:func:`channels_first_layer_norm` and :class:`ChannelsFirstLayerNorm` take the tensor as it is. The math is
:func:`tokennorm.reference.layer_norm_channels_first`: LayerNorm's, with the channel dim in place of the last.

Named "channels first" rather than "2d" because the same op serves ``[B, C, T]`` and ``[B, C, D, H, W]``.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from tokennorm import _checks, functional, ops
from tokennorm.backend import use_triton
from tokennorm.functional import _flat, _requires_grad
from tokennorm.kernels.launch import channels_first_fits
from tokennorm.reference import LAYER_NORM_EPS

__all__ = ["channels_first_layer_norm", "ChannelsFirstLayerNorm"]


def channels_first_layer_norm(
    input: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = LAYER_NORM_EPS
) -> Tensor:
    r"""LayerNorm over the channel dim (dim 1) of a channels-first tensor:

    .. math:: y_{b,:,p} = \frac{x_{b,:,p} - \mathrm{E}[x_{b,:,p}]}{\sqrt{\mathrm{Var}[x_{b,:,p}] + \epsilon}}
              \cdot \gamma + \beta

    for every batch item b and position p (pixel, frame); mean and biased variance over the C channels.

    Args:
        input: ``[B, C, *]`` (``[B, C, H, W]``, ``[B, C, T]``, …), at least 2-D.
        weight, bias: γ and β of shape ``[C]``; input's dtype, or float32 for a bfloat16/float16 input.
        eps: inside the square root. Default: 1e-5 (torch's LayerNorm's; ConvNeXt and timm use 1e-6).

    Returns:
        y of the input's shape and dtype (statistics in float32; float64 for float64). Equal to
        ``F.layer_norm(input.movedim(1, -1), (C,), weight, bias, eps).movedim(-1, 1)``; its memory layout may be
        that of the channels-last result. Inputs are never modified.

    Example::

        >>> y = tokennorm.channels_first_layer_norm(feature_map, weight, bias, eps=1e-6)   # [B, 96, 56, 56]
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, but got {type(input).__name__}")
    if input.dim() < 2:
        raise RuntimeError(
            f"channels_first_layer_norm expects input of shape [B, C, *] (at least 2-D), but got input of size "
            f"{list(input.shape)}"
        )
    channels_last = input.movedim(1, -1)  # a view: no copy
    _checks.check_norm_inputs("LayerNormKernelImpl", channels_last, tuple(input.shape[1:2]), weight, bias)
    # The one dispatch point of this op: the Triton kernels, or torch's LayerNorm on the channels-last view.
    if use_triton(input) and input.dtype in _checks.KERNEL_DTYPES and input.numel():
        return _channels_first_triton(input, channels_last, weight, bias, eps)
    if any(p is not None and p.dtype != input.dtype for p in (weight, bias)):
        # float32 parameters with a bfloat16/float16 input: torch's CUDA LayerNorm refuses the mix (its CPU one
        # computes it in float32), so compute it in float32 here on every device
        y = F.layer_norm(channels_last.float(), input.shape[1:2], weight, bias, eps).to(input.dtype)
        return y.movedim(-1, 1)
    return F.layer_norm(channels_last, input.shape[1:2], weight, bias, eps).movedim(-1, 1)


# The channels-first kernel addresses a batch item's C · S elements with 32-bit offsets.
_MAX_ITEM_ELEMENTS = 2**31 - 1


def _channels_first_triton(
    input: Tensor, channels_last: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> Tensor:
    """Channels stored last (a channels_last image, a transposed sequence): the rows kernels on that view, no copy.
    Else the channels-first kernel on [B, C, S] (a copy first when x is not contiguous); channels too many for its
    registers (or an item beyond 2^31 elements): a channels-last copy and the rows kernels."""
    c = input.shape[1]
    item = input.numel() // input.shape[0]
    if not channels_last.is_contiguous() and channels_first_fits(c, input.dtype) and item <= _MAX_ITEM_ELEMENTS:
        x3 = input.contiguous().view(input.shape[0], c, -1)
        y = ops.channels_first_forward(x3, _flat(weight), _flat(bias), eps, _requires_grad(input, weight, bias))
        return y.view(input.shape)
    return functional.layer_norm(channels_last, (c,), weight, bias, eps).movedim(-1, 1)


class ChannelsFirstLayerNorm(nn.LayerNorm):
    r"""LayerNorm over the channels of a channels-first tensor ``[B, C, *]``: a drop-in for timm's
    ``LayerNorm2d`` and ConvNeXt's ``LayerNorm(data_format="channels_first")``.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta
              \quad\text{over dim 1, per position}

    A subclass of :class:`torch.nn.LayerNorm` with ``normalized_shape = (C,)``, like timm's ``LayerNorm2d``: the
    same parameters (``weight``, ``bias`` of shape ``[C]``), state_dict and ``isinstance`` checks.

    Args:
        num_channels: C.
        eps: inside the square root. Default: 1e-5 (torch's; timm and ConvNeXt pass 1e-6).
        elementwise_affine: learn γ (ones) and, if ``bias``, β (zeros). Default: True.
        bias: learn β. Default: True.

    Shape:
        - Input: ``[B, C, *]`` (an image ``[B, C, H, W]``, audio ``[B, C, T]``); Output: the same shape and dtype.

    Examples::

        >>> norm = tokennorm.ChannelsFirstLayerNorm(96, eps=1e-6)
        >>> y = norm(torch.randn(8, 96, 56, 56))          # 8·56·56 tokens, each over its 96 channels
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = LAYER_NORM_EPS,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_channels, eps, elementwise_affine, bias, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        return channels_first_layer_norm(input, self.weight, self.bias, self.eps)
