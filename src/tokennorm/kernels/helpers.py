"""Shared ``@triton.jit`` building blocks of the kernels: loading h, row statistics, normalization, casts.

Every kernel (rows, chunked, long rows, segment; forward and backward) is written from these, so each piece of
arithmetic exists once and is tested once: the interpreter runs the same helpers the GPU build compiles.

Statistics are float32 (float64 for float64 inputs): the accumulation dtype ``ACC``. LayerNorm's mean and
variance come from the corrected two-pass algorithm over the values in registers (:func:`centred_moments`), chosen
over a single reduction of sums shifted by the row's first element because that shift loses accuracy when
the first element is far from the mean (up to log2(N) bits on a row whose first channel holds a "massive
activation"; benchmarks/RESULTS.md, "Statistics: accuracy first").
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

# Triton's interpreter (TRITON_INTERPRET=1, read once like triton.jit itself reads it) runs the kernels on the
# CPU. Two of its behaviours differ from GPU code generation, and the kernels route around both:
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
# * it truncates float32 → bfloat16 where GPUs round to nearest even (Triton 3.9): cast() rounds explicitly;
EXPLICIT_RTNE: tl.constexpr = tl.constexpr(INTERPRETING)
# * it runs a custom tl.reduce combine element by element in Python (minutes on a long row): pair_sums() runs
#   two tl.sum there instead of one two-operand reduction (same sums; a test runs both forms).
FUSED_SUMS: tl.constexpr = tl.constexpr(not INTERPRETING)
# * it cannot call libdevice (no extern functions in Triton 3.9's interpreter): tanh() computes it there from exp
#   (float64, then rounded), the GPU build calls libdevice's tanh.
LIBDEVICE_TANH: tl.constexpr = tl.constexpr(not INTERPRETING)


@triton.jit
def cast(x, DTYPE: tl.constexpr):
    """``x`` converted to DTYPE, rounded to nearest even — bit for bit what the GPU and torch give.

    bfloat16 goes through float32 (as torch converts float64 → bfloat16); under the interpreter the rounding is
    done on the float32 bits, since its own cast truncates.
    """
    if DTYPE == tl.bfloat16:
        x32 = x.to(tl.float32)
        if EXPLICIT_RTNE:
            bits = x32.to(tl.uint32, bitcast=True)
            bits = bits + (((bits >> 16) & 1) + 0x7FFF)  # carries into the exponent: overflow to inf is correct
            rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
            return tl.where(x32 == x32, rounded, x32.to(tl.bfloat16))  # NaN stays NaN
        else:
            return x32.to(tl.bfloat16)
    else:
        return x.to(DTYPE)


@triton.jit
def tanh(x):
    """tanh(x) in x's dtype (float32 or float64).

    GPU builds call libdevice's ``__nv_tanhf`` / ``__nv_tanh`` — the functions torch's own CUDA ``tanh`` runs
    (≤ 2 ulp in float32 by CUDA's documentation). Triton's interpreter cannot call libdevice; there it is Cephes'
    ``tanh`` in float64 (a rational function below |x| = 0.625, 1 − 2/(e^{2|x|} + 1) above: ~1e-16 relative),
    rounded to x's dtype: within ½ ulp + 1e-16 relative of tanh in float32 (benchmarks/RESULTS.md, "DyT's tanh").
    NaN stays NaN; ±inf gives ±1.
    """
    if LIBDEVICE_TANH:
        return libdevice.tanh(x)
    else:
        return cephes_tanh(x.to(tl.float64)).to(x.dtype)


@triton.jit
def cephes_tanh(x):
    """tanh of a float64 tensor: Cephes' ``tanh`` (S. L. Moshier), the interpreter's stand-in for libdevice's."""
    ax = tl.abs(x)
    s = tl.minimum(x * x, 1.0)  # (the rational branch serves |x| ≤ 0.625: no inf / inf beyond)
    p = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s - 1.61468768441708447952e3
    q = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s + 4.84406305325125486048e3
    small = x * (1.0 + s * (p / q))  # (x + x·s·p/q in Cephes: that turns tanh(−0) into +0)
    e = tl.exp(2.0 * tl.minimum(ax, 20.0))  # tanh(20) is 1 in float64: no overflow
    large = 1.0 - 2.0 / (e + 1.0)
    return tl.where(ax > 0.625, tl.where(x < 0, -large, large), small)


@triton.jit
def full_float(value, value_lo, ACC: tl.constexpr):
    """A float argument in ACC. Triton passes float arguments as float32: float64 kernels add back the float32
    remainder ``value_lo`` (``plan.float32_remainder``)."""
    if ACC == tl.float64:
        return tl.cast(value, tl.float64) + tl.cast(value_lo, tl.float64)
    else:
        return tl.cast(value, tl.float32)


@triton.jit
def full_eps(eps, eps_lo, ACC: tl.constexpr):
    """ε in ACC (:func:`full_float`; without the remainder, 1e-5 is off by 2.5e-9 relative — measured as 4e-9 in
    float64 LayerNorm)."""
    return full_float(eps, eps_lo, ACC)


@triton.jit
def reciprocal(n, ACC: tl.constexpr):
    """1/n correctly rounded, once per program: rows multiply their sums by it instead of dividing.

    A constant row stays exact with it (its centred sums are n·δ and n·δ² with δ a few ulps, and
    (n·δ)·fl(1/n) rounds back to δ; checked on 3,900 constant rows), and no per-row division is left (``/`` is
    approximate on NVIDIA GPUs, and ``div_rn`` per row and thread was a large part of the first kernels'
    instructions per element at N = 1K).
    """
    if ACC == tl.float64:
        return 1.0 / tl.cast(n, tl.float64)  # div.rn.f64: correctly rounded already
    else:
        return tl.div_rn(1.0, tl.cast(n, tl.float32))


@triton.jit
def inv_sqrt(v, ACC: tl.constexpr):
    """1/sqrt(v), per row.

    float32: the hardware reciprocal square root (≤ 2^-22.9 relative error, the ``rsqrtf`` torch's own CUDA
    norms use). float64: correctly rounded sqrt and division (approximate ones were measured off by 4e-9).
    """
    if ACC == tl.float64:
        return 1.0 / tl.sqrt(v)
    else:
        return tl.math.rsqrt(v)


@triton.jit
def var_rstd(var, eps, ACC: tl.constexpr):
    """LayerNorm's 1/sqrt(var + ε); NaN where the variance overflowed.

    With |x| beyond ~1e19 (float32) Σ(x − mean)² overflows: rstd would be 0 (or 1/sqrt(ε) after inf − inf) and
    y a finite, wrong row. torch's LayerNorm gives NaN there; so does this: var is inf or NaN then. (An inf or
    NaN input already gives a NaN mean.)
    RMSNorm keeps 1/sqrt(inf) = 0, as torch's does: an inf input must give zeros and NaN at the inf.
    """
    return tl.where(var == float("inf"), float("nan"), inv_sqrt(var + eps, ACC))


@triton.jit
def dropout_keep(SEED, offsets, dropout_p):
    """Which elements dropout keeps: Philox on the element's linear index (row · N + column), so backward
    regenerates the mask and every tiling draws the same one."""
    return tl.rand(tl.load(SEED), offsets) >= dropout_p


@triton.jit
def load_modulation(PTR, mod_rows64, cols, mask, stride, ACC: tl.constexpr):
    """A [rows, cols] tile of an AdaLN modulation (shift, scale or gate) in ACC: tile row i reads row
    ``mod_rows64[i]`` of PTR — its sample (row // tokens) for a [B, C] modulation, the row itself for a
    per-token one. A [B, C] vector is read by every token of its sample: from L2, not HBM."""
    return tl.load(PTR + mod_rows64[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def load_h(
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
    ACC: tl.constexpr,
    H_DTYPE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    HAS_GATE: tl.constexpr,
    ROUND_H: tl.constexpr,
    EVICT: tl.constexpr,
):
    """h = residual + gate ⊙ dropout(x) for a [rows, cols] tile in ACC; 0 outside ``mask``.

    HAS_GATE: AdaLN-Zero's gate, a modulation read through ``mod_rows64`` (:func:`load_modulation`).
    ROUND_H: h is stored in a narrower dtype (e.g. bf16), and the norm sees h as stored, exactly as the unfused
    ``norm(residual + x)`` would. EVICT: the loads' L2 eviction policy ("" for the default).
    """
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICT).to(ACC)
    if HAS_DROPOUT:
        keep = dropout_keep(SEED, rows64[:, None] * N + cols[None, :], dropout_p)
        x = tl.where(keep, x / (1.0 - dropout_p), 0.0)
    if HAS_GATE:
        x *= load_modulation(GATE, mod_rows64, cols, mask, stride_gate, ACC)
    if HAS_RESIDUAL:
        x += tl.load(
            RES + rows64[:, None] * stride_res + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICT
        ).to(ACC)
    if ROUND_H:
        x = cast(x, H_DTYPE).to(ACC)
    return x


@triton.jit
def load_vector(PTR, cols, col_mask, ACC: tl.constexpr, OFFSET: tl.constexpr):
    """A [cols] parameter vector (γ or β) in ACC, plus a compile-time OFFSET (1.0 for Gemma's zero-centred
    weight; 0.0 adds nothing)."""
    v = tl.load(PTR + cols, mask=col_mask, other=0.0).to(ACC)
    if OFFSET != 0.0:
        v += OFFSET
    return v


@triton.jit
def add_pair(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def pair_sums(a, b):
    """(Σa, Σb) over axis 1: one two-operand reduction on GPUs — one round of shuffles and barriers instead of
    two — and two tl.sum under the interpreter (see FUSED_SUMS)."""
    if FUSED_SUMS:
        return tl.reduce((a, b), 1, add_pair)
    else:
        return tl.sum(a, axis=1), tl.sum(b, axis=1)


@triton.jit
def centred_moments(h, mask, inv_n):
    """Per-row statistics of a [rows, cols] tile by the corrected two-pass algorithm: (mean0, correction, var,
    h − mean), where mean = mean0 + correction (kept apart, the pair is the mean to about twice float32's
    precision) and h − mean is 0 outside ``mask``.

    The rounded mean's error is measured on the centred values and removed; Σ(h − mean)² never cancels. A
    constant row gets its value as mean and var == 0 exactly (y == β, as torch gives), and a row with a huge
    outlier stays at a few ulps (tests/kernels/test_numerics.py). The centred values are returned corrected
    rather than recomputed from h, so h is dead after the first pass.
    """
    mean0 = tl.sum(h, axis=1) * inv_n
    centred = tl.where(mask, h - mean0[:, None], 0.0)
    sum_d, sum_d2 = pair_sums(centred, centred * centred)
    correction = sum_d * inv_n
    # Rounding can take a zero variance a hair below 0; an overflowed one is inf − inf = NaN and must stay NaN
    # (see var_rstd), so the clamp propagates NaN.
    var = tl.maximum(sum_d2 * inv_n - correction * correction, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return mean0, correction, var, centred - correction[:, None]


@triton.jit
def row_stats(h, mask, inv_n, eps, ACC: tl.constexpr, IS_RMS: tl.constexpr):
    """(mean, rstd, h − mean) per row of a tile holding whole rows. RMSNorm: mean is 0, rstd = 1/sqrt(mean(h²)
    + ε), and h itself is returned."""
    if IS_RMS:
        rstd = inv_sqrt(tl.sum(h * h, axis=1) * inv_n + eps, ACC)
        return tl.zeros_like(rstd), rstd, h
    else:
        mean0, correction, var, centred = centred_moments(h, mask, inv_n)
        return mean0 + correction, var_rstd(var, eps, ACC), centred


@triton.jit
def segment_moments(h, mask, count, inv_count, IS_RMS: tl.constexpr):
    """Moments of a piece of each row (``count`` elements of the tile, ``inv_count`` = :func:`reciprocal` of
    it): (mean_hi, mean_lo, M2) with mean = mean_hi + mean_lo and M2 = Σ(h − mean)² for LayerNorm; (0, 0, Σh²)
    for RMSNorm. Pieces merge with :func:`merge_moments`."""
    if IS_RMS:
        m2 = tl.sum(h * h, axis=1)
        return tl.zeros_like(m2), tl.zeros_like(m2), m2
    else:
        mean0, correction, var, _ = centred_moments(h, mask, inv_count)
        return mean0, correction, var * count


@triton.jit
def chan_update(count, mean, m2, count_b, mean_b, m2_b):
    """Moments of the union of two pieces (Chan, Golub & LeVeque): no E[x²] − E[x]² cancellation. The first
    piece is taken as it is (count_b / total would be exactly 1 only with a correctly rounded division)."""
    total = count + count_b
    delta = mean_b - mean
    frac = tl.where(count == 0, 1.0, count_b / total)
    return total, mean + delta * frac, m2 + m2_b + delta * delta * (count * frac)


@triton.jit
def merge_moments(seg_hi, seg_lo, seg_m2, piece, count, valid, inv_n, eps, ACC: tl.constexpr, IS_RMS: tl.constexpr):
    """(mean, rstd) of rows from their pieces' moments, [rows, pieces] each (``piece`` [pieces] the index,
    ``count`` [pieces] its elements, ``valid`` [rows, pieces] the real ones): tokennorm.moments' merge — Chan's
    parallel form shifted by the first piece's mean — computed alike by every program that needs it.

    The pieces' means come as hi + lo pairs (:func:`segment_moments`): their differences, which the merge is
    made of, are then exact to float32 roundoff of the differences themselves, also far off centre (a mean of
    1e4 with σ = 1 rounded to float32 would cost the variance ~250 ulps).
    """
    if IS_RMS:
        rstd = inv_sqrt(tl.sum(tl.where(valid, seg_m2, 0.0), axis=1) * inv_n + eps, ACC)
        return tl.zeros_like(rstd), rstd
    else:
        shift = tl.sum(tl.where(valid & (piece == 0)[None, :], seg_hi, 0.0), axis=1)
        d = tl.where(valid, (seg_hi - shift[:, None]) + seg_lo, 0.0)
        delta = tl.sum(count[None, :] * d, axis=1) * inv_n
        dd = d - delta[:, None]
        m2 = tl.sum(tl.where(valid, seg_m2 + count[None, :] * dd * dd, 0.0), axis=1)
        return shift + delta, var_rstd(m2 * inv_n, eps, ACC)


@triton.jit
def centre(h, mean, IS_RMS: tl.constexpr):
    """h − mean per row (RMSNorm: h)."""
    if IS_RMS:
        return h
    else:
        return h - mean[:, None]


@triton.jit
def scale_shift(centred, rstd, w, b, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """y = (h − mean) · rstd · w + b for a [rows, cols] tile (w already holds γ + offset). Outside the row the
    values are not zeroed: every store is masked."""
    y = centred * rstd[:, None]
    if HAS_WEIGHT:
        y *= w[None, :]
    if HAS_BIAS:
        y += b[None, :]
    return y


@triton.jit
def modulate(
    n, SHIFT, SCALE, mod_rows64, cols, mask, stride_shift, stride_scale, ACC: tl.constexpr, HAS_MOD: tl.constexpr
):
    """AdaLN's y = n · (1 + scale) + shift for a [rows, cols] tile of n = Norm(h)·w + b (n itself without
    HAS_MOD); the modulations are read through ``mod_rows64`` (:func:`load_modulation`)."""
    if HAS_MOD:
        scale = load_modulation(SCALE, mod_rows64, cols, mask, stride_scale, ACC)
        shift = load_modulation(SHIFT, mod_rows64, cols, mask, stride_shift, ACC)
        n = n * (1.0 + scale) + shift
    return n


@triton.jit
def store_tile(PTR, rows64, stride, cols, mask, value):
    """Store a [rows, cols] tile in PTR's dtype, rounded to nearest even (see cast)."""
    tl.store(PTR + rows64[:, None] * stride + cols[None, :], cast(value, PTR.dtype.element_ty), mask=mask)


@triton.jit
def load_grad_tile(
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
    ACC: tl.constexpr,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_MOD: tl.constexpr,
    EVICT: tl.constexpr,
):
    """Backward: dy, x̂ (recomputed from h and the saved statistics), g = dy · (1 + scale) · w and rstd for one
    tile, in ACC (``one_plus_scale``: AdaLN's [rows, cols] 1 + scale, used with HAS_MOD)."""
    dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICT).to(ACC)
    h = tl.load(H + rows64[:, None] * stride_h + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICT).to(ACC)
    rstd = tl.load(RSTD + rows64, mask=row_mask, other=0.0).to(ACC)
    if IS_RMS:
        xhat = h * rstd[:, None]
    else:
        mean = tl.load(MEAN + rows64, mask=row_mask, other=0.0).to(ACC)
        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
    g = dy
    if HAS_MOD:
        g = g * one_plus_scale
    if HAS_WEIGHT:
        g = g * w[None, :]
    return dy, xhat, g, rstd


@triton.jit
def grad_sums(xhat, g, IS_RMS: tl.constexpr):
    """Per row (Σ g·x̂, Σ g) of a tile, one fused reduction (RMSNorm: Σ g is not needed and is 0)."""
    if IS_RMS:
        sum_gx = tl.sum(g * xhat, axis=1)
        return sum_gx, tl.zeros_like(sum_gx)
    else:
        return pair_sums(g * xhat, g)


@triton.jit
def norm_input_grad(xhat, g, rstd, mean_gx, mean_g, IS_RMS: tl.constexpr):
    """The norm's input gradient per [rows, cols] tile: rstd · (g − mean(g) − x̂ · mean(g·x̂)) (RMSNorm: no
    mean(g)), with g = dy · w and the row means given per row."""
    if IS_RMS:
        return rstd[:, None] * (g - xhat * mean_gx[:, None])
    else:
        return rstd[:, None] * (g - mean_g[:, None] - xhat * mean_gx[:, None])


@triton.jit
def store_dx(
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
    cols,
    mask,
    stride_dh_in,
    stride_dx,
    stride_dres,
    N,
    dropout_p,
    ACC: tl.constexpr,
    IS_RMS: tl.constexpr,
    HAS_DH_IN: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    STORE_DRES: tl.constexpr,
    HAS_GATE: tl.constexpr,
):
    """dh = rstd · (g − mean(g) − x̂ · mean(g·x̂)) (RMSNorm: no mean(g)), plus the h output's gradient (pre-LN);
    d(residual) = dh is stored when asked; dx = gate ⊙ dh (AdaLN-Zero's ``gate`` tile, with HAS_GATE) through the
    regenerated dropout mask. Returns dh (AdaLN's dgate is Σ dh ⊙ x)."""
    dh = norm_input_grad(xhat, g, rstd, mean_gx, mean_g, IS_RMS)
    if HAS_DH_IN:
        dh += tl.load(DH_IN + rows64[:, None] * stride_dh_in + cols[None, :], mask=mask, other=0.0).to(ACC)
    if STORE_DRES:
        store_tile(DRES, rows64, stride_dres, cols, mask, dh)
    dx = dh
    if HAS_GATE:
        dx = dx * gate
    if HAS_DROPOUT:
        keep = dropout_keep(SEED, rows64[:, None] * N + cols[None, :], dropout_p)
        dx = tl.where(keep, dx / (1.0 - dropout_p), 0.0)
    store_tile(DX, rows64, stride_dx, cols, mask, dx)
    return dh


@triton.jit
def normalized_affine(xhat, w, b, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """n = x̂ · w + b for a [rows, cols] tile (AdaLN's dscale = Σ dy · n)."""
    n = xhat
    if HAS_WEIGHT:
        n = n * w[None, :]
    if HAS_BIAS:
        n = n + b[None, :]
    return n


@triton.jit
def store_modulation_grads(
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
    ACC: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_MOD: tl.constexpr,
    HAS_GATE: tl.constexpr,
):
    """AdaLN's per-token gradients of a tile: dscale = dy · n (n = x̂ · w + b) and dgate = dh ⊙ x, stored in
    [M, N] DSCALE / DGATE (per-sample modulations sum them over each sample's tokens afterwards)."""
    if HAS_MOD:
        store_tile(DSCALE, rows64, N, cols, mask, dy * normalized_affine(xhat, w, b, HAS_WEIGHT, HAS_BIAS))
    if HAS_GATE:
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
        store_tile(DGATE, rows64, N, cols, mask, dh * x)


@triton.jit
def column_sums(tile, BLOCK_M: tl.constexpr):
    """Σ over the rows of a [BLOCK_M, cols] tile (a reshape when there is one row: no size-1 reduction)."""
    if BLOCK_M == 1:
        return tl.reshape(tile, [tile.shape[1]])
    else:
        return tl.sum(tile, axis=0)


# Chunk walks over a column range [col0, col_end) of a few rows: the chunked kernels (the whole row) and the
# segment kernels (one segment of it) are these loops.


@triton.jit
def walk_moments(
    X,
    RES,
    SEED,
    GATE,
    H,
    rows64,
    mod_rows64,
    row_mask,
    col0,
    col_end,
    stride_x,
    stride_res,
    stride_gate,
    stride_h,
    N,
    dropout_p,
    ACC: tl.constexpr,
    H_DTYPE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    HAS_GATE: tl.constexpr,
    STORE_H: tl.constexpr,
    ROUND_H: tl.constexpr,
    IS_RMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    EVICT: tl.constexpr,
):
    """(mean, M2) per row of h over columns [col0, col_end), chunk by chunk — each chunk's corrected two-pass
    moments merged with Chan's formula (RMSNorm: (0, Σh²)). Stores h with STORE_H.

    The chunks' moments are taken of h shifted by the first chunk's mean, so the means Chan's formula subtracts
    are small numbers known to float32 precision, also for rows far off centre."""
    cols = tl.arange(0, BLOCK_N)
    count = tl.zeros(row_mask.shape, dtype=ACC)
    mean = tl.zeros(row_mask.shape, dtype=ACC)  # relative to shift
    m2 = tl.zeros(row_mask.shape, dtype=ACC)
    shift = tl.zeros(row_mask.shape, dtype=ACC)
    # 1/width of a chunk, correctly rounded: exact for the full chunks (a power of two), once for the last one
    tail = col_end - col0 - (tl.cdiv(col_end - col0, BLOCK_N) - 1) * BLOCK_N
    inv_tail = reciprocal(tail, ACC)
    for start in range(col0, col_end, BLOCK_N):
        c = start + cols
        mask = row_mask[:, None] & (c < col_end)[None, :]
        h = load_h(
            X,
            RES,
            SEED,
            GATE,
            rows64,
            mod_rows64,
            c,
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
            EVICT,
        )
        if STORE_H:
            store_tile(H, rows64, stride_h, c, mask, h)
        if IS_RMS:
            m2 += tl.sum(h * h, axis=1)
        else:
            full = col_end - start >= BLOCK_N
            width = tl.where(full, BLOCK_N, tail).to(ACC)
            shifted = tl.where(mask, h - shift[:, None], 0.0)
            hi, lo, m2_b = segment_moments(shifted, mask, width, tl.where(full, 1.0 / BLOCK_N, inv_tail), IS_RMS)
            first = count == 0
            shift = tl.where(first, hi, shift)  # the first chunk: its mean becomes the shift (and lo its mean)
            count, mean, m2 = chan_update(count, mean, m2, width, hi * (1 - first.to(ACC)) + lo, m2_b)
    mean = shift + mean
    return mean, m2


@triton.jit
def walk_normalize(
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
    col0,
    col_end,
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
    ACC: tl.constexpr,
    H_DTYPE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    HAS_GATE: tl.constexpr,
    FROM_H: tl.constexpr,
    STORE_H: tl.constexpr,
    ROUND_H: tl.constexpr,
    IS_RMS: tl.constexpr,
    WEIGHT_OFFSET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_MOD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    EVICT: tl.constexpr,
):
    """y over columns [col0, col_end) with the rows' statistics given: h read back from H (FROM_H) or
    recomputed from x (and the gated residual), stored with STORE_H; modulated with HAS_MOD."""
    cols = tl.arange(0, BLOCK_N)
    for start in range(col0, col_end, BLOCK_N):
        c = start + cols
        col_mask = c < col_end
        mask = row_mask[:, None] & col_mask[None, :]
        if FROM_H:
            h = tl.load(H + rows64[:, None] * stride_h + c[None, :], mask=mask, other=0.0, eviction_policy=EVICT).to(
                ACC
            )
        else:
            h = load_h(
                X,
                RES,
                SEED,
                GATE,
                rows64,
                mod_rows64,
                c,
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
                EVICT,
            )
            if STORE_H:
                store_tile(H, rows64, stride_h, c, mask, h)
        w = load_vector(W, c, col_mask, ACC, WEIGHT_OFFSET) if HAS_WEIGHT else None
        b = load_vector(B, c, col_mask, ACC, 0.0) if HAS_BIAS else None
        n = scale_shift(centre(h, mean, IS_RMS), rstd, w, b, HAS_WEIGHT, HAS_BIAS)
        store_tile(
            Y,
            rows64,
            stride_y,
            c,
            mask,
            modulate(n, SHIFT, SCALE, mod_rows64, c, mask, stride_shift, stride_scale, ACC, HAS_MOD),
        )
