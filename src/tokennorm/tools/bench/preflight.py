"""What is checked before a run starts, so that a run never ends in an error it could have given at once:
output paths that can be written (their folders created), and shapes that fit the device's free memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from tokennorm.tools.bench.cases import footprint_bytes

if TYPE_CHECKING:
    from tokennorm.tools.bench.cases import Case

STDOUT = "-"


def prepare_outputs(paths: Sequence[tuple[str, Optional[str]]]) -> Optional[str]:
    """Create the folder of every output path given (``(option, path)`` pairs; None: not asked for); the reason
    one cannot be written, or None. ``-`` (standard output) is accepted for ``--json`` only."""
    for option, path in paths:
        if path is None:
            continue
        if path == STDOUT:
            if option != "--json":
                return f"{option} -: only --json can be written to standard output"
            continue
        target = Path(path)
        if target.is_dir():
            return f"{option} {path}: is a folder; give a file name"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"{option} {path}: cannot create its folder ({exc.strerror or exc})"
        if not os.access(target.parent, os.W_OK):
            return f"{option} {path}: its folder {target.parent} is not writable"
    return None


def available_memory(device: str) -> Optional[int]:
    """Bytes free on ``device`` now (CUDA: the driver's count; CPU: the kernel's MemAvailable), or None when the
    system does not say."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def oversized(cases: Sequence[Case], implementations: int, device: str, free: Optional[int]) -> Optional[str]:
    """Why the largest case cannot run in ``free`` bytes (None when it fits, or when ``free`` is unknown)."""
    if free is None or not cases:
        return None
    largest = max(cases, key=lambda c: footprint_bytes(c, implementations))
    need = footprint_bytes(largest, implementations)
    if need <= free:
        return None
    return (
        f"the case {largest.label} needs about {_gb(need)} with {implementations} implementation(s), more than "
        f"the {_gb(free)} free on {device}; use smaller --sizes or --mn, or fewer --impls"
    )
