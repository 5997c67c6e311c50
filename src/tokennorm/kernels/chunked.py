"""Chunked: rows too long for registers, walked twice by one program — the second pass served from L2.

Forward only. A persistent grid (``programs_per_sm`` per SM) walks rows; per row, pass 1 loads h chunk by
chunk with ``evict_last`` (keep it in L2) for the statistics (each chunk's corrected two-pass moments merged
with Chan's formula), pass 2 loads it again with ``evict_first`` (last use) and normalizes. The plan picks
this mode only while the rows in flight — programs × row bytes — fit the device's L2 (``config``), so HBM sees
each input byte once; beyond that, the long-row kernel keeps the row on chip instead. With h stored (Add &
Norm), pass 2 reads h back (one stream instead of x and the residual). AdaLN's gate and modulation
(``HAS_GATE``, ``HAS_MOD``) are the rows kernel's (``kernels/rows.py``).

The backward has no chunked mode: dγ/dβ for a row longer than registers need the long-row kernel's fixed
column segments per program (or, beyond the GPU's resident capacity, the segment kernels).
"""

import triton
import triton.language as tl

from tokennorm.kernels.helpers import full_eps, inv_sqrt, reciprocal, var_rstd, walk_moments, walk_normalize


@triton.jit
def chunked_forward_kernel(
    X,
    RES,
    W,
    B,
    SEED,
    Y,
    H,
    MEAN,
    RSTD,
    stride_x,
    stride_res,
    stride_y,
    stride_h,
    M,
    N,
    eps,
    eps_lo,
    dropout_p,
    GATE,
    SHIFT,
    SCALE,
    stride_gate,
    stride_shift,
    stride_scale,
    tokens,
    IS_RMS: tl.constexpr,
    WEIGHT_OFFSET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    STORE_H: tl.constexpr,
    STORE_STATS: tl.constexpr,
    HAS_GATE: tl.constexpr,
    HAS_MOD: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    H_DTYPE: tl.constexpr = H.dtype.element_ty if STORE_H else ACC
    ROUND_H: tl.constexpr = STORE_H and H_DTYPE != ACC
    eps = full_eps(eps, eps_lo, ACC)
    inv_n = reciprocal(N, ACC)
    for row in tl.range(tl.program_id(0), M, tl.num_programs(0)):
        rows64 = tl.full([1], row, tl.int64)
        mod_rows64 = rows64 // tokens
        row_mask = rows64 < M
        mean, m2 = walk_moments(
            X,
            RES,
            SEED,
            GATE,
            H,
            rows64,
            mod_rows64,
            row_mask,
            0,
            N,
            stride_x,
            stride_res,
            stride_gate,
            stride_h,
            N,
            dropout_p,
            ACC,
            H_DTYPE,
            HAS_RESIDUAL,
            HAS_DROPOUT,
            HAS_GATE,
            STORE_H,
            ROUND_H,
            IS_RMS,
            BLOCK_N,
            "evict_last",
        )
        rstd = inv_sqrt(m2 * inv_n + eps, ACC) if IS_RMS else var_rstd(m2 * inv_n, eps, ACC)
        if STORE_STATS:
            if not IS_RMS:
                tl.store(MEAN + rows64, mean)
            tl.store(RSTD + rows64, rstd)
        if STORE_H:
            tl.debug_barrier()  # pass 2 reads h back: this program's stores visible to all its threads
        walk_normalize(
            X,
            RES,
            SEED,
            GATE,
            H,
            W,
            B,
            SHIFT,
            SCALE,
            Y,
            rows64,
            mod_rows64,
            row_mask,
            0,
            N,
            mean,
            rstd,
            stride_x,
            stride_res,
            stride_gate,
            stride_h,
            stride_shift,
            stride_scale,
            stride_y,
            N,
            dropout_p,
            ACC,
            H_DTYPE,
            HAS_RESIDUAL,
            HAS_DROPOUT,
            HAS_GATE,
            STORE_H,
            False,
            ROUND_H,
            IS_RMS,
            WEIGHT_OFFSET,
            HAS_WEIGHT,
            HAS_BIAS,
            HAS_MOD,
            BLOCK_N,
            "evict_first",
        )
