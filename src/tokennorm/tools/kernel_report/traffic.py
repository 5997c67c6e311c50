"""How many HBM bytes a launch plan moves: a model, next to the fewest bytes the op must move.

A memory-bound kernel below the copy's bandwidth either moves its bytes slowly (too few loads in flight, too
few programs) or moves more bytes than the op needs (a second pass over the input, partial buffers). Timing
alone cannot tell the two apart; this model can. What it counts, per plan (``config.KernelConfig``):

* rows: x read once, y written once (backward: h and dy read once, dx written once, mean/rstd read);
* chunked (forward): x read once from HBM, and again from L2 when the rows in flight fit it
  (``config.chunked_fits_l2``), else from HBM;
* long rows: as rows, plus the exchanged partials (written once, read back from L2) and the counters;
* segment (backward beyond the long-row capacity): h and dy read twice (sums, then dx), plus the sums;
* backward: the float32 dγ/dβ partial rows, one per program (row group), written and read back by the final
  sum.

``python -m tokennorm.tools.kernel_report.traffic`` prints the default plans' bytes moved / needed at every row
length (H100- and H200-sized L2). ``... traffic RUN.json [--sms 132] [--best]`` applies the model to a
``benchmarks/tune_kernels.py`` result and prints, per candidate, the bytes moved per byte needed and the
bandwidth achieved on the bytes moved; then the default plans' bytes moved / needed for the run's shapes.
Runs recorded before the kernels' second version (2026-11-23, H100) carry the old tilings (``single_chunk``,
``segments``); they are read as what those kernels did: two reads of the input for rows longer than a tile.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import DeviceFacts, KernelConfig, cdiv, row_groups

H100 = DeviceFacts(sms=132, l2_bytes=50 << 20)
H200 = DeviceFacts(sms=132, l2_bytes=60 << 20)
COUNTER_BYTES = 4


def forward_bytes(
    m: int,
    n: int,
    itemsize: int,
    cfg: KernelConfig,
    facts: DeviceFacts = H100,
    store_stats: bool = True,
    acc_itemsize: int = 4,
) -> int:
    """Bytes a forward plan moves for LayerNorm/RMSNorm of an [m, n] input (no residual)."""
    reads = 1
    if cfg.mode == kconfig.CHUNKED and not kconfig.chunked_fits_l2(n, itemsize, cfg, facts):
        reads = 2
    extra = 0
    if cfg.mode == kconfig.LONG_ROWS:
        segments = kconfig.long_rows_segments(n, cfg)
        extra = 2 * m * segments * 3 * acc_itemsize + 2 * (1 + m) * COUNTER_BYTES  # (mean hi, lo, M2)
    stats = 2 * m * acc_itemsize if store_stats else 0
    return (reads + 1) * m * n * itemsize + stats + extra


def backward_programs(m: int, n: int, cfg: KernelConfig, facts: DeviceFacts = H100) -> int:
    """Partial rows of dγ/dβ the backward plan writes (its programs, or row groups)."""
    if cfg.mode == kconfig.ROWS:
        return row_groups(m, cfg.programs_per_sm * facts.sms)[0]
    segments = cdiv(n, cfg.block_n)
    if cfg.mode == kconfig.LONG_ROWS:
        return max(1, min(m, cfg.programs_per_sm * facts.sms // segments))
    return row_groups(m, 2 * facts.sms, segments)[0]


def backward_bytes(
    m: int,
    n: int,
    itemsize: int,
    cfg: KernelConfig,
    facts: DeviceFacts = H100,
    has_bias: bool = True,
    acc_itemsize: int = 4,
) -> int:
    """Bytes a backward plan and the final partial sum move for an [m, n] input."""
    reads = 2 if cfg.mode == kconfig.SEGMENT else 1
    gradient = (2 * reads + 1) * m * n * itemsize + 2 * m * acc_itemsize  # h, dy per pass; dx; mean, rstd
    groups = backward_programs(m, n, cfg, facts)
    partials = (2 if has_bias else 1) * groups * n * acc_itemsize * 2
    extra = 0
    if cfg.mode != kconfig.ROWS:  # per-segment sums: written, read back once
        extra = 2 * m * cdiv(n, cfg.block_n) * 2 * acc_itemsize
    if cfg.mode == kconfig.LONG_ROWS:
        extra += 2 * (1 + m) * COUNTER_BYTES
    return gradient + partials + extra


def default_bytes(
    m: int, n: int, itemsize: int, facts: DeviceFacts = H100, has_bias: bool = True
) -> tuple[KernelConfig, int, KernelConfig, int]:
    """(forward config, forward bytes, backward config, backward bytes) of tokennorm's default plans on a GPU
    like ``facts`` (forward without storing statistics, as inference runs it)."""
    fwd = kconfig.forward_config(n, itemsize, 4, facts)
    bwd = kconfig.backward_config(n, 4, facts)
    return (
        fwd,
        forward_bytes(m, n, itemsize, fwd, facts, store_stats=False),
        bwd,
        backward_bytes(m, n, itemsize, bwd, facts, has_bias),
    )


def _legacy_bytes(
    direction: str, m: int, n: int, size: int, cfg: dict, per_sm: Optional[int], sms: int, bias: bool
) -> tuple[int, Optional[int]]:
    """(bytes moved, row groups) of a candidate recorded with the first kernels' tilings (2026-11-23)."""
    split = cfg.get("segments", 1)
    segments = cdiv(n, cdiv(cdiv(n, split), cfg["block_n"]) * cfg["block_n"]) if split > 1 else 1
    reads = 1 if cfg["single_chunk"] and segments == 1 else 2
    if direction == "fwd":
        return (reads + 1) * m * n * size, None
    groups = row_groups(m, per_sm * sms, segments)[0]
    moved = (2 * reads + 1) * m * n * size + 2 * m * 4 + (2 if bias else 1) * groups * n * 4 * 2
    return moved + (m * segments * 2 * 4 * 2 if segments > 1 else 0), groups


def analyse(runs: list[dict], sms: int, has_bias: Optional[bool] = None, itemsize: Optional[int] = None) -> list[dict]:
    """Per candidate of a tune_kernels.py run (forward, then backward): the modelled bytes and the bandwidth
    on them. ``has_bias`` (LayerNorm) and ``itemsize`` default to what the run recorded (runs from 2026-11-23
    did not record them: pass them)."""
    facts = DeviceFacts(sms=sms, l2_bytes=H100.l2_bytes)
    out = []
    for run in runs:
        m, n, copy = run["m"], run["n"], run["copy_gbps"]
        bias = not run["is_rms"] if has_bias is None else has_bias
        size = run["itemsize"] if itemsize is None else itemsize
        facts = DeviceFacts(sms, run.get("l2_bytes", facts.l2_bytes))
        for direction in ("fwd", "bwd"):
            for e in run[direction]:
                groups = None
                if "mode" in e["cfg"]:
                    cfg = KernelConfig(**e["cfg"])
                    if direction == "fwd":
                        moved = forward_bytes(m, n, size, cfg, facts, store_stats=False)
                    else:
                        groups = backward_programs(m, n, cfg, facts)
                        moved = backward_bytes(m, n, size, cfg, facts, bias)
                else:
                    cfg = e["cfg"]
                    moved, groups = _legacy_bytes(direction, m, n, size, cfg, e.get("per_sm"), sms, bias)
                needed = (2 if direction == "fwd" else 3) * m * n * size
                seconds = e["ms"] * 1e-3
                out.append(
                    {
                        "dir": direction,
                        "n": n,
                        "m": m,
                        "cfg": cfg,
                        "per_sm": e.get("per_sm"),
                        "groups": groups,
                        "needed_frac": needed / seconds / 1e9 / copy,
                        "moved_per_needed": moved / needed,
                        "moved_frac": moved / seconds / 1e9 / copy,
                    }
                )
    return out


def describe(cfg) -> str:
    """A config, short: "rows 1×1024, 4 warps, 12/SM, 2 stages" (or an old tiling's dict)."""
    if isinstance(cfg, dict):  # first kernels' tiling
        text = f"{cfg['block_m']}×{cfg['block_n']}, {cfg['num_warps']} warps"
        text += "" if cfg["single_chunk"] else ", chunked"
        return text + (f", {cfg['segments']} segments" if cfg.get("segments", 1) > 1 else "")
    text = f"{cfg.mode} {cfg.block_m}×{cfg.block_n}, {cfg.num_warps} warps"
    if cfg.mode != kconfig.SEGMENT:
        text += f", {cfg.programs_per_sm}/SM"
    return text + (f", {cfg.num_stages} stages" if cfg.num_stages > 1 else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tokennorm.tools.kernel_report.traffic",
        description="Bytes moved vs bytes needed: the default plans, or a tune_kernels.py run",
    )
    p.add_argument("runs", nargs="*", help="tune_kernels.py --json output(s); none: the default plans at every N")
    p.add_argument("--sms", type=int, default=132, help="SMs of the GPU that ran it (H100 SXM: 132)")
    p.add_argument("--itemsize", type=int, default=2, help="bytes per element, for runs that did not record it")
    p.add_argument("--best", action="store_true", help="only the fastest candidate per row length")
    args = p.parse_args(argv)
    if not args.runs:
        default_plans_table(args.itemsize)
        return 0
    print(
        "| run | dir | N | M | config | per SM | row groups | × copy (bytes needed) | bytes moved / needed "
        "| × copy (bytes moved) |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for path in args.runs:
        with open(path) as f:
            runs = json.load(f)
        # Runs that did not record the op are named after it (tune_ln.json, tune_rms.json).
        legacy = "is_rms" not in runs[0]
        rows = analyse(
            runs,
            args.sms,
            ("rms" not in path.rsplit("/", 1)[-1]) if legacy else None,
            args.itemsize if legacy else None,
        )
        if args.best:
            best: dict[tuple[str, int], dict] = {}
            for r in rows:
                key = (r["dir"], r["n"])
                if key not in best or r["needed_frac"] > best[key]["needed_frac"]:
                    best[key] = r
            rows = list(best.values())
        for r in rows:
            print(
                f"| {path.rsplit('/', 1)[-1]} | {r['dir']} | {r['n']:,} | {r['m']:,} | {describe(r['cfg'])} "
                f"| {r['per_sm'] or '–'} | {r['groups'] or '–'} | {r['needed_frac']:.2f} "
                f"| {r['moved_per_needed']:.2f} | {r['moved_frac']:.2f} |"
            )
    print("\nToday's default plans on the same shapes (bytes moved / needed; H100-sized L2; LayerNorm):\n")
    print("| N | M | forward | fwd | backward | bwd |")
    print("|---:|---:|---|---:|---|---:|")
    with open(args.runs[0]) as f:
        shapes = [(r["m"], r["n"]) for r in json.load(f)]
    facts = DeviceFacts(args.sms, H100.l2_bytes)
    for m, n in shapes:
        fwd, f_bytes, bwd, b_bytes = default_bytes(m, n, args.itemsize, facts)
        print(
            f"| {n:,} | {m:,} | {describe(fwd)} | {f_bytes / (2 * m * n * args.itemsize):.3f} | {describe(bwd)} "
            f"| {b_bytes / (3 * m * n * args.itemsize):.3f} |"
        )
    return 0


DEFAULT_PLAN_NS = tuple(1 << k for k in range(10, 21))  # 1K ... 1M


def default_plans_table(itemsize: int, elements: int = 1 << 27) -> None:
    """The default plans' bytes moved per byte needed at M·N = ``elements``, LayerNorm, for H100 and H200."""
    print("| device | N | M | forward plan | fwd | backward plan | bwd |")
    print("|---|---:|---:|---|---:|---|---:|")
    for name, facts in (("H100 (50 MB L2)", H100), ("H200 (60 MB L2)", H200)):
        for n in DEFAULT_PLAN_NS:
            m = elements // n
            fwd, f_bytes, bwd, b_bytes = default_bytes(m, n, itemsize, facts)
            print(
                f"| {name} | {n:,} | {m:,} | {describe(fwd)} | {f_bytes / (2 * m * n * itemsize):.3f} "
                f"| {describe(bwd)} | {b_bytes / (3 * m * n * itemsize):.3f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
