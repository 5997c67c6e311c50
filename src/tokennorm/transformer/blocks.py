"""Encoder and decoder layers: attention and feed-forward sublayers joined by Add & Norm, post-LN or pre-LN.

Post-LN (original Transformer, ``norm_first=False`` in torch)::

    x = AddNorm(sublayer(x), x)                  # Norm(x + dropout(sublayer(x))) after every sublayer

Pre-LN (GPT-2, ``norm_first=True``), each AddNorm fusing the residual add with the next sublayer's norm::

    y, h = Norm(x), x
    y, h = AddNorm(sublayer_i(y), h)             # h = h + dropout(sublayer_i(y)); y = Norm(h)
    return h + dropout(last_sublayer(y))

Both compute exactly what torch.nn.TransformerEncoderLayer / TransformerDecoderLayer compute.

Conditioned (``cond_dim``: AdaLN-Zero, DiT-style, pre-LN only): a per-batch-item vector c gives each sublayer i a
shift, scale and gate (:class:`tokennorm.AdaLNZero`, zero-initialised), and each gated residual add is fused with
the next sublayer's modulated norm (:func:`tokennorm.ada_norm`)::

    m_1, …, m_k = AdaLNZero(c)
    y = Norm(x)·(1 + scale_1) + shift_1,  h = x
    y, h = ada_norm(sublayer_i(y), m_{i+1}, gate=gate_i, residual=h)   # h = h + gate_i ⊙ sublayer_i(y)
    return h + gate_k ⊙ dropout(last_sublayer(y))
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokennorm.adaptive import AdaLNZero
from tokennorm.reference import LAYER_NORM_EPS
from tokennorm.transformer import _convert
from tokennorm.transformer.attention import MultiHeadAttention, torch_takes_fast_path
from tokennorm.transformer.feedforward import FeedForward
from tokennorm.transformer.norms import check_choices, make_add_norm, make_norm

__all__ = ["EncoderLayer", "DecoderLayer"]


class _Block(nn.Module):
    """What the encoder and decoder layers share: options, norms, and the residual chain."""

    def _setup(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        activation: str,
        norm: str,
        placement: str,
        eps: float,
        bias: bool,
        num_sublayers: int,
        factory: dict,
        cond_dim: Optional[int] = None,
    ) -> None:
        check_choices(norm, placement)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout}")
        if cond_dim is not None and (placement != "pre" or norm not in ("layernorm", "rmsnorm")):
            raise ValueError(
                "cond_dim (AdaLN-Zero conditioning) needs placement='pre' and norm 'layernorm' or 'rmsnorm', but got "
                f"placement={placement!r} and norm={norm!r}"
            )
        self.d_model, self.nhead, self.norm_type, self.placement = d_model, nhead, norm, placement
        self.eps, self.has_bias, self.dropout = eps, bias, dropout
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout, bias, **factory)
        self.ff = FeedForward(d_model, dim_feedforward, dropout, activation, bias, **factory)
        self.cond_dim = cond_dim
        # conditioned: the norms have no parameters of their own (DiT); AdaLNZero's vectors modulate them
        self.adaln = (
            None
            if cond_dim is None
            else AdaLNZero(d_model, cond_dim, num_sublayers, norm=norm, eps=eps, bias=bias, **factory)
        )
        # norm{i} follows sublayer i (post) or precedes it (pre); in pre, norm1 has no add to fuse
        for i in range(1, num_sublayers + 1 if cond_dim is None else 1):
            if placement == "pre" and i == 1:
                module = make_norm(norm, d_model, eps, bias, **factory)
            else:
                module = make_add_norm(norm, d_model, placement, dropout, eps, bias, **factory)
            self.add_module(f"norm{i}", module)

    def _check_input(self, name: str, t: Tensor) -> None:
        # checked here, not left to the sublayers: in pre-LN the norm would see a wrong width first and its
        # error would name neither the layer's argument nor the expected layout
        if t.dim() != 3 or t.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__} expects {name} of shape [batch, seq_len, {self.d_model}] (batch-first), "
                f"but got {name} of shape {list(t.shape)}"
            )

    def _check_cond(self, x: Tensor, cond: Optional[Tensor]) -> None:
        if (cond is None) != (self.adaln is None):
            raise ValueError(
                f"cond is required: this {type(self).__name__} has cond_dim={self.cond_dim}"
                if cond is None
                else f"cond needs a {type(self).__name__} built with cond_dim"
            )
        if cond is not None and (cond.dim() != 2 or tuple(cond.shape) != (x.shape[0], self.cond_dim)):
            raise ValueError(
                f"{type(self).__name__} expects cond of shape [batch, cond_dim] = {[x.shape[0], self.cond_dim]}, but "
                f"got cond of shape {list(cond.shape)}"
            )

    def _conditioned_chain(self, x: Tensor, cond: Tensor, sublayers: Sequence[Callable[[Tensor], Tensor]]) -> Tensor:
        mods = self.adaln(cond)
        y, h = self.adaln.normalize(x, mods[0]), x
        for sublayer, prev, m in zip(sublayers[:-1], mods[:-1], mods[1:]):
            out = F.dropout(sublayer(y), self.dropout, self.training)
            y, h = self.adaln.normalize(out, m, gate=prev.gate, residual=h, prenorm=True)
        return torch.addcmul(h, mods[-1].gate.unsqueeze(1), F.dropout(sublayers[-1](y), self.dropout, self.training))

    def _residual_chain(
        self, x: Tensor, sublayers: Sequence[Callable[[Tensor], Tensor]], cond: Optional[Tensor] = None
    ) -> Tensor:
        if cond is not None:
            return self._conditioned_chain(x, cond, sublayers)
        norms = [getattr(self, f"norm{i}") for i in range(1, len(sublayers) + 1)]
        if self.placement == "post":
            for sublayer, add_norm in zip(sublayers, norms):
                x = add_norm(sublayer(x), x)
            return x
        y, h = norms[0](x), x
        for sublayer, add_norm in zip(sublayers[:-1], norms[1:]):
            y, h = add_norm(sublayer(y), h)
        return h + F.dropout(sublayers[-1](y), self.dropout, self.training)

    def extra_repr(self) -> str:
        cond = "" if self.cond_dim is None else f", cond_dim={self.cond_dim}"
        return f"norm={self.norm_type!r}, placement={self.placement!r}, eps={self.eps}{cond}"


def _norm_eps(module: nn.Module) -> Optional[float]:
    """ε of a block's norm step (a norm, an Add & Norm, or a ResidualNorm around a norm); None without one."""
    return getattr(module, "eps", getattr(getattr(module, "norm", None), "eps", None))


class EncoderLayer(_Block):
    r"""Transformer encoder layer: self-attention and a feed-forward network, each joined to the residual
    stream by Add & Norm; batch-first.

    .. math::
        \text{post:}\quad h = \mathrm{Norm}_1(x + \mathrm{Drop}(\mathrm{SA}(x))),\quad
        y = \mathrm{Norm}_2(h + \mathrm{Drop}(\mathrm{FFN}(h)))

        \text{pre:}\quad h = x + \mathrm{Drop}(\mathrm{SA}(\mathrm{Norm}_1(x))),\quad
        y = h + \mathrm{Drop}(\mathrm{FFN}(\mathrm{Norm}_2(h)))

    with SA = :class:`MultiHeadAttention`, FFN = :class:`FeedForward`; each Add & Norm runs as one fused
    :class:`tokennorm.AddNorm` for ``"layernorm"`` / ``"rmsnorm"``. Equals
    :class:`torch.nn.TransformerEncoderLayer` (``batch_first=True``, ``norm_first = placement == "pre"``)
    with the same weights (:meth:`from_torch`), including what a query whose keys are all masked gets (see
    :class:`MultiHeadAttention`).

    Args:
        d_model: model width.
        nhead: attention heads; must divide ``d_model``.
        dim_feedforward: hidden width of the feed-forward network. Default: 2048.
        dropout: dropout on attention probabilities, after the FFN activation and on each sublayer's output,
            in training mode. Default: 0.1.
        activation: ``"relu"`` or ``"gelu"``. Default: ``"relu"``.
        norm: ``"layernorm"``, ``"rmsnorm"`` (tokennorm's, per token), ``"dyt"`` (Dynamic Tanh, with the add
            fused: :class:`tokennorm.AddDyT`), ``"batchnorm"`` (statistics over all tokens and batch items: a
            demonstration of what not to do) or ``"none"``. Default: ``"layernorm"``.
        placement: ``"post"`` (torch's ``norm_first=False``) or ``"pre"`` (``norm_first=True``). Default:
            ``"post"``.
        eps: ε of the norms. Default: 1e-5.
        bias: biases in the linear layers and the LayerNorms. Default: True.
        cond_dim: width of a conditioning vector ``cond`` [B, cond_dim] passed to ``forward``: an AdaLN-Zero
            block (DiT), pre-LN with layernorm/rmsnorm only; the module docstring has the chain. Default: None.
        device, dtype: of the parameters. Default: torch's defaults.

    Shape:
        - x: ``[B, N, d_model]``; cond: ``[B, cond_dim]``; output: the shape of x, in the parameters' dtype.

    Submodules: ``self_attn``, ``ff``, ``norm1`` (attention), ``norm2`` (feed-forward); with ``cond_dim``,
    ``adaln`` (:class:`tokennorm.AdaLNZero`) instead of the norms.

    Example::

        >>> layer = EncoderLayer(256, 8, 1024, norm="rmsnorm", placement="pre")
        >>> x = torch.randn(4, 32, 256)
        >>> padding = torch.zeros(4, 32, dtype=torch.bool); padding[0, 20:] = True
        >>> layer(x, key_padding_mask=padding).shape
        torch.Size([4, 32, 256])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        norm: str = "layernorm",
        placement: str = "post",
        eps: float = LAYER_NORM_EPS,
        bias: bool = True,
        cond_dim: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self._setup(
            d_model, nhead, dim_feedforward, dropout, activation, norm, placement, eps, bias, 2, factory, cond_dim
        )

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        is_causal: bool = False,
        cond: Optional[Tensor] = None,
    ) -> Tensor:
        """The layer applied to ``x``.

        Args:
            x: ``[B, N, d_model]``.
            key_padding_mask: ``[B, N]``, bool (True = padding) or float (added to the scores). Default: None.
            attn_mask: ``[N, N]`` or ``[B·nhead, N, N]``, bool (True = blocked) or float. Default: None.
            is_causal: apply the causal mask (position i attends to j ≤ i). Default: False.
            cond: ``[B, cond_dim]``, required by (and only by) a layer built with ``cond_dim``. Default: None.

        Returns:
            ``[B, N, d_model]``.
        """
        self._check_input("x", x)
        self._check_cond(x, cond)

        # a fully masked query gets what torch.nn.TransformerEncoderLayer gives it: NaN on its fast path
        masked_rows_nan = self._torch_takes_fast_path(x)

        def self_attention(y: Tensor) -> Tensor:
            return self.self_attn._attend(
                y,
                y,
                y,
                key_padding_mask=key_padding_mask,
                attn_mask=attn_mask,
                is_causal=is_causal,
                need_weights=False,
                masked_rows_nan=masked_rows_nan,
            )

        return self._residual_chain(x, [self_attention, self.ff], cond)

    def _torch_takes_fast_path(self, x: Tensor) -> bool:
        """Whether torch.nn.TransformerEncoderLayer takes its native fast path for this call: torch's shared
        conditions (:func:`~tokennorm.transformer.attention.torch_takes_fast_path`) plus an even ``nhead``,
        attention biases, equal ε in both norms and no hooks (a conditioned layer has no torch counterpart: no).
        Masks of either dtype qualify (the layer turns them into float masks itself)."""
        return (
            self.adaln is None
            and self.nhead % 2 == 0
            and self.self_attn.q_proj.bias is not None
            and _norm_eps(self.norm1) == _norm_eps(self.norm2)
            and not any(m._forward_hooks or m._forward_pre_hooks for m in self.modules())
            and torch_takes_fast_path(self, (x, *self.parameters()))
        )

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> "EncoderLayer":
        """The same layer on tokennorm: weights (shared by copy, not by reference), activation, each norm's ε,
        ``norm_first`` (as ``placement``), dropout and train/eval mode.

        Args:
            layer: a ``torch.nn.TransformerEncoderLayer`` built with ``batch_first=True``, relu or gelu, and
                ``nn.LayerNorm`` norms.

        Returns:
            an :class:`EncoderLayer` on ``layer``'s device and dtype whose outputs and gradients equal
            ``layer``'s (exactly in eval mode; in training mode, up to dropout's random masks).

        Example::

            >>> theirs = torch.nn.TransformerEncoderLayer(64, 4, 256, batch_first=True).eval()
            >>> ours = EncoderLayer.from_torch(theirs)
        """
        _convert.check_layer(layer, nn.TransformerEncoderLayer, ("self_attn",), ("norm1", "norm2"))
        w = layer.linear1.weight
        new = cls(
            layer.self_attn.embed_dim,
            layer.self_attn.num_heads,
            layer.linear1.out_features,
            layer.dropout.p,
            _convert.activation_name(layer),
            "layernorm",
            "pre" if layer.norm_first else "post",
            layer.norm1.eps,
            layer.linear1.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        _convert.copy_attention(new.self_attn, layer.self_attn)
        _convert.copy_feedforward(new.ff, layer)
        for i in (1, 2):
            _convert.copy_norm(getattr(new, f"norm{i}"), getattr(layer, f"norm{i}"))
        return new.train(layer.training)


class DecoderLayer(_Block):
    r"""Transformer decoder layer: causal self-attention, optional cross-attention to ``memory``, and a
    feed-forward network, each joined to the residual stream by Add & Norm; batch-first.

    .. math::
        \text{post:}\quad h_1 = \mathrm{Norm}_1(x + \mathrm{Drop}(\mathrm{SA}(x))),\quad
        h_2 = \mathrm{Norm}_2(h_1 + \mathrm{Drop}(\mathrm{CA}(h_1, m))),\quad
        y = \mathrm{Norm}_3(h_2 + \mathrm{Drop}(\mathrm{FFN}(h_2)))

        \text{pre:}\quad h_1 = x + \mathrm{Drop}(\mathrm{SA}(\mathrm{Norm}_1(x))),\quad
        h_2 = h_1 + \mathrm{Drop}(\mathrm{CA}(\mathrm{Norm}_2(h_1), m)),\quad
        y = h_2 + \mathrm{Drop}(\mathrm{FFN}(\mathrm{Norm}_3(h_2)))

    SA: self-attention (causal by default), CA: attention to ``memory`` m; without cross-attention the CA
    step is absent and the feed-forward norm is ``norm2`` (a GPT-style block). Equals
    :class:`torch.nn.TransformerDecoderLayer` (``batch_first=True``) with the same weights
    (:meth:`from_torch`), given torch a causal ``tgt_mask`` or calling this layer with ``causal=False``.

    Args:
        d_model, nhead, dim_feedforward, dropout, activation, norm, placement, eps, bias, cond_dim, device, dtype:
            as :class:`EncoderLayer` (defaults 2048, 0.1, ``"relu"``, ``"layernorm"``, ``"post"``, 1e-5, True,
            None).
        cross_attention: include the attention over ``memory`` (an encoder-decoder layer); False gives a
            decoder-only block. Default: True.

    Shape:
        - x: ``[B, N, d_model]``; memory: ``[B, S, d_model]``; output: ``[B, N, d_model]`` in the parameters'
          dtype.

    Submodules: ``self_attn``, ``cross_attn`` (None without cross-attention), ``ff``; ``norm1``
    (self-attention), ``norm2`` (cross-attention, or feed-forward without it), ``norm3`` (feed-forward, with
    cross-attention).

    Example::

        >>> block = DecoderLayer(128, 4, 512, placement="pre", cross_attention=False)
        >>> block(torch.randn(2, 16, 128)).shape  # causal self-attention
        torch.Size([2, 16, 128])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        norm: str = "layernorm",
        placement: str = "post",
        eps: float = LAYER_NORM_EPS,
        bias: bool = True,
        cross_attention: bool = True,
        cond_dim: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        num_sublayers = 3 if cross_attention else 2
        self._setup(
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            norm,
            placement,
            eps,
            bias,
            num_sublayers,
            factory,
            cond_dim,
        )
        self.cross_attention = cross_attention
        self.cross_attn = MultiHeadAttention(d_model, nhead, dropout, bias, **factory) if cross_attention else None

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
        """The layer applied to ``x`` (attending to ``memory``).

        Args:
            x: ``[B, N, d_model]``.
            memory: ``[B, S, d_model]``; required with ``cross_attention``, not allowed without. Default: None.
            tgt_key_padding_mask: ``[B, N]``, bool (True = padding) or float. Default: None.
            memory_key_padding_mask: ``[B, S]``, bool or float. Default: None.
            causal: position i of ``x`` attends only to positions j ≤ i. Default: True.
            tgt_mask: ``[N, N]`` or ``[B·nhead, N, N]`` self-attention mask, bool (True = blocked) or float.
                Default: None.
            memory_mask: ``[N, S]`` or ``[B·nhead, N, S]`` cross-attention mask. Default: None.
            cond: ``[B, cond_dim]``, required by (and only by) a layer built with ``cond_dim``. Default: None.

        Returns:
            ``[B, N, d_model]``.
        """
        if self.cross_attention and memory is None:
            raise ValueError("memory is required: this DecoderLayer has cross_attention=True")
        if not self.cross_attention and (
            memory is not None or memory_key_padding_mask is not None or memory_mask is not None
        ):
            raise ValueError("memory, memory_key_padding_mask and memory_mask need cross_attention=True")
        self._check_input("x", x)
        self._check_cond(x, cond)
        if memory is not None:
            self._check_input("memory", memory)
            if memory.shape[0] != x.shape[0]:
                raise ValueError(
                    f"memory must have the batch size of x, but got x of shape {list(x.shape)} and memory of "
                    f"shape {list(memory.shape)}"
                )

        def self_attention(y: Tensor) -> Tensor:
            return self.self_attn(y, key_padding_mask=tgt_key_padding_mask, attn_mask=tgt_mask, is_causal=causal)

        def attend_memory(y: Tensor) -> Tensor:
            return self.cross_attn(y, memory, key_padding_mask=memory_key_padding_mask, attn_mask=memory_mask)

        sublayers = [self_attention, attend_memory, self.ff] if self.cross_attention else [self_attention, self.ff]
        return self._residual_chain(x, sublayers, cond)

    @classmethod
    def from_torch(cls, layer: nn.TransformerDecoderLayer) -> "DecoderLayer":
        """The same layer on tokennorm (see :meth:`EncoderLayer.from_torch`), with cross-attention.

        Args:
            layer: a ``torch.nn.TransformerDecoderLayer`` built with ``batch_first=True``.

        Returns:
            a :class:`DecoderLayer`. torch's decoder layer is not causal by itself: call ours with
            ``causal=False`` to match it, or ``causal=True`` to match torch given a causal ``tgt_mask``.
        """
        _convert.check_layer(
            layer, nn.TransformerDecoderLayer, ("self_attn", "multihead_attn"), ("norm1", "norm2", "norm3")
        )
        w = layer.linear1.weight
        new = cls(
            layer.self_attn.embed_dim,
            layer.self_attn.num_heads,
            layer.linear1.out_features,
            layer.dropout.p,
            _convert.activation_name(layer),
            "layernorm",
            "pre" if layer.norm_first else "post",
            layer.norm1.eps,
            layer.linear1.bias is not None,
            cross_attention=True,
            device=w.device,
            dtype=w.dtype,
        )
        _convert.copy_attention(new.self_attn, layer.self_attn)
        _convert.copy_attention(new.cross_attn, layer.multihead_attn)
        _convert.copy_feedforward(new.ff, layer)
        for i in (1, 2, 3):
            _convert.copy_norm(getattr(new, f"norm{i}"), getattr(layer, f"norm{i}"))
        return new.train(layer.training)
