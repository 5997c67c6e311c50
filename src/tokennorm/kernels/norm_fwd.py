"""Forward kernel family: (residual +) (dropout) → LayerNorm | RMSNorm → (· (γ + offset)) (+ β).

One kernel, compile-time switches:

* ``IS_RMS``: RMSNorm (no mean) instead of LayerNorm.
* ``HAS_WEIGHT`` / ``HAS_BIAS``: affine γ and β (in the input dtype or float32).
* ``HAS_RESIDUAL``: h = residual + x before the norm; ``HAS_DROPOUT``: x is dropped (Philox from a seed
  tensor, regenerated in backward); ``STORE_H``: h is written out (needed by backward and by pre-LN callers).
* ``STORE_STATS``: write mean and rstd per row (backward needs them; inference does not).
* ``PERSISTENT``: whole-row tiles walked by a machine-sized grid instead of one program per tile.
* ``LOOP_STAGES``: software-pipelining depth of the loops over row tiles and chunks (``tl.range``'s
  num_stages; 1: none). Only an explicit per-loop depth makes Triton pipeline loads that feed no ``tl.dot``:
  the launch's num_stages alone leaves these loops unpipelined (checked in the PTX by compile_check).
* ``STATS``: compute the row's statistics and normalize (the usual case); or only write each segment's
  moments (mean and M2; Σx² for RMSNorm); or normalize with statistics given in MEAN/RSTD; or merge the
  segments' moments here and normalize. With a second grid dimension splitting rows into ``seg_n``-column
  segments, moments then merge make the split-row path (two launches), and moments then given the local part
  of a tensor-parallel norm (moments → all-gather → merge → normalize).
* ``SINGLE_CHUNK``: the row fits one [BLOCK_M, BLOCK_N] register tile (BLOCK_M rows per program); else each
  program walks its row in BLOCK_N chunks twice: once for statistics (chunk means and M2 merged with Chan's
  formula, never E[x²] − E[x]²; each mean refined by the corrected two-pass algorithm), once to normalize.

Statistics are kept in float32 (float64 for float64 inputs).
Row offsets are 64-bit so inputs over 2^31 elements address correctly.
"""

import triton
import triton.language as tl


@triton.jit
def load_h(
    X, RES, SEED, rows64, cols, mask, stride_x, stride_res, N, dropout_p,
    ACC: tl.constexpr, H_DTYPE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, ROUND_H: tl.constexpr,
):
    """h = residual + dropout(x) for a [rows, cols] tile, in the accumulation dtype; 0 outside ``mask``."""
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
    if HAS_DROPOUT:
        keep = dropout_keep(SEED, rows64, cols, N, dropout_p)
        x = tl.where(keep, x / (1.0 - dropout_p), 0.0)
    if HAS_RESIDUAL:
        x += tl.load(RES + rows64[:, None] * stride_res + cols[None, :], mask=mask, other=0.0).to(ACC)
    if ROUND_H:
        # The norm sees h as stored (e.g. bf16), exactly as the unfused `norm(residual + x)` would.
        x = x.to(H_DTYPE).to(ACC)
    return x


@triton.jit
def inv_sqrt(v, ACC: tl.constexpr):
    """1 / sqrt(v) from a correctly rounded sqrt and division (per row, so the cost does not matter).

    tl.rsqrt, tl.sqrt and `/` lower to approximate instructions on NVIDIA GPUs, in float64 too (measured on an
    H100: float64 LayerNorm off by 4e-9 relative with them).
    """
    if ACC == tl.float64:
        return 1.0 / tl.sqrt(v)  # div.rn.f64 and sqrt.rn.f64: correctly rounded already
    else:
        return tl.div_rn(1.0, tl.sqrt_rn(v))


@triton.jit
def corrected_mean_var(h, mask, n, FUSED_SUMS: tl.constexpr):
    """Per-row mean and biased variance of a [rows, cols] tile by the corrected two-pass algorithm.

    The rounded mean's error is measured on the centred values and removed: a constant row gets its value
    exactly as mean and var == 0 (so y == β, as torch's Welford gives), and Σ(x − mean)² never cancels.
    """
    mean0 = row_mean(tl.sum(h, axis=1), n)
    centred = tl.where(mask, h - mean0[:, None], 0.0)
    sum_d, sum_d2 = row_sums(centred, centred * centred, FUSED_SUMS)
    correction = row_mean(sum_d, n)
    var = tl.maximum(row_mean(sum_d2, n) - correction * correction, 0.0)
    return mean0 + correction, var


@triton.jit
def row_sums(a, b, FUSED_SUMS: tl.constexpr):
    """(Σ a, Σ b) over axis 1. FUSED_SUMS: one two-operand reduction — one round of shuffles and block
    barriers instead of two (and fewer registers). Off under Triton's interpreter, which runs a custom
    combine function element by element in Python (minutes on a 64K row); the sums are the same."""
    if FUSED_SUMS:
        return tl.reduce((a, b), 1, add_pair)
    else:
        return tl.sum(a, axis=1), tl.sum(b, axis=1)


@triton.jit
def add_pair(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def row_mean(total, n):
    """total / n, correctly rounded: `/` is approximate on NVIDIA GPUs (2 ulp), and a constant row's mean
    must come out exactly (per row, so the cost does not matter)."""
    if total.dtype == tl.float64:
        return total / n  # div.rn.f64: correctly rounded already
    else:
        return tl.div_rn(total, tl.zeros_like(total) + n)


@triton.jit
def dropout_keep(SEED, rows64, cols, N, dropout_p):
    """Which elements dropout keeps: Philox on the element's linear index, so backward regenerates the mask."""
    seed = tl.load(SEED)
    offsets = rows64[:, None] * N + cols[None, :]
    return tl.rand(seed, offsets) >= dropout_p


# STATS modes: where the row statistics come from and what the kernel writes.
STATS_COMPUTE = 0  # compute mean/rstd of the whole row, write y (and mean/rstd with STORE_STATS)
STATS_MOMENTS = 1  # compute this segment's moments only: MEAN ← segment mean, RSTD ← its M2 (RMSNorm: Σh²)
STATS_GIVEN = 2  # read the row's mean/rstd from MEAN/RSTD (merged elsewhere), write y for this segment
STATS_MERGE = 3  # merge the row's segment moments SEG_MEAN/SEG_M2 [M, segments] (a STATS_MOMENTS launch with the
#                  same grid) here, write y for this segment (and mean/rstd from segment 0 with STORE_STATS)


@triton.jit
def merged_stats(SEG_MEAN, SEG_M2, rows64, row_mask, N, seg_n, eps,
                 ACC: tl.constexpr, IS_RMS: tl.constexpr, S_BLOCK: tl.constexpr):
    """(mean, rstd) of whole rows from their segments' moments — the merge of tokennorm.moments (Chan's
    parallel form shifted by the first, largest, segment's mean), done by every program of the row alike."""
    s = tl.arange(0, S_BLOCK)
    segments = tl.num_programs(1)
    m = row_mask[:, None] & (s < segments)[None, :]
    idx = rows64[:, None] * segments + s[None, :]
    m2 = tl.load(SEG_M2 + idx, mask=m, other=0.0).to(ACC)
    if IS_RMS:
        rstd = inv_sqrt(row_mean(tl.sum(m2, axis=1), N) + eps, ACC)
        mean = tl.zeros_like(rstd)
    else:
        count = tl.where(s < segments, tl.minimum(seg_n, N - s * seg_n), 0).to(ACC)
        seg_mean = tl.load(SEG_MEAN + idx, mask=m, other=0.0).to(ACC)
        shift = tl.sum(tl.where(s[None, :] == 0, seg_mean, 0.0), axis=1)
        d = tl.where(m, seg_mean - shift[:, None], 0.0)
        delta = row_mean(tl.sum(count[None, :] * d, axis=1), N)
        dd = d - delta[:, None]
        m2_rows = tl.sum(m2, axis=1) + tl.sum(tl.where(m, count[None, :] * dd * dd, 0.0), axis=1)
        mean = shift + delta
        rstd = inv_sqrt(row_mean(m2_rows, N) + eps, ACC)
    return mean, rstd


@triton.jit
def norm_fwd_kernel(
    X, RES, W, B, SEED, Y, H, MEAN, RSTD, SEG_MEAN, SEG_M2,
    stride_x, stride_res, stride_y, stride_h,
    M, N, seg_n, eps, eps_lo, dropout_p, weight_offset,
    IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, STORE_H: tl.constexpr, STORE_STATS: tl.constexpr,
    STATS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE_CHUNK: tl.constexpr,
    PERSISTENT: tl.constexpr, FUSED_SUMS: tl.constexpr, LOOP_STAGES: tl.constexpr, S_BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    H_DTYPE: tl.constexpr = H.dtype.element_ty
    if ACC == tl.float64:
        # Float arguments arrive as float32: 1e-5 would be off by 2.5e-9 relative. eps_lo is the remainder.
        eps = tl.cast(eps, tl.float64) + tl.cast(eps_lo, tl.float64)
    ROUND_H: tl.constexpr = STORE_H and (H_DTYPE != ACC)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    # Program (i, s) covers columns [col0, col_end) of its rows: the whole row unless the grid splits rows
    # into segments (split-row path, tensor-parallel shards), seg_n columns each.
    seg = tl.program_id(1)
    col0 = seg * seg_n
    col_end = tl.minimum(col0 + seg_n, N)
    moment_index = rows64 * tl.num_programs(1) + seg  # [M, segments] moments, row-major

    if STATS == 2:  # STATS_GIVEN
        rstd = tl.load(RSTD + rows64, mask=row_mask, other=0.0).to(ACC)
        mean = tl.zeros([BLOCK_M], dtype=ACC)
        if not IS_RMS:
            mean = tl.load(MEAN + rows64, mask=row_mask, other=0.0).to(ACC)
    if STATS == 3:  # STATS_MERGE
        mean, rstd = merged_stats(SEG_MEAN, SEG_M2, rows64, row_mask, N, seg_n, eps, ACC, IS_RMS, S_BLOCK)
        if STORE_STATS:
            if seg == 0:  # one program per row writes the statistics
                if not IS_RMS:
                    tl.store(MEAN + rows64, mean, mask=row_mask)
                tl.store(RSTD + rows64, rstd, mask=row_mask)

    if SINGLE_CHUNK and STATS == 0:  # STATS_COMPUTE on whole rows: the common case
        if PERSISTENT:
            # A grid sized to the machine, each program walking row tiles: with LOOP_STAGES > 1 the next tiles'
            # loads are in flight (cp.async into shared memory) while this tile reduces.
            for tile in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0), num_stages=LOOP_STAGES):
                whole_row_tile(tile, X, RES, W, B, SEED, Y, H, MEAN, RSTD, stride_x, stride_res, stride_y, stride_h,
                               M, N, eps, dropout_p, weight_offset, ACC, H_DTYPE, ROUND_H, IS_RMS, HAS_WEIGHT,
                               HAS_BIAS, HAS_RESIDUAL, HAS_DROPOUT, STORE_H, STORE_STATS, BLOCK_M, BLOCK_N,
                               FUSED_SUMS)
        else:
            whole_row_tile(tl.program_id(0), X, RES, W, B, SEED, Y, H, MEAN, RSTD, stride_x, stride_res, stride_y,
                           stride_h, M, N, eps, dropout_p, weight_offset, ACC, H_DTYPE, ROUND_H, IS_RMS,
                           HAS_WEIGHT, HAS_BIAS, HAS_RESIDUAL, HAS_DROPOUT, STORE_H, STORE_STATS, BLOCK_M, BLOCK_N,
                               FUSED_SUMS)
    elif SINGLE_CHUNK:
        c = col0 + cols
        col_mask = c < col_end
        mask = row_mask[:, None] & col_mask[None, :]
        h = load_h(X, RES, SEED, rows64, c, mask, stride_x, stride_res, N, dropout_p,
                   ACC, H_DTYPE, HAS_RESIDUAL, HAS_DROPOUT, ROUND_H)
        if STORE_H:
            tl.store(H + rows64[:, None] * stride_h + c[None, :], h.to(H_DTYPE), mask=mask)
        if STATS == 1:  # STATS_MOMENTS
            if IS_RMS:
                tl.store(RSTD + moment_index, tl.sum(h * h, axis=1), mask=row_mask)
            else:
                width = col_end - col0
                seg_mean, seg_var = corrected_mean_var(h, mask, width, FUSED_SUMS)
                tl.store(MEAN + moment_index, seg_mean, mask=row_mask)
                tl.store(RSTD + moment_index, seg_var * width, mask=row_mask)
        else:  # STATS_GIVEN, STATS_MERGE
            normalize_store(h, mean, rstd, W, B, Y, rows64, c, col_mask, mask, stride_y, weight_offset,
                            ACC, IS_RMS, HAS_WEIGHT, HAS_BIAS)
    else:
        if STATS == 0 or STATS == 1:
            # Pass 1: statistics, chunk by chunk.
            count = tl.zeros([BLOCK_M], dtype=ACC)
            mean = tl.zeros([BLOCK_M], dtype=ACC)
            m2 = tl.zeros([BLOCK_M], dtype=ACC)  # Σ(x − mean)² for LayerNorm, Σx² for RMSNorm
            for start in tl.range(col0, col_end, BLOCK_N, num_stages=LOOP_STAGES):
                c = start + cols
                mask = row_mask[:, None] & (c < col_end)[None, :]
                h = load_h(X, RES, SEED, rows64, c, mask, stride_x, stride_res, N, dropout_p,
                           ACC, H_DTYPE, HAS_RESIDUAL, HAS_DROPOUT, ROUND_H)
                if STORE_H:
                    tl.store(H + rows64[:, None] * stride_h + c[None, :], h.to(H_DTYPE), mask=mask)
                if IS_RMS:
                    m2 += tl.sum(h * h, axis=1)
                else:
                    n_b = tl.minimum(col_end - start, BLOCK_N).to(ACC)
                    mean_b, var_b = corrected_mean_var(h, mask, n_b, FUSED_SUMS)
                    delta = mean_b - mean
                    total = count + n_b
                    mean += delta * (n_b / total)
                    m2 += var_b * n_b + delta * delta * (count * n_b / total)
                    count = total
        if STATS == 1:  # STATS_MOMENTS
            if not IS_RMS:
                tl.store(MEAN + moment_index, mean, mask=row_mask)
            tl.store(RSTD + moment_index, m2, mask=row_mask)
        else:
            if STATS == 0:  # STATS_COMPUTE
                rstd = inv_sqrt(row_mean(m2, N) + eps, ACC)
                if STORE_STATS:
                    if not IS_RMS:
                        tl.store(MEAN + rows64, mean, mask=row_mask)
                    tl.store(RSTD + rows64, rstd, mask=row_mask)
                if STORE_H:
                    tl.debug_barrier()  # pass 2 reads h back: make this program's stores visible to its threads
            # Pass 2: normalize.
            for start in tl.range(col0, col_end, BLOCK_N, num_stages=LOOP_STAGES):
                c = start + cols
                col_mask = c < col_end
                mask = row_mask[:, None] & col_mask[None, :]
                if STORE_H and STATS == 0:
                    h = tl.load(H + rows64[:, None] * stride_h + c[None, :], mask=mask, other=0.0).to(ACC)
                else:
                    h = load_h(X, RES, SEED, rows64, c, mask, stride_x, stride_res, N, dropout_p,
                               ACC, H_DTYPE, HAS_RESIDUAL, HAS_DROPOUT, ROUND_H)
                    if STORE_H:
                        tl.store(H + rows64[:, None] * stride_h + c[None, :], h.to(H_DTYPE), mask=mask)
                normalize_store(h, mean, rstd, W, B, Y, rows64, c, col_mask, mask, stride_y, weight_offset,
                                ACC, IS_RMS, HAS_WEIGHT, HAS_BIAS)


@triton.jit
def whole_row_tile(
    tile, X, RES, W, B, SEED, Y, H, MEAN, RSTD, stride_x, stride_res, stride_y, stride_h,
    M, N, eps, dropout_p, weight_offset,
    ACC: tl.constexpr, H_DTYPE: tl.constexpr, ROUND_H: tl.constexpr, IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    STORE_H: tl.constexpr, STORE_STATS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    FUSED_SUMS: tl.constexpr,
):
    """Rows [tile·BLOCK_M, (tile+1)·BLOCK_M), each whole in registers: h, its statistics, y — one read, one write."""
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows64 = rows.to(tl.int64)
    c = tl.arange(0, BLOCK_N)
    col_mask = c < N
    mask = row_mask[:, None] & col_mask[None, :]
    h = load_h(X, RES, SEED, rows64, c, mask, stride_x, stride_res, N, dropout_p,
               ACC, H_DTYPE, HAS_RESIDUAL, HAS_DROPOUT, ROUND_H)
    if STORE_H:
        tl.store(H + rows64[:, None] * stride_h + c[None, :], h.to(H_DTYPE), mask=mask)
    if IS_RMS:
        rstd = inv_sqrt(row_mean(tl.sum(h * h, axis=1), N) + eps, ACC)
        mean = tl.zeros_like(rstd)  # unused by RMSNorm
    else:
        mean, var = corrected_mean_var(h, mask, N, FUSED_SUMS)
        rstd = inv_sqrt(var + eps, ACC)
    if STORE_STATS:
        if not IS_RMS:
            tl.store(MEAN + rows64, mean, mask=row_mask)
        tl.store(RSTD + rows64, rstd, mask=row_mask)
    normalize_store(h, mean, rstd, W, B, Y, rows64, c, col_mask, mask, stride_y, weight_offset,
                    ACC, IS_RMS, HAS_WEIGHT, HAS_BIAS)


@triton.jit
def normalize_store(
    h, mean, rstd, W, B, Y, rows64, c, col_mask, mask, stride_y, weight_offset,
    ACC: tl.constexpr, IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """y = x̂ · (γ + offset) + β for one tile, stored in Y's dtype."""
    if IS_RMS:
        y = h * rstd[:, None]
    else:
        y = tl.where(mask, h - mean[:, None], 0.0) * rstd[:, None]
    if HAS_WEIGHT:
        y *= tl.load(W + c, mask=col_mask, other=0.0).to(ACC)[None, :] + weight_offset
    if HAS_BIAS:
        y += tl.load(B + c, mask=col_mask, other=0.0).to(ACC)[None, :]
    tl.store(Y + rows64[:, None] * stride_y + c[None, :], y.to(Y.dtype.element_ty), mask=mask)
