"""Long rows: a row too long for one program's registers stays on chip, split over co-resident programs.

Each row is cut into ``segments`` column segments of ``BLOCK_N`` elements; one program holds one segment in
registers. The programs of a row exchange their segment's partial results through global memory — forward
(mean as hi + lo, M2) (RMSNorm: Σh²), backward (Σ g·x̂, Σ g) — wait until all of the row's segments have
arrived (a per-row arrival counter), merge them (forward: Chan's parallel form, as ``tokennorm.moments``; backward: the
sums) and finish the segment they still hold: y, or dx. HBM sees each input byte once at any row length.

Work assignment and deadlock freedom (``EXCHANGE == "cooperative"``). A GPU gives no guarantee that the
programs of a launch run at the same time, and a program spinning on a counter never yields its SM. So a
program does not take its work from its program id: it takes a ticket from an atomic counter when it starts
(SYNC[0]); ticket t is segment t % segments of row group t // segments, and the group's programs take rows
g, g + groups, g + 2·groups, ... in lockstep. Then:

* a program only waits for the other programs of its own group (same rows, other segments);
* tickets are handed out in start order, so every group but the newest has all of its ``segments`` programs
  started — they run to completion without waiting on anything else and then leave their SMs;
* the newest group waits only for tickets not yet taken; they are taken by the next programs to start, which
  start as soon as any slot frees — and with ``segments`` ≤ the resident capacity (programs per SM × SMs,
  which the plan guarantees: ``config.long_rows_fit``, with the programs per SM that compile_check verifies
  from the compiled registers) the newest group cannot fill the machine, so some slot always frees.

So no program waits for a program that cannot start. (A program id would not do: the hardware may run program
200 while program 3, whose segment program 200 needs, waits for a free SM.) What remains assumed is what every
cooperative kernel assumes: the other kernels holding SMs finish. Two of these launches running at the same
time on different streams are safe while each row needs at most half the machine (their two newest groups
cannot hold every slot); beyond that (the backward at N > 540K on an H100: 8K-element segments) a second
concurrent long-row launch could hold the slots the first one's newest group needs.

Memory ordering: each program writes its partials, ``tl.debug_barrier()`` orders all its threads' writes
before its arrival, which is an ``acq_rel`` atomic at GPU scope; the waiters poll with ``acquire`` atomics and
read the partials with volatile loads (L1 bypassed). Counters start at zero per launch (the launcher allocates
them zeroed, so calls and CUDA-graph replays never share state).

Triton's interpreter runs programs one after another, so a waiting program would wait forever there: the
interpreter (and compile_check, and the tests) run the same kernel as two launches, ``"publish"`` (partials
only) then ``"finish"`` (re-load the segment, merge, finish), with the same jit helpers and arithmetic; the
cooperative launch itself is covered by GPU tests.
"""

import triton
import triton.language as tl

from tokennorm.kernels.helpers import (
    centre,
    full_eps,
    grad_sums,
    load_grad_tile,
    load_h,
    load_modulation,
    load_vector,
    merge_moments,
    modulate,
    reciprocal,
    scale_shift,
    segment_moments,
    store_dx,
    store_modulation_grads,
    store_tile,
)


@triton.jit
def take_ticket(SYNC, EXCHANGE: tl.constexpr):
    """This program's work item: from the atomic ticket counter (cooperative), else its program id."""
    if EXCHANGE == "cooperative":
        return tl.atomic_add(SYNC, 1, sem="relaxed", scope="gpu")
    else:
        return tl.program_id(0)


@triton.jit
def wait_for_row(SYNC, row, segments):
    """Arrive at the row's counter, then wait until all ``segments`` programs of the row have arrived."""
    tl.debug_barrier()  # all of this program's partial writes are issued before it arrives
    arrived = tl.atomic_add(SYNC + 1 + row, 1, sem="acq_rel", scope="gpu") + 1
    while arrived < segments:
        arrived = tl.atomic_add(SYNC + 1 + row, 0, sem="acquire", scope="gpu")


@triton.jit
def load_partial(PARTIALS, slot, valid, VOLATILE: tl.constexpr):
    """One value of each of the row's segments' partials (0 for the slots past the last segment); volatile
    (L1 bypassed) when other programs of this launch wrote them."""
    return tl.load(PARTIALS + slot, mask=valid, other=0.0, volatile=VOLATILE)


@triton.jit
def long_rows_forward_kernel(
    X,
    RES,
    W,
    B,
    SEED,
    Y,
    H,
    MEAN,
    RSTD,
    PARTIALS,
    SYNC,
    stride_x,
    stride_res,
    stride_y,
    stride_h,
    M,
    N,
    groups,
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
    EXCHANGE: tl.constexpr,
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
    S_BLOCK: tl.constexpr,
):
    """Grid: groups × segments programs. PARTIALS [M, segments, 3] (mean hi, mean lo, M2) in the accumulation
    dtype; SYNC [1 + M] int32 zeros."""
    ACC: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    H_DTYPE: tl.constexpr = H.dtype.element_ty if STORE_H else ACC
    ROUND_H: tl.constexpr = STORE_H and H_DTYPE != ACC
    PUBLISH: tl.constexpr = EXCHANGE != "finish"
    FINISH: tl.constexpr = EXCHANGE != "publish"
    eps = full_eps(eps, eps_lo, ACC)
    segments = tl.cdiv(N, BLOCK_N)
    ticket = take_ticket(SYNC, EXCHANGE)
    seg = ticket % segments
    group = ticket // segments
    col0 = seg * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    width = tl.minimum(N - col0, BLOCK_N)
    inv_width = reciprocal(width, ACC)
    inv_n = reciprocal(N, ACC)
    w = load_vector(W, cols, col_mask, ACC, WEIGHT_OFFSET) if HAS_WEIGHT and FINISH else None
    b = load_vector(B, cols, col_mask, ACC, 0.0) if HAS_BIAS and FINISH else None
    for row in range(group, M, groups):
        rows64 = tl.full([1], row, tl.int64)
        mod_rows64 = rows64 // tokens
        mask = (rows64 >= 0)[:, None] & col_mask[None, :]
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
        if PUBLISH:
            if STORE_H:
                store_tile(H, rows64, stride_h, cols, mask, h)
            mean_hi, mean_lo, seg_m2 = segment_moments(h, mask, width.to(ACC), inv_width, IS_RMS)
            slot = (rows64 * segments + seg) * 3
            tl.store(PARTIALS + slot, mean_hi)
            tl.store(PARTIALS + slot + 1, mean_lo)
            tl.store(PARTIALS + slot + 2, seg_m2)
        if EXCHANGE == "cooperative":
            wait_for_row(SYNC, row, segments)
        if FINISH:
            piece = tl.arange(0, S_BLOCK)
            valid = (piece < segments)[None, :] & (rows64 >= 0)[:, None]
            slot = (rows64[:, None] * segments + piece[None, :]) * 3
            mean_hi = load_partial(PARTIALS, slot, valid, EXCHANGE == "cooperative")
            mean_lo = load_partial(PARTIALS, slot + 1, valid, EXCHANGE == "cooperative")
            seg_m2 = load_partial(PARTIALS, slot + 2, valid, EXCHANGE == "cooperative")
            count = tl.where(piece < segments - 1, BLOCK_N, N - (segments - 1) * BLOCK_N).to(ACC)
            mean, rstd = merge_moments(mean_hi, mean_lo, seg_m2, piece, count, valid, inv_n, eps, ACC, IS_RMS)
            if STORE_STATS:
                if seg == 0:
                    if not IS_RMS:
                        tl.store(MEAN + rows64, mean)
                    tl.store(RSTD + rows64, rstd)
            n = scale_shift(centre(h, mean, IS_RMS), rstd, w, b, HAS_WEIGHT, HAS_BIAS)
            store_tile(
                Y,
                rows64,
                stride_y,
                cols,
                mask,
                modulate(n, SHIFT, SCALE, mod_rows64, cols, mask, stride_shift, stride_scale, ACC, HAS_MOD),
            )


@triton.jit
def long_rows_backward_kernel(
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
    PARTIALS,
    SYNC,
    stride_dy,
    stride_h,
    stride_dh_in,
    stride_dx,
    stride_dres,
    M,
    N,
    groups,
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
    EXCHANGE: tl.constexpr,
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
    BLOCK_N: tl.constexpr,
    S_BLOCK: tl.constexpr,
):
    """Grid: groups × segments programs; program (group g, segment s) writes columns s of partial row g of
    DW_PARTIAL/DB_PARTIAL [groups, N]. PARTIALS [M, segments, 2]; SYNC [1 + M] int32 zeros. AdaLN's dscale and
    dgate are stored per token ([M, N] float32, DSCALE/DGATE), summed over a sample's tokens afterwards."""
    ACC: tl.constexpr = tl.float64 if H.dtype.element_ty == tl.float64 else tl.float32
    PUBLISH: tl.constexpr = EXCHANGE != "finish"
    FINISH: tl.constexpr = EXCHANGE != "publish"
    segments = tl.cdiv(N, BLOCK_N)
    ticket = take_ticket(SYNC, EXCHANGE)
    seg = ticket % segments
    group = ticket // segments
    cols = seg * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    inv_n = reciprocal(N, ACC)
    w = load_vector(W, cols, col_mask, ACC, WEIGHT_OFFSET) if HAS_WEIGHT else None
    b = load_vector(B, cols, col_mask, ACC, 0.0) if HAS_MOD and HAS_BIAS else None
    dw = tl.zeros([1, BLOCK_N], dtype=ACC)
    db = tl.zeros([1, BLOCK_N], dtype=ACC)
    for row in range(group, M, groups):
        rows64 = tl.full([1], row, tl.int64)
        mod_rows64 = rows64 // tokens
        row_mask = rows64 >= 0
        mask = row_mask[:, None] & col_mask[None, :]
        one_plus_scale = 1.0 + load_modulation(SCALE, mod_rows64, cols, mask, stride_scale, ACC) if HAS_MOD else None
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
        if PUBLISH:
            sum_gx, sum_g = grad_sums(xhat, g, IS_RMS)
            slot = (rows64 * segments + seg) * 2
            tl.store(PARTIALS + slot, sum_gx)
            tl.store(PARTIALS + slot + 1, sum_g)
        if EXCHANGE == "cooperative":
            wait_for_row(SYNC, row, segments)
        if FINISH:
            piece = tl.arange(0, S_BLOCK)
            valid = (piece < segments)[None, :] & row_mask[:, None]
            slot = (rows64[:, None] * segments + piece[None, :]) * 2
            seg_gx = load_partial(PARTIALS, slot, valid, EXCHANGE == "cooperative")
            seg_g = load_partial(PARTIALS, slot + 1, valid, EXCHANGE == "cooperative")
            gate = load_modulation(GATE, mod_rows64, cols, mask, stride_gate, ACC) if HAS_GATE else None
            dh = store_dx(
                dy,
                xhat,
                g,
                rstd,
                tl.sum(seg_gx, axis=1) * inv_n,
                tl.sum(seg_g, axis=1) * inv_n,
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
            dn = dy * one_plus_scale if HAS_MOD else dy  # the gradient of Norm(h)·w + b
            if COMPUTE_DW:
                dw += dn * xhat
            if COMPUTE_DB:
                db += dn
    if FINISH:
        partial = group.to(tl.int64) * N + cols
        if COMPUTE_DW:
            tl.store(DW_PARTIAL + partial, tl.reshape(dw, [BLOCK_N]), mask=col_mask)
        if COMPUTE_DB:
            tl.store(DB_PARTIAL + partial, tl.reshape(db, [BLOCK_N]), mask=col_mask)
