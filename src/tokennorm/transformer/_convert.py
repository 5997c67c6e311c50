"""Copying torch.nn.Transformer{Encoder,Decoder}Layer weights into tokennorm blocks (for ``from_torch``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokennorm.transformer.attention import MultiHeadAttention
from tokennorm.transformer.feedforward import FeedForward


def activation_name(layer: nn.Module) -> str:
    """'relu' or 'gelu' for a torch layer's ``activation`` (function or module); ValueError otherwise."""
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    raise ValueError(f"from_torch supports the relu and gelu activations, but the layer has activation={act!r}")


def check_layer(layer: nn.Module, expected: type, attn_names: tuple[str, ...], norm_names: tuple[str, ...]) -> None:
    if not isinstance(layer, expected):
        raise TypeError(f"from_torch expects a {expected.__name__}, but got {type(layer).__name__}")
    for name in attn_names:
        mha = getattr(layer, name)
        if not mha.batch_first:
            raise ValueError(
                "from_torch needs a layer built with batch_first=True (tokennorm blocks take [batch, seq, d_model]), "
                "but got batch_first=False"
            )
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(f"from_torch does not support kdim/vdim, add_bias_kv or add_zero_attn ({name})")
    for name in norm_names:
        norm = getattr(layer, name)
        if type(norm) is not nn.LayerNorm or not norm.elementwise_affine:
            raise ValueError(f"from_torch supports torch.nn.LayerNorm with elementwise_affine, but {name} is {norm!r}")


def _copy(dst: Optional[Tensor], src: Optional[Tensor]) -> None:
    if (dst is None) != (src is None):
        raise ValueError("parameter presence differs between the torch layer and the tokennorm layer")
    if dst is not None:
        with torch.no_grad():
            dst.copy_(src)


def copy_attention(dst: MultiHeadAttention, src: nn.MultiheadAttention) -> None:
    """q, k, v from the packed ``in_proj_weight`` [3C, C] (in that order), and ``out_proj``."""
    biases = (None,) * 3 if src.in_proj_bias is None else src.in_proj_bias.chunk(3)
    for proj, w, b in zip((dst.q_proj, dst.k_proj, dst.v_proj), src.in_proj_weight.chunk(3), biases):
        _copy(proj.weight, w)
        _copy(proj.bias, b)
    _copy(dst.out_proj.weight, src.out_proj.weight)
    _copy(dst.out_proj.bias, src.out_proj.bias)


def copy_feedforward(dst: FeedForward, layer: nn.Module) -> None:
    for ours, theirs in ((dst.linear1, layer.linear1), (dst.linear2, layer.linear2)):
        _copy(ours.weight, theirs.weight)
        _copy(ours.bias, theirs.bias)


def copy_norm(dst: nn.Module, src: nn.Module) -> None:
    """weight, bias (None where a norm has none, as torch.nn.RMSNorm) and ε from a torch norm module: a
    torch layer's norms may each have their own ε."""
    _copy(dst.weight, src.weight)
    _copy(getattr(dst, "bias", None), getattr(src, "bias", None))
    dst.eps = src.eps
