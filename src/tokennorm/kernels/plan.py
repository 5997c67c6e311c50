"""Launch plans: everything about a call that does not depend on its tensors' data, decided once.

A plan holds the kernel mode and tile (``config``), the norm, ε (and its float32 remainder, for float64 kernels),
the dtypes, which of weight / bias / residual / dropout / stored h / statistics / AdaLN's gate and modulation are
present, the compile-time switches each kernel takes (``constexprs``, passed by name), and the mode's kernel with
those switches bound (``kernel``, a :class:`~tokennorm.kernels.launcher.BoundLauncher`): a launch passes only its
runtime arguments (a forward without AdaLN not even its last ones: ε, its float32 remainder, the dropout probability
and the absent AdaLN arguments are bound too). Plans are cached by their key, so building or fetching one costs one
dict lookup (``functools.lru_cache``, bounded).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Optional

import torch

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.chunked import chunked_forward_kernel
from tokennorm.kernels.config import DeviceFacts, KernelConfig
from tokennorm.kernels.helpers import INTERPRETING
from tokennorm.kernels.launcher import BoundLauncher, CachedLauncher
from tokennorm.kernels.long_rows import long_rows_backward_kernel, long_rows_forward_kernel
from tokennorm.kernels.rows import rows_backward_kernel, rows_forward_kernel
from tokennorm.kernels.segment import segment_backward_kernel

PLAN_CACHE_SIZE = 512

# The kernel of each mode, launched through one CachedLauncher (its cache shared by every plan that runs it).
FORWARD_KERNELS = {
    kconfig.ROWS: CachedLauncher(rows_forward_kernel),
    kconfig.CHUNKED: CachedLauncher(chunked_forward_kernel),
    kconfig.LONG_ROWS: CachedLauncher(long_rows_forward_kernel),
}
BACKWARD_KERNELS = {
    kconfig.ROWS: CachedLauncher(rows_backward_kernel),
    kconfig.LONG_ROWS: CachedLauncher(long_rows_backward_kernel),
    kconfig.SEGMENT: CachedLauncher(segment_backward_kernel),
}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of statistics and dγ/dβ partials: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def float32_remainder(value: float) -> float:
    """value − float32(value): Triton passes float arguments as float32, so float64 kernels add this back."""
    return value - struct.unpack("f", struct.pack("f", value))[0]


# The forward kernels' AdaLN arguments (GATE, SHIFT, SCALE, their row strides, tokens) when there is no AdaLN.
NO_MODULATION = (None, None, None, 0, 0, 0, 1)

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
    programs: int  # a persistent grid's size: programs_per_sm · SMs
    constexprs: dict = field(repr=False)  # the kernel's compile-time switches and launch options, by name
    # FORWARD_KERNELS[config.mode] with the constexprs bound, and, for ROWS and CHUNKED without AdaLN, the
    # trailing runtime arguments (eps, eps_lo, dropout_p, NO_MODULATION): those launches pass the first 15
    kernel: BoundLauncher = field(repr=False)
    has_gate: bool = False  # AdaLN-Zero: h = residual + gate ⊙ x
    has_modulation: bool = False  # AdaLN: y = n · (1 + scale) + shift


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
    programs: int  # a persistent grid's size: programs_per_sm · SMs
    constexprs: dict = field(repr=False)
    kernel: BoundLauncher = field(repr=False)  # BACKWARD_KERNELS[config.mode] with the constexprs bound
    has_gate: bool = False  # AdaLN-Zero's gate: dx = gate ⊙ dh, dgate = Σ dh ⊙ x
    has_modulation: bool = False  # AdaLN's shift and scale: dshift = Σ dy, dscale = Σ dy · n
    modulation_sums: bool = False  # per-sample sums as per-program partials (rows); else per-token outputs


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def forward_plan(
    n: int,
    x_dtype: torch.dtype,
    has_weight: bool,
    has_bias: bool,
    residual_dtype: Optional[torch.dtype],
    h_dtype: Optional[torch.dtype],
    eps: float,
    dropout_p: float,
    weight_offset: float,
    is_rms: bool,
    store_stats: bool,
    device: torch.device,
    config: Optional[KernelConfig] = None,
    has_gate: bool = False,
    has_modulation: bool = False,
) -> ForwardPlan:
    """The plan for a forward over rows of ``n`` elements (``config`` overrides the default tile); ``has_gate``
    and ``has_modulation`` switch on AdaLN's gate and shift/scale."""
    acc = acc_dtype(x_dtype)
    facts = kconfig.device_facts(device)
    if config is None:
        # bytes per element a chunked forward's second pass reads again
        stream = (
            h_dtype.itemsize
            if h_dtype is not None
            else x_dtype.itemsize + (residual_dtype.itemsize if residual_dtype is not None else 0)
        )
        choose = kconfig.ada_forward_config if has_gate or has_modulation else kconfig.forward_config
        config = choose(n, stream, acc.itemsize, facts)
    switches = dict(
        IS_RMS=is_rms,
        WEIGHT_OFFSET=float(weight_offset),
        HAS_WEIGHT=has_weight,
        HAS_BIAS=has_bias,
        HAS_RESIDUAL=residual_dtype is not None,
        HAS_DROPOUT=dropout_p > 0.0,
        STORE_H=h_dtype is not None,
        STORE_STATS=store_stats,
        HAS_GATE=has_gate,
        HAS_MOD=has_modulation,
        BLOCK_N=config.block_n,
        **config.launch_options,
    )
    if config.mode == kconfig.ROWS:
        switches.update(BLOCK_M=config.block_m, NUM_STAGES=config.num_stages)
    elif config.mode == kconfig.LONG_ROWS:
        switches.update(S_BLOCK=kconfig.pow2(kconfig.long_rows_segments(n, config)))
    elif config.mode != kconfig.CHUNKED:
        raise ValueError(f"no forward kernel for mode {config.mode!r}")
    eps_lo = float32_remainder(eps)
    # ROWS and CHUNKED launches without AdaLN end with arguments the plan decides: bound once, not described for
    # the launch key on every call (benchmarks/RESULTS.md, "Host time per call")
    suffix = () if has_modulation or config.mode == kconfig.LONG_ROWS else (eps, eps_lo, dropout_p, *NO_MODULATION)
    return ForwardPlan(
        config,
        facts,
        is_rms,
        eps,
        eps_lo,
        dropout_p,
        h_dtype,
        store_stats,
        acc,
        config.programs_per_sm * facts.sms,
        switches,
        FORWARD_KERNELS[config.mode].bind(*suffix, **switches),
        has_gate,
        has_modulation,
    )


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def backward_plan(
    n: int,
    h_dtype: torch.dtype,
    x_dtype: torch.dtype,
    residual_dtype: Optional[torch.dtype],
    has_weight: bool,
    has_dh_in: bool,
    dropout_p: float,
    weight_offset: float,
    is_rms: bool,
    compute_dweight: bool,
    compute_dbias: bool,
    device: torch.device,
    config: Optional[KernelConfig] = None,
    has_bias: bool = False,
    has_gate: bool = False,
    has_modulation: bool = False,
    per_sample: bool = False,
) -> BackwardPlan:
    """The plan for a backward over rows of ``n`` elements; ``h_dtype`` is the normalized tensor's dtype.

    AdaLN: ``has_gate``, ``has_modulation`` as the forward's; ``has_bias``: β is read (dscale = Σ dy · n needs
    n = x̂ · w + b); ``per_sample``: the modulations are [B, N], their gradients sums over each sample's tokens
    — as per-program partials in the rows kernel, as per-token outputs summed afterwards in the others."""
    acc = acc_dtype(h_dtype)
    facts = kconfig.device_facts(device)
    if config is None:
        choose = kconfig.ada_backward_config if has_gate or has_modulation else kconfig.backward_config
        config = choose(n, acc.itemsize, facts)
    switches = dict(
        IS_RMS=is_rms,
        WEIGHT_OFFSET=float(weight_offset),
        HAS_WEIGHT=has_weight,
        COMPUTE_DW=compute_dweight,
        COMPUTE_DB=compute_dbias,
        HAS_DH_IN=has_dh_in,
        HAS_DROPOUT=dropout_p > 0.0,
        STORE_DRES=residual_dtype is not None,
        HAS_BIAS=has_bias,
        HAS_MOD=has_modulation,
        HAS_GATE=has_gate,
        BLOCK_N=config.block_n,
        **config.launch_options,
    )
    modulation_sums = per_sample and (has_gate or has_modulation) and config.mode == kconfig.ROWS
    if config.mode == kconfig.ROWS:
        switches.update(BLOCK_M=config.block_m, NUM_STAGES=config.num_stages, MOD_SUMS=modulation_sums)
    elif config.mode == kconfig.LONG_ROWS:
        switches.update(S_BLOCK=kconfig.pow2(kconfig.long_rows_segments(n, config)))
    elif config.mode == kconfig.SEGMENT:
        switches.update(BLOCK_M=config.block_m)
    else:
        raise ValueError(f"no backward kernel for mode {config.mode!r}")
    return BackwardPlan(
        config,
        facts,
        is_rms,
        dropout_p,
        x_dtype,
        residual_dtype,
        compute_dweight,
        compute_dbias,
        acc,
        config.programs_per_sm * facts.sms,
        switches,
        BACKWARD_KERNELS[config.mode].bind(**switches),
        has_gate,
        has_modulation,
        modulation_sums,
    )


@dataclass(frozen=True, eq=False)
class KernelPlan:
    """A call's decisions for the kernels without statistics to merge (DyT, channels-first LayerNorm): the tile,
    the device facts, the accumulation dtype and the kernel's switches."""

    config: KernelConfig
    facts: DeviceFacts
    acc_dtype: torch.dtype
    constexprs: dict = field(repr=False)  # the kernel's compile-time switches and launch options, by name


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def dyt_plan(
    n: int,
    dtype: torch.dtype,
    residual_dtype: Optional[torch.dtype],
    h_dtype: Optional[torch.dtype],
    has_weight: bool,
    has_bias: bool,
    alpha_tensor: bool,
    device: torch.device,
    config: Optional[KernelConfig] = None,
) -> KernelPlan:
    """DyT's forward over rows of ``n`` elements (γ/β's width): h = residual + x stored in ``h_dtype`` when given."""
    acc = acc_dtype(torch.promote_types(dtype, residual_dtype or dtype))
    config = config or kconfig.elementwise_config(n, dtype.itemsize, backward=False)
    switches = dict(
        HAS_RESIDUAL=residual_dtype is not None,
        HAS_WEIGHT=has_weight,
        HAS_BIAS=has_bias,
        ALPHA_TENSOR=alpha_tensor,
        STORE_H=h_dtype is not None,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        NUM_STAGES=config.num_stages,
        **config.launch_options,
    )
    return KernelPlan(config, kconfig.device_facts(device), acc, switches)


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def dyt_backward_plan(
    n: int,
    h_dtype: torch.dtype,
    dy_dtype: torch.dtype,
    has_weight: bool,
    alpha_tensor: bool,
    has_dh_in: bool,
    store_dres: bool,
    compute_dalpha: bool,
    compute_dweight: bool,
    compute_dbias: bool,
    device: torch.device,
    config: Optional[KernelConfig] = None,
) -> KernelPlan:
    """DyT's backward over rows of ``n`` elements; ``h_dtype`` is the dtype of what DyT saw."""
    acc = acc_dtype(torch.promote_types(h_dtype, dy_dtype))
    config = config or kconfig.elementwise_config(n, max(h_dtype.itemsize, dy_dtype.itemsize), backward=True)
    switches = dict(
        HAS_WEIGHT=has_weight,
        ALPHA_TENSOR=alpha_tensor,
        HAS_DH_IN=has_dh_in,
        STORE_DRES=store_dres,
        COMPUTE_DALPHA=compute_dalpha,
        COMPUTE_DW=compute_dweight,
        COMPUTE_DB=compute_dbias,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        NUM_STAGES=config.num_stages,
        **config.launch_options,
    )
    return KernelPlan(config, kconfig.device_facts(device), acc, switches)


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def channels_first_plan(
    c: int,
    dtype: torch.dtype,
    has_weight: bool,
    has_bias: bool,
    store_stats: bool,
    backward: bool,
    compute_dweight: bool,
    compute_dbias: bool,
    device: torch.device,
    config: Optional[KernelConfig] = None,
) -> Optional[KernelPlan]:
    """Channels-first LayerNorm over C channels, forward or backward; None when the channels are too many for the
    kernel's registers (``config.channels_first_config``)."""
    acc = acc_dtype(dtype)
    config = config or kconfig.channels_first_config(c, acc.itemsize, backward)
    if config is None:
        return None
    switches = dict(
        HAS_WEIGHT=has_weight,
        BLOCK_T=config.block_m,
        BLOCK_C=config.block_n,
        NUM_STAGES=config.num_stages,
        **config.launch_options,
    )
    if backward:
        switches.update(COMPUTE_DW=compute_dweight, COMPUTE_DB=compute_dbias)
    else:
        switches.update(HAS_BIAS=has_bias, STORE_STATS=store_stats)
    return KernelPlan(config, kconfig.device_facts(device), acc, switches)
