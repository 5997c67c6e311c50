"""What ``tokennorm verify`` prints and writes: the worst check per op, direction and dtype as a table, every
check with the environment as JSON."""

from __future__ import annotations

import datetime
import json
import math
import platform
import sys
from dataclasses import asdict
from importlib import metadata
from typing import Optional

import torch

from tokennorm.tools.verify.cases import DIRECTIONS, OPS, Case
from tokennorm.tools.verify.checks import Check, dtype_name
from tokennorm.tools.verify.tolerance import ROUNDOFFS


def environment(device: str, backend: str, quick: bool, seed: int) -> dict:
    def version(pkg: str) -> Optional[str]:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    effective = "triton" if backend == "triton" or (backend == "auto" and device == "cuda") else "torch"
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": name,
        "backend": backend,
        "backend_used": effective,
        "tokennorm": version("tokennorm"),
        "torch": torch.__version__,
        "triton": version("triton"),
        "python": platform.python_version(),
        "quick": quick,
        "seed": seed,
        "tolerance_rule": "max_abs_error <= roundoffs * unit_roundoff * term_magnitude",
        "roundoffs": {f"{dtype_name(d)} {direction}": k for (d, direction), k in ROUNDOFFS.items()},
    }


def worst_per_group(checks: list[Check]) -> list[Check]:
    """The check closest to (or furthest past) its tolerance for each op, direction and dtype, op by op."""
    worst: dict[tuple[str, str, str], Check] = {}
    for c in checks:
        key = (c.op, c.direction, c.dtype)
        if key not in worst or c.ratio > worst[key].ratio:
            worst[key] = c
    order = {name: i for i, name in enumerate([op.name for op in OPS] + list(DIRECTIONS))}
    return sorted(worst.values(), key=lambda c: (order[c.op], order[c.direction]))


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2e}"


SHORT_NAMES = {
    "float64": "fp64",
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "forward": "fwd",
    "backward": "bwd",
}


def table(checks: list[Check], title: str):
    from rich import box
    from rich.table import Table

    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False
    )
    for column in ("op", "dir", "dtype", "shape", "tensor"):
        table.add_column(column)  # words wrap on a narrow terminal; numbers never do
    for column in ("error", "tolerance"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("pass", justify="center", no_wrap=True)
    for c in checks:
        case = Case(tuple(c.shape), len(c.normalized_shape), c.scale)
        table.add_row(
            c.op,
            SHORT_NAMES[c.direction],
            SHORT_NAMES[c.dtype],
            case.label,
            c.tensor,
            _fmt(c.max_abs_error),
            _fmt(c.tolerance),
            "[green]✓[/]" if c.passed else "[bold red]✗[/]",
        )
    return table


def _json_value(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_json(path: str, environment: dict, checks: list[Check]) -> None:
    """Every check and the environment as JSON, to the file ``path``, or to stdout for ``"-"``."""
    results = [{k: _json_value(v) for k, v in asdict(c).items()} for c in checks]
    doc = {**environment, "passed": all(c.passed for c in checks), "checks": len(checks), "results": results}
    if path == "-":
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
