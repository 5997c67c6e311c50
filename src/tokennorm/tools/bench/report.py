"""Reports of a sweep: a rich table per kind, JSON, CSV, and a PNG of the fraction of copy against N."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import asdict, fields
from typing import Sequence

from tokennorm.tools.bench.cases import DIRECTIONS, DTYPES, OPS
from tokennorm.tools.bench.runner import Result, SweepResult

_DEVICE_TIME = {
    "cuda": "device µs per call: CUDA-graph replay of back-to-back calls, L2 flushed before each sample",
    "cpu": "µs per call: wall clock of back-to-back calls (the data stays in the CPU's caches)",
}
TITLES = {
    (kind, device): f"{kind}: {text}; host µs: wall clock per eager call"
    for kind in ("throughput", "latency")
    for device, text in _DEVICE_TIME.items()
}


def _fraction(r: Result) -> str:
    return "–" if r.fraction_of_copy is None else f"{r.fraction_of_copy:.2f}"


def _group(r: Result) -> tuple:
    return (r.kind, r.op, r.direction, r.dtype, r.m, r.n)


def _panel_key(op_direction: tuple[str, str]) -> tuple[int, int]:
    op, direction = op_direction
    return (list(OPS).index(op), DIRECTIONS.index(direction))


def _sort_key(r: Result) -> tuple:
    return (*_panel_key((r.op, r.direction)), list(DTYPES).index(r.dtype), r.n, r.m, r.impl)


def size_label(n: float, _pos: object = None) -> str:
    """4096 -> '4K', 1048576 -> '1M'."""
    n = int(n)
    for unit, scale in (("M", 2**20), ("K", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def table(results: Sequence[Result], kind: str, device: str):
    """A rich Table of the rows of ``kind``; the best fraction of copy of each shape in bold, rows whose numbers
    are not to be trusted marked with "?" (the flags are in the JSON and the warnings)."""
    from rich.table import Table

    rows = sorted((r for r in results if r.kind == kind), key=_sort_key)
    best: dict[tuple, float] = {}
    for r in rows:
        if r.fraction_of_copy is not None and not r.flags:
            best[_group(r)] = max(best.get(_group(r), 0.0), r.fraction_of_copy)
    t = Table(title=TITLES[(kind, device)], title_justify="left")
    for name in ("impl", "op", "dir", "dtype", "M", "N", "median µs", "p20–p80 µs", "GB/s", "× copy", "host µs"):
        t.add_column(name, justify="left" if name in ("impl", "op", "dir", "dtype") else "right")
    for r in rows:
        frac = _fraction(r)
        if len(rows) > 1 and r.fraction_of_copy is not None and r.fraction_of_copy == best.get(_group(r)):
            frac = f"[bold]{frac}[/]"
        if r.flags:
            frac += " ?"
        t.add_row(
            r.impl,
            r.op,
            r.direction,
            r.dtype,
            str(r.m),
            size_label(r.n),
            f"{r.median_us:.1f}",
            f"{r.p20_us:.1f}–{r.p80_us:.1f}",
            f"{r.gbps:.1f}",
            frac,
            f"{r.host_us:.1f}",
        )
    return t


def methods(results: Sequence[Result]) -> dict[str, int]:
    """How many rows had their device time taken by each method (graph, profiler, wall)."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.method] = counts.get(r.method, 0) + 1
    return counts


def as_dict(sweep: SweepResult) -> dict:
    """Everything a run produced, as JSON-ready data."""
    return {
        "environment": sweep.environment,
        "notes": sweep.notes,
        "warnings": sweep.warnings,
        "copies": [asdict(c) for c in sweep.copies],
        "results": [asdict(r) for r in sweep.results],
    }


def write_json(path: str, sweep: SweepResult) -> None:
    """The run as JSON at ``path``; ``-`` is standard output."""
    text = json.dumps(as_dict(sweep), indent=1) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8") as f:  # then renamed: a reader never sees half a file
        f.write(text)
    os.replace(tmp, path)


def write_csv(path: str, results: Sequence[Result]) -> None:
    """Every row; flags joined by '; '."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Result)])
        writer.writeheader()
        for r in results:
            row = asdict(r)
            row["flags"] = "; ".join(r.flags)
            writer.writerow(row)


def write_plot(path: str, sweep: SweepResult) -> None:
    """Fraction of copy against N (log2 axis): one panel per op × direction, one line per implementation
    (line style per dtype). Throughput rows only."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's matplotlib state alone
    from matplotlib.ticker import FuncFormatter

    # Rows without a trustworthy fraction (implausible baseline, implausible or noisy timing) are not drawn.
    rows = [r for r in sweep.results if r.kind == "throughput" and r.fraction_of_copy is not None and not r.flags]
    panels = sorted({(r.op, r.direction) for r in rows}, key=_panel_key)
    ncols = min(2, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(6.5 * ncols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    env = sweep.environment
    fig.suptitle(f"fraction of a device copy — {env['device_name']}, torch {env['torch']}, {env['date'][:10]}")
    impls = sorted({r.impl for r in rows})
    colors = {name: f"C{i}" for i, name in enumerate(impls)}
    styles = {"bf16": "-", "fp16": "--", "fp32": ":"}
    for ax, (op, direction) in zip(axes, panels):
        for impl in impls:
            for dtype, style in styles.items():
                line = sorted(
                    (r.n, r.fraction_of_copy)
                    for r in rows
                    if (r.op, r.direction, r.impl, r.dtype) == (op, direction, impl, dtype)
                )
                if line:
                    ax.plot(*zip(*line), style, marker="o", color=colors[impl], label=f"{impl} {dtype}")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(size_label))
        ax.set_ylim(bottom=0)
        ax.set_title(f"{op} {direction}")
        ax.set_xlabel("N (row length)")
        ax.set_ylabel("fraction of copy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.axis("off")
    if not panels:
        axes[0].text(0.5, 0.5, "no trustworthy throughput rows in this run", ha="center", va="center")
    fig.savefig(path, dpi=110)


def markdown(sweep: SweepResult) -> str:
    """The environment and, per kind, one row per shape: 'device µs (fraction of copy)' per implementation, then
    the host µs per eager call of each."""
    env = sweep.environment
    lines = [
        f"Device: {env['device_name']} ({env['device']}); date {env['date'][:10]}; torch {env['torch']}, "
        f"triton {env['triton']}, tokennorm {env['tokennorm']} (backend {env['tokennorm_backend']}), "
        f"{env['cpu_threads']} CPU thread(s).",
    ]
    for kind in ("throughput", "latency"):
        rows = sorted((r for r in sweep.results if r.kind == kind), key=_sort_key)
        if not rows:
            continue
        impls = sorted({r.impl for r in rows})
        cells: dict[tuple, dict[str, Result]] = {}
        for r in rows:
            cells.setdefault((r.op, r.direction, r.dtype, r.m, r.n), {})[r.impl] = r
        lines += [
            "",
            f"{TITLES[(kind, env['device'])]}. Each cell: device µs (fraction of copy) · host µs; "
            "? = not to be trusted (see the warnings)",
            "",
            "| op | dir | dtype | M | N | copy GB/s | " + " | ".join(impls) + " |",
            "|---|---|---|---:|---:|---:|" + "---:|" * len(impls),
        ]
        for (op, direction, dtype, m, n), by_impl in cells.items():
            copy = next((r.copy_gbps for r in by_impl.values() if r.copy_gbps is not None), None)
            row = [
                f"{r.median_us:.1f} ({_fraction(r)}) · {r.host_us:.1f}{' ?' if r.flags else ''}"
                if (r := by_impl.get(i))
                else "–"
                for i in impls
            ]
            lines.append(
                f"| {op} | {direction} | {dtype} | {m} | {size_label(n)} | "
                f"{'–' if copy is None else f'{copy:.1f}'} | " + " | ".join(row) + " |"
            )
    if sweep.warnings:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in sweep.warnings]
    if sweep.notes:
        lines += ["", "Skipped:", ""] + [f"- {note}" for note in sweep.notes]
    return "\n".join(lines) + "\n"


def write_markdown(path: str, sweep: SweepResult) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown(sweep))
