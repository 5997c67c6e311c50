"""Launch-configuration sweep for the kernels on a GPU (the input to kernels/config.py).

For each row length N (M = 2^27 / N rows, bf16 by default) and each candidate KernelConfig — rows tiles
(warps, programs per SM, prefetch), chunked walks, long-row segments, segment kernels — checks the result
against torch (a config that computes a wrong answer is reported, never ranked) and times it as GPU time only
(a CUDA graph of back-to-back calls, replayed; host time excluded); then re-times the fastest few and
tokennorm's defaults in interleaved rounds with the device copy (one run measured the same launch 1.8× apart:
single samples are not enough). Prints the best configs per N as a fraction of a device-to-device copy of the
same bytes, measured in the same run, with the bandwidth on the bytes each plan really moves
(tools/kernel_report/traffic.py).

    PYTHONPATH=src python3 benchmarks/tune_kernels.py [--dtype bf16] [--ns 1K,4K,...] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import CHUNKED, LONG_ROWS, ROWS, SEGMENT, KernelConfig
from tokennorm.kernels.launch import norm_backward, norm_forward
from tokennorm.tools.bench.cli import parse_count
from tokennorm.tools.kernel_report import traffic

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _rows_candidates(n: int, max_n: int) -> list[KernelConfig]:
    """Whole-row tiles: 4 to 32 elements per thread, 1 to 8 programs per SM, with and without prefetch."""
    block_n = kconfig.pow2(n)
    if block_n > max_n:
        return []
    out = []
    for warps in (1, 2, 4, 8, 16, 32):
        if 4 <= block_n // (32 * warps) <= 32:
            for per_sm in (1, 2, 4, 8):
                if per_sm * warps <= 64:
                    for stages in (1, 2):
                        out.append(KernelConfig(ROWS, block_n, warps, programs_per_sm=per_sm, num_stages=stages))
    return out


def _long_candidates(n: int, sms: int, widths: tuple[int, ...]) -> list[KernelConfig]:
    """Long-row segments, one program per SM (so that every row's programs are resident: no candidate may
    break the kernel's deadlock argument)."""
    out = []
    for width in widths:
        if width < n and kconfig.cdiv(n, width) <= sms:
            for warps in (8, 16, 32):
                if 8 <= width // (32 * warps) <= 64:
                    out.append(KernelConfig(LONG_ROWS, width, warps, programs_per_sm=1))
    return out


def forward_candidates(n: int, sms: int) -> list[KernelConfig]:
    out = _rows_candidates(n, 32768)
    if n > 8192:
        for chunk in (4096, 8192, 16384):
            if chunk < n:
                for warps, per_sm in ((8, 1), (16, 1), (8, 2), (16, 2)):
                    out.append(KernelConfig(CHUNKED, chunk, warps, programs_per_sm=per_sm))
    return out + _long_candidates(n, sms, (8192, 16384, 32768))


def backward_candidates(n: int, sms: int) -> list[KernelConfig]:
    out = _rows_candidates(n, 16384) + _long_candidates(n, sms, (4096, 8192, 16384))
    if n > 8192:
        out.append(KernelConfig(SEGMENT, 8192, 16))
    return out


def _time(fn) -> float:
    """Median milliseconds of GPU time per call of ``fn``: ``tokennorm bench``'s harness (back-to-back calls
    captured in a CUDA graph and replayed, the L2 flushed before each sample)."""
    from tokennorm.tools.bench.timing import gpu_ms

    return gpu_ms(fn)


def tune(
    n: int, dtype: torch.dtype, is_rms: bool, mn: int, dev: str = "cuda", rounds: int = 3, confirm: int = 4
) -> dict:
    """Check and time every candidate once, then the ``confirm`` fastest per direction and the defaults again
    in ``rounds`` interleaved rounds (each with the copy), so that a change of clocks or neighbours during the
    sweep hits them all alike. Each entry's ``ms`` is the median of its samples (all kept in ``ms_samples``)."""
    m = max(1, mn // n)
    device = torch.device(dev)
    facts = kconfig.device_facts(device)
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
    y_ref = F.rms_norm(xr, (n,), w.float(), 1e-5) if is_rms else F.layer_norm(xr, (n,), w.float(), b.float(), 1e-5)
    results = {
        "n": n,
        "m": m,
        "is_rms": is_rms,
        "itemsize": s,
        "sms": facts.sms,
        "l2_bytes": facts.l2_bytes,
        "fwd": [],
        "bwd": [],
    }
    runners: dict[int, object] = {}  # id(entry) -> the call it times

    def trial(direction: str, cfg: KernelConfig, run, check) -> None:
        try:
            err = check()
        except Exception as exc:  # a config that does not compile (registers, shared memory) is skipped
            print(f"  {direction} {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
            return
        if err >= 0.1:  # a wrong answer is reported in stderr, never ranked
            print(f"  {direction} {cfg}: WRONG, max error {err}", file=sys.stderr)
            return
        entry = {"cfg": cfg.__dict__, "ms_samples": [_time(run)], "max_err": err}
        results[direction].append(entry)
        runners[id(entry)] = run

    fwd0 = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None)
    default_f = kconfig.forward_config(n, s, 4, facts)
    for cfg in dict.fromkeys([default_f, *forward_candidates(n, facts.sms)]):
        trial(
            "fwd",
            cfg,
            lambda cfg=cfg: norm_forward(
                x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=cfg, store_stats=False
            ),
            lambda cfg=cfg: (
                (norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=cfg).y.float() - y_ref)
                .abs()
                .max()
                .item()
            ),
        )
    dx_ref = norm_backward(
        dy, x, w, fwd0.mean, fwd0.rstd, None, None, 0.0, 0.0, is_rms, True, not is_rms, dtype, None
    ).dx.float()
    default_b = kconfig.backward_config(n, 4, facts)
    for cfg in dict.fromkeys([default_b, *backward_candidates(n, facts.sms)]):

        def run(cfg=cfg):
            return norm_backward(
                dy,
                x,
                w,
                fwd0.mean,
                fwd0.rstd,
                None,
                None,
                0.0,
                0.0,
                is_rms,
                True,
                not is_rms,
                dtype,
                None,
                config=cfg,
            )

        trial("bwd", cfg, run, lambda run=run: (run().dx.float() - dx_ref).abs().max().item())

    defaults = {("fwd", json.dumps(default_f.__dict__)), ("bwd", json.dumps(default_b.__dict__))}
    picked = []
    for direction in ("fwd", "bwd"):
        ranked = sorted(results[direction], key=lambda e: e["ms_samples"][0])
        picked += [e for i, e in enumerate(ranked) if i < confirm or (direction, json.dumps(e["cfg"])) in defaults]
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
            cfg = KernelConfig(**e["cfg"])
            if direction == "fwd":
                moved = traffic.forward_bytes(m, n, s, cfg, facts, store_stats=False)
            else:
                moved = traffic.backward_bytes(m, n, s, cfg, facts, not is_rms)
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
        facts = kconfig.device_facts(torch.device("cuda"))
        defaults = (
            kconfig.forward_config(n, DTYPES[args.dtype].itemsize, 4, facts).__dict__,
            kconfig.backward_config(n, 4, facts).__dict__,
        )
        dflt = [next((e for e in r[d] if e["cfg"] == cfg), None) for d, cfg in zip(("fwd", "bwd"), defaults)]
        print(
            f"N={n:>8} M={r['m']:>7} copy {r['copy_gbps']:.0f} GB/s | fwd default "
            f"{dflt[0] and round(dflt[0]['frac'], 3)} bwd default {dflt[1] and round(dflt[1]['frac'], 3)}"
        )
        spread = lambda e: max(e["ms_samples"]) / min(e["ms_samples"])  # noqa: E731
        for direction in ("fwd", "bwd"):
            for e in sorted(r[direction], key=lambda e: e["ms"])[:3]:
                print(
                    f"    {direction} {e['frac']:.3f} (moved bytes {e['moved_frac']:.2f}) {e['ms'] * 1e3:8.1f} us "
                    f"(×{spread(e):.2f} spread) {traffic.describe(KernelConfig(**e['cfg']))}"
                )
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
