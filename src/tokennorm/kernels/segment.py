"""Segment kernels: one pass over a column segment of each row, with the row's statistics reduced elsewhere.

The local work of the tensor-parallel norms (``tokennorm.distributed``: each rank's hidden slice is one
segment), and the backward for rows too long for the long-row kernel's resident programs. The grid's second
dimension numbers the segments (``seg_n`` columns each, walked in ``BLOCK_N`` chunks); ``PASS`` names what a
launch does:

forward  ``"moments"``  write each segment's (mean, M2 = Σ(x − mean)²) (RMSNorm: (0, Σx²)) → SEG_MEAN, SEG_M2
         ``"apply"``    normalize with the rows' mean/rstd given in MEAN/RSTD (merged by the caller)
backward ``"sums"``     write each segment's (Σ g·x̂, Σ g) → ROW_SUMS [M, segments, 2]
         ``"dx"``       dx (and d(residual)) with the rows' (mean(g·x̂), mean(g)) given in ROW_MEANS [M, 2];
                        programs of a row group walk their segment chunk-outer, rows inner, so one chunk of
                        dγ/dβ lives in registers at a time, written as that group's float32 partial row;
                        AdaLN's dscale and dgate stored per token (``HAS_MOD``, ``HAS_GATE``: see rows.py).
"""

import triton
import triton.language as tl

from tokennorm.kernels.helpers import (
    column_sums,
    grad_sums,
    load_grad_tile,
    load_modulation,
    load_vector,
    store_dx,
    store_modulation_grads,
    walk_moments,
    walk_normalize,
)


@triton.jit
def segment_forward_kernel(
    X,
    W,
    B,
    Y,
    MEAN,
    RSTD,
    SEG_MEAN,
    SEG_M2,
    stride_x,
    stride_y,
    M,
    N,
    seg_n,
    PASS: tl.constexpr,
    IS_RMS: tl.constexpr,
    WEIGHT_OFFSET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows64 = rows.to(tl.int64)
    seg = tl.program_id(1)
    col0 = seg * seg_n
    col_end = tl.minimum(col0 + seg_n, N)
    if PASS == "moments":
        mean, m2 = walk_moments(
            X,
            None,
            None,
            None,
            None,
            rows64,
            rows64,
            row_mask,
            col0,
            col_end,
            stride_x,
            0,
            0,
            0,
            N,
            0.0,
            ACC,
            ACC,
            False,
            False,
            False,
            False,
            False,
            IS_RMS,
            BLOCK_N,
            "",
        )
        index = rows64 * tl.num_programs(1) + seg
        if not IS_RMS:
            tl.store(SEG_MEAN + index, mean, mask=row_mask)
        tl.store(SEG_M2 + index, m2, mask=row_mask)
    else:
        rstd = tl.load(RSTD + rows64, mask=row_mask, other=0.0).to(ACC)
        mean = tl.zeros_like(rstd)
        if not IS_RMS:
            mean = tl.load(MEAN + rows64, mask=row_mask, other=0.0).to(ACC)
        walk_normalize(
            X,
            None,
            None,
            None,
            None,
            W,
            B,
            None,
            None,
            Y,
            rows64,
            rows64,
            row_mask,
            col0,
            col_end,
            mean,
            rstd,
            stride_x,
            0,
            0,
            0,
            0,
            0,
            stride_y,
            N,
            0.0,
            ACC,
            ACC,
            False,
            False,
            False,
            False,
            False,
            False,
            IS_RMS,
            WEIGHT_OFFSET,
            HAS_WEIGHT,
            HAS_BIAS,
            False,
            BLOCK_N,
            "",
        )


@triton.jit
def segment_backward_kernel(
    DY,
    H,
    W,
    MEAN,
    RSTD,
    DH_IN,
    SEED,
    DX,
    DRES,
    DW_PARTIAL,
    DB_PARTIAL,
    ROW_SUMS,
    ROW_MEANS,
    stride_dy,
    stride_h,
    stride_dh_in,
    stride_dx,
    stride_dres,
    M,
    N,
    seg_n,
    rows_per_program,
    dropout_p,
    X,
    B,
    SCALE,
    GATE,
    DSCALE,
    DGATE,
    stride_x,
    stride_scale,
    stride_gate,
    tokens,
    PASS: tl.constexpr,
    IS_RMS: tl.constexpr,
    WEIGHT_OFFSET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    HAS_DH_IN: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    STORE_DRES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_MOD: tl.constexpr,
    HAS_GATE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if H.dtype.element_ty == tl.float64 else tl.float32
    seg = tl.program_id(1)
    col0 = seg * seg_n
    col_end = tl.minimum(col0 + seg_n, N)
    cols = tl.arange(0, BLOCK_N)
    if PASS == "sums":
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        rows64 = rows.to(tl.int64)
        sum_gx = tl.zeros([BLOCK_M], dtype=ACC)
        sum_g = tl.zeros([BLOCK_M], dtype=ACC)
        for start in range(col0, col_end, BLOCK_N):
            c = start + cols
            col_mask = c < col_end
            mask = row_mask[:, None] & col_mask[None, :]
            w = load_vector(W, c, col_mask, ACC, WEIGHT_OFFSET) if HAS_WEIGHT else None
            one_plus_scale = (
                1.0 + load_modulation(SCALE, rows64 // tokens, c, mask, stride_scale, ACC) if HAS_MOD else None
            )
            _, xhat, g, _ = load_grad_tile(
                DY,
                H,
                MEAN,
                RSTD,
                rows64,
                c,
                mask,
                row_mask,
                stride_dy,
                stride_h,
                w,
                one_plus_scale,
                ACC,
                IS_RMS,
                HAS_WEIGHT,
                HAS_MOD,
                "",
            )
            chunk_gx, chunk_g = grad_sums(xhat, g, IS_RMS)
            sum_gx += chunk_gx
            sum_g += chunk_g
        slot = (rows64 * tl.num_programs(1) + seg) * 2
        tl.store(ROW_SUMS + slot, sum_gx, mask=row_mask)
        tl.store(ROW_SUMS + slot + 1, sum_g, mask=row_mask)
    else:
        pid = tl.program_id(0)
        row_start = pid * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, M)
        partial_row = pid.to(tl.int64) * N
        for start in range(col0, col_end, BLOCK_N):
            c = start + cols
            col_mask = c < col_end
            w = load_vector(W, c, col_mask, ACC, WEIGHT_OFFSET) if HAS_WEIGHT else None
            b = load_vector(B, c, col_mask, ACC, 0.0) if HAS_MOD and HAS_BIAS else None
            dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
            db = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
            for r0 in range(row_start, row_end, BLOCK_M):
                rows = r0 + tl.arange(0, BLOCK_M)
                row_mask = rows < row_end
                rows64 = rows.to(tl.int64)
                mask = row_mask[:, None] & col_mask[None, :]
                mod_rows64 = rows64 // tokens
                one_plus_scale = (
                    1.0 + load_modulation(SCALE, mod_rows64, c, mask, stride_scale, ACC) if HAS_MOD else None
                )
                dy, xhat, g, rstd = load_grad_tile(
                    DY,
                    H,
                    MEAN,
                    RSTD,
                    rows64,
                    c,
                    mask,
                    row_mask,
                    stride_dy,
                    stride_h,
                    w,
                    one_plus_scale,
                    ACC,
                    IS_RMS,
                    HAS_WEIGHT,
                    HAS_MOD,
                    "",
                )
                mean_gx = tl.load(ROW_MEANS + rows64 * 2, mask=row_mask, other=0.0).to(ACC)
                mean_g = tl.load(ROW_MEANS + rows64 * 2 + 1, mask=row_mask, other=0.0).to(ACC)
                gate = load_modulation(GATE, mod_rows64, c, mask, stride_gate, ACC) if HAS_GATE else None
                dh = store_dx(
                    dy,
                    xhat,
                    g,
                    rstd,
                    mean_gx,
                    mean_g,
                    gate,
                    DH_IN,
                    DX,
                    DRES,
                    SEED,
                    rows64,
                    c,
                    mask,
                    stride_dh_in,
                    stride_dx,
                    stride_dres,
                    N,
                    dropout_p,
                    ACC,
                    IS_RMS,
                    HAS_DH_IN,
                    HAS_DROPOUT,
                    STORE_DRES,
                    HAS_GATE,
                )
                store_modulation_grads(
                    dy,
                    xhat,
                    dh,
                    w,
                    b,
                    X,
                    DSCALE,
                    DGATE,
                    rows64,
                    c,
                    mask,
                    stride_x,
                    N,
                    ACC,
                    HAS_WEIGHT,
                    HAS_BIAS,
                    HAS_MOD,
                    HAS_GATE,
                )
                dn = dy * one_plus_scale if HAS_MOD else dy  # the gradient of Norm(h)·w + b
                if COMPUTE_DW:
                    dw += dn * xhat
                if COMPUTE_DB:
                    db += dn
            if COMPUTE_DW:
                tl.store(DW_PARTIAL + partial_row + c, column_sums(dw, BLOCK_M), mask=col_mask)
            if COMPUTE_DB:
                tl.store(DB_PARTIAL + partial_row + c, column_sums(db, BLOCK_M), mask=col_mask)
