"""Backward kernel family, the mirror of :mod:`tokennorm.kernels.norm_fwd`.

Per row, with x̂ recomputed from h and the saved mean/rstd, and g = dy · (γ + offset)::

    LayerNorm: dh = rstd · (g − mean(g) − x̂ · mean(g · x̂))
    RMSNorm:   dh = rstd · (g − x̂ · mean(g · x̂))
    dh += dh_in                      (HAS_DH_IN: gradient of the h output, pre-LN)
    dx  = dh, or dh · keep / (1 − p) (HAS_DROPOUT, mask regenerated from the seed)

dγ = Σ_rows dy · x̂ and dβ = Σ_rows dy are accumulated per program in float32 over a contiguous block of rows
and written as one partial row each; the caller sums the few partial rows. No atomics, so results are bitwise
reproducible.

``DOTS``: compute the two row dot products here (the usual case); or only write each segment's sums; or take
the rows' means given; or sum the segments' sums here. With a second grid dimension splitting rows into
``seg_n``-column segments, sums then segments make the split-row backward (two launches), and sums then given
the local part of a tensor-parallel backward (sums → all-reduce → dx).

``LOOP_STAGES``: software-pipelining depth of the innermost loops (row tiles, chunks), as in the forward.

``SINGLE_CHUNK``: the row fits a [BLOCK_M, BLOCK_N] tile and everything happens in one pass over h and dy.
Otherwise pass 1 computes each row's two dot products chunk by chunk into ``ROW_DOTS``, and pass 2 walks the
row chunk by chunk (rows inner) so one chunk of dγ/dβ lives in registers at a time.
"""

import triton
import triton.language as tl

from tokennorm.kernels.norm_fwd import dropout_keep, row_mean, row_sums


@triton.jit
def _load_tile(
    DY, H, W, MEAN, RSTD, rows64, cols, mask, row_mask, stride_dy, stride_h, N, weight_offset,
    ACC: tl.constexpr, IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
):
    """dy, x̂, g = dy·(γ + offset) and rstd for one tile, in the accumulation dtype."""
    dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(ACC)
    h = tl.load(H + rows64[:, None] * stride_h + cols[None, :], mask=mask, other=0.0).to(ACC)
    rstd = tl.load(RSTD + rows64, mask=row_mask, other=0.0)
    if IS_RMS:
        xhat = h * rstd[:, None]
    else:
        mean = tl.load(MEAN + rows64, mask=row_mask, other=0.0)
        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
    g = dy
    if HAS_WEIGHT:
        g = dy * (tl.load(W + cols, mask=cols < N, other=0.0).to(ACC)[None, :] + weight_offset)
    return dy, xhat, g, rstd


@triton.jit
def _store_dh(
    dh, DH_IN, DX, DRES, SEED, rows64, cols, mask, stride_dh_in, stride_dx, stride_dres, N, dropout_p,
    ACC: tl.constexpr, HAS_DH_IN: tl.constexpr, HAS_DROPOUT: tl.constexpr, STORE_DRES: tl.constexpr,
):
    """Add the h-output gradient, write d(residual), apply the dropout mask and write dx."""
    if HAS_DH_IN:
        dh += tl.load(DH_IN + rows64[:, None] * stride_dh_in + cols[None, :], mask=mask, other=0.0).to(ACC)
    if STORE_DRES:
        tl.store(DRES + rows64[:, None] * stride_dres + cols[None, :], dh.to(DRES.dtype.element_ty), mask=mask)
    if HAS_DROPOUT:
        keep = dropout_keep(SEED, rows64, cols, N, dropout_p)
        dh = tl.where(keep, dh / (1.0 - dropout_p), 0.0)
    tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dh.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def dx_tile(
    dy, xhat, g, rstd, gx, gs, DH_IN, DX, DRES, SEED, rows64, cols, mask, stride_dh_in, stride_dx, stride_dres,
    N, dropout_p,
    ACC: tl.constexpr, IS_RMS: tl.constexpr, HAS_DH_IN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    STORE_DRES: tl.constexpr,
):
    """dx (and d(residual)) of one tile from the rows' mean(g·x̂) ``gx`` and mean(g) ``gs``; returns the tile's
    contributions to dγ and dβ (column sums of dy·x̂ and dy)."""
    if IS_RMS:
        dh = rstd[:, None] * (g - xhat * gx[:, None])
    else:
        dh = rstd[:, None] * (g - gs[:, None] - xhat * gx[:, None])
    _store_dh(dh, DH_IN, DX, DRES, SEED, rows64, cols, mask, stride_dh_in, stride_dx, stride_dres,
              N, dropout_p, ACC, HAS_DH_IN, HAS_DROPOUT, STORE_DRES)
    return tl.sum(dy * xhat, axis=0), tl.sum(dy, axis=0)


# DOTS modes: where the two row dot products dx needs, mean(g·x̂) and mean(g), come from.
DOTS_COMPUTE = 0  # computed here over the whole row
DOTS_SUMS = 1  # only write this segment's sums Σg·x̂, Σg into ROW_DOTS[row, segment, 0:2]; no dx
DOTS_GIVEN = 2  # read the rows' means from ROW_DOTS[row, 0:2] (reduced elsewhere); write dx and dγ/dβ
DOTS_SEGMENTS = 3  # sum the rows' segment sums from ROW_DOTS[row, 0:segments, 0:2] (a DOTS_SUMS launch with
#                    the same grid) here; write dx and dγ/dβ. The split-row backward: two launches, nothing else


@triton.jit
def _row_dots(ROW_DOTS, rows64, row_mask, N, IS_RMS: tl.constexpr, DOTS: tl.constexpr, S_BLOCK: tl.constexpr):
    """The rows' mean(g·x̂) and mean(g) for pass 2: from ROW_DOTS [M, 2] (stored by pass 1, or given), or
    (DOTS_SEGMENTS) summed from the segments' sums [M, segments, 2], segments = the grid's second dimension."""
    if DOTS == 3:
        s = tl.arange(0, S_BLOCK)
        segments = tl.num_programs(1)
        m = row_mask[:, None] & (s < segments)[None, :]
        slot = (rows64[:, None] * segments + s[None, :]) * 2
        gx = row_mean(tl.sum(tl.load(ROW_DOTS + slot, mask=m, other=0.0), axis=1), N)
        gs = gx  # mean(g): LayerNorm only
        if not IS_RMS:
            gs = row_mean(tl.sum(tl.load(ROW_DOTS + slot + 1, mask=m, other=0.0), axis=1), N)
    else:
        gx = tl.load(ROW_DOTS + rows64 * 2, mask=row_mask, other=0.0)
        gs = gx
        if not IS_RMS:
            gs = tl.load(ROW_DOTS + rows64 * 2 + 1, mask=row_mask, other=0.0)
    return gx, gs


@triton.jit
def norm_bwd_kernel(
    DY, H, W, MEAN, RSTD, DH_IN, SEED, DX, DRES, DW_PARTIAL, DB_PARTIAL, ROW_DOTS,
    stride_dy, stride_h, stride_dh_in, stride_dx, stride_dres,
    M, N, seg_n, rows_per_program, dropout_p, weight_offset,
    IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr,
    HAS_DH_IN: tl.constexpr, HAS_DROPOUT: tl.constexpr, STORE_DRES: tl.constexpr, DOTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE_CHUNK: tl.constexpr, FUSED_SUMS: tl.constexpr,
    LOOP_STAGES: tl.constexpr, S_BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if H.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    cols = tl.arange(0, BLOCK_N)
    partial_row = pid.to(tl.int64) * N
    # Program (p, s) covers columns [col0, col_end): the whole row unless the grid splits rows into segments.
    seg = tl.program_id(1)
    col0 = seg * seg_n
    col_end = tl.minimum(col0 + seg_n, N)

    if SINGLE_CHUNK and DOTS == 0:
        col_mask = cols < N
        dw = tl.zeros([BLOCK_N], dtype=ACC)
        db = tl.zeros([BLOCK_N], dtype=ACC)
        for r0 in tl.range(row_start, row_end, BLOCK_M, num_stages=LOOP_STAGES):
            rows = r0 + tl.arange(0, BLOCK_M)
            row_mask = rows < row_end
            rows64 = rows.to(tl.int64)
            mask = row_mask[:, None] & col_mask[None, :]
            dy, xhat, g, rstd = _load_tile(DY, H, W, MEAN, RSTD, rows64, cols, mask, row_mask,
                                           stride_dy, stride_h, N, weight_offset, ACC, IS_RMS, HAS_WEIGHT)
            if IS_RMS:
                gx = row_mean(tl.sum(g * xhat, axis=1), N)
                gs = gx  # mean(g): LayerNorm only
            else:
                sum_gx, sum_g = row_sums(g * xhat, g, FUSED_SUMS)
                gx = row_mean(sum_gx, N)
                gs = row_mean(sum_g, N)
            dw_tile, db_tile = dx_tile(dy, xhat, g, rstd, gx, gs, DH_IN, DX, DRES, SEED, rows64, cols, mask,
                                       stride_dh_in, stride_dx, stride_dres, N, dropout_p,
                                       ACC, IS_RMS, HAS_DH_IN, HAS_DROPOUT, STORE_DRES)
            if COMPUTE_DW:
                dw += dw_tile
            if COMPUTE_DB:
                db += db_tile
        if COMPUTE_DW:
            tl.store(DW_PARTIAL + partial_row + cols, dw.to(DW_PARTIAL.dtype.element_ty), mask=col_mask)
        if COMPUTE_DB:
            tl.store(DB_PARTIAL + partial_row + cols, db.to(DB_PARTIAL.dtype.element_ty), mask=col_mask)
    else:
        if DOTS == 0 or DOTS == 1:
            # Pass 1: per row, Σ g·x̂ and Σ g over this program's columns, chunk by chunk.
            for r0 in range(row_start, row_end, BLOCK_M):
                rows = r0 + tl.arange(0, BLOCK_M)
                row_mask = rows < row_end
                rows64 = rows.to(tl.int64)
                gx = tl.zeros([BLOCK_M], dtype=ACC)
                gs = tl.zeros([BLOCK_M], dtype=ACC)
                for start in tl.range(col0, col_end, BLOCK_N, num_stages=LOOP_STAGES):
                    c = start + cols
                    mask = row_mask[:, None] & (c < col_end)[None, :]
                    dy, xhat, g, rstd = _load_tile(DY, H, W, MEAN, RSTD, rows64, c, mask, row_mask,
                                                   stride_dy, stride_h, N, weight_offset, ACC, IS_RMS, HAS_WEIGHT)
                    sum_gx, sum_g = row_sums(g * xhat, g, FUSED_SUMS)
                    gx += sum_gx
                    gs += sum_g
                if DOTS == 1:  # DOTS_SUMS: raw sums of this segment, for the caller to reduce
                    slot = (rows64 * tl.num_programs(1) + seg) * 2
                    tl.store(ROW_DOTS + slot, gx, mask=row_mask)
                    tl.store(ROW_DOTS + slot + 1, gs, mask=row_mask)
                else:
                    tl.store(ROW_DOTS + rows64 * 2, row_mean(gx, N), mask=row_mask)
                    tl.store(ROW_DOTS + rows64 * 2 + 1, row_mean(gs, N), mask=row_mask)
            tl.debug_barrier()  # pass 2 reads ROW_DOTS written by other threads of this program
        if DOTS != 1:
            # Pass 2: dx and this program's chunk of dγ/dβ, chunk-outer so the partials stay in registers.
            for start in range(col0, col_end, BLOCK_N):
                c = start + cols
                col_mask = c < col_end
                dw = tl.zeros([BLOCK_N], dtype=ACC)
                db = tl.zeros([BLOCK_N], dtype=ACC)
                for r0 in tl.range(row_start, row_end, BLOCK_M, num_stages=LOOP_STAGES):
                    rows = r0 + tl.arange(0, BLOCK_M)
                    row_mask = rows < row_end
                    rows64 = rows.to(tl.int64)
                    mask = row_mask[:, None] & col_mask[None, :]
                    dy, xhat, g, rstd = _load_tile(DY, H, W, MEAN, RSTD, rows64, c, mask, row_mask,
                                                   stride_dy, stride_h, N, weight_offset, ACC, IS_RMS, HAS_WEIGHT)
                    gx, gs = _row_dots(ROW_DOTS, rows64, row_mask, N, IS_RMS, DOTS, S_BLOCK)
                    dw_tile, db_tile = dx_tile(dy, xhat, g, rstd, gx, gs, DH_IN, DX, DRES, SEED, rows64, c, mask,
                                               stride_dh_in, stride_dx, stride_dres, N, dropout_p,
                                               ACC, IS_RMS, HAS_DH_IN, HAS_DROPOUT, STORE_DRES)
                    if COMPUTE_DW:
                        dw += dw_tile
                    if COMPUTE_DB:
                        db += db_tile
                if COMPUTE_DW:
                    tl.store(DW_PARTIAL + partial_row + c, dw.to(DW_PARTIAL.dtype.element_ty), mask=col_mask)
                if COMPUTE_DB:
                    tl.store(DB_PARTIAL + partial_row + c, db.to(DB_PARTIAL.dtype.element_ty), mask=col_mask)
