"""Measured dispatch: on a CUDA tensor, the ``auto`` backend runs tokennorm's Triton kernels or torch's own,
whichever was measured faster for that GPU, op, direction, dtype and row length.

A *table* is the measurements of one GPU (JSON; ``tokennorm tune`` writes them, :func:`table_document` builds
them)::

    {"format": 1,
     "device": {"name": "NVIDIA H200", "capability": [9, 0]},
     "match": "name",                    # or "capability": the table stands for every GPU of that sm_XY
     "provenance": {"date": ..., "torch": ..., "triton": ..., "tokennorm": ..., "method": ..., "command": ...},
     "entries": [{"op": "layer_norm", "direction": "inference", "dtype": "bf16", "n": 4096,
                  "tokennorm_us": 41.0, "torch_us": 39.2, "use": "torch"}, ...]}

Ops: ``layer_norm``, ``rms_norm``, ``add_layer_norm``, ``add_rms_norm`` (Add & Norm with a residual, no dropout,
h in x's dtype: what torch's composition ``Norm(r + x)`` computes too). Directions: ``inference`` (nothing
requires grad) and ``training`` (forward and backward). Fused work torch has no op for — dropout in Add & Norm, a
residual stream in another dtype, ``weight_offset``, parameters in another dtype than the input (torch's CUDA
kernels refuse bf16 inputs with float32 weights) — always runs tokennorm's kernels, as does everything under
``torch.compile`` and under the ``triton`` backend (``TOKENNORM_BACKEND=triton`` or
:func:`tokennorm.set_backend`; ``torch`` forces torch's).

Which table a GPU uses: the user's, written by ``tokennorm tune`` into the cache folder (:func:`cache_dir`) for
this GPU's name; else one shipped in the package (``data/dispatch.json``) for its name, else for its compute
capability; else none, and every op runs tokennorm's kernels. A row length N counts in the bucket of the next
power of two (N = 768 in 1024's); a bucket the table lacks takes the nearest measured bucket of the same op,
direction and dtype; an op, direction or dtype it lacks runs tokennorm's kernels.

Cost: on a GPU without a table, one dict lookup; with one, decisions are cached per (device, op, dtype, bucket,
direction): a key and a dict lookup per call. The cache holds at most devices × 4 ops × dtypes × ~40 buckets ×
2 entries, whatever the number of calls.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from tokennorm.backend import get_backend

__all__ = [
    "OPS",
    "DIRECTIONS",
    "DTYPES",
    "TOKENNORM",
    "TORCH",
    "DeviceIdentity",
    "Table",
    "bucket",
    "cache_dir",
    "cache_path",
    "device_identity",
    "load_table",
    "parse_table",
    "reload",
    "shipped_tables",
    "table_document",
    "table_for",
    "choice",
    "use_kernels",
]

FORMAT = 1
OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
DIRECTIONS = ("inference", "training")
DTYPES: dict[torch.dtype, str] = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.float64: "fp64",
}
TOKENNORM, TORCH = "tokennorm", "torch"
MATCHES = ("name", "capability")
SHIPPED = Path(__file__).resolve().parent / "data" / "dispatch.json"
CACHE_ENV = "TOKENNORM_CACHE_DIR"


@dataclass(frozen=True)
class DeviceIdentity:
    """A GPU as the tables name it."""

    name: str  # torch.cuda.get_device_name, e.g. "NVIDIA H100 80GB HBM3"
    capability: tuple[int, int]  # (9, 0) for sm_90

    @property
    def arch(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


def device_identity(index: int) -> DeviceIdentity:
    """The identity of CUDA device ``index``."""
    major, minor = torch.cuda.get_device_capability(index)
    return DeviceIdentity(torch.cuda.get_device_name(index), (int(major), int(minor)))


def bucket(n: int) -> int:
    """The row-length bucket of N: k such that 2^(k−1) < N ≤ 2^k."""
    return max(0, (n - 1).bit_length())


@dataclass
class Table:
    """One GPU's measured choices, indexed for lookup."""

    device: DeviceIdentity
    match: str
    provenance: dict[str, Any]
    entries: list[dict[str, Any]]
    source: str  # where it was read: a path, or "shipped: <path>"
    _index: dict[tuple[str, str, str], dict[int, str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for e in self.entries:
            self._index.setdefault((e["op"], e["direction"], e["dtype"]), {})[bucket(e["n"])] = e["use"]

    def matches(self, identity: DeviceIdentity) -> bool:
        if self.match == "name":
            return self.device.name == identity.name
        return self.device.capability == identity.capability

    def choice(self, op: str, direction: str, dtype: str, n: int) -> Optional[str]:
        """``"tokennorm"`` or ``"torch"`` for this shape, or None when the table has nothing for it."""
        measured = self._index.get((op, direction, dtype))
        if not measured:
            return None
        b = bucket(n)
        if b in measured:
            return measured[b]
        nearest = min(measured, key=lambda k: (abs(k - b), k))  # ties: the shorter rows
        return measured[nearest]


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{source}: {message}")


def parse_table(doc: Any, source: str) -> Table:
    """A :class:`Table` from its JSON document; ValueError naming ``source`` and the first problem."""
    _require(isinstance(doc, dict), source, "a dispatch table is a JSON object")
    _require(doc.get("format") == FORMAT, source, f"format {doc.get('format')!r}, expected {FORMAT}")
    device = doc.get("device")
    _require(isinstance(device, dict) and isinstance(device.get("name"), str), source, "device.name missing")
    capability = device.get("capability")
    _require(
        isinstance(capability, (list, tuple)) and len(capability) == 2 and all(isinstance(v, int) for v in capability),
        source,
        "device.capability must be [major, minor]",
    )
    match = doc.get("match", "name")
    _require(match in MATCHES, source, f"match {match!r}, expected one of {', '.join(MATCHES)}")
    provenance = doc.get("provenance")
    _require(isinstance(provenance, dict), source, "provenance missing")
    entries = doc.get("entries")
    _require(isinstance(entries, list), source, "entries must be a list")
    names = set(DTYPES.values())
    for i, e in enumerate(entries):
        where = f"entries[{i}]"
        _require(isinstance(e, dict), source, f"{where} is not an object")
        _require(e.get("op") in OPS, source, f"{where}.op {e.get('op')!r} is not one of {', '.join(OPS)}")
        _require(e.get("direction") in DIRECTIONS, source, f"{where}.direction {e.get('direction')!r}")
        _require(e.get("dtype") in names, source, f"{where}.dtype {e.get('dtype')!r}")
        _require(isinstance(e.get("n"), int) and e["n"] > 0, source, f"{where}.n must be a positive integer")
        _require(e.get("use") in (TOKENNORM, TORCH), source, f"{where}.use {e.get('use')!r}")
    return Table(DeviceIdentity(device["name"], (capability[0], capability[1])), match, provenance, entries, source)


def table_document(
    identity: DeviceIdentity, provenance: dict[str, Any], entries: list[dict[str, Any]], match: str = "name"
) -> dict[str, Any]:
    """The JSON document of a table (checked by :func:`parse_table`)."""
    doc = {
        "format": FORMAT,
        "device": {"name": identity.name, "capability": list(identity.capability)},
        "match": match,
        "provenance": provenance,
        "entries": entries,
    }
    parse_table(doc, "new table")
    return doc


def load_table(path: Path) -> Table:
    """The table in the JSON file ``path``; OSError or ValueError when it cannot be read or is not a table."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    return parse_table(doc, str(path))


def shipped_document() -> dict[str, Any]:
    """The package's file of tables: ``{"format", "provenance", "tables": [table, ...]}``."""
    return json.loads(SHIPPED.read_text(encoding="utf-8"))


def shipped_tables() -> list[Table]:
    """The tables shipped in the package."""
    doc = shipped_document()
    return [parse_table(t, f"shipped: {SHIPPED}[{i}]") for i, t in enumerate(doc.get("tables", []))]


def cache_dir() -> Path:
    """Where ``tokennorm tune`` writes its tables: ``$TOKENNORM_CACHE_DIR``, else ``$XDG_CACHE_HOME/tokennorm``,
    else ``~/.cache/tokennorm`` (the convention torch's hub directory follows)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "tokennorm"


def cache_path(identity: DeviceIdentity) -> Path:
    """The user's table for this GPU: ``<cache_dir>/dispatch-<name>.json`` (name in lower case, dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", identity.name.lower()).strip("-") or "gpu"
    return cache_dir() / f"dispatch-{slug}.json"


def table_for(identity: DeviceIdentity) -> Optional[Table]:
    """The table ``auto`` uses on this GPU (see the module's docstring for the order), or None.

    A user table that cannot be read is skipped with a warning, never an error in a user's forward pass."""
    path = cache_path(identity)
    if path.is_file():
        try:
            table = load_table(path)
            if table.matches(identity):
                return table
            warnings.warn(
                f"tokennorm: {path} is the table of {table.device.name!r}, not of {identity.name!r}; "
                "ignored (run `tokennorm tune` to measure this GPU)",
                RuntimeWarning,
                stacklevel=3,
            )
        except (OSError, ValueError) as exc:
            warnings.warn(f"tokennorm: ignoring the dispatch table {path}: {exc}", RuntimeWarning, stacklevel=3)
    shipped = shipped_tables()
    for match in MATCHES:
        for table in shipped:
            if table.match == match and table.matches(identity):
                return table
    return None


# Per device index: its table (None: no table). Per (device, op, dtype, bucket, training): the decision.
_tables: dict[int, Optional[Table]] = {}
_decisions: dict[tuple[int, str, torch.dtype, int, bool], bool] = {}
_UNREAD = object()


def reload() -> None:
    """Forget the tables and decisions read so far (after ``tokennorm tune`` wrote a new table)."""
    _tables.clear()
    _decisions.clear()


def _table(index: int) -> Optional[Table]:
    if index not in _tables:
        _tables[index] = table_for(device_identity(index))
    return _tables[index]


def choice(index: int, op: str, dtype: torch.dtype, n: int, training: bool) -> str:
    """``"tokennorm"`` or ``"torch"``: what ``auto`` runs for this op on CUDA device ``index`` (cached)."""
    return TOKENNORM if _kernels(index, op, dtype, bucket(n), training) else TORCH


def _kernels(index: int, op: str, dtype: torch.dtype, b: int, training: bool) -> bool:
    key = (index, op, dtype, b, training)
    decided = _decisions.get(key)
    if decided is None:
        table = _table(index)
        name = DTYPES.get(dtype)
        direction = "training" if training else "inference"
        use = table.choice(op, direction, name, 2**b) if table is not None and name else None
        decided = _decisions[key] = use != TORCH
    return decided


def use_kernels(op: str, x: torch.Tensor, n: int, *others: Optional[torch.Tensor]) -> bool:
    """Whether an ``op`` over rows of ``n`` elements of ``x`` (with ``others``: the residual, weight and bias, None
    where absent) runs tokennorm's kernels, given that the backend picked the Triton path. False only under
    ``auto`` on a CUDA tensor whose measured table says torch is faster for this shape."""
    if not x.is_cuda or get_backend() != "auto":
        return True
    index = x.get_device()
    if _tables.get(index, _UNREAD) is None:  # no table for this GPU (today's default): no key to build
        return True
    if torch.compiler.is_compiling():  # a compiled graph keeps tokennorm's ops: Inductor fuses around them
        return True
    requires_grad = x.requires_grad
    for t in others:
        if t is not None:
            if t.dtype != x.dtype:  # a mix torch's CUDA kernels may refuse: only ours runs it
                return True
            requires_grad = requires_grad or t.requires_grad
    training = requires_grad and torch.is_grad_enabled()
    key = (index, op, x.dtype, (n - 1).bit_length(), training)
    decided = _decisions.get(key)
    return decided if decided is not None else _kernels(*key)
