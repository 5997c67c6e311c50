"""What is measured: the ops, the directions, the fewest bytes each must move, and the shapes of a sweep.

Bytes are the least traffic an op needs for an M×N input of element size s (parameters, O(N), neglected):

============  =======================================  =============================================
op            forward                                  forward + backward
============  =======================================  =============================================
norm          2·M·N·s  (read x, write y)               5·M·N·s  (+ read x, read dy, write dx)
Add & Norm    4·M·N·s  (read x, r; write y, h)         8·M·N·s  (+ read h, dy, dh; write dx)
AdaLN-Zero    4·M·N·s  (as Add & Norm)                 10·M·N·s (+ read h, dy, dh, x; write dx, dres)
============  =======================================  =============================================

DyT and Add & DyT move what the norm and Add & Norm do, channels-first LayerNorm what LayerNorm does.

Throughput is bytes / median time, reported as a fraction of a device-to-device copy moving the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # torch is imported when a sweep is built: the command line lists ops and dtypes without it
    import torch

DROPOUT_P = 0.1  # the dropout probability of the "-drop" Add & Norm ops


@dataclass(frozen=True)
class Op:
    """One benchmarked op: a plain norm, or Add & Norm (h = r + dropout(x), returns (y, h)); issue 18's ops by
    ``family`` (see ISSUE18_OPS)."""

    key: str
    norm: str  # "layernorm" | "rmsnorm" | "dyt"
    add: bool = False
    dropout_p: float = 0.0
    family: str = "norm"  # "norm" | "adaln" | "dyt" | "channels_first"


# Issue 18's ops on the case's [M, N]: "adaln" is DiT's AdaLN-Zero step, h = r + gate ⊙ x and
# y = LayerNorm(h)·(1 + scale) + shift (ε = 1e-6, no γ/β; per-sample [B, N] modulations, ADALN_TOKENS tokens per
# sample; returns (y, h)); "dyt" / "adddyt" are DyT and Add & DyT (α, γ, β); "cfln" is channels-first LayerNorm
# with N channels over [M / CHANNELS_FIRST_SPATIAL, N, CHANNELS_FIRST_SPATIAL] (the output stored channels first,
# as the next convolution reads it).
ADALN_TOKENS = 256  # DiT-XL/2 at 256 × 256: 16 × 16 patches
CHANNELS_FIRST_SPATIAL = 1024  # a 32 × 32 feature map
ISSUE18_OPS = (
    Op("adaln", "layernorm", add=True, family="adaln"),
    Op("dyt", "dyt", family="dyt"),
    Op("adddyt", "dyt", add=True, family="dyt"),
    Op("cfln", "layernorm", family="channels_first"),
)

OPS: dict[str, Op] = {
    op.key: op
    for op in (
        Op("ln", "layernorm"),
        Op("rms", "rmsnorm"),
        Op("addnorm", "layernorm", add=True),
        Op("addnorm-drop", "layernorm", add=True, dropout_p=DROPOUT_P),
        Op("addrms", "rmsnorm", add=True),
        Op("addrms-drop", "rmsnorm", add=True, dropout_p=DROPOUT_P),
        *ISSUE18_OPS,
    )
}
DEFAULT_OPS = ("ln", "rms", "addnorm", "addnorm-drop")

DIRECTIONS = ("fwd", "fwdbwd")

# Bytes moved per element of x, in units of the element size: (add, direction) -> multiple.
BYTES_PER_ELEMENT = {
    (False, "fwd"): 2,
    (False, "fwdbwd"): 5,
    (True, "fwd"): 4,
    (True, "fwdbwd"): 8,
}
# AdaLN-Zero's backward also reads x (dgate = Σ dh ⊙ x) and writes d(residual) apart from dx = gate ⊙ dh.
FAMILY_BYTES_PER_ELEMENT = {("adaln", "fwdbwd"): 10}

# Short name -> torch's name of each benchmarked dtype.
DTYPES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# Throughput rows: many rows (M·N elements in all), the bandwidth an op reaches. Latency rows: a few rows (M = 1,
# a decode step), where the fixed cost per call shows. Both are timed alike (device time and host time per call).
KINDS = ("throughput", "latency")


def bytes_moved(op: Op, direction: str, m: int, n: int, dtype: torch.dtype) -> int:
    """The fewest bytes ``op`` must move over an [m, n] input of ``dtype`` in ``direction``."""
    per_element = FAMILY_BYTES_PER_ELEMENT.get((op.family, direction)) or BYTES_PER_ELEMENT[(op.add, direction)]
    return per_element * m * n * dtype.itemsize


def footprint_bytes(case: "Case", implementations: int) -> int:
    """A generous estimate of the memory one case takes on its device: its inputs (x, the residual, the upstream
    gradients), the outputs of every implementation and of the copy (a captured graph keeps its outputs until
    the case ends), and one float32 temporary of the input's size. Checked against the free memory before a
    run, so that an impossible size is an error at once instead of an allocator failure later."""
    add, backward = int(case.op.add), int(case.direction == "fwdbwd")
    inputs = 1 + add + backward * (1 + add)
    outputs = (1 + add) * (1 + backward)
    elements = case.m * case.n
    return (inputs + outputs * (implementations + 1)) * elements * case.dtype.itemsize + 4 * elements


def torch_dtype(name: str) -> torch.dtype:
    """``"bf16"`` -> ``torch.bfloat16``."""
    import torch

    return getattr(torch, DTYPES[name])


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``."""
    return next(name for name, full in DTYPES.items() if str(dtype) == f"torch.{full}")


@dataclass(frozen=True)
class Case:
    """One measurement: an op, a direction, a dtype and an [m, n] shape."""

    op: Op
    direction: str
    dtype: torch.dtype
    m: int
    n: int
    kind: str = "throughput"

    @property
    def bytes(self) -> int:
        return bytes_moved(self.op, self.direction, self.m, self.n, self.dtype)

    @property
    def label(self) -> str:
        return f"{self.op.key} {self.direction} {dtype_name(self.dtype)} {self.m}×{self.n}"


@dataclass(frozen=True)
class Sweep:
    """Every shape of a run: rows of length ``ns`` at ``mn`` total elements, plus latency rows at ``latency_n``."""

    ops: tuple[str, ...]
    directions: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    ns: tuple[int, ...]
    mn: int
    latency_rows: tuple[int, ...] = ()
    latency_n: int = 4096

    def cases(self) -> list[Case]:
        """Throughput cases (M = mn // N; none when ``ns`` is empty), then forward latency cases, in a stable
        order."""
        out = [
            Case(OPS[op], direction, dtype, max(1, self.mn // n), n)
            for op in self.ops
            for direction in self.directions
            for dtype in self.dtypes
            for n in self.ns
        ]
        out += [
            Case(OPS[op], "fwd", dtype, m, self.latency_n, kind="latency")
            for op in self.ops
            for dtype in self.dtypes
            for m in self.latency_rows
        ]
        return out


K = 1024
GPU_NS = (1 * K, 2 * K, 4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K, 256 * K, 1024 * K)
GPU_QUICK_NS = (1 * K, 4 * K, 16 * K, 64 * K, 256 * K, 1024 * K)


def default_sweep(device: str, quick: bool, ops: Optional[tuple[str, ...]] = None) -> Sweep:
    """The issue's GPU sweep on CUDA; a small sweep, well under a minute, on the CPU."""
    ops = ops or DEFAULT_OPS
    if device == "cuda":
        dtypes = ("bf16",) if quick else ("bf16", "fp16", "fp32")
        return Sweep(
            ops,
            DIRECTIONS,
            tuple(map(torch_dtype, dtypes)),
            GPU_QUICK_NS if quick else GPU_NS,
            mn=2**27,
            latency_rows=(1, 4096),
        )
    if quick:
        return Sweep(ops, DIRECTIONS, (torch_dtype("fp32"),), (1 * K,), mn=2**16, latency_rows=(1,))
    return Sweep(
        ops, DIRECTIONS, tuple(map(torch_dtype, ("fp32", "bf16"))), (1 * K, 4 * K), mn=2**18, latency_rows=(1,)
    )
