"""Rows: the whole row in registers — forward and backward read their inputs once and write once.

Both kernels run on a persistent grid (a few programs per SM, ``config.KernelConfig.programs_per_sm``), each
walking row tiles of ``BLOCK_M`` rows with ``tl.range(..., num_stages=NUM_STAGES)``: with NUM_STAGES > 1 the
next tile's loads are in flight (cp.async into shared memory) while this one reduces. γ and β are loaded once
per program, before the first row. The tiles are [BLOCK_M, BLOCK_N] with BLOCK_N ≥ N, laid out by Triton
with 16-byte vectors along the row and rows spread over warps (no column held by two threads).

Forward: h = residual + gate ⊙ dropout(x) (stored when asked), mean/var by the corrected two-pass over
registers, y = (x̂ · (γ + offset) + β) · (1 + scale) + shift. Backward: x̂ from h and the saved statistics,
g = dy · (1 + scale) · (γ + offset), the two row sums in one fused reduction, dx; dγ/dβ accumulate per program
in float32 registers and are written as one partial row per program — summed afterwards, deterministically,
no atomics.

AdaLN (issue 18): ``HAS_GATE`` and ``HAS_MOD`` switch on the gate and the shift/scale modulation, read through
the row's sample (``row // tokens``; ``tokens`` = 1 for per-token modulations). Their gradients:
dshift = Σ dy, dscale = Σ dy · n (n = x̂ · w + b) and dgate = Σ dh ⊙ x over each sample's tokens. With
``MOD_SUMS`` (per-sample modulations) a backward program walks whole token ranges of samples — samples
[first, first + samples_per_program) when there are at least as many samples as programs, else one of ``splits``
token ranges of one sample — so a tile never straddles two samples; it sums the three in float32 registers and
writes one partial row per (sample, token range), summed afterwards like dγ/dβ. Without ``MOD_SUMS``
(per-token modulations) dscale and dgate are elementwise and stored per row.
"""

import triton
import triton.language as tl

from tokennorm.kernels.helpers import (
    column_sums,
    full_eps,
    grad_sums,
    load_grad_tile,
    load_h,
    load_modulation,
    load_vector,
    modulate,
    normalized_affine,
    reciprocal,
    row_stats,
    scale_shift,
    store_dx,
    store_modulation_grads,
    store_tile,
)


@triton.jit
def rows_forward_kernel(
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
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
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
        mod_rows64 = rows64 // tokens  # each row's modulation row (tokens = 1: the row; a constant then)
        mask = row_mask[:, None] & col_mask[None, :]
        h = load_h(
            X,
            RES,
            SEED,
            GATE,
            rows64,
            mod_rows64,
            cols,
            mask,
            stride_x,
            stride_res,
            stride_gate,
            N,
            dropout_p,
            ACC,
            H_DTYPE,
            HAS_RESIDUAL,
            HAS_DROPOUT,
            HAS_GATE,
            ROUND_H,
            "",
        )
        if STORE_H:
            store_tile(H, rows64, stride_h, cols, mask, h)
        mean, rstd, centred = row_stats(h, mask, inv_n, eps, ACC, IS_RMS)
        if STORE_STATS:
            if not IS_RMS:
                tl.store(MEAN + rows64, mean, mask=row_mask)
            tl.store(RSTD + rows64, rstd, mask=row_mask)
        n = scale_shift(centred, rstd, w, b, HAS_WEIGHT, HAS_BIAS)
        store_tile(
            Y,
            rows64,
            stride_y,
            cols,
            mask,
            modulate(n, SHIFT, SCALE, mod_rows64, cols, mask, stride_shift, stride_scale, ACC, HAS_MOD),
        )


@triton.jit
def rows_backward_tile(
    DY,
    H,
    MEAN,
    RSTD,
    DH_IN,
    SEED,
    DX,
    DRES,
    X,
    SCALE,
    GATE,
    DSCALE,
    DGATE,
    rows,
    row_end,
    cols,
    col_mask,
    w,
    b,
    inv_n,
    stride_dy,
    stride_h,
    stride_dh_in,
    stride_dx,
    stride_dres,
    stride_x,
    stride_scale,
    stride_gate,
    N,
    tokens,
    dropout_p,
    dw,
    db,
    dshift,
    dscale,
    dgate,
    ACC: tl.constexpr,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    HAS_DH_IN: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    STORE_DRES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_MOD: tl.constexpr,
    HAS_GATE: tl.constexpr,
    MOD_SUMS: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of rows < ``row_end``: dx (and d(residual)) stored, the accumulators
    (dw, db per program; dshift, dscale, dgate per sample with MOD_SUMS) returned updated; without MOD_SUMS the
    per-token dscale and dgate are stored."""
    row_mask = rows < row_end
    rows64 = rows.to(tl.int64)
    mod_rows64 = rows64 // tokens
    mask = row_mask[:, None] & col_mask[None, :]
    one_plus_scale = 1.0 + load_modulation(SCALE, mod_rows64, cols, mask, stride_scale, ACC) if HAS_MOD else None
    gate = load_modulation(GATE, mod_rows64, cols, mask, stride_gate, ACC) if HAS_GATE else None
    dy, xhat, g, rstd = load_grad_tile(
        DY,
        H,
        MEAN,
        RSTD,
        rows64,
        cols,
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
    sum_gx, sum_g = grad_sums(xhat, g, IS_RMS)
    dh = store_dx(
        dy,
        xhat,
        g,
        rstd,
        sum_gx * inv_n,
        sum_g * inv_n,
        gate,
        DH_IN,
        DX,
        DRES,
        SEED,
        rows64,
        cols,
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
    dn = dy * one_plus_scale if HAS_MOD else dy  # the gradient of Norm(h)·w + b
    if COMPUTE_DW:
        dw += dn * xhat
    if COMPUTE_DB:
        db += dn
    if MOD_SUMS:
        if HAS_MOD:
            dshift += dy
            dscale += dy * normalized_affine(xhat, w, b, HAS_WEIGHT, HAS_BIAS)
        if HAS_GATE:
            dgate += dh * tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
    else:
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
            cols,
            mask,
            stride_x,
            N,
            ACC,
            HAS_WEIGHT,
            HAS_BIAS,
            HAS_MOD,
            HAS_GATE,
        )
    return dw, db, dshift, dscale, dgate


@triton.jit
def rows_backward_kernel(
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
    stride_dy,
    stride_h,
    stride_dh_in,
    stride_dx,
    stride_dres,
    M,
    N,
    rows_per_program,
    dropout_p,
    X,
    B,
    SCALE,
    GATE,
    DSHIFT,
    DSCALE,
    DGATE,
    stride_x,
    stride_scale,
    stride_gate,
    tokens,
    samples_per_program,
    splits,
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
    MOD_SUMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Program p takes rows [p · rows_per_program, (p + 1) · rows_per_program) and writes partial row p.

    With MOD_SUMS, ``rows_per_program`` counts tokens of a sample instead: program p takes token range
    p % splits of samples [(p // splits) · samples_per_program, …), and writes the partial row
    sample · splits + p % splits of DSHIFT/DSCALE/DGATE for each ([samples · splits, N] float32)."""
    ACC: tl.constexpr = tl.float64 if H.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = load_vector(W, cols, col_mask, ACC, WEIGHT_OFFSET) if HAS_WEIGHT else None
    b = load_vector(B, cols, col_mask, ACC, 0.0) if HAS_MOD and HAS_BIAS else None
    inv_n = reciprocal(N, ACC)
    # dγ and dβ summed per thread over the program's rows as [BLOCK_M, BLOCK_N] tiles: one reduction over the
    # tile's rows at the end instead of one per tile.
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    if MOD_SUMS:
        split = pid % splits
        first_sample = (pid.to(tl.int64) // splits) * samples_per_program  # 64-bit: the loop's index type
        last_sample = tl.minimum(first_sample + samples_per_program, M // tokens)
        token_start = split * rows_per_program
        token_end = tl.minimum(token_start + rows_per_program, tokens)
        for sample in range(first_sample, last_sample):
            dshift = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
            dscale = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
            dgate = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
            row_start = sample * tokens + token_start
            row_end = sample * tokens + token_end
            for r0 in tl.range(row_start, row_end, BLOCK_M, num_stages=NUM_STAGES):
                dw, db, dshift, dscale, dgate = rows_backward_tile(
                    DY,
                    H,
                    MEAN,
                    RSTD,
                    DH_IN,
                    SEED,
                    DX,
                    DRES,
                    X,
                    SCALE,
                    GATE,
                    DSCALE,
                    DGATE,
                    r0 + tl.arange(0, BLOCK_M),
                    row_end,
                    cols,
                    col_mask,
                    w,
                    b,
                    inv_n,
                    stride_dy,
                    stride_h,
                    stride_dh_in,
                    stride_dx,
                    stride_dres,
                    stride_x,
                    stride_scale,
                    stride_gate,
                    N,
                    tokens,
                    dropout_p,
                    dw,
                    db,
                    dshift,
                    dscale,
                    dgate,
                    ACC,
                    IS_RMS,
                    HAS_WEIGHT,
                    COMPUTE_DW,
                    COMPUTE_DB,
                    HAS_DH_IN,
                    HAS_DROPOUT,
                    STORE_DRES,
                    HAS_BIAS,
                    HAS_MOD,
                    HAS_GATE,
                    MOD_SUMS,
                )
            partial = (sample * splits + split) * N + cols
            if HAS_MOD:
                tl.store(DSHIFT + partial, column_sums(dshift, BLOCK_M), mask=col_mask)
                tl.store(DSCALE + partial, column_sums(dscale, BLOCK_M), mask=col_mask)
            if HAS_GATE:
                tl.store(DGATE + partial, column_sums(dgate, BLOCK_M), mask=col_mask)
    else:
        row_start = pid * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, M)
        for r0 in tl.range(row_start, row_end, BLOCK_M, num_stages=NUM_STAGES):
            dw, db, _, _, _ = rows_backward_tile(
                DY,
                H,
                MEAN,
                RSTD,
                DH_IN,
                SEED,
                DX,
                DRES,
                X,
                SCALE,
                GATE,
                DSCALE,
                DGATE,
                r0 + tl.arange(0, BLOCK_M),
                row_end,
                cols,
                col_mask,
                w,
                b,
                inv_n,
                stride_dy,
                stride_h,
                stride_dh_in,
                stride_dx,
                stride_dres,
                stride_x,
                stride_scale,
                stride_gate,
                N,
                tokens,
                dropout_p,
                dw,
                db,
                dw,
                db,
                dw,
                ACC,
                IS_RMS,
                HAS_WEIGHT,
                COMPUTE_DW,
                COMPUTE_DB,
                HAS_DH_IN,
                HAS_DROPOUT,
                STORE_DRES,
                HAS_BIAS,
                HAS_MOD,
                HAS_GATE,
                MOD_SUMS,
            )
    partial = pid.to(tl.int64) * N + cols
    if COMPUTE_DW:
        tl.store(DW_PARTIAL + partial, column_sums(dw, BLOCK_M), mask=col_mask)
    if COMPUTE_DB:
        tl.store(DB_PARTIAL + partial, column_sums(db, BLOCK_M), mask=col_mask)
