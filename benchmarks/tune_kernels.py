"""Launch-configuration sweep for the forward and backward kernels on a GPU (the input to kernels/config.py).

For each row length N (M = 2^27 / N rows, bf16 by default) and each candidate TileConfig, checks the result
against torch (a config that computes a wrong answer is reported, never ranked) and times it with
``triton.testing.do_bench`` (median, L2 flushed). Prints the best configs per N as a fraction of a
device-to-device copy of the same bytes, measured in the same run.

    PYTHONPATH=src python3 benchmarks/tune_kernels.py [--dtype bf16] [--ns 1K,4K,...] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys

import torch
import torch.nn.functional as F

from tokennorm.bench.cli import parse_count
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
    if n >= 65536:  # split rows: segment moments/sums → merged in torch → normalize / dx
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
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")  # milliseconds


def _bwd_trials(first: list, done: list):
    """Yield the first-stage trials, then per-SM variants of the fastest of them."""
    yield from first
    best = sorted(done, key=lambda e: e["ms"])[:3]
    for e, per_sm in itertools.product(best[:1], (1, 4)):
        yield TileConfig(**e["cfg"]), per_sm


def tune(n: int, dtype: torch.dtype, is_rms: bool, mn: int, dev: str = "cuda") -> dict:
    m = max(1, mn // n)
    x = torch.randn(m, n, device=dev, dtype=dtype)
    w = torch.randn(n, device=dev, dtype=dtype) * 0.1 + 1
    b = None if is_rms else torch.randn(n, device=dev, dtype=dtype) * 0.1
    dy = torch.randn_like(x)
    s = dtype.itemsize
    src = torch.empty(m * n * s, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() / (_time(lambda: dst.copy_(src)) * 1e-3)

    xr = x.float()
    if is_rms:
        y_ref = F.rms_norm(xr, (n,), w.float(), 1e-5)
    else:
        y_ref = F.layer_norm(xr, (n,), w.float(), b.float(), 1e-5)
    results = {"n": n, "m": m, "copy_gbps": copy_bw / 1e9, "is_rms": is_rms, "itemsize": s, "fwd": [], "bwd": []}
    fwd0 = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None)
    default = kconfig.forward_config(n)  # a whole-row tile without a persistent grid has no loop to pipeline
    for cfg in _with_default(_candidates(n, 65536), default, pipelined=not default.single_chunk):
        try:
            out = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=cfg)
            err = (out.y.float() - y_ref).abs().max().item()
            ok = err < 0.1
            ms = _time(lambda: norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=cfg,
                                            store_stats=False)) if ok else float("nan")
        except Exception as exc:  # a config that does not compile (registers, shared memory) is skipped
            print(f"  fwd {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
            continue
        frac = 2 * m * n * s / (ms * 1e-3) / copy_bw
        moved = traffic.forward_bytes(m, n, s, cfg, store_stats=False)
        results["fwd"].append({"cfg": cfg.__dict__, "ms": ms, "frac": frac, "max_err": err,
                               "moved_frac": moved / (ms * 1e-3) / copy_bw})
    dx_ref = norm_backward(dy, x, w, fwd0.mean, fwd0.rstd, None, None, 0.0, 0.0, is_rms, True, not is_rms,
                           dtype, None).dx.float()
    # Tiles at 2 programs per SM first, then the best tile at 1 and 4 programs per SM.
    saved_per_sm = kconfig.BWD_PROGRAMS_PER_SM_SINGLE, kconfig.BWD_PROGRAMS_PER_SM_CHUNKED
    default = kconfig.backward_config(n)
    default_per_sm = saved_per_sm[not default.single_chunk]
    tried = [(cfg, 2) for cfg in _candidates(n, 32768)]
    tried += [(cfg, default_per_sm) for cfg in _with_default([], default, pipelined=True)]
    for cfg, per_sm in _bwd_trials(tried, results["bwd"]):
        kconfig.BWD_PROGRAMS_PER_SM_SINGLE = kconfig.BWD_PROGRAMS_PER_SM_CHUNKED = per_sm
        try:
            run = lambda: norm_backward(dy, x, w, fwd0.mean, fwd0.rstd, None, None, 0.0, 0.0, is_rms, True,  # noqa
                                        not is_rms, dtype, None, config=cfg)
            err = (run().dx.float() - dx_ref).abs().max().item()
            ok = err < 0.1
            ms = _time(run) if ok else float("nan")
        except Exception as exc:
            print(f"  bwd {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
            continue
        finally:
            kconfig.BWD_PROGRAMS_PER_SM_SINGLE, kconfig.BWD_PROGRAMS_PER_SM_CHUNKED = saved_per_sm
        frac = 3 * m * n * s / (ms * 1e-3) / copy_bw  # read x, dy; write dx
        groups = kconfig.row_groups(m, per_sm * kconfig.sm_count(x.device), traffic.row_segments(n, cfg))[0]
        moved = traffic.backward_bytes(m, n, s, cfg, groups, not is_rms)
        results["bwd"].append({"cfg": cfg.__dict__, "per_sm": per_sm, "ms": ms, "frac": frac, "max_err": err,
                               "moved_frac": moved / (ms * 1e-3) / copy_bw})
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--ns", default="1K,2K,4K,8K,16K,32K,64K,128K,256K,1M")
    p.add_argument("--mn", type=parse_count, default=2**27)
    p.add_argument("--rms", action="store_true", help="tune RMSNorm instead of LayerNorm")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("tune_kernels.py needs a CUDA device", file=sys.stderr)
        return 2
    rows = []
    for n in [parse_count(t) for t in args.ns.split(",")]:
        r = tune(n, DTYPES[args.dtype], args.rms, args.mn)
        rows.append(r)
        default_f, default_b = kconfig.forward_config(n), kconfig.backward_config(n)
        best_f = sorted(r["fwd"], key=lambda e: e["ms"])[:3]
        best_b = sorted(r["bwd"], key=lambda e: e["ms"])[:3]
        dflt_f = next((e for e in r["fwd"] if e["cfg"] == default_f.__dict__), None)
        dflt_b = next((e for e in r["bwd"] if e["cfg"] == default_b.__dict__ and e["per_sm"] == (
            kconfig.BWD_PROGRAMS_PER_SM_SINGLE if default_b.single_chunk else kconfig.BWD_PROGRAMS_PER_SM_CHUNKED)), None)
        print(f"N={n:>8} M={r['m']:>7} copy {r['copy_gbps']:.0f} GB/s | fwd default "
              f"{dflt_f and round(dflt_f['frac'], 3)} bwd default {dflt_b and round(dflt_b['frac'], 3)}")
        for e in best_f:
            print(f"    fwd {e['frac']:.3f} (moved bytes {e['moved_frac']:.2f}) {e['ms']*1e3:8.1f} us {e['cfg']}")
        for e in best_b:
            print(f"    bwd {e['frac']:.3f} (moved bytes {e['moved_frac']:.2f}) {e['ms']*1e3:8.1f} us {e['cfg']} "
                  f"per_sm={e['per_sm']}")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
