"""Multi-head attention on ``F.scaled_dot_product_attention``, batch-first, with torch's mask conventions."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiHeadAttention", "merge_masks"]


def _check_mask(mask: Tensor, name: str, shapes: list[tuple[int, ...]]) -> None:
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise TypeError(f"{name} must be a bool or floating-point tensor, but got {name} of dtype {mask.dtype}")
    if tuple(mask.shape) not in shapes:
        expected = " or ".join(str(list(s)) for s in shapes)
        raise ValueError(f"{name} must have shape {expected}, but got {name} of shape {list(mask.shape)}")


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """torch's convention: a bool mask is True where attention is NOT allowed; a float mask is added."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def merge_masks(
    batch: int, nhead: int, tgt_len: int, src_len: int, dtype: torch.dtype, device: torch.device, *,
    key_padding_mask: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None, is_causal: bool = False,
) -> Optional[Tensor]:
    """One additive mask ``[B, 1 or H, N, S]`` (0 = attend, -inf = blocked) from torch-style masks, or None.

    ``key_padding_mask`` [B, S] (True = padding), ``attn_mask`` [N, S] or [B·H, N, S] (bool True = blocked,
    or float added to the scores), ``is_causal``: query i sees keys j <= i. Masks are assumed checked.
    """
    merged: Optional[Tensor] = None
    if attn_mask is not None:
        m = _additive(attn_mask, dtype)
        merged = m.view(1, 1, tgt_len, src_len) if m.dim() == 2 else m.view(batch, nhead, tgt_len, src_len)
    if key_padding_mask is not None:
        m = _additive(key_padding_mask, dtype).view(batch, 1, 1, src_len)
        merged = m if merged is None else merged + m
    if is_causal:
        future = torch.ones(tgt_len, src_len, dtype=torch.bool, device=device).triu_(1)
        m = _additive(future, dtype).view(1, 1, tgt_len, src_len)
        merged = m if merged is None else merged + m
    return merged


class MultiHeadAttention(nn.Module):
    r"""Multi-head scaled dot-product attention, batch-first.

    .. math:: \mathrm{head}_h = \mathrm{softmax}\Big(\frac{Q_h K_h^\top}{\sqrt{d_k}} + M\Big) V_h,\quad
              \mathrm{out} = [\mathrm{head}_1; \dots; \mathrm{head}_H] W_O

    Masks follow :class:`torch.nn.MultiheadAttention`: ``key_padding_mask`` is ``[B, S]`` with True (or
    -inf) at padding keys; ``attn_mask`` is ``[N, S]`` or ``[B·nhead, N, S]``, bool True = not allowed, or
    float added to the scores. Unlike torch, ``is_causal=True`` is not a hint: it applies the causal mask
    itself (combined with any other mask), so no ``attn_mask`` is needed for it. A query whose keys are all
    masked gets NaN, as in torch.

    Args:
        d_model: model width; must be divisible by ``nhead``.
        nhead: number of heads.
        dropout: dropout on the attention probabilities (training only).
        bias: learn biases for the four projections.

    Shape:
        - query ``[B, N, d_model]``, key and value ``[B, S, d_model]`` (default: query: self-attention).
        - Output ``[B, N, d_model]``; with ``need_weights=True``, ``(output, weights [B, nhead, N, S])``
          (per-head probabilities, computed without SDPA).
    """

    def __init__(
        self, d_model: int, nhead: int, dropout: float = 0.0, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        if nhead < 1 or d_model % nhead:
            raise ValueError(f"d_model must be divisible by nhead, but got d_model={d_model} and nhead={nhead}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout}")
        self.d_model, self.nhead, self.head_dim, self.dropout = d_model, nhead, d_model // nhead, dropout
        factory = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(d_model, d_model, bias=bias, **factory)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias, **factory)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as torch.nn.MultiheadAttention: Xavier-uniform projections, zero biases
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def _check(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask, attn_mask) -> None:
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(
                    f"{name} must have shape [batch, seq_len, {self.d_model}], "
                    f"but got {name} of shape {list(t.shape)}"
                )
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"query, key and value must share the batch size and key/value the length, but got query "
                f"{list(query.shape)}, key {list(key.shape)}, value {list(value.shape)}"
            )
        (batch, tgt_len), src_len = query.shape[:2], key.shape[1]
        if key_padding_mask is not None:
            _check_mask(key_padding_mask, "key_padding_mask", [(batch, src_len)])
        if attn_mask is not None:
            _check_mask(attn_mask, "attn_mask", [(tgt_len, src_len), (batch * self.nhead, tgt_len, src_len)])

    def _heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.nhead, self.head_dim)).transpose(1, 2)  # [B, L, C] -> [B, H, L, D]

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        value: Optional[Tensor] = None,
        *,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        key = query if key is None else key
        value = key if value is None else value
        self._check(query, key, value, key_padding_mask, attn_mask)
        (batch, tgt_len), src_len = query.shape[:2], key.shape[1]
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        p = self.dropout if self.training else 0.0
        only_causal = key_padding_mask is None and attn_mask is None
        mask = None if (only_causal and not need_weights) else merge_masks(
            batch, self.nhead, tgt_len, src_len, q.dtype, q.device,
            key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal,
        )
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = F.dropout(weights, p, training=True) @ v if p > 0 else weights @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal and mask is None
            )
        out = self.out_proj(out.transpose(1, 2).flatten(-2))
        return (out, weights) if need_weights else out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, nhead={self.nhead}, dropout={self.dropout}"
