"""Read a compiled kernel's cubin with the CUDA binary utilities Triton ships (``cuobjdump``), no GPU needed."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton

BIN_DIR = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    tool = os.path.join(BIN_DIR, "cuobjdump")
    if not os.path.exists(tool):
        raise FileNotFoundError(f"this triton install has no cuobjdump (looked in {BIN_DIR})")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run([tool, *flags, f.name], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(flags)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Resources:
    """Per-thread and per-block resources of one kernel, as the linker allocated them."""

    registers: int  # per thread
    stack: int  # bytes per thread: the call stack, spills included
    local: int  # bytes per thread of local memory (spilled or indexed arrays)
    # bytes per block declared statically: for Triton's kernels (whose shared memory is all dynamic), the 1 KB
    # sm_90 reserves for the system per block, shown when the kernel uses shared memory at all
    static_shared: int


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resources(cubin: bytes) -> Resources:
    """Registers, stack, local and static shared memory of the (single) kernel in ``cubin``."""
    out = _cuobjdump(cubin, "--dump-resource-usage")
    match = _RESOURCES.search(out)
    if match is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output:\n{out}")
    regs, stack, shared, local = map(int, match.groups())
    return Resources(registers=regs, stack=stack, local=local, static_shared=shared)


def sass(cubin: bytes) -> str:
    """The kernel's SASS (machine code) as cuobjdump prints it."""
    return _cuobjdump(cubin, "-sass")
