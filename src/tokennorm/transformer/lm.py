"""A small GPT-style causal language model built from tokennorm's blocks."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from tokennorm.transformer.blocks import DecoderLayer
from tokennorm.transformer.embedding import SinusoidalPositionalEncoding, TokenEmbedding
from tokennorm.transformer.stack import Decoder

__all__ = ["CausalLM"]


class CausalLM(nn.Module):
    r"""Decoder-only language model: ``logits = head(Norm(Decoder(PE(Embed(tokens) · √d))))``.

    Token embedding × √d_model (:class:`TokenEmbedding`), sinusoidal positions
    (:class:`SinusoidalPositionalEncoding`), ``num_layers`` causal :class:`DecoderLayer` blocks without
    cross-attention, a final norm for pre-LN, and a linear head (no bias) to ``vocab_size`` logits.

    Args:
        vocab_size: number of tokens.
        d_model: model width. Default: 128.
        nhead: attention heads; must divide ``d_model``. Default: 4.
        num_layers: decoder blocks. Default: 2.
        dim_feedforward: feed-forward width. Default (None): ``4 · d_model``.
        max_len: longest sequence (the positional table's size). Default: 512.
        dropout: dropout everywhere (positions, attention, feed-forward, residual branches). Default: 0.0.
        norm: as :class:`DecoderLayer`; ``"batchnorm"`` breaks causality in training mode: its statistics mix
            every position, the future included. Default: ``"layernorm"``.
        placement: ``"post"`` or ``"pre"``. Default: ``"pre"`` (GPT-2).
        activation: ``"gelu"`` (GPT) or ``"relu"``. Default: ``"gelu"``.
        device, dtype: of the parameters. Default: torch's defaults.

    Shape:
        - tokens ``[B, N]`` (int64, ``N ≤ max_len``), ``key_padding_mask`` ``[B, N]`` (True = padding);
          logits ``[B, N, vocab_size]`` in the parameters' dtype.

    ``embed(tokens)`` and ``forward_embeddings(emb)`` split ``forward`` so tools can take gradients with
    respect to the (scaled) token embeddings: ``forward(t) == forward_embeddings(embed(t))``.

    Example::

        >>> lm = CausalLM(vocab_size=100, d_model=64, nhead=4, num_layers=2, max_len=128)
        >>> lm(torch.randint(0, 100, (2, 16))).shape
        torch.Size([2, 16, 100])
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: Optional[int] = None,
        max_len: int = 512,
        dropout: float = 0.0,
        norm: str = "layernorm",
        placement: str = "pre",
        activation: str = "gelu",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.vocab_size, self.d_model = vocab_size, d_model
        self.token_embedding = TokenEmbedding(vocab_size, d_model, **factory)
        self.positions = SinusoidalPositionalEncoding(d_model, max_len, dropout)
        layer = DecoderLayer(
            d_model,
            nhead,
            dim_feedforward or 4 * d_model,
            dropout,
            activation,
            norm,
            placement,
            cross_attention=False,
            **factory,
        )
        self.decoder = Decoder(layer, num_layers)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False, **factory)

    def embed(self, tokens: Tensor) -> Tensor:
        """Scaled token embeddings ``[B, N, d_model]`` (positions are added in :meth:`forward_embeddings`)."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(
                f"tokens must be a [batch, seq_len] int64 tensor, but got tokens of shape {list(tokens.shape)} "
                f"and dtype {tokens.dtype}"
            )
        return self.token_embedding(tokens)

    def forward_embeddings(self, emb: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, N, vocab_size]`` from token embeddings ``emb`` ``[B, N, d_model]``."""
        h = self.decoder(self.positions(emb), tgt_key_padding_mask=key_padding_mask, causal=True)
        return self.lm_head(h)

    def forward(self, tokens: Tensor, *, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, N, vocab_size]`` for ``tokens`` ``[B, N]`` (int64); ``key_padding_mask`` ``[B, N]``,
        True at padding (default: None)."""
        return self.forward_embeddings(self.embed(tokens), key_padding_mask)
