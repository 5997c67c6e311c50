"""Launch configurations as data: one frozen dataclass per kernel, chosen by a named heuristic.

The thresholds started from register-budget arithmetic for Hopper (64K 32-bit registers per SM, 255 per
thread) and were then adjusted from one run of benchmarks/tune_kernels.py on an H100 (2026-11-23);
benchmarks/RESULTS.md records those numbers.
Every value is cached per (row length, element size, device), so a call pays one dict lookup.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import triton

# Forward keeps one float32 copy of the row in registers: 32K elements over 32 warps is 32 per thread.
FWD_MAX_SINGLE_CHUNK_N = 32768
# Backward keeps h, dy, x̂ and g live. Measured on an H100: at N = 16K the chunked walk beat the whole-row tile
# (0.52 vs 0.32–0.38 of copy), so whole rows stop at 8K.
BWD_MAX_SINGLE_CHUNK_N = 8192
# Longer rows are walked in chunks of this many elements.
FWD_CHUNK_N = 8192
BWD_CHUNK_N = 8192
BWD_LONG_CHUNK_N = 16384  # backward chunk from 64K on (H100: 16K chunks led at 64K, 256K and 1M)
BWD_LONG_N = 65536
# A tile should hold at least this many elements so that small rows still keep enough loads in flight.
MIN_TILE_ELEMENTS = 4096
# Backward grid: this many programs per SM, each reducing its rows' dγ/dβ into one float32 partial row.
# H100: 4 led for whole-row tiles at N ≤ 4K; 1 led (or tied) for chunked rows. Chunked rows are split into
# one-chunk segments, and the row groups shrink by the number of segments (see backward_programs).
BWD_PROGRAMS_PER_SM_SINGLE = 4
BWD_PROGRAMS_PER_SM_CHUNKED = 1
# The interpreter runs programs one after another: few programs, same total work.
INTERPRETER_SM_COUNT = 4


@dataclass(frozen=True)
class TileConfig:
    """How one kernel launch tiles an [M, N] problem."""

    block_m: int  # rows per tile
    block_n: int  # columns per tile: the whole row (single_chunk) or one chunk of it
    single_chunk: bool  # the whole row fits one tile
    num_warps: int
    # > 1 splits each row over this many programs. Forward: segment moments, then merge and normalize, so
    # that a few long rows still fill the GPU (opt-in until measured). Backward: segment sums, then dx and
    # dγ/dβ, the default for chunked rows (see backward_config).
    segments: int = 1
    # Forward only, whole-row tiles: > 0 makes the grid persistent, this many programs per SM walking the row
    # tiles (with num_stages > 1, the next tiles' loads overlap this tile's reductions).
    programs_per_sm: int = 0
    # Software-pipelining depth of the kernels' innermost loops over row tiles and chunks (the LOOP_STAGES
    # switch, tl.range's num_stages): 1 means none. Off by default until measured on a GPU.
    num_stages: int = 1


# Whole-row tiles measured fastest on an H100 (benchmarks/tune_kernels.py, bf16, M·N = 2^27, 2026-11-23),
# keyed by the padded row length; other lengths use the rule in _tile. One noisy run: the same tile measured
# for LayerNorm and for RMSNorm differed by up to 1.6×, so only choices that led in both are taken.
MEASURED_FWD: dict[int, "TileConfig"] = {}
MEASURED_BWD: dict[int, "TileConfig"] = {}


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉. Not triton.cdiv: that is a ConstexprFunction, ~10 µs of host time per call in triton 3.9."""
    return -(-a // b)


def pow2(k: int) -> int:
    """The smallest power of two ≥ k (a tl.arange length)."""
    return 1 << (k - 1).bit_length()


def segment_width(n: int, segments: int, block_n: int) -> int:
    """Columns per segment when a row of ``n`` is split over ``segments`` programs: a multiple of the tile
    width (aligned, vectorizable loads), so the real number of segments is ``cdiv(n, segment_width)``."""
    return cdiv(cdiv(n, segments), block_n) * block_n


def _warps_for(tile_elements: int) -> int:
    # About 16 elements per thread, at least one warp, at most 16.
    return max(1, min(16, triton.next_power_of_2(tile_elements) // 512))


def _tile(n: int, max_single: int, chunk: int, measured: dict[int, TileConfig]) -> TileConfig:
    if n <= max_single:
        # At least 2 columns: a tile whose reduced axis has size 1 is a corner of Triton's code generation
        # that only N = 1 reaches (suspected in the one GPU failure at M = 3, N = 1; the interpreter passes).
        # One masked column costs nothing there.
        block_n = triton.next_power_of_2(max(n, 2))
        if block_n in measured:
            return measured[block_n]
        block_m = max(1, min(64, MIN_TILE_ELEMENTS // block_n))
        return TileConfig(block_m, block_n, True, _warps_for(block_m * block_n))
    return TileConfig(1, chunk, False, _warps_for(chunk))


@functools.lru_cache(maxsize=None)
def forward_config(n: int) -> TileConfig:
    """Tiling for the forward kernel on rows of ``n`` elements."""
    return _tile(n, FWD_MAX_SINGLE_CHUNK_N, FWD_CHUNK_N, MEASURED_FWD)


@functools.lru_cache(maxsize=None)
def backward_config(n: int) -> TileConfig:
    """Tiling for the backward kernel on rows of ``n`` elements.

    Rows too long for one tile are split into one-chunk segments. The chunked walk reads h and dy twice
    either way (row sums, then dx), but split rows let the grid be few row groups × many segments, and each
    row group writes one float32 partial row of dγ (and dβ): with one group per SM, those partials cost 0.7×
    the bytes the gradient needs at N = 256K and 2.7× at N = 1M (LayerNorm, bf16; H100, 2026-11-23;
    benchmarks/RESULTS.md, "Where the backward's time goes").
    """
    cfg = _tile(n, BWD_MAX_SINGLE_CHUNK_N, BWD_LONG_CHUNK_N if n >= BWD_LONG_N else BWD_CHUNK_N, MEASURED_BWD)
    return cfg if cfg.single_chunk else dataclasses.replace(cfg, segments=cdiv(n, cfg.block_n))


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SM_COUNT


def backward_programs_per_sm(config: TileConfig) -> int:
    """Programs per SM the backward grid aims for with this tiling."""
    return BWD_PROGRAMS_PER_SM_SINGLE if config.single_chunk else BWD_PROGRAMS_PER_SM_CHUNKED


def backward_programs(m: int, device: torch.device, config: TileConfig, segments: int = 1) -> tuple[int, int]:
    """(row groups, rows per group) for a backward grid of row groups × ``segments`` over ``m`` rows."""
    return row_groups(m, backward_programs_per_sm(config) * sm_count(device), segments)


def row_groups(m: int, programs: int, segments: int = 1) -> tuple[int, int]:
    """(row groups, rows per group) for about ``programs`` programs in all over ``m`` rows cut into ``segments``.

    Each row group writes one float32 partial row of dγ/dβ, summed afterwards: 8 bytes per column and group
    for each, against 3·s bytes per element for the gradient itself. So the groups shrink as segments grow.
    """
    groups = max(1, min(m, programs // segments))
    rows_per_group = cdiv(m, groups)
    return cdiv(m, rows_per_group), rows_per_group


MEASURED_FWD.update({
    4096: TileConfig(2, 4096, True, 4),  # 0.59 / 0.94 of copy (LN / RMS) vs 0.40 / 0.72 for (1, 8 warps)
    16384: TileConfig(2, 16384, True, 32),
    32768: TileConfig(1, 32768, True, 32),  # 0.84 / 0.52 vs 0.40 / 0.47 with 16 warps
})
MEASURED_BWD.update({
    1024: TileConfig(4, 1024, True, 4),  # 0.54 / 0.79 vs 0.37 / 0.65 with 8 warps
    4096: TileConfig(4, 4096, True, 8),  # 0.67 (4 per SM) vs 0.41 / 0.43 for (1, 8 warps)
})
