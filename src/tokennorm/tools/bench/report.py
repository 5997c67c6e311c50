"""Reports of a sweep: a rich table per kind, JSON, CSV, and a PNG of the fraction of copy against N."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, fields
from typing import Sequence

from tokennorm.tools.bench.cases import DIRECTIONS, DTYPES, OPS
from tokennorm.tools.bench.runner import Result, SweepResult

TITLES = {
    ("throughput", "cuda"): "throughput: device time per call (CUDA events), L2 flushed before each call",
    ("throughput", "cpu"): "throughput: time per call (perf_counter); the data stays in the CPU's caches",
    ("latency", "cuda"): "per-call latency: wall clock over back-to-back calls from Python, host overhead included",
    ("latency", "cpu"): "per-call latency: wall clock over back-to-back calls from Python, host overhead included",
}


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
    """A rich Table of the rows of ``kind``; the best fraction of copy of each shape in bold."""
    from rich.table import Table

    rows = sorted((r for r in results if r.kind == kind), key=_sort_key)
    best: dict[tuple, float] = {}
    for r in rows:
        best[_group(r)] = max(best.get(_group(r), 0.0), r.fraction_of_copy)
    t = Table(title=TITLES[(kind, device)], title_justify="left")
    for name in ("impl", "op", "dir", "dtype", "M", "N", "median µs", "p20–p80 µs", "GB/s", "× copy"):
        t.add_column(name, justify="left" if name in ("impl", "op", "dir", "dtype") else "right")
    for r in rows:
        frac = f"{r.fraction_of_copy:.2f}"
        if len(rows) > 1 and r.fraction_of_copy == best[_group(r)]:
            frac = f"[bold]{frac}[/]"
        t.add_row(r.impl, r.op, r.direction, r.dtype, str(r.m), str(r.n), f"{r.median_us:.1f}",
                  f"{r.p20_us:.1f}–{r.p80_us:.1f}", f"{r.gbps:.1f}", frac)
    return t


def write_json(path: str, sweep: SweepResult) -> None:
    doc = {
        "environment": sweep.environment,
        "notes": sweep.notes,
        "copies": [asdict(c) for c in sweep.copies],
        "results": [asdict(r) for r in sweep.results],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def write_csv(path: str, results: Sequence[Result]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Result)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)


def write_plot(path: str, sweep: SweepResult) -> None:
    """Fraction of copy against N (log2 axis): one panel per op × direction, one line per implementation
    (line style per dtype). Throughput rows only."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's matplotlib state alone
    from matplotlib.ticker import FuncFormatter

    rows = [r for r in sweep.results if r.kind == "throughput"]
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
                line = sorted((r.n, r.fraction_of_copy) for r in rows
                              if (r.op, r.direction, r.impl, r.dtype) == (op, direction, impl, dtype))
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
    for ax in axes[len(panels):]:
        ax.axis("off")
    if not panels:
        axes[0].text(0.5, 0.5, "no throughput rows in this run", ha="center", va="center")
    fig.savefig(path, dpi=110)


def markdown(sweep: SweepResult) -> str:
    """The environment and, per kind, one row per shape with 'median µs (fraction of copy)' per implementation."""
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
        cells: dict[tuple, dict[str, str]] = {}
        copy_gbps: dict[tuple, float] = {}
        for r in rows:
            key = (r.op, r.direction, r.dtype, r.m, r.n)
            cells.setdefault(key, {})[r.impl] = f"{r.median_us:.1f} ({r.fraction_of_copy:.2f})"
            copy_gbps[key] = r.copy_gbps
        lines += ["", f"{TITLES[(kind, env['device'])]}; each cell: median µs (fraction of copy)", "",
                  "| op | dir | dtype | M | N | copy GB/s | " + " | ".join(impls) + " |",
                  "|---|---|---|---:|---:|---:|" + "---:|" * len(impls)]
        for key, by_impl in cells.items():
            op, direction, dtype, m, n = key
            lines.append(f"| {op} | {direction} | {dtype} | {m} | {size_label(n)} | {copy_gbps[key]:.1f} | "
                         + " | ".join(by_impl.get(i, "–") for i in impls) + " |")
    if sweep.notes:
        lines += ["", "Skipped:", ""] + [f"- {note}" for note in sweep.notes]
    return "\n".join(lines) + "\n"


def write_markdown(path: str, sweep: SweepResult) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown(sweep))
