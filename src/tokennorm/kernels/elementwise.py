"""Elementwise: Dynamic Tanh (DyT), ``y = γ · tanh(α · h) + β`` with h = residual + x (Add & DyT) or x.

No row statistics, so no row has to be in one program: the tensor is viewed as [M, N] rows of the γ/β width N
and cut into [BLOCK_M, BLOCK_N] tiles, 16-byte vectors along N. The grid is (row programs, column blocks):
program (i, j) loads γ and β of column block j once and walks the row tiles i, i + row programs, … (a
grid-stride loop, the next tile's loads in flight with ``tl.range(num_stages=NUM_STAGES)``).

Backward, with t = tanh(α·h) and u = dy · γ · (1 − t²): dh = α · u (+ the h output's gradient, pre-norm);
dγ = Σ_rows dy · t, dβ = Σ_rows dy, dα = Σ_all u · h. Each program sums its tiles in float32 (float64 for
float64) registers and writes one partial row of dγ/dβ and one partial dα — summed afterwards by ``torch.sum``:
deterministic, no atomics.

α is a one-element tensor (``ALPHA_TENSOR``: read once per program, any floating dtype) or a Python float
passed as (alpha, alpha_lo), float64 kernels adding back its float32 remainder as for ε.
"""

import triton
import triton.language as tl

from tokennorm.kernels.helpers import column_sums, full_float, load_h, load_vector, store_tile, tanh


@triton.jit
def load_alpha(ALPHA, alpha, alpha_lo, ACC: tl.constexpr, ALPHA_TENSOR: tl.constexpr):
    """α in ACC: from the one-element tensor ALPHA, or the float argument and its float32 remainder."""
    if ALPHA_TENSOR:
        return tl.load(ALPHA).to(ACC)
    else:
        return full_float(alpha, alpha_lo, ACC)


@triton.jit
def dyt_forward_kernel(
    X,
    RES,
    W,
    B,
    ALPHA,
    Y,
    H,
    stride_x,
    stride_res,
    stride_y,
    stride_h,
    M,
    N,
    alpha,
    alpha_lo,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ALPHA_TENSOR: tl.constexpr,
    STORE_H: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Grid (row programs, ⌈N / BLOCK_N⌉). h = residual + x is rounded to H's dtype (the stored stream) before
    DyT, as the unfused ``dyt(residual + x)`` would see it."""
    WIDE: tl.constexpr = X.dtype.element_ty == tl.float64 or (HAS_RESIDUAL and RES.dtype.element_ty == tl.float64)
    ACC: tl.constexpr = tl.float64 if WIDE else tl.float32
    H_DTYPE: tl.constexpr = H.dtype.element_ty if STORE_H else ACC
    ROUND_H: tl.constexpr = STORE_H and H_DTYPE != ACC
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = load_vector(W, cols, col_mask, ACC, 0.0) if HAS_WEIGHT else None
    b = load_vector(B, cols, col_mask, ACC, 0.0) if HAS_BIAS else None
    a = load_alpha(ALPHA, alpha, alpha_lo, ACC, ALPHA_TENSOR)
    for tile in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0), num_stages=NUM_STAGES):
        rows64 = (tile * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows64 < M)[:, None] & col_mask[None, :]
        h = load_h(
            X,
            RES,
            None,
            None,
            rows64,
            rows64,
            cols,
            mask,
            stride_x,
            stride_res,
            0,
            N,
            0.0,
            ACC,
            H_DTYPE,
            HAS_RESIDUAL,
            False,
            False,
            ROUND_H,
            "",
        )
        if STORE_H:
            store_tile(H, rows64, stride_h, cols, mask, h)
        y = tanh(a * h)
        if HAS_WEIGHT:
            y = y * w[None, :]
        if HAS_BIAS:
            y = y + b[None, :]
        store_tile(Y, rows64, stride_y, cols, mask, y)


@triton.jit
def dyt_backward_kernel(
    DY,
    H,
    W,
    ALPHA,
    DH_IN,
    DX,
    DRES,
    DW_PARTIAL,
    DB_PARTIAL,
    DALPHA_PARTIAL,
    stride_dy,
    stride_h,
    stride_dh_in,
    stride_dx,
    stride_dres,
    M,
    N,
    alpha,
    alpha_lo,
    HAS_WEIGHT: tl.constexpr,
    ALPHA_TENSOR: tl.constexpr,
    HAS_DH_IN: tl.constexpr,
    STORE_DRES: tl.constexpr,
    COMPUTE_DALPHA: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Grid (row programs, ⌈N / BLOCK_N⌉): program (i, j) writes columns j of partial row i of DW_PARTIAL and
    DB_PARTIAL ([row programs, N]) and element i · ⌈N / BLOCK_N⌉ + j of DALPHA_PARTIAL. ``H`` is what DyT saw
    (h, or x itself)."""
    WIDE: tl.constexpr = H.dtype.element_ty == tl.float64 or DY.dtype.element_ty == tl.float64
    ACC: tl.constexpr = tl.float64 if WIDE else tl.float32
    col_block = tl.program_id(1)
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = load_vector(W, cols, col_mask, ACC, 0.0) if HAS_WEIGHT else None
    a = load_alpha(ALPHA, alpha, alpha_lo, ACC, ALPHA_TENSOR)
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    dalpha = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for tile in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0), num_stages=NUM_STAGES):
        rows64 = (tile * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows64 < M)[:, None] & col_mask[None, :]
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(ACC)
        h = tl.load(H + rows64[:, None] * stride_h + cols[None, :], mask=mask, other=0.0).to(ACC)
        t = tanh(a * h)
        g = dy * w[None, :] if HAS_WEIGHT else dy
        u = g * ((1.0 - t) * (1.0 + t))  # 1 − t², without the cancellation of 1 − t·t as |t| → 1
        dh = a * u
        if HAS_DH_IN:
            dh += tl.load(DH_IN + rows64[:, None] * stride_dh_in + cols[None, :], mask=mask, other=0.0).to(ACC)
        if STORE_DRES:
            store_tile(DRES, rows64, stride_dres, cols, mask, dh)
        store_tile(DX, rows64, stride_dx, cols, mask, dh)
        if COMPUTE_DALPHA:
            dalpha += u * h
        if COMPUTE_DW:
            dw += dy * t
        if COMPUTE_DB:
            db += dy
    partial = tl.program_id(0).to(tl.int64) * N + cols
    if COMPUTE_DW:
        tl.store(DW_PARTIAL + partial, column_sums(dw, BLOCK_M), mask=col_mask)
    if COMPUTE_DB:
        tl.store(DB_PARTIAL + partial, column_sums(db, BLOCK_M), mask=col_mask)
    if COMPUTE_DALPHA:
        tl.store(DALPHA_PARTIAL + tl.program_id(0) * tl.num_programs(1) + col_block, tl.sum(tl.sum(dalpha, axis=1)))
