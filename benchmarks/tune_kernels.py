"""Launch-configuration sweep for the forward and backward kernels on a GPU (the input to kernels/config.py).

For each row length N (M = 2^27 / N rows, bf16 by default) and each candidate TileConfig, checks the result
against torch (a config that computes a wrong answer is reported, never ranked) and times its device time with
``tokennorm bench``'s harness (CUDA-graph replay, L2 flushed, median); then re-times the fastest few and tokennorm's defaults in
interleaved rounds with the device copy (one run measured the same launch 1.8× apart: single samples are
not enough). Prints the best configs per N as a fraction of a device-to-device copy of the same bytes,
measured in the same run, with the bandwidth on the bytes each plan really moves (kernels/traffic.py).

    PYTHONPATH=src python3 benchmarks/tune_kernels.py [--dtype bf16] [--ns 1K,4K,...] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from tokennorm.tools.bench.cli import parse_count
from tokennorm.kernels import config as kconfig
from tokennorm.kernels import traffic
from tokennorm.kernels.config import TileConfig
from tokennorm.kernels.launch import norm_backward, norm_forward

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _candidates(n: int, max_tile: int) -> list[TileConfig]:
    """Single-chunk tiles (whole row in registers) while they fit, chunked walks for every N."""
    out = []
    block_n = 1 << (n - 1).bit_length()
    if block_n <= max_tile:
        for block_m in (1, 2, 4, 8):
            if block_m * block_n > max_tile or (block_m > 1 and block_m * block_n < 2048):
                continue
            for warps in (4, 8, 16, 32):
                per_thread = block_m * block_n // (32 * warps)
                if 8 <= per_thread <= 64:
                    out.append(TileConfig(block_m, block_n, True, warps))
    if max_tile > 32768 and block_n <= 32768:  # forward: the default tile on a persistent, pipelined grid
        base = kconfig.forward_config(n)
        for per_sm, stages in ((2, 3), (4, 2), (4, 3), (8, 2)):
            out.append(dataclasses.replace(base, programs_per_sm=per_sm, num_stages=stages))
    if n >= 65536:  # split rows: segment moments / sums, then normalize / dx
        for segments in (2, 4, 8, 16, 32):
            for chunk, warps in ((8192, 16), (16384, 32)):
                if chunk * segments <= 2 * n and (max_tile > 32768 or warps == 16):
                    out.append(TileConfig(1, chunk, False, warps, segments=segments))
    if n > 4096:
        for chunk in (4096, 8192, 16384):
            if chunk < n:
                for warps in (8, 16):
                    if 8 <= chunk // (32 * warps) <= 32:
                        out.append(TileConfig(1, chunk, False, warps))
    return out


def _with_default(candidates: list[TileConfig], default: TileConfig, pipelined: bool) -> list[TileConfig]:
    """The candidates, tokennorm's default config (always measured), and with ``pipelined`` the default with
    its loops software-pipelined 2 and 3 deep (num_stages)."""
    extra = [default] + ([dataclasses.replace(default, num_stages=k) for k in (2, 3)] if pipelined else [])
    return candidates + [c for c in extra if c not in candidates]


def _time(fn) -> float:
    from tokennorm.tools.bench.timing import gpu_ms

    return gpu_ms(fn)  # median milliseconds of device time: CUDA-graph replay, L2 flushed (tokennorm bench's harness)


def _bwd_trials(first: list, done: list):
    """Yield the first-stage trials, then per-SM variants of the fastest of them."""
    yield from first
    best = sorted(done, key=lambda e: e["ms_samples"][0])[:3]
    for e, per_sm in itertools.product(best[:1], (1, 4)):
        yield TileConfig(**e["cfg"]), per_sm


def _at_per_sm(per_sm: int, fn):
    """``fn`` run with the backward grid at ``per_sm`` programs per SM (a module setting, restored after)."""
    def run():
        saved = kconfig.BWD_PROGRAMS_PER_SM_SINGLE, kconfig.BWD_PROGRAMS_PER_SM_CHUNKED
        kconfig.BWD_PROGRAMS_PER_SM_SINGLE = kconfig.BWD_PROGRAMS_PER_SM_CHUNKED = per_sm
        try:
            return fn()
        finally:
            kconfig.BWD_PROGRAMS_PER_SM_SINGLE, kconfig.BWD_PROGRAMS_PER_SM_CHUNKED = saved
    return run


def tune(n: int, dtype: torch.dtype, is_rms: bool, mn: int, dev: str = "cuda", rounds: int = 3,
         confirm: int = 4) -> dict:
    """Check and time every candidate once, then the ``confirm`` fastest per direction and the defaults again
    in ``rounds`` interleaved rounds (each with the copy), so that a change of clocks or neighbours during the
    sweep hits them all alike. Each entry's ``ms`` is the median of its samples (all kept in ``ms_samples``)."""
    m = max(1, mn // n)
    x = torch.randn(m, n, device=dev, dtype=dtype)
    w = torch.randn(n, device=dev, dtype=dtype) * 0.1 + 1
    b = None if is_rms else torch.randn(n, device=dev, dtype=dtype) * 0.1
    dy = torch.randn_like(x)
    s = dtype.itemsize
    src = torch.empty(m * n * s, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    copy_ms = [_time(copy)]

    xr = x.float()
    if is_rms:
        y_ref = F.rms_norm(xr, (n,), w.float(), 1e-5)
    else:
        y_ref = F.layer_norm(xr, (n,), w.float(), b.float(), 1e-5)
    results = {"n": n, "m": m, "is_rms": is_rms, "itemsize": s, "fwd": [], "bwd": []}
    runners: dict[int, object] = {}  # id(entry) -> the call it times

    def record(direction: str, cfg: TileConfig, per_sm, fn, err: float) -> None:
        entry = {"cfg": cfg.__dict__, "ms_samples": [_time(fn)], "max_err": err}
        if per_sm is not None:
            entry["per_sm"] = per_sm
        results[direction].append(entry)
        runners[id(entry)] = fn

    fwd0 = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None)
    default_f = kconfig.forward_config(n)  # a whole-row tile without a persistent grid has no loop to pipeline
    for cfg in _with_default(_candidates(n, 65536), default_f, pipelined=not default_f.single_chunk):
        run = lambda cfg=cfg: norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None,  # noqa: E731
                                           config=cfg, store_stats=False)
        try:
            err = (norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=cfg).y.float()
                   - y_ref).abs().max().item()
        except Exception as exc:  # a config that does not compile (registers, shared memory) is skipped
            print(f"  fwd {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
            continue
        if err < 0.1:  # a wrong answer is reported in stderr, never ranked
            record("fwd", cfg, None, run, err)
        else:
            print(f"  fwd {cfg}: WRONG, max error {err}", file=sys.stderr)
    dx_ref = norm_backward(dy, x, w, fwd0.mean, fwd0.rstd, None, None, 0.0, 0.0, is_rms, True, not is_rms,
                           dtype, None).dx.float()
    # Tiles at 2 programs per SM first, then the best tile at 1 and 4 programs per SM.
    default_b = kconfig.backward_config(n)
    default_per_sm = kconfig.backward_programs_per_sm(default_b)
    tried = [(cfg, 2) for cfg in _candidates(n, 32768)]
    tried += [(cfg, default_per_sm) for cfg in _with_default([], default_b, pipelined=True)]
    for cfg, per_sm in _bwd_trials(tried, results["bwd"]):
        run = _at_per_sm(per_sm, lambda cfg=cfg: norm_backward(
            dy, x, w, fwd0.mean, fwd0.rstd, None, None, 0.0, 0.0, is_rms, True, not is_rms, dtype, None, config=cfg))
        try:
            err = (run().dx.float() - dx_ref).abs().max().item()
        except Exception as exc:
            print(f"  bwd {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
            continue
        if err < 0.1:
            record("bwd", cfg, per_sm, run, err)
        else:
            print(f"  bwd {cfg}: WRONG, max error {err}", file=sys.stderr)

    defaults = {("fwd", json.dumps(default_f.__dict__), None), ("bwd", json.dumps(default_b.__dict__), default_per_sm)}
    picked = []
    for direction in ("fwd", "bwd"):
        ranked = sorted(results[direction], key=lambda e: e["ms_samples"][0])
        picked += [e for i, e in enumerate(ranked) if i < confirm or (
            direction, json.dumps(e["cfg"]), e.get("per_sm")) in defaults]
    for _ in range(rounds):
        copy_ms.append(_time(copy))
        for e in picked:
            e["ms_samples"].append(_time(runners[id(e)]))

    copy_bw = 2 * src.numel() / (statistics.median(copy_ms) * 1e-3)
    results["copy_gbps"] = copy_bw / 1e9
    results["copy_ms_samples"] = copy_ms
    for direction, needed_per_element in (("fwd", 2), ("bwd", 3)):  # fwd: read x, write y; bwd: read x, dy; write dx
        for e in results[direction]:
            e["ms"] = ms = statistics.median(e["ms_samples"])
            cfg = TileConfig(**e["cfg"])
            if direction == "fwd":
                moved = traffic.forward_bytes(m, n, s, cfg, store_stats=False)
            else:
                groups = kconfig.row_groups(m, e["per_sm"] * kconfig.sm_count(x.device), traffic.row_segments(n, cfg))[0]
                moved = traffic.backward_bytes(m, n, s, cfg, groups, not is_rms)
            e["frac"] = needed_per_element * m * n * s / (ms * 1e-3) / copy_bw
            e["moved_frac"] = moved / (ms * 1e-3) / copy_bw
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--ns", default="1K,2K,4K,8K,16K,32K,64K,128K,256K,1M")
    p.add_argument("--mn", type=parse_count, default=2**27)
    p.add_argument("--rms", action="store_true", help="tune RMSNorm instead of LayerNorm")
    p.add_argument("--rounds", type=int, default=3, help="interleaved re-timing rounds of the fastest and defaults")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("tune_kernels.py needs a CUDA device", file=sys.stderr)
        return 2
    rows = []
    for n in [parse_count(t) for t in args.ns.split(",")]:
        r = tune(n, DTYPES[args.dtype], args.rms, args.mn, rounds=args.rounds)
        rows.append(r)
        default_f, default_b = kconfig.forward_config(n), kconfig.backward_config(n)
        best_f = sorted(r["fwd"], key=lambda e: e["ms"])[:3]
        best_b = sorted(r["bwd"], key=lambda e: e["ms"])[:3]
        dflt_f = next((e for e in r["fwd"] if e["cfg"] == default_f.__dict__), None)
        dflt_b = next((e for e in r["bwd"] if e["cfg"] == default_b.__dict__ and e["per_sm"] == (
            kconfig.backward_programs_per_sm(default_b))), None)
        print(f"N={n:>8} M={r['m']:>7} copy {r['copy_gbps']:.0f} GB/s | fwd default "
              f"{dflt_f and round(dflt_f['frac'], 3)} bwd default {dflt_b and round(dflt_b['frac'], 3)}")
        spread = lambda e: max(e["ms_samples"]) / min(e["ms_samples"])  # noqa: E731
        for e in best_f:
            print(f"    fwd {e['frac']:.3f} (moved bytes {e['moved_frac']:.2f}) {e['ms']*1e3:8.1f} us (×{spread(e):.2f} spread) {e['cfg']}")
        for e in best_b:
            print(f"    bwd {e['frac']:.3f} (moved bytes {e['moved_frac']:.2f}) {e['ms']*1e3:8.1f} us (×{spread(e):.2f} spread) {e['cfg']} "
                  f"per_sm={e['per_sm']}")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
