"""Rows: the whole row in registers — forward and backward read their inputs once and write once.

Both kernels run on a persistent grid (a few programs per SM, ``config.KernelConfig.programs_per_sm``), each
walking row tiles of ``BLOCK_M`` rows with ``tl.range(..., num_stages=NUM_STAGES)``: with NUM_STAGES > 1 the
next tile's loads are in flight (cp.async into shared memory) while this one reduces. γ and β are loaded once
per program, before the first row. The tiles are [BLOCK_M, BLOCK_N] with BLOCK_N ≥ N, laid out by Triton
with 16-byte vectors along the row and rows spread over warps (no column held by two threads).

Forward: h = residual + dropout(x) (stored when asked), mean/var by the corrected two-pass over registers,
y = x̂ · (γ + offset) + β. Backward: x̂ from h and the saved statistics, g = dy · (γ + offset), the two row sums
in one fused reduction, dx; dγ/dβ accumulate per program in float32 registers and are written as one partial
row per program — summed afterwards, deterministically, no atomics.
"""

import triton
import triton.language as tl

from tokennorm.kernels.helpers import (
    column_sums, full_eps, grad_sums, load_grad_tile, load_h, load_vector, reciprocal, row_stats, scale_shift,
    store_dx, store_tile,
)


@triton.jit
def rows_forward_kernel(
    X, RES, W, B, SEED, Y, H, MEAN, RSTD,
    stride_x, stride_res, stride_y, stride_h, M, N, eps, eps_lo, dropout_p,
    IS_RMS: tl.constexpr, WEIGHT_OFFSET: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, STORE_H: tl.constexpr, STORE_STATS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    H_DTYPE: tl.constexpr = H.dtype.element_ty if STORE_H else ACC
    ROUND_H: tl.constexpr = STORE_H and H_DTYPE != ACC
    eps = full_eps(eps, eps_lo, ACC)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = load_vector(W, cols, col_mask, ACC, WEIGHT_OFFSET) if HAS_WEIGHT else None
    b = load_vector(B, cols, col_mask, ACC, 0.0) if HAS_BIAS else None
    inv_n = reciprocal(N, ACC)
    for tile in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0), num_stages=NUM_STAGES):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        rows64 = rows.to(tl.int64)
        mask = row_mask[:, None] & col_mask[None, :]
        h = load_h(X, RES, SEED, rows64, cols, mask, stride_x, stride_res, N, dropout_p,
                   ACC, H_DTYPE, HAS_RESIDUAL, HAS_DROPOUT, ROUND_H, "")
        if STORE_H:
            store_tile(H, rows64, stride_h, cols, mask, h)
        mean, rstd, centred = row_stats(h, mask, inv_n, eps, ACC, IS_RMS)
        if STORE_STATS:
            if not IS_RMS:
                tl.store(MEAN + rows64, mean, mask=row_mask)
            tl.store(RSTD + rows64, rstd, mask=row_mask)
        store_tile(Y, rows64, stride_y, cols, mask, scale_shift(centred, rstd, w, b, HAS_WEIGHT, HAS_BIAS))


@triton.jit
def rows_backward_kernel(
    DY, H, W, MEAN, RSTD, DH_IN, SEED, DX, DRES, DW_PARTIAL, DB_PARTIAL,
    stride_dy, stride_h, stride_dh_in, stride_dx, stride_dres, M, N, rows_per_program, dropout_p,
    IS_RMS: tl.constexpr, WEIGHT_OFFSET: tl.constexpr, HAS_WEIGHT: tl.constexpr, COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr, HAS_DH_IN: tl.constexpr, HAS_DROPOUT: tl.constexpr, STORE_DRES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Program p takes rows [p · rows_per_program, (p + 1) · rows_per_program) and writes partial row p."""
    ACC: tl.constexpr = tl.float64 if H.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = load_vector(W, cols, col_mask, ACC, WEIGHT_OFFSET) if HAS_WEIGHT else None
    inv_n = reciprocal(N, ACC)
    # dγ and dβ summed per thread over the program's rows as [BLOCK_M, BLOCK_N] tiles: one reduction over the
    # tile's rows at the end instead of one per tile.
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for r0 in tl.range(row_start, row_end, BLOCK_M, num_stages=NUM_STAGES):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        rows64 = rows.to(tl.int64)
        mask = row_mask[:, None] & col_mask[None, :]
        dy, xhat, g, rstd = load_grad_tile(DY, H, MEAN, RSTD, rows64, cols, mask, row_mask, stride_dy, stride_h,
                                           w, ACC, IS_RMS, HAS_WEIGHT, "")
        sum_gx, sum_g = grad_sums(xhat, g, IS_RMS)
        store_dx(dy, xhat, g, rstd, sum_gx * inv_n, sum_g * inv_n, DH_IN, DX, DRES, SEED, rows64, cols, mask,
                 stride_dh_in, stride_dx, stride_dres, N, dropout_p, ACC, IS_RMS, HAS_DH_IN, HAS_DROPOUT, STORE_DRES)
        if COMPUTE_DW:
            dw += dy * xhat
        if COMPUTE_DB:
            db += dy
    partial = pid.to(tl.int64) * N + cols
    if COMPUTE_DW:
        tl.store(DW_PARTIAL + partial, column_sums(dw, BLOCK_M), mask=col_mask)
    if COMPUTE_DB:
        tl.store(DB_PARTIAL + partial, column_sums(db, BLOCK_M), mask=col_mask)
