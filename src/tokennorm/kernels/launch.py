"""Launchers: allocate outputs, pick a config, launch. No autograd and no argument checking here.

Kernels are launched through :class:`~tokennorm.kernels.launcher.CachedLauncher`: from a per-specialization
cache in eager mode, through ``torch.library.wrap_triton`` while torch.compile traces. Inputs are [M, N] views
whose last stride is 1.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from tokennorm.kernels.config import (
    TileConfig, backward_config, backward_programs, cdiv, forward_config, pow2, segment_width, sm_count,
)
from tokennorm.kernels.launcher import CachedLauncher
from tokennorm.kernels.norm_bwd import DOTS_COMPUTE, DOTS_GIVEN, DOTS_SEGMENTS, DOTS_SUMS, norm_bwd_kernel
from tokennorm.kernels.norm_fwd import STATS_COMPUTE, STATS_GIVEN, STATS_MERGE, STATS_MOMENTS, norm_fwd_kernel

# Paired row sums as one reduction on GPUs; two under Triton's interpreter (see norm_fwd.row_sums). Read once,
# like triton.jit itself reads TRITON_INTERPRET when the kernels are defined.
FUSED_SUMS = os.environ.get("TRITON_INTERPRET", "0") != "1"

# Wrapped once, launched as WRAPPED[grid](...): cached launches in eager mode, wrap_triton under torch.compile.
_norm_fwd_kernel = CachedLauncher(norm_fwd_kernel)
_norm_bwd_kernel = CachedLauncher(norm_bwd_kernel)



@functools.lru_cache(maxsize=64)
def _float32_remainder(value: float) -> float:
    """value − float32(value): Triton passes float arguments as float32, so float64 kernels add this back."""
    return value - struct.unpack("f", struct.pack("f", value))[0]


def _empty(device: torch.device, dtype: torch.dtype) -> Tensor:
    """A 0-element placeholder for outputs a variant does not produce."""
    return torch.empty(0, device=device, dtype=dtype)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class ForwardOut(NamedTuple):
    y: Tensor  # [M, N], x's dtype
    h: Optional[Tensor]  # [M, N] in h_dtype when stored, else None
    mean: Optional[Tensor]  # [M] float32 (float64 for float64 x); empty for RMSNorm; None without store_stats
    rstd: Optional[Tensor]  # [M]; None without store_stats


class BackwardOut(NamedTuple):
    dx: Tensor  # [M, N], x's dtype
    dresidual: Tensor  # [M, N] in residual_dtype when asked for, else empty
    dweight: Tensor  # [N] in the accumulation dtype (float32; float64 for float64) when asked for, else empty
    dbias: Tensor  # [N] likewise


def norm_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    seed: Optional[Tensor],
    eps: float,
    dropout_p: float,
    weight_offset: float,
    is_rms: bool,
    h_dtype: Optional[torch.dtype],
    config: Optional[TileConfig] = None,
    store_stats: bool = True,
) -> ForwardOut:
    """Run the forward kernel. ``h_dtype`` not None means h = residual + dropout(x) is stored in that dtype.

    ``store_stats=False`` (inference: nothing will run backward) skips mean/rstd and returns them as None.
    A config with ``segments > 1`` takes the split-row path (:func:`norm_moments`, then normalization merging
    the segments' moments in the kernel).
    """
    m, n = x.shape
    cfg = config or forward_config(int(n))  # N is a model constant: specialize on it, M may stay symbolic
    if cfg.segments > 1 and m > 0 and n > 0:
        return _split_row_forward(x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype,
                                  cfg, store_stats)
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    h = torch.empty((m, n), device=x.device, dtype=h_dtype) if h_dtype is not None else None
    mean, rstd = _stats_outputs(x, is_rms, store_stats)
    if m > 0 and n > 0:
        _launch_forward(x, residual, weight, bias, seed, y, h, mean, rstd, eps, dropout_p, weight_offset, is_rms,
                        store_stats, STATS_COMPUTE, n, cfg)
    return ForwardOut(y, h, mean, rstd)


def _stats_outputs(x: Tensor, is_rms: bool, store_stats: bool) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """(mean, rstd) outputs per row of x in the accumulation dtype (RMSNorm: an empty mean); None without
    ``store_stats``."""
    if not store_stats:
        return None, None
    acc = acc_dtype(x.dtype)
    m = x.shape[0]
    return (_empty(x.device, acc) if is_rms else torch.empty(m, device=x.device, dtype=acc),
            torch.empty(m, device=x.device, dtype=acc))


def _launch_forward(
    x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor], seed: Optional[Tensor],
    y: Optional[Tensor], h: Optional[Tensor], mean: Optional[Tensor], rstd: Optional[Tensor], eps: float,
    dropout_p: float, weight_offset: float, is_rms: bool, store_stats: bool, stats: int, seg_n: int,
    cfg: TileConfig, seg_moments: tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
) -> None:
    m, n = x.shape
    # Outputs a mode does not write (Y in the moments mode, H unless stored) get a placeholder pointer.
    placeholder = y if y is not None else (h if h is not None else x)
    single = cfg.single_chunk and seg_n <= cfg.block_n  # a segment wider than the tile is walked in chunks
    tiles = cdiv(m, cfg.block_m)
    persistent = cfg.programs_per_sm > 0 and single and stats == STATS_COMPUTE
    if persistent:
        tiles = min(tiles, cfg.programs_per_sm * sm_count(x.device))
    segments = cdiv(n, seg_n)
    _norm_fwd_kernel[(tiles, segments)](
        x, residual, weight, bias, seed, placeholder, h if h is not None else placeholder, mean, rstd, *seg_moments,
        x.stride(0), 0 if residual is None else residual.stride(0), 0 if y is None else y.stride(0),
        0 if h is None else h.stride(0),
        m, n, seg_n, eps, _float32_remainder(eps), dropout_p, weight_offset,
        IS_RMS=is_rms, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None, HAS_DROPOUT=dropout_p > 0.0, STORE_H=h is not None,
        STORE_STATS=store_stats, STATS=stats, PERSISTENT=persistent, FUSED_SUMS=FUSED_SUMS,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SINGLE_CHUNK=single, LOOP_STAGES=cfg.num_stages,
        S_BLOCK=pow2(segments) if stats == STATS_MERGE else 1, num_warps=cfg.num_warps,
    )


def norm_moments(
    x: Tensor, residual: Optional[Tensor], seed: Optional[Tensor], dropout_p: float, is_rms: bool,
    h_dtype: Optional[torch.dtype], seg_n: int, config: TileConfig,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Moments of each ``seg_n``-column segment of h = residual + dropout(x): (mean, M2, h).

    mean and M2 = Σ(h − mean)² are [M, segments] in the accumulation dtype (RMSNorm: mean is empty and M2 is
    Σh²); h is stored in ``h_dtype`` when given. Nothing is normalized: the caller merges the moments (across
    segments, or across ranks) and calls :func:`norm_apply`.
    """
    m, n = x.shape
    segments = cdiv(n, seg_n) if n else 1
    acc = acc_dtype(x.dtype)
    mean = _empty(x.device, acc) if is_rms else torch.empty((m, segments), device=x.device, dtype=acc)
    m2 = torch.empty((m, segments), device=x.device, dtype=acc)
    h = torch.empty((m, n), device=x.device, dtype=h_dtype) if h_dtype is not None else None
    if m > 0 and n > 0:
        _launch_forward(x, residual, None, None, seed, None, h, mean, m2, 0.0, dropout_p, 0.0, is_rms, False,
                        STATS_MOMENTS, seg_n, config)
    return mean, m2, h


def norm_apply(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Optional[Tensor], rstd: Tensor,
    weight_offset: float, is_rms: bool, seg_n: int, config: TileConfig, out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """y = (x − mean) · rstd · (γ + offset) + β with the row statistics given ([M] each; RMSNorm: no mean),
    in ``out_dtype`` (default: x's)."""
    m, n = x.shape
    y = torch.empty((m, n), device=x.device, dtype=out_dtype or x.dtype)
    if m > 0 and n > 0:
        _launch_forward(x, None, weight, bias, None, y, None, mean, rstd, 0.0, 0.0, weight_offset, is_rms, False,
                        STATS_GIVEN, seg_n, config)
    return y


def _split_row_forward(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor],
    seed: Optional[Tensor], eps: float, dropout_p: float, weight_offset: float, is_rms: bool,
    h_dtype: Optional[torch.dtype], cfg: TileConfig, store_stats: bool,
) -> ForwardOut:
    """Rows split over ``cfg.segments`` programs each, in two launches: segment moments, then normalization of
    h (stored, or recomputed when the caller does not want it) with the moments merged in the kernel."""
    m, n = x.shape
    seg_n = segment_width(n, cfg.segments, cfg.block_n)
    # h is needed again by the normalize pass: stored in the caller's dtype (then both paths normalize h as
    # rounded to it), else in the accumulation dtype (exactly what the unsplit kernel normalizes).
    needs_h = residual is not None or dropout_p > 0.0
    keep_h = h_dtype if h_dtype is not None else (acc_dtype(x.dtype) if needs_h else None)
    seg_mean, seg_m2, h = norm_moments(x, residual, seed, dropout_p, is_rms, keep_h, seg_n, cfg)
    mean, rstd = _stats_outputs(x, is_rms, store_stats)
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    _launch_forward(h if h is not None else x, None, weight, bias, None, y, None, mean, rstd, eps, 0.0,
                    weight_offset, is_rms, store_stats, STATS_MERGE, seg_n, cfg, (seg_mean, seg_m2))
    return ForwardOut(y, h if h_dtype is not None else None, mean, rstd)


def norm_backward(
    dy: Tensor,
    h: Tensor,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    dh_in: Optional[Tensor],
    seed: Optional[Tensor],
    dropout_p: float,
    weight_offset: float,
    is_rms: bool,
    compute_dweight: bool,
    compute_dbias: bool,
    x_dtype: torch.dtype,
    residual_dtype: Optional[torch.dtype],
    config: Optional[TileConfig] = None,
    row_means: Optional[Tensor] = None,
) -> BackwardOut:
    """Run the backward kernel and sum its per-program dγ/dβ partials (deterministically, in float32 or wider).

    ``h`` is what was normalized (x itself for a plain norm); ``residual_dtype`` not None asks for a separate
    d(residual) output in that dtype. ``row_means`` [M, 2], when given, holds each row's mean(g·x̂) and
    mean(g) (reduced elsewhere, e.g. across tensor-parallel ranks from :func:`norm_backward_sums`) instead
    of computing them here. A config with ``segments > 1`` splits each row over that many programs (the
    default for rows longer than one tile, see :func:`~tokennorm.kernels.config.backward_config`).
    """
    m, n = h.shape
    dev = h.device
    dx = torch.empty((m, n), device=dev, dtype=x_dtype)
    dres = torch.empty((m, n), device=dev, dtype=residual_dtype) if residual_dtype is not None else None
    acc = acc_dtype(h.dtype)
    if m == 0 or n == 0:
        return BackwardOut(dx, _empty(dev, x_dtype) if dres is None else dres,
                           torch.zeros(n if compute_dweight else 0, device=dev, dtype=acc),
                           torch.zeros(n if compute_dbias else 0, device=dev, dtype=acc))
    cfg = config or backward_config(int(n))
    seg_n = n if cfg.segments == 1 else segment_width(n, cfg.segments, cfg.block_n)
    if row_means is not None:
        dots, row_dots = DOTS_GIVEN, row_means.to(acc).contiguous()
    elif cfg.segments > 1:  # split rows: segment sums, then dx summing them in the kernel
        dots = DOTS_SEGMENTS
        row_dots = norm_backward_sums(dy, h, weight, mean, rstd, weight_offset, is_rms, seg_n, cfg)
    else:
        dots, row_dots = DOTS_COMPUTE, None if cfg.single_chunk else torch.empty((m, 2), device=dev, dtype=acc)
    programs, rows_per_program = backward_programs(m, dev, cfg, cdiv(n, seg_n))
    dw_partial = torch.empty((programs, n), device=dev, dtype=acc) if compute_dweight else None
    db_partial = torch.empty((programs, n), device=dev, dtype=acc) if compute_dbias else None
    _launch_backward(dy, h, weight, mean, rstd, dh_in, seed, dx, dres, dw_partial, db_partial, row_dots,
                     dropout_p, weight_offset, is_rms, dots, seg_n, programs, rows_per_program, cfg)
    return BackwardOut(
        dx,
        _empty(dev, x_dtype) if dres is None else dres,
        dw_partial.sum(dim=0) if compute_dweight else _empty(dev, acc),
        db_partial.sum(dim=0) if compute_dbias else _empty(dev, acc),
    )


def norm_backward_sums(
    dy: Tensor, h: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor, weight_offset: float,
    is_rms: bool, seg_n: int, config: TileConfig,
) -> Tensor:
    """Per row and ``seg_n``-column segment, Σ g·x̂ and Σ g (g = dy·(γ + offset)): [M, segments, 2].

    Summed over segments (or across ranks) and divided by the row length, they are the ``row_means`` that
    :func:`norm_backward` takes.
    """
    m, n = h.shape
    segments = cdiv(n, seg_n) if n else 1
    sums = torch.empty((m, segments, 2), device=h.device, dtype=acc_dtype(h.dtype))
    if m > 0 and n > 0:
        programs, rows_per_program = backward_programs(m, h.device, config, segments)
        _launch_backward(dy, h, weight, mean, rstd, None, None, dy, None, None, None, sums, 0.0, weight_offset,
                         is_rms, DOTS_SUMS, seg_n, programs, rows_per_program, config)
    return sums


def _launch_backward(
    dy: Tensor, h: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor, dh_in: Optional[Tensor],
    seed: Optional[Tensor], dx: Tensor, dres: Optional[Tensor], dw_partial: Optional[Tensor],
    db_partial: Optional[Tensor], row_dots: Optional[Tensor], dropout_p: float, weight_offset: float,
    is_rms: bool, dots: int, seg_n: int, programs: int, rows_per_program: int, cfg: TileConfig,
) -> None:
    m, n = h.shape
    _norm_bwd_kernel[(programs, cdiv(n, seg_n))](
        dy, h, weight, mean, rstd, dh_in, seed, dx, dres, dw_partial, db_partial, row_dots,
        dy.stride(0), h.stride(0), 0 if dh_in is None else dh_in.stride(0), dx.stride(0),
        0 if dres is None else dres.stride(0),
        m, n, seg_n, rows_per_program, dropout_p, weight_offset,
        IS_RMS=is_rms, HAS_WEIGHT=weight is not None,
        COMPUTE_DW=dw_partial is not None, COMPUTE_DB=db_partial is not None,
        HAS_DH_IN=dh_in is not None, HAS_DROPOUT=dropout_p > 0.0, STORE_DRES=dres is not None, DOTS=dots,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SINGLE_CHUNK=cfg.single_chunk, FUSED_SUMS=FUSED_SUMS,
        LOOP_STAGES=cfg.num_stages, S_BLOCK=pow2(cdiv(n, seg_n)) if dots == DOTS_SEGMENTS else 1,
        num_warps=cfg.num_warps,
    )

