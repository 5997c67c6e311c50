"""Launch plans: everything about a call that does not depend on its tensors' data, decided once.

A plan holds the kernel mode and tile (``config``), the norm, ε (and its float32 remainder, for float64
kernels), the dtypes, which of weight / bias / residual / dropout / stored h / statistics are present, and the
compile-time switches each kernel takes (``constexprs``, passed by name). Plans are cached by their key, so
building or fetching one costs one dict lookup (``functools.lru_cache``, bounded).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Optional

import torch

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import KernelConfig, DeviceFacts
from tokennorm.kernels.helpers import INTERPRETING

PLAN_CACHE_SIZE = 512


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of statistics and dγ/dβ partials: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def float32_remainder(value: float) -> float:
    """value − float32(value): Triton passes float arguments as float32, so float64 kernels add this back."""
    return value - struct.unpack("f", struct.pack("f", value))[0]


# Long rows under Triton's interpreter, which runs programs one after another: two launches (publish the
# partials, then finish) instead of one cooperative launch whose programs wait for each other.
LONG_ROWS_EXCHANGE = "two-launch" if INTERPRETING else "cooperative"


@dataclass(frozen=True, eq=False)
class ForwardPlan:
    """One forward call's decisions: ``Norm(residual + dropout(x)) · (weight + weight_offset) + bias``."""

    config: KernelConfig
    facts: DeviceFacts
    is_rms: bool
    eps: float
    eps_lo: float  # eps − float32(eps)
    dropout_p: float  # 0.0: no dropout
    h_dtype: Optional[torch.dtype]  # h stored in this dtype; None: not stored
    store_stats: bool  # mean/rstd written (backward needs them)
    acc_dtype: torch.dtype
    constexprs: dict = field(repr=False)  # the kernel's compile-time switches and launch options, by name

    @property
    def launch_kwargs(self) -> dict:
        return launch_kwargs(self.constexprs)


@dataclass(frozen=True, eq=False)
class BackwardPlan:
    """One backward call's decisions (the mirror of :class:`ForwardPlan`)."""

    config: KernelConfig
    facts: DeviceFacts
    is_rms: bool
    dropout_p: float
    x_dtype: torch.dtype  # dx's dtype
    residual_dtype: Optional[torch.dtype]  # d(residual) stored in this dtype; None: not stored
    compute_dweight: bool
    compute_dbias: bool
    acc_dtype: torch.dtype
    constexprs: dict = field(repr=False)

    @property
    def launch_kwargs(self) -> dict:
        return launch_kwargs(self.constexprs)


def launch_kwargs(constexprs: dict) -> dict:
    """What a launch passes by name: the plan's constexprs and options — without the register cap while
    torch.compile traces the launch (``wrap_triton`` forwards num_warps and num_stages, not ``maxnreg``; the
    kernel is then compiled uncapped, and a persistent grid sized for the capped one runs its last programs
    as a second wave: slower by that tail, never wrong)."""
    if "maxnreg" in constexprs and torch.compiler.is_compiling():
        return {k: v for k, v in constexprs.items() if k != "maxnreg"}
    return constexprs


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def forward_plan(
    n: int, x_dtype: torch.dtype, has_weight: bool, has_bias: bool, residual_dtype: Optional[torch.dtype],
    h_dtype: Optional[torch.dtype], eps: float, dropout_p: float, weight_offset: float, is_rms: bool,
    store_stats: bool, device: torch.device, config: Optional[KernelConfig] = None,
) -> ForwardPlan:
    """The plan for a forward over rows of ``n`` elements (``config`` overrides the default tile)."""
    acc = acc_dtype(x_dtype)
    facts = kconfig.device_facts(device)
    if config is None:
        # bytes per element a chunked forward's second pass reads again
        stream = h_dtype.itemsize if h_dtype is not None else x_dtype.itemsize + (
            residual_dtype.itemsize if residual_dtype is not None else 0)
        config = kconfig.forward_config(n, stream, acc.itemsize, facts)
    switches = dict(
        IS_RMS=is_rms, WEIGHT_OFFSET=float(weight_offset), HAS_WEIGHT=has_weight, HAS_BIAS=has_bias,
        HAS_RESIDUAL=residual_dtype is not None, HAS_DROPOUT=dropout_p > 0.0, STORE_H=h_dtype is not None,
        STORE_STATS=store_stats, BLOCK_N=config.block_n, **config.launch_options,
    )
    if config.mode == kconfig.ROWS:
        switches.update(BLOCK_M=config.block_m, NUM_STAGES=config.num_stages)
    elif config.mode == kconfig.LONG_ROWS:
        switches.update(S_BLOCK=kconfig.pow2(kconfig.long_rows_segments(n, config)))
    elif config.mode != kconfig.CHUNKED:
        raise ValueError(f"no forward kernel for mode {config.mode!r}")
    return ForwardPlan(config, facts, is_rms, eps, float32_remainder(eps), dropout_p, h_dtype, store_stats, acc,
                       switches)


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def backward_plan(
    n: int, h_dtype: torch.dtype, x_dtype: torch.dtype, residual_dtype: Optional[torch.dtype], has_weight: bool,
    has_dh_in: bool, dropout_p: float, weight_offset: float, is_rms: bool, compute_dweight: bool,
    compute_dbias: bool, device: torch.device, config: Optional[KernelConfig] = None,
) -> BackwardPlan:
    """The plan for a backward over rows of ``n`` elements; ``h_dtype`` is the normalized tensor's dtype."""
    acc = acc_dtype(h_dtype)
    facts = kconfig.device_facts(device)
    config = config or kconfig.backward_config(n, acc.itemsize, facts)
    switches = dict(
        IS_RMS=is_rms, WEIGHT_OFFSET=float(weight_offset), HAS_WEIGHT=has_weight, COMPUTE_DW=compute_dweight,
        COMPUTE_DB=compute_dbias, HAS_DH_IN=has_dh_in, HAS_DROPOUT=dropout_p > 0.0,
        STORE_DRES=residual_dtype is not None, BLOCK_N=config.block_n, **config.launch_options,
    )
    if config.mode == kconfig.ROWS:
        switches.update(BLOCK_M=config.block_m, NUM_STAGES=config.num_stages)
    elif config.mode == kconfig.LONG_ROWS:
        switches.update(S_BLOCK=kconfig.pow2(kconfig.long_rows_segments(n, config)))
    elif config.mode == kconfig.SEGMENT:
        switches.update(BLOCK_M=config.block_m)
    else:
        raise ValueError(f"no backward kernel for mode {config.mode!r}")
    return BackwardPlan(config, facts, is_rms, dropout_p, x_dtype, residual_dtype, compute_dweight, compute_dbias,
                        acc, switches)
