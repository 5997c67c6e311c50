"""Where does forward time go? One shape, several ways of timing, side by side with torch and Liger.

    PYTHONPATH=src python3 benchmarks/profile_fwd.py [N ...]

Times (µs, median) each implementation with do_bench (L2 flushed between calls), with do_bench without the
flush, and as a CUDA graph of 20 back-to-back calls (host launch cost removed); prints the fraction of copy.
Run under ncu to see one launch: ncu -k regex:norm_fwd --launch-skip 3 --launch-count 1 ...
"""

import sys

import torch
import torch.nn.functional as F
import triton.testing

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.launch import norm_backward, norm_forward


def graph_time(fn, calls=20):
    fn()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    return triton.testing.do_bench(lambda: g.replay(), warmup=20, rep=100, return_mode="median") / calls


def main():
    ns = [int(a) for a in sys.argv[1:] if a.isdigit()] or [1024, 4096, 16384]
    for n in ns:
        m = 2**27 // n
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn_like(x)
        nbytes = 2 * x.numel() * 2
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        impls = {
            "copy": lambda: dst.copy_(src),
            "tokennorm": lambda: norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, False, None, store_stats=False),
            "tokennorm rms": lambda: norm_forward(
                x, w, None, None, None, 1e-5, 0.0, 0.0, True, None, store_stats=False
            ),
            "torch": lambda: F.layer_norm(x, (n,), w, b),
        }
        fwd = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, False, None)
        impls["tokennorm bwd"] = lambda: norm_backward(
            dy, x, w, fwd.mean, fwd.rstd, None, None, 0.0, 0.0, False, True, True, x.dtype, None
        )
        try:
            from liger_kernel.ops.layer_norm import LigerLayerNormFunction

            impls["liger"] = lambda: LigerLayerNormFunction.apply(x, w, b, 1e-5)
        except Exception as exc:  # noqa
            print("liger:", exc)
        if "--once" in sys.argv:  # for ncu: a few plain launches of ours, nothing else
            for _ in range(4):
                impls["tokennorm"]()
                impls["tokennorm bwd"]()
            torch.cuda.synchronize()
            continue
        facts = kconfig.device_facts(x.device)
        print(
            f"N={n} M={m} fwd cfg {kconfig.forward_config(n, 2, 4, facts)} "
            f"bwd cfg {kconfig.backward_config(n, 4, facts)}"
        )
        base = None
        for name, fn in impls.items():
            t_flush = triton.testing.do_bench(fn, warmup=20, rep=100, return_mode="median") * 1e3
            t_graph = graph_time(fn) * 1e3
            if name == "copy":
                base = t_graph
            # backward moves 3 units of M·N·s against the forward's 2
            frac = base / t_graph * (1.5 if name == "tokennorm bwd" else 1.0)
            print(f"  {name:14s} flush {t_flush:8.1f} us   graph {t_graph:8.1f} us   frac(graph) {frac:.3f}")


if __name__ == "__main__":
    main()
