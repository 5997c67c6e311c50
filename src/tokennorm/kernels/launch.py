"""Launchers: allocate outputs, take the call's plan, launch. No autograd and no argument checking here.

Kernels are launched through :class:`~tokennorm.kernels.launcher.CachedLauncher`: from a per-specialization
cache in eager mode, through ``torch.library.wrap_triton`` while torch.compile traces. Every launch has the form
``KERNEL[grid](*tensors_and_scalars, **plan.launch_kwargs, ...)``. Inputs are [M, N] views whose last stride is 1.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.chunked import chunked_forward_kernel
from tokennorm.kernels.config import KernelConfig, cdiv, row_groups
from tokennorm.kernels.launcher import CachedLauncher
from tokennorm.kernels.long_rows import long_rows_backward_kernel, long_rows_forward_kernel
from tokennorm.kernels.plan import (
    LONG_ROWS_EXCHANGE, BackwardPlan, ForwardPlan, acc_dtype, backward_plan, forward_plan, launch_kwargs,
)
from tokennorm.kernels.rows import rows_backward_kernel, rows_forward_kernel
from tokennorm.kernels.segment import segment_backward_kernel, segment_forward_kernel

# Wrapped once, launched as WRAPPED[grid](...): cached launches in eager mode, wrap_triton under torch.compile.
_rows_forward = CachedLauncher(rows_forward_kernel)
_chunked_forward = CachedLauncher(chunked_forward_kernel)
_long_rows_forward = CachedLauncher(long_rows_forward_kernel)
_segment_forward = CachedLauncher(segment_forward_kernel)
_rows_backward = CachedLauncher(rows_backward_kernel)
_long_rows_backward = CachedLauncher(long_rows_backward_kernel)
_segment_backward = CachedLauncher(segment_backward_kernel)

__all__ = ["ForwardOut", "BackwardOut", "acc_dtype", "norm_forward", "run_forward", "norm_backward", "run_backward",
           "segment_moments", "segment_apply", "segment_sums", "segment_dx"]


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
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor], seed: Optional[Tensor],
    eps: float, dropout_p: float, weight_offset: float, is_rms: bool, h_dtype: Optional[torch.dtype],
    config: Optional[KernelConfig] = None, store_stats: bool = True,
) -> ForwardOut:
    """``y = Norm(residual + dropout(x)) · (weight + weight_offset) + bias`` with the cached plan for this call.

    ``h_dtype`` not None stores h = residual + dropout(x) in that dtype; ``store_stats=False`` (inference)
    skips mean/rstd and returns them as None; ``config`` overrides the default kernel and tile.
    """
    plan = forward_plan(x.shape[1], x.dtype, weight is not None, bias is not None,
                        None if residual is None else residual.dtype, h_dtype, eps, dropout_p, weight_offset, is_rms,
                        store_stats, x.device, config)
    return run_forward(plan, x, weight, bias, residual, seed)


def run_forward(plan: ForwardPlan, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                residual: Optional[Tensor], seed: Optional[Tensor]) -> ForwardOut:
    m, n = x.shape
    dev = x.device
    y = torch.empty((m, n), device=dev, dtype=x.dtype)
    h = torch.empty((m, n), device=dev, dtype=plan.h_dtype) if plan.h_dtype is not None else None
    if plan.store_stats:
        mean = torch.empty(0 if plan.is_rms else m, device=dev, dtype=plan.acc_dtype)
        rstd = torch.empty(m, device=dev, dtype=plan.acc_dtype)
    else:
        mean = rstd = None
    if m == 0 or n == 0:
        return ForwardOut(y, h, mean, rstd)
    cfg = plan.config
    args = (x, residual, weight, bias, seed, y, h, mean, rstd, x.stride(0),
            0 if residual is None else residual.stride(0), y.stride(0), 0 if h is None else h.stride(0), m, n)
    scalars = (plan.eps, plan.eps_lo, plan.dropout_p)
    if cfg.mode == kconfig.ROWS:
        grid = (min(cdiv(m, cfg.block_m), cfg.programs_per_sm * plan.facts.sms),)
        _rows_forward[grid](*args, *scalars, **plan.launch_kwargs)
    elif cfg.mode == kconfig.CHUNKED:
        _chunked_forward[(min(m, cfg.programs_per_sm * plan.facts.sms),)](*args, *scalars, **plan.launch_kwargs)
    else:
        segments = cdiv(n, cfg.block_n)
        groups = _long_row_groups(m, segments, cfg, plan.facts)
        partials = torch.empty((m, segments, 3), device=dev, dtype=plan.acc_dtype)  # mean hi, mean lo, M2
        grid = (groups * segments,)
        if LONG_ROWS_EXCHANGE == "cooperative":
            sync = torch.zeros(1 + m, device=dev, dtype=torch.int32)
            _long_rows_forward[grid](*args[:9], partials, sync, *args[9:], groups, *scalars,
                                     EXCHANGE="cooperative", **plan.launch_kwargs)
        else:
            for exchange in ("publish", "finish"):
                _long_rows_forward[grid](*args[:9], partials, None, *args[9:], groups, *scalars,
                                         EXCHANGE=exchange, **plan.launch_kwargs)
    return ForwardOut(y, h, mean, rstd)


def _long_row_groups(m: int, segments: int, cfg: KernelConfig, facts: kconfig.DeviceFacts) -> int:
    """Row groups of a long-row launch: as many as fill the resident capacity (each group is ``segments``
    programs taking rows in lockstep), at most one per row."""
    return max(1, min(m, cfg.programs_per_sm * facts.sms // segments))


def norm_backward(
    dy: Tensor, h: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor, dh_in: Optional[Tensor],
    seed: Optional[Tensor], dropout_p: float, weight_offset: float, is_rms: bool, compute_dweight: bool,
    compute_dbias: bool, x_dtype: torch.dtype, residual_dtype: Optional[torch.dtype],
    config: Optional[KernelConfig] = None,
) -> BackwardOut:
    """dx (and d(residual), dγ, dβ) given dy, with the cached plan for this call.

    ``h`` is what was normalized (x itself for a plain norm), ``dh_in`` the gradient of the h output (pre-LN);
    ``residual_dtype`` not None asks for a separate d(residual) output in that dtype. dγ/dβ are per-program
    float32 partial rows summed here (deterministically, in float32 or wider).
    """
    plan = backward_plan(h.shape[1], h.dtype, x_dtype, residual_dtype, weight is not None, dh_in is not None,
                         dropout_p, weight_offset, is_rms, compute_dweight, compute_dbias, h.device, config)
    return run_backward(plan, dy, h, weight, mean, rstd, dh_in, seed)


def run_backward(plan: BackwardPlan, dy: Tensor, h: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                 dh_in: Optional[Tensor], seed: Optional[Tensor]) -> BackwardOut:
    m, n = h.shape
    dev = h.device
    acc = plan.acc_dtype
    dx = torch.empty((m, n), device=dev, dtype=plan.x_dtype)
    dres = torch.empty((m, n), device=dev, dtype=plan.residual_dtype) if plan.residual_dtype is not None else None
    if m == 0 or n == 0:
        return BackwardOut(dx, _empty(dev, plan.x_dtype) if dres is None else dres,
                           torch.zeros(n if plan.compute_dweight else 0, device=dev, dtype=acc),
                           torch.zeros(n if plan.compute_dbias else 0, device=dev, dtype=acc))
    cfg = plan.config
    if cfg.mode == kconfig.ROWS:
        programs, rows_per_program = row_groups(m, cfg.programs_per_sm * plan.facts.sms)
    elif cfg.mode == kconfig.LONG_ROWS:
        segments = cdiv(n, cfg.block_n)
        programs = _long_row_groups(m, segments, cfg, plan.facts)
    else:
        segments = cdiv(n, cfg.block_n)
        programs, rows_per_program = row_groups(m, 2 * plan.facts.sms, segments)
    dw = torch.empty((programs, n), device=dev, dtype=acc) if plan.compute_dweight else None
    db = torch.empty((programs, n), device=dev, dtype=acc) if plan.compute_dbias else None
    args = (dy, h, weight, mean, rstd, dh_in, seed, dx, dres, dw, db)
    strides = (dy.stride(0), h.stride(0), 0 if dh_in is None else dh_in.stride(0), dx.stride(0),
               0 if dres is None else dres.stride(0))
    if cfg.mode == kconfig.ROWS:
        _rows_backward[(programs,)](*args, *strides, m, n, rows_per_program, plan.dropout_p, **plan.launch_kwargs)
    elif cfg.mode == kconfig.LONG_ROWS:
        partials = torch.empty((m, segments, 2), device=dev, dtype=acc)
        grid = (programs * segments,)
        if LONG_ROWS_EXCHANGE == "cooperative":
            sync = torch.zeros(1 + m, device=dev, dtype=torch.int32)
            _long_rows_backward[grid](*args, partials, sync, *strides, m, n, programs, plan.dropout_p,
                                      EXCHANGE="cooperative", **plan.launch_kwargs)
        else:
            for exchange in ("publish", "finish"):
                _long_rows_backward[grid](*args, partials, None, *strides, m, n, programs, plan.dropout_p,
                                          EXCHANGE=exchange, **plan.launch_kwargs)
    else:  # rows beyond the long-row capacity: segment sums, their means, then dx
        sums = torch.empty((m, segments, 2), device=dev, dtype=acc)
        _segment_backward[(cdiv(m, cfg.block_m), segments)](*args, sums, None, *strides, m, n, cfg.block_n, 0,
                                                             plan.dropout_p, PASS="sums", **plan.launch_kwargs)
        row_means = sums.sum(dim=1) * (1.0 / n)
        _segment_backward[(programs, segments)](*args, None, row_means, *strides, m, n, cfg.block_n,
                                                rows_per_program, plan.dropout_p, PASS="dx", **plan.launch_kwargs)
    return BackwardOut(
        dx, _empty(dev, plan.x_dtype) if dres is None else dres,
        dw.sum(dim=0) if plan.compute_dweight else _empty(dev, acc),
        db.sum(dim=0) if plan.compute_dbias else _empty(dev, acc),
    )


def _empty(device: torch.device, dtype: torch.dtype) -> Tensor:
    """A 0-element placeholder for outputs a call does not produce."""
    return torch.empty(0, device=device, dtype=dtype)


# Segment kernels for tensor parallelism: each rank's [M, n_i] slice is one segment of the full rows.


def _segment_switches(cfg: KernelConfig, is_rms: bool, weight_offset: float = 0.0) -> dict:
    return launch_kwargs(dict(IS_RMS=is_rms, WEIGHT_OFFSET=float(weight_offset), BLOCK_M=cfg.block_m,
                              BLOCK_N=cfg.block_n, **cfg.launch_options))


def segment_moments(x: Tensor, is_rms: bool) -> tuple[Tensor, Tensor]:
    """Per row of ``x`` [M, n]: (mean, M2 = Σ(x − mean)²) in the accumulation dtype (RMSNorm: (empty, Σx²)).

    Rows of length 0 give zeros. The caller merges these across slices (``tokennorm.moments``)."""
    m, n = x.shape
    acc = acc_dtype(x.dtype)
    mean = _empty(x.device, acc) if is_rms else torch.zeros(m, device=x.device, dtype=acc)
    m2 = torch.zeros(m, device=x.device, dtype=acc)
    if m and n:
        cfg = kconfig.segment_config(n, acc.itemsize)
        _segment_forward[(cdiv(m, cfg.block_m), 1)](
            x, None, None, None, None, None, mean, m2, x.stride(0), 0, m, n, n, PASS="moments", HAS_WEIGHT=False,
            HAS_BIAS=False, **_segment_switches(cfg, is_rms))
    return mean, m2


def segment_apply(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Optional[Tensor], rstd: Tensor,
                  weight_offset: float, is_rms: bool) -> Tensor:
    """y = (x − mean) · rstd · (γ + offset) + β with the rows' statistics given ([M] each; RMSNorm: no mean)."""
    m, n = x.shape
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m and n:
        cfg = kconfig.segment_config(n, acc_dtype(x.dtype).itemsize)
        _segment_forward[(cdiv(m, cfg.block_m), 1)](
            x, weight, bias, y, mean, rstd, None, None, x.stride(0), y.stride(0), m, n, n, PASS="apply",
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, **_segment_switches(cfg, is_rms, weight_offset))
    return y


def segment_sums(dy: Tensor, h: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor, weight_offset: float,
                 is_rms: bool) -> Tensor:
    """Per row of the slice, (Σ g·x̂, Σ g) with g = dy·(γ + offset): [M, 2] (RMSNorm: Σ g is 0). Summed across
    slices and divided by the full row length, they are the row means :func:`segment_dx` takes."""
    m, n = h.shape
    acc = acc_dtype(h.dtype)
    sums = torch.zeros((m, 2), device=h.device, dtype=acc)
    if m and n:
        cfg = kconfig.segment_config(n, acc.itemsize)
        _segment_backward[(cdiv(m, cfg.block_m), 1)](
            dy, h, weight, mean, rstd, None, None, None, None, None, None, sums, None, dy.stride(0), h.stride(0),
            0, 0, 0, m, n, n, 0, 0.0, PASS="sums", HAS_WEIGHT=weight is not None, COMPUTE_DW=False,
            COMPUTE_DB=False, HAS_DH_IN=False, HAS_DROPOUT=False, STORE_DRES=False,
            **_segment_switches(cfg, is_rms, weight_offset))
    return sums


def segment_dx(dy: Tensor, h: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor, row_means: Tensor,
               weight_offset: float, is_rms: bool, compute_dweight: bool, compute_dbias: bool,
               x_dtype: torch.dtype) -> BackwardOut:
    """dx of the slice and its dγ/dβ, with the rows' (mean(g·x̂), mean(g)) given ([M, 2], reduced across
    slices)."""
    m, n = h.shape
    dev = h.device
    acc = acc_dtype(h.dtype)
    dx = torch.empty((m, n), device=dev, dtype=x_dtype)
    if m == 0 or n == 0:
        return BackwardOut(dx, _empty(dev, x_dtype), torch.zeros(n if compute_dweight else 0, device=dev, dtype=acc),
                           torch.zeros(n if compute_dbias else 0, device=dev, dtype=acc))
    cfg = kconfig.segment_config(n, acc.itemsize)
    programs, rows_per_program = row_groups(m, 2 * kconfig.device_facts(dev).sms)
    dw = torch.empty((programs, n), device=dev, dtype=acc) if compute_dweight else None
    db = torch.empty((programs, n), device=dev, dtype=acc) if compute_dbias else None
    _segment_backward[(programs, 1)](
        dy, h, weight, mean, rstd, None, None, dx, None, dw, db, None, row_means.to(acc).contiguous(), dy.stride(0),
        h.stride(0), 0, dx.stride(0), 0, m, n, n, rows_per_program, 0.0, PASS="dx", HAS_WEIGHT=weight is not None,
        COMPUTE_DW=compute_dweight, COMPUTE_DB=compute_dbias, HAS_DH_IN=False, HAS_DROPOUT=False,
        STORE_DRES=False, **_segment_switches(cfg, is_rms, weight_offset))
    return BackwardOut(dx, _empty(dev, x_dtype), dw.sum(dim=0) if compute_dweight else _empty(dev, acc),
                       db.sum(dim=0) if compute_dbias else _empty(dev, acc))
