"""The short table that ``scripts/gpu_check.sh`` prints last: how each stage ended, then one line per benchmarked
shape (tokennorm, torch and the best other implementation as fractions of copy; host µs per eager call), the
block benchmark and the shapes the dispatch table sends to torch. Plain text, for a log's last screen.

    python -m tokennorm.tools.bench.summary WORKDIR [--json PATH]

WORKDIR holds what the script wrote: ``stages.tsv`` (name, status, seconds, budget, note), the benchmarks'
JSON, ``block-*.json`` and ``dispatch-table.json``. Standard library only: it must work whatever broke.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

K, M = 2**10, 2**20


def _size(n: int) -> str:
    for unit, scale in (("M", M), ("K", K)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _load(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stages(work: Path) -> list[dict[str, Any]]:
    """The script's record of its stages."""
    out = []
    path = work / "stages.tsv"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        name, status, seconds, budget, note = (line.split("\t") + [""] * 5)[:5]
        out.append(
            {"stage": name, "status": status, "seconds": int(seconds or 0), "budget": int(budget or 0), "note": note}
        )
    return out


def bench_rows(work: Path) -> list[dict[str, Any]]:
    """One row per benchmarked shape of every benchmark JSON in ``work``: tokennorm, torch and the best other."""
    rows = []
    for path in sorted(work.glob("*.json")):
        doc = _load(path)
        if not isinstance(doc, dict) or "results" not in doc or "environment" not in doc:
            continue
        shapes: dict[tuple, dict[str, dict]] = {}
        for r in doc["results"]:
            shapes.setdefault((r["kind"], r["op"], r["direction"], r["dtype"], r["m"], r["n"]), {})[r["impl"]] = r
        for (kind, op, direction, dtype, m, n), by_impl in shapes.items():
            ours, theirs = by_impl.get("tokennorm"), by_impl.get("torch")
            others = [r for name, r in by_impl.items() if name not in ("tokennorm", "torch")]
            best = max(others, key=lambda r: r["fraction_of_copy"] or 0.0, default=None)
            rows.append(
                {
                    "run": path.stem,
                    "kind": kind,
                    "op": op,
                    "direction": direction,
                    "dtype": dtype,
                    "m": m,
                    "n": n,
                    "copy_gbps": next((r["copy_gbps"] for r in by_impl.values() if r.get("copy_gbps")), None),
                    "tokennorm": ours and ours["fraction_of_copy"],
                    "torch": theirs and theirs["fraction_of_copy"],
                    "tokennorm_us": ours and ours["median_us"],
                    "torch_us": theirs and theirs["median_us"],
                    "best_other": best and best["impl"],
                    "best_other_fraction": best and best["fraction_of_copy"],
                    "tokennorm_host_us": ours and ours["host_us"],
                    "torch_host_us": theirs and theirs["host_us"],
                    "flagged": sorted({r["impl"] for r in by_impl.values() if r.get("flags")}),
                }
            )
    return rows


def block_rows(work: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(work.glob("block-*.json")):
        doc = _load(path)
        for r in doc.get("rows", []) if isinstance(doc, dict) else []:
            out.append(dict(r, run=path.stem))
    return out


def _frac(v: Optional[float]) -> str:
    return "  –  " if v is None else f"{v:5.2f}"


def render(work: Path) -> tuple[list[str], dict[str, Any]]:
    """The lines to print and the document to save."""
    lines: list[str] = []
    setup = work / "setup.log"
    if setup.is_file():
        lines += [line for line in setup.read_text(encoding="utf-8").splitlines()[:3] if line.strip()]
    st = stages(work)
    lines += ["", f"{'stage':<14} {'status':<11} {'s / budget':>10}  note"]
    lines += [f"{s['stage']:<14} {s['status']:<11} {s['seconds']:>4} / {s['budget']:<4}  {s['note']}" for s in st]

    rows = bench_rows(work)
    if rows:
        lines += [
            "",
            "× copy (device time; ? = flagged, see the run's warnings), ours/torch speed, host µs ours/torch",
            f"{'run':<12} {'op':<8} {'dir':<7} {'dtype':<5} {'M':>6} {'N':>5} {'copy GB/s':>9}  {'ours':>5} "
            f"{'torch':>5} {'speed':>6}  {'best other':<18} {'host µs':>13}",
        ]
        for r in rows:
            speed = f"{r['torch_us'] / r['tokennorm_us']:5.2f}×" if r["tokennorm_us"] and r["torch_us"] else "   –  "
            other = f"{r['best_other']} {_frac(r['best_other_fraction']).strip()}" if r["best_other"] else "–"
            host = "/".join("–" if v is None else f"{v:.1f}" for v in (r["tokennorm_host_us"], r["torch_host_us"]))
            copy = "–" if r["copy_gbps"] is None else f"{r['copy_gbps']:.0f}"
            lines.append(
                f"{r['run'][:12]:<12} {r['op']:<8} {r['direction']:<7} {r['dtype']:<5} {r['m']:>6} "
                f"{_size(r['n']):>5} {copy:>9}  {_frac(r['tokennorm'])} {_frac(r['torch'])} {speed}  "
                f"{other:<18} {host:>13}{' ?' if r['flagged'] else ''}"
            )
    blocks = block_rows(work)
    if blocks:
        lines += ["", "block (pre-LN, fwd+bwd): device ms per step"]
        pairs: dict[tuple, dict[str, dict]] = {}
        for b in blocks:
            pairs.setdefault((b["d_model"], b["norm"], b["mode"]), {})[b["impl"]] = b
        for (d, norm, mode), by_impl in pairs.items():
            t, o = by_impl.get("torch", {}), by_impl.get("tokennorm", {})
            tm, om = t.get("median_ms"), o.get("median_ms")
            speed = f"{tm / om:.2f}×" if tm and om else "–"
            err = "; ".join(f"{k}: {v['error'][:60]}" for k, v in by_impl.items() if v.get("error"))
            lines.append(
                f"d_model {d:<5} {norm:<9} {mode:<7} torch {tm if tm is None else round(tm, 3)}  "
                f"tokennorm {om if om is None else round(om, 3)}  ({speed}){'  ' + err if err else ''}"
            )
    table = _load(work / "dispatch-table.json")
    to_torch = []
    if isinstance(table, dict):
        to_torch = [e for e in table.get("entries", []) if e.get("use") == "torch"]
        lines += ["", f"dispatch table: {len(to_torch)} of {len(table.get('entries', []))} shapes go to torch"]
        for e in sorted(to_torch, key=lambda e: -(e.get("tokennorm_us", 0) / (e.get("torch_us") or 1)))[:10]:
            lines.append(
                f"  {e['op']} {e['direction']} {e['dtype']} N={_size(e['n'])}: ours "
                f"{e.get('tokennorm_us')} µs, torch {e.get('torch_us')} µs"
            )
    doc = {"stages": st, "bench": rows, "block": blocks, "dispatch_to_torch": to_torch}
    return lines, doc


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tokennorm.tools.bench.summary", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("work", type=Path, help="the folder gpu_check.sh wrote its results to")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here too")
    args = parser.parse_args(argv)
    if not args.work.is_dir():
        print(f"summary: {args.work} is not a folder", file=sys.stderr)
        return 2
    lines, doc = render(args.work)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
