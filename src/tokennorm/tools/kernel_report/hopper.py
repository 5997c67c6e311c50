"""The GPU the kernel report models: Hopper (sm_90) limits per SM, and the H100/H200 numbers of its
issue-rate model. Every hardware constant of the report (and of the fake driver's device) is here.

Limits: CUDA C Programming Guide, "Compute Capabilities", compute capability 9.0. The issue-rate model:

    budget = SMs · 4 warp-instructions/cycle · 32 threads · clock  /  (copy bandwidth / bytes per element)

is how many thread-instructions per element the SMs can issue while a device copy moves that element's bytes.
A kernel needing a large share of it cannot also keep enough loads in flight to run at copy speed (the issue
slots left are what hide latency). The clock is the boost clock, so the budget is an upper bound and the share a
lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass

ARCH = 90
WARP_SIZE = 32
REGISTERS_PER_SM = 65536
REGISTER_ALLOCATION_UNIT = 256  # registers are allocated per warp, in units of 256
SHARED_PER_SM = 228 * 1024
SHARED_PER_BLOCK_MAX = 227 * 1024  # the most one block may opt in to
SHARED_RESERVED_PER_BLOCK = 1024  # taken by the system from the SM's shared memory for each resident block
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32
THREADS_PER_BLOCK_MAX = 1024
ISSUE_PER_SM_PER_CYCLE = 4  # four schedulers per SM, each issuing one warp-instruction per cycle


@dataclass(frozen=True)
class Device:
    """One Hopper part: what the issue-rate model and the fake driver need."""

    name: str
    sms: int
    sm_clock_hz: float  # boost clock
    hbm_bytes_per_s: float  # theoretical
    copy_bytes_per_s: float  # a device-to-device copy's bandwidth
    copy_measured: bool
    copy_source: str  # where copy_bytes_per_s comes from
    mem_clock_khz: int
    mem_bus_bits: int
    l2_bytes: int

    def issue_budget(self, bytes_per_element: float) -> float:
        """Thread-instructions per element the SMs can issue while a copy moves ``bytes_per_element``."""
        elements_per_s = self.copy_bytes_per_s / bytes_per_element
        return self.sms * ISSUE_PER_SM_PER_CYCLE * WARP_SIZE * self.sm_clock_hz / elements_per_s


H100 = Device(
    name="H100 SXM5 80GB HBM3",
    sms=132,
    sm_clock_hz=1.98e9,
    hbm_bytes_per_s=3.35e12,
    copy_bytes_per_s=3.0e12,
    copy_measured=True,
    copy_source="docs/design.md: 3004 GB/s device copy, H100 80GB HBM3, torch 2.11, M·N = 2^27",
    mem_clock_khz=2_619_000,
    mem_bus_bits=5120,
    l2_bytes=50 << 20,
)
H200 = Device(
    name="H200 SXM 141GB HBM3e",
    sms=132,
    sm_clock_hz=1.98e9,
    hbm_bytes_per_s=4.8e12,
    copy_bytes_per_s=4.3e12,
    copy_measured=True,
    copy_source="device tool's KINDS.md: ~4.3 TB/s device-to-device copy through PyTorch on an H200, 2026-10-28",
    mem_clock_khz=3_201_000,
    mem_bus_bits=6144,
    l2_bytes=60 << 20,
)
DEVICES = {"h100": H100, "h200": H200}


@dataclass(frozen=True)
class Occupancy:
    """Programs (thread blocks) of one kernel resident on one SM, and what limits them."""

    programs: int
    by_registers: int
    by_warps: int
    by_shared: int
    by_blocks: int = BLOCKS_PER_SM

    @property
    def limited_by(self) -> str:
        limits = {
            "registers": self.by_registers,
            "warps": self.by_warps,
            "shared": self.by_shared,
            "blocks": self.by_blocks,
        }
        return min(limits, key=limits.__getitem__)


def occupancy(registers: int, num_warps: int, shared_bytes: int) -> Occupancy:
    """Resident programs per SM for a kernel using ``registers`` per thread, ``num_warps`` warps and
    ``shared_bytes`` of shared memory (static + dynamic) per program."""
    registers_per_warp = -(-registers * WARP_SIZE // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    by_registers = REGISTERS_PER_SM // (registers_per_warp * num_warps) if registers else BLOCKS_PER_SM
    by_shared = SHARED_PER_SM // (shared_bytes + SHARED_RESERVED_PER_BLOCK)
    if shared_bytes > SHARED_PER_BLOCK_MAX:
        by_shared = 0
    by_warps = WARPS_PER_SM // num_warps
    return Occupancy(min(by_registers, by_warps, by_shared, BLOCKS_PER_SM), by_registers, by_warps, by_shared)


def max_threads_per_block(registers: int) -> int:
    """The most threads one block of a kernel using ``registers`` per thread can have (what CUDA reports as
    CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)."""
    if registers == 0:
        return THREADS_PER_BLOCK_MAX
    registers_per_warp = -(-registers * WARP_SIZE // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    return min(THREADS_PER_BLOCK_MAX, REGISTERS_PER_SM // registers_per_warp * WARP_SIZE)
