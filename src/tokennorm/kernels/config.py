"""Launch configurations as data: which kernel (mode) runs a row length, and how it is tiled.

Modes, one kernel each (forward / backward):

* ``rows`` — the whole row in registers (``kernels/rows.py``), a persistent grid;
* ``chunked`` — forward only: one program walks its row twice, the second pass from L2 (``kernels/chunked.py``),
  chosen while the rows in flight fit the L2;
* ``long_rows`` — the row split over co-resident programs that exchange partial statistics
  (``kernels/long_rows.py``), chosen beyond that, while a row's programs fit half the resident capacity;
* ``segment`` — one pass over a column segment with statistics reduced elsewhere (``kernels/segment.py``):
  tensor parallelism, and the backward of rows beyond the long-row capacity.

and two kernels of their own: ``elementwise`` (DyT, ``kernels/elementwise.py``) and ``channels_first``
(LayerNorm over dim 1 of [B, C, S], ``kernels/channels_first.py``).

The tiles were chosen without a GPU, from the compiled kernels (registers, spills, programs per SM, SASS per
element; ``python -m tokennorm.tools.kernel_report.compile_check --configs``, table in benchmarks/RESULTS.md)
and from the one H100 tuning run of the previous kernels (same file). Every config a plan can pick is cached
per (row length, element size, device), so a call pays one dict lookup.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

ROWS, CHUNKED, LONG_ROWS, SEGMENT = "rows", "chunked", "long_rows", "segment"
MODES = (ROWS, CHUNKED, LONG_ROWS, SEGMENT)
# The kernels of issue 18's other algorithms: DyT (no statistics) and LayerNorm over a strided channel dim.
ELEMENTWISE, CHANNELS_FIRST = "elementwise", "channels_first"


@dataclass(frozen=True)
class KernelConfig:
    """How one kernel launch tiles an [M, N] problem."""

    mode: str  # one of MODES
    block_n: int  # columns per tile: ≥ N (rows), one chunk (chunked, segment), one segment (long_rows)
    num_warps: int
    block_m: int = 1  # rows per tile (rows, segment)
    # Persistent grids (rows, chunked, long_rows): programs per SM — what fits on an SM by the compiled
    # kernel's registers (compile_check --configs checks it), so the whole grid is resident.
    programs_per_sm: int = 1
    # rows: depth of the row loop's software pipeline (tl.range num_stages; 2: the next tile's loads are in
    # flight while this one reduces).
    num_stages: int = 1
    # A register cap per thread (Triton's maxnreg) where the compiler's choice leaves an SM a program short and
    # the cap costs no spills; None: the compiler's choice.
    max_registers: Optional[int] = None

    @property
    def launch_options(self) -> dict:
        """Compile/launch options beside the constexprs."""
        options = {"num_warps": self.num_warps}
        if self.max_registers:
            options["maxnreg"] = self.max_registers
        return options


class DeviceFacts(NamedTuple):
    sms: int
    l2_bytes: int


# L2 sizes by device name, for when torch does not report one (bytes).
L2_BYTES_BY_NAME = {"H100": 50 << 20, "H200": 60 << 20, "H800": 50 << 20, "GH200": 60 << 20, "A100": 40 << 20}
DEFAULT_L2_BYTES = 40 << 20
# The interpreter runs programs one after another: a few "SMs" keep grids small, same total work.
INTERPRETER_FACTS = DeviceFacts(sms=4, l2_bytes=DEFAULT_L2_BYTES)

# A chunked row's second pass hits L2 only while the rows in flight (programs × row bytes) stay well inside
# it: H100's L2 is two partitions, and other data (γ, β, outputs on their way out) competes for it.
L2_FRACTION = 0.5

# Forward, whole rows: up to 16K elements (32 float32 values per thread at 16 warps: 125 registers; 32K spills).
FWD_ROWS_MAX_N = 16384
# Backward, whole rows: dy, x̂ and the dγ/dβ accumulators are live together; 8K at 16 warps is the last tile
# that compiles without spills.
BWD_ROWS_MAX_N = 8192

# Rows tiles by padded row length, from the bf16 LayerNorm kernels compiled for sm_90 (benchmarks/RESULTS.md,
# "Kernels v2: static report"): (rows per tile, warps, programs per SM, pipeline stages, register cap).
# 8 elements per thread (one 16-byte bf16 vector) up to 2K, 16 at 4K–8K, 32 at 16K; a row per warp below 256.
_FWD_ROWS = {
    128: (2, 1, 32, 2, None),
    256: (1, 1, 32, 2, None),
    512: (1, 2, 20, 2, None),
    1024: (1, 4, 12, 2, 40),  # 40 registers: 12 programs (48 warps) per SM instead of 10 at 47, no spills
    2048: (1, 8, 6, 2, 40),
    4096: (1, 8, 4, 2, None),
    8192: (1, 16, 2, 2, 64),  # 64 registers: 2 programs per SM instead of 1 at 74, no spills
    16384: (1, 16, 1, 1, None),  # 125 registers: no room for a second stage
}
_BWD_ROWS = {
    128: (2, 1, 24, 2, None),
    256: (1, 1, 32, 2, None),
    512: (1, 2, 16, 2, None),
    1024: (1, 4, 8, 2, None),
    2048: (1, 8, 4, 2, None),
    4096: (1, 8, 2, 2, None),  # 110 registers: 2 programs per SM, the next row prefetched (cp.async)
    8192: (1, 16, 1, 2, None),
}
# Chunked forward: 8K-element chunks at 16 warps (40 registers), one program per SM so that the rows in
# flight stay in L2 up to N = 64K (bf16) on an H100.
FWD_CHUNK = KernelConfig(CHUNKED, 8192, 16, programs_per_sm=1)
# Long rows: one 16K-element segment per program forward (≤ 128 registers, 1 per SM: 64 segments at N = 1M),
# 8K backward (dy, x̂ and the dγ/dβ accumulators: 121 registers; 128 segments at N = 1M).
FWD_LONG_ROWS = KernelConfig(LONG_ROWS, 16384, 16, programs_per_sm=1)
BWD_LONG_ROWS = KernelConfig(LONG_ROWS, 8192, 16, programs_per_sm=1)
SEGMENT_CHUNK = 8192


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉. Not triton.cdiv: that is a ConstexprFunction, many times the host time of this per call
    (benchmarks/RESULTS.md, "Host time per call")."""
    return -(-a // b)


def pow2(k: int) -> int:
    """The smallest power of two ≥ k (a tl.arange length)."""
    return 1 << max(k - 1, 0).bit_length()


@functools.lru_cache(maxsize=None)
def device_facts(device: torch.device) -> DeviceFacts:
    """SM count and L2 size of ``device``: from the device's properties, L2 from a table by name if torch does
    not report it; the interpreter's small fixed machine for CPU tensors."""
    if device.type != "cuda":
        return INTERPRETER_FACTS
    props = torch.cuda.get_device_properties(device)
    l2 = getattr(props, "L2_cache_size", 0) or next(
        (size for name, size in L2_BYTES_BY_NAME.items() if name in props.name), DEFAULT_L2_BYTES
    )
    return DeviceFacts(props.multi_processor_count, l2)


def _rows_tile(n: int, table: dict, max_n: int) -> Optional[KernelConfig]:
    """The rows tile for n elements, or None when the row is longer than ``max_n`` (too long for registers)."""
    block_n = pow2(max(n, 2))  # ≥ 2 columns: no size-1 reduction axis
    if block_n > max_n:
        return None
    key = max(block_n, min(table))
    block_m, warps, per_sm, stages, max_registers = table[key]
    block_m = max(1, block_m * key // block_n)  # short rows: more of them per tile, same elements
    return KernelConfig(ROWS, block_n, warps, block_m, per_sm, stages, max_registers)


def _float64_tile(n: int, doubled: KernelConfig) -> KernelConfig:
    """float64 rows take the warps of the float32 tile twice as long (two registers per value), uncapped."""
    block_n = pow2(max(n, 2))
    return KernelConfig(
        ROWS,
        block_n,
        doubled.num_warps,
        max(1, doubled.block_m * doubled.block_n // (2 * block_n)),
        doubled.programs_per_sm,
        doubled.num_stages,
    )


def long_rows_segments(n: int, cfg: KernelConfig) -> int:
    return cdiv(n, cfg.block_n)


def long_rows_fit(n: int, cfg: KernelConfig, facts: DeviceFacts) -> bool:
    """A long row's programs (one per segment) must all be resident at once: see kernels/long_rows.py."""
    return long_rows_segments(n, cfg) <= cfg.programs_per_sm * facts.sms


def chunked_fits_l2(n: int, stream_bytes: int, cfg: KernelConfig, facts: DeviceFacts) -> bool:
    """Whether the rows a chunked forward has in flight stay in L2 between its two passes.

    ``stream_bytes``: bytes per element the second pass reads again (x's itemsize, plus the residual's, or h's
    when h is stored).
    """
    return cfg.programs_per_sm * facts.sms * n * stream_bytes <= L2_FRACTION * facts.l2_bytes


@functools.lru_cache(maxsize=1024)
def forward_config(
    n: int, stream_bytes: int = 2, acc_bytes: int = 4, facts: DeviceFacts = INTERPRETER_FACTS
) -> KernelConfig:
    """The forward kernel and tile for rows of ``n`` elements (``acc_bytes`` 8 for float64)."""
    rows = _rows_tile(n * acc_bytes // 4, _FWD_ROWS, FWD_ROWS_MAX_N)
    if rows is not None:
        return rows if acc_bytes == 4 else _float64_tile(n, rows)
    if chunked_fits_l2(n, stream_bytes, FWD_CHUNK, facts):
        return FWD_CHUNK
    long_rows = FWD_LONG_ROWS if acc_bytes == 4 else KernelConfig(LONG_ROWS, FWD_LONG_ROWS.block_n // 2, 16)
    if long_rows_fit(n, long_rows, facts):
        return long_rows
    return FWD_CHUNK  # beyond the resident capacity: the second pass comes from HBM


@functools.lru_cache(maxsize=1024)
def backward_config(n: int, acc_bytes: int = 4, facts: DeviceFacts = INTERPRETER_FACTS) -> KernelConfig:
    """The backward kernel and tile for rows of ``n`` elements."""
    rows = _rows_tile(n * acc_bytes // 4, _BWD_ROWS, BWD_ROWS_MAX_N)
    if rows is not None:
        return rows if acc_bytes == 4 else _float64_tile(n, rows)
    long_rows = BWD_LONG_ROWS if acc_bytes == 4 else KernelConfig(LONG_ROWS, BWD_LONG_ROWS.block_n // 2, 16)
    if long_rows_fit(n, long_rows, facts):
        return long_rows
    return segment_config(n, acc_bytes)


# AdaLN (gate, residual, per-sample shift/scale, statistics stored; bf16 compiled for sm_90, 2026-11-30): the
# forward holds three more streams, so the register caps of the plain tiles would spill — uncapped, these many
# programs fit per SM (the others' counts fit as they are).
_ADA_FWD_PROGRAMS = {1024: 10, 2048: 5}
# The backward adds x, scale, gate, the h gradient and three per-sample accumulators: one pipeline stage (a second
# costs more registers than it hides), four warps up to 1K, sixteen beyond (fewer registers per thread); 8K
# spills, so rows up to 4K: (warps, programs per SM).
_ADA_BWD_ROWS = {128: (4, 6), 256: (4, 6), 512: (4, 5), 1024: (4, 4), 2048: (16, 1), 4096: (16, 1)}
ADA_BWD_ROWS_MAX_N = 4096


@functools.lru_cache(maxsize=1024)
def ada_forward_config(
    n: int, stream_bytes: int = 2, acc_bytes: int = 4, facts: DeviceFacts = INTERPRETER_FACTS
) -> KernelConfig:
    """AdaLN's forward tile for rows of ``n`` elements: the plain one (:func:`forward_config`), rows tiles without
    the register cap and with the programs per SM that fit."""
    cfg = forward_config(n, stream_bytes, acc_bytes, facts)
    if cfg.mode != ROWS:
        return cfg
    per_sm = _ADA_FWD_PROGRAMS.get(max(cfg.block_n * acc_bytes // 4, min(_FWD_ROWS)), cfg.programs_per_sm)
    return dataclasses.replace(cfg, max_registers=None, programs_per_sm=min(per_sm, cfg.programs_per_sm))


@functools.lru_cache(maxsize=1024)
def ada_backward_config(n: int, acc_bytes: int = 4, facts: DeviceFacts = INTERPRETER_FACTS) -> KernelConfig:
    """AdaLN's backward tile for rows of ``n`` elements: rows tiles up to 4K (``_ADA_BWD_ROWS``), else the plain
    choice (long rows, segments)."""
    key = max(pow2(max(n * acc_bytes // 4, 2)), min(_ADA_BWD_ROWS))
    if key > ADA_BWD_ROWS_MAX_N:
        return backward_config(n, acc_bytes, facts)
    warps, per_sm = _ADA_BWD_ROWS[key]
    block_n = pow2(max(n, 2))
    block_m = max(1, 256 // (block_n * acc_bytes // 4))  # short rows: several per tile, as in the plain tiles
    return KernelConfig(ROWS, block_n, warps, block_m, per_sm, 1)


def segment_config(seg_n: int, acc_bytes: int = 4) -> KernelConfig:
    """Segment kernels over ``seg_n``-column segments: one chunk when it fits, several rows per tile for short
    segments."""
    block_n = min(pow2(max(seg_n, 2)), SEGMENT_CHUNK * 4 // acc_bytes)
    block_m = max(1, min(16, 2048 // block_n))
    return KernelConfig(SEGMENT, block_n, max(1, min(16, block_m * block_n // 256)), block_m)


def backward_programs_per_sm(cfg: KernelConfig) -> int:
    return cfg.programs_per_sm


def row_groups(m: int, programs: int, segments: int = 1) -> tuple[int, int]:
    """(row groups, rows per group) for about ``programs`` programs in all over ``m`` rows cut into ``segments``.

    Each row group writes one float32 partial row of dγ/dβ, summed afterwards: 8 bytes per column and group
    for each, against 3·s bytes per element for the gradient itself. So the groups shrink as segments grow.
    """
    groups = max(1, min(m, programs // segments))
    rows_per_group = cdiv(m, groups)
    return cdiv(m, rows_per_group), rows_per_group


def sample_groups(samples: int, tokens: int, programs: int) -> tuple[int, int, int, int]:
    """(programs, samples per program, splits, tokens per split) of a rows backward summing per-sample AdaLN
    gradients, for about ``programs`` programs: several whole samples per program when samples are at least as
    many as programs, else each sample's tokens split into ``splits`` ranges. Each (sample, range) writes one
    float32 partial row per modulation, as the row groups do for dγ/dβ."""
    if samples >= programs:
        per_program = cdiv(samples, programs)
        return cdiv(samples, per_program), per_program, 1, tokens
    per_split = cdiv(tokens, min(tokens, cdiv(programs, samples)))
    splits = cdiv(tokens, per_split)
    return samples * splits, 1, splits, per_split


# DyT (elementwise), bf16 compiled for sm_90 (2026-11-30; benchmarks/RESULTS.md, "Issue 18 kernels: static
# report"): forward 4096-element tiles at 4 warps (32 per thread: four 16-byte vectors in flight per stream, 56
# registers, no shared memory or barriers), 8 programs per SM; backward 2048 at 8 warps (dy, h and three float32
# accumulators: 80 registers), 3 per SM. Neither gains from a pipeline stage (more registers, fewer programs).
# Elements per tile halve for 4-byte data, so registers per thread stay. Up to 1024 columns per block.
ELEMENTWISE_MAX_BLOCK_N = 1024
_ELEMENTWISE = {False: (4096, 4, 8), True: (2048, 8, 3)}  # by backward: (bf16 elements per tile, warps, per SM)


@functools.lru_cache(maxsize=1024)
def elementwise_config(n: int, item_bytes: int = 2, backward: bool = False) -> KernelConfig:
    """The DyT kernel's tile for rows of ``n`` elements (γ/β's width) of ``item_bytes``-byte data."""
    elements, warps, per_sm = _ELEMENTWISE[backward]
    block_n = min(pow2(max(n, 2)), ELEMENTWISE_MAX_BLOCK_N)
    block_m = max(1, elements * 2 // max(item_bytes, 2) // block_n)
    return KernelConfig(ELEMENTWISE, block_n, warps, block_m, per_sm)


def elementwise_grid(m: int, n: int, cfg: KernelConfig, facts: DeviceFacts) -> tuple[int, int]:
    """(row programs, column blocks): about ``programs_per_sm`` × SMs programs in all, each walking row tiles."""
    col_blocks = cdiv(n, cfg.block_n)
    row_programs = max(1, min(cdiv(m, cfg.block_m), cdiv(cfg.programs_per_sm * facts.sms, col_blocks)))
    return row_programs, col_blocks


# Channels-first LayerNorm: tiles of BLOCK_T tokens × all channels (BLOCK_C = C rounded up to a power of two),
# the channels in registers: by BLOCK_C, (tokens, warps, programs per SM), bf16 compiled for sm_90 (2026-11-30).
# At least 8 tokens (one 16-byte bf16 vector per channel); ~4096 elements forward, ~2048 backward where C allows,
# at most 16K / 8K — the rows kernels' register limits. One pipeline stage: a second costs more registers than
# it hides, the programs of an SM overlap instead. Beyond (C > 2048 forward, > 1024 backward) the channels go last
# in a copy and the rows kernels run (``channels_first_config`` is None).
_CHANNELS_FIRST = {
    False: {128: (32, 8, 3), 256: (16, 8, 3), 512: (8, 8, 4), 1024: (8, 8, 2), 2048: (8, 16, 1)},
    True: {128: (16, 4, 4), 256: (8, 8, 3), 512: (8, 8, 2), 1024: (8, 16, 1)},
}


@functools.lru_cache(maxsize=1024)
def channels_first_config(c: int, acc_bytes: int = 4, backward: bool = False) -> Optional[KernelConfig]:
    """The channels-first kernel's tile for C channels, or None when the channels do not fit registers (float64:
    the entry of twice the channels, as two registers hold a value)."""
    table = _CHANNELS_FIRST[backward]
    block_c = pow2(max(c, 2))
    key = max(block_c * acc_bytes // 4, min(table))
    if key not in table:
        return None
    tokens, warps, per_sm = table[key]
    return KernelConfig(CHANNELS_FIRST, block_c, warps, max(1, tokens * key // (block_c * acc_bytes // 4)), per_sm)


def channels_first_max_channels(acc_bytes: int = 4) -> int:
    """The most channels both channels-first kernels hold in registers (a plain function: torch.compile traces
    it without a cache in the way)."""
    return min(max(table) for table in _CHANNELS_FIRST.values()) * 4 // acc_bytes
