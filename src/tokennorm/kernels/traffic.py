"""How many HBM bytes a launch plan moves: a model, next to the fewest bytes the op must move.

A memory-bound kernel below the copy's bandwidth either moves its bytes slowly (too few loads in flight, too
few programs) or moves more bytes than the op needs (a second pass over the input, partial buffers). Timing
alone cannot tell the two apart; this model can: divide the modelled bytes by the measured time and compare
with a device copy. What it counts (L2 hits are not modelled: the passes here are too far apart to hit):

* forward: x read once and y written once for whole-row tiles; x read twice for long rows (statistics, then
  normalization), chunked or split;
* backward: h and dy read once, dx written, for whole-row tiles; h and dy read twice for long rows (row
  sums, then dx); plus the float32 dγ/dβ partial rows, one per row group, written by the kernel and read back
  by the final sum; plus the split path's per-segment sums.

``python -m tokennorm.kernels.traffic RUN.json [--sms 132] [--best]`` applies it to a
``benchmarks/tune_kernels.py`` result and prints, per candidate, the bytes moved per byte needed and the
bandwidth achieved on the bytes moved.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import TileConfig, cdiv, row_groups, segment_width


def row_segments(n: int, cfg: TileConfig) -> int:
    """Programs each row is split over (1 unless the config splits rows)."""
    if cfg.segments <= 1 or n == 0:
        return 1
    return cdiv(n, segment_width(n, cfg.segments, cfg.block_n))


def forward_bytes(m: int, n: int, itemsize: int, cfg: TileConfig, store_stats: bool = True) -> int:
    """Bytes the forward kernel(s) move for LayerNorm/RMSNorm of an [m, n] input (no residual)."""
    one_pass = cfg.single_chunk and row_segments(n, cfg) == 1
    reads = 1 if one_pass else 2
    stats = 2 * m * 4 if store_stats else 0
    return (reads + 1) * m * n * itemsize + stats


def backward_bytes(m: int, n: int, itemsize: int, cfg: TileConfig, row_groups: int, has_bias: bool,
                   acc_itemsize: int = 4) -> int:
    """Bytes the backward kernel(s) and the partial sums move for an [m, n] input.

    ``row_groups`` is the first grid dimension (:func:`tokennorm.kernels.config.backward_programs`): each
    group writes one partial row of dγ (and of dβ with a bias), which the final sum reads back.
    """
    segments = row_segments(n, cfg)
    one_pass = cfg.single_chunk and segments == 1
    reads = 1 if one_pass else 2
    gradient = (2 * reads + 1) * m * n * itemsize + 2 * m * acc_itemsize  # h, dy per pass; dx; mean, rstd
    partials = (2 if has_bias else 1) * row_groups * n * acc_itemsize * 2
    # split rows: the segments' sums, written, then read by the dx launch (each program of a row reads them
    # all; the repeats come from L2)
    sums = m * segments * 2 * acc_itemsize * 2 if segments > 1 else 0
    return gradient + partials + sums


def analyse(runs: list[dict], sms: int, has_bias: Optional[bool] = None, itemsize: Optional[int] = None) -> list[dict]:
    """Per candidate of a tune_kernels.py run (forward, then backward): the modelled bytes and the bandwidth
    on them.

    The forward was timed without storing statistics. For the backward the run records programs per SM but
    not the grid; it is rebuilt with today's rule (``config.row_groups``; the same as the run's for plans
    without split rows), so pass the SM count of the device that ran it. ``has_bias`` (LayerNorm) and
    ``itemsize`` default to what the run recorded (runs from 2026-11-23 did not record them: pass them).
    """
    out = []
    for run in runs:
        m, n, copy = run["m"], run["n"], run["copy_gbps"]
        bias = not run["is_rms"] if has_bias is None else has_bias
        size = run["itemsize"] if itemsize is None else itemsize
        for direction in ("fwd", "bwd"):
            for e in run[direction]:
                cfg = TileConfig(**e["cfg"])
                groups = None
                if direction == "fwd":
                    moved, needed = forward_bytes(m, n, size, cfg, store_stats=False), 2 * m * n * size
                else:
                    groups = row_groups(m, e["per_sm"] * sms, row_segments(n, cfg))[0]
                    moved, needed = backward_bytes(m, n, size, cfg, groups, bias), 3 * m * n * size
                seconds = e["ms"] * 1e-3
                out.append({"dir": direction, "n": n, "m": m, "cfg": cfg, "per_sm": e.get("per_sm"),
                            "groups": groups, "needed_frac": needed / seconds / 1e9 / copy,
                            "moved_per_needed": moved / needed, "moved_frac": moved / seconds / 1e9 / copy})
    return out


def default_backward_bytes(m: int, n: int, itemsize: int, sms: int, has_bias: bool) -> tuple[TileConfig, int, int]:
    """(config, row groups, bytes moved) of the backward tokennorm launches by default on a GPU with ``sms`` SMs."""
    cfg = kconfig.backward_config(n)
    groups = row_groups(m, kconfig.backward_programs_per_sm(cfg) * sms, row_segments(n, cfg))[0]
    return cfg, groups, backward_bytes(m, n, itemsize, cfg, groups, has_bias)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Bytes moved vs bytes needed, for a tune_kernels.py run")
    p.add_argument("runs", nargs="+", help="tune_kernels.py --json output(s)")
    p.add_argument("--sms", type=int, default=132, help="SMs of the GPU that ran it (H100 SXM: 132)")
    p.add_argument("--itemsize", type=int, default=2, help="bytes per element, for runs that did not record it")
    p.add_argument("--best", action="store_true", help="only the fastest candidate per row length")
    args = p.parse_args(argv)
    print("| run | dir | N | M | tile | per SM | row groups | × copy (bytes needed) | bytes moved / needed "
          "| × copy (bytes moved) |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for path in args.runs:
        with open(path) as f:
            runs = json.load(f)
        # Runs that did not record the op are named after it (tune_ln.json, tune_rms.json).
        legacy = "is_rms" not in runs[0]
        rows = analyse(runs, args.sms, ("rms" not in path.rsplit("/", 1)[-1]) if legacy else None,
                       args.itemsize if legacy else None)
        if args.best:
            best: dict[tuple[str, int], dict] = {}
            for r in rows:
                key = (r["dir"], r["n"])
                if key not in best or r["needed_frac"] > best[key]["needed_frac"]:
                    best[key] = r
            rows = list(best.values())
        for r in rows:
            c = r["cfg"]
            tile = f"{c.block_m}×{c.block_n}, {c.num_warps} warps{'' if c.single_chunk else ', chunked'}"
            tile += f", {c.segments} segments" if c.segments > 1 else ""
            tile += f", {c.programs_per_sm}/SM persistent" if c.programs_per_sm else ""
            tile += f", {c.num_stages} stages" if c.num_stages > 1 else ""
            print(f"| {path.rsplit('/', 1)[-1]} | {r['dir']} | {r['n']:,} | {r['m']:,} | {tile} | {r['per_sm'] or '–'} "
                  f"| {r['groups'] or '–'} | {r['needed_frac']:.2f} | {r['moved_per_needed']:.2f} "
                  f"| {r['moved_frac']:.2f} |")
    print("\nToday's default backward on the same shapes (bytes moved / needed; LayerNorm, RMSNorm):\n")
    print("| N | M | backward tile | row groups | LN | RMS |")
    print("|---:|---:|---|---:|---:|---:|")
    with open(args.runs[0]) as f:
        shapes = [(r["m"], r["n"]) for r in json.load(f)]
    for m, n in shapes:
        ratios = []
        for has_bias in (True, False):
            cfg, groups, moved = default_backward_bytes(m, n, args.itemsize, args.sms, has_bias)
            ratios.append(moved / (3 * m * n * args.itemsize))
        tile = f"{cfg.block_m}×{cfg.block_n}{'' if cfg.single_chunk else f', {row_segments(n, cfg)} segments'}"
        print(f"| {n:,} | {m:,} | {tile} | {groups} | {ratios[0]:.2f} | {ratios[1]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
