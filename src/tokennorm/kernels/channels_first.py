"""Channels-first LayerNorm: x is [B, C, S] (S = the spatial size: H·W, T, D·H·W), one token per position,
normalized over its C channels — which lie S elements apart in memory.

A row kernel would read each token's channels with a stride of S: no coalescing, no vectors. Here a tile is
[BLOCK_T, BLOCK_C]: BLOCK_T consecutive tokens of one batch item (the contiguous axis: coalesced, 16-byte
vectors when S is a multiple of 16) by all of the item's channels (BLOCK_C ≥ C, in registers), and the
statistics reduce over the channel axis. The arithmetic is the rows kernels' (``helpers``): the corrected
two-pass moments per token, x̂ · γ + β, the backward's two sums and dx.

Both kernels run on a persistent grid over the B · ⌈S / BLOCK_T⌉ tiles, the next tile prefetched
(``tl.range(num_stages=NUM_STAGES)``); γ and β are loaded once per program. The forward stores mean/rstd per
token ([B, S], the layout the rows kernels give the channels-last view). The backward's programs take
contiguous runs of tiles and write one float32 partial row of dγ/dβ each ([programs, C], summed afterwards:
deterministic, no atomics).
"""

import triton
import triton.language as tl

from tokennorm.kernels.helpers import (
    cast,
    column_sums,
    full_eps,
    grad_sums,
    load_vector,
    norm_input_grad,
    reciprocal,
    row_stats,
    scale_shift,
)


@triton.jit
def token_tile(tile, tiles_per_item, S, C, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """(item, tokens [BLOCK_T], offsets [BLOCK_T, BLOCK_C] within the item, mask) of tile number ``tile``."""
    item = tile // tiles_per_item
    tokens = (tile % tiles_per_item) * BLOCK_T + tl.arange(0, BLOCK_T)
    chans = tl.arange(0, BLOCK_C)
    mask = (tokens < S)[:, None] & (chans < C)[None, :]
    return item.to(tl.int64), tokens, chans[None, :] * S + tokens[:, None], mask


@triton.jit
def channels_first_forward_kernel(
    X,
    W,
    B,
    Y,
    MEAN,
    RSTD,
    C,
    S,
    stride_item,
    tiles_per_item,
    tiles,
    eps,
    eps_lo,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STORE_STATS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """X and Y [B, C, S] with strides (stride_item, S, 1); MEAN/RSTD [B, S] in the accumulation dtype."""
    ACC: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    eps = full_eps(eps, eps_lo, ACC)
    chans = tl.arange(0, BLOCK_C)
    w = load_vector(W, chans, chans < C, ACC, 0.0) if HAS_WEIGHT else None
    b = load_vector(B, chans, chans < C, ACC, 0.0) if HAS_BIAS else None
    inv_c = reciprocal(C, ACC)
    for tile in tl.range(tl.program_id(0), tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        item, tokens, offsets, mask = token_tile(tile, tiles_per_item, S, C, BLOCK_T, BLOCK_C)
        x = tl.load(X + item * stride_item + offsets, mask=mask, other=0.0).to(ACC)
        mean, rstd, centred = row_stats(x, mask, inv_c, eps, ACC, False)
        if STORE_STATS:
            token_mask = tokens < S
            tl.store(MEAN + item * S + tokens, mean, mask=token_mask)
            tl.store(RSTD + item * S + tokens, rstd, mask=token_mask)
        y = scale_shift(centred, rstd, w, b, HAS_WEIGHT, HAS_BIAS)
        tl.store(Y + item * stride_item + offsets, cast(y, Y.dtype.element_ty), mask=mask)


@triton.jit
def channels_first_backward_kernel(
    DY,
    X,
    W,
    MEAN,
    RSTD,
    DX,
    DW_PARTIAL,
    DB_PARTIAL,
    C,
    S,
    stride_item,
    tiles_per_item,
    tiles,
    tiles_per_program,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Program p takes tiles [p · tiles_per_program, (p + 1) · tiles_per_program) and writes partial row p of
    DW_PARTIAL/DB_PARTIAL [programs, C]. DY, X and DX share the [B, C, S] strides."""
    ACC: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    chans = tl.arange(0, BLOCK_C)
    chan_mask = chans < C
    w = load_vector(W, chans, chan_mask, ACC, 0.0) if HAS_WEIGHT else None
    inv_c = reciprocal(C, ACC)
    dw = tl.zeros([BLOCK_T, BLOCK_C], dtype=ACC)
    db = tl.zeros([BLOCK_T, BLOCK_C], dtype=ACC)
    first = pid * tiles_per_program
    for tile in tl.range(first, tl.minimum(first + tiles_per_program, tiles), num_stages=NUM_STAGES):
        item, tokens, offsets, mask = token_tile(tile, tiles_per_item, S, C, BLOCK_T, BLOCK_C)
        token_mask = tokens < S
        dy = tl.load(DY + item * stride_item + offsets, mask=mask, other=0.0).to(ACC)
        x = tl.load(X + item * stride_item + offsets, mask=mask, other=0.0).to(ACC)
        mean = tl.load(MEAN + item * S + tokens, mask=token_mask, other=0.0).to(ACC)
        rstd = tl.load(RSTD + item * S + tokens, mask=token_mask, other=0.0).to(ACC)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :] if HAS_WEIGHT else dy
        sum_gx, sum_g = grad_sums(xhat, g, False)
        dx = norm_input_grad(xhat, g, rstd, sum_gx * inv_c, sum_g * inv_c, False)
        tl.store(DX + item * stride_item + offsets, cast(dx, DX.dtype.element_ty), mask=mask)
        if COMPUTE_DW:
            dw += dy * xhat
        if COMPUTE_DB:
            db += dy
    partial = pid.to(tl.int64) * C + chans
    if COMPUTE_DW:
        tl.store(DW_PARTIAL + partial, column_sums(dw, BLOCK_T), mask=chan_mask)
    if COMPUTE_DB:
        tl.store(DB_PARTIAL + partial, column_sums(db, BLOCK_T), mask=chan_mask)
