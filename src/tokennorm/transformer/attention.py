"""Multi-head attention on ``F.scaled_dot_product_attention``, batch-first, with torch's mask conventions.

A query whose keys are all masked has nothing to attend to. torch answers in two ways, by code path: its
inference fast path (``torch._native_multi_head_attention`` / ``_transformer_encoder_layer_fwd``, taken in
eval mode when no gradient is needed) and ``need_weights=True`` take a softmax over no keys and give NaN;
everywhere else it runs ``F.scaled_dot_product_attention``, which gives such a query zero attention weights, so
the output row is ``out_proj``'s bias. tokennorm's attention gives what torch gives for the same call:
:func:`torch_takes_fast_path` encodes torch's choice.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiHeadAttention", "merge_masks", "torch_takes_fast_path"]

# devices whose tensors torch's fast path accepts (besides a registered privateuse1 backend)
_FAST_PATH_DEVICES = ("cpu", "cuda", "xpu")


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
    batch: int,
    nhead: int,
    tgt_len: int,
    src_len: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    key_padding_mask: Optional[Tensor] = None,
    attn_mask: Optional[Tensor] = None,
    is_causal: bool = False,
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


def torch_takes_fast_path(module: nn.Module, tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether torch's Transformer modules would run their native inference kernels for a call of ``module``
    on ``tensors`` (its inputs and parameters): the conditions nn.MultiheadAttention and
    nn.TransformerEncoderLayer share (torch 2.4 to 2.13). Each caller adds its module's own conditions.

    Fast path enabled (``torch.backends.mha``), eval mode, no autocast, no ``__torch_function__`` tensor,
    every tensor on a CPU, CUDA, XPU or privateuse1 device, and no gradient needed (grad mode off, or no
    tensor requiring one).
    """
    present = tuple(t for t in tensors if t is not None)
    if not torch.backends.mha.get_fastpath_enabled() or module.training or torch.is_autocast_enabled():
        return False
    if torch.overrides.has_torch_function(present):
        return False
    devices = (*_FAST_PATH_DEVICES, torch.utils.backend_registration._privateuse1_backend_name)
    if any(t.device.type not in devices for t in present):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in present))


class MultiHeadAttention(nn.Module):
    r"""Multi-head scaled dot-product attention, batch-first.

    .. math:: \mathrm{head}_h = \mathrm{softmax}\Big(\frac{Q_h K_h^\top}{\sqrt{d_k}} + M\Big) V_h,\quad
              \mathrm{out} = [\mathrm{head}_1; \dots; \mathrm{head}_H]\, W_O + b_O

    with :math:`Q_h, K_h, V_h` the ``h``-th ``head_dim``-wide slices of ``q_proj(query)``, ``k_proj(key)``,
    ``v_proj(value)``, :math:`d_k` = ``head_dim`` = ``d_model / nhead``, and :math:`M` the merged additive
    mask (0 = attend, −inf = blocked). Computed by :func:`torch.nn.functional.scaled_dot_product_attention`
    (flash or memory-efficient kernels where torch has them), or explicitly when ``need_weights=True``.

    Masks follow :class:`torch.nn.MultiheadAttention`: ``key_padding_mask`` is ``[B, S]`` with True (or
    −inf) at padding keys; ``attn_mask`` is ``[N, S]`` or ``[B·nhead, N, S]``, bool True = not allowed, or
    float added to the scores. Unlike torch, ``is_causal=True`` is not a hint: it applies the causal mask
    (query i sees keys j ≤ i) itself, combined with any other mask.

    A query whose keys are all masked gets what torch gives it for the same call: NaN (a softmax over no
    keys) with ``need_weights=True``, and on torch's inference fast path — eval mode, no gradient needed,
    self-attention (``key`` and ``value`` omitted or the same tensor as ``query``), an even ``nhead``,
    ``bias=True``, bool masks, no autocast; otherwise zero attention weights, i.e. an output row equal to
    ``out_proj.bias`` (what ``scaled_dot_product_attention`` gives).

    Args:
        d_model: model width (the query's, key's and value's last dim); must be divisible by ``nhead``.
        nhead: number of heads.
        dropout: dropout on the attention probabilities, in training mode only. Default: 0.0.
        bias: learn biases for the four projections. Default: True.
        device, dtype: of the parameters. Default: torch's defaults.

    Shape:
        - query ``[B, N, d_model]``; key and value ``[B, S, d_model]`` (default: ``query``, self-attention;
          ``value`` defaults to ``key``).
        - Output ``[B, N, d_model]`` in the parameters' dtype; with ``need_weights=True``, ``(output, weights)``
          with ``weights`` ``[B, nhead, N, S]``, the per-head attention probabilities (before dropout).

    Parameters: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (``nn.Linear(d_model, d_model)``),
    Xavier-uniform weights and zero biases as torch's.

    Example::

        >>> attn = MultiHeadAttention(64, 4)
        >>> x = torch.randn(2, 10, 64)
        >>> padding = torch.zeros(2, 10, dtype=torch.bool); padding[1, 7:] = True
        >>> attn(x, key_padding_mask=padding, is_causal=True).shape
        torch.Size([2, 10, 64])
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
                    f"{name} must have shape [batch, seq_len, {self.d_model}], but got {name} of shape {list(t.shape)}"
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

    def _parameters_of_fast_path(self) -> tuple[Optional[Tensor], ...]:
        return tuple(
            p for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj) for p in (proj.weight, proj.bias)
        )

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
        """Attention of ``query`` over ``key`` / ``value``.

        Args:
            query: ``[B, N, d_model]``.
            key: ``[B, S, d_model]``. Default: ``query`` (self-attention).
            value: ``[B, S, d_model]``. Default: ``key``.
            key_padding_mask: ``[B, S]``, bool (True = padding) or float (added). Default: None.
            attn_mask: ``[N, S]`` or ``[B·nhead, N, S]``, bool (True = blocked) or float (added). Default: None.
            is_causal: apply the causal mask (query i sees keys j ≤ i). Default: False.
            need_weights: also return the per-head attention probabilities ``[B, nhead, N, S]``. Default: False.

        Returns:
            the output ``[B, N, d_model]``, or ``(output, weights)`` with ``need_weights=True``.
        """
        self_attention = key is None or (key is query and (value is None or value is key))
        key = query if key is None else key
        value = key if value is None else value
        masks = (key_padding_mask, attn_mask)
        fast_path = (
            self_attention
            and self.nhead % 2 == 0
            and self.q_proj.bias is not None
            and query.dtype == self.q_proj.weight.dtype
            and all(m is None or m.dtype == torch.bool for m in masks)  # torch: float masks take the slow path
            and torch_takes_fast_path(self, (query, key, value, *self._parameters_of_fast_path()))
        )
        return self._attend(
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            is_causal=is_causal,
            need_weights=need_weights,
            masked_rows_nan=fast_path,
        )

    def _attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        key_padding_mask: Optional[Tensor],
        attn_mask: Optional[Tensor],
        is_causal: bool,
        need_weights: bool,
        masked_rows_nan: bool,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """:meth:`forward` with the caller deciding what a fully masked query gets: NaN (``masked_rows_nan``,
        or ``need_weights``) or zero attention weights. The Transformer layers call this with torch's
        decision for their own fast path, which differs from the attention module's."""
        self._check(query, key, value, key_padding_mask, attn_mask)
        (batch, tgt_len), src_len = query.shape[:2], key.shape[1]
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        p = self.dropout if self.training else 0.0
        only_causal = key_padding_mask is None and attn_mask is None
        mask = (
            None
            if (only_causal and not need_weights)
            else merge_masks(
                batch,
                self.nhead,
                tgt_len,
                src_len,
                q.dtype,
                q.device,
                key_padding_mask=key_padding_mask,
                attn_mask=attn_mask,
                is_causal=is_causal,
            )
        )
        if need_weights:  # a softmax over no keys: NaN, as torch's need_weights=True path
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = F.dropout(weights, p, training=True) @ v if p > 0 else weights @ v
        else:  # a query with no key gets zero weights from SDPA
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal and mask is None
            )
            if masked_rows_nan and mask is not None:
                out = out.masked_fill(torch.isneginf(mask).all(dim=-1, keepdim=True), math.nan)
        out = self.out_proj(out.transpose(1, 2).flatten(-2))
        return (out, weights) if need_weights else out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, nhead={self.nhead}, dropout={self.dropout}"
