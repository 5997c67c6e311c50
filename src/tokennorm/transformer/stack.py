"""Stacks of identical layers (deep copies, like torch.nn.TransformerEncoder/Decoder) with an optional final
norm, which pre-LN needs: its last residual stream is never normalized inside the layers."""

from __future__ import annotations

import copy
from typing import Optional

from torch import Tensor, nn

from tokennorm.transformer.blocks import DecoderLayer, EncoderLayer, _Block
from tokennorm.transformer.norms import make_norm

__all__ = ["Encoder", "Decoder"]


def _clones(layer: _Block, num_layers: int) -> nn.ModuleList:
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, but got num_layers={num_layers}")
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))


def _final_norm(layer: _Block, final_norm: Optional[bool]) -> Optional[nn.Module]:
    if not (layer.placement == "pre" if final_norm is None else final_norm):
        return None
    p = next(layer.parameters())
    return make_norm(layer.norm_type, layer.d_model, layer.eps, layer.has_bias, device=p.device, dtype=p.dtype)


class Encoder(nn.Module):
    r"""``num_layers`` copies of an :class:`EncoderLayer`, then a final norm: :math:`y = \mathrm{Norm}(L_n(\dots
    L_1(x)))`, as :class:`torch.nn.TransformerEncoder` (without its nested-tensor path, which returns 0 at
    padding positions; docs/transformer.md).

    Args:
        layer: the layer to copy (deep copies: no parameter is shared, ``layer`` itself is not used).
        num_layers: how many copies, at least 1.
        final_norm: add a norm of ``layer``'s type after the last layer. Default (None): only for pre-LN
            layers, whose last residual stream is never normalized inside them.

    Shape:
        - x: ``[B, N, d_model]``; output: the same.

    Example::

        >>> encoder = Encoder(EncoderLayer(64, 4, 256, placement="pre"), num_layers=6)
        >>> encoder(torch.randn(2, 10, 64), is_causal=True).shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, layer: EncoderLayer, num_layers: int, final_norm: Optional[bool] = None) -> None:
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.norm = _final_norm(layer, final_norm)

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        is_causal: bool = False,
        cond: Optional[Tensor] = None,
    ) -> Tensor:
        """Every layer, then the final norm; the arguments of :meth:`EncoderLayer.forward`."""
        for layer in self.layers:
            x = layer(x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal, cond=cond)
        return x if self.norm is None else self.norm(x)


class Decoder(nn.Module):
    r"""``num_layers`` copies of a :class:`DecoderLayer`, then a final norm, as
    :class:`torch.nn.TransformerDecoder`.

    Args:
        layer: the layer to copy (deep copies).
        num_layers: how many copies, at least 1.
        final_norm: add a norm of ``layer``'s type after the last layer. Default (None): only for pre-LN.

    Shape:
        - x: ``[B, N, d_model]``, memory: ``[B, S, d_model]`` (with cross-attention); output: ``[B, N, d_model]``.

    Example::

        >>> decoder = Decoder(DecoderLayer(64, 4, 256, cross_attention=False), num_layers=2)
        >>> decoder(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, layer: DecoderLayer, num_layers: int, final_norm: Optional[bool] = None) -> None:
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.norm = _final_norm(layer, final_norm)

    def forward(
        self,
        x: Tensor,
        memory: Optional[Tensor] = None,
        *,
        tgt_key_padding_mask: Optional[Tensor] = None,
        memory_key_padding_mask: Optional[Tensor] = None,
        causal: bool = True,
        tgt_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        cond: Optional[Tensor] = None,
    ) -> Tensor:
        """Every layer, then the final norm; the arguments of :meth:`DecoderLayer.forward`."""
        for layer in self.layers:
            x = layer(
                x,
                memory,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                causal=causal,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                cond=cond,
            )
        return x if self.norm is None else self.norm(x)
