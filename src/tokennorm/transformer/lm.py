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

    Class-conditional (``num_classes``): each sequence has a class, embedded as c = ``class_embedding(classes)``
    [B, d_model] (DiT's label embedding), and every block is an AdaLN-Zero block conditioned on c (``cond_dim =
    d_model``): ``Norm(h)·(1 + scale) + shift`` before each sublayer and a gate after it, per sequence.

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
        num_classes: number of classes of a class-conditional model (needs ``placement="pre"`` and ``norm``
            ``"layernorm"`` or ``"rmsnorm"``); ``forward`` then requires ``classes``. Default: None.
        device, dtype: of the parameters. Default: torch's defaults.

    Shape:
        - tokens ``[B, N]`` (int64, ``N ≤ max_len``), ``key_padding_mask`` ``[B, N]`` (True = padding),
          ``classes`` ``[B]`` (int64, below ``num_classes``); logits ``[B, N, vocab_size]`` in the parameters'
          dtype.

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
        num_classes: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if num_classes is not None and (num_classes < 1 or placement != "pre" or norm not in ("layernorm", "rmsnorm")):
            raise ValueError(
                "num_classes (AdaLN-Zero conditioning) must be positive and needs placement='pre' and norm "
                f"'layernorm' or 'rmsnorm', but got num_classes={num_classes}, placement={placement!r}, norm={norm!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.vocab_size, self.d_model, self.num_classes = vocab_size, d_model, num_classes
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
            cond_dim=None if num_classes is None else d_model,
            **factory,
        )
        self.decoder = Decoder(layer, num_layers)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False, **factory)
        # drawn last: the token embedding, attention and feed-forward weights are those of the unconditioned model
        # of the same seed (lm_head is not: AdaLNZero's Linear draws from the RNG before it is zeroed)
        self.class_embedding = None if num_classes is None else nn.Embedding(num_classes, d_model, **factory)

    def embed(self, tokens: Tensor) -> Tensor:
        """Scaled token embeddings ``[B, N, d_model]`` (positions are added in :meth:`forward_embeddings`)."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(
                f"tokens must be a [batch, seq_len] int64 tensor, but got tokens of shape {list(tokens.shape)} "
                f"and dtype {tokens.dtype}"
            )
        return self.token_embedding(tokens)

    def forward_embeddings(
        self, emb: Tensor, key_padding_mask: Optional[Tensor] = None, *, classes: Optional[Tensor] = None
    ) -> Tensor:
        """Logits ``[B, N, vocab_size]`` from token embeddings ``emb`` ``[B, N, d_model]``."""
        cond = self._condition(emb, classes)
        h = self.decoder(self.positions(emb), tgt_key_padding_mask=key_padding_mask, causal=True, cond=cond)
        return self.lm_head(h)

    def forward(
        self, tokens: Tensor, *, key_padding_mask: Optional[Tensor] = None, classes: Optional[Tensor] = None
    ) -> Tensor:
        """Logits ``[B, N, vocab_size]`` for ``tokens`` ``[B, N]`` (int64); ``key_padding_mask`` ``[B, N]``,
        True at padding (default: None); ``classes`` ``[B]`` (int64), required by (and only by) a model built
        with ``num_classes`` (default: None)."""
        return self.forward_embeddings(self.embed(tokens), key_padding_mask, classes=classes)

    def _condition(self, emb: Tensor, classes: Optional[Tensor]) -> Optional[Tensor]:
        """The class embedding c [B, d_model] of ``classes`` [B]; None for an unconditioned model."""
        if (classes is None) != (self.class_embedding is None):
            raise ValueError(
                f"classes is required: this CausalLM has num_classes={self.num_classes}"
                if classes is None
                else "classes needs a CausalLM built with num_classes"
            )
        if classes is None:
            return None
        if classes.dtype != torch.long or tuple(classes.shape) != (emb.shape[0],):
            raise ValueError(
                f"classes must be an int64 tensor of shape [batch] = [{emb.shape[0]}], but got classes "
                f"of shape {list(classes.shape)} and dtype {classes.dtype}"
            )
        return self.class_embedding(classes)
