"""Launchers: allocate outputs, take the call's plan, launch. No autograd and no argument checking here.

Kernels are launched through :class:`~tokennorm.kernels.launcher.CachedLauncher`: from a per-specialization cache in
eager mode, through ``torch.library.wrap_triton`` while torch.compile traces. A norm plan's launch has the form
``plan.kernel.launch(grid, *tensors_and_scalars)`` (its constexprs, and for a forward without AdaLN its trailing
scalars, bound in the plan), the others ``KERNEL[grid](*tensors_and_scalars, **plan.constexprs)``. Inputs are [M, N]
views whose last stride is 1. These functions run on every call: their host time is measured in
benchmarks/RESULTS.md ("Host time per call").
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.channels_first import channels_first_backward_kernel, channels_first_forward_kernel
from tokennorm.kernels.config import KernelConfig, cdiv, row_groups
from tokennorm.kernels.elementwise import dyt_backward_kernel, dyt_forward_kernel
from tokennorm.kernels.launcher import CachedLauncher
from tokennorm.kernels.plan import (
    BACKWARD_KERNELS,
    LONG_ROWS_EXCHANGE,
    NO_MODULATION,
    BackwardPlan,
    ForwardPlan,
    acc_dtype,
    backward_plan,
    channels_first_plan,
    dyt_backward_plan,
    dyt_plan,
    float32_remainder,
    forward_plan,
)
from tokennorm.kernels.segment import segment_forward_kernel

# Wrapped once, launched as WRAPPED[grid](...): cached launches in eager mode, wrap_triton under torch.compile.
# The norm plans' kernels are kernels/plan.py's FORWARD_KERNELS and BACKWARD_KERNELS (the tensor-parallel pieces
# below launch the segment backward kernel directly too).
_segment_forward = CachedLauncher(segment_forward_kernel)
_segment_backward = BACKWARD_KERNELS[kconfig.SEGMENT]
_dyt_forward = CachedLauncher(dyt_forward_kernel)
_dyt_backward = CachedLauncher(dyt_backward_kernel)
_channels_first_forward = CachedLauncher(channels_first_forward_kernel)
_channels_first_backward = CachedLauncher(channels_first_backward_kernel)

__all__ = [
    "ForwardOut",
    "BackwardOut",
    "Modulation",
    "ModulationGrads",
    "acc_dtype",
    "norm_forward",
    "run_forward",
    "norm_backward",
    "run_backward",
    "ada_norm_backward",
    "segment_moments",
    "segment_apply",
    "segment_sums",
    "segment_dx",
    "DyTGradsOut",
    "dyt_forward",
    "dyt_backward",
    "ChannelsFirstOut",
    "channels_first_fits",
    "channels_first_forward",
    "channels_first_backward",
]


class ForwardOut(NamedTuple):
    y: Tensor  # [M, N], x's dtype
    h: Optional[Tensor]  # [M, N] in h_dtype when stored, else None
    mean: Optional[Tensor]  # [M] float32 (float64 for float64 x); empty for RMSNorm; None without store_stats
    rstd: Optional[Tensor]  # [M]; None without store_stats


class BackwardOut(NamedTuple):
    dx: Tensor  # [M, N], x's dtype
    dresidual: Optional[Tensor]  # [M, N] in residual_dtype when asked for, else None
    dweight: Optional[Tensor]  # [N] in the accumulation dtype (float32; float64 for float64) when asked for
    dbias: Optional[Tensor]  # [N] likewise


# On every call: NamedTuple(...) runs a Python __new__; tuple.__new__ builds the same object in C.
_new = tuple.__new__


class Modulation(NamedTuple):
    """AdaLN's inputs beside x, as [rows, N] views with a last stride of 1: one row per sample (``tokens`` rows of
    x each) or one per row of x (``tokens`` = 1)."""

    shift: Tensor
    scale: Tensor
    gate: Optional[Tensor]
    tokens: int


class ModulationGrads(NamedTuple):
    """AdaLN's gradients, each None unless asked for: for per-sample modulations [samples, N] in the accumulation
    dtype; for per-token ones [M, N] in the modulation's dtype, and no dshift (it is dy itself)."""

    dshift: Optional[Tensor]
    dscale: Optional[Tensor]
    dgate: Optional[Tensor]


_NO_MODULATION_GRADS = ModulationGrads(None, None, None)


def _modulation_args(mod: Optional[Modulation]) -> tuple:
    """The forward kernels' trailing arguments: GATE, SHIFT, SCALE, their row strides, tokens."""
    if mod is None:
        return NO_MODULATION
    gate = mod.gate
    return (
        gate,
        mod.shift,
        mod.scale,
        0 if gate is None else gate.stride(0),
        mod.shift.stride(0),
        mod.scale.stride(0),
        mod.tokens,
    )


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
    config: Optional[KernelConfig] = None,
    store_stats: bool = True,
    modulation: Optional[Modulation] = None,
) -> ForwardOut:
    """``y = Norm(residual + dropout(x)) · (weight + weight_offset) + bias`` with the cached plan for this call.

    ``h_dtype`` not None stores h = residual + dropout(x) in that dtype; ``store_stats=False`` (inference)
    skips mean/rstd and returns them as None; ``config`` overrides the default kernel and tile. With
    ``modulation`` (AdaLN): h = residual + gate ⊙ x and y = (Norm(h)·w + b) · (1 + scale) + shift.
    """
    plan = forward_plan(
        x.shape[1],
        x.dtype,
        weight is not None,
        bias is not None,
        None if residual is None else residual.dtype,
        h_dtype,
        eps,
        dropout_p,
        weight_offset,
        is_rms,
        store_stats,
        x.device,
        config,
        modulation is not None and modulation.gate is not None,
        modulation is not None,
    )
    return run_forward(plan, x, weight, bias, residual, seed, modulation)


def run_forward(
    plan: ForwardPlan,
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    seed: Optional[Tensor],
    modulation: Optional[Modulation] = None,
) -> ForwardOut:
    m, n = x.shape
    # x.new_empty(m, n) and torch.empty(m, n, ...), not a shape tuple: less host time (benchmarks/RESULTS.md)
    y = x.new_empty(m, n)
    h_dtype = plan.h_dtype
    h = None if h_dtype is None else torch.empty(m, n, device=x.device, dtype=h_dtype)
    if plan.store_stats:
        mean = torch.empty(0 if plan.is_rms else m, device=x.device, dtype=plan.acc_dtype)
        rstd = torch.empty(m, device=x.device, dtype=plan.acc_dtype)
    else:
        mean = rstd = None
    if m == 0 or n == 0:
        return ForwardOut(y, h, mean, rstd)
    cfg = plan.config
    mode = cfg.mode
    if mode != kconfig.LONG_ROWS and modulation is None:  # eps, eps_lo, dropout_p, no AdaLN: bound in the plan
        # the grid as min(cdiv(m, block_m), programs), without the two calls (host time)
        programs = (m + cfg.block_m - 1) // cfg.block_m if mode == kconfig.ROWS else m
        plan.kernel.launch(
            (programs if programs < plan.programs else plan.programs,),
            x,
            residual,
            weight,
            bias,
            seed,
            y,
            h,
            mean,
            rstd,
            x.stride(0),
            0 if residual is None else residual.stride(0),
            n,
            0 if h is None else n,
            m,
            n,
        )
        return _new(ForwardOut, (y, h, mean, rstd))
    args = (
        x,
        residual,
        weight,
        bias,
        seed,
        y,
        h,
        mean,
        rstd,
        x.stride(0),
        0 if residual is None else residual.stride(0),
        n,
        0 if h is None else n,
        m,
        n,
    )
    scalars = (plan.eps, plan.eps_lo, plan.dropout_p, *_modulation_args(modulation))
    if mode == kconfig.ROWS:
        plan.kernel.launch((min(cdiv(m, cfg.block_m), plan.programs),), *args, *scalars)
    elif mode == kconfig.CHUNKED:
        plan.kernel.launch((min(m, plan.programs),), *args, *scalars)
    else:
        dev = x.device
        segments = cdiv(n, cfg.block_n)
        groups = _long_row_groups(m, segments, cfg, plan.facts)
        partials = torch.empty((m, segments, 3), device=dev, dtype=plan.acc_dtype)  # mean hi, mean lo, M2
        grid = (groups * segments,)
        if LONG_ROWS_EXCHANGE == "cooperative":
            sync = torch.zeros(1 + m, device=dev, dtype=torch.int32)
            plan.kernel.launch(grid, *args[:9], partials, sync, *args[9:], groups, *scalars, EXCHANGE="cooperative")
        else:
            for exchange in ("publish", "finish"):
                plan.kernel.launch(grid, *args[:9], partials, None, *args[9:], groups, *scalars, EXCHANGE=exchange)
    return ForwardOut(y, h, mean, rstd)


def _long_row_groups(m: int, segments: int, cfg: KernelConfig, facts: kconfig.DeviceFacts) -> int:
    """Row groups of a long-row launch: as many as fill the resident capacity (each group is ``segments``
    programs taking rows in lockstep), at most one per row."""
    return max(1, min(m, cfg.programs_per_sm * facts.sms // segments))


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
    config: Optional[KernelConfig] = None,
) -> BackwardOut:
    """dx (and d(residual), dγ, dβ) given dy, with the cached plan for this call.

    ``h`` is what was normalized (x itself for a plain norm), ``dh_in`` the gradient of the h output (pre-LN);
    ``residual_dtype`` not None asks for a separate d(residual) output in that dtype. dγ/dβ are per-program
    float32 partial rows summed here (deterministically, in float32 or wider).
    """
    plan = backward_plan(
        h.shape[1],
        h.dtype,
        x_dtype,
        residual_dtype,
        weight is not None,
        dh_in is not None,
        dropout_p,
        weight_offset,
        is_rms,
        compute_dweight,
        compute_dbias,
        h.device,
        config,
    )
    return run_backward(plan, dy, h, weight, mean, rstd, dh_in, seed)


def run_backward(
    plan: BackwardPlan,
    dy: Tensor,
    h: Tensor,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    dh_in: Optional[Tensor],
    seed: Optional[Tensor],
) -> BackwardOut:
    return _backward(plan, dy, h, weight, mean, rstd, dh_in, seed)[0]


def ada_norm_backward(
    dy: Tensor,
    h: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    dh_in: Optional[Tensor],
    modulation: Modulation,
    is_rms: bool,
    compute_dweight: bool,
    compute_dbias: bool,
    x_dtype: torch.dtype,
    residual_dtype: Optional[torch.dtype],
    need: tuple[bool, bool, bool] = (True, True, True),
    config: Optional[KernelConfig] = None,
) -> tuple[BackwardOut, ModulationGrads]:
    """AdaLN's backward: :func:`norm_backward`'s outputs, with dx = gate ⊙ dh, and (dshift, dscale, dgate).

    ``x`` is the sublayer output the gate multiplied (dgate = Σ dh ⊙ x), ``bias`` β (dscale = Σ dy · n needs
    n = x̂ · w + b); ``modulation``'s shift is not read. ``need``: which of (dshift, dscale, dgate) to return.
    """
    has_gate = modulation.gate is not None
    plan = backward_plan(
        h.shape[1],
        h.dtype,
        x_dtype,
        residual_dtype,
        weight is not None,
        dh_in is not None,
        0.0,
        0.0,
        is_rms,
        compute_dweight,
        compute_dbias,
        h.device,
        config,
        bias is not None,
        has_gate,
        True,
        modulation.tokens != 1,
    )
    return _backward(plan, dy, h, weight, mean, rstd, dh_in, None, x, bias, modulation, need)


def _backward(
    plan: BackwardPlan,
    dy: Tensor,
    h: Tensor,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    dh_in: Optional[Tensor],
    seed: Optional[Tensor],
    x: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    mod: Optional[Modulation] = None,
    need: tuple[bool, bool, bool] = (False, False, False),
) -> tuple[BackwardOut, ModulationGrads]:
    m, n = h.shape
    dev = h.device
    acc = plan.acc_dtype
    dx = torch.empty(m, n, device=dev, dtype=plan.x_dtype)
    dres = None if plan.residual_dtype is None else torch.empty(m, n, device=dev, dtype=plan.residual_dtype)
    if m == 0 or n == 0:
        return (
            BackwardOut(
                dx,
                dres,
                torch.zeros(n, device=dev, dtype=acc) if plan.compute_dweight else None,
                torch.zeros(n, device=dev, dtype=acc) if plan.compute_dbias else None,
            ),
            _empty_modulation_grads(dy, mod, need, acc),
        )
    cfg = plan.config
    per_sample = mod is not None and mod.tokens != 1
    samples = m // mod.tokens if per_sample else 0
    mod_grid = (1, 1, 1)  # samples per program, splits, tokens per split (MOD_SUMS)
    if cfg.mode == kconfig.ROWS:
        if plan.modulation_sums:
            programs, *mod_grid = kconfig.sample_groups(samples, mod.tokens, plan.programs)
            rows_per_program = mod_grid[2]
        else:  # a program per row while they fit (row_groups' answer, without the call)
            programs, rows_per_program = (m, 1) if m <= plan.programs else row_groups(m, plan.programs)
    elif cfg.mode == kconfig.LONG_ROWS:
        segments = cdiv(n, cfg.block_n)
        programs = _long_row_groups(m, segments, cfg, plan.facts)
    else:
        segments = cdiv(n, cfg.block_n)
        programs, rows_per_program = row_groups(m, 2 * plan.facts.sms, segments)
    # One partial row per program; a single one is dγ/dβ itself (no sum to launch).
    dw = db = None
    if plan.compute_dweight:
        dw = torch.empty(n, device=dev, dtype=acc) if programs == 1 else torch.empty(programs, n, device=dev, dtype=acc)
    if plan.compute_dbias:
        db = torch.empty(n, device=dev, dtype=acc) if programs == 1 else torch.empty(programs, n, device=dev, dtype=acc)
    if mod is None and cfg.mode == kconfig.ROWS:  # the common call, its arguments written out (AdaLN's: off)
        plan.kernel.launch(
            (programs,),
            dy,
            h,
            weight,
            mean,
            rstd,
            dh_in,
            seed,
            dx,
            dres,
            dw,
            db,
            dy.stride(0),
            h.stride(0),
            0 if dh_in is None else dh_in.stride(0),
            n,
            0 if dres is None else n,
            m,
            n,
            rows_per_program,
            plan.dropout_p,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            0,
            0,
            0,
            1,
            1,
            1,
        )
        if programs > 1:  # partial rows summed in order: deterministic
            dw = None if dw is None else dw.sum(dim=0)
            db = None if db is None else db.sum(dim=0)
        return _new(BackwardOut, (dx, dres, dw, db)), _NO_MODULATION_GRADS
    args = (dy, h, weight, mean, rstd, dh_in, seed, dx, dres, dw, db)
    strides = (dy.stride(0), h.stride(0), 0 if dh_in is None else dh_in.stride(0), n, 0 if dres is None else n)
    # AdaLN: per-sample sums (rows: partial rows per (sample, token range)) or per-token gradients
    dscale = dgate = dshift = None
    if mod is not None:
        if plan.modulation_sums:
            rows = samples * mod_grid[1]
            dshift, dscale = (torch.empty((rows, n), device=dev, dtype=acc) for _ in range(2))
            dgate = torch.empty((rows, n), device=dev, dtype=acc) if plan.has_gate else None
        else:
            dscale = torch.empty((m, n), device=dev, dtype=acc if per_sample else mod.scale.dtype)
            if plan.has_gate:
                dgate = torch.empty((m, n), device=dev, dtype=acc if per_sample else mod.gate.dtype)
    gate = None if mod is None else mod.gate
    mod_args = (
        x,
        bias,
        None if mod is None else mod.scale,
        gate,
        dscale,
        dgate,
        0 if x is None else x.stride(0),
        0 if mod is None else mod.scale.stride(0),
        0 if gate is None else gate.stride(0),
        1 if mod is None else mod.tokens,
    )
    if cfg.mode == kconfig.ROWS:
        plan.kernel.launch(
            (programs,),
            *args,
            *strides,
            m,
            n,
            rows_per_program,
            plan.dropout_p,
            *mod_args[:4],
            dshift,
            *mod_args[4:],
            *mod_grid[:2],
        )
    elif cfg.mode == kconfig.LONG_ROWS:
        partials = torch.empty((m, segments, 2), device=dev, dtype=acc)
        grid = (programs * segments,)
        if LONG_ROWS_EXCHANGE == "cooperative":
            sync = torch.zeros(1 + m, device=dev, dtype=torch.int32)
            plan.kernel.launch(
                grid, *args, partials, sync, *strides, m, n, programs, plan.dropout_p, *mod_args, EXCHANGE="cooperative"
            )
        else:
            for exchange in ("publish", "finish"):
                plan.kernel.launch(
                    grid, *args, partials, None, *strides, m, n, programs, plan.dropout_p, *mod_args, EXCHANGE=exchange
                )
    else:  # rows beyond the long-row capacity: segment sums, their means, then dx
        sums = torch.empty((m, segments, 2), device=dev, dtype=acc)
        plan.kernel.launch(
            (cdiv(m, cfg.block_m), segments),
            *args,
            sums,
            None,
            *strides,
            m,
            n,
            cfg.block_n,
            0,
            plan.dropout_p,
            *mod_args,
            PASS="sums",
        )
        row_means = sums.sum(dim=1) * (1.0 / n)
        plan.kernel.launch(
            (programs, segments),
            *args,
            None,
            row_means,
            *strides,
            m,
            n,
            cfg.block_n,
            rows_per_program,
            plan.dropout_p,
            *mod_args,
            PASS="dx",
        )
    if programs > 1:  # partial rows summed in order: deterministic
        dw = None if dw is None else dw.sum(dim=0)
        db = None if db is None else db.sum(dim=0)
    out = BackwardOut(dx, dres, dw, db)
    if mod is None:
        return out, _NO_MODULATION_GRADS
    need_shift, need_scale, need_gate = need
    if plan.modulation_sums:  # partial rows [samples, splits, N], summed in order: deterministic
        grads = [t.view(samples, mod_grid[1], n).sum(dim=1) if t is not None else None for t in (dshift, dscale, dgate)]
    elif per_sample:  # per-token gradients, summed over each sample's tokens
        grads = [
            dy.view(samples, mod.tokens, n).sum(dim=1, dtype=acc) if need_shift else None,
            *(t.view(samples, mod.tokens, n).sum(dim=1) if t is not None else None for t in (dscale, dgate)),
        ]
    else:  # per token: dshift is dy itself (the caller's)
        grads = [None, dscale, dgate]
    return out, ModulationGrads(*(g if wanted else None for g, wanted in zip(grads, need)))


def _empty_modulation_grads(
    dy: Tensor, mod: Optional[Modulation], need: tuple[bool, bool, bool], acc: torch.dtype
) -> ModulationGrads:
    """AdaLN's gradients of an empty problem: zeros of the modulations' shapes."""
    if mod is None:
        return ModulationGrads(None, None, None)
    return ModulationGrads(
        *(
            torch.zeros(t.shape, device=t.device, dtype=acc if mod.tokens != 1 else t.dtype)
            if t is not None and wanted
            else None
            for t, wanted in zip((mod.shift, mod.scale, mod.gate), need)
        )
    )


def _empty(device: torch.device, dtype: torch.dtype) -> Tensor:
    """A 0-element placeholder for outputs a call does not produce."""
    return torch.empty(0, device=device, dtype=dtype)


# Segment kernels for tensor parallelism: each rank's [M, n_i] slice is one segment of the full rows.


# The segment backward's AdaLN arguments and switches, off (X, B, SCALE, GATE, DSCALE, DGATE, their strides, tokens)
_NO_MODULATION = (None, None, None, None, None, None, 0, 0, 0, 1)
_NO_MODULATION_SWITCHES = dict(HAS_BIAS=False, HAS_MOD=False, HAS_GATE=False)


def _segment_switches(cfg: KernelConfig, is_rms: bool, weight_offset: float = 0.0) -> dict:
    return dict(
        IS_RMS=is_rms,
        WEIGHT_OFFSET=float(weight_offset),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        **cfg.launch_options,
    )


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
            x,
            None,
            None,
            None,
            None,
            None,
            mean,
            m2,
            x.stride(0),
            0,
            m,
            n,
            n,
            PASS="moments",
            HAS_WEIGHT=False,
            HAS_BIAS=False,
            **_segment_switches(cfg, is_rms),
        )
    return mean, m2


def segment_apply(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    mean: Optional[Tensor],
    rstd: Tensor,
    weight_offset: float,
    is_rms: bool,
) -> Tensor:
    """y = (x − mean) · rstd · (γ + offset) + β with the rows' statistics given ([M] each; RMSNorm: no mean)."""
    m, n = x.shape
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m and n:
        cfg = kconfig.segment_config(n, acc_dtype(x.dtype).itemsize)
        _segment_forward[(cdiv(m, cfg.block_m), 1)](
            x,
            weight,
            bias,
            y,
            mean,
            rstd,
            None,
            None,
            x.stride(0),
            y.stride(0),
            m,
            n,
            n,
            PASS="apply",
            HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None,
            **_segment_switches(cfg, is_rms, weight_offset),
        )
    return y


def segment_sums(
    dy: Tensor, h: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor, weight_offset: float, is_rms: bool
) -> Tensor:
    """Per row of the slice, (Σ g·x̂, Σ g) with g = dy·(γ + offset): [M, 2] (RMSNorm: Σ g is 0). Summed across
    slices and divided by the full row length, they are the row means :func:`segment_dx` takes."""
    m, n = h.shape
    acc = acc_dtype(h.dtype)
    sums = torch.zeros((m, 2), device=h.device, dtype=acc)
    if m and n:
        cfg = kconfig.segment_config(n, acc.itemsize)
        _segment_backward[(cdiv(m, cfg.block_m), 1)](
            dy,
            h,
            weight,
            mean,
            rstd,
            None,
            None,
            None,
            None,
            None,
            None,
            sums,
            None,
            dy.stride(0),
            h.stride(0),
            0,
            0,
            0,
            m,
            n,
            n,
            0,
            0.0,
            *_NO_MODULATION,
            PASS="sums",
            HAS_WEIGHT=weight is not None,
            COMPUTE_DW=False,
            COMPUTE_DB=False,
            HAS_DH_IN=False,
            HAS_DROPOUT=False,
            STORE_DRES=False,
            **_NO_MODULATION_SWITCHES,
            **_segment_switches(cfg, is_rms, weight_offset),
        )
    return sums


def segment_dx(
    dy: Tensor,
    h: Tensor,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    row_means: Tensor,
    weight_offset: float,
    is_rms: bool,
    compute_dweight: bool,
    compute_dbias: bool,
    x_dtype: torch.dtype,
) -> BackwardOut:
    """dx of the slice and its dγ/dβ, with the rows' (mean(g·x̂), mean(g)) given ([M, 2], reduced across
    slices)."""
    m, n = h.shape
    dev = h.device
    acc = acc_dtype(h.dtype)
    dx = torch.empty((m, n), device=dev, dtype=x_dtype)
    if m == 0 or n == 0:
        return BackwardOut(
            dx,
            None,
            torch.zeros(n, device=dev, dtype=acc) if compute_dweight else None,
            torch.zeros(n, device=dev, dtype=acc) if compute_dbias else None,
        )
    cfg = kconfig.segment_config(n, acc.itemsize)
    programs, rows_per_program = row_groups(m, 2 * kconfig.device_facts(dev).sms)
    dw = torch.empty((programs, n), device=dev, dtype=acc) if compute_dweight else None
    db = torch.empty((programs, n), device=dev, dtype=acc) if compute_dbias else None
    _segment_backward[(programs, 1)](
        dy,
        h,
        weight,
        mean,
        rstd,
        None,
        None,
        dx,
        None,
        dw,
        db,
        None,
        row_means.to(acc).contiguous(),
        dy.stride(0),
        h.stride(0),
        0,
        dx.stride(0),
        0,
        m,
        n,
        n,
        rows_per_program,
        0.0,
        *_NO_MODULATION,
        PASS="dx",
        HAS_WEIGHT=weight is not None,
        COMPUTE_DW=compute_dweight,
        COMPUTE_DB=compute_dbias,
        HAS_DH_IN=False,
        HAS_DROPOUT=False,
        STORE_DRES=False,
        **_NO_MODULATION_SWITCHES,
        **_segment_switches(cfg, is_rms, weight_offset),
    )
    return BackwardOut(dx, None, dw.sum(dim=0) if compute_dweight else None, db.sum(dim=0) if compute_dbias else None)


# DyT: y = γ · tanh(α · h) + β over [M, N] rows (N = γ/β's width), h = residual + x or x.


class DyTGradsOut(NamedTuple):
    dx: Tensor  # [M, N], x's dtype
    dresidual: Optional[Tensor]  # [M, N] in residual_dtype when asked for a separate one, else None
    dalpha: Optional[Tensor]  # [] in the accumulation dtype, when asked for
    dweight: Optional[Tensor]  # [N] in the accumulation dtype, when asked for
    dbias: Optional[Tensor]


def _alpha_args(alpha: Optional[Tensor], alpha_value: float) -> tuple:
    """(ALPHA, alpha, alpha_lo): a one-element tensor, or a Python float and its float32 remainder."""
    if alpha is not None:
        return alpha, 0.0, 0.0
    return None, alpha_value, float32_remainder(alpha_value)


def dyt_forward(
    x: Tensor,
    residual: Optional[Tensor],
    alpha: Optional[Tensor],
    alpha_value: float,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    h_dtype: Optional[torch.dtype],
    config: Optional[KernelConfig] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """(y, h): ``y = weight · tanh(α · h) + bias`` with h = residual + x (stored in ``h_dtype`` when given) or x.

    α is the one-element tensor ``alpha`` or, when it is None, the float ``alpha_value``. y has x's dtype.
    """
    m, n = x.shape
    plan = dyt_plan(
        n,
        x.dtype,
        None if residual is None else residual.dtype,
        h_dtype,
        weight is not None,
        bias is not None,
        alpha is not None,
        x.device,
        config,
    )
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    h = torch.empty((m, n), device=x.device, dtype=h_dtype) if h_dtype is not None else None
    if m and n:
        alpha_ptr, alpha_hi, alpha_lo = _alpha_args(alpha, alpha_value)
        _dyt_forward[kconfig.elementwise_grid(m, n, plan.config, plan.facts)](
            x,
            residual,
            weight,
            bias,
            alpha_ptr,
            y,
            h,
            x.stride(0),
            0 if residual is None else residual.stride(0),
            y.stride(0),
            0 if h is None else h.stride(0),
            m,
            n,
            alpha_hi,
            alpha_lo,
            **plan.constexprs,
        )
    return y, h


def dyt_backward(
    dy: Tensor,
    h: Tensor,
    alpha: Optional[Tensor],
    alpha_value: float,
    weight: Optional[Tensor],
    dh_in: Optional[Tensor],
    x_dtype: torch.dtype,
    residual_dtype: Optional[torch.dtype],
    compute_dalpha: bool,
    compute_dweight: bool,
    compute_dbias: bool,
    config: Optional[KernelConfig] = None,
) -> DyTGradsOut:
    """DyT's gradients given dy (and ``dh_in``, the gradient of the h output): dx in ``x_dtype``, a separate
    d(residual) in ``residual_dtype`` when given, and dα, dγ, dβ summed from per-program partials."""
    m, n = h.shape
    dev = h.device
    plan = dyt_backward_plan(
        n,
        h.dtype,
        dy.dtype,
        weight is not None,
        alpha is not None,
        dh_in is not None,
        residual_dtype is not None,
        compute_dalpha,
        compute_dweight,
        compute_dbias,
        dev,
        config,
    )
    acc = plan.acc_dtype
    dx = torch.empty((m, n), device=dev, dtype=x_dtype)
    dres = torch.empty((m, n), device=dev, dtype=residual_dtype) if residual_dtype is not None else None
    row_programs, col_blocks = kconfig.elementwise_grid(m, n, plan.config, plan.facts) if m and n else (0, 0)
    dw = torch.zeros((row_programs, n), device=dev, dtype=acc) if compute_dweight else None
    db = torch.zeros((row_programs, n), device=dev, dtype=acc) if compute_dbias else None
    dalpha = torch.zeros(row_programs * col_blocks, device=dev, dtype=acc) if compute_dalpha else None
    if m and n:
        alpha_ptr, alpha_hi, alpha_lo = _alpha_args(alpha, alpha_value)
        _dyt_backward[(row_programs, col_blocks)](
            dy,
            h,
            weight,
            alpha_ptr,
            dh_in,
            dx,
            dres,
            dw,
            db,
            dalpha,
            dy.stride(0),
            h.stride(0),
            0 if dh_in is None else dh_in.stride(0),
            dx.stride(0),
            0 if dres is None else dres.stride(0),
            m,
            n,
            alpha_hi,
            alpha_lo,
            **plan.constexprs,
        )
    return DyTGradsOut(
        dx,
        dres,
        None if dalpha is None else dalpha.sum(),
        None if dw is None else dw.sum(dim=0),
        None if db is None else db.sum(dim=0),
    )


# Channels-first LayerNorm over dim 1 of a contiguous [B, C, S].


class ChannelsFirstOut(NamedTuple):
    y: Tensor  # [B, C, S], x's dtype
    mean: Optional[Tensor]  # [B, S] in the accumulation dtype; None without store_stats
    rstd: Optional[Tensor]


def channels_first_fits(c: int, dtype: torch.dtype) -> bool:
    """Whether the channels-first kernels (forward and backward) hold C channels of this dtype in registers."""
    return c <= kconfig.channels_first_max_channels(8 if dtype == torch.float64 else 4)


def channels_first_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    store_stats: bool = True,
    config: Optional[KernelConfig] = None,
) -> ChannelsFirstOut:
    """LayerNorm over dim 1 of ``x`` [B, C, S] (contiguous; C within :func:`channels_first_fits`)."""
    b, c, s = x.shape
    plan = channels_first_plan(
        c, x.dtype, weight is not None, bias is not None, store_stats, False, False, False, x.device, config
    )
    y = torch.empty((b, c, s), device=x.device, dtype=x.dtype)
    mean = torch.empty((b, s), device=x.device, dtype=plan.acc_dtype) if store_stats else None
    rstd = torch.empty((b, s), device=x.device, dtype=plan.acc_dtype) if store_stats else None
    if x.numel():
        cfg = plan.config
        tiles_per_item = cdiv(s, cfg.block_m)
        tiles = b * tiles_per_item
        grid = (min(tiles, cfg.programs_per_sm * plan.facts.sms),)
        _channels_first_forward[grid](
            x,
            weight,
            bias,
            y,
            mean,
            rstd,
            c,
            s,
            c * s,
            tiles_per_item,
            tiles,
            eps,
            float32_remainder(eps),
            **plan.constexprs,
        )
    return ChannelsFirstOut(y, mean, rstd)


def channels_first_backward(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    compute_dweight: bool,
    compute_dbias: bool,
    config: Optional[KernelConfig] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(dx, dγ, dβ) of channels-first LayerNorm given dy (contiguous [B, C, S], as x); dγ/dβ in the accumulation
    dtype, summed from per-program partial rows."""
    b, c, s = x.shape
    plan = channels_first_plan(
        c, x.dtype, weight is not None, False, False, True, compute_dweight, compute_dbias, x.device, config
    )
    acc = plan.acc_dtype
    dx = torch.empty((b, c, s), device=x.device, dtype=x.dtype)
    cfg = plan.config
    tiles_per_item = cdiv(s, cfg.block_m) if s else 0
    tiles = b * tiles_per_item
    programs, tiles_per_program = row_groups(tiles, cfg.programs_per_sm * plan.facts.sms) if tiles else (0, 0)
    dw = torch.zeros((programs, c), device=x.device, dtype=acc) if compute_dweight else None
    db = torch.zeros((programs, c), device=x.device, dtype=acc) if compute_dbias else None
    if tiles and c:
        _channels_first_backward[(programs,)](
            dy,
            x,
            weight,
            mean,
            rstd,
            dx,
            dw,
            db,
            c,
            s,
            c * s,
            tiles_per_item,
            tiles,
            tiles_per_program,
            **plan.constexprs,
        )
    return dx, None if dw is None else dw.sum(dim=0), None if db is None else db.sum(dim=0)
