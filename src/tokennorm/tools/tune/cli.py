"""``tokennorm tune``: measure tokennorm's kernels against torch's on this GPU and write the table that the
``auto`` backend follows; ``tokennorm tune --show`` prints the table in use and where it came from.

The table goes to the user's cache folder (``$TOKENNORM_CACHE_DIR``, else ``$XDG_CACHE_HOME/tokennorm``, else
``~/.cache/tokennorm``), one file per GPU model; ``--out`` writes it elsewhere (e.g. to add to the package's
shipped tables). The full grid (4 ops × inference/training × bf16/fp16/fp32 × N = 256 … 1M) takes a few minutes,
most of it compiling kernels; ``--quick`` measures bf16 at four N in about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

DTYPE_CHOICES = ("bf16", "fp16", "fp32")


def _dtypes(text: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in items if t not in DTYPE_CHOICES]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(DTYPE_CHOICES)}, got {text!r}")
    return items


def _sizes(text: str) -> tuple[int, ...]:
    from tokennorm.tools.bench.cli import parse_count

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of row lengths, got nothing")
    return tuple(sorted({parse_count(t) for t in items}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--show",
        action="store_true",
        help="print the table in use on each GPU here and where it came from (measures nothing)",
    )
    parser.add_argument(
        "--device",
        type=int,
        default=None,
        metavar="INDEX",
        help="CUDA device index to measure or show (default: the current device)",
    )
    parser.add_argument("--quick", action="store_true", help="bf16 at N = 1K, 4K, 16K, 64K, fewer rounds")
    parser.add_argument("--dtypes", type=_dtypes, default=None, help="comma-separated, from bf16, fp16, fp32")
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        help="row lengths N, e.g. 1K,4K,64K (default: every power of two from 256 to 1M)",
    )
    parser.add_argument(
        "--out",
        metavar="PATH",
        default=None,
        help="write the table here instead of the cache folder (auto then does not use it)",
    )
    parser.add_argument(
        "--from-bench",
        nargs="+",
        metavar="JSON",
        default=None,
        help="measure nothing: build the table from `tokennorm bench --json` results of one GPU "
        "(their tokennorm and torch rows), e.g. those of scripts/gpu_check.sh; needs --out",
    )


def _fail(message: str) -> int:
    print(f"tokennorm tune: {message}", file=sys.stderr)
    return 2


def _ratio_cell(entry: dict[str, Any]) -> str:
    ours, theirs = entry.get("tokennorm_us"), entry.get("torch_us")
    speed = f" {theirs / ours:.2f}×" if ours and theirs else ""
    return f"[bold yellow]torch[/]{speed}" if entry["use"] == "torch" else f"ours{speed}"


def render(table: Any, console: Any) -> None:
    """A table's provenance and choices: one line per op, direction and dtype, one column per N; each cell says
    who runs and how fast tokennorm's kernels were relative to torch (torch's time / ours: above 1, ours is
    faster)."""
    from rich.table import Table

    from tokennorm.tools.bench.report import size_label

    prov = table.provenance
    console.print(
        f"[bold]{table.device.name}[/] ({table.device.arch}), matched by {table.match}: {table.source}", highlight=False
    )
    facts = ", ".join(f"{k} {prov[k]}" for k in ("date", "torch", "triton", "tokennorm", "command") if prov.get(k))
    if facts:
        console.print(f"  measured: {facts}", highlight=False)
    if not table.entries:
        console.print("  no entries: tokennorm's kernels everywhere")
        return
    ns = sorted({e["n"] for e in table.entries})
    grid = Table(title_justify="left")
    for name in ("op", "direction", "dtype"):
        grid.add_column(name)
    for n in ns:
        grid.add_column(size_label(n), justify="right")
    rows: dict[tuple, dict[int, str]] = {}
    for e in table.entries:
        rows.setdefault((e["op"], e["direction"], e["dtype"]), {})[e["n"]] = _ratio_cell(e)
    for key, cells in rows.items():
        grid.add_row(*key, *(cells.get(n, "–") for n in ns))
    console.print(grid)


def show(args: argparse.Namespace, console: Any) -> int:
    """Print, for each visible GPU (or the one asked for), the table ``auto`` uses; then the other tables found."""
    import torch

    from tokennorm import dispatch

    shown: set[str] = set()
    devices: list[int] = []
    if torch.cuda.is_available():
        devices = [args.device] if args.device is not None else list(range(torch.cuda.device_count()))
    elif args.device is not None:
        return _fail(f"--device {args.device}: no CUDA device is available to torch here")
    for index in devices:
        identity = dispatch.device_identity(index)
        table = dispatch.table_for(identity)
        console.print(f"cuda:{index} {identity.name} ({identity.arch}): ", end="", highlight=False)
        if table is None:
            console.print(
                "no measured table: auto runs tokennorm's kernels for every shape "
                f"(`tokennorm tune` writes {dispatch.cache_path(identity)})",
                highlight=False,
            )
            continue
        console.print("auto follows this table", highlight=False)
        render(table, console)
        shown.add(table.source)
    if not devices:
        console.print("No CUDA device here: auto runs torch's kernels on CPU tensors.", highlight=False)
    found = []
    cache = dispatch.cache_dir()
    for path in sorted(cache.glob("dispatch-*.json")) if cache.is_dir() else []:
        try:
            found.append(dispatch.load_table(path))
        except (OSError, ValueError) as exc:
            console.print(f"[red]unreadable[/] {path}: {exc}", highlight=False)
    found += dispatch.shipped_tables()
    others = [t for t in found if t.source not in shown]
    if others:
        console.print("Other tables:" if devices else "Tables found:", highlight=False)
        for table in others:
            render(table, console)
    why = dispatch.shipped_document().get("provenance", {})
    if not dispatch.shipped_tables():
        console.print(f"Shipped tables: none ({why.get('date', '')}): {why.get('why', '')}", highlight=False)
    console.print(f"User tables: {cache}", highlight=False)
    return 0


def write_table(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (a reader never sees half a table), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def summary(doc: dict[str, Any]) -> list[str]:
    """Lines saying which shapes go to torch and by how much tokennorm's kernels lose there."""
    from tokennorm.tools.tune.measure import losses

    lost = losses(doc)
    total = len(doc["entries"])
    if not lost:
        return [f"tokennorm's kernels were at least as fast as torch's on all {total} shapes measured."]
    lines = [
        f"{len(lost)} of {total} shapes go to torch; tokennorm's kernels were slower there by "
        f"{min(e['slower'] for e in lost):.2f}–{max(e['slower'] for e in lost):.2f}× (slowest first):"
    ]
    lines += [
        f"  {e['op']} {e['direction']} {e['dtype']} N={e['n']}: {e['tokennorm_us']:.1f} µs vs torch "
        f"{e['torch_us']:.1f} µs ({e['slower']:.2f}×)"
        for e in lost[:12]
    ]
    if len(lost) > 12:
        lines.append(f"  … and {len(lost) - 12} more (tokennorm tune --show)")
    return lines


def measure_and_write(
    args: argparse.Namespace, device: str, identity: Any, timer: Optional[Any], console: Any, command: str
) -> int:
    """Measure the grid the options ask for, write the table, print it and what goes to torch."""
    from tokennorm import dispatch
    from tokennorm.tools.tune import measure

    grid = measure.QUICK_GRID if args.quick else measure.FULL_GRID
    grid = dataclasses.replace(grid, dtypes=args.dtypes or grid.dtypes, ns=args.sizes or grid.ns)
    start = time.perf_counter()
    from tokennorm.tools import progress_bar

    with progress_bar(console, "tune", grid.size) as on_task:
        doc = measure.tune(identity, grid, measure.BUDGET, device=device, timer=timer, command=command, on_task=on_task)
    path = Path(args.out) if args.out else dispatch.cache_path(identity)
    write_table(path, doc)
    dispatch.reload()
    render(dispatch.parse_table(doc, str(path)), console)
    for line in summary(doc):
        console.print(line, highlight=False)
    for note in doc["provenance"]["skipped"]:
        console.print(f"[yellow]skipped[/] {note}", highlight=False)
    for warning in doc["provenance"]["warnings"]:
        console.print(f"[bold yellow]warning[/] {warning}", highlight=False)
    used = "auto uses it from now on" if not args.out else "auto does not read it there (see --show)"
    console.print(
        f"wrote {path} ({len(doc['entries'])} shapes, {time.perf_counter() - start:.0f} s); {used}", highlight=False
    )
    return 0 if doc["entries"] else 1


def from_bench(args: argparse.Namespace, console: Any) -> int:
    """``--from-bench``: the table of benchmark results, written to ``--out``."""
    from tokennorm import dispatch
    from tokennorm.tools.tune import measure

    if not args.out:
        return _fail("--from-bench needs --out PATH (a table built from a file is not this machine's to use)")
    docs = []
    for path in args.from_bench:
        try:
            docs.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            return _fail(f"--from-bench {path}: {exc}")
    try:
        doc = measure.from_bench(docs, "tokennorm tune --from-bench " + " ".join(map(str, args.from_bench)))
    except ValueError as exc:
        return _fail(f"--from-bench: {exc}")
    write_table(Path(args.out), doc)
    render(dispatch.parse_table(doc, args.out), console)
    for line in summary(doc):
        console.print(line, highlight=False)
    console.print(f"wrote {args.out} ({len(doc['entries'])} shapes)", highlight=False)
    return 0 if doc["entries"] else 1


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.show:
        return show(args, console)
    if args.out:
        from tokennorm.tools.bench.preflight import prepare_outputs

        problem = prepare_outputs([("--out", args.out)])
        if problem:
            return _fail(problem)
    if args.from_bench:
        return from_bench(args, console)
    if not torch.cuda.is_available():
        return _fail("needs a CUDA device (on CPU tensors auto runs torch's own kernels: nothing to choose)")
    index = torch.cuda.current_device() if args.device is None else args.device
    if not 0 <= index < torch.cuda.device_count():
        return _fail(f"--device {index}: there are {torch.cuda.device_count()} CUDA devices")
    torch.cuda.set_device(index)
    from tokennorm import dispatch
    from tokennorm.tools.bench.timing import GraphTimer

    command = "tokennorm tune " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["tune"] else "tokennorm tune"
    return measure_and_write(args, "cuda", dispatch.device_identity(index), GraphTimer(index), console, command.strip())
