"""Launch configurations as data: one frozen dataclass per kernel, chosen by a named heuristic.

The thresholds come from register-budget arithmetic for Hopper (64K 32-bit registers per SM, 255 per
thread); they have not yet been tuned on a GPU — benchmarks/RESULTS.md records what has been measured.
Every value is cached per (row length, element size, device), so a call pays one dict lookup.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

# Forward keeps one float32 copy of the row in registers: 32K elements over 16 warps is 64 per thread.
FWD_MAX_SINGLE_CHUNK_N = 32768
# Backward keeps h, dy, x̂ and g live: half the forward's row length for the same registers per thread.
BWD_MAX_SINGLE_CHUNK_N = 16384
# Longer rows are walked in chunks of this many elements (16 per thread at 16 warps).
FWD_CHUNK_N = 8192
BWD_CHUNK_N = 4096
# A tile should hold at least this many elements so that small rows still keep enough loads in flight.
MIN_TILE_ELEMENTS = 4096
# Backward grid: this many programs per SM, each reducing its rows' dγ/dβ into one float32 partial row.
BWD_PROGRAMS_PER_SM = 2
# The interpreter runs programs one after another: few programs, same total work.
INTERPRETER_SM_COUNT = 4


@dataclass(frozen=True)
class TileConfig:
    """How one kernel launch tiles an [M, N] problem."""

    block_m: int  # rows per tile
    block_n: int  # columns per tile: the whole row (single_chunk) or one chunk of it
    single_chunk: bool  # the whole row fits one tile
    num_warps: int


def _warps_for(tile_elements: int) -> int:
    # About 16 elements per thread, at least one warp, at most 16.
    return max(1, min(16, triton.next_power_of_2(tile_elements) // 512))


def _tile(n: int, max_single: int, chunk: int) -> TileConfig:
    if n <= max_single:
        block_n = triton.next_power_of_2(max(n, 1))
        block_m = max(1, min(64, MIN_TILE_ELEMENTS // block_n))
        return TileConfig(block_m, block_n, True, _warps_for(block_m * block_n))
    return TileConfig(1, chunk, False, _warps_for(chunk))


@functools.lru_cache(maxsize=None)
def forward_config(n: int) -> TileConfig:
    """Tiling for the forward kernel on rows of ``n`` elements."""
    return _tile(n, FWD_MAX_SINGLE_CHUNK_N, FWD_CHUNK_N)


@functools.lru_cache(maxsize=None)
def backward_config(n: int) -> TileConfig:
    """Tiling for the backward kernel on rows of ``n`` elements."""
    return _tile(n, BWD_MAX_SINGLE_CHUNK_N, BWD_CHUNK_N)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SM_COUNT


def backward_programs(m: int, device: torch.device) -> tuple[int, int]:
    """(number of programs, rows per program) for the backward grid over ``m`` rows."""
    programs = max(1, min(m, BWD_PROGRAMS_PER_SM * _sm_count(device)))
    rows_per_program = triton.cdiv(m, programs)
    return triton.cdiv(m, rows_per_program), rows_per_program
