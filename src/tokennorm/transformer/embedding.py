"""Token embedding scaled by √d_model and the sinusoidal positional encoding of "Attention Is All You Need"."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["TokenEmbedding", "SinusoidalPositionalEncoding", "sinusoidal_table"]


class TokenEmbedding(nn.Embedding):
    r"""Token embedding multiplied by :math:`\sqrt{d_{model}}`, as in the original Transformer.

    A true :class:`torch.nn.Embedding` (same ``weight``, state_dict and ``padding_idx``); only ``forward``
    scales. The weight is initialised from :math:`\mathcal{N}(0, 1/d_{model})` so the scaled embedding has
    unit variance, the same scale as the positional encoding added to it.

    .. math:: y = E[\mathrm{token}] \cdot \sqrt{d_{model}}

    Args:
        vocab_size: number of tokens.
        d_model: embedding width.
        padding_idx: index whose embedding is zero and gets no gradient. Default: None.
        device, dtype: of the weight. Default: torch's defaults.

    Shape:
        - Input: ``[*]`` integer token ids; Output: ``[*, d_model]`` in the weight's dtype.

    Example::

        >>> embed = TokenEmbedding(1000, 64, padding_idx=0)
        >>> embed(torch.tensor([[5, 7, 0]])).shape
        torch.Size([1, 3, 64])
    """

    def __init__(
        self, vocab_size: int, d_model: int, padding_idx: Optional[int] = None, device=None, dtype=None
    ) -> None:
        super().__init__(vocab_size, d_model, padding_idx=padding_idx, device=device, dtype=dtype)

    @property
    def d_model(self) -> int:
        return self.embedding_dim

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.embedding_dim**-0.5)
        self._fill_padding_idx_with_zero()

    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input) * math.sqrt(self.embedding_dim)


def sinusoidal_table(max_len: int, d_model: int) -> Tensor:
    r"""The float64 table ``PE[pos, 2i] = sin(pos / 10000^{2i/d})``, ``PE[pos, 2i+1] = cos(pos / 10000^{2i/d})``.

    Computed in float64 so every entry is correctly rounded once cast to float32, even at large ``pos``
    (in float32 the angle ``pos · ω`` alone loses about ``pos · 6e-8`` radians).
    """
    if d_model % 2:
        raise ValueError(f"sinusoidal positional encoding needs an even d_model, but got d_model={d_model}")
    pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    table = torch.empty(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table


class SinusoidalPositionalEncoding(nn.Module):
    r"""Adds the fixed sinusoidal position table to a batch-first sequence: ``dropout(x + PE[:N])``.

    .. math:: PE[p, 2i] = \sin(p / 10000^{2i/d}),\quad PE[p, 2i+1] = \cos(p / 10000^{2i/d})

    Args:
        d_model: embedding width (even).
        max_len: longest sequence accepted; longer ones raise ValueError. Default: 4096.
        dropout: dropout probability applied to the sum (training only). Default: 0.0.

    Shape:
        - Input: ``[B, N, d_model]`` with ``N <= max_len``; Output: the same shape and dtype (the float32 table
          is cast to the input's dtype).

    The table is a non-persistent buffer: it is rebuilt, not stored in state_dicts.

    Example::

        >>> pe = SinusoidalPositionalEncoding(64, max_len=512)
        >>> pe(torch.zeros(2, 10, 64))[0, 1, :2]  # position 1: sin(1), cos(1)
        tensor([0.8415, 0.5403])
    """

    def __init__(self, d_model: int, max_len: int = 4096, dropout: float = 0.0) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be positive, but got max_len={max_len}")
        self.d_model = d_model
        self.max_len = max_len
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_table(max_len, d_model).to(torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"SinusoidalPositionalEncoding expects input of shape [batch, seq_len, {self.d_model}], "
                f"but got input of shape {list(x.shape)}"
            )
        seq_len = x.shape[1]
        if seq_len > self.max_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds the positional encoding's max_len={self.max_len}; "
                "build SinusoidalPositionalEncoding with a larger max_len"
            )
        return self.dropout(x + self.pe[:seq_len].to(x.dtype))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"
